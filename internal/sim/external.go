package sim

import (
	"net/netip"
	"slices"

	"github.com/vpnd/vpnd/internal/manager"
)

// External changes the model the way another program would (`ip link set
// down`, `ip route flush`, `nft delete table`...), behind vpnd's back:
// unlike changes made through the Kernel interface, these are announced
// to watches, as the kernel's monitor reports them: a change to a link,
// a change in a watch's table, a change at one of its priorities, with
// what it took along. Tests use it to exercise self-healing and the link
// watch.
type External struct{ k *Kernel }

// External returns the model's back door.
func (k *Kernel) External() External { return External{k} }

// do makes the change f under the model's lock and announces parts p in
// the places in says (nil: anywhere), and what f reports it took along.
func (e External) do(p manager.Parts, in func(manager.Places) bool, f func() (manager.Parts, error)) error {
	e.k.mu.Lock()
	defer e.k.mu.Unlock()
	side, err := f()
	if err != nil {
		return err
	}
	e.k.announceLocked(p, in)
	e.k.announceLocked(side, nil)
	return nil
}

// plain adapts a change that takes nothing along.
func plain(f func() error) func() (manager.Parts, error) {
	return func() (manager.Parts, error) { return 0, f() }
}

// inTable and atPriority say whether a change in table, or at priority,
// is in a watch's places.
func inTable(table int) func(manager.Places) bool {
	return func(p manager.Places) bool { return p.Table == table }
}

func atPriority(priority int) func(manager.Places) bool {
	return func(p manager.Places) bool { return slices.Contains(p.Priorities, priority) }
}

// DeleteLink deletes a link (`ip link del`); it reports whether it existed.
func (e External) DeleteLink(index int) bool {
	e.k.mu.Lock()
	defer e.k.mu.Unlock()
	return e.k.removeLinkLocked(index, true)
}

// SetDown sets a link down: it loses its routes and IPv6 addresses.
func (e External) SetDown(index int) error {
	return e.do(manager.PartLinks, nil, func() (manager.Parts, error) { return e.k.setUpLocked(index, false) })
}

// SetMTU changes a link's MTU: below 1280 IPv6 leaves the link, and comes
// back when it is raised again (with a link-local address of the
// kernel's, on a link that is up).
func (e External) SetMTU(index, mtu int) error {
	return e.do(manager.PartLinks, nil, func() (manager.Parts, error) { return e.k.setMTULocked(index, mtu) })
}

// DeleteAddress deletes an address from a link.
func (e External) DeleteAddress(index int, p netip.Prefix) error {
	return e.do(manager.PartLinks, nil, plain(func() error { return e.k.delAddrLocked(index, p) }))
}

// AddForeignAddress adds an address to a link as `ip addr add` does,
// without vpnd's flags.
func (e External) AddForeignAddress(index int, p netip.Prefix) error {
	return e.do(manager.PartLinks, nil, plain(func() error { return e.k.addAddrLocked(index, p, true) }))
}

// AddRoute adds a route to table (EEXIST if its identity is taken there).
// r.Foreign marks it as made with another protocol, scope or flags.
func (e External) AddRoute(table int, r manager.Route) error {
	return e.do(manager.PartRoutes, inTable(table), plain(func() error { return e.k.putRouteLocked(Route{Table: table, Route: r}, false) }))
}

// ReplaceRoute replaces the route with r's identity in table, or adds it.
func (e External) ReplaceRoute(table int, r manager.Route) error {
	return e.do(manager.PartRoutes, inTable(table), plain(func() error { return e.k.putRouteLocked(Route{Table: table, Route: r}, true) }))
}

// DeleteRoute deletes the route with r's identity in table.
func (e External) DeleteRoute(table int, r manager.Route) error {
	return e.do(manager.PartRoutes, inTable(table), plain(func() error { return e.k.delRouteLocked(Route{Table: table, Route: r}) }))
}

// FlushTable deletes every route in table and returns how many there were.
func (e External) FlushTable(table int) int {
	n := 0
	e.do(0, nil, func() (manager.Parts, error) {
		n = e.k.deleteRoutesLocked(func(r Route) bool { return r.Table == table })
		if n > 0 {
			e.k.announceLocked(manager.PartRoutes, inTable(table))
		}
		return 0, nil
	})
	return n
}

// AddRule adds a rule as `ip rule add` does: EEXIST where the kernel
// finds one like it. r.Selectors are what else it matches on, in `ip
// rule` words ("from 10.0.0.0/8", "iif lo", "not"); Read reports them
// as they are.
func (e External) AddRule(r manager.Rule) error {
	return e.do(manager.PartRules, atPriority(r.Priority), plain(func() error { return e.k.addRuleLocked(r) }))
}

// DeleteRule deletes the kernel's first match for a delete of r, as `ip
// rule del` does: that may be another rule than r, and r need not exist.
func (e External) DeleteRule(r manager.Rule) error {
	return e.do(manager.PartRules, atPriority(r.Priority), plain(func() error { return e.k.delRuleLocked(r) }))
}

// DeleteFirewall deletes vpnd's firewall table (`nft delete table`).
func (e External) DeleteFirewall() {
	e.do(manager.PartFirewall, nil, plain(func() error { e.k.fw = nil; return nil }))
}

// ChangeFirewall replaces what vpnd's firewall table holds.
func (e External) ChangeFirewall(f manager.Firewall) {
	e.do(manager.PartFirewall, nil, plain(func() error { e.k.fw = &f; return nil }))
}

// Lose announces a loss of notifications (ENOBUFS): every part may have
// changed.
func (e External) Lose() {
	e.do(manager.PartAll, nil, plain(func() error { return nil }))
}
