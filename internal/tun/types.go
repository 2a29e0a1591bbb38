package tun

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"
)

// Route is one route vpnd puts in its table. A Throw route (an excluded
// route) has no link and no gateway: a lookup that hits it leaves the table
// and goes on with the next rule, so the traffic takes the normal path.
type Route struct {
	Table     int
	Dst       netip.Prefix
	Gateway   netip.Addr // zero: directly on the link
	LinkIndex int        // 0 for a throw route
	Throw     bool
}

// String renders the route the way `ip route` would.
func (r Route) String() string {
	var b strings.Builder
	if r.Throw {
		b.WriteString("throw ")
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

// Rule is one policy routing rule. vpnd's rules always match a uid range
// and look up its table; the owner's rule also matches fwmark 0x0/Mask so
// that sockets the owner protected (mark bit set) skip the VPN.
type Rule struct {
	Family   int // unix.AF_INET or unix.AF_INET6
	Priority int
	Table    int
	UIDStart uint32
	UIDEnd   uint32
	// Mask, when non-zero, adds "fwmark 0x0/Mask": only packets whose mark
	// has none of Mask's bits match.
	Mask uint32
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
	return s + fmt.Sprintf(" lookup %d", r.Table)
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
