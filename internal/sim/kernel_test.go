package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/uidrange"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The model's answers are checked against the real kernel's by the
// scenario table of internal/tun/tuntest; these tests pin down the rules
// the model follows, one by one.

const (
	table = 98
	prio  = 10000
	lock  = prio + 1
	mark  = 0x20000
	v4    = unix.AF_INET
	v6    = unix.AF_INET6
)

var places = manager.Places{IfName: "vpn-tun", Table: table, Priorities: []int{prio, lock}}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

func newKernel(t *testing.T, opt Options) *Kernel {
	t.Helper()
	k := New(opt)
	t.Cleanup(func() { k.Close() })
	return k
}

// newTUN creates a TUN whose file is closed when the test ends.
func newTUN(t *testing.T, k *Kernel, name string, opt manager.TUNOptions) (*os.File, int) {
	t.Helper()
	f, index, err := k.CreateTUN(name, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, index
}

// upTUNAt creates vpn-tun with mtu and addrs, up.
func upTUNAt(t *testing.T, k *Kernel, mtu int, addrs ...netip.Prefix) int {
	t.Helper()
	_, index := newTUN(t, k, "vpn-tun", manager.TUNOptions{})
	mustApply(t, k, upOps(index, mtu, addrs...)...)
	return index
}

func putRoute(r manager.Route) manager.Op {
	return manager.Op{Kind: manager.PutRoute, Table: table, Route: r}
}
func delRoute(r manager.Route) manager.Op {
	return manager.Op{Kind: manager.DelRoute, Table: table, Route: r}
}
func addRule(r manager.Rule) manager.Op {
	return manager.Op{Kind: manager.AddRule, Table: table, Rule: r}
}
func delRule(r manager.Rule) manager.Op {
	return manager.Op{Kind: manager.DelRule, Table: table, Rule: r}
}

func addAddr(index int, p netip.Prefix) manager.Op {
	return manager.Op{Kind: manager.AddAddr, Link: manager.Link{Index: index}, Addr: p}
}

func delAddr(index int, p netip.Prefix) manager.Op {
	return manager.Op{Kind: manager.DelAddr, Link: manager.Link{Index: index}, Addr: p}
}

// apply applies ops and returns each op's outcome: "ok" or the errno's
// name. A lost answer fails the test.
func apply(t *testing.T, k manager.Kernel, ops ...manager.Op) []string {
	t.Helper()
	results, err := k.Apply(ops)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(ops) {
		t.Fatalf("%d results for %d ops", len(results), len(ops))
	}
	out := make([]string, len(results))
	for i, e := range results {
		out[i] = outcome(e)
	}
	return out
}

func outcome(err error) string {
	var errno unix.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &errno):
		return unix.ErrnoName(errno)
	}
	return "error: " + err.Error()
}

func read(t *testing.T, k manager.Kernel, what manager.Parts, links ...int) *manager.Have {
	t.Helper()
	h, err := k.Read(manager.Query{Places: places, Links: links, What: what})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// strs renders xs in their order.
func strs[T fmt.Stringer](xs []T) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return strings.Join(out, "; ")
}

// sortedStrs renders xs sorted: the order of routes is the kernel's
// business.
func sortedStrs[T fmt.Stringer](xs []T) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

// addrStrs renders addresses in their order, those someone else added
// marked.
func addrStrs(as []manager.Addr) string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.Prefix.String()
		if a.Foreign {
			out[i] += " (foreign)"
		}
	}
	return strings.Join(out, "; ")
}

func routesOf(k *Kernel) string {
	var rs []manager.Route
	for _, r := range k.Snapshot().Routes {
		rs = append(rs, r.Route)
	}
	return strs(rs)
}

// Each op of an Apply gets its own answer, as the kernel gives one per
// request; a failure stops nothing; a delete of something that is not
// there is no error. The answers are the kernel's errnos, which the
// reconciler words with the op ("configure link #2: invalid argument").
func TestApplyAnswersEachOp(t *testing.T) {
	k := newKernel(t, Options{})
	_, index := newTUN(t, k, "vpn-tun", manager.TUNOptions{})
	throw := manager.Route{Dst: pfx("192.168.0.0/16"), Kind: manager.Throw}
	rule := manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5}
	ops := []manager.Op{
		{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 67}},    // below IPv4's minimum
		{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 65536}}, // above a TUN's maximum
		{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1400}},
		{Kind: manager.SetLink, Link: manager.Link{Index: 99, MTU: 1400}},
		{Kind: manager.LinkUp, Link: manager.Link{Index: 99}},
		addAddr(index, pfx("10.8.0.2/24")),
		addAddr(index, pfx("10.8.0.2/24")),
		addAddr(index, pfx("10.8.0.2/16")), // another length: another IPv4 address
		addAddr(index, pfx("fd00:8::2/64")),
		addAddr(index, pfx("fd00:8::2/48")), // IPv6 clashes whatever the length
		addAddr(99, pfx("10.9.0.2/24")),
		putRoute(manager.Route{Dst: pfx("10.8.0.0/24"), LinkIndex: index}), // the link is down
		{Kind: manager.LinkUp, Link: manager.Link{Index: index}},
		putRoute(manager.Route{Dst: pfx("10.8.0.0/24"), LinkIndex: index}),
		putRoute(manager.Route{Dst: pfx("10.9.0.0/24"), LinkIndex: 99}),
		putRoute(throw),
		putRoute(throw), // a put of what is there replaces it
		addRule(rule),
		addRule(rule),
		addRule(manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 7, UIDEnd: 6}),
		delRule(manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 6, UIDEnd: 6}),
		delRoute(manager.Route{Dst: pfx("10.10.0.0/16"), Kind: manager.Throw}),
		delAddr(index, pfx("10.11.0.2/24")),
		delAddr(99, pfx("10.11.0.2/24")),
		{Kind: manager.DelLink, Link: manager.Link{Index: 99}},
	}
	want := []string{
		"EINVAL", "EINVAL", "ok", "ENODEV", "ENODEV",
		"ok", "EEXIST", "ok", "ok", "EEXIST", "ENODEV",
		"ENETDOWN", "ok", "ok", "ENODEV", "ok", "ok",
		"ok", "EEXIST", "EINVAL",
		"ok", "ok", "ok", "ok", "ok",
	}
	if got := apply(t, k, ops...); !slices.Equal(got, want) {
		for i := range ops {
			if got[i] != want[i] {
				t.Errorf("%s: %s, want %s", ops[i], got[i], want[i])
			}
		}
	}
	s := k.Snapshot()
	if len(s.Links) != 1 || s.Links[0].MTU != 1400 || !s.Links[0].Up ||
		strs(s.Links[0].Addresses) != "10.8.0.2/16; 10.8.0.2/24; fd00:8::2/64" {
		t.Errorf("links %+v", s.Links)
	}
	if got := routesOf(k); got != fmt.Sprintf("10.8.0.0/24 dev #%d; throw 192.168.0.0/16", index) {
		t.Errorf("routes %s", got)
	}
	if !slices.Equal(s.Rules, []manager.Rule{rule}) {
		t.Errorf("rules %v", s.Rules)
	}
}

