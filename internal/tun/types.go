package tun

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"
)

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
	// Unreachable refuses the traffic at once (ENETUNREACH): how a VPN fails
	// closed for an IP family it does not carry.
	Unreachable
)

func (k RouteKind) String() string {
	switch k {
	case Unicast:
		return "unicast"
	case Throw:
		return "throw"
	case Unreachable:
		return "unreachable"
	}
	return fmt.Sprintf("RouteKind(%d)", uint8(k))
}

// Route is one route vpnd puts in its table. Only a Unicast route has a
// link and maybe a gateway; Throw and Unreachable routes have neither.
type Route struct {
	Table     int
	Dst       netip.Prefix
	Gateway   netip.Addr // zero: directly on the link
	LinkIndex int        // 0 unless Unicast
	Kind      RouteKind
}

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
	fmt.Fprintf(&b, " table %d", r.Table)
	return b.String()
}

// Family returns unix.AF_INET or unix.AF_INET6.
func (r Route) Family() int { return familyOf(r.Dst.Addr()) }

// OnLink reports whether the route goes with its link: the kernel removes it
// when the link goes away (or down), and a teardown that deletes the link
// need not delete it.
func (r Route) OnLink() bool { return r.Kind == Unicast }

// RuleAction is what a rule does with the traffic it matches.
type RuleAction uint8

const (
	// Lookup looks the traffic up in Table.
	Lookup RuleAction = iota
	// Refuse answers ENETUNREACH (`ip rule ... unreachable`): lockdown's
	// rules, which refuse traffic that no VPN carries.
	Refuse
)

// Rule is one policy routing rule. vpnd's rules always match a uid range;
// a Lookup rule looks up Table. Mask, when non-zero, adds "fwmark 0x0/Mask"
// so that sockets whose mark has a bit of Mask set (protected sockets) do
// not match.
type Rule struct {
	Family   int // unix.AF_INET or unix.AF_INET6
	Priority int
	Table    int // 0 for a Refuse rule
	UIDStart uint32
	UIDEnd   uint32
	Mask     uint32
	Action   RuleAction
}

// String renders the rule the way `ip rule` would.
func (r Rule) String() string {
	fam := "ipv4"
	if r.Family == unix.AF_INET6 {
		fam = "ipv6"
	}
	s := fmt.Sprintf("%s %d: uidrange %d-%d", fam, r.Priority, r.UIDStart, r.UIDEnd)
	if r.Mask != 0 {
		s += fmt.Sprintf(" fwmark 0x0/%#x", r.Mask)
	}
	if r.Action == Refuse {
		return s + " unreachable"
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}

// Link is what vpnd sets on its TUN link besides creating it: the MTU, the
// addresses, and the up state (always up). Install also sets loose reverse
// path filtering and turns off IPv6 address autoconfiguration on it; see
// Netlink.Install.
type Link struct {
	Index int
	MTU   int
	Addrs []netip.Prefix
}

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

// Objects is a set of things vpnd adds to the kernel together, and removes
// together: a VPN (its link's settings, its routes and rules), or
// lockdown's rules (no link).
type Objects struct {
	Link   *Link // nil: no link
	Routes []Route
	Rules  []Rule
}

// Len counts the objects: addresses, routes and rules.
func (o *Objects) Len() int {
	n := len(o.Routes) + len(o.Rules)
	if o.Link != nil {
		n += len(o.Addrs())
	}
	return n
}

// Addrs returns the link's addresses, or nil.
func (o *Objects) Addrs() []netip.Prefix {
	if o.Link == nil {
		return nil
	}
	return o.Link.Addrs
}

// Query says what Read should report: the link with LinkIndex (if not 0),
// the routes in Table, and vpnd-shaped rules at Priorities.
type Query struct {
	LinkIndex  int
	Table      int
	Priorities []int
}

// LinkState is a link as the kernel has it now.
type LinkState struct {
	Index int
	Name  string
	MTU   int
	Up    bool
	Addrs []netip.Prefix
}

// State is what Read found.
type State struct {
	Link   *LinkState // nil if the link does not exist (or none was asked for)
	Routes []Route    // routes of Table that vpnd could have made
	Rules  []Rule     // rules at the priorities that vpnd could have made
}

// Repair is what self-healing puts back: the link's MTU (0: leave it) and up
// state, and missing addresses, routes and rules. Routes are replaced, so a
// route that someone changed is put back as it was.
type Repair struct {
	LinkIndex int
	MTU       int
	Up        bool
	Addrs     []netip.Prefix
	Routes    []Route
	Rules     []Rule
}

// Empty reports whether there is nothing to repair.
func (r *Repair) Empty() bool {
	return r.MTU == 0 && !r.Up && len(r.Addrs)+len(r.Routes)+len(r.Rules) == 0
}

// HostPrefix is an address or on-link prefix of one of the host's
// interfaces.
type HostPrefix struct {
	Prefix netip.Prefix // with the host bits of an address kept
	Ifname string
}

// ChangeFilter says which kernel changes matter to a watcher: the link
// with index LinkIndex (its MTU, up state and addresses), routes in Table,
// and rules at one of Priorities or looking up Table. Zero fields match
// nothing.
type ChangeFilter struct {
	LinkIndex  int
	Table      int
	Priorities []int
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// Validate checks o before anything of it is installed: a link's index,
// and each address, route and rule. Both kernels (netlink's and the
// simulation's) refuse a set it rejects, so that they fail alike.
func (o *Objects) Validate() error {
	if l := o.Link; l != nil {
		if l.Index <= 0 {
			return fmt.Errorf("invalid interface index %d", l.Index)
		}
		for _, a := range l.Addrs {
			if err := ValidateAddr(a); err != nil {
				return fmt.Errorf("add address %s: %w", a, err)
			}
		}
	}
	for _, r := range o.Routes {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("add route %s: %w", r, err)
		}
	}
	for _, r := range o.Rules {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("add rule %s: %w", r, err)
		}
	}
	return nil
}
