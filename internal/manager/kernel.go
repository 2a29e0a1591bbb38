package manager

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/uidrange"
)

// Kernel is everything the manager needs from the kernel, in the manager's
// own terms. internal/tun implements it with netlink and nftables;
// internal/sim implements it in memory for `vpnd --sim` and, wrapped with
// fault injection, for the unit tests (internal/tun/tuntest).
//
// The kernel keeps no state of vpnd's: it reads what is there (Read,
// FirewallHolds), carries out lists of changes (Apply, SetFirewall) and
// says when something in vpnd's places changed (Watch). Deciding what to
// change is the reconciler's job (reconcile.go), so that bring-up,
// rollback, self-healing, teardown and the start-up sweep are one
// mechanism. Every method acts on the network namespace vpnd runs in.
type Kernel interface {
	// CreateTUN creates a non-persistent TUN device (IFF_TUN|IFF_NO_PI|
	// IFF_TUN_EXCL, and IFF_VNET_HDR if opt.VnetHdr) and returns its only
	// fd and its interface index. The fd is non-blocking unless
	// opt.Blocking. The link lives exactly as long as some copy of the fd
	// is open. A name taken by another link is an error wrapping
	// ErrLinkExists.
	CreateTUN(name string, opt TUNOptions) (*os.File, int, error)
	// Read reports what the kernel holds now of what q asks for: the
	// links q.Links and q.Places.IfName, the routes of q.Places.Table and
	// the rules at q.Places.Priorities. It reads only the parts q.What
	// names. A dump the kernel interrupted (its state kept changing) is
	// retried; if it never completes the error wraps ErrTransient.
	Read(q Query) (*Have, error)
	// Apply carries out ops in order, in as few round trips as it can,
	// and returns each op's error (nil: done), indexed like ops. A
	// missing object is no error for a delete. err, if not nil, means
	// that the answers were lost (it wraps ErrTransient): some ops may
	// have been carried out, and the caller must read the kernel again.
	Apply(ops []Op) (results []error, err error)
	// FirewallHolds reports whether vpnd's firewall table holds exactly
	// f; for the zero Firewall, whether there is no such table.
	FirewallHolds(f Firewall) (bool, error)
	// SetFirewall makes vpnd's firewall table exactly f in one atomic
	// transaction; the zero Firewall removes the table. It never touches
	// another table.
	SetFirewall(f Firewall) error
	// Watch starts listening for changes in p that vpnd did not make. The
	// returned channel gets a token (at most one waits) whenever such a
	// change was announced; Sync says which parts it touched. It works
	// until ctx ends.
	Watch(ctx context.Context, p Places) (<-chan struct{}, error)
	// Sync returns the parts that changed since the last Sync, and clears
	// them. It first takes in every announcement the kernel queued before
	// the call: the kernel queues its announcement of a change before it
	// acknowledges the change to whoever made it, so an empty answer
	// proves that nothing changed behind vpnd's back since its last
	// acknowledged request. Lost announcements count as PartAll.
	Sync() Parts
	// HostPrefixes lists the addresses and on-link prefixes of every link
	// but the one named except (vpnd's own).
	HostPrefixes(except string) ([]HostPrefix, error)
	// MarkSocket ORs mark into the socket's SO_MARK, keeping its other bits.
	MarkSocket(fd int, mark uint32) error
}

// ErrTransient marks a kernel error that may well not happen again: lost
// answers, an interrupted dump, a full buffer, a timeout. A setUp retries
// it; an error without it is the kernel's refusal and fails the setUp.
var ErrTransient = transientError{}

type transientError struct{}

func (transientError) Error() string { return "transient kernel error" }

// ErrLinkExists reports that the interface name vpnd wants is held by a
// link vpnd did not create.
var ErrLinkExists = errors.New("interface name already in use")

