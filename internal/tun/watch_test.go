package tun

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
)

// smallVPN is a two-family VPN with one object of each kind the watch
// cares about.
func smallVPN(index int) vpnObjects {
	return vpnObjects{
		link: manager.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{
			pfx("10.8.0.2/24"), pfx("10.8.1.2/32"), pfx("fd00:8::2/64"),
		}},
		routes: []manager.Route{
			{Dst: pfx("10.8.0.0/24"), LinkIndex: index},
			{Dst: pfx("fd00:8::/64"), LinkIndex: index},
			{Dst: pfx("0.0.0.0/0"), LinkIndex: index},
			{Dst: pfx("::/0"), LinkIndex: index},
			{Dst: pfx("192.0.2.7/32"), LinkIndex: index},
			{Dst: pfx("192.168.0.0/16"), Kind: manager.Throw},
		},
		rules: []manager.Rule{
			{Family: v4, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
			{Family: v4, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
			{Family: v6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
		},
	}
}

// throwRoutes puts n throw routes, 20.x.y.0/24, into tbl.
func throwRoutes(n, tbl int) []manager.Op {
	ops := make([]manager.Op, n)
	for i := range ops {
		r := manager.Route{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i >> 8), byte(i), 0}), 24), Kind: manager.Throw}
		ops[i] = manager.Op{Kind: manager.PutRoute, Table: tbl, Route: r}
	}
	return ops
}

// woken reports whether the watch's channel holds a token, waiting up to
// hangGuard for one if wait (the monitor's goroutine delivers it).
func woken(wake <-chan struct{}, wait bool) bool {
	var timeout <-chan time.Time
	if wait {
		timeout = time.After(hangGuard)
	}
	select {
	case <-wake:
		return true
	case <-timeout:
		return false
	default:
		if !wait {
			return false
		}
	}
	select {
	case <-wake:
		return true
	case <-timeout:
		return false
	}
}

