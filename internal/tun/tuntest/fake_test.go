package tuntest_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
)

var (
	_ manager.Kernel = (*tuntest.Fake)(nil)
	_ manager.Kernel = (*sim.Kernel)(nil)
	_ manager.Kernel = (*tun.Netlink)(nil)
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	table = 98
	prio  = 10000
	lock  = prio + 1
	mark  = 0x20000
	v4    = unix.AF_INET
	v6    = unix.AF_INET6
)

// hangGuard only keeps a broken kernel from hanging the test; it is not a
// timing claim.
const hangGuard = 10 * time.Second

var places = manager.Places{IfName: "vpn-tun", Table: table, Priorities: []int{prio, lock}}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// The scenario table below runs against the model (sim, through
// tuntest.Fake) and against the real kernel in a fresh network namespace,
// and requires the same from both at every step: the outcome of each op,
// what Read reports, what Sync reports, the error words of CreateTUN, and
// where the row says so the whole state as `ip` and Snapshot show it. So
// the model stays honest about what the manager's reconciler relies on:
// the kernel's answers (EEXIST, ENODEV, ENETDOWN, EINVAL), what a change
// takes along, which route a put or a delete hits, which rule a delete
// hits, what Read marks Foreign, and what Sync reports.

// outside changes the kernel behind vpnd's back, as another program
// would: sim.External for the model, `ip` for the kernel. A route's
// Foreign asks for another protocol; a rule's Selectors are `ip rule`
// words, which the model keeps as they are.
type outside interface {
	setDown(index int) error
	setMTU(index, mtu int) error
	addAddress(index int, p netip.Prefix) error // without vpnd's flags
	deleteAddress(index int, p netip.Prefix) error
	flushTable(table int) error
	addRoute(table int, r manager.Route) error
	replaceRoute(table int, r manager.Route) error
	deleteRoute(table int, r manager.Route) error
	addRule(r manager.Rule) error
	deleteRule(r manager.Rule) error
	deleteLink(index int) error
}

// world is one kernel under test and what the scenario made in it, by
// name, so that steps and results do not depend on interface indexes.
type world struct {
	k     manager.Kernel
	out   outside
	files map[string]*os.File
	index map[string]int
	// settle returns once the kernel has finished what it does on its
	// own after a change (IPv6 address configuration), so that Sync
	// sees its announcements in the step that caused them.
	settle  func()
	observe func() observation
}

func newWorld(k manager.Kernel) *world {
	return &world{k: k, files: map[string]*os.File{}, index: map[string]int{}}
}

// names replaces interface indexes in s ("#3", "(index 3)") with the
// scenario's names for them.
func (w *world) names(s string) string {
	for name, i := range w.index {
		for _, f := range []string{"#%d ", "#%d:", "#%d)", "#%d\n", "#%d;"} {
			s = strings.ReplaceAll(s, fmt.Sprintf(f, i), name+f[len(f)-1:])
		}
		if strings.HasSuffix(s, fmt.Sprintf("#%d", i)) {
			s = strings.TrimSuffix(s, fmt.Sprintf("#%d", i)) + name
		}
		s = strings.ReplaceAll(s, fmt.Sprintf("(index %d)", i), "("+name+")")
	}
	return s
}

// observation is what the scenario compares between model and kernel
// after a step: the links but lo with their MTU, up state and addresses,
// the routes in vpnd's table, and the rules at vpnd's priorities.
type observation struct {
	Links, Routes, Rules []string
}

func (o observation) String() string {
	return fmt.Sprintf("links:\n  %s\nroutes:\n  %s\nrules:\n  %s",
		strings.Join(o.Links, "\n  "), strings.Join(o.Routes, "\n  "), strings.Join(o.Rules, "\n  "))
}

// renderAddr renders an address, the kernel's own link-local addresses
// (which it makes up) as one.
func renderAddr(p netip.Prefix, foreign bool) string {
	s := p.String()
	if p.Addr().IsLinkLocalUnicast() && foreign {
		s = "fe80::(the kernel's)/64"
	}
	if foreign {
		s += " (foreign)"
	}
	return s
}

func renderLink(name string, mtu int, up bool, addrs []string) string {
	slices.Sort(addrs)
	return fmt.Sprintf("%s mtu %d up %t addrs [%s]", name, mtu, up, strings.Join(addrs, " "))
}

func (w *world) renderRoutes(rs []manager.Route) []string {
	var out []string
	for _, r := range rs {
		out = append(out, w.names(r.String()))
	}
	slices.Sort(out)
	return out
}

func renderRules(rs []manager.Rule) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.String())
	}
	return out
}

func (w *world) renderHave(h *manager.Have) string {
	var b strings.Builder
	links := slices.Clone(h.Links) // in no order of the kernel's
	slices.SortFunc(links, func(a, b manager.LinkState) int { return strings.Compare(a.Name, b.Name) })
	for _, l := range links {
		var addrs []string
		for _, a := range l.Addrs {
			addrs = append(addrs, renderAddr(a.Prefix, a.Foreign))
		}
		fmt.Fprintf(&b, "link %s TUN %t %s; ", w.names(fmt.Sprintf("#%d", l.Index)), l.TUN, renderLink(l.Name, l.MTU, l.Up, addrs))
	}
	fmt.Fprintf(&b, "routes [%s]; rules [%s]", strings.Join(w.renderRoutes(h.Routes), ", "), strings.Join(renderRules(h.Rules), ", "))
	return b.String()
}

// outcome classifies an error the way the reconciler can tell errors
// apart.
func outcome(err error) string {
	var errno unix.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, manager.ErrLinkExists):
		return "ErrLinkExists"
	case errors.Is(err, manager.ErrTransient):
		return "ErrTransient"
	case errors.As(err, &errno):
		return unix.ErrnoName(errno)
	}
	return "error"
}

