package tun

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Validate reports what makes r impossible to install, before the kernel
// is asked. Netlink and the in-memory kernels use it, so they refuse the
// same routes with the same words.
func (r Route) Validate() error {
	switch {
	case !r.Dst.IsValid():
		return errors.New("invalid destination")
	case r.Dst.Addr().Is4In6():
		return errors.New("IPv4-mapped destinations are not supported")
	case r.Table <= 0:
		return fmt.Errorf("invalid table %d", r.Table)
	case r.Kind > Unreachable:
		return fmt.Errorf("invalid route kind %d", r.Kind)
	case r.Kind != Unicast && (r.LinkIndex != 0 || r.Gateway.IsValid()):
		return fmt.Errorf("a %s route has neither a link nor a gateway", r.Kind)
	case r.Kind == Unicast && r.LinkIndex <= 0:
		return fmt.Errorf("invalid interface index %d", r.LinkIndex)
	case r.Gateway.IsValid() && (r.Gateway.Is4() != r.Dst.Addr().Is4() || r.Gateway.Is4In6()):
		return fmt.Errorf("gateway %s is not of the destination's family", r.Gateway)
	}
	return nil
}

// Validate reports what makes r impossible to install.
func (r Rule) Validate() error {
	switch {
	case r.Family != unix.AF_INET && r.Family != unix.AF_INET6:
		return fmt.Errorf("invalid family %d", r.Family)
	case r.Action > Refuse:
		return fmt.Errorf("invalid rule action %d", r.Action)
	case r.Action == Lookup && r.Table <= 0:
		return fmt.Errorf("invalid table %d", r.Table)
	case r.Action == Refuse && r.Table != 0:
		return errors.New("an unreachable rule looks up no table")
	case r.Priority <= 0:
		return fmt.Errorf("invalid priority %d", r.Priority)
	case r.UIDStart > r.UIDEnd:
		return fmt.Errorf("invalid uid range %d-%d", r.UIDStart, r.UIDEnd)
	}
	return nil
}

// ValidateAddr reports what makes p impossible to add as a link address.
func ValidateAddr(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("invalid prefix %s", p)
	case p.Addr().Is4In6():
		return fmt.Errorf("IPv4-mapped address %s is not supported", p)
	case p.Addr().Zone() != "":
		return fmt.Errorf("address %s has a zone", p)
	}
	return nil
}

// MatchesDelete reports whether the kernel, asked to delete r, could
// delete k instead: it mirrors the kernel's rule_find for the request vpnd
// sends. Family, priority, action and uid range always count; the table
// counts when set; the mask counts when r's is non-zero; the fwmark value 0
// is a wildcard. The in-memory kernels use it to refuse the same deletes.
func (r Rule) MatchesDelete(k Rule) bool {
	return k.Family == r.Family && k.Priority == r.Priority && k.Action == r.Action &&
		(r.Table == 0 || k.Table == r.Table) &&
		k.UIDStart == r.UIDStart && k.UIDEnd == r.UIDEnd &&
		(r.Mask == 0 || k.Mask == r.Mask)
}

// ErrAmbiguousRule reports that a rule delete was refused because the
// kernel would delete a different, wider-matching rule first.
var ErrAmbiguousRule = errors.New("the kernel would delete a different rule first")
