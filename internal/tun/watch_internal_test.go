package tun

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// hangGuard only keeps a broken watch from hanging a test; it is not a
// timing claim.
const hangGuard = 10 * time.Second

// smallVPN is a two-family VPN with one object of each kind the watch
// cares about.
func smallVPN(index int) *Objects {
	return &Objects{
		Link: &Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{
			netip.MustParsePrefix("10.8.0.2/24"), netip.MustParsePrefix("10.8.1.2/32"), netip.MustParsePrefix("fd00:8::2/64"),
		}},
		Routes: []Route{
			{Table: 98, Dst: netip.MustParsePrefix("10.8.0.0/24"), LinkIndex: index},
			{Table: 98, Dst: netip.MustParsePrefix("fd00:8::/64"), LinkIndex: index},
			{Table: 98, Dst: netip.MustParsePrefix("0.0.0.0/0"), LinkIndex: index},
			{Table: 98, Dst: netip.MustParsePrefix("::/0"), LinkIndex: index},
			{Table: 98, Dst: netip.MustParsePrefix("192.0.2.7/32"), LinkIndex: index},
			{Table: 98, Dst: netip.MustParsePrefix("192.168.0.0/16"), Kind: Throw},
		},
		Rules: []Rule{
			{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 1000, UIDEnd: 1000, Mask: 0x20000},
			{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 0, UIDEnd: 999},
			{Family: unix.AF_INET6, Priority: 10000, Table: 98, UIDStart: 1000, UIDEnd: 1000, Mask: 0x20000},
		},
	}
}

// settled waits until the kernel has finished configuring the link's IPv6
// addresses (duplicate address detection runs in a work queue even with
// IFA_F_NODAD, and announces the address when done, after vpnd's request
// has returned), then lets the monitor process everything queued so far.
// After it, a token on changed can only come from what was queued before.
func settled(t *testing.T, n *Netlink, ifname string, v6 ...string) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		out, err := exec.Command("ip", "-6", "route", "show", "table", "local", "dev", ifname).CombinedOutput()
		if err != nil {
			t.Fatalf("ip -6 route show table local: %v\n%s", err, out)
		}
		done := true
		for _, a := range v6 {
			// The kernel adds an address's local route right after
			// announcing it.
			done = done && strings.Contains(string(out), "local "+a+" ")
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("IPv6 addresses %v never became usable:\n%s", v6, out)
		}
		time.Sleep(time.Millisecond)
	}
	n.mon.drain()
}

func noToken(t *testing.T, n *Netlink, changed <-chan struct{}, after string) {
	t.Helper()
	n.mon.drain()
	select {
	case <-changed:
		t.Errorf("changed was signalled after %s", after)
	default:
	}
}