// Read reports the links asked for (by index, and the one named
// IfName), with their addresses sorted and those someone else added
// marked Foreign; the routes of the table; the rules at the priorities,
// IPv4's then IPv6's, each family in the kernel's order: by priority, in
// order of addition within one. It reads only the parts asked for.
func TestRead(t *testing.T) {
	k := newKernel(t, Options{})
	index := upTUNAt(t, k, 1400, pfx("fd00:8::2/64"), pfx("10.8.0.2/24"))
	_, other := newTUN(t, k, "other", manager.TUNOptions{})
	_, third := newTUN(t, k, "third", manager.TUNOptions{})
	if err := k.External().AddForeignAddress(index, pfx("10.66.0.1/24")); err != nil {
		t.Fatal(err)
	}
	rules := []manager.Rule{
		{Family: v6, Priority: prio, Table: table, UIDStart: 1, UIDEnd: 1},
		{Family: v4, Priority: lock, UIDStart: 2, UIDEnd: 2, Mask: mark, Action: manager.Refuse},
		{Family: v4, Priority: prio, Table: table, UIDStart: 3, UIDEnd: 3},
		{Family: v6, Priority: prio, Table: table, UIDStart: 4, UIDEnd: 4, Mask: mark},
		{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5},
		{Family: v4, Priority: 9999, Table: table, UIDStart: 6, UIDEnd: 6},
	}
	routes := []manager.Route{
		{Dst: pfx("10.8.0.0/24"), LinkIndex: index},
		{Dst: pfx("::/0"), Kind: manager.Unreachable},
	}
	var ops []manager.Op
	for _, r := range rules {
		ops = append(ops, addRule(r))
	}
	for _, r := range routes {
		ops = append(ops, putRoute(r))
	}
	ops = append(ops, manager.Op{Kind: manager.PutRoute, Table: 97, Route: manager.Route{Dst: pfx("10.97.0.0/16"), Kind: manager.Throw}})
	mustApply(t, k, ops...)

	h := read(t, k, manager.PartAll, third)
	wantLinks := fmt.Sprintf("[{%d vpn-tun true 1400 true [{10.8.0.2/24 false} {10.66.0.1/24 true} {fd00:8::2/64 false}]} {%d third true 1500 false []}]", index, third)
	if got := fmt.Sprint(h.Links); got != wantLinks {
		t.Errorf("links %s\nwant  %s", got, wantLinks)
	}
	if !slices.Equal(h.Routes, routes) {
		t.Errorf("routes %v, want %v", h.Routes, routes)
	}
	if want := []manager.Rule{rules[2], rules[4], rules[1], rules[0], rules[3]}; !slices.Equal(h.Rules, want) {
		t.Errorf("rules\n%s\nwant\n%s", strs(h.Rules), strs(want))
	}
	if want := []manager.Rule{rules[5], rules[2], rules[4], rules[1], rules[0], rules[3]}; !slices.Equal(k.Snapshot().Rules, want) {
		t.Errorf("Snapshot rules\n%s\nwant\n%s", strs(k.Snapshot().Rules), strs(want))
	}

	for _, tc := range []struct {
		what                  manager.Parts
		links, routes, nrules int
		q                     []int
	}{
		{manager.PartLinks, 1, 0, 0, nil},
		{manager.PartLinks, 2, 0, 0, []int{other, 4242}},
		{manager.PartRoutes, 0, 2, 0, nil},
		{manager.PartRules, 0, 0, 5, nil},
		{0, 0, 0, 0, []int{other}},
	} {
		h := read(t, k, tc.what, tc.q...)
		if len(h.Links) != tc.links || len(h.Routes) != tc.routes || len(h.Rules) != tc.nrules {
			t.Errorf("Read(%s, links %v) = %d links, %d routes, %d rules; want %d, %d, %d",
				tc.what, tc.q, len(h.Links), len(h.Routes), len(h.Rules), tc.links, tc.routes, tc.nrules)
		}
	}
	// Another table and priority hold none of these; a missing link is
	// not there, and no error.
	h, err := k.Read(manager.Query{Places: manager.Places{IfName: "gone", Table: 99, Priorities: []int{1}}, Links: []int{4242}, What: manager.PartAll})
	if err != nil || len(h.Links)+len(h.Routes)+len(h.Rules) != 0 {
		t.Errorf("Read of other places = %+v, %v", h, err)
	}
}

// A route's identity in a table is its destination (masked), TOS and
// metric: a put with the same identity replaces the route whatever it
// was, one with another metric or TOS is another route, and a delete
// with the identity deletes the route whatever its kind or whoever made
// it. A route someone else made differently reads as Foreign until vpnd
// puts its own.
func TestRouteIdentity(t *testing.T) {
	k := newKernel(t, Options{})
	index := upTUNAt(t, k, 1400, pfx("10.8.0.2/24"))
	unicast := manager.Route{Dst: pfx("10.1.0.0/16"), LinkIndex: index}
	if err := k.External().AddRoute(table, manager.Route{Dst: pfx("10.1.2.3/16"), Kind: manager.Throw, Foreign: true}); err != nil {
		t.Fatal(err)
	}
	if err := k.External().AddRoute(table, manager.Route{Dst: pfx("10.1.0.0/16"), Kind: manager.Unreachable}); !errors.Is(err, unix.EEXIST) {
		t.Errorf("someone's add of a route with a taken identity: %v, want EEXIST", err)
	}
	if got := sortedStrs(read(t, k, manager.PartRoutes).Routes); got != "throw 10.1.0.0/16 (changed by someone else)" {
		t.Errorf("routes %s", got)
	}
	metric := unicast
	metric.Metric = 100
	tos := unicast
	tos.Tos = 0x10
	apply(t, k, putRoute(unicast), putRoute(metric), putRoute(tos))
	want := fmt.Sprintf("10.1.0.0/16 dev #%[1]d; 10.1.0.0/16 dev #%[1]d metric 100; 10.1.0.0/16 dev #%[1]d tos 0x10", index)
	if got := sortedStrs(read(t, k, manager.PartRoutes).Routes); got != want {
		t.Errorf("after puts: %s\nwant %s", got, want)
	}
	// Deleted by identity, whatever it is now.
	if err := k.External().ReplaceRoute(table, manager.Route{Dst: pfx("10.1.0.0/16"), Metric: 100, Kind: manager.Throw, Foreign: true}); err != nil {
		t.Fatal(err)
	}
	apply(t, k, delRoute(manager.Route{Dst: pfx("10.1.0.0/16"), Metric: 100}), delRoute(tos))
	if got, want := sortedStrs(read(t, k, manager.PartRoutes).Routes), fmt.Sprintf("10.1.0.0/16 dev #%d", index); got != want {
		t.Errorf("after deletes: %s, want %s", got, want)
	}
	// The same for IPv6, whose default metric reads as 0.
	six := manager.Route{Dst: pfx("2001:db8::/32"), Kind: manager.Throw}
	apply(t, k, putRoute(six))
	if err := k.External().ReplaceRoute(table, manager.Route{Dst: six.Dst, Kind: manager.Unreachable, Foreign: true}); err != nil {
		t.Fatal(err)
	}
	apply(t, k, delRoute(six), delRoute(unicast))
	if got := read(t, k, manager.PartRoutes).Routes; len(got) != 0 {
		t.Errorf("routes left: %v", got)
	}
}

