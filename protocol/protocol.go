// Package protocol holds vpnd's wire messages (docs/protocol.md): the JSON-RPC
// 2.0 envelopes, the method names, the VpnConfig a client sends and the
// VpnInfo it gets back. It is public so that VPN apps written in Go can
// build requests without the client package; the framing and fd passing
// live in internal/rpc, the validation of a VpnConfig in internal/config.
package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vpnd/vpnd/internal/errs"
)

// Version is the only JSON-RPC version vpnd speaks.
const Version = "2.0"

// MaxMessage is the largest message, newline included, either side accepts.
const MaxMessage = 4 << 20

// MaxQueuedFDs is how many received descriptors a connection may have
// queued and not yet claimed by a message; one more closes the connection.
const MaxQueuedFDs = 16

// DefaultSocket is where vpnd listens unless told otherwise.
const DefaultSocket = "/run/vpnd/vpnd.sock"

// Method names. Create is OpenHarmony's vpnExtension name for setUp.
const (
	MethodSetUp     = "setUp"
	MethodCreate    = "create"
	MethodProtect   = "protect"
	MethodDestroy   = "destroy"
	MethodStatus    = "status"
	MethodSubscribe = "subscribe"
	// MethodStateChanged is the server notification sent to subscribers.
	MethodStateChanged = "vpnStateChanged"
)

// Request is a JSON-RPC request or notification as a client sends it.
// ID is nil for a notification. FDs counts the descriptors that travel
// with the message as SCM_RIGHTS.
type Request struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
	FDs     int             `json:"fds,omitempty"`
}

