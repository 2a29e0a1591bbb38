package tun

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// dumpAttempts bounds retries of a dump that the kernel flagged as
// interrupted (NLM_F_DUMP_INTR: the table changed while it was read).
const dumpAttempts = 10

func retryDump[T any](dump func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpAttempts {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, fmt.Errorf("dump still inconsistent after %d attempts: %w", dumpAttempts, err)
}

func listRules(family, table, priority int) ([]netlink.Rule, error) {
	filter := netlink.NewRule()
	filter.Table = table
	filter.Priority = priority
	return retryDump(func() ([]netlink.Rule, error) {
		return netlink.RuleListFiltered(family, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PRIORITY)
	})
}

func listRoutes(table int) ([]netlink.Route, error) {
	// RouteList hides every table but main; the table filter lifts that.
	return retryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	})
}

// ListRules returns the vpnd-shaped rules of both families at priority
// that look up table, in the kernel's order. Rules there with selectors
// vpnd never uses (a source prefix, a non-zero fwmark, an interface...) are
// left out: they are not vpnd's.
func ListRules(table, priority int) ([]Rule, error) {
	if table <= 0 {
		return nil, fmt.Errorf("list rules: invalid table %d", table)
	}
	var out []Rule
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := listRules(family, table, priority)
		if err != nil {
			return nil, fmt.Errorf("list rules at priority %d: %w", priority, err)
		}
		for _, k := range rules {
			if r, ok := fromNLRule(k); ok {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// ListRoutes returns the unicast and throw routes of both families in
// table. Other route types (blackhole, unreachable...) are left out, as are
// multipath routes: vpnd creates none of them.
func ListRoutes(table int) ([]Route, error) {
	if table <= 0 {
		return nil, fmt.Errorf("list routes: invalid table %d", table)
	}
	routes, err := listRoutes(table)
	if err != nil {
		return nil, fmt.Errorf("list routes in table %d: %w", table, err)
	}
	var out []Route
	for _, k := range routes {
		if r, ok := fromNLRoute(k); ok {
			out = append(out, r)
		}
	}
	return out, nil
}

func fromNLRoute(k netlink.Route) (Route, bool) {
	dst, ok := ipNetToPrefix(k.Dst)
	if !ok || len(k.MultiPath) > 0 {
		return Route{}, false
	}
	r := Route{Table: k.Table, Dst: dst}
	switch k.Type {
	case unix.RTN_THROW:
		// IPv6 reports throw routes on the loopback device; vpnd's
		// throw routes have no link.
		r.Throw = true
	case unix.RTN_UNICAST:
		r.LinkIndex = k.LinkIndex
		if k.Gw != nil {
			gw, ok := netip.AddrFromSlice(k.Gw)
			if !ok {
				return Route{}, false
			}
			r.Gateway = gw.Unmap()
		}
	default:
		return Route{}, false
	}
	return r, true
}

// reservedTables are the kernel's own tables. Sweeping one of them would
// wipe the system's routing, so Sweep refuses.
var reservedTables = map[int]string{
	unix.RT_TABLE_UNSPEC:  "unspec",
	unix.RT_TABLE_DEFAULT: "default",
	unix.RT_TABLE_MAIN:    "main",
	unix.RT_TABLE_LOCAL:   "local",
}

// Sweep removes what an earlier vpnd, killed before it could clean up, may
// have left behind (contract §7, start-up sweep):
//
//   - the link named ifname, but only if it is a TUN device. Any other
//     kind of link under that name is not vpnd's: Sweep leaves it alone,
//     finishes the rest of the sweep and then returns an error wrapping
//     ErrLinkExists, because every later setUp would fail on the name;
//   - every rule, of both families, at exactly priority that looks up
//     table, whatever its selectors;
//   - every route, of both families and all types, in table.
//
// It touches no other link, no rule at another priority or for another
// table, and no other table. It returns a description of each thing it
// removed and logs each one.
func Sweep(log *zap.Logger, ifname string, table, priority int) ([]string, error) {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("sweep")
	if err := ValidateName(ifname); err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	if name, ok := reservedTables[table]; ok || table < 0 {
		return nil, fmt.Errorf("sweep: refusing to sweep reserved table %d (%s)", table, name)
	}
	if priority <= 0 {
		return nil, fmt.Errorf("sweep: refusing to sweep rules at priority %d", priority)
	}

	var removed []string
	var foreign error

	link, err := netlink.LinkByName(ifname)
	switch {
	case isLinkNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("sweep: look up link %s: %w", ifname, err)
	case isTUN(link):
		index := link.Attrs().Index
		if err := netlink.LinkDel(linkRef(index)); err != nil && !errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("sweep: delete link %s (index %d): %w", ifname, index, err)
		}
		d := fmt.Sprintf("link %s (index %d)", ifname, index)
		log.Info("removed leftover link", zap.String("ifname", ifname), zap.Int("index", index))
		removed = append(removed, d)
	default:
		log.Warn("interface name taken by a foreign link; leaving it alone",
			zap.String("ifname", ifname), zap.String("kind", link.Type()), zap.Int("index", link.Attrs().Index))
		foreign = fmt.Errorf("sweep: %w: %s is a %s link (index %d), not a tun device; not removing it",
			ErrLinkExists, ifname, link.Type(), link.Attrs().Index)
	}

	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := listRules(family, table, priority)
		if err != nil {
			return removed, fmt.Errorf("sweep: list rules at priority %d: %w", priority, err)
		}
		for _, k := range rules {
			d := "rule " + describeNLRule(k)
			if err := netlink.RuleDel(sweepRuleRequest(k)); err != nil && !errors.Is(err, unix.ENOENT) {
				return removed, fmt.Errorf("sweep: delete %s: %w", d, err)
			}
			log.Info("removed leftover rule", zap.String("rule", d))
			removed = append(removed, d)
		}
	}

	routes, err := listRoutes(table)
	if err != nil {
		return removed, fmt.Errorf("sweep: list routes in table %d: %w", table, err)
	}
	for _, k := range routes {
		d := "route " + describeNLRoute(k)
		if err := netlink.RouteDel(sweepRouteRequest(k)); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return removed, fmt.Errorf("sweep: delete %s: %w", d, err)
		}
		log.Info("removed leftover route", zap.String("route", d))
		removed = append(removed, d)
	}
	return removed, foreign
}