// An IPv4 delete without a metric is the kernel's wildcard: with no
// metric-0 route there it deletes the route of the lowest metric to the
// destination. IPv6 deletes carry the default metric, and a route
// announced with that metric reads as metric 0.
func TestRouteDeleteMetricWildcard(t *testing.T) {
	k := newKernel(t, Options{})
	e := k.External()
	for _, m := range []uint32{300, 100} {
		if err := e.AddRoute(table, manager.Route{Dst: pfx("10.1.0.0/16"), Metric: m, Kind: manager.Throw}); err != nil {
			t.Fatal(err)
		}
		if err := e.AddRoute(table, manager.Route{Dst: pfx("2001:db8::/32"), Metric: m, Kind: manager.Throw}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.AddRoute(table, manager.Route{Dst: pfx("2001:db8:1::/48"), Metric: 1024, Kind: manager.Throw}); err != nil {
		t.Fatal(err)
	}
	apply(t, k, delRoute(manager.Route{Dst: pfx("10.1.0.0/16")}), delRoute(manager.Route{Dst: pfx("2001:db8::/32")}))
	want := "throw 10.1.0.0/16 metric 300; throw 2001:db8::/32 metric 100; throw 2001:db8::/32 metric 300; throw 2001:db8:1::/48"
	if got := routesOf(k); got != want {
		t.Errorf("routes %s\nwant   %s", got, want)
	}
	apply(t, k, delRoute(manager.Route{Dst: pfx("2001:db8:1::/48")}))
	if got := routesOf(k); strings.Contains(got, "2001:db8:1::") {
		t.Errorf("routes %s: the IPv6 route of the default metric survived its delete", got)
	}
}

// A route through a gateway is refused as the kernel refuses an onlink
// one: a gateway that is a local address with EINVAL, any route through a
// link that is down with ENETDOWN.
func TestGatewayChecks(t *testing.T) {
	k := newKernel(t, Options{})
	index := upTUNAt(t, k, 1400, pfx("10.8.0.2/24"), pfx("fd00:8::2/64"))
	route := func(dst, gw string) manager.Route {
		return manager.Route{Dst: pfx(dst), Gateway: ip(gw), LinkIndex: index}
	}
	for _, tc := range []struct {
		r    manager.Route
		want string
	}{
		// vpnd's gateway routes are onlink: any gateway but a local
		// address is taken to be on the link.
		{route("10.9.0.0/16", "10.8.0.1"), "ok"},
		{route("10.10.0.0/16", "10.7.0.1"), "ok"},
		{route("10.11.0.0/16", "10.8.0.2"), "EINVAL"},
		{route("2001:db8:1::/48", "fd00:8::1"), "ok"},
		{route("2001:db8:2::/48", "fd00:7::1"), "ok"},
		{route("2001:db8:3::/48", "fd00:8::2"), "EINVAL"},
	} {
		if got := apply(t, k, putRoute(tc.r)); got[0] != tc.want {
			t.Errorf("add %s: %s, want %s", tc.r, got[0], tc.want)
		}
	}
	// Down, the link refuses every route through it.
	if err := k.External().SetDown(index); err != nil {
		t.Fatal(err)
	}
	for _, r := range []manager.Route{
		route("10.12.0.0/16", "10.8.0.1"),
		route("2001:db8:4::/48", "fd00:8::1"),
		{Dst: pfx("10.13.0.0/16"), LinkIndex: index},
	} {
		if got := apply(t, k, putRoute(r)); got[0] != "ENETDOWN" {
			t.Errorf("add %s on a link that is down: %s, want ENETDOWN", r, got[0])
		}
	}
}

// What a change takes along, as in the kernel: a link set down loses the
// routes through it and its IPv6 addresses; the last IPv4 address of a
// link takes the IPv4 routes through it, in every table; an MTU below
// 1280 takes IPv6 off the link with its addresses and routes, and until
// the MTU is raised IPv6 addresses are refused (EINVAL) and so are IPv6
// routes through the link (ENODEV). Routes that do not go through the
// link, and rules, stay.
func TestWhatChangesTakeAlong(t *testing.T) {
	k := newKernel(t, Options{})
	index := upTUNAt(t, k, 1400, pfx("10.8.0.2/24"), pfx("10.8.1.2/32"), pfx("fd00:8::2/64"))
	routes := []manager.Route{
		{Dst: pfx("10.8.0.0/24"), LinkIndex: index},
		{Dst: pfx("198.51.100.0/24"), Gateway: ip("10.8.0.1"), LinkIndex: index},
		{Dst: pfx("fd00:8::/64"), LinkIndex: index},
		{Dst: pfx("192.168.0.0/16"), Kind: manager.Throw},
		{Dst: pfx("2001:db8::/48"), Kind: manager.Unreachable},
	}
	rule := manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5}
	install := func() {
		t.Helper()
		ops := []manager.Op{addRule(rule)}
		for _, r := range routes {
			ops = append(ops, putRoute(r))
		}
		ops = append(ops, manager.Op{Kind: manager.PutRoute, Table: 97, Route: routes[0]})
		apply(t, k, ops...)
	}
	install()
	state := func() string {
		h := read(t, k, manager.PartAll, index)
		var all []manager.Route
		for _, r := range k.Snapshot().Routes {
			if r.Table == 97 {
				all = append(all, r.Route)
			}
		}
		return fmt.Sprintf("%v up %t addrs [%s] routes [%s] table 97 [%s] rules %d",
			h.Links[0].MTU, h.Links[0].Up, addrStrs(h.Links[0].Addrs), sortedStrs(h.Routes), sortedStrs(all), len(h.Rules))
	}
	throwAndUnreachable := "throw 192.168.0.0/16; unreachable 2001:db8::/48"

	if err := k.External().SetDown(index); err != nil {
		t.Fatal(err)
	}
	if got, want := state(), "1400 up false addrs [10.8.0.2/24; 10.8.1.2/32] routes ["+throwAndUnreachable+"] table 97 [] rules 1"; got != want {
		t.Errorf("link set down:\n%s\nwant\n%s", got, want)
	}
	apply(t, k, manager.Op{Kind: manager.LinkUp, Link: manager.Link{Index: index}}, addAddr(index, pfx("fd00:8::2/64")))
	install()

	if err := k.External().DeleteAddress(index, pfx("10.8.1.2/32")); err != nil {
		t.Fatal(err)
	}
	if got := state(); !strings.Contains(got, "table 97 [10.8.0.0/24") || !strings.Contains(got, "198.51.100.0/24") {
		t.Errorf("an IPv4 address but the last deleted: %s", got)
	}
	apply(t, k, delAddr(index, pfx("10.8.0.2/24")))
	if got, want := state(), fmt.Sprintf("1400 up true addrs [fd00:8::2/64] routes [fd00:8::/64 dev #%d; %s] table 97 [] rules 1", index, throwAndUnreachable); got != want {
		t.Errorf("the last IPv4 address deleted:\n%s\nwant\n%s", got, want)
	}
	apply(t, k, addAddr(index, pfx("10.8.0.2/24")), addAddr(index, pfx("10.8.1.2/32")))
	install()

	if err := k.External().SetMTU(index, 1279); err != nil {
		t.Fatal(err)
	}
	if got, want := state(), fmt.Sprintf("1279 up true addrs [10.8.0.2/24; 10.8.1.2/32] routes [10.8.0.0/24 dev #%[1]d; 198.51.100.0/24 via 10.8.0.1 dev #%[1]d; %[2]s] table 97 [10.8.0.0/24 dev #%[1]d] rules 1", index, throwAndUnreachable); got != want {
		t.Errorf("MTU 1279:\n%s\nwant\n%s", got, want)
	}
	if got := apply(t, k, addAddr(index, pfx("fd00:8::2/64")), putRoute(routes[2])); !slices.Equal(got, []string{"EINVAL", "ENODEV"}) {
		t.Errorf("IPv6 on a link at MTU 1279: %v, want EINVAL for the address and ENODEV for the route", got)
	}
	got := apply(t, k, manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1400}}, addAddr(index, pfx("fd00:8::2/64")), putRoute(routes[2]))
	if !slices.Equal(got, []string{"ok", "ok", "ok"}) {
		t.Errorf("IPv6 back at MTU 1400: %v", got)
	}
	// vpnd's own MTU below the minimum takes IPv6 along too.
	apply(t, k, manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1200}})
	if got := state(); strings.Contains(got, "fd00:8") {
		t.Errorf("vpnd's MTU 1200 kept IPv6: %s", got)
	}
}