// oneToken requires that changed holds a token once the monitor has
// processed everything queued, and no second one after that.
func oneToken(t *testing.T, n *Netlink, changed <-chan struct{}, after string) {
	t.Helper()
	n.mon.drain()
	select {
	case <-changed:
	default:
		t.Errorf("changed was not signalled after %s", after)
		return
	}
	noToken(t, n, changed, after+" (a second token)")
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(hangGuard):
		t.Fatalf("%s: not closed", what)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// gone is closed when the last fd of the TUN closes, when someone deletes
// the link, and at once for a link gone before Watch; a cancelled watch
// closes nothing and is forgotten.
func TestWatchGone(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	ctx := t.Context()

	f, index := makeTUN(t, n, "tun-close")
	gone, _, err := n.Watch(ctx, ChangeFilter{LinkIndex: index})
	if err != nil {
		t.Fatal(err)
	}
	n.mon.drain()
	if isClosed(gone) {
		t.Fatal("gone closed while the link exists")
	}
	f.Close()
	waitClosed(t, gone, "fd closed")

	gone, _, err = n.Watch(ctx, ChangeFilter{LinkIndex: index})
	if err != nil {
		t.Fatal(err)
	}
	if !isClosed(gone) {
		t.Error("a watch of a link gone before it began is not closed at once")
	}

	_, index = makeTUN(t, n, "tun-del")
	gone, _, err = n.Watch(ctx, ChangeFilter{LinkIndex: index, Table: 98})
	if err != nil {
		t.Fatal(err)
	}
	// Others' links come and go.
	ipCmd(t, "link", "add", "other0", "type", "bridge")
	ipCmd(t, "link", "del", "other0")
	n.mon.drain()
	if isClosed(gone) {
		t.Fatal("gone closed for another link")
	}
	ipCmd(t, "link", "del", "tun-del")
	waitClosed(t, gone, "ip link del")

	f, index = makeTUN(t, n, "tun-cancel")
	before := n.watchCount()
	cctx, cancel := context.WithCancel(ctx)
	gone, changed, err := n.Watch(cctx, ChangeFilter{LinkIndex: index, Table: 98})
	if err != nil {
		t.Fatal(err)
	}
	n.mon.drain()
	select {
	case <-changed: // whatever came before the cancel
	default:
	}
	cancel()
	deadline := time.Now().Add(hangGuard)
	for n.watchCount() != before {
		if time.Now().After(deadline) {
			t.Fatal("a cancelled watch stays registered")
		}
		time.Sleep(time.Millisecond)
	}
	ipCmd(t, "route", "add", "throw", "10.0.0.0/8", "table", "98")
	f.Close()
	n.mon.drain()
	if isClosed(gone) {
		t.Error("a cancelled watch's gone was closed")
	}
	select {
	case _, ok := <-changed:
		t.Errorf("a cancelled watch was signalled (channel open: %t)", ok)
	default:
	}
	if n.linkViews() != 0 {
		t.Errorf("%d link views left with no watch of theirs", n.linkViews())
	}
}

func (n *Netlink) linkViews() int {
	n.mon.mu.Lock()
	defer n.mon.mu.Unlock()
	return len(n.mon.links) - n.mon.linksWatched()
}

// linksWatched counts the links that some watch selects.
func (m *monitor) linksWatched() int {
	seen := map[int]bool{}
	for w := range m.watches {
		if w.f.LinkIndex != 0 {
			seen[w.f.LinkIndex] = true
		}
	}
	return len(seen)
}

func (n *Netlink) watchCount() int {
	n.mon.mu.Lock()
	defer n.mon.mu.Unlock()
	return len(n.mon.watches)
}

// changed gets a token for each change that self-healing must look at:
// the link set down, its MTU changed, an address deleted, a route in the
// table deleted or added, a rule at the priority (or looking up the
// table) deleted. Nothing for vpnd's own Install and Restore, and nothing
// for other tables, priorities and links. Each "nothing" is checked after
// the monitor has processed everything queued, so a wrong token is seen.
func TestWatchChanged(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	f, index := makeTUN(t, n, "vpn-tun")
	gone, changed, err := n.Watch(t.Context(), ChangeFilter{LinkIndex: index, Table: 98, Priorities: []int{10000}})
	if err != nil {
		t.Fatal(err)
	}
	o := smallVPN(index)
	if _, err := n.Install(o); err != nil {
		t.Fatal(err)
	}
	settled(t, n, "vpn-tun", "fd00:8::2")
	noToken(t, n, changed, "vpnd's own Install")

	// Others' changes.
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
		{"rule", "add", "priority", "9999", "uidrange", "5-5", "lookup", "99"},
		{"rule", "del", "priority", "9999", "uidrange", "5-5", "lookup", "99"},
		{"-6", "rule", "add", "priority", "10001", "uidrange", "5-5", "unreachable"},
		{"link", "set", "vpn-tun", "alias", "somebody's"},
	} {
		ipCmd(t, args...)
		noToken(t, n, changed, "ip "+strings.Join(args, " "))
	}

	// Changes to what vpnd configured, each repaired by vpnd.
	repair := func(what string, r *Repair) {
		t.Helper()
		r.LinkIndex = index
		if _, err := n.Restore(r); err != nil {
			t.Fatalf("restore after %s: %v", what, err)
		}
	}
	for _, tc := range []struct {
		args   []string
		repair Repair
		v6     []string // IPv6 addresses the repair re-adds
	}{
		{args: []string{"link", "set", "vpn-tun", "down"},
			repair: Repair{Up: true, Addrs: o.Link.Addrs[2:], Routes: o.Routes[:5]}, v6: []string{"fd00:8::2"}},
		{args: []string{"link", "set", "vpn-tun", "mtu", "1300"}, repair: Repair{MTU: 1400}},
		{args: []string{"link", "set", "vpn-tun", "mtu", "1200"}, // IPv6 leaves the link
			repair: Repair{MTU: 1400, Addrs: o.Link.Addrs[2:], Routes: []Route{o.Routes[1], o.Routes[3]}}, v6: []string{"fd00:8::2"}},
		{args: []string{"addr", "del", "10.8.1.2/32", "dev", "vpn-tun"}, repair: Repair{Addrs: o.Link.Addrs[1:2]}},
		{args: []string{"-6", "addr", "del", "fd00:8::2/64", "dev", "vpn-tun"},
			repair: Repair{Addrs: o.Link.Addrs[2:], Routes: o.Routes[1:2]}, v6: []string{"fd00:8::2"}},
		{args: []string{"route", "del", "192.0.2.7/32", "table", "98"}, repair: Repair{Routes: o.Routes[4:5]}},
		{args: []string{"route", "del", "throw", "192.168.0.0/16", "table", "98"}, repair: Repair{Routes: o.Routes[5:6]}},
		{args: []string{"route", "replace", "192.0.2.7/32", "via", "10.8.0.1", "dev", "vpn-tun", "table", "98"}, repair: Repair{Routes: o.Routes[4:5]}},
		{args: []string{"rule", "del", "priority", "10000", "uidrange", "0-999", "lookup", "98"}, repair: Repair{Rules: o.Rules[1:2]}},
		{args: []string{"-6", "rule", "del", "priority", "10000", "uidrange", "1000-1000", "lookup", "98"}, repair: Repair{Rules: o.Rules[2:3]}},
		{args: []string{"rule", "add", "priority", "500", "uidrange", "7-7", "lookup", "98"}},
		{args: []string{"rule", "add", "priority", "10000", "uidrange", "8-8", "lookup", "97"}},
		{args: []string{"-6", "route", "add", "2001:db8:5::/48", "dev", "vpn-tun", "table", "98"}},
	} {
		what := "ip " + strings.Join(tc.args, " ")
		ipCmd(t, tc.args...)
		oneToken(t, n, changed, what)
		repair(what, &tc.repair)
		settled(t, n, "vpn-tun", tc.v6...)
		noToken(t, n, changed, "vpnd's own repair of "+what)
		if isClosed(gone) {
			t.Fatalf("gone closed after %s", what)
		}
	}

	f.Close()
	waitClosed(t, gone, "fd closed")
}

