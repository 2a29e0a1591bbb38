package test

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tunKindFlags are the TUNGETIFF flags that describe the device kind.
const tunKindFlags = unix.IFF_TUN | unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE | unix.IFF_PERSIST | unix.IFF_VNET_HDR

// wantTUNFD checks the descriptor a setUp response carried: a
// non-persistent single-queue TUN without packet info, named ifname.
func wantTUNFD(t testing.TB, m rpcMsg, ifname string, nonblock bool) {
	t.Helper()
	if len(m.fdInfo) != 1 {
		t.Fatalf("setUp carried %d fds, want 1", len(m.fdInfo))
	}
	fi := m.fdInfo[0]
	if simBackend {
		// One end of a socket pair, one packet per message.
		if fi.TUN || fi.Domain != unix.AF_UNIX || fi.Type != unix.SOCK_SEQPACKET {
			t.Errorf("setUp's fd under sim is %s, want an AF_UNIX SOCK_SEQPACKET socket", fi)
		}
		if fi.NonBlocking != nonblock {
			t.Errorf("fd O_NONBLOCK=%v, want %v", fi.NonBlocking, nonblock)
		}
		return
	}
	if !fi.TUN {
		t.Fatalf("setUp's fd is not a TUN (TUNGETIFF failed): %s", fi)
	}
	if fi.IfName != ifname {
		t.Errorf("TUNGETIFF name %q, want %q", fi.IfName, ifname)
	}
	if got := fi.Flags & tunKindFlags; got != unix.IFF_TUN|unix.IFF_NO_PI {
		t.Errorf("TUNGETIFF flags %#x, want IFF_TUN|IFF_NO_PI (%#x) and nothing else of %#x", got, unix.IFF_TUN|unix.IFF_NO_PI, tunKindFlags)
	}
	if fi.NonBlocking != nonblock {
		t.Errorf("TUN fd O_NONBLOCK=%v, want %v", fi.NonBlocking, nonblock)
	}
	if fi.Path != "/dev/net/tun" {
		t.Errorf("TUN fd points at %q, want /dev/net/tun", fi.Path)
	}
}

// wantTUNLink checks the link in the kernel: a non-persistent tun, up,
// with this mtu. It returns the link.
func (d *daemon) wantTUNLink(t testing.TB, mtu int) ipLink {
	t.Helper()
	if d.sim {
		return d.simTUNLink(t, mtu)
	}
	l := d.link(t, d.ifname)
	if l == nil {
		t.Fatalf("no link %s in the namespace", d.ifname)
	}
	if l.kind() != "tun" {
		t.Errorf("link %s kind %q, want tun", d.ifname, l.kind())
	}
	if l.Linkinfo != nil {
		data := l.Linkinfo.InfoData
		if data["type"] != "tun" || data["pi"] != false || data["persist"] != false || data["multi_queue"] != false {
			t.Errorf("link %s info_data %v, want type tun, pi false, persist false, multi_queue false", d.ifname, data)
		}
	}
	if !l.hasFlag("UP") {
		t.Errorf("link %s is not up: flags %v", d.ifname, l.Flags)
	}
	if l.MTU != mtu {
		t.Errorf("link %s mtu %d, want %d", d.ifname, l.MTU, mtu)
	}
	// Addresses carry noprefixroute: nothing of the VPN's may be in the
	// main table, where it would serve every uid, and the link has no
	// IPv6 link-local address of the kernel's own.
	if got := d.mainRoutesVia(t, d.ifname); len(got) > 0 {
		t.Errorf("main table has routes via %s: %v", d.ifname, got)
	}
	for _, a := range d.addrs(t, d.ifname) {
		if a.Scope == "link" {
			t.Errorf("link %s has a link-local address %s/%d", d.ifname, a.Local, a.Prefixlen)
		}
	}
	return *l
}

// mainRoutesVia lists the main table's routes through the link.
func (d *daemon) mainRoutesVia(t testing.TB, ifname string) []string {
	t.Helper()
	var out []string
	for _, fam := range []string{"-4", "-6"} {
		var rs []ipRoute
		nsJSON(t, d.ns, &rs, fam, "route", "show", "table", "main", "dev", ifname)
		for _, r := range rs {
			out = append(out, fam+" "+r.String())
		}
	}
	return out
}