// The kernel deletes the first rule, in its order, that matches the
// selectors a delete gives; what the delete leaves out is a wildcard. So
// a delete of a rule without a mark hits a masked rule before it, and
// Selectors (the kernel's own encoding of a rule read with other
// selectors) make a delete hit exactly that rule. `ip rule del` is the
// same (External.DeleteRule), and a delete that matches nothing is
// ENOENT for `ip`, no error for vpnd.
func TestRuleDeleteHitsFirstMatch(t *testing.T) {
	k := newKernel(t, Options{})
	masked := manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5, Mask: mark}
	plain := masked
	plain.Mask = 0
	from := plain
	from.Selectors = "iif lo"
	rules := func() []manager.Rule { return k.Snapshot().Rules }

	apply(t, k, addRule(masked), addRule(plain))
	apply(t, k, delRule(plain))
	if got := rules(); !slices.Equal(got, []manager.Rule{plain}) {
		t.Errorf("delete of %s behind %s left %v: the masked rule should have gone", plain, masked, got)
	}
	apply(t, k, addRule(masked), delRule(masked))
	if got := rules(); !slices.Equal(got, []manager.Rule{plain}) {
		t.Errorf("delete with the mask left %v", got)
	}
	// A rule with other selectors first: vpnd's delete would hit it, one
	// with its Selectors hits only it.
	apply(t, k, delRule(plain))
	if err := k.External().AddRule(from); err != nil {
		t.Fatal(err)
	}
	apply(t, k, addRule(plain))
	if got := apply(t, k, delRule(from), delRule(from)); !slices.Equal(got, []string{"ok", "ok"}) {
		t.Errorf("deletes with Selectors: %v", got)
	}
	if got := rules(); !slices.Equal(got, []manager.Rule{plain}) {
		t.Errorf("after deleting the rule with selectors twice: %v, want %v", got, plain)
	}

	e := k.External()
	if err := e.AddRule(masked); err != nil {
		t.Fatal(err)
	}
	if err := e.AddRule(masked); !errors.Is(err, unix.EEXIST) {
		t.Errorf("someone's second add of %s: %v, want EEXIST", masked, err)
	}
	if err := e.DeleteRule(plain); err != nil {
		t.Errorf("ip rule del %s: %v", plain, err)
	}
	if err := e.DeleteRule(plain); err != nil {
		t.Errorf("ip rule del %s with only %s there: %v, want it deleted", plain, masked, err)
	}
	if err := e.DeleteRule(masked); !errors.Is(err, unix.ENOENT) {
		t.Errorf("ip rule del with nothing there: %v, want ENOENT", err)
	}
	if got := rules(); len(got) != 0 {
		t.Errorf("rules %v left", got)
	}
	// Lockdown's rules: no table; the action counts.
	refuse := manager.Rule{Family: v6, Priority: lock, UIDStart: 7, UIDEnd: 7, Mask: mark, Action: manager.Refuse}
	lookup := refuse
	lookup.Action, lookup.Table = manager.Lookup, table
	apply(t, k, addRule(lookup), addRule(refuse), delRule(refuse))
	if got := rules(); !slices.Equal(got, []manager.Rule{lookup}) {
		t.Errorf("delete of an unreachable rule left %v", got)
	}
}