// sweepRuleRequest builds a delete request from a dumped rule. It always
// carries the family, priority and table, so the kernel can only ever
// delete a rule that the sweep owns, and as many selectors as the rule has,
// so each request removes the rule it came from.
func sweepRuleRequest(k netlink.Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = k.Family
	nr.Priority = k.Priority
	nr.Table = k.Table
	nr.UIDRange = k.UIDRange
	nr.Src = k.Src
	nr.Dst = k.Dst
	nr.IifName = k.IifName
	nr.OifName = k.OifName
	nr.Tos = k.Tos
	nr.Mark = k.Mark
	if k.Mask != nil && *k.Mask != 0 {
		m := *k.Mask
		nr.Mask = &m
	}
	return nr
}

// sweepRouteRequest builds a delete request from a dumped route: table,
// destination, type, tos and metric, with any nexthop (scope "nowhere" is
// the kernel's wildcard).
func sweepRouteRequest(k netlink.Route) *netlink.Route {
	return &netlink.Route{
		Family:   k.Family,
		Table:    k.Table,
		Dst:      k.Dst,
		Type:     k.Type,
		Tos:      k.Tos,
		Priority: k.Priority,
		Scope:    netlink.SCOPE_NOWHERE,
	}
}

func describeNLRoute(k netlink.Route) string {
	if r, ok := fromNLRoute(k); ok {
		return r.String()
	}
	return fmt.Sprintf("%s table %d type %d", k.Dst, k.Table, k.Type)
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

func isTUN(l netlink.Link) bool {
	t, ok := l.(*netlink.Tuntap)
	return ok && t.Mode == netlink.TUNTAP_MODE_TUN
}