// Sync reports, by part, what changed in vpnd's places since the last
// Sync: a change someone made to the link, its addresses, a route in the
// table or a rule at the priorities. Nothing for vpnd's own route and
// rule changes (the kernel announces vpnd's link changes whoever makes
// them: they may show as the link's part), and nothing for other links,
// tables and priorities. Every Sync has taken in everything the kernel
// queued before it, so each "nothing" is exact. The watch is woken for
// each change that Sync reports.
func TestWatchSync(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	if p := n.Sync(); p != manager.PartAll {
		t.Errorf("Sync before Watch = %s, want everything", p)
	}
	_, index := makeTUN(t, n, "vpn-tun")
	wake, err := n.Watch(t.Context(), places)
	must(t, err)
	if p := n.Sync(); p != manager.PartAll {
		t.Errorf("the first Sync after Watch = %s, want everything: nothing was heard before", p)
	}
	o := smallVPN(index)
	applyAll(t, n, o.upOps()...)
	h := readAll(t, n) // the reconciler reads the link: it is tracked
	if len(h.Links) != 1 {
		t.Fatalf("links %+v", h.Links)
	}
	tuntest.WaitIPv6(t, "vpn-tun")
	if p := n.Sync(); p&^manager.PartLinks != 0 {
		t.Errorf("vpnd's own bring-up: Sync %s, want at most the link", p)
	}
	woken(wake, false)

	// Others' changes elsewhere.
	ipCmd(t, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
	for _, args := range [][]string{
		{"link", "set", "veth0", "up"},
		{"link", "set", "veth0", "mtu", "1300"},
		{"addr", "add", "192.0.2.1/24", "dev", "veth0"},
		{"addr", "del", "192.0.2.1/24", "dev", "veth0"},
		{"link", "set", "veth0", "down"},
		{"route", "add", "10.99.0.0/16", "dev", "vpn-tun", "table", "99"},
		{"route", "del", "10.99.0.0/16", "dev", "vpn-tun", "table", "99"},
		{"-6", "route", "add", "throw", "2001:db8::/32", "table", "97"},
		{"rule", "add", "priority", "9999", "uidrange", "5-5", "lookup", "98"},
		{"rule", "del", "priority", "9999", "uidrange", "5-5", "lookup", "98"},
		{"-6", "rule", "add", "priority", "10002", "uidrange", "5-5", "unreachable"},
		{"link", "del", "veth0"},
	} {
		ipCmd(t, args...)
		if p := n.Sync(); p != 0 {
			t.Errorf("ip %s: Sync %s, want nothing", strings.Join(args, " "), p)
		}
	}
	if woken(wake, false) {
		t.Error("the watch was woken by changes elsewhere")
	}

	// Changes to what vpnd made, each repaired by vpnd.
	op := func(kind manager.OpKind) manager.Op {
		return manager.Op{Kind: kind, Table: table, Link: manager.Link{Index: index, MTU: 1400}}
	}
	addrs := func(as ...netip.Prefix) []manager.Op {
		var ops []manager.Op
		for _, a := range as {
			ops = append(ops, manager.Op{Kind: manager.AddAddr, Link: manager.Link{Index: index}, Addr: a})
		}
		return ops
	}
	routes := func(rs ...manager.Route) []manager.Op {
		var ops []manager.Op
		for _, r := range rs {
			ops = append(ops, manager.Op{Kind: manager.PutRoute, Table: table, Route: r})
		}
		return ops
	}
	rule := func(r manager.Rule) []manager.Op {
		return []manager.Op{{Kind: manager.AddRule, Table: table, Rule: r}}
	}
	join := func(opss ...[]manager.Op) []manager.Op {
		var all []manager.Op
		for _, ops := range opss {
			all = append(all, ops...)
		}
		return all
	}
	const (
		links = manager.PartLinks
		rts   = manager.PartRoutes
		rls   = manager.PartRules
	)
	for _, tc := range []struct {
		args []string
		want manager.Parts // what Sync must report
		fix  []manager.Op
	}{
		// IPv4 routes through a link go silently; IPv6's are announced.
		{[]string{"link", "set", "vpn-tun", "down"}, links | rts,
			join([]manager.Op{op(manager.LinkUp)}, addrs(o.link.Addrs[2:]...), routes(o.routes[:5]...))},
		{[]string{"link", "set", "vpn-tun", "mtu", "1300"}, links, []manager.Op{op(manager.SetLink)}},
		// IPv6 leaves the link; vpnd's SetLink brings it back with a
		// link-local address of the kernel's, which vpnd deletes.
		{[]string{"link", "set", "vpn-tun", "mtu", "1200"}, links | rts,
			join([]manager.Op{op(manager.SetLink)}, addrs(o.link.Addrs[2:]...), routes(o.routes[1], o.routes[3]))},
		{[]string{"addr", "del", "10.8.1.2/32", "dev", "vpn-tun"}, links, addrs(o.link.Addrs[1])},
		// The route through the address stays.
		{[]string{"-6", "addr", "del", "fd00:8::2/64", "dev", "vpn-tun"}, links, addrs(o.link.Addrs[2])},
		{[]string{"route", "del", "192.0.2.7/32", "table", "98"}, rts, routes(o.routes[4])},
		{[]string{"route", "del", "throw", "192.168.0.0/16", "table", "98"}, rts, routes(o.routes[5])},
		{[]string{"route", "replace", "192.0.2.7/32", "via", "10.8.0.1", "dev", "vpn-tun", "table", "98", "onlink"}, rts, routes(o.routes[4])},
		{[]string{"-6", "route", "replace", "::/0", "dev", "vpn-tun", "table", "98", "proto", "boot"}, rts, routes(o.routes[3])},
		{[]string{"route", "flush", "table", "98"}, rts, routes(o.routes[0], o.routes[2], o.routes[4], o.routes[5])},
		{[]string{"rule", "del", "priority", "10000", "uidrange", "0-999", "lookup", "98"}, rls, rule(o.rules[1])},
		{[]string{"-6", "rule", "del", "priority", "10000", "uidrange", "1000-1000", "lookup", "98"}, rls, rule(o.rules[2])},
		{[]string{"rule", "add", "priority", "10000", "uidrange", "8-8", "lookup", "97"}, rls, nil},
		{[]string{"-6", "rule", "add", "priority", "10001", "uidrange", "8-8", "unreachable"}, rls, nil},
		{[]string{"-6", "route", "add", "2001:db8:5::/48", "dev", "vpn-tun", "table", "98"}, rts, nil},
		{[]string{"-6", "addr", "add", "fd00:66::1/64", "dev", "vpn-tun", "nodad"}, links, nil},
		// On vpnd's link, but not a part vpnd keeps: the announcement
		// shows the link as vpnd knows it, so nothing is read again.
		{[]string{"link", "set", "vpn-tun", "alias", "somebody's"}, 0, nil},
	} {
		what := "ip " + strings.Join(tc.args, " ")
		ipCmd(t, tc.args...)
		tuntest.WaitIPv6(t, "vpn-tun")
		if tc.want != 0 && !woken(wake, true) {
			t.Errorf("%s: the watch was not woken", what)
		}
		p := n.Sync()
		if p != tc.want {
			t.Errorf("%s: Sync %s, want %s", what, p, tc.want)
		}
		if tc.want == 0 && woken(wake, false) {
			t.Errorf("%s: the watch was woken", what)
		}
		if tc.fix == nil {
			continue
		}
		// vpnd's repair, as its reconciler would make it after reading
		// the link: the kernel's own link-local addresses go.
		fix := tc.fix
		for _, a := range readAll(t, n).Links[0].Addrs {
			if a.Prefix.Addr().IsLinkLocalUnicast() {
				fix = append([]manager.Op{{Kind: manager.DelAddr, Link: manager.Link{Index: index}, Addr: a.Prefix}}, fix...)
			}
		}
		applyAll(t, n, fix...)
		tuntest.WaitIPv6(t, "vpn-tun")
		if p := n.Sync(); p&(rts|rls) != 0 {
			t.Errorf("vpnd's repair of %s: Sync %s, want no routes or rules", what, p)
		}
		woken(wake, false)
		if got, want := strs(readAll(t, n).Routes), strs(o.routes); what != "ip -6 route add 2001:db8:5::/48 dev vpn-tun table 98" && got != want {
			t.Errorf("after the repair of %s: routes\n%s\nwant\n%s", what, got, want)
		}
	}

	// The link goes: its part and the routes'.
	ipCmd(t, "link", "del", "vpn-tun")
	if !woken(wake, true) {
		t.Error("the link's deletion did not wake the watch")
	}
	if p := n.Sync(); p != links|rts {
		t.Errorf("ip link del vpn-tun: Sync %s, want links+routes", p)
	}
}

// TestMonitorKnowsOwnLinkChanges: the kernel announces a link's MTU and
// up state, and IPv6 addresses, whoever asked; the monitor tells vpnd's
// own changes (those it asked for after the last read of the link) from
// anyone else's by what the announcement shows.
func TestMonitorKnowsOwnLinkChanges(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	f, index := makeTUN(t, n, "vpn-tun")
	_, err := n.Watch(t.Context(), places)
	must(t, err)
	n.Sync()
	link := manager.Link{Index: index, MTU: 1400}
	own := func(what string, ops ...manager.Op) {
		t.Helper()
		applyAll(t, n, ops...)
		if p := n.Sync(); p != 0 {
			t.Errorf("vpnd's own %s: Sync %s, want nothing", what, p)
		}
	}
	other := func(want manager.Parts, args ...string) {
		t.Helper()
		ipCmd(t, args...)
		if p := n.Sync(); p != want {
			t.Errorf("ip %s: Sync %s, want %s", strings.Join(args, " "), p, want)
		}
	}

	// Before the link was read, its announcements count.
	applyAll(t, n, manager.Op{Kind: manager.SetLink, Link: link})
	if p := n.Sync(); p != manager.PartLinks {
		t.Errorf("a change to a link not yet read: Sync %s, want links", p)
	}
	readAll(t, n)
	own("bring-up in one batch",
		manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1390}},
		manager.Op{Kind: manager.AddAddr, Link: link, Addr: pfx("10.7.0.2/24")},
		manager.Op{Kind: manager.LinkUp, Link: link},
		manager.Op{Kind: manager.AddAddr, Link: link, Addr: pfx("fd00:7::2/64")})
	other(manager.PartLinks, "link", "set", "vpn-tun", "down")
	readAll(t, n)
	own("MTU", manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1380}})
	// Someone puts back the MTU the link had before vpnd's change: the
	// kernel announced vpnd's, so this one is news.
	other(manager.PartLinks, "link", "set", "vpn-tun", "mtu", "1390")
	readAll(t, n)
	own("addresses",
		manager.Op{Kind: manager.AddAddr, Link: link, Addr: pfx("10.8.0.2/24")},
		manager.Op{Kind: manager.AddAddr, Link: link, Addr: pfx("fd00:8::2/64")})
	own("up", manager.Op{Kind: manager.LinkUp, Link: link})
	own("address removal", manager.Op{Kind: manager.DelAddr, Link: link, Addr: pfx("fd00:8::2/64")})
	own("route", manager.Op{Kind: manager.PutRoute, Table: table, Route: manager.Route{Dst: pfx("10.9.0.0/16"), LinkIndex: index}})

	other(manager.PartLinks, "link", "set", "vpn-tun", "mtu", "1300")
	readAll(t, n)
	other(manager.PartLinks, "-6", "addr", "add", "fd00:9::2/64", "dev", "vpn-tun", "nodad")
	readAll(t, n)
	other(manager.PartLinks, "addr", "del", "10.8.0.2/24", "dev", "vpn-tun")
	readAll(t, n)
	other(manager.PartLinks, "link", "set", "vpn-tun", "down")
	readAll(t, n)
	// The same change again, now vpnd's own: nothing.
	own("up again", manager.Op{Kind: manager.LinkUp, Link: link})

	// vpnd's deletion of the link takes its routes and addresses with it.
	own("deletion", manager.Op{Kind: manager.DelLink, Link: link})
	f.Close()
	if p := n.Sync(); p != 0 {
		t.Errorf("after vpnd deleted the link: Sync %s, want nothing", p)
	}
}