// The model looks rules up as the kernel does (tun's
// TestRulesAsTheKernelHoldsThem shows the kernel): an add is EEXIST for a
// rule like one there but for a source the add does not give, or an
// inverted match, not for an interface; a delete hits the first rule
// that has everything it gives, so a delete with Selectors hits a rule
// before with more of them.
func TestRuleLookups(t *testing.T) {
	k := newKernel(t, Options{})
	e := k.External()
	rule := func(uid uint32, sel string) manager.Rule {
		return manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: uid, UIDEnd: uid, Selectors: sel}
	}
	for _, r := range []manager.Rule{rule(5, "from 10.0.0.0/8"), rule(6, "iif lo"), rule(7, "not"), rule(8, "from 10.0.0.0/8 iif lo"), rule(8, "from 10.0.0.0/8")} {
		if err := e.AddRule(r); err != nil {
			t.Fatalf("add %+v: %v", r, err)
		}
	}
	if err := e.AddRule(rule(8, "iif lo from 10.0.0.0/8")); !errors.Is(err, unix.EEXIST) {
		t.Errorf("a second add of the same rule: %v, want EEXIST", err)
	}
	if got := apply(t, k, addRule(rule(5, "")), addRule(rule(7, "")), addRule(rule(6, "")), addRule(rule(5, "to 10.0.0.0/8"))); !slices.Equal(got, []string{"EEXIST", "EEXIST", "ok", "ok"}) {
		t.Errorf("adds of uidrange 5-5, 7-7, 6-6, and 5-5 to 10.0.0.0/8: %v, want EEXIST EEXIST ok ok", got)
	}
	before := k.Snapshot().Rules
	apply(t, k, delRule(rule(6, "")), delRule(rule(8, "from 10.0.0.0/8")))
	after := k.Snapshot().Rules
	var gone []string
	for _, r := range before {
		if !slices.Contains(after, r) {
			gone = append(gone, r.Selectors)
		}
	}
	if want := []string{"iif lo", "from 10.0.0.0/8 iif lo"}; !slices.Equal(gone, want) {
		t.Errorf("the deletes of uidrange 6-6 and of 8-8 from 10.0.0.0/8 took %q, want %q", gone, want)
	}
	apply(t, k, delRule(rule(8, "from 10.0.0.0/8")), delRule(rule(7, "not")), delRule(rule(6, "")))
	if got := k.Snapshot().Rules; !slices.Equal(got, []manager.Rule{rule(5, "from 10.0.0.0/8"), rule(5, "to 10.0.0.0/8")}) {
		t.Errorf("rules left %v", got)
	}
}

// Sync reports what changed behind vpnd's back since the last Sync, by
// part, and a watch is woken for it; vpnd's own changes are not
// reported, and a cancelled watch is woken no more.
func TestSync(t *testing.T) {
	k := newKernel(t, Options{})
	index := upTUNAt(t, k, 1400, pfx("10.8.0.2/24"))
	ctx, cancel := context.WithCancel(t.Context())
	wake, err := k.Watch(ctx, places)
	if err != nil {
		t.Fatal(err)
	}
	woken := func() bool {
		select {
		case <-wake:
			return true
		default:
			return false
		}
	}
	throw := manager.Route{Dst: pfx("10.1.0.0/16"), Kind: manager.Throw}
	rule := manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5}
	apply(t, k, putRoute(throw), addRule(rule), addAddr(index, pfx("10.9.0.2/24")),
		manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1300}})
	if p := k.Sync(); p != 0 || woken() {
		t.Errorf("vpnd's own changes: Sync %s", p)
	}
	e := k.External()
	for _, tc := range []struct {
		what string
		do   func() error
		want manager.Parts
	}{
		{"link down", func() error { return e.SetDown(index) }, manager.PartLinks},
		{"MTU", func() error { return e.SetMTU(index, 1280) }, manager.PartLinks},
		{"address deleted", func() error { return e.DeleteAddress(index, pfx("10.9.0.2/24")) }, manager.PartLinks},
		{"foreign address", func() error { return e.AddForeignAddress(index, pfx("10.9.0.3/24")) }, manager.PartLinks},
		{"route added", func() error { return e.AddRoute(table, manager.Route{Dst: pfx("10.2.0.0/16"), Kind: manager.Throw}) }, manager.PartRoutes},
		{"route replaced", func() error {
			return e.ReplaceRoute(table, manager.Route{Dst: throw.Dst, Kind: manager.Throw, Foreign: true})
		}, manager.PartRoutes},
		{"route deleted", func() error { return e.DeleteRoute(table, throw) }, manager.PartRoutes},
		{"table flushed", func() error { e.FlushTable(table); return nil }, manager.PartRoutes},
		{"rule added", func() error { return e.AddRule(manager.Rule{Family: v6, Priority: prio, Table: table}) }, manager.PartRules},
		{"rule deleted", func() error { return e.DeleteRule(rule) }, manager.PartRules},
		{"firewall deleted", func() error { e.DeleteFirewall(); return nil }, manager.PartFirewall},
		{"firewall changed", func() error { e.ChangeFirewall(manager.Firewall{Ifname: "x"}); return nil }, manager.PartFirewall},
		{"announcements lost", func() error { e.Lose(); return nil }, manager.PartAll},
		{"link deleted", func() error { e.DeleteLink(index); return nil }, manager.PartLinks | manager.PartRoutes},
	} {
		if err := tc.do(); err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if !woken() {
			t.Errorf("%s: the watch was not woken", tc.what)
		}
		if p := k.Sync(); p != tc.want {
			t.Errorf("%s: Sync %s, want %s", tc.what, p, tc.want)
		}
		if p := k.Sync(); p != 0 {
			t.Errorf("%s: a second Sync %s", tc.what, p)
		}
	}
	// Several changes add up; a failed one is no change.
	e.AddRoute(table, throw)
	e.AddRule(rule)
	if err := e.DeleteRule(manager.Rule{Family: v4, Priority: 1, UIDStart: 1, UIDEnd: 1}); err == nil {
		t.Error("a delete of a rule that nothing matches succeeded")
	}
	if p := k.Sync(); p != manager.PartRoutes|manager.PartRules {
		t.Errorf("two changes: Sync %s", p)
	}
	cancel()
	// The watch is forgotten once its context ends (AfterFunc runs
	// asynchronously): a change wakes it no more.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		e.Lose()
		if !woken() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a cancelled watch is still woken")
		}
	}
	if e.Lose(); woken() {
		t.Error("a cancelled watch is still woken")
	}
}

