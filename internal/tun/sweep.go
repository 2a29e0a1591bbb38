package tun

import (
	"bytes"
	"errors"
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// reservedTables are the kernel's own tables. Sweeping one of them would
// wipe the system's routing, so Sweep refuses.
var reservedTables = map[int]string{
	unix.RT_TABLE_UNSPEC:  "unspec",
	unix.RT_TABLE_DEFAULT: "default",
	unix.RT_TABLE_MAIN:    "main",
	unix.RT_TABLE_LOCAL:   "local",
}

// SweepSpec names what belongs to vpnd in this network namespace.
type SweepSpec struct {
	IfName   string
	Table    int
	Priority int
	// LockdownPriority, if not 0, is where lockdown's unreachable rules
	// sit. Sweep removes those that Keep does not want.
	LockdownPriority int
	// Keep reports whether a lockdown rule is still wanted (the stored
	// lockdown state); nil wants none.
	Keep func(Rule) bool
}

// Sweep removes what an earlier vpnd, killed before it could clean up, may
// have left behind:
//
//   - the link named IfName, but only if it is a TUN device. Any other kind
//     of link under that name is not vpnd's: Sweep leaves it alone, finishes
//     the rest of the sweep and then returns an error wrapping
//     ErrLinkExists, because every later setUp would fail on the name;
//   - every rule, of both families, at exactly Priority that looks up Table,
//     whatever its selectors;
//   - every vpnd-shaped unreachable rule at LockdownPriority that Keep does
//     not want;
//   - every route, of both families and all types, in Table.
//
// It touches no other link, no other rule, and no other table. The deletes
// go out as one batch. The routes through the TUN link go with the link,
// as in Remove: they get no request of their own (a killed vpnd may have
// left 10,000), unless the link cannot be deleted. It returns a
// description of each thing it removed and logs each one. The caller must own the namespace's vpnd objects first
// (see internal/ownership): a sweep run while another vpnd serves would
// destroy that vpnd's VPN.
func (n *Netlink) Sweep(log *zap.Logger, s SweepSpec) ([]string, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := ValidateName(s.IfName); err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	if name, ok := reservedTables[s.Table]; ok || s.Table < 0 {
		return nil, fmt.Errorf("sweep: refusing to sweep reserved table %d (%s)", s.Table, name)
	}
	if s.Priority <= 0 {
		return nil, fmt.Errorf("sweep: refusing to sweep rules at priority %d", s.Priority)
	}

	var m msgBuf
	// what describes each delete for the log: its message and field.
	type removal struct{ msg, key, desc string }
	var what []removal
	var foreign error

	var link LinkState
	var kind string
	found := false
	linkOp := -1 // the link's delete in m, if any
	var q msgBuf
	q.begin(unix.RTM_GETLINK, 0)
	q.ifinfo(0, 0, 0)
	q.attr(unix.IFLA_IFNAME, append([]byte(s.IfName), 0))
	q.end()
	err := n.c.request(&q, func(_ unix.NlMsghdr, d []byte) error {
		link, found = parseLink(d)
		kind = linkKind(d)
		return nil
	})
	switch {
	case errors.Is(err, unix.ENODEV):
	case err != nil:
		return nil, fmt.Errorf("sweep: look up link %s: %w", s.IfName, err)
	case !found:
	case kind == "tun":
		linkOp = m.n()
		m.linkDel(link.Index)
		what = append(what, removal{"removed leftover link", "", fmt.Sprintf("link %s (index %d)", s.IfName, link.Index)})
	default:
		log.Warn("interface name taken by a foreign link; leaving it alone",
			zap.String("ifname", s.IfName), zap.String("kind", kind), zap.Int("index", link.Index))
		foreign = fmt.Errorf("sweep: %w: %s is a %s link (index %d), not a tun device; not removing it",
			ErrLinkExists, s.IfName, kind, link.Index)
	}

	at, nWhat := m.mark(), len(what)
	restart := func() { m.truncate(at); what = what[:nWhat] }
	err = n.dumpRules(restart, func(k kRule) {
		switch {
		case k.priority == s.Priority && k.table == s.Table && k.action == unix.FR_ACT_TO_TBL:
		case s.LockdownPriority != 0 && k.priority == s.LockdownPriority:
			r, ok := k.vpnd()
			if !ok || r.Action != Refuse || (s.Keep != nil && s.Keep(r)) {
				return
			}
		default:
			return
		}
		k.raw = bytes.Clone(k.raw)
		k.delete(&m)
		what = append(what, removal{"removed leftover rule", "rule", k.String()})
	})
	if err != nil {
		return nil, fmt.Errorf("sweep: list rules: %w", err)
	}
	at, nWhat = m.mark(), len(what)
	var viaLink msgBuf // deletes of the routes through the link, if it stays
	var viaWhat []removal
	err = n.dumpRoutes(s.Table, func() { restart(); viaLink.reset(); viaWhat = viaWhat[:0] }, func(k kRoute) {
		if linkOp >= 0 && k.typ == unix.RTN_UNICAST && !k.multipath && k.oif == link.Index {
			// Goes with the link, unless the link cannot be deleted.
			k.delete(&viaLink)
			viaWhat = append(viaWhat, removal{"removed leftover route", "route", k.String()})
			return
		}
		k.delete(&m)
		what = append(what, removal{"removed leftover route", "route", k.String()})
	})
	if err != nil {
		return nil, fmt.Errorf("sweep: list routes in table %d: %w", s.Table, err)
	}
	if len(what) == 0 {
		return nil, foreign
	}
	results, err := n.c.exchange(&m)
	if err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	if linkOp >= 0 && len(viaWhat) > 0 {
		if e := results[linkOp]; e == nil || IsGone(e) {
			what[linkOp].desc += fmt.Sprintf(" with the %d routes through it", len(viaWhat))
		} else if more, err := n.c.exchange(&viaLink); err != nil {
			return nil, fmt.Errorf("sweep: %w", err)
		} else {
			// The link stays: its routes were deleted one by one.
			what = append(what, viaWhat...)
			results = append(results, more...)
		}
	}
	var removed []string
	var errs []error
	for i, w := range what {
		if e := results[i]; e != nil && !IsGone(e) {
			errs = append(errs, fmt.Errorf("sweep: delete %s: %w", w.desc, e))
			continue
		}
		if w.key == "" {
			log.Info(w.msg, zap.String("ifname", s.IfName), zap.Int("index", link.Index))
			removed = append(removed, w.desc)
		} else {
			log.Info(w.msg, zap.String(w.key, w.desc))
			removed = append(removed, w.key+" "+w.desc)
		}
	}
	if len(errs) > 0 {
		return removed, errors.Join(errs...)
	}
	return removed, foreign
}