// globalAddrs lists the link's non-link-local addresses as CIDR strings.
func (d *daemon) globalAddrs(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, a := range d.addrs(t, d.ifname) {
		if a.Scope == "link" {
			continue
		}
		out = append(out, fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
	}
	sort.Strings(out)
	return out
}

// routeStrings lists the routes of vpnd's table, sorted.
func (d *daemon) routeStrings(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, r := range d.routes(t) {
		out = append(out, r.String())
	}
	sort.Strings(out)
	return out
}

// v6Unreachable is the IPv6 default of an IPv4-only VPN's table: IPv6
// fails closed.
const v6Unreachable = "ipv6 unreachable default dev lo"

func sorted(s ...string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func equalStrings(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

// ruleCheck describes what the rules at vpnd's priority must do for one
// family: the owner's rule (uidrange O-O fwmark 0/mark) if ownerCovered,
// and which other uids enter the VPN without a fwmark match.
type ruleCheck struct {
	family       int
	owner        uint32
	ownerCovered bool
	covered      []uint32 // other uids that must be covered
	notCovered   []uint32 // uids no rule may cover
}

func (d *daemon) checkRules(t testing.TB, want []ruleCheck) {
	t.Helper()
	rules := d.vpnRules(t)
	byFam := map[int][]ipRule{}
	for _, r := range rules {
		byFam[r.Family] = append(byFam[r.Family], r)
		if r.Table != fmt.Sprint(d.table) {
			t.Errorf("rule %s does not look up table %d", r, d.table)
		}
		if r.Action != "" {
			t.Errorf("rule %s has action %q, want a plain lookup", r, r.Action)
		}
	}
	wanted := map[int]bool{}
	for _, w := range want {
		wanted[w.family] = true
		rs := byFam[w.family]
		var ownerRules, others []ipRule
		for _, r := range rs {
			if r.Fwmark != "" || r.Fwmask != "" {
				ownerRules = append(ownerRules, r)
			} else {
				others = append(others, r)
			}
		}
		if w.ownerCovered {
			if len(ownerRules) != 1 {
				t.Errorf("%s: want exactly one rule with a fwmark match (the owner's), got %v", famName(w.family), rs)
			} else {
				r := ownerRules[0]
				if !r.covers(w.owner) || *r.UIDStart != w.owner || *r.UIDEnd != w.owner {
					t.Errorf("%s: owner rule %s, want uidrange %d-%d", famName(w.family), r, w.owner, w.owner)
				}
				if !fwmarkIsZero(r.Fwmark) || !sameHex(r.Fwmask, d.mark) {
					t.Errorf("%s: owner rule %s, want fwmark 0/%#x", famName(w.family), r, d.mark)
				}
			}
		} else if len(ownerRules) != 0 {
			t.Errorf("%s: the owner is not covered, but there are fwmark rules %v", famName(w.family), ownerRules)
		}
		for _, r := range others {
			if r.UIDStart == nil {
				t.Errorf("%s: rule %s matches every uid", famName(w.family), r)
			}
			if r.covers(w.owner) {
				t.Errorf("%s: rule %s covers the owner %d without the fwmark match", famName(w.family), r, w.owner)
			}
		}
		for _, uid := range w.covered {
			n := 0
			for _, r := range others {
				if r.covers(uid) {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%s: uid %d is covered by %d rules without fwmark, want 1: %v", famName(w.family), uid, n, rs)
			}
		}
		for _, uid := range w.notCovered {
			for _, r := range rs {
				if r.covers(uid) {
					t.Errorf("%s: uid %d must not enter the VPN, but rule %s covers it", famName(w.family), uid, r)
				}
			}
		}
	}
	for fam, rs := range byFam {
		if !wanted[fam] && len(rs) > 0 {
			t.Errorf("%s is not accepted, but has rules %v", famName(fam), rs)
		}
	}
}

func fwmarkIsZero(s string) bool { return s == "0" || s == "0x0" || s == "0x00000000" }

func sameHex(s string, v uint32) bool {
	var got uint32
	if _, err := fmt.Sscanf(s, "%v", &got); err != nil {
		return false
	}
	return got == v
}

// The happy path, checked against the kernel, not vpnd's word.
func TestSetUpHappyPath(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.dial(t, uidRoot)
	m := c.call("setUp", setUpParams, "")
	info := setUpOK(t, m)
	wantTUNFD(t, m, "vpn-tun", true)

	l := d.wantTUNLink(t, 1500)
	if !d.sim {
		d.wantHappyPathKernel(t)
	}

	// VpnInfo as applied.
	if info.Interface != "vpn-tun" || info.Index != l.Ifindex || info.MTU != 1500 {
		t.Errorf("VpnInfo interface %q index %d mtu %d, kernel says vpn-tun %d 1500", info.Interface, info.Index, info.MTU, l.Ifindex)
	}
	if !equalStrings(info.Addresses, []string{"10.8.0.2/24"}) || !equalStrings(info.Routes, []string{"198.51.100.0/24"}) {
		t.Errorf("VpnInfo addresses %v routes %v", info.Addresses, info.Routes)
	}
	if !info.IsIPv4Accepted || info.IsIPv6Accepted {
		t.Errorf("VpnInfo isIPv4Accepted %v isIPv6Accepted %v, want true false", info.IsIPv4Accepted, info.IsIPv6Accepted)
	}
	if info.Owner.UID != 0 || info.Owner.User != "root" || info.Owner.PID != c.cmd.Process.Pid {
		t.Errorf("VpnInfo owner %+v, want uid 0 root pid %d", info.Owner, c.cmd.Process.Pid)
	}
	if _, err := time.Parse(time.RFC3339, info.Since); err != nil {
		t.Errorf("VpnInfo since %q is not RFC3339: %v", info.Since, err)
	}

	// status, for the owner and for anyone else.
	for _, who := range []*client{c, d.dial(t, uidNormal), d.dial(t, uidNobody)} {
		s := who.status()
		if s.State != "connected" || s.VPN == nil || s.VPN.Index != l.Ifindex || s.VPN.Interface != "vpn-tun" {
			t.Errorf("status for uid %d: %+v", who.uid, s)
		}
	}

	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
	if s := c.status(); s.State != "disconnected" || s.VPN != nil {
		t.Errorf("status after destroy: %+v", s)
	}
	// destroy is idempotent.
	ok(t, c.call("destroy", "{}", ""))
}

// wantHappyPathKernel checks TestSetUpHappyPath's VPN in the kernel.
func (d *daemon) wantHappyPathKernel(t testing.TB) {
	t.Helper()
	if got := d.globalAddrs(t); !equalStrings(got, []string{"10.8.0.2/24"}) {
		t.Errorf("addresses %v, want [10.8.0.2/24]", got)
	}
	if got, want := d.routeStrings(t), sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 198.51.100.0/24 dev vpn-tun", v6Unreachable); !equalStrings(got, want) {
		t.Errorf("table 98: %v, want %v", got, want)
	}
	// root is ADMIN: its own traffic enters unless protected, every other
	// uid's traffic enters regardless of marks; IPv6 is not accepted, and
	// fails closed for the same uids.
	d.checkRules(t, []ruleCheck{{family: unix.AF_INET, owner: 0, ownerCovered: true,
		covered: []uint32{1, 2, 4000, 65534, 1 << 31}}, {family: unix.AF_INET6, owner: 0, ownerCovered: true,
		covered: []uint32{1, 2, 4000, 65534, 1 << 31}}})
	var ownerRule *ipRule
	for _, r := range d.vpnRules(t) {
		if r.Fwmask != "" {
			r := r
			ownerRule = &r
		}
	}
	if ownerRule == nil || ownerRule.Priority != 10000 || *ownerRule.UIDStart != 0 || *ownerRule.UIDEnd != 0 ||
		ownerRule.Fwmark != "0" || ownerRule.Fwmask != "0x20000" || ownerRule.Table != "98" {
		t.Errorf("want `priority 10000 uidrange 0-0 fwmark 0/0x20000 lookup 98`, got %v", ownerRule)
	}
}

// kernelSnapshot is what the tests compare between two setUps.
type kernelSnapshot struct {
	mtu    int
	up     bool
	addrs  []string
	routes []string
	rules  []string
}

func (d *daemon) snapshot(t testing.TB) kernelSnapshot {
	t.Helper()
	if d.sim {
		return d.simSnapshot(t)
	}
	l := d.link(t, d.ifname)
	if l == nil {
		t.Fatalf("no link %s", d.ifname)
	}
	var rules []string
	for _, r := range d.vpnRules(t) {
		rules = append(rules, r.String())
	}
	sort.Strings(rules)
	return kernelSnapshot{mtu: l.MTU, up: l.hasFlag("UP"), addrs: d.globalAddrs(t), routes: d.routeStrings(t), rules: rules}
}

// CIDR strings and OpenHarmony objects configure the same thing.
func TestSetUpConfigForms(t *testing.T) {
	kernelOnly(t, "compares the kernel state two config forms produce")
	t.Parallel()
	d := startDaemon(t)
	c := d.dial(t, uidRoot)
	forms := map[string]string{
		"CIDR strings": `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["198.51.100.77/24","203.0.113.9/32","2001:db8::/32","198.51.100.0/24"],"mtu":1400}`,
		"objects": `{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24},{"address":{"address":"fd00::2"},"prefixLength":64}],` +
			`"routes":[{"destination":{"address":{"address":"198.51.100.77"},"prefixLength":24},"interface":"whatever","hasGateway":false,"isDefaultRoute":false},` +
			`{"destination":{"address":{"address":"203.0.113.9","family":1},"prefixLength":32}},` +
			`{"destination":{"address":{"address":"2001:db8::","family":2},"prefixLength":32},"isExcludedRoute":false},` +
			`{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":24}}],"mtu":1400}`,
	}
	want := kernelSnapshot{
		mtu: 1400, up: true,
		addrs: sorted("10.8.0.2/24", "fd00::2/64"),
		routes: sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 198.51.100.0/24 dev vpn-tun", "ipv4 203.0.113.9 dev vpn-tun",
			"ipv6 2001:db8::/32 dev vpn-tun", "ipv6 fd00::/64 dev vpn-tun"),
	}
	var snaps []kernelSnapshot
	for _, name := range []string{"CIDR strings", "objects"} {
		t.Run(name, func(t *testing.T) {
			c.t = t
			info := setUpOK(t, c.call("setUp", forms[name], ""))
			if !equalStrings(sorted(info.Routes...), sorted("198.51.100.0/24", "203.0.113.9/32", "2001:db8::/32")) {
				t.Errorf("VpnInfo routes %v: want canonical, merged CIDRs", info.Routes)
			}
			s := d.snapshot(t)
			snaps = append(snaps, s)
			if s.mtu != want.mtu || s.up != want.up || !equalStrings(s.addrs, want.addrs) || !equalStrings(s.routes, want.routes) {
				t.Errorf("kernel state %+v, want %+v", s, want)
			}
			d.checkRules(t, []ruleCheck{
				{family: unix.AF_INET, owner: 0, ownerCovered: true, covered: []uint32{1, 65534}},
				{family: unix.AF_INET6, owner: 0, ownerCovered: true, covered: []uint32{1, 65534}},
			})
			ok(t, c.call("destroy", "{}", ""))
			d.waitClean(t, "destroy")
		})
	}
	c.t = t
	if len(snaps) == 2 && fmt.Sprintf("%+v", snaps[0]) != fmt.Sprintf("%+v", snaps[1]) {
		t.Errorf("the two forms differ in the kernel:\n%+v\n%+v", snaps[0], snaps[1])
	}
}

// Defaults, excluded routes, gateways, boundaries, blocking mode.
// Under sim, the fd's mode and VpnInfo are checked; the kernel is not.
func TestSetUpKernelDetails(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.dial(t, uidRoot)
	ownerBoth := []ruleCheck{
		{family: unix.AF_INET, owner: 0, ownerCovered: true, covered: []uint32{1}},
		{family: unix.AF_INET6, owner: 0, ownerCovered: true, covered: []uint32{1}},
	}
	cases := []struct {
		name     string
		params   string
		mtu      int
		addrs    []string
		routes   []string
		rules    []ruleCheck
		nonblock bool
		check    func(t *testing.T, info vpnInfo)
	}{
		{
			name:   "no routes: a default route per accepted family",
			params: `{"addresses":["10.8.0.2/24","fd00::2/64"]}`,
			mtu:    1500, addrs: sorted("10.8.0.2/24", "fd00::2/64"),
			routes:   sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 default dev vpn-tun", "ipv6 default dev vpn-tun", "ipv6 fd00::/64 dev vpn-tun"),
			rules:    ownerBoth,
			nonblock: true,
			check: func(t *testing.T, info vpnInfo) {
				if !equalStrings(sorted(info.Routes...), sorted("0.0.0.0/0", "::/0")) {
					t.Errorf("VpnInfo routes %v, want 0.0.0.0/0 and ::/0", info.Routes)
				}
				if !info.IsIPv4Accepted || !info.IsIPv6Accepted {
					t.Errorf("both families should be accepted by default: %+v", info)
				}
			},
		},
		{
			name:   "IPv6 only",
			params: `{"addresses":["fd00::2/64"],"mtu":1280}`,
			mtu:    1280, addrs: []string{"fd00::2/64"},
			routes:   sorted("ipv4 unreachable default", "ipv6 default dev vpn-tun", "ipv6 fd00::/64 dev vpn-tun"),
			rules:    ownerBoth, // IPv4 fails closed
			nonblock: true,
		},
		{
			name:   "isIPv6Accepted false",
			params: `{"addresses":["10.8.0.2/24","fd00::2/64"],"isIPv6Accepted":false}`,
			mtu:    1500, addrs: sorted("10.8.0.2/24", "fd00::2/64"),
			routes:   sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 default dev vpn-tun", v6Unreachable),
			rules:    ownerBoth, // IPv6 fails closed
			nonblock: true,
		},
		{
			name: "excluded route, gateway, explicit default",
			params: `{"addresses":["10.8.0.2/24"],"routes":[` +
				`{"destination":{"address":{"address":"0.0.0.0"},"prefixLength":0}},` +
				`{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":24},"isExcludedRoute":true},` +
				`{"destination":{"address":{"address":"203.0.113.0"},"prefixLength":24},"gateway":{"address":"10.8.0.1"}}]}`,
			mtu: 1500, addrs: []string{"10.8.0.2/24"},
			routes: sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 default dev vpn-tun", "ipv4 throw 198.51.100.0/24",
				"ipv4 203.0.113.0/24 via 10.8.0.1 dev vpn-tun", v6Unreachable),
			rules:    ownerBoth, // IPv6 fails closed
			nonblock: true,
			check: func(t *testing.T, info vpnInfo) {
				if !equalStrings(info.ExcludedRoutes, []string{"198.51.100.0/24"}) {
					t.Errorf("VpnInfo excludedRoutes %v", info.ExcludedRoutes)
				}
				if !equalStrings(sorted(info.Routes...), sorted("0.0.0.0/0", "203.0.113.0/24")) {
					t.Errorf("VpnInfo routes %v", info.Routes)
				}
			},
		},
		{
			name:   "only excluded routes: defaults still installed",
			params: `{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":24},"isExcludedRoute":true}]}`,
			mtu:    1500, addrs: []string{"10.8.0.2/24"},
			routes:   sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 default dev vpn-tun", "ipv4 throw 198.51.100.0/24", v6Unreachable),
			rules:    ownerBoth, // IPv6 fails closed
			nonblock: true,
		},
		{
			name:   "/31 and /32 addresses, mtu 576, blocking",
			params: `{"addresses":["10.8.0.0/31","10.9.0.1/32"],"routes":["198.51.100.0/24"],"mtu":576,"isBlocking":true}`,
			mtu:    576, addrs: sorted("10.8.0.0/31", "10.9.0.1/32"),
			routes:   sorted("ipv4 10.8.0.0/31 dev vpn-tun", "ipv4 198.51.100.0/24 dev vpn-tun", v6Unreachable),
			rules:    ownerBoth, // IPv6 fails closed
			nonblock: false,
		},
		{
			name:   "mtu 65535, dns, search domains, metered",
			params: `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],"mtu":65535,"dnsAddresses":["10.8.0.1","fd00::1"],"searchDomains":["corp.example"],"isMetered":true}`,
			mtu:    65535, addrs: []string{"10.8.0.2/24"},
			routes:   sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 198.51.100.0/24 dev vpn-tun", v6Unreachable),
			rules:    ownerBoth, // IPv6 fails closed
			nonblock: true,
			check: func(t *testing.T, info vpnInfo) {
				if !info.IsMetered || !equalStrings(info.DNSAddresses, []string{"10.8.0.1", "fd00::1"}) ||
					!equalStrings(info.SearchDomains, []string{"corp.example"}) {
					t.Errorf("VpnInfo isMetered %v dnsAddresses %v searchDomains %v", info.IsMetered, info.DNSAddresses, info.SearchDomains)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			m := c.call("setUp", tc.params, "")
			info := setUpOK(t, m)
			wantTUNFD(t, m, "vpn-tun", tc.nonblock)
			d.wantTUNLink(t, tc.mtu)
			if !d.sim {
				if got := d.globalAddrs(t); !equalStrings(got, tc.addrs) {
					t.Errorf("addresses %v, want %v", got, tc.addrs)
				}
				if got := d.routeStrings(t); !equalStrings(got, tc.routes) {
					t.Errorf("table 98 %v, want %v", got, tc.routes)
				}
				d.checkRules(t, tc.rules)
			}
			if tc.check != nil {
				tc.check(t, info)
			}
			ok(t, c.call("destroy", "{}", ""))
			d.waitClean(t, "destroy")
		})
	}
}

// who the VPN covers and its rules (docs/routing.md), by account type.
func TestRulesByAccountType(t *testing.T) {
	kernelOnly(t, "the kernel's rules for each account type")
	t.Parallel()
	d := startDaemon(t)
	v4 := `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]`
	cases := []struct {
		name   string
		uid    uint32
		params string
		rules  ruleCheck
	}{
		{"NORMAL owner: only its own uid, protectable", uidNormal, v4 + `}`,
			ruleCheck{family: unix.AF_INET, owner: uidNormal, ownerCovered: true, notCovered: []uint32{0, 1, 2, 3999, 4001, 65534}}},
		{"NORMAL owner trusting itself", uidDaemon, v4 + `,"trustedApplications":["daemon"]}`,
			ruleCheck{family: unix.AF_INET, owner: uidDaemon, ownerCovered: true, notCovered: []uint32{0, 2, 4000, 65534}}},
		{"ADMIN owner: everyone", uidRoot, v4 + `}`,
			ruleCheck{family: unix.AF_INET, owner: 0, ownerCovered: true, covered: []uint32{1, 2, 999, 4000, 65534}}},
		{"ADMIN trusting daemon and bin", uidRoot, v4 + `,"trustedApplications":["daemon","bin"]}`,
			ruleCheck{family: unix.AF_INET, owner: 0, ownerCovered: false, covered: []uint32{1, 2}, notCovered: []uint32{0, 3, 4000, 65534}}},
		{"ADMIN trusting itself and uid 2 by number", uidRoot, v4 + `,"trustedApplications":["root","2"]}`,
			ruleCheck{family: unix.AF_INET, owner: 0, ownerCovered: true, covered: []uint32{2}, notCovered: []uint32{1, 3, 4000, 65534}}},
		{"ADMIN blocking daemon", uidRoot, v4 + `,"blockedApplications":["daemon"]}`,
			ruleCheck{family: unix.AF_INET, owner: 0, ownerCovered: true, covered: []uint32{2, 4000, 65534}, notCovered: []uint32{1}}},
		{"ADMIN blocking itself", uidRoot, v4 + `,"blockedApplications":["root"]}`,
			ruleCheck{family: unix.AF_INET, owner: 0, ownerCovered: false, covered: []uint32{1, 2, 4000, 65534}, notCovered: []uint32{0}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := d.dial(t, tc.uid)
			setUpOK(t, c.call("setUp", tc.params, ""))
			// The VPN carries IPv4 only; the same uids get IPv6 rules too,
			// where the table's default is unreachable (fails closed).
			v6 := tc.rules
			v6.family = unix.AF_INET6
			d.checkRules(t, []ruleCheck{tc.rules, v6})
			ok(t, c.call("destroy", "{}", ""))
			d.waitClean(t, "destroy")
		})
	}
}

// vpnd's flags: --ifname, --table, --rule-priority and --protect-mark are used
// instead of the defaults, and the defaults are left alone.
func TestCustomKernelNames(t *testing.T) {
	kernelOnly(t, "the kernel names and the SO_MARK bit vpnd uses")
	t.Parallel()
	d := startDaemon(t, withKernelNames("vpntest0", 77, 12345, 0x40000))
	c := d.dial(t, uidNormal)
	m := c.call("setUp", setUpParams, "")
	setUpOK(t, m)
	wantTUNFD(t, m, "vpntest0", true)
	d.wantTUNLink(t, 1500)
	if got, want := d.routeStrings(t), sorted("ipv4 10.8.0.0/24 dev vpntest0", "ipv4 198.51.100.0/24 dev vpntest0", v6Unreachable); !equalStrings(got, want) {
		t.Errorf("table 77: %v, want %v", got, want)
	}
	d.checkRules(t, []ruleCheck{{family: unix.AF_INET, owner: uidNormal, ownerCovered: true, notCovered: []uint32{0}},
		{family: unix.AF_INET6, owner: uidNormal, ownerCovered: true, notCovered: []uint32{0}}})
	if p := nsLeftovers(t, d.ns, "vpn-tun", 98, 10000); len(p) > 0 {
		t.Errorf("the default names were used: %v", p)
	}
	c.send("protect", "{}", "udp")
	ok(t, c.response(c.nextID-1))
	if mk := c.mark(); mk != 0x40000 {
		t.Errorf("SO_MARK after protect %#x, want 0x40000", mk)
	}
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}

// vpnd never touches rules, routes or links it did not create, even at
// its own priority and in its own table.
func TestForeignObjectsUntouched(t *testing.T) {
	kernelOnly(t, "foreign kernel objects next to vpnd's")
	t.Parallel()
	d := startDaemon(t)
	// Neighbours of vpnd's objects: the same uid ranges and table at other
	// priorities, and a route in another table. (Sharing vpnd's priority or
	// table itself is refused: see TestTableOrPriorityInUse.)
	d.ip(t, "-4", "rule", "add", "priority", "10001", "uidrange", "6-6", "lookup", "97")
	d.ip(t, "-6", "rule", "add", "priority", "9999", "uidrange", "0-0", "fwmark", "0/0x20000", "lookup", "97")
	d.ip(t, "-4", "route", "add", "192.0.2.0/24", "dev", "lo", "table", "97")
	d.ip(t, "link", "add", "foreign0", "type", "bridge")
	foreign := func() []string {
		var out []string
		for _, r := range d.rules(t) {
			if r.Table == "97" {
				out = append(out, r.String())
			}
		}
		for _, r := range nsRoutes(t, d.ns, 97) {
			out = append(out, r.String())
		}
		if d.link(t, "foreign0") != nil {
			out = append(out, "foreign0")
		}
		return out
	}
	before := foreign()
	if len(before) != 4 {
		t.Fatalf("setup: %v", before)
	}
	removed := false
	remove := func() {
		d.ip(t, "-4", "rule", "del", "priority", "10001", "lookup", "97")
		d.ip(t, "-6", "rule", "del", "priority", "9999", "lookup", "97")
		d.ip(t, "-4", "route", "del", "192.0.2.0/24", "table", "97")
		d.ip(t, "link", "del", "foreign0")
		removed = true
	}
	t.Cleanup(func() {
		if !removed {
			remove()
		}
	})

	c := d.dial(t, uidRoot)
	setUpOK(t, c.call("setUp", `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["198.51.100.0/24","2001:db8::/32"]}`, ""))
	ok(t, c.call("destroy", "{}", ""))
	setUpOK(t, c.call("setUp", setUpParams, ""))
	c.closeTUN() // linkGone
	eventually(t, "linkGone teardown", func() (bool, string) {
		return d.link(t, "vpn-tun") == nil && len(d.routes(t)) == 0, fmt.Sprint(d.routeStrings(t))
	})
	eventually(t, "vpnd's own rules removed", func() (bool, string) {
		for _, r := range d.vpnRules(t) {
			if r.Table == "98" {
				return false, r.String()
			}
		}
		return true, ""
	})
	if after := foreign(); !equalStrings(after, before) {
		t.Errorf("foreign objects changed: %v, were %v", after, before)
	}
	remove()
}