// Sync reports what the kernel's monitor reports (tun's TestWatchSync
// shows the kernel): changes in a watch's table and at its priorities,
// not elsewhere; with a link set down, or its MTU below 1280, the IPv6
// routes through it that went (IPv4 routes go silently); and what
// vpnd's own MTU takes along, which vpnd cannot tell from its request:
// IPv6 below 1280, and above it again a link-local address of the
// kernel's own, which Read reports Foreign.
func TestAnnouncements(t *testing.T) {
	k := newKernel(t, Options{})
	index := upTUNAt(t, k, 1400, pfx("10.8.0.2/24"), pfx("fd00:8::2/64"))
	if _, err := k.Watch(t.Context(), places); err != nil {
		t.Fatal(err)
	}
	e := k.External()
	v6 := []manager.Op{
		addAddr(index, pfx("fd00:8::2/64")),
		putRoute(manager.Route{Dst: pfx("fd00:8::/64"), LinkIndex: index}),
		putRoute(manager.Route{Dst: pfx("10.8.0.0/24"), LinkIndex: index}),
	}
	apply(t, k, v6[1:]...)
	k.Sync()
	elsewhere := manager.Route{Dst: pfx("10.97.0.0/16"), Kind: manager.Throw}
	for _, tc := range []struct {
		what string
		do   func() error
		want manager.Parts
	}{
		{"a route in another table", func() error { return e.AddRoute(97, elsewhere) }, 0},
		{"and replaced", func() error { return e.ReplaceRoute(97, elsewhere) }, 0},
		{"and deleted", func() error { return e.DeleteRoute(97, elsewhere) }, 0},
		{"another table flushed", func() error { e.FlushTable(97); return nil }, 0},
		{"a rule at another priority", func() error {
			return e.AddRule(manager.Rule{Family: v4, Priority: 9999, Table: 97, UIDStart: 1, UIDEnd: 1})
		}, 0},
		{"and deleted", func() error {
			return e.DeleteRule(manager.Rule{Family: v4, Priority: 9999, Table: 97, UIDStart: 1, UIDEnd: 1})
		}, 0},
		{"an empty table flushed", func() error { e.FlushTable(table + 1); return nil }, 0},
		{"the link down, with an IPv6 route", func() error { return e.SetDown(index) }, manager.PartLinks | manager.PartRoutes},
		{"vpnd's own repair", func() error {
			_, err := k.Apply(append([]manager.Op{{Kind: manager.LinkUp, Link: manager.Link{Index: index}}}, v6...))
			return err
		}, 0},
		{"its MTU below 1280", func() error { return e.SetMTU(index, 1200) }, manager.PartLinks | manager.PartRoutes},
		{"and back, up: the kernel's link-local address", func() error { return e.SetMTU(index, 1400) }, manager.PartLinks},
		{"vpnd's own MTU below 1280", func() error {
			_, err := k.Apply([]manager.Op{{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1279}}})
			return err
		}, manager.PartLinks},
		{"vpnd's IPv6 refused", func() error { _, err := k.Apply(v6[:2]); return err }, 0},
		{"vpnd's own MTU back: the kernel's link-local address", func() error {
			_, err := k.Apply(append([]manager.Op{{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1400}}}, v6...))
			return err
		}, manager.PartLinks},
		{"vpnd's own MTU below 1280 with an IPv6 route", func() error {
			_, err := k.Apply([]manager.Op{{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1279}}})
			return err
		}, manager.PartLinks | manager.PartRoutes},
	} {
		if err := tc.do(); err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if p := k.Sync(); p != tc.want {
			t.Errorf("%s: Sync %s, want %s", tc.what, p, tc.want)
		}
	}
	h := read(t, k, manager.PartAll, index)
	if got := addrStrs(h.Links[0].Addrs); got != "10.8.0.2/24" {
		t.Errorf("addresses at MTU 1279: %s", got)
	}
	apply(t, k, manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1400}})
	h = read(t, k, manager.PartAll, index)
	if got := addrStrs(h.Links[0].Addrs); got != "10.8.0.2/24; fe80::2/64 (foreign)" {
		t.Errorf("addresses with the MTU back: %s, want the kernel's link-local address, Foreign", got)
	}
	// Down, the link gets none.
	e.SetDown(index)
	apply(t, k, manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1200}}, manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1400}})
	if got := addrStrs(read(t, k, manager.PartLinks, index).Links[0].Addrs); got != "10.8.0.2/24" {
		t.Errorf("addresses of a link that is down, with the MTU back: %s", got)
	}
}

var errInjected = errors.New("injected")

// Options.Inject is asked before every step with its name and object: an
// error fails the step, which changes nothing; ErrLostAnswer lets the
// change happen and loses the answer, which Apply reports as an error
// wrapping ErrTransient.
func TestInject(t *testing.T) {
	var steps []string
	fail := map[string]error{}
	k := newKernel(t, Options{Inject: func(what string, obj any) error {
		steps = append(steps, what)
		return fail[what]
	}})
	_, index := newTUN(t, k, "vpn-tun", manager.TUNOptions{})
	throw := manager.Route{Dst: pfx("10.1.0.0/16"), Kind: manager.Throw}
	rule := manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5}
	fail["add route"] = errInjected
	results, err := k.Apply([]manager.Op{putRoute(throw), addRule(rule)})
	if err != nil || !errors.Is(results[0], errInjected) || results[1] != nil {
		t.Errorf("Apply with a failed route: %v, %v", results, err)
	}
	if s := k.Snapshot(); len(s.Routes) != 0 || len(s.Rules) != 1 {
		t.Errorf("after a failed route: %+v", s)
	}
	fail["add route"] = ErrLostAnswer
	fail["delete rule"] = ErrLostAnswer
	results, err = k.Apply([]manager.Op{putRoute(throw), delRule(rule)})
	if !errors.Is(err, manager.ErrTransient) || !errors.Is(err, ErrLostAnswer) {
		t.Errorf("Apply with lost answers: %v, %v; want an error wrapping ErrTransient", results, err)
	}
	if s := k.Snapshot(); len(s.Routes) != 1 || len(s.Rules) != 0 {
		t.Errorf("after lost answers: %+v; want the changes made", s)
	}
	fail["read"] = errInjected
	if _, err := k.Read(manager.Query{Places: places, What: manager.PartAll}); !errors.Is(err, errInjected) {
		t.Errorf("Read = %v", err)
	}
	fail["set firewall"] = ErrLostAnswer
	fw := manager.Firewall{Lockdown: []uidrange.Range{{Start: 2000, End: 2999}}, ProtectMark: mark}
	if err := k.SetFirewall(fw); !errors.Is(err, ErrLostAnswer) {
		t.Errorf("SetFirewall with a lost answer = %v", err)
	}
	if s := k.Snapshot(); s.Firewall == nil || !s.Firewall.Equal(&fw) {
		t.Errorf("after a lost answer the firewall is %+v, want it set", s.Firewall)
	}
	fail["create tun"] = errInjected
	if _, _, err := k.CreateTUN("other", manager.TUNOptions{}); !errors.Is(err, errInjected) {
		t.Errorf("CreateTUN = %v", err)
	}
	fail["watch"] = errInjected
	if _, err := k.Watch(t.Context(), places); !errors.Is(err, errInjected) {
		t.Errorf("Watch = %v", err)
	}
	fail["mark socket"] = errInjected
	if err := k.MarkSocket(0, mark); !errors.Is(err, errInjected) {
		t.Errorf("MarkSocket = %v", err)
	}
	want := []string{"create tun", "add route", "add rule", "add route", "delete rule", "read", "set firewall", "create tun", "watch", "mark socket"}
	if !slices.Equal(steps, want) {
		t.Errorf("steps %q\nwant  %q", steps, want)
	}
	if s := k.Snapshot(); len(s.Links) != 1 || s.Links[0].Index != index {
		t.Errorf("links %+v", s.Links)
	}
}

