package sim

import (
	"net/netip"
	"slices"

	"github.com/vpnd/vpnd/internal/tun"
)

// External changes the model the way another program would (`ip link set
// down`, `ip route flush`...), behind vpnd's back: unlike changes made
// through the Kernel interface, these are announced to watches. Tests use it
// to exercise self-healing and the link watch.
type External struct{ k *Kernel }

// External returns the model's back door.
func (k *Kernel) External() External { return External{k} }

// announceLocked signals the watches that a change of this link, table or
// rule priority concerns (0 and -1 match nothing).
func (k *Kernel) announceLocked(index, table, priority int) {
	for w := range k.watches {
		if w.isGone {
			continue
		}
		if (index > 0 && w.f.LinkIndex == index) || (table > 0 && w.f.Table == table) || slices.Contains(w.f.Priorities, priority) {
			select {
			case w.changed <- struct{}{}:
			default:
			}
		}
	}
}

func (e External) do(index, table, priority int, f func() error) error {
	e.k.mu.Lock()
	defer e.k.mu.Unlock()
	if err := f(); err != nil {
		return err
	}
	e.k.announceLocked(index, table, priority)
	return nil
}

// DeleteLink deletes a link (`ip link del`); it reports whether it existed.
func (e External) DeleteLink(index int) bool {
	e.k.mu.Lock()
	defer e.k.mu.Unlock()
	return e.k.removeLinkLocked(index)
}

// SetDown sets a link down: it loses its routes and IPv6 addresses.
func (e External) SetDown(index int) error {
	return e.do(index, -1, -1, func() error { return e.k.setUpLocked(index, false) })
}

// SetMTU changes a link's MTU.
func (e External) SetMTU(index, mtu int) error {
	return e.do(index, -1, -1, func() error { return e.k.setMTULocked(index, mtu) })
}

// DeleteAddress deletes an address from a link.
func (e External) DeleteAddress(index int, p netip.Prefix) error {
	return e.do(index, -1, -1, func() error { return e.k.delAddrLocked(index, p) })
}

// AddRoute adds a route (EEXIST if its destination is taken in its table).
func (e External) AddRoute(r tun.Route) error {
	return e.do(-1, r.Table, -1, func() error { return e.k.addRouteLocked(r, false) })
}

// ReplaceRoute replaces the route to r's destination in its table.
func (e External) ReplaceRoute(r tun.Route) error {
	return e.do(-1, r.Table, -1, func() error { return e.k.addRouteLocked(r, true) })
}

// DeleteRoute deletes exactly r.
func (e External) DeleteRoute(r tun.Route) error {
	return e.do(-1, r.Table, -1, func() error { return e.k.delRouteLocked(r) })
}

// FlushTable deletes every route in table and returns how many there were.
func (e External) FlushTable(table int) int {
	n := 0
	e.do(-1, table, -1, func() error {
		before := len(e.k.routes)
		e.k.routes = slices.DeleteFunc(e.k.routes, func(r tun.Route) bool { return r.Table == table })
		n = before - len(e.k.routes)
		return nil
	})
	return n
}

// AddRule adds a rule (EEXIST if an identical one exists).
func (e External) AddRule(r tun.Rule) error {
	return e.do(-1, r.Table, r.Priority, func() error { return e.k.addRuleLocked(r) })
}

// DeleteRule deletes the kernel's first match for a delete of r, as `ip
// rule del` does: that may be another rule than r, and r need not exist.
func (e External) DeleteRule(r tun.Rule) error {
	return e.do(-1, r.Table, r.Priority, func() error { return e.k.delRuleLocked(r) })
}