type step struct {
	name string
	do   func(w *world) (detail string, err error)
	// want is the outcome both must produce: for an Apply, each op's.
	want string
	// sync is what Sync must report after the step in the model; the
	// kernel must report the same, and may report extra besides (the
	// kernel announces the link changes vpnd makes as if someone else
	// had made them).
	sync, extra manager.Parts
	// check compares the observations after the step.
	check bool
}

// result is what a step produced in one world.
type result struct {
	outcome, errText, detail string
	sync                     manager.Parts
	obs                      observation
	err                      error
}

func create(name string, blocking bool) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		f, index, err := w.k.CreateTUN(name, manager.TUNOptions{Blocking: blocking})
		if err != nil {
			return "", err
		}
		w.files[name], w.index[name] = f, index
		rc, err := f.SyscallConn()
		if err != nil {
			return "", err
		}
		var fl, fdfl int
		if err := rc.Control(func(fd uintptr) {
			fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
			fdfl, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
		}); err != nil {
			return "", err
		}
		return fmt.Sprintf("nonblocking %t cloexec %t", fl&unix.O_NONBLOCK != 0, fdfl&unix.FD_CLOEXEC != 0), nil
	}
}

// closeFile closes the client's only fd of a TUN and waits until the
// link is gone: at once in the kernel, a moment later in the model.
func closeFile(name string) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		if err := w.files[name].Close(); err != nil {
			return "", err
		}
		deadline := time.Now().Add(hangGuard)
		for {
			h, err := w.k.Read(manager.Query{Links: []int{w.index[name]}, What: manager.PartLinks})
			if err != nil {
				return "", err
			}
			if len(h.Links) == 0 {
				return "", nil
			}
			if time.Now().After(deadline) {
				return "", errors.New("the link outlived its file")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// apply carries out the ops in one Apply; its detail is each op's
// outcome, and its outcome too (a lost answer would be ErrTransient).
func apply(ops func(w *world) []manager.Op) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		list := ops(w)
		results, err := w.k.Apply(list)
		if err != nil {
			return "", err
		}
		out := make([]string, len(results))
		for i, e := range results {
			out[i] = outcome(e)
		}
		return strings.Join(out, " "), nil
	}
}

func read(links ...string) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		q := manager.Query{Places: places, What: manager.PartAll}
		for _, l := range links {
			q.Links = append(q.Links, w.index[l])
		}
		h, err := w.k.Read(q)
		if err != nil {
			return "", err
		}
		return w.renderHave(h), nil
	}
}

func outsideDo(f func(w *world) error) func(w *world) (string, error) {
	return func(w *world) (string, error) { return "", f(w) }
}

// Ops in the manager's terms.

func linkOp(kind manager.OpKind, link string, mtu int) func(w *world) manager.Op {
	return func(w *world) manager.Op {
		return manager.Op{Kind: kind, Link: manager.Link{Index: w.index[link], MTU: mtu}}
	}
}

func addrOp(kind manager.OpKind, link string, p netip.Prefix) func(w *world) manager.Op {
	return func(w *world) manager.Op {
		return manager.Op{Kind: kind, Link: manager.Link{Index: w.index[link]}, Addr: p}
	}
}

// routeOp puts or deletes r in vpnd's table; a unicast route goes through
// link.
func routeOp(kind manager.OpKind, link string, r manager.Route) func(w *world) manager.Op {
	return func(w *world) manager.Op {
		if r.Kind == manager.Unicast {
			r.LinkIndex = w.index[link]
		}
		return manager.Op{Kind: kind, Table: table, Route: r}
	}
}

func ruleOp(kind manager.OpKind, r manager.Rule) func(w *world) manager.Op {
	return func(w *world) manager.Op { return manager.Op{Kind: kind, Table: table, Rule: r} }
}

func ops(fs ...func(w *world) manager.Op) func(w *world) []manager.Op {
	return each(fs, func(f func(w *world) manager.Op) func(w *world) manager.Op { return f })
}

func join(lists ...func(w *world) []manager.Op) func(w *world) []manager.Op {
	return func(w *world) []manager.Op {
		var out []manager.Op
		for _, l := range lists {
			out = append(out, l(w)...)
		}
		return out
	}
}