// The firewall table: FirewallHolds says whether it holds exactly what is
// asked (for the zero Firewall, whether there is none); SetFirewall
// makes it so; someone else's change is reported (TestSync).
func TestFirewall(t *testing.T) {
	k := newKernel(t, Options{})
	var none manager.Firewall
	fw := manager.Firewall{Ifname: "vpn-tun", ProtectMark: mark} // no users: no table either
	holds := func(f manager.Firewall) bool {
		t.Helper()
		ok, err := k.FirewallHolds(f)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !holds(none) || !holds(fw) {
		t.Error("a new kernel does not hold the empty firewall")
	}
	want := manager.Firewall{FailClosedV6: []uidrange.Range{{Start: 1000, End: 1000}}, Ifname: "vpn-tun", ProtectMark: mark}
	if holds(want) {
		t.Error("a new kernel holds a firewall")
	}
	if err := k.SetFirewall(want); err != nil {
		t.Fatal(err)
	}
	if !holds(want) || holds(none) || k.Snapshot().Firewall == nil {
		t.Error("SetFirewall did not make the table")
	}
	other := want
	other.Ifname = "other"
	if holds(other) {
		t.Error("the table holds another link's firewall")
	}
	k.External().ChangeFirewall(other)
	if holds(want) || !holds(other) {
		t.Error("someone's change is not seen")
	}
	if err := k.SetFirewall(none); err != nil {
		t.Fatal(err)
	}
	if !holds(none) || k.Snapshot().Firewall != nil {
		t.Error("SetFirewall of nothing left a table")
	}
}

func fdFlags(t *testing.T, f *os.File) (fl, fdfl, typ int) {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
		fdfl, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
		typ, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	})
	return fl, fdfl, typ
}

// A simulated TUN is one end of a SOCK_SEQPACKET pair, close-on-exec, in
// the blocking mode asked for; names are checked as for a real TUN, and
// a taken name is refused with the holder named.
func TestCreateTUN(t *testing.T) {
	k := newKernel(t, Options{})
	f, index := newTUN(t, k, "vpn-tun", manager.TUNOptions{})
	if fl, fdfl, typ := fdFlags(t, f); fl&unix.O_NONBLOCK == 0 || fdfl&unix.FD_CLOEXEC == 0 || typ != unix.SOCK_SEQPACKET {
		t.Errorf("fd: flags %#x, fd flags %#x, type %d; want O_NONBLOCK, FD_CLOEXEC, SOCK_SEQPACKET", fl, fdfl, typ)
	}
	fb, ib := newTUN(t, k, "vpn-tun-b", manager.TUNOptions{Blocking: true, VnetHdr: true})
	if fl, fdfl, _ := fdFlags(t, fb); fl&unix.O_NONBLOCK != 0 || fdfl&unix.FD_CLOEXEC == 0 {
		t.Errorf("blocking fd: flags %#x, fd flags %#x", fl, fdfl)
	}
	if index < 2 || ib == index {
		t.Errorf("indexes %d and %d; want distinct, above lo's", index, ib)
	}
	want := []Link{
		{Name: "vpn-tun", Index: index, MTU: DefaultMTU},
		{Name: "vpn-tun-b", Index: ib, MTU: DefaultMTU, VnetHdr: true},
	}
	if got := k.Snapshot(); !got.Equal(State{Links: want}) {
		t.Errorf("Snapshot %+v, want %+v", got, want)
	}
	if h := read(t, k, manager.PartLinks, ib); len(h.Links) != 2 || !h.Links[0].TUN || h.Links[1].Name != "vpn-tun-b" {
		t.Errorf("Read links %+v", h.Links)
	}
	for _, tc := range []struct{ name, text string }{
		{"vpn-tun", fmt.Sprintf("a tun link (index %d) has this name", index)},
		{"lo", "(index 1) has this name"},
	} {
		if _, _, err := k.CreateTUN(tc.name, manager.TUNOptions{}); !errors.Is(err, manager.ErrLinkExists) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("CreateTUN(%q) = %v, want ErrLinkExists saying %q", tc.name, err, tc.text)
		}
	}
	for _, bad := range []string{"", "sixteen-bytes-xx", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\x01b", "tun%d"} {
		if _, _, err := k.CreateTUN(bad, manager.TUNOptions{}); err == nil || errors.Is(err, manager.ErrLinkExists) {
			t.Errorf("CreateTUN(%q) = %v, want a name error", bad, err)
		}
	}
}