// Response is a JSON-RPC response. Exactly one of Result and Error is set.
// A response with FDs > 0 carries that many descriptors (setUp's TUN fd).
// Method and Params are set instead of ID/Result/Error for a server
// notification, so one type decodes everything a client reads.
type Response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *ErrorObject    `json:"error,omitempty"`
	FDs     int             `json:"fds,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
}

// ErrorObject is the "error" member of a failed response.
type ErrorObject struct {
	Code    int       `json:"code"`
	Message string    `json:"message"`
	Data    ErrorData `json:"data"`
}

// ErrorData is the "data" member: the catalogue's name, cause and
// solution, and what exactly was wrong.
type ErrorData struct {
	Name     string `json:"name"`
	Cause    string `json:"cause"`
	Solution string `json:"solution"`
	Detail   string `json:"detail"`
}

// maxDetail bounds data.detail in bytes.
const maxDetail = 1024

// NewErrorObject builds the wire form of err. An error that is not an
// *errs.Error becomes 19900002 with its text as the detail.
func NewErrorObject(err error) *ErrorObject {
	code := errs.CodeOf(err)
	detail := err.Error()
	var e *errs.Error
	if errors.As(err, &e) {
		detail = e.Detail
	}
	if len(detail) > maxDetail {
		// A detail may quote the client's input; keep the answer small
		// whatever the client sent.
		detail = strings.ToValidUTF8(detail[:maxDetail], "") + "..."
	}
	entry, _ := errs.Lookup(code)
	return &ErrorObject{
		Code:    int(code),
		Message: code.Message(),
		Data: ErrorData{
			Name:     entry.Name,
			Cause:    entry.Cause,
			Solution: entry.Solution,
			Detail:   detail,
		},
	}
}

// Err turns the wire error back into an *errs.Error, so that errors.Is
// works on the client side against the same sentinels.
func (o *ErrorObject) Err() *errs.Error {
	return &errs.Error{Code: errs.Code(o.Code), Detail: o.Data.Detail}
}

// NetAddress is OpenHarmony's NetAddress. Family is 1 (IPv4) or 2 (IPv6)
// and may be left 0 to mean "from the address".
type NetAddress struct {
	Address string `json:"address"`
	Family  int    `json:"family,omitempty"`
}

// LinkAddress is OpenHarmony's LinkAddress: an address and a prefix length.
type LinkAddress struct {
	Address      NetAddress `json:"address"`
	PrefixLength int        `json:"prefixLength"`
}

// ParseLinkAddress turns a CIDR string such as "10.8.0.2/24" into a
// LinkAddress. It keeps the host bits, as an interface address needs them.
func ParseLinkAddress(cidr string) (LinkAddress, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return LinkAddress{}, err
	}
	fam := 1
	if p.Addr().Is6() {
		fam = 2
	}
	return LinkAddress{Address: NetAddress{Address: p.Addr().String(), Family: fam}, PrefixLength: p.Bits()}, nil
}

// String returns the CIDR form, e.g. "10.8.0.2/24".
func (a LinkAddress) String() string { return fmt.Sprintf("%s/%d", a.Address.Address, a.PrefixLength) }

// RouteInfo is OpenHarmony's RouteInfo. Interface, HasGateway and
// IsDefaultRoute are accepted by vpnd and ignored.
type RouteInfo struct {
	Destination     LinkAddress `json:"destination"`
	Gateway         *NetAddress `json:"gateway,omitempty"`
	IsExcludedRoute bool        `json:"isExcludedRoute,omitempty"`
	Interface       string      `json:"interface,omitempty"`
	HasGateway      bool        `json:"hasGateway,omitempty"`
	IsDefaultRoute  bool        `json:"isDefaultRoute,omitempty"`
}

// VpnConfig is the setUp parameter object, in OpenHarmony's field names.
// Pointer booleans distinguish "absent, use the default" from false.
// vpnd also accepts CIDR strings for addresses and routes; this type always
// sends the object form.
//
// AllowFamilyBypass is vpnd's own member (Android's allowFamily): for an
// address family the VPN does not accept, vpnd makes the covered users'
// traffic of that family fail closed, so that it cannot leak outside the
// VPN; true lets that traffic take the normal path instead.
//
// Offload is vpnd's own member too: true creates the TUN with
// IFF_VNET_HDR, so that every read and write on its fd carries a 10-byte
// struct virtio_net_hdr before the packet, and the app may turn on the
// TUN's offloads (TSO, USO, checksum) with TUNSETOFFLOAD on its fd. Only
// an app that handles that header may ask for it. An older vpnd refuses
// the member (19900001, "params.offload: unknown member").
type VpnConfig struct {
	Addresses           []LinkAddress `json:"addresses"`
	Routes              []RouteInfo   `json:"routes,omitempty"`
	DNSAddresses        []string      `json:"dnsAddresses,omitempty"`
	SearchDomains       []string      `json:"searchDomains,omitempty"`
	MTU                 int           `json:"mtu,omitempty"`
	IsIPv4Accepted      *bool         `json:"isIPv4Accepted,omitempty"`
	IsIPv6Accepted      *bool         `json:"isIPv6Accepted,omitempty"`
	IsBlocking          bool          `json:"isBlocking,omitempty"`
	IsMetered           bool          `json:"isMetered,omitempty"`
	IsLegacy            bool          `json:"isLegacy,omitempty"`
	AllowFamilyBypass   bool          `json:"allowFamilyBypass,omitempty"`
	Offload             bool          `json:"offload,omitempty"`
	TrustedApplications []string      `json:"trustedApplications,omitempty"`
	BlockedApplications []string      `json:"blockedApplications,omitempty"`
}

// Owner identifies the client that set the VPN up, from its peer
// credentials at connect time.
type Owner struct {
	UID  uint32 `json:"uid"`
	PID  int32  `json:"pid"`
	User string `json:"user"`
}

// VpnInfo describes the VPN as vpnd applied it. Routes are canonical CIDRs.
type VpnInfo struct {
	Interface      string   `json:"interface"`
	Index          int      `json:"index"`
	MTU            int      `json:"mtu"`
	Addresses      []string `json:"addresses"`
	Routes         []string `json:"routes"`
	ExcludedRoutes []string `json:"excludedRoutes"`
	DNSAddresses   []string `json:"dnsAddresses"`
	SearchDomains  []string `json:"searchDomains"`
	// DNSBackend names what applied DNSAddresses and SearchDomains to the
	// host's resolver: "resolved", "file", or "none" when nothing did.
	DNSBackend          string   `json:"dnsBackend"`
	IsIPv4Accepted      bool     `json:"isIPv4Accepted"`
	IsIPv6Accepted      bool     `json:"isIPv6Accepted"`
	IsMetered           bool     `json:"isMetered"`
	AllowFamilyBypass   bool     `json:"allowFamilyBypass"`
	Offload             bool     `json:"offload"` // the TUN has IFF_VNET_HDR (see VpnConfig)
	TrustedApplications []string `json:"trustedApplications"`
	BlockedApplications []string `json:"blockedApplications"`
	Owner               Owner    `json:"owner"`
	Since               string   `json:"since"`
	// RouteGateways and CoveredUIDs are vpnd's own members, which
	// OpenHarmony's clients ignore. RouteGateways maps each route that has
	// a gateway (canonical CIDR) to it; routes without one are not in it.
	// CoveredUIDs are the uid ranges ("A-B") whose traffic enters the VPN.
	RouteGateways map[string]string `json:"routeGateways"`
	CoveredUIDs   []string          `json:"coveredUids"`
	// Simulated is true when vpnd runs in simulation mode (`vpnd --sim`):
	// the VPN exists in vpnd's model only, and its fd is not a TUN. Absent
	// otherwise.
	Simulated bool `json:"simulated,omitempty"`
}

// State values of StatusResult.
const (
	StateConnected    = "connected"
	StateDisconnected = "disconnected"
)

// StatusResult is the result of status.
type StatusResult struct {
	State    string   `json:"state"`
	VPN      *VpnInfo `json:"vpn"`
	Lockdown Lockdown `json:"lockdown"`
}

// Reasons of a vpnStateChanged notification.
const (
	ReasonSetUp     = "setUp"
	ReasonDestroy   = "destroy"
	ReasonOwnerGone = "ownerGone"
	ReasonLinkGone  = "linkGone"
	ReasonShutdown  = "shutdown"
)

// StateChanged is the params of a vpnStateChanged notification.
type StateChanged struct {
	IsConnected bool     `json:"isConnected"`
	Interface   string   `json:"interface"`
	Reason      string   `json:"reason"`
	VPN         *VpnInfo `json:"vpn"`
	// Lockdown is set when lockdown changed (reason "lockdown").
	Lockdown *Lockdown `json:"lockdown,omitempty"`
}

// MethodSetLockdown turns lockdown on or off: chosen users' traffic may
// leave only through a VPN. ADMIN only.
const MethodSetLockdown = "setLockdown"

// ReasonLockdown is the reason of a notification sent because lockdown
// changed.
const ReasonLockdown = "lockdown"

// Lockdown is lockdown's state, and the params of setLockdown.
// Applications are user names or uids; when Enabled, at least one is
// needed.
type Lockdown struct {
	Enabled      bool     `json:"enabled"`
	Applications []string `json:"applications"`
}
