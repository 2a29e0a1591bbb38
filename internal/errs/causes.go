package errs

// A Cause is one reason vpnd answers a code. The catalogue's Cause and
// Solution are OpenHarmony's generic text; Causes are what this vpnd
// actually does, so that `vpnctl explain CODE` can say which of them a
// user met (the detail tells) and what to do about it.
type Cause struct {
	// Text says when vpnd answers the code.
	Text string
	// Cases, if any, are the forms Text takes, each as its detail reads.
	Cases []string
	// Detail is how the error's detail reads, with placeholders in
	// capitals; empty when Cases say it.
	Detail string
	// Fix says what to do.
	Fix string
	// Sites are the places in the source that give this answer, each as
	// "path: literal": the file, and the first string literal of the
	// detail (errs.New's format, errs.Wrap's context, an Error literal's
	// Detail), or its expression when it has none. A test finds every
	// errs.New, errs.Wrap and Error literal with a constant code in the
	// module and wants each listed here exactly as often as it occurs,
	// so a new answer cannot be added without its cause.
	Sites []string
}

// Causes returns the reasons this vpnd answers c, or nil.
func Causes(c Code) []Cause { return causes[c] }

var causes = map[Code][]Cause{
	CodeGuestDenied: {
		{
			Text:   "setUp by a GUEST account. The account type is checked right after the parameters, so a guest gets this even while a VPN exists.",
			Detail: "user NAME (uid N) is a guest account",
			Fix:    "Set the VPN up as a normal or admin user. vpnd's --accounts policy says who is a guest (by default uid 65534 and the groups guest and guests).",
			Sites:  []string{"internal/manager/manager.go: user %s (uid %d) is a guest account"},
		},
		{
			Text:   "destroy by a GUEST account, even when there is no VPN to destroy (`vpnctl down` as a guest always fails).",
			Detail: "user NAME (uid N) is a guest account",
			Fix:    "Ask the VPN's owner or an admin to end it.",
			Sites:  []string{"internal/manager/manager.go: user %s (uid %d) is a guest account"},
		},
	},
	CodeVPNExists: {
		{
			Text:   "setUp while a VPN exists, whoever owns it: vpnd has one VPN slot for the whole host.",
			Detail: "IFNAME is up, owned by uid N (pid P)",
			Fix:    "See it with `vpnctl status`; end it with `vpnctl down` as its owner or an admin, or end its owner's process.",
			Sites:  []string{"internal/manager/manager.go: %s is up, owned by uid %d (pid %d)"},
		},
	},
	CodeInvalidFD: {
		{
			Text:   "protect sent with no descriptor, or with more than one.",
			Detail: `protect takes exactly one descriptor ("fds": 1), got N`,
			Sites:  []string{`internal/server/server.go: protect takes exactly one descriptor ("fds": 1), got %d`},
		},
		{
			Text:   "vpnd could not reach the descriptor it received.",
			Detail: "descriptor: ERROR",
			Sites:  []string{"internal/server/server.go: descriptor"},
		},
		{
			Text: "the descriptor is not a socket that can carry a tunnel.",
			Cases: []string{
				"fd is not a socket (a file or a pipe)",
				"fd N is not open",
				"getsockopt OPTION: ERROR",
				"socket domain AF_UNIX not AF_INET or AF_INET6 (only IPv4 and IPv6 sockets can be protected)",
				"socket type SOCK_RAW not stream or datagram",
				"fd N is negative (a program that uses vpnd's packages directly; vpnd itself never passes one)",
			},
			Fix: "Protect the VPN's tunnel socket: a TCP or UDP socket, IPv4 or IPv6.",
			Sites: []string{
				"internal/manager/socket.go: detail",
				"internal/manager/socket.go: socket domain %s not AF_INET or AF_INET6",
				"internal/manager/socket.go: socket type %s not stream or datagram",
				"internal/manager/socket.go: fd %d is negative",
			},
		},
		{
			Text:   "the socket has a pending error, typically a TCP connect that failed.",
			Detail: "socket has a pending error: ERROR (e.g. connection refused)",
			Fix:    "Check that the tunnel's TCP connection was established, or protect the socket before connecting it.",
			Sites:  []string{"internal/manager/socket.go: socket has a pending error: "},
		},
		{
			Text: "found by the client library (and so vpnctl) before asking vpnd: it could not duplicate the descriptor to send it.",
			Cases: []string{
				"fd N: bad file descriptor (`vpnctl protect --fd N`: N is not open in vpnctl; start vpnctl with the socket as its fd N)",
				"dup: ERROR",
				"ERROR (the connection gives no access to its descriptor)",
			},
			Sites: []string{
				"client/client.go: fd %d: %v",
				"client/client.go: dup: ",
				"client/client.go: err.Error",
				"client/client.go: err.Error",
			},
		},
	},
	CodeInvalidParam: {
		{
			Text:   "status, destroy, protect or subscribe sent params other than absent, null or {}.",
			Detail: "params: expected object, or params.NAME: unknown member",
			Sites: []string{
				"internal/server/server.go: params: expected object",
				"internal/server/server.go: params.%s: unknown member",
			},
		},
		{
			Text: "setUp's VpnConfig breaks a rule: a member of the wrong type, missing, unknown or given twice, or a value out of range. The detail names the member and the rule.",
			Cases: []string{
				"addresses: required (1 to 2000 entries)",
				"addresses[N]: a loopback, multicast or unspecified address, a prefix length out of range, an IPv4 network or broadcast address, a duplicate",
				"routes[N]: a bad prefix, a family the VPN does not accept, a gateway outside the VPN's address prefixes",
				"mtu: out of range 576-65535 (at least 1280 with an IPv6 address)",
				"isIPv4Accepted or isIPv6Accepted true without an address of that family; isLegacy true",
				"dnsAddresses, searchDomains: not an IP address, not a DNS name, too many",
				"trustedApplications[N] or blockedApplications[N]: not a user name or uid",
				"NAME: unknown member (a typo: vpnd refuses what it does not know)",
			},
			Fix: "Correct the member the detail names; docs/design.md lists every rule.",
			Sites: []string{
				"internal/config/json.go: %s: %s",
				"internal/config/json.go: %s: %s",
			},
		},
		{
			Text:   "setUp gave both trustedApplications and blockedApplications.",
			Detail: "trustedApplications and blockedApplications are mutually exclusive",
			Sites:  []string{"internal/config/parse.go: trustedApplications and blockedApplications are mutually exclusive"},
		},
		{
			Text:   "an application list names a user the user database does not know.",
			Detail: `trustedApplications[N]: unknown user "NAME"`,
			Sites:  []string{"internal/config/parse.go: : "},
		},
		{
			Text:   "setLockdown's params are bad: enabled without applications, an unknown user, a member of the wrong type or unknown.",
			Detail: "applications[N]: ..., or enabled: ...",
			Sites:  []string{"internal/config/lockdown.go: %s: %s"},
		},
	},
	CodeInternal: {
		{
			Text: "vpnd refused the connection: it wrote this error as its only line (with id null) and closed the connection.",
			Cases: []string{
				"too many connections: the limit is N (vpnd's --max-connections)",
				"too many connections from uid U: the per-user limit is N (vpnd's --max-connections-per-user; admin accounts are exempt)",
				"vpnd is shutting down",
			},
			Fix:   "Close connections you do not need (each vpnctl up or watch holds one), or ask the administrator to raise the limit.",
			Sites: []string{"internal/server/server.go: %s"},
		},
		{
			Text:   "status could not encode its answer. This is a bug in vpnd: the answer is plain data.",
			Detail: "status: encode status: ...",
			Fix:    "Report it with vpnd's log and version (`vpnd --version`).",
			Sites:  []string{"internal/server/server.go: status"},
		},
		{
			Text: "bringing the VPN up failed; vpnd removed everything it had added before answering. The detail starts with \"bring-up:\" and names the step.",
			Cases: []string{
				"create tun IFNAME: open /dev/net/tun: ... (the tun module is not loaded, or vpnd may not open the device)",
				"create tun IFNAME: interface name already in use: ... (a link that vpnd did not create has its --ifname)",
				"create tun IFNAME: TUNSETIFF or SIOCGIFINDEX: ...",
				"vpnd is still removing an earlier VPN's objects: ... (the kernel kept refusing to delete what a VPN that ended left; vpnd goes on, and a later setUp works once they are gone)",
				"check routing table and rule priority: ERROR (reading vpnd's table or rules failed)",
				"configure link, add address, set up link, add route or add rule OBJECT: ERROR (netlink refused that step, e.g. add route ...: file exists)",
				"set firewall: ERROR (the kernel refused vpnd's nftables table)",
				"the kernel has not matched yet: ... (errors that may pass, such as lost answers, went on for 5 s)",
				"the VPN's link is gone (someone deleted the new link during the bring-up)",
			},
			Fix:   "Read vpnd's log for the step; for a taken interface name, delete that link or start vpnd with another --ifname.",
			Sites: []string{"internal/manager/manager.go: bring-up"},
		},
		{
			Text:   "vpnd's routing table or rule priority holds routes or rules that someone else added since vpnd started; vpnd shares neither.",
			Detail: "routing table T or rule priority P is in use by someone else: ROUTES AND RULES",
			Fix:    "Remove them (ip rule del ..., ip route flush table T), or run vpnd with another --table and --rule-priority.",
			Sites:  []string{"internal/manager/manager.go: routing table %d or rule priority %d is in use by someone else: %s"},
		},
		{
			Text: "reading the kernel's state through netlink failed.",
			Cases: []string{
				"read the host's addresses: ERROR (setUp by a normal user, whose addresses are checked against the host's)",
			},
			Sites: []string{
				"internal/manager/manager.go: read the host's addresses",
			},
		},
		{
			Text:   "protect: setting the socket's mark failed.",
			Detail: "set SO_MARK: ERROR (vpnd lacks CAP_NET_ADMIN)",
			Sites:  []string{"internal/manager/manager.go: set SO_MARK"},
		},
		{
			Text: "the user database could not be read (not an unknown user: the lookup itself failed, e.g. an NSS service is down).",
			Cases: []string{
				"user database: ERROR (resolving the caller's own uid and groups)",
				`look up user "NAME": ERROR (a user named in an application list)`,
				`user "NAME" has an unusable uid "UID"`,
				"PATH: no user database (a program that uses vpnd's packages without one; vpnd itself always has one)",
			},
			Sites: []string{
				"internal/server/server.go: user database",
				"internal/config/users.go: look up user %q",
				"internal/config/users.go: user %q has an unusable uid %q",
				"internal/config/parse.go: %s: no user database",
			},
		},
		{
			Text: "setLockdown could not apply or store lockdown; the kernel's rules are as they were.",
			Cases: []string{
				"apply lockdown: ERROR (netlink refused a rule, or the kernel refused vpnd's nftables table)",
				"store lockdown state: ERROR (vpnd's --state-dir is not writable)",
			},
			Sites: []string{
				"internal/manager/lockdown.go: apply lockdown",
				"internal/manager/lockdown.go: store lockdown state",
			},
		},
		{
			Text:   "vpnd is stopping (SIGTERM or SIGINT): from then on it refuses every setUp, destroy, protect and setLockdown.",
			Detail: "vpnd is shutting down",
			Fix:    "Wait for vpnd to be started again, then call again.",
			Sites:  []string{"internal/manager/manager.go: vpnd is shutting down"},
		},
		{
			Text: "never for a failed hand-off of the TUN fd: vpnd cannot answer a client it cannot write to. It closes the connection and ends the VPN (reason ownerGone); the client sees the connection drop.",
		},
	},
	CodePermission: {
		{
			Text:   "destroy or protect while a VPN exists, by a caller that neither owns it nor is an ADMIN account.",
			Detail: "the VPN is owned by uid N; caller uid M is neither its owner nor admin",
			Fix:    "Call as the VPN's owner or an admin (e.g. root).",
			Sites: []string{
				"internal/manager/manager.go: the VPN is owned by uid %d; caller uid %d is neither its owner nor admin",
				"internal/manager/manager.go: the VPN is owned by uid %d; caller uid %d is neither its owner nor admin",
			},
		},
		{
			Text:   "protect by a GUEST account.",
			Detail: "user NAME (uid N) is a guest account",
			Sites:  []string{"internal/manager/manager.go: user %s (uid %d) is a guest account"},
		},
		{
			Text:   "setUp by a non-admin whose trustedApplications or blockedApplications name another user than the caller.",
			Detail: "trustedApplications[N]: naming another user (uid U) needs an admin account; caller uid M is normal",
			Fix:    "Name only yourself, or set the VPN up as an admin.",
			Sites:  []string{"internal/manager/manager.go: %s[%d]: naming another user (uid %d) needs an admin account; caller uid %d is %s"},
		},
		{
			Text:   "setUp by a non-admin with an address outside the account policy's addressPools (by default 10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16 and fc00::/7): a VPN address becomes local for every user of the host.",
			Detail: "addresses[N]: ADDRESS is outside the address pools allowed to non-admin users (POOLS); caller uid M is normal",
			Fix:    "Use an address inside the pools, or ask the administrator to widen addressPools.",
			Sites:  []string{"internal/manager/manager.go: addresses[%d]: %s is outside the address pools allowed to non-admin users (%s); caller uid %d is %s"},
		},
		{
			Text:   "setUp by a non-admin with an address that overlaps an address or on-link prefix of another interface of the host.",
			Detail: "addresses[N]: ADDRESS overlaps PREFIX on IFNAME, and a non-admin user's VPN address must not overlap the host's own networks; ...",
			Fix:    "Pick a VPN subnet that the host does not use.",
			Sites:  []string{"internal/manager/manager.go: addresses[%d]: %s overlaps %s on %s, and a non-admin user's VPN address must not overlap the host's own networks; caller uid %d is %s"},
		},
		{
			Text: "setUp with \"offload\": true by a caller that vpnd's --allow-offload leaves out: a non-admin under --allow-offload admin, anyone under --allow-offload none.",
			Cases: []string{
				"offload: this vpnd allows it to admin accounts only (--allow-offload admin); caller uid N is normal",
				"offload: this vpnd allows it to nobody (--allow-offload none)",
			},
			Fix: "Set the VPN up without offload (vpnd-wg does so by itself), or ask the administrator.",
			Sites: []string{
				"internal/manager/manager.go: offload: this vpnd allows it to admin accounts only (--allow-offload admin); caller uid %d is %s",
				"internal/manager/manager.go: offload: this vpnd allows it to nobody (--allow-offload none)",
			},
		},
		{
			Text:   "setLockdown by a non-admin.",
			Detail: "setLockdown needs an admin account; caller uid N is normal",
			Sites:  []string{"internal/manager/lockdown.go: setLockdown needs an admin account; caller uid %d is %s"},
		},
	},
	CodeParse: {
		{
			Text: "a line that is not JSON. The connection stays open, except after a line that is too long.",
			Cases: []string{
				"message is not valid JSON",
				"message is not valid UTF-8",
				"message longer than 4194304 bytes (then vpnd closes the connection)",
			},
			Sites: []string{
				"internal/server/server.go: message is not valid JSON",
				"internal/server/server.go: message is not valid UTF-8",
				"internal/server/server.go: message longer than %d bytes",
			},
		},
	},
	CodeInvalidRequest: {
		{
			Text: "JSON, but not a JSON-RPC 2.0 request.",
			Cases: []string{
				"message is not a JSON object",
				`jsonrpc: must be "2.0"`,
				"method: must be a non-empty string",
				"id: must be a string, a number or null",
				"fds: ... (not a non-negative integer, or more descriptors declared than were sent)",
			},
			Sites: []string{
				"internal/server/server.go: message is not a JSON object",
				`internal/server/server.go: jsonrpc: must be "2.0"`,
				"internal/server/server.go: method: must be a non-empty string",
				"internal/server/server.go: id: must be a string, a number or null",
				"internal/server/server.go: fds: %v",
			},
		},
	},
	CodeMethodNotFound: {
		{
			Text:   "a method this vpnd does not have. It has setUp (and its alias create), protect, destroy, status, subscribe and setLockdown.",
			Detail: `unknown method "NAME"`,
			Sites:  []string{"internal/server/server.go: unknown method %.64q"},
		},
	},
}

// Unsent describes a code that a JSON-RPC client may expect but vpnd never
// sends.
type Unsent struct {
	Code    Code
	Name    string
	Instead string // what vpnd answers instead, and why
}

// LookupUnsent returns what vpnd answers in place of c, if c is one of
// JSON-RPC 2.0's codes that vpnd never sends.
func LookupUnsent(c Code) (Unsent, bool) {
	u, ok := unsent[c]
	return u, ok
}

var unsent = map[Code]Unsent{
	-32602: {
		Code: -32602, Name: "Invalid params (JSON-RPC 2.0)",
		Instead: "vpnd never sends -32602. Params of the wrong type or shape, a missing or unknown member, or a value out of range get 19900001 (Invalid parameter value.), OpenHarmony's code for them, with a detail naming the member: see `vpnctl explain 19900001`.",
	},
	-32603: {
		Code: -32603, Name: "Internal error (JSON-RPC 2.0)",
		Instead: "vpnd never sends -32603. What the kernel or the system refused gets 19900002 (System internal error.), OpenHarmony's code for it, after vpnd undid whatever it had half built: see `vpnctl explain 19900002`.",
	},
}