// When the monitor's socket fails, the monitor opens a new one and tells
// every watch that something may have changed. When the kernel drops
// announcements because the socket's buffer is full (ENOBUFS), every
// watch is told, and a watched link that went meanwhile is found gone:
// its deletion was among the lost announcements.
func TestMonitorOverflow(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	core, logs := observer.New(zap.DebugLevel)
	n := openNetlink(t, zap.New(core))
	_, index := makeTUN(t, n, "vpn-tun")
	gone, changed, err := n.Watch(t.Context(), ChangeFilter{LinkIndex: index, Table: 98, Priorities: []int{10000}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Install(smallVPN(index)); err != nil {
		t.Fatal(err)
	}
	settled(t, n, "vpn-tun", "fd00:8::2")
	noToken(t, n, changed, "Install")

	// The socket fails: a new one (with the smallest buffer the kernel
	// allows) replaces it, and the watch hears that it may have missed
	// something.
	n.mon.mu.Lock()
	n.mon.rcvBuf = 1
	old := n.mon.f
	n.mon.mu.Unlock()
	old.Close()
	select {
	case <-changed:
	case <-time.After(hangGuard):
		t.Fatal("changed was not signalled after the monitor's socket was replaced")
	}
	if logs.FilterMessage("netlink monitor failed; re-opening it").Len() != 1 {
		t.Errorf("logs: %v", logs.All())
	}
	n.mon.mu.Lock()
	if n.mon.f == old {
		t.Fatal("the monitor kept its closed socket")
	}
	rc, err := n.mon.f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var size int
	rc.Control(func(fd uintptr) { size, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
	n.mon.mu.Unlock()
	if err != nil || size > 16<<10 {
		t.Fatalf("the new socket's SO_RCVBUF is %d (%v), want the kernel's minimum", size, err)
	}

	// Keep the monitor from reading while another program floods the
	// kernel with changes and then deletes the link: the deletion's
	// announcement has no room left in the socket's buffer.
	flood := openNetlink(t, zap.NewNop())
	var o Objects
	for i := range 2000 {
		o.Routes = append(o.Routes, Route{Table: 97, Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i >> 8), byte(i), 0}), 24), Kind: Throw})
	}
	n.mon.mu.Lock()
	if _, err := flood.Install(&o); err != nil {
		n.mon.mu.Unlock()
		t.Fatal(err)
	}
	ipCmd(t, "link", "del", "vpn-tun")
	n.mon.mu.Unlock()

	waitClosed(t, gone, "link deleted while announcements were lost")
	n.mon.drain()
	if logs.FilterMessage("netlink monitor overflowed; resyncing").Len() == 0 {
		t.Fatal("the monitor never overflowed; the test proves nothing")
	}
	select {
	case <-changed:
	default:
		t.Error("changed was not signalled after lost announcements")
	}

	// The monitor goes on: a new VPN's watch hears its changes and its
	// link going.
	if err := n.Remove(smallVPN(index)); err != nil {
		t.Fatal(err)
	}
	f, index := makeTUN(t, n, "vpn-tun")
	gone, changed, err = n.Watch(t.Context(), ChangeFilter{LinkIndex: index, Table: 98, Priorities: []int{10000}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Install(smallVPN(index)); err != nil {
		t.Fatal(err)
	}
	n.mon.drain()
	select {
	case <-changed: // an overflow, maybe: the buffer is tiny
	default:
	}
	ipCmd(t, "rule", "del", "priority", "10000", "uidrange", "0-999", "lookup", "98")
	n.mon.drain()
	select {
	case <-changed:
	default:
		t.Error("changed was not signalled for a deleted rule")
	}
	f.Close()
	waitClosed(t, gone, "fd closed")
}

// vpnd's own route and rule changes are dropped by the monitor socket's
// filter, in the kernel: thousands of them, with the monitor not reading
// and the smallest buffer the kernel allows, queue nothing, so nothing
// overflows. Another program's changes still come through.
func TestMonitorFiltersOwnEcho(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	core, logs := observer.New(zap.DebugLevel)
	n := openNetlink(t, zap.New(core))
	_, changed, err := n.Watch(t.Context(), ChangeFilter{Table: 97})
	if err != nil {
		t.Fatal(err)
	}
	// A new monitor socket with the smallest buffer.
	n.mon.mu.Lock()
	n.mon.rcvBuf = 1
	old := n.mon.f
	n.mon.mu.Unlock()
	old.Close()
	<-changed // the re-opening's "may have missed something"
	for {
		n.mon.mu.Lock()
		replaced := n.mon.f != old
		n.mon.mu.Unlock()
		if replaced {
			break
		}
		time.Sleep(time.Millisecond)
	}

	var o Objects
	for i := range 2000 {
		o.Routes = append(o.Routes, Route{Table: 97, Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i >> 8), byte(i), 0}), 24), Kind: Throw})
	}
	o.Rules = []Rule{{Family: unix.AF_INET, Priority: 9000, Table: 97}}
	n.mon.mu.Lock() // the monitor reads nothing meanwhile
	_, err = n.Install(&o)
	n.mon.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	n.mon.drain()
	if l := logs.FilterMessage("netlink monitor overflowed; resyncing").Len(); l != 0 {
		t.Fatalf("the monitor overflowed %d times on vpnd's own changes", l)
	}
	noToken(t, n, changed, "vpnd's own Install")

	// Someone else's change to the table is heard.
	ipCmd(t, "route", "del", "throw", "20.0.0.0/24", "table", "97")
	select {
	case <-changed:
	case <-time.After(hangGuard):
		t.Fatal("another program's route deletion was not heard")
	}
	if err := n.Remove(&o); err != nil {
		t.Fatal(err)
	}
}