// TUNOptions say how CreateTUN makes a TUN device. The zero value is
// vpnd's default: IFF_TUN|IFF_NO_PI, a non-blocking fd.
type TUNOptions struct {
	// Blocking leaves the fd in blocking mode.
	Blocking bool
	// VnetHdr adds IFF_VNET_HDR: every read and write on the fd carries a
	// struct virtio_net_hdr (VnetHdrLen bytes, the kernel's default)
	// before the packet, and the fd's owner may turn on the TUN's offloads
	// with TUNSETOFFLOAD, which needs no capability.
	VnetHdr bool
}

// VnetHdrLen is the size of struct virtio_net_hdr, the header that leads
// every packet on a TUN with IFF_VNET_HDR until TUNSETVNETHDRSZ changes it.
const VnetHdrLen = 10

// Places are what belongs to vpnd in its network namespace: its interface
// name, its routing table and its rule priorities (the VPN's, then
// lockdown's). vpnd never touches anything elsewhere.
type Places struct {
	IfName     string
	Table      int
	Priorities []int
}

// Parts name the parts of vpnd's places that a Read covers or a Watch
// reports changed.
type Parts uint8

const (
	PartLinks    Parts = 1 << iota // links and their addresses
	PartRoutes                     // routes in the table
	PartRules                      // rules at the priorities
	PartFirewall                   // the firewall table
	PartAll      = PartLinks | PartRoutes | PartRules | PartFirewall
)

func (p Parts) String() string {
	var names []string
	for i, n := range []string{"links", "routes", "rules", "firewall"} {
		if p&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "nothing"
	}
	return strings.Join(names, "+")
}

// Query says what Read reports.
type Query struct {
	Places Places
	// Links are the indexes of the links to report besides the one named
	// Places.IfName.
	Links []int
	What  Parts
}

// Have is what Read found.
type Have struct {
	// Links are the links asked for that exist: those with the indexes
	// asked for, and the one named IfName.
	Links  []LinkState
	Routes []Route // every route in the table
	Rules  []Rule  // every rule at the priorities, in the kernel's order
	// LinkNames are the names of the links the routes go through, to
	// describe them to people.
	LinkNames map[int]string
}

// LinkState is a link as the kernel has it.
type LinkState struct {
	Index int
	Name  string
	// TUN says that it is a TUN device (a TUN in TAP mode is not): the
	// only kind of link vpnd creates, and so the only kind it removes.
	TUN   bool
	MTU   int
	Up    bool
	Addrs []Addr
}

// Addr is an address on a link.
type Addr struct {
	Prefix netip.Prefix
	// Foreign says that the kernel's copy lacks a flag vpnd sets (no
	// prefix route; no duplicate address detection for IPv6): someone
	// else added it, and it may have put a prefix route into the main
	// table, where it serves every uid.
	Foreign bool
}

// Link is what vpnd wants of the VPN's TUN link besides creating it: its
// MTU, its addresses and the up state (always up). vpnd also sets loose
// reverse path filtering and no IPv6 address generation with the MTU
// (internal/tun says why).
type Link struct {
	Index int
	MTU   int
	Addrs []netip.Prefix
}

// RouteKind says what a route in vpnd's table does with the traffic it
// matches.
type RouteKind uint8

const (
	// Unicast sends the traffic into the VPN's link, to a gateway or
	// directly.
	Unicast RouteKind = iota
	// Throw ends the lookup in this table, so that the traffic goes on with
	// the next rule and takes the normal path: an excluded route.
	Throw
	// Unreachable refuses the traffic at once: how a VPN fails closed for
	// an IP family it does not carry.
	Unreachable
	// OtherKind is any other route type (blackhole, prohibit, local...):
	// never vpnd's; Read reports it.
	OtherKind
)

func (k RouteKind) String() string {
	switch k {
	case Unicast:
		return "unicast"
	case Throw:
		return "throw"
	case Unreachable:
		return "unreachable"
	case OtherKind:
		return "other"
	}
	return fmt.Sprintf("RouteKind(%d)", uint8(k))
}