// vpn is a VPN of every kind of object, on vpn-tun: both families of
// addresses (host addresses too), prefix routes, default routes, routes
// through a gateway, excluded (throw) and fail-closed (unreachable)
// routes, the owner's rules with the protect mask, other uids' rules, and
// lockdown's rules.
var (
	vpnAddrs = []netip.Prefix{pfx("10.8.0.2/24"), pfx("10.8.1.2/32"), pfx("fd00:8::2/64"), pfx("fd00:9::2/128")}
	// vpnRoutes' unicast routes go through vpn-tun.
	vpnRoutes = []manager.Route{
		{Dst: pfx("10.8.0.0/24")},
		{Dst: pfx("fd00:8::/64")},
		{Dst: pfx("0.0.0.0/0")},
		{Dst: pfx("::/0")},
		{Dst: pfx("198.51.100.0/24"), Gateway: addr("10.8.0.1")},
		{Dst: pfx("2001:db8:1::/48"), Gateway: addr("fd00:8::1")},
		{Dst: pfx("192.0.2.7/32")},
		{Dst: pfx("192.168.0.0/16"), Kind: manager.Throw},
		{Dst: pfx("2001:db8:2::/48"), Kind: manager.Throw},
		{Dst: pfx("203.0.113.0/24"), Kind: manager.Unreachable},
		{Dst: pfx("2001:db8:3::/48"), Kind: manager.Unreachable},
	}
	vpnRules = []manager.Rule{
		{Family: v4, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
		{Family: v6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
		{Family: v4, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
		{Family: v6, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
		{Family: v4, Priority: lock, UIDStart: 2000, UIDEnd: 2999, Mask: mark, Action: manager.Refuse},
		{Family: v6, Priority: lock, UIDStart: 2000, UIDEnd: 2999, Mask: mark, Action: manager.Refuse},
	}
)

// each makes one op of every x.
func each[T any](xs []T, op func(x T) func(w *world) manager.Op) func(w *world) []manager.Op {
	return func(w *world) []manager.Op {
		out := make([]manager.Op, len(xs))
		for i, x := range xs {
			out[i] = op(x)(w)
		}
		return out
	}
}

func addrOps(kind manager.OpKind, link string, as []netip.Prefix) func(w *world) []manager.Op {
	return each(as, func(a netip.Prefix) func(w *world) manager.Op { return addrOp(kind, link, a) })
}

func routeOps(kind manager.OpKind, link string, rs []manager.Route) func(w *world) []manager.Op {
	return each(rs, func(r manager.Route) func(w *world) manager.Op { return routeOp(kind, link, r) })
}

func ruleOps(kind manager.OpKind, rs []manager.Rule) func(w *world) []manager.Op {
	return each(rs, func(r manager.Rule) func(w *world) manager.Op { return ruleOp(kind, r) })
}

// bringUp is the reconciler's bring-up of the VPN on link.
func bringUp(link string) func(w *world) []manager.Op {
	return join(ops(linkOp(manager.SetLink, link, 1400)), addrOps(manager.AddAddr, link, vpnAddrs),
		ops(linkOp(manager.LinkUp, link, 0)), routeOps(manager.PutRoute, link, vpnRoutes), ruleOps(manager.AddRule, vpnRules))
}

// pick returns the routes that keep keeps.
func pick(rs []manager.Route, keep func(r manager.Route) bool) []manager.Route {
	return slices.DeleteFunc(slices.Clone(rs), func(r manager.Route) bool { return !keep(r) })
}

func unicast(r manager.Route) bool  { return r.Kind == manager.Unicast }
func unicast4(r manager.Route) bool { return r.Kind == manager.Unicast && r.Dst.Addr().Is4() }
func unicast6(r manager.Route) bool { return r.Kind == manager.Unicast && r.Dst.Addr().Is6() }
func ofFamily(six bool) func(netip.Prefix) bool {
	return func(p netip.Prefix) bool { return p.Addr().Is6() == six }
}

func addrsWhere(keep func(netip.Prefix) bool) []netip.Prefix {
	return slices.DeleteFunc(slices.Clone(vpnAddrs), func(p netip.Prefix) bool { return !keep(p) })
}

func repeat(s string, n int) string { return strings.TrimSpace(strings.Repeat(s+" ", n)) }

func uidRule(uid uint32) manager.Rule {
	return manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: uid, UIDEnd: uid}
}

func withMask(r manager.Rule) manager.Rule { r.Mask = mark; return r }

func withSelectors(r manager.Rule, s string) manager.Rule { r.Selectors = s; return r }

// readRule returns the first rule at vpnd's priorities that Read
// reports and keep keeps.
func readRule(w *world, keep func(r manager.Rule) bool) manager.Rule {
	h, err := w.k.Read(manager.Query{Places: places, What: manager.PartRules})
	if err != nil {
		return manager.Rule{}
	}
	for _, r := range h.Rules {
		if keep(r) {
			return r
		}
	}
	return manager.Rule{}
}

// generated deletes the addresses of link that Read reports Foreign, as
// the reconciler does on its link.
func generated(link string) func(w *world) []manager.Op {
	return func(w *world) []manager.Op {
		h, err := w.k.Read(manager.Query{Links: []int{w.index[link]}, What: manager.PartLinks})
		if err != nil || len(h.Links) == 0 {
			return nil
		}
		var out []manager.Op
		for _, a := range h.Links[0].Addrs {
			if a.Foreign {
				out = append(out, addrOp(manager.DelAddr, link, a.Prefix)(w))
			}
		}
		return out
	}
}

const (
	links  = manager.PartLinks
	routes = manager.PartRoutes
	rules  = manager.PartRules
	// ownLink is what the kernel announces of vpnd's own changes to a
	// link, as it announces anyone's.
	ownLink = links | routes
)

// scenario is the table run against the model and the kernel. Each row
// says what it shows.
var scenario = []step{
	{name: "create vpn-tun, non-blocking", do: create("vpn-tun", false), want: "ok", extra: links, check: true},
	{name: "IFF_TUN_EXCL: the name is taken", do: create("vpn-tun", false), want: "ErrLinkExists"},
	{name: "an invalid name", do: create("bad/name", false), want: "error"},
	{name: "lo is taken", do: create("lo", false), want: "ErrLinkExists"},
	{name: "read the new link", do: read(), want: "ok"},
	{name: "bring a whole VPN up", do: apply(bringUp("vpn-tun")), want: repeat("ok", 23), extra: ownLink, check: true},
	{name: "read it", do: read(), want: "ok"},
	{name: "again: every address and rule exists, puts replace", do: apply(bringUp("vpn-tun")),
		want: "ok " + repeat("EEXIST", 4) + " ok " + repeat("ok", 11) + " " + repeat("EEXIST", 6), extra: ownLink, check: true},

	{name: "someone adds a route to another table", do: outsideDo(func(w *world) error {
		return w.out.addRoute(97, manager.Route{Dst: pfx("10.97.0.0/16"), Kind: manager.Throw})
	}), want: "ok"},
	{name: "someone adds a rule at another priority", do: outsideDo(func(w *world) error {
		return w.out.addRule(manager.Rule{Family: v4, Priority: 9999, Table: 97, UIDStart: 1, UIDEnd: 1})
	}), want: "ok"},
	{name: "someone sets the link down: its routes and IPv6 addresses go", do: outsideDo(func(w *world) error {
		return w.out.setDown(w.index["vpn-tun"])
	}), want: "ok", sync: links | routes, check: true},
	{name: "read a link that is down", do: read(), want: "ok"},
	{name: "routes through a link that is down: onlink gateways too", do: apply(ops(
		routeOp(manager.PutRoute, "vpn-tun", vpnRoutes[4]), routeOp(manager.PutRoute, "vpn-tun", vpnRoutes[5]),
		routeOp(manager.PutRoute, "vpn-tun", vpnRoutes[3]), routeOp(manager.PutRoute, "vpn-tun", vpnRoutes[0]))),
		want: "ENETDOWN ENETDOWN ENETDOWN ENETDOWN", check: true},
	{name: "up again, with the IPv6 addresses and the routes", do: apply(join(ops(linkOp(manager.LinkUp, "vpn-tun", 0)),
		addrOps(manager.AddAddr, "vpn-tun", addrsWhere(ofFamily(true))), routeOps(manager.PutRoute, "vpn-tun", pick(vpnRoutes, unicast)))),
		want: repeat("ok", 10), extra: ownLink, check: true},
	{name: "someone changes the MTU", do: outsideDo(func(w *world) error { return w.out.setMTU(w.index["vpn-tun"], 1300) }),
		want: "ok", sync: links, check: true},
	{name: "the MTU again", do: apply(ops(linkOp(manager.SetLink, "vpn-tun", 1400))), want: "ok", extra: ownLink, check: true},
	{name: "someone deletes an address", do: outsideDo(func(w *world) error {
		return w.out.deleteAddress(w.index["vpn-tun"], pfx("10.8.1.2/32"))
	}), want: "ok", sync: links, check: true},
	{name: "someone deletes an address that is not there", do: outsideDo(func(w *world) error {
		return w.out.deleteAddress(w.index["vpn-tun"], pfx("10.8.1.2/32"))
	}), want: "failed"},
	{name: "the address again", do: apply(ops(addrOp(manager.AddAddr, "vpn-tun", pfx("10.8.1.2/32")))), want: "ok", extra: ownLink, check: true},
	{name: "someone deletes an IPv6 address: the route to its prefix in vpnd's table stays", do: outsideDo(func(w *world) error {
		return w.out.deleteAddress(w.index["vpn-tun"], pfx("fd00:8::2/64"))
	}), want: "ok", sync: links, check: true},
	{name: "the IPv6 address again", do: apply(ops(addrOp(manager.AddAddr, "vpn-tun", pfx("fd00:8::2/64")))), want: "ok", extra: ownLink, check: true},
	{name: "someone adds addresses without vpnd's flags", do: outsideDo(func(w *world) error {
		return errors.Join(w.out.addAddress(w.index["vpn-tun"], pfx("10.66.0.1/24")), w.out.addAddress(w.index["vpn-tun"], pfx("fd00:66::1/64")))
	}), want: "ok", sync: links, check: true},
	{name: "read: they are Foreign", do: read(), want: "ok"},
	{name: "a gateway that is now a local address", do: apply(ops(routeOp(manager.PutRoute, "vpn-tun", manager.Route{Dst: pfx("10.10.0.0/16"), Gateway: addr("10.66.0.1")}))),
		want: "EINVAL"},
	{name: "vpnd deletes them", do: apply(generated("vpn-tun")), want: "ok ok", extra: ownLink, check: true},
	{name: "someone deletes a route", do: outsideDo(func(w *world) error {
		return w.out.deleteRoute(table, manager.Route{Dst: vpnRoutes[5].Dst})
	}), want: "ok", sync: routes, check: true},
	{name: "someone replaces routes with another protocol", do: outsideDo(func(w *world) error {
		return errors.Join(
			w.out.replaceRoute(table, manager.Route{Dst: pfx("192.0.2.7/32"), LinkIndex: w.index["vpn-tun"], Foreign: true}),
			w.out.replaceRoute(table, manager.Route{Dst: pfx("2001:db8:2::/48"), Kind: manager.Unreachable, Foreign: true}),
			w.out.replaceRoute(table, manager.Route{Dst: pfx("203.0.113.0/24"), Kind: manager.Throw}))
	}), want: "ok", sync: routes, check: true},
	{name: "read: they are Foreign, but for the one made as vpnd makes them", do: read(), want: "ok"},
	{name: "vpnd's puts replace them", do: apply(routeOps(manager.PutRoute, "vpn-tun", vpnRoutes)), want: repeat("ok", 11), check: true},
	{name: "someone adds routes to vpnd's destinations at another metric", do: outsideDo(func(w *world) error {
		return errors.Join(
			w.out.addRoute(table, manager.Route{Dst: pfx("192.168.0.0/16"), Metric: 100, Kind: manager.Throw}),
			w.out.addRoute(table, manager.Route{Dst: pfx("2001:db8:2::/48"), Metric: 100, Kind: manager.Throw}))
	}), want: "ok", sync: routes, check: true},
	{name: "deletes at metric 0 take only vpnd's", do: apply(ops(
		routeOp(manager.DelRoute, "", manager.Route{Dst: pfx("192.168.0.0/16")}), routeOp(manager.DelRoute, "", manager.Route{Dst: pfx("2001:db8:2::/48")}))),
		want: "ok ok", check: true},
	{name: "again: IPv6's finds nothing, IPv4's is the kernel's wildcard and takes metric 100's", do: apply(ops(
		routeOp(manager.DelRoute, "", manager.Route{Dst: pfx("192.168.0.0/16")}), routeOp(manager.DelRoute, "", manager.Route{Dst: pfx("2001:db8:2::/48")}))),
		want: "ok ok", check: true},
	{name: "vpnd's back, the other one goes", do: apply(ops(
		routeOp(manager.PutRoute, "", vpnRoutes[7]), routeOp(manager.PutRoute, "", vpnRoutes[8]),
		routeOp(manager.DelRoute, "", manager.Route{Dst: pfx("2001:db8:2::/48"), Metric: 100}))),
		want: "ok ok ok", check: true},
	{name: "someone deletes the IPv4 addresses: the IPv4 routes through the link go", do: outsideDo(func(w *world) error {
		return errors.Join(w.out.deleteAddress(w.index["vpn-tun"], pfx("10.8.1.2/32")), w.out.deleteAddress(w.index["vpn-tun"], pfx("10.8.0.2/24")))
	}), want: "ok", sync: links, check: true},
	{name: "read a link without IPv4 addresses", do: read(), want: "ok"},
	{name: "the IPv4 addresses and routes again", do: apply(join(addrOps(manager.AddAddr, "vpn-tun", addrsWhere(ofFamily(false))),
		routeOps(manager.PutRoute, "vpn-tun", pick(vpnRoutes, unicast4)))), want: repeat("ok", 6), extra: ownLink, check: true},
	{name: "vpnd's own delete of the last IPv4 address takes them too", do: apply(ops(
		addrOp(manager.DelAddr, "vpn-tun", pfx("10.8.1.2/32")), addrOp(manager.DelAddr, "vpn-tun", pfx("10.8.0.2/24")))),
		want: "ok ok", extra: ownLink, check: true},
	{name: "and again", do: apply(join(addrOps(manager.AddAddr, "vpn-tun", addrsWhere(ofFamily(false))),
		routeOps(manager.PutRoute, "vpn-tun", pick(vpnRoutes, unicast4)))), want: repeat("ok", 6), extra: ownLink, check: true},
	{name: "someone flushes the table", do: outsideDo(func(w *world) error { return w.out.flushTable(table) }),
		want: "ok", sync: routes, check: true},
	{name: "every route again", do: apply(routeOps(manager.PutRoute, "vpn-tun", vpnRoutes)), want: repeat("ok", 11), check: true},
	{name: "someone deletes a rule", do: outsideDo(func(w *world) error { return w.out.deleteRule(vpnRules[3]) }),
		want: "ok", sync: rules, check: true},
	{name: "every rule again: only the deleted one takes", do: apply(ruleOps(manager.AddRule, vpnRules)),
		want: "EEXIST EEXIST EEXIST ok EEXIST EEXIST", check: true},
	{name: "someone sets the MTU below IPv6's minimum: IPv6 leaves the link", do: outsideDo(func(w *world) error {
		return w.out.setMTU(w.index["vpn-tun"], 1200)
	}), want: "ok", sync: links | routes, check: true},
	{name: "read a link without IPv6", do: read(), want: "ok"},
	{name: "no IPv6 on it until the MTU is back", do: apply(join(addrOps(manager.AddAddr, "vpn-tun", addrsWhere(ofFamily(true))[:1]),
		routeOps(manager.PutRoute, "vpn-tun", pick(vpnRoutes, unicast6)[:1]))), want: "EINVAL ENODEV"},
	{name: "the MTU back: the kernel makes a link-local address of its own", do: apply(ops(linkOp(manager.SetLink, "vpn-tun", 1400))),
		want: "ok", sync: links, extra: ownLink, check: true},
	{name: "read: it is Foreign", do: read(), want: "ok"},
	{name: "vpnd deletes it, and puts IPv6 back", do: apply(join(generated("vpn-tun"), addrOps(manager.AddAddr, "vpn-tun", addrsWhere(ofFamily(true))),
		routeOps(manager.PutRoute, "vpn-tun", pick(vpnRoutes, unicast6)))), want: repeat("ok", 6), extra: ownLink, check: true},
	{name: "vpnd's own MTU below the minimum takes IPv6 along too", do: apply(ops(linkOp(manager.SetLink, "vpn-tun", 1280-1))),
		want: "ok", sync: links | routes, extra: ownLink, check: true},
	{name: "and back", do: apply(join(ops(linkOp(manager.SetLink, "vpn-tun", 1400)), addrOps(manager.AddAddr, "vpn-tun", addrsWhere(ofFamily(true))),
		routeOps(manager.PutRoute, "vpn-tun", pick(vpnRoutes, unicast6)))), want: repeat("ok", 6), sync: links, extra: ownLink},
	{name: "vpnd deletes the kernel's link-local address", do: apply(generated("vpn-tun")), want: "ok", extra: ownLink, check: true},
	{name: "an MTU outside the link's range", do: apply(ops(linkOp(manager.SetLink, "vpn-tun", 65536), linkOp(manager.SetLink, "vpn-tun", 67))),
		want: "EINVAL EINVAL", extra: ownLink, check: true},

	// Rules: which one an add refuses, which one a delete hits.
	{name: "someone's masked rule first", do: outsideDo(func(w *world) error { return w.out.addRule(withMask(uidRule(5))) }),
		want: "ok", sync: rules},
	{name: "then vpnd's", do: apply(ops(ruleOp(manager.AddRule, uidRule(5)))), want: "ok", check: true},
	{name: "vpnd's delete hits the masked rule before it", do: apply(ops(ruleOp(manager.DelRule, uidRule(5)))), want: "ok", check: true},
	{name: "so does someone's", do: outsideDo(func(w *world) error { return w.out.deleteRule(uidRule(5)) }),
		want: "ok", sync: rules, check: true},
	{name: "someone's delete that nothing matches", do: outsideDo(func(w *world) error { return w.out.deleteRule(uidRule(5)) }), want: "failed"},
	{name: "someone's rules with other selectors", do: outsideDo(func(w *world) error {
		return errors.Join(
			w.out.addRule(withSelectors(uidRule(5), "from 10.0.0.0/8")),
			w.out.addRule(withSelectors(uidRule(5), "from 10.1.0.0/16")),
			w.out.addRule(withSelectors(uidRule(6), "iif lo")),
			w.out.addRule(withSelectors(uidRule(7), "not")))
	}), want: "ok", sync: rules, check: true},
	{name: "read them", do: read(), want: "ok"},
	{name: "an add is refused for a rule like it but for a source, or inverted; not for an interface", do: apply(ops(
		ruleOp(manager.AddRule, uidRule(5)), ruleOp(manager.AddRule, uidRule(7)), ruleOp(manager.AddRule, uidRule(6)))),
		want: "EEXIST EEXIST ok", check: true},
	{name: "vpnd's delete hits the rule with an interface before its own", do: apply(ops(ruleOp(manager.DelRule, uidRule(6)))),
		want: "ok", check: true},
	{name: "a delete of a rule read with other selectors hits exactly it", do: apply(func(w *world) []manager.Op {
		r := readRule(w, func(r manager.Rule) bool { return r.UIDStart == 5 && r.Selectors != "" })
		second := readRule(w, func(o manager.Rule) bool { return o.UIDStart == 5 && o.Selectors != "" && o != r })
		return []manager.Op{{Kind: manager.DelRule, Table: table, Rule: second}}
	}), want: "ok", check: true},
	{name: "and the others", do: apply(func(w *world) []manager.Op {
		var out []manager.Op
		for _, uid := range []uint32{7, 5} {
			r := readRule(w, func(r manager.Rule) bool { return r.UIDStart == uid && r.Selectors != "" })
			out = append(out, manager.Op{Kind: manager.DelRule, Table: table, Rule: r})
		}
		return out
	}), want: "ok ok", check: true},
	{name: "lockdown's rule and a lookup rule for the same users: the action counts", do: apply(ops(
		ruleOp(manager.AddRule, manager.Rule{Family: v6, Priority: lock, Table: table, UIDStart: 7, UIDEnd: 7, Mask: mark}),
		ruleOp(manager.AddRule, manager.Rule{Family: v6, Priority: lock, UIDStart: 7, UIDEnd: 7, Mask: mark, Action: manager.Refuse}),
		ruleOp(manager.DelRule, manager.Rule{Family: v6, Priority: lock, UIDStart: 7, UIDEnd: 7, Mask: mark, Action: manager.Refuse}),
		ruleOp(manager.DelRule, manager.Rule{Family: v6, Priority: lock, Table: table, UIDStart: 7, UIDEnd: 7, Mask: mark}))),
		want: "ok ok ok ok", check: true},

	// The link goes.
	{name: "close vpn-tun's file: the link goes with its routes and addresses", do: closeFile("vpn-tun"),
		want: "ok", sync: links | routes, check: true},
	{name: "read: no link; rules and routes without it stay", do: read("vpn-tun"), want: "ok"},
	{name: "ops on the gone link", do: apply(ops(linkOp(manager.SetLink, "vpn-tun", 1400), addrOp(manager.AddAddr, "vpn-tun", vpnAddrs[0]),
		linkOp(manager.LinkUp, "vpn-tun", 0), routeOp(manager.PutRoute, "vpn-tun", vpnRoutes[0]), routeOp(manager.PutRoute, "", vpnRoutes[7]))),
		want: "ENODEV ENODEV ENODEV ENODEV ok", check: true},
	{name: "the teardown: what is left goes, what is gone is no error", do: apply(join(ruleOps(manager.DelRule, vpnRules),
		routeOps(manager.DelRoute, "vpn-tun", vpnRoutes), addrOps(manager.DelAddr, "vpn-tun", vpnAddrs), ops(linkOp(manager.DelLink, "vpn-tun", 0)))),
		want: repeat("ok", 22), check: true},
	{name: "someone adds a route to vpnd's table", do: outsideDo(func(w *world) error {
		return w.out.addRoute(table, manager.Route{Dst: pfx("10.67.0.0/16"), Kind: manager.Throw})
	}), want: "ok", sync: routes, check: true},
	{name: "the name is free again", do: create("vpn-tun", false), want: "ok", extra: links, check: true},
	{name: "create a blocking tun2", do: create("tun2", true), want: "ok", check: true},
	{name: "vpnd reads its link", do: read("tun2"), want: "ok"},
	{name: "tun2: a local gateway, IPv6's too, an IPv6 gateway off the link (onlink), duplicate addresses", do: apply(join(
		ops(linkOp(manager.SetLink, "tun2", 1280), linkOp(manager.LinkUp, "tun2", 0)),
		addrOps(manager.AddAddr, "tun2", []netip.Prefix{pfx("10.9.0.2/24"), pfx("fd00:19::2/64"), pfx("10.9.0.2/24"), pfx("10.9.0.2/16"), pfx("fd00:19::2/48")}),
		routeOps(manager.PutRoute, "tun2", []manager.Route{
			{Dst: pfx("10.10.0.0/16"), Gateway: addr("10.9.0.2")},
			{Dst: pfx("2001:db8:9::/48"), Gateway: addr("fd00:19::2")},
			{Dst: pfx("2001:db8:20::/48"), Gateway: addr("fd00:20::1")},
			{Dst: pfx("10.11.0.0/16"), Gateway: addr("10.9.0.1")},
		}))), want: "ok ok ok ok EEXIST ok EEXIST EINVAL EINVAL ok ok", extra: ownLink, check: true},
	{name: "someone deletes tun2", do: outsideDo(func(w *world) error { return w.out.deleteLink(w.index["tun2"]) }),
		want: "ok", sync: links | routes, check: true},
	{name: "vpnd's delete of the gone link", do: apply(ops(linkOp(manager.DelLink, "tun2", 0))), want: "ok"},
	{name: "vpnd deletes vpn-tun", do: apply(ops(linkOp(manager.DelLink, "vpn-tun", 0))), want: "ok", extra: ownLink, check: true},
	{name: "and someone's route", do: apply(ops(routeOp(manager.DelRoute, "", manager.Route{Dst: pfx("10.67.0.0/16")}))), want: "ok", check: true},
}

// run plays the scenario in w and returns each step's result.
func run(t *testing.T, w *world) []result {
	t.Helper()
	defer func() {
		for _, f := range w.files {
			f.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := w.k.Watch(ctx, places); err != nil {
		t.Fatal(err)
	}
	w.k.Sync()
	var out []result
	for _, s := range scenario {
		detail, err := s.do(w)
		r := result{outcome: outcome(err), errText: w.names(fmt.Sprint(err)), detail: w.names(detail), err: err}
		if err == nil {
			r.errText = ""
		}
		if strings.HasPrefix(s.name, "someone") && err != nil {
			r.outcome = "failed" // `ip` says no errno
			r.errText = ""
		}
		if strings.HasPrefix(s.name, "an invalid name") {
			r.errText = "" // each says it its own way
		}
		if err == nil && isApply(detail) {
			r.outcome = detail // an Apply's outcome is each op's
		}
		w.settle()
		r.sync = w.k.Sync()
		if s.check {
			r.obs = w.observe()
		}
		out = append(out, r)
	}
	return out
}

// isApply reports whether detail is an Apply's list of outcomes.
func isApply(detail string) bool {
	if detail == "" {
		return false
	}
	for _, f := range strings.Fields(detail) {
		if f != "ok" && !strings.HasPrefix(f, "E") {
			return false
		}
	}
	return true
}

// simOutside is sim.External by index.
type simOutside struct{ e sim.External }

func (s simOutside) setDown(index int) error     { return s.e.SetDown(index) }
func (s simOutside) setMTU(index, mtu int) error { return s.e.SetMTU(index, mtu) }
func (s simOutside) addAddress(index int, p netip.Prefix) error {
	return s.e.AddForeignAddress(index, p)
}
func (s simOutside) deleteAddress(index int, p netip.Prefix) error {
	return s.e.DeleteAddress(index, p)
}
func (s simOutside) flushTable(table int) error { s.e.FlushTable(table); return nil }
func (s simOutside) addRoute(table int, r manager.Route) error {
	return s.e.AddRoute(table, r)
}
func (s simOutside) replaceRoute(table int, r manager.Route) error {
	return s.e.ReplaceRoute(table, r)
}
func (s simOutside) deleteRoute(table int, r manager.Route) error {
	return s.e.DeleteRoute(table, r)
}
func (s simOutside) addRule(r manager.Rule) error    { return s.e.AddRule(r) }
func (s simOutside) deleteRule(r manager.Rule) error { return s.e.DeleteRule(r) }
func (s simOutside) deleteLink(index int) error {
	if !s.e.DeleteLink(index) {
		return unix.ENODEV
	}
	return nil
}

func newFakeWorld(f *tuntest.Fake) *world {
	w := newWorld(f)
	w.out = simOutside{f.External()}
	w.settle = func() {}
	w.observe = func() observation {
		s := f.Snapshot()
		var o observation
		for _, l := range s.Links {
			var addrs []string
			for _, a := range l.Addresses {
				addrs = append(addrs, renderAddr(a, false))
			}
			for _, a := range l.ForeignAddrs {
				addrs = append(addrs, renderAddr(a, true))
			}
			o.Links = append(o.Links, renderLink(l.Name, l.MTU, l.Up, addrs))
		}
		var rs []manager.Route
		for _, r := range s.Routes {
			if r.Table == table {
				rs = append(rs, r.Route)
			}
		}
		o.Routes = w.renderRoutes(rs)
		var rules []manager.Rule
		for _, r := range s.Rules {
			if r.Priority == prio || r.Priority == lock {
				rules = append(rules, r)
			}
		}
		o.Rules = renderRules(rules)
		return o
	}
	return w
}

// TestScenarioFake runs the scenario against the model alone, without
// root: every step gives the outcome and the Sync the table wants.
func TestScenarioFake(t *testing.T) {
	f := tuntest.New()
	defer f.Close()
	for i, r := range run(t, newFakeWorld(f)) {
		s := scenario[i]
		if r.outcome != s.want {
			t.Errorf("step %d %q: got %s (%v), want %s", i, s.name, r.outcome, r.err, s.want)
		}
		if r.sync != s.sync {
			t.Errorf("step %d %q: Sync %s, want %s", i, s.name, r.sync, s.sync)
		}
	}
}

// TestScenarioHonest runs the scenario against the model and against the
// real kernel in a fresh network namespace, and requires the same from
// both at every step: outcome, error words, what Read reported, what Sync
// reported, and the whole state wherever the row says check.
func TestScenarioHonest(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	f := tuntest.New()
	defer f.Close()
	fake := run(t, newFakeWorld(f))

	n, err := tun.New(zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	real := run(t, newKernelWorld(t, n))

	for i, s := range scenario {
		k, fk := real[i], fake[i]
		if k.outcome != s.want {
			t.Errorf("step %d %q: kernel gave %s (%v), want %s", i, s.name, k.outcome, k.err, s.want)
		}
		if fk.outcome != k.outcome || fk.errText != k.errText {
			t.Errorf("step %d %q: model gave %s (%v), kernel %s (%v)\nmodel:  %s\nkernel: %s", i, s.name, fk.outcome, fk.err, k.outcome, k.err, fk.errText, k.errText)
		}
		if fk.detail != k.detail {
			t.Errorf("step %d %q: reports differ\nmodel:  %s\nkernel: %s", i, s.name, fk.detail, k.detail)
		}
		if fk.sync&^k.sync != 0 || k.sync&^fk.sync&^s.extra != 0 {
			t.Errorf("step %d %q: Sync said %s in the model, %s in the kernel (which may add %s)", i, s.name, fk.sync, k.sync, s.extra)
		}
		if s.check && fk.obs.String() != k.obs.String() {
			t.Errorf("step %d %q: state differs\nmodel:\n%s\nkernel:\n%s", i, s.name, fk.obs, k.obs)
		}
	}
}

// ipOutside changes the kernel with `ip`, as an administrator would.
type ipOutside struct {
	t *testing.T
	w *world
}

func (o ipOutside) ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (o ipOutside) name(index int) string {
	for n, i := range o.w.index {
		if i == index {
			return n
		}
	}
	o.t.Fatalf("no link has index %d", index)
	return ""
}

func famFlag(six bool) string {
	if six {
		return "-6"
	}
	return "-4"
}

func (o ipOutside) setDown(index int) error { return o.ip("link", "set", "dev", o.name(index), "down") }
func (o ipOutside) setMTU(index, mtu int) error {
	return o.ip("link", "set", "dev", o.name(index), "mtu", strconv.Itoa(mtu))
}
func (o ipOutside) addAddress(index int, p netip.Prefix) error {
	return o.ip("addr", "add", p.String(), "dev", o.name(index))
}
func (o ipOutside) deleteAddress(index int, p netip.Prefix) error {
	return o.ip("addr", "del", p.String(), "dev", o.name(index))
}
func (o ipOutside) deleteLink(index int) error { return o.ip("link", "del", "dev", o.name(index)) }

func (o ipOutside) flushTable(table int) error {
	for _, fam := range []string{"-4", "-6"} {
		out, err := exec.Command("ip", fam, "route", "flush", "table", strconv.Itoa(table)).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "FIB table does not exist") {
			return fmt.Errorf("ip route flush: %v: %s", err, out)
		}
	}
	return nil
}

func (o ipOutside) addRoute(table int, r manager.Route) error { return o.route("add", table, r) }
func (o ipOutside) replaceRoute(table int, r manager.Route) error {
	return o.route("replace", table, r)
}
func (o ipOutside) deleteRoute(table int, r manager.Route) error { return o.route("del", table, r) }

// route runs `ip route VERB` with r's description: as vpnd makes it
// (protocol static, onlink gateways) unless r is Foreign, which makes it
// `ip`'s default protocol (boot).
func (o ipOutside) route(verb string, table int, r manager.Route) error {
	args := []string{famFlag(r.Dst.Addr().Is6()), "route", verb}
	switch r.Kind {
	case manager.Throw:
		args = append(args, "throw")
	case manager.Unreachable:
		args = append(args, "unreachable")
	}
	args = append(args, r.Dst.String())
	if r.Gateway.IsValid() {
		args = append(args, "via", r.Gateway.String())
	}
	if r.LinkIndex != 0 {
		args = append(args, "dev", o.name(r.LinkIndex))
	}
	if r.Gateway.IsValid() {
		args = append(args, "onlink")
	}
	if r.Metric != 0 {
		args = append(args, "metric", strconv.Itoa(int(r.Metric)))
	}
	if verb != "del" && !r.Foreign {
		args = append(args, "proto", "static")
	}
	return o.ip(append(args, "table", strconv.Itoa(table))...)
}

func ruleArgs(verb string, r manager.Rule) []string {
	args := []string{famFlag(r.Family == v6), "rule", verb, "priority", strconv.Itoa(r.Priority)}
	args = append(args, strings.Fields(r.Selectors)...)
	args = append(args, "uidrange", fmt.Sprintf("%d-%d", r.UIDStart, r.UIDEnd))
	if r.Mask != 0 {
		args = append(args, "fwmark", fmt.Sprintf("%#x/%#x", r.Mark, r.Mask))
	}
	if r.Action == manager.Refuse {
		return append(args, "unreachable")
	}
	return append(args, "lookup", strconv.Itoa(r.Table))
}

func (o ipOutside) addRule(r manager.Rule) error    { return o.ip(ruleArgs("add", r)...) }
func (o ipOutside) deleteRule(r manager.Rule) error { return o.ip(ruleArgs("del", r)...) }

// newKernelWorld is the scenario's world in the test's namespace, driven
// by n. Its settle waits until the kernel has configured the IPv6
// addresses of the scenario's links: it announces each, and adds its
// local route, from a work queue after the request that added it was
// acknowledged.
func newKernelWorld(t *testing.T, n *tun.Netlink) *world {
	w := newWorld(n)
	w.out = ipOutside{t: t, w: w}
	w.settle = func() {
		for name := range w.index {
			tuntest.WaitIPv6(t, name)
		}
	}
	w.observe = func() observation { return observeKernel(t, w) }
	return w
}

// observeKernel reads the kernel's state with `ip -j`, independently of
// vpnd's own reading of it.
func observeKernel(t *testing.T, w *world) observation {
	t.Helper()
	var o observation
	byName := map[string]int{}
	all := netnstest.IPJSON(t, "addr", "show")
	slices.SortFunc(all, func(a, b map[string]any) int { return int(a["ifindex"].(float64) - b["ifindex"].(float64)) })
	for _, l := range all {
		name := l["ifname"].(string)
		byName[name] = int(l["ifindex"].(float64))
		if name == "lo" {
			continue
		}
		var addrs []string
		for _, a := range l["addr_info"].([]any) {
			a := a.(map[string]any)
			p := netip.PrefixFrom(addr(a["local"].(string)), int(a["prefixlen"].(float64)))
			foreign := a["noprefixroute"] != true || p.Addr().Is6() && a["nodad"] != true
			addrs = append(addrs, renderAddr(p, foreign))
		}
		o.Links = append(o.Links, renderLink(name, int(l["mtu"].(float64)), slices.Contains(l["flags"].([]any), any("UP")), addrs))
	}
	var rs []manager.Route
	for _, r := range tuntest.KernelRoutes(t, table, byName) {
		rs = append(rs, r.Route)
	}
	o.Routes = w.renderRoutes(rs)
	var rules []manager.Rule
	for _, fam := range []int{v4, v6} {
		for _, j := range netnstest.IPJSON(t, famFlag(fam == v6), "rule", "show") {
			r := manager.Rule{Family: fam, Priority: int(j["priority"].(float64))}
			if r.Priority != prio && r.Priority != lock {
				continue
			}
			for k, v := range j {
				switch k {
				case "priority":
				case "src":
					if v != "all" {
						r.Selectors = "other"
					}
				case "fwmask":
					m, err := strconv.ParseUint(v.(string), 0, 32)
					if err != nil {
						t.Fatal(err)
					}
					r.Mask = uint32(m)
				case "fwmark":
					m, err := strconv.ParseUint(v.(string), 0, 32)
					if err != nil {
						t.Fatal(err)
					}
					r.Mark = uint32(m)
				case "uid_start":
					r.UIDStart = uint32(v.(float64))
				case "uid_end":
					r.UIDEnd = uint32(v.(float64))
				case "table":
					r.Table, _ = strconv.Atoi(v.(string))
				case "action":
					r.Action = manager.Refuse
				default:
					r.Selectors = "other"
				}
			}
			rules = append(rules, r)
		}
	}
	o.Rules = renderRules(rules)
	return o
}