// vpnd's own route and rule changes are dropped by the monitor socket's
// filter, in the kernel: thousands of them, with the monitor not reading
// and the smallest buffer the kernel allows, queue nothing, so nothing
// overflows and Sync reports nothing. Another program's changes still
// come through.
func TestMonitorFiltersOwnEcho(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	core, logs := observer.New(zap.DebugLevel)
	n := openNetlink(t, zap.New(core))
	n.mon.rcvBuf = 1 // the kernel's minimum
	wake, err := n.Watch(t.Context(), manager.Places{Table: 97, Priorities: []int{9000}})
	must(t, err)
	n.Sync()
	n.mon.mu.Lock()
	rc, err := n.mon.f.SyscallConn()
	must(t, err)
	var size int
	rc.Control(func(fd uintptr) { size, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
	n.mon.mu.Unlock()
	if err != nil || size > 16<<10 {
		t.Fatalf("the monitor's SO_RCVBUF is %d (%v), want the kernel's minimum", size, err)
	}

	ops := throwRoutes(2000, 97)
	rule := manager.Rule{Family: v4, Priority: 9000, Table: 97, UIDStart: 5, UIDEnd: 5}
	ops = append(ops, manager.Op{Kind: manager.AddRule, Table: 97, Rule: rule})
	n.mon.mu.Lock() // the monitor reads nothing meanwhile
	results, err := n.Apply(ops)
	n.mon.mu.Unlock()
	must(t, err)
	for i, e := range results {
		if e != nil {
			t.Fatalf("%s: %v", ops[i], e)
		}
	}
	if p := n.Sync(); p != 0 {
		t.Errorf("vpnd's own changes: Sync %s, want nothing", p)
	}
	if l := logs.FilterMessage("netlink monitor overflowed; reading everything again").Len(); l != 0 {
		t.Fatalf("the monitor overflowed %d times on vpnd's own changes", l)
	}
	if woken(wake, false) {
		t.Error("the watch was woken by vpnd's own changes")
	}

	// Someone else's changes to the table and the priority are heard.
	ipCmd(t, "route", "del", "throw", "20.0.0.0/24", "table", "97")
	ipCmd(t, "rule", "del", "priority", "9000", "uidrange", "5-5", "lookup", "97")
	if !woken(wake, true) {
		t.Error("another program's changes did not wake the watch")
	}
	if p := n.Sync(); p != manager.PartRoutes|manager.PartRules {
		t.Errorf("another program's changes: Sync %s, want routes+rules", p)
	}
	// vpnd's deletes are not.
	for i := range ops {
		if ops[i].Kind == manager.PutRoute {
			ops[i].Kind = manager.DelRoute
		}
	}
	applyAll(t, n, ops[:len(ops)-1]...)
	if p := n.Sync(); p != 0 {
		t.Errorf("vpnd's own deletes: Sync %s, want nothing", p)
	}
}

// When the kernel drops announcements because the monitor's buffer is
// full (ENOBUFS), Sync reports everything. When the monitor's socket
// fails, the monitor opens a new one, and Sync reports everything until
// then and once more after. Either way the monitor goes on.
func TestMonitorOverflowAndFailure(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	core, logs := observer.New(zap.DebugLevel)
	n := openNetlink(t, zap.New(core))
	n.mon.rcvBuf = 1
	_, index := makeTUN(t, n, "vpn-tun")
	wake, err := n.Watch(t.Context(), places)
	must(t, err)
	applyAll(t, n, smallVPN(index).upOps()...)
	tuntest.WaitIPv6(t, "vpn-tun")
	n.Sync()

	// Another program floods the kernel with changes while the monitor
	// cannot read: the announcements have no room in its buffer.
	flood := openNetlink(t, zap.NewNop())
	ops := throwRoutes(2000, 97)
	n.mon.mu.Lock()
	results, err := flood.Apply(ops)
	n.mon.mu.Unlock()
	must(t, err)
	for i, e := range results {
		if e != nil {
			t.Fatalf("%s: %v", ops[i], e)
		}
	}
	if p := n.Sync(); p != manager.PartAll {
		t.Errorf("after lost announcements: Sync %s, want everything", p)
	}
	if logs.FilterMessage("netlink monitor overflowed; reading everything again").Len() == 0 {
		t.Fatal("the monitor never overflowed; the test proves nothing")
	}
	woken(wake, false)
	ipCmd(t, "rule", "del", "priority", "10000", "uidrange", "0-999", "lookup", "98")
	if p := n.Sync(); p != manager.PartRules {
		t.Errorf("a rule deleted after the overflow: Sync %s, want rules", p)
	}

	// The socket fails.
	n.mon.mu.Lock()
	old := n.mon.f
	n.mon.mu.Unlock()
	old.Close()
	deadline := time.Now().Add(hangGuard)
	outage := false // the outage has been reported
	for {
		n.mon.mu.Lock()
		f := n.mon.f
		n.mon.mu.Unlock()
		if f != nil && f != old {
			break
		}
		if f == nil && !outage {
			// The first Sync of the outage reports everything; later ones
			// need not, or the reader would read everything on every call.
			if p := n.Sync(); p != manager.PartAll {
				t.Fatalf("the first Sync without a socket = %s, want everything", p)
			}
			outage = true
		}
		if time.Now().After(deadline) {
			t.Fatal("the monitor did not open a new socket")
		}
		time.Sleep(time.Millisecond)
	}
	if logs.FilterMessage("netlink monitor failed; re-opening it").Len() != 1 {
		t.Errorf("logs: %v", logs.All())
	}
	if p := n.Sync(); p != manager.PartAll {
		t.Errorf("the first Sync on the new socket = %s, want everything: changes may have been missed", p)
	}
	ipCmd(t, "route", "del", "192.168.0.0/16", "table", "98")
	if p := n.Sync(); p != manager.PartRoutes {
		t.Errorf("a route deleted on the new socket: Sync %s, want routes", p)
	}
}