// Route is a route in vpnd's table. Only a Unicast route has a link and
// maybe a gateway.
//
// The kernel tells two routes of a table apart by their family,
// destination, TOS and metric: a second route with the same four is the
// same route (an add fails with EEXIST, a replace replaces it, a delete
// with just those four deletes it whatever its type or protocol). So
// those four are a route's identity (RouteKey); the other fields are what
// vpnd wants it to be.
type Route struct {
	Dst netip.Prefix
	Tos uint8
	// Metric is the route's priority; 0 means the family's default (what
	// the kernel uses when none is given: 0 for IPv4, 1024 for IPv6).
	Metric    uint32
	Kind      RouteKind
	Gateway   netip.Addr // zero: directly on the link
	LinkIndex int        // 0 unless Unicast
	// Foreign says that the kernel's copy differs from what vpnd makes in
	// something the fields above do not show: another protocol, scope or
	// flags, several next hops. Read sets it; vpnd replaces such a route
	// where it wants one.
	Foreign bool
}

// RouteKey is a route's identity in a table.
type RouteKey struct {
	Dst    netip.Prefix
	Tos    uint8
	Metric uint32
}

// Key returns r's identity.
func (r Route) Key() RouteKey { return RouteKey{Dst: r.Dst.Masked(), Tos: r.Tos, Metric: r.Metric} }

// OnLink reports whether the route goes with its link: the kernel removes
// it when the link goes away (or down).
func (r Route) OnLink() bool { return r.Kind == Unicast }

// String renders the route the way `ip route` would.
func (r Route) String() string {
	var b strings.Builder
	if r.Kind != Unicast {
		b.WriteString(r.Kind.String())
		b.WriteByte(' ')
	}
	b.WriteString(r.Dst.String())
	if r.Gateway.IsValid() {
		fmt.Fprintf(&b, " via %s", r.Gateway)
	}
	if r.LinkIndex != 0 {
		fmt.Fprintf(&b, " dev #%d", r.LinkIndex)
	}
	if r.Tos != 0 {
		fmt.Fprintf(&b, " tos %#x", r.Tos)
	}
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	if r.Foreign {
		b.WriteString(" (changed by someone else)")
	}
	return b.String()
}

// RuleAction is what a rule does with the traffic it matches.
type RuleAction uint8

const (
	// Lookup looks the traffic up in Table.
	Lookup RuleAction = iota
	// Refuse answers ENETUNREACH (`ip rule ... unreachable`): lockdown's
	// rules, which refuse traffic that no VPN carries.
	Refuse
	// OtherAction is any other action (blackhole, prohibit, goto...):
	// never vpnd's; Read reports it.
	OtherAction
)

// Rule is one policy routing rule. vpnd's rules match a uid range; a
// Lookup rule looks up Table. Mask, when non-zero, adds "fwmark 0x0/Mask",
// so that sockets whose mark has a bit of Mask set (protected sockets) do
// not match.
//
// A rule is its own identity: the kernel refuses a second rule equal in
// every selector and action (EEXIST), and deletes the first rule that
// matches the selectors a delete gives.
type Rule struct {
	Family   int // unix.AF_INET or unix.AF_INET6
	Priority int
	Table    int // 0 unless Lookup
	UIDStart uint32
	UIDEnd   uint32
	Mark     uint32 // with Mask: "fwmark Mark/Mask"; vpnd's rules use 0
	Mask     uint32
	Action   RuleAction
	// Selectors is the kernel's own encoding of what else the rule
	// matches on (from, to, iif...), which vpnd never sets: "" for vpnd's
	// rules. Read sets it, so that a delete carries every selector the
	// kernel reported. (The kernel deletes the first rule that has them
	// all, which may still be another one: the reconciler reads its rules
	// again after every delete.)
	Selectors string
}