// Each packet the client writes reaches Options.Packet whole, with the
// link it came in on, while the link is up; each answer comes back as one
// message.
func TestPackets(t *testing.T) {
	type call struct {
		l   Link
		pkt []byte
	}
	calls := make(chan call, 10)
	k := newKernel(t, Options{Packet: func(l Link, pkt []byte) [][]byte {
		calls <- call{l, bytes.Clone(pkt)}
		if bytes.Equal(pkt, []byte("silence")) {
			return nil
		}
		return [][]byte{append([]byte("re:"), pkt...), []byte("and again")}
	}})
	f, index := newTUN(t, k, "vpn-tun", manager.TUNOptions{Blocking: true})
	addrs := []netip.Prefix{pfx("10.8.0.2/24"), pfx("fd00:8::2/64")}

	// A link that is down drops what its client writes.
	down, _ := newTUN(t, k, "down", manager.TUNOptions{Blocking: true})
	if _, err := down.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	mustApply(t, k, upOps(index, 1400, addrs...)...)
	big := bytes.Repeat([]byte{0x45}, 1400)
	for _, pkt := range [][]byte{[]byte("ping"), big, []byte("silence"), []byte("x")} {
		if _, err := f.Write(pkt); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 65536)
	for _, want := range [][]byte{[]byte("re:ping"), []byte("and again"), append([]byte("re:"), big...), []byte("and again"), []byte("re:x"), []byte("and again")} {
		n, err := f.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], want) {
			t.Errorf("read %d bytes %.20q, want %d bytes %.20q", n, buf[:n], len(want), want)
		}
	}
	for i, want := range [][]byte{[]byte("ping"), big, []byte("silence"), []byte("x")} {
		c := <-calls
		if !bytes.Equal(c.pkt, want) {
			t.Errorf("call %d: packet %.20q, want %.20q", i, c.pkt, want)
		}
		if c.l.Name != "vpn-tun" || c.l.Index != index || c.l.MTU != 1400 || !c.l.Up || !slices.Equal(c.l.Addresses, addrs) {
			t.Errorf("call %d: link %+v", i, c.l)
		}
	}
	select {
	case c := <-calls:
		t.Errorf("unexpected call with %q from %s", c.pkt, c.l.Name)
	default:
	}
}

// The link goes when the client closes its end, with the routes through
// it, as a non-persistent TUN does; the watch hears of it. (tuntest's
// TestFakeLinkGoesWithItsFile: not while a copy of the end is open.)
func TestClientCloseRemovesLink(t *testing.T) {
	k := newKernel(t, Options{})
	f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wake, err := k.Watch(t.Context(), places)
	if err != nil {
		t.Fatal(err)
	}
	throw := manager.Route{Dst: pfx("192.168.0.0/16"), Kind: manager.Throw}
	mustApply(t, k, append(upOps(index, 1400, pfx("10.8.0.2/24")),
		putRoute(manager.Route{Dst: pfx("10.8.0.0/24"), LinkIndex: index}), putRoute(throw))...)
	_, _ = newTUN(t, k, "other", manager.TUNOptions{})
	f.Close()
	<-wake // the test's own timeout guards a hang
	if p := k.Sync(); p != manager.PartLinks|manager.PartRoutes {
		t.Errorf("Sync %s after the link went", p)
	}
	s := k.Snapshot()
	if len(s.Links) != 1 || s.Links[0].Name != "other" || !slices.Equal(s.Routes, []Route{{Table: table, Route: throw}}) {
		t.Errorf("after the client closed: %+v", s)
	}
	// The name is free again.
	newTUN(t, k, "vpn-tun", manager.TUNOptions{})
}

// A deleted link closes the model's end: the client reads EOF.
func TestLinkDeletionIsEOF(t *testing.T) {
	k := newKernel(t, Options{})
	for _, del := range []struct {
		name string
		do   func(index int)
	}{
		{"Apply(DelLink)", func(index int) { mustApply(t, k, manager.Op{Kind: manager.DelLink, Link: manager.Link{Index: index}}) }},
		{"External().DeleteLink", func(index int) { k.External().DeleteLink(index) }},
	} {
		for _, blocking := range []bool{true, false} {
			f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{Blocking: blocking})
			if err != nil {
				t.Fatal(err)
			}
			del.do(index)
			if n, err := f.Read(make([]byte, 100)); n != 0 || !errors.Is(err, io.EOF) {
				t.Errorf("%s, blocking %t: read %d, %v; want EOF", del.name, blocking, n, err)
			}
			f.Close()
		}
	}
	if s := k.Snapshot(); len(s.Links) != 0 {
		t.Errorf("links %+v left", s.Links)
	}
	if k.External().DeleteLink(42) {
		t.Error("DeleteLink of a missing link reported one")
	}
}

// Close deletes every link and waits for the readers: files handed out
// read EOF, and no goroutine is left (TestMain checks).
func TestClose(t *testing.T) {
	k := New(Options{})
	var files []*os.File
	for _, name := range []string{"a", "b", "c"} {
		f, _, err := k.CreateTUN(name, manager.TUNOptions{Blocking: true})
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if s := k.Snapshot(); len(s.Links) != 0 {
		t.Errorf("links %+v after Close", s.Links)
	}
	for _, f := range files {
		if n, err := f.Read(make([]byte, 10)); n != 0 || !errors.Is(err, io.EOF) {
			t.Errorf("read after Close: %d, %v; want EOF", n, err)
		}
		f.Close()
	}
}

// MarkSocket records the mark in memory, from the socket's real SO_MARK,
// keeping its other bits, and sets none (tuntest's TestMarks has the
// rest). HostPrefixes answers from Options.
func TestMarkSocketAndHostPrefixes(t *testing.T) {
	host := []manager.HostPrefix{{Prefix: pfx("192.0.2.1/24"), Ifname: "eth0"}}
	var asked []string
	k := newKernel(t, Options{HostPrefixes: func(except string) ([]manager.HostPrefix, error) {
		asked = append(asked, except)
		return host, nil
	}})
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, ok := k.Mark(fd); ok {
		t.Error("an unmarked socket has a mark")
	}
	if err := k.MarkSocket(fd, mark); err != nil {
		t.Fatal(err)
	}
	if err := k.MarkSocket(fd, 0x1); err != nil {
		t.Fatal(err)
	}
	if m, ok := k.Mark(fd); !ok || m != mark|1 {
		t.Errorf("mark %#x, %t; want %#x", m, ok, mark|1)
	}
	if real, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); real != 0 {
		t.Errorf("the model set SO_MARK %#x", real)
	}
	if err := k.MarkSocket(1<<20, mark); err == nil {
		t.Error("marking a closed fd succeeded")
	}
	if ps, err := k.HostPrefixes("vpn-tun"); err != nil || !slices.Equal(ps, host) || !slices.Equal(asked, []string{"vpn-tun"}) {
		t.Errorf("HostPrefixes = %v, %v (asked %q)", ps, err, asked)
	}
	if ps, err := newKernel(t, Options{}).HostPrefixes(""); err != nil || ps != nil {
		t.Errorf("HostPrefixes without Options.HostPrefixes = %v, %v", ps, err)
	}
}