// String renders the rule the way `ip rule` would.
func (r Rule) String() string {
	fam := "ipv4"
	if r.Family == unix.AF_INET6 {
		fam = "ipv6"
	}
	s := fmt.Sprintf("%s %d: uidrange %d-%d", fam, r.Priority, r.UIDStart, r.UIDEnd)
	if r.Mask != 0 {
		s += fmt.Sprintf(" fwmark %#x/%#x", r.Mark, r.Mask)
	}
	if r.Selectors != "" {
		s += " (and other selectors)"
	}
	switch r.Action {
	case Refuse:
		return s + " unreachable"
	case OtherAction:
		return s + " (another action)"
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}

// Firewall is what vpnd's nftables table must hold: the covered users
// whose packets may leave only by loopback, the VPN's link, or from a
// protected socket. Policy routing cannot stop what never consults the
// rules (multicast and broadcast that the local table routes; multicast
// and limited broadcast from a socket with a bound source or device), so
// lockdown and the other family's fail-closed are enforced here too.
type Firewall struct {
	// Lockdown is lockdown's users: every family.
	Lockdown []uidrange.Range
	// FailClosedV4 and FailClosedV6 are the users a VPN covers in a
	// family it does not carry.
	FailClosedV4 []uidrange.Range
	FailClosedV6 []uidrange.Range
	// Ifname is the VPN's link; packets leaving by it pass.
	Ifname string
	// ProtectMark: packets whose mark has one of its bits set pass.
	ProtectMark uint32
}

// Empty reports whether f holds nothing: then there is no table at all.
func (f *Firewall) Empty() bool {
	return len(f.Lockdown)+len(f.FailClosedV4)+len(f.FailClosedV6) == 0
}

// Equal reports whether f and o hold the same.
func (f *Firewall) Equal(o *Firewall) bool {
	if f.Empty() && o.Empty() {
		return true
	}
	eq := func(a, b []uidrange.Range) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	return eq(f.Lockdown, o.Lockdown) && eq(f.FailClosedV4, o.FailClosedV4) && eq(f.FailClosedV6, o.FailClosedV6) &&
		f.Ifname == o.Ifname && f.ProtectMark == o.ProtectMark
}

// OpKind is what an Op does.
type OpKind uint8

const (
	// SetLink sets a link's MTU, loose reverse path filtering and no IPv6
	// address generation (Op.Link: index and MTU).
	SetLink OpKind = iota
	// LinkUp sets a link up (Op.Link.Index).
	LinkUp
	// AddAddr adds Op.Addr to link Op.Link.Index, without a prefix route
	// (and, for IPv6, without duplicate address detection).
	AddAddr
	// DelAddr deletes Op.Addr from link Op.Link.Index.
	DelAddr
	// PutRoute adds Op.Route to the table, or replaces the route with its
	// identity.
	PutRoute
	// DelRoute deletes the route with Op.Route's identity, whatever it is.
	DelRoute
	// AddRule adds Op.Rule.
	AddRule
	// DelRule deletes exactly Op.Rule.
	DelRule
	// DelLink deletes link Op.Link.Index.
	DelLink
)

// Op is one change to the kernel.
type Op struct {
	Kind  OpKind
	Table int // for routes and Lookup rules' placement: vpnd's table
	Link  Link
	Addr  netip.Prefix
	Route Route
	Rule  Rule
}

// String names the op and its object the way errors do: "add route
// 10.0.0.0/8 dev #3".
func (o Op) String() string {
	switch o.Kind {
	case SetLink:
		return fmt.Sprintf("configure link #%d (mtu %d)", o.Link.Index, o.Link.MTU)
	case LinkUp:
		return fmt.Sprintf("set up link #%d", o.Link.Index)
	case AddAddr:
		return fmt.Sprintf("add address %s", o.Addr)
	case DelAddr:
		return fmt.Sprintf("delete address %s", o.Addr)
	case PutRoute:
		return fmt.Sprintf("add route %s table %d", o.Route, o.Table)
	case DelRoute:
		return fmt.Sprintf("delete route %s table %d", o.Route, o.Table)
	case AddRule:
		return "add rule " + o.Rule.String()
	case DelRule:
		return "delete rule " + o.Rule.String()
	case DelLink:
		return fmt.Sprintf("delete link #%d", o.Link.Index)
	}
	return fmt.Sprintf("Op(%d)", o.Kind)
}

// HostPrefix is an address or on-link prefix of one of the host's
// interfaces.
type HostPrefix struct {
	Prefix netip.Prefix // with the host bits of an address kept
	Ifname string
}
