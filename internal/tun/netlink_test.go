package tun_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/tun"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	table = 98
	prio  = 10000
	mark  = 0x20000
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"vpn-tun", true},
		{"a", true},
		{"fifteen-bytes-x", true},
		{"sixteen-bytes-xx", false}, // the kernel would cut it to 15
		{"", false},
		{".", false},
		{"..", false},
		{"a/b", false},
		{"a:b", false},
		{"a b", false},
		{"a\tb", false},
		{"tun%d", false}, // a template the kernel would expand
	} {
		if err := tun.ValidateName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%t", tc.name, err, tc.ok)
		}
	}
}

func fdFlags(t *testing.T, f *os.File) (fl, fdfl int) {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) {
		fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
		fdfl, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
	}); err != nil {
		t.Fatal(err)
	}
	return fl, fdfl
}

func linkExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if err != nil && !errors.As(err, &nf) {
		t.Fatalf("look up %s: %v", name, err)
	}
	return err == nil
}

// Contract §7: the TUN device is IFF_TUN|IFF_NO_PI|IFF_TUN_EXCL, not
// persistent, and its fd is non-blocking unless asked otherwise.
func TestCreateTUN(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := tun.New(zaptest.NewLogger(t))

	f, index, err := n.CreateTUN("vpn-tun", false)
	if err != nil {
		t.Fatal(err)
	}
	flags, err := tun.TUNFlags(f)
	if err != nil {
		t.Fatal(err)
	}
	if flags&(unix.IFF_TUN|unix.IFF_NO_PI) != unix.IFF_TUN|unix.IFF_NO_PI || flags&(unix.IFF_MULTI_QUEUE|unix.IFF_PERSIST|unix.IFF_TAP) != 0 {
		t.Errorf("TUNGETIFF flags %#x, want IFF_TUN|IFF_NO_PI only", flags)
	}
	fl, fdfl := fdFlags(t, f)
	if fl&unix.O_NONBLOCK == 0 {
		t.Error("fd is blocking, want O_NONBLOCK")
	}
	if fdfl&unix.FD_CLOEXEC == 0 {
		t.Error("fd is not close-on-exec")
	}
	links := netnstest.IPJSON(t, "-d", "link", "show", "vpn-tun")
	if len(links) != 1 || int(links[0]["ifindex"].(float64)) != index {
		t.Fatalf("ip link show vpn-tun: %v, want index %d", links, index)
	}
	info, _ := links[0]["linkinfo"].(map[string]any)
	data, _ := info["info_data"].(map[string]any)
	if info["info_kind"] != "tun" || data["type"] != "tun" || data["pi"] != false || data["multi_queue"] != false || data["persist"] != false {
		t.Errorf("linkinfo %v, want a non-persistent single-queue tun without pi", info)
	}

	// IFF_TUN_EXCL: a second device under the name is refused.
	if _, _, err := n.CreateTUN("vpn-tun", false); !errors.Is(err, tun.ErrLinkExists) || !strings.Contains(err.Error(), "tuntap") {
		t.Errorf("second CreateTUN: %v, want ErrLinkExists naming a tuntap link", err)
	}
	netnstest.IP(t, "link", "add", "foreign0", "type", "bridge")
	if _, _, err := n.CreateTUN("foreign0", false); !errors.Is(err, tun.ErrLinkExists) || !strings.Contains(err.Error(), "bridge") {
		t.Errorf("CreateTUN over a bridge: %v, want ErrLinkExists naming a bridge link", err)
	}
	for _, bad := range []string{"", "sixteen-bytes-xx", "a/b", "a b"} {
		if _, _, err := n.CreateTUN(bad, false); err == nil {
			t.Errorf("CreateTUN(%q) succeeded", bad)
		}
	}

	fb, _, err := n.CreateTUN("vpn-tun-b", true)
	if err != nil {
		t.Fatal(err)
	}
	if fl, _ := fdFlags(t, fb); fl&unix.O_NONBLOCK != 0 {
		t.Error("blocking fd has O_NONBLOCK")
	}

	// Not persistent: the link lives exactly as long as the fd.
	f.Close()
	fb.Close()
	for _, name := range []string{"vpn-tun", "vpn-tun-b"} {
		if linkExists(t, name) {
			t.Errorf("%s still exists after its fd was closed", name)
		}
	}
	if !linkExists(t, "foreign0") {
		t.Error("foreign0 is gone")
	}
}

func mustTUN(t *testing.T, n *tun.Netlink, name string) (*os.File, int) {
	t.Helper()
	f, index, err := n.CreateTUN(name, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, index
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Contract §7: addresses, MTU, up; routes in table 98 with excluded routes
// as throw routes; rules at priority 10000 with uidrange, fwmark 0x0/0x20000
// for the owner, lookup 98, one set per family.
func TestConfigure(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := tun.New(zaptest.NewLogger(t))
	_, index := mustTUN(t, n, "vpn-tun")
	must(t, n.AddAddress(index, pfx("10.8.0.2/24")))
	must(t, n.AddAddress(index, pfx("fd00::2/64")))
	must(t, n.SetMTU(index, 1400))
	must(t, n.SetUp(index))
	routes := []tun.Route{
		{Table: table, Dst: pfx("0.0.0.0/0"), LinkIndex: index},
		{Table: table, Dst: pfx("10.9.0.0/16"), LinkIndex: index, Gateway: netip.MustParseAddr("10.8.0.1")},
		{Table: table, Dst: pfx("192.168.0.0/16"), Throw: true},
		{Table: table, Dst: pfx("::/0"), LinkIndex: index},
		{Table: table, Dst: pfx("fd00:1::/48"), Throw: true},
	}
	for _, r := range routes {
		must(t, n.AddRoute(r))
	}
	rules := []tun.Rule{
		{Family: unix.AF_INET, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
		{Family: unix.AF_INET, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
		{Family: unix.AF_INET6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
	}
	for _, r := range rules {
		must(t, n.AddRule(r))
	}
	if err := n.AddRule(rules[0]); !errors.Is(err, unix.EEXIST) {
		t.Errorf("duplicate rule: %v, want EEXIST", err)
	}
	if err := n.AddRoute(routes[0]); !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), "add route 0.0.0.0/0") {
		t.Errorf("duplicate route: %v, want EEXIST with context", err)
	}

	// Link state, from the kernel.
	l := netnstest.IPJSON(t, "addr", "show", "dev", "vpn-tun")[0]
	if l["mtu"].(float64) != 1400 || !slices.Contains(l["flags"].([]any), any("UP")) {
		t.Errorf("link: mtu %v flags %v, want 1400 and UP", l["mtu"], l["flags"])
	}
	var have []string
	for _, a := range l["addr_info"].([]any) {
		a := a.(map[string]any)
		if a["scope"] == "link" {
			continue
		}
		have = append(have, a["local"].(string))
		if a["tentative"] == true {
			t.Errorf("address %v is tentative: IFA_F_NODAD missing", a["local"])
		}
	}
	if !slices.Equal(have, []string{"10.8.0.2", "fd00::2"}) {
		t.Errorf("addresses %v", have)
	}

	// Routes, from the kernel.
	out4 := netnstest.IP(t, "-4", "route", "show", "table", "98")
	out6 := netnstest.IP(t, "-6", "route", "show", "table", "98")
	for _, want := range []string{"default dev vpn-tun", "10.9.0.0/16 via 10.8.0.1 dev vpn-tun", "throw 192.168.0.0/16"} {
		if !strings.Contains(out4, want) {
			t.Errorf("table 98 lacks %q:\n%s", want, out4)
		}
	}
	for _, want := range []string{"default dev vpn-tun", "throw fd00:1::/48"} {
		if !strings.Contains(out6, want) {
			t.Errorf("IPv6 table 98 lacks %q:\n%s", want, out6)
		}
	}
	if main := netnstest.IP(t, "route", "show"); strings.Contains(main, "default") || strings.Contains(main, "throw") {
		t.Errorf("routes leaked into table main:\n%s", main)
	}

	// Rules, from the kernel: text, as a user reads them, and JSON.
	rule4 := netnstest.IP(t, "-4", "rule", "show", "priority", "10000")
	rule6 := netnstest.IP(t, "-6", "rule", "show", "priority", "10000")
	for _, want := range []string{
		"10000:\tfrom all fwmark 0/0x20000 uidrange 1000-1000 lookup 98",
		"10000:\tfrom all uidrange 0-999 lookup 98",
	} {
		if !strings.Contains(rule4, want) {
			t.Errorf("ip -4 rule lacks %q:\n%s", want, rule4)
		}
	}
	if !strings.Contains(rule6, "10000:\tfrom all fwmark 0/0x20000 uidrange 1000-1000 lookup 98") || strings.Contains(rule6, "0-999") {
		t.Errorf("ip -6 rule:\n%s", rule6)
	}
	for _, r := range netnstest.IPJSON(t, "-6", "rule", "show", "priority", "10000") {
		if r["table"] != "98" || r["uid_start"] != 1000.0 || r["uid_end"] != 1000.0 || r["fwmark"] != "0" || r["fwmask"] != "0x20000" {
			t.Errorf("IPv6 rule %v", r)
		}
	}

	// ListRoutes and ListRules read back what was added.
	gotRoutes, err := tun.ListRoutes(table)
	must(t, err)
	if !sameSet(gotRoutes, routes) {
		t.Errorf("ListRoutes = %v, want %v", gotRoutes, routes)
	}
	gotRules, err := tun.ListRules(table, prio)
	must(t, err)
	if !slices.Equal(gotRules, rules) {
		t.Errorf("ListRules = %v, want %v", gotRules, rules)
	}

	// And everything comes off again.
	for _, r := range routes {
		must(t, n.DeleteRoute(r))
	}
	for _, r := range rules {
		must(t, n.DeleteRule(r))
	}
	must(t, n.DeleteAddress(index, pfx("10.8.0.2/24")))
	must(t, n.DeleteAddress(index, pfx("fd00::2/64")))
	if s := netnstest.IP(t, "rule", "show", "priority", "10000") + netnstest.IP(t, "-6", "rule", "show", "priority", "10000") +
		netnstest.IP(t, "route", "show", "table", "all", "table", "98"); strings.TrimSpace(s) != "" {
		t.Errorf("left behind:\n%s", s)
	}
	must(t, n.DeleteLink(index))
	must(t, n.DeleteLink(index)) // already gone: not an error
}

func sameSet[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// DeleteRule deletes exactly the rule described, never a wider match.
func TestDeleteRuleExact(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := tun.New(zaptest.NewLogger(t))
	masked := tun.Rule{Family: unix.AF_INET, Priority: prio, Table: table, UIDStart: 2000, UIDEnd: 2000, Mask: mark}
	plain := masked
	plain.Mask = 0

	// The plain rule comes second: the kernel would delete the masked one.
	must(t, n.AddRule(masked))
	must(t, n.AddRule(plain))
	if err := n.DeleteRule(plain); !errors.Is(err, tun.ErrAmbiguousRule) {
		t.Errorf("DeleteRule(plain) = %v, want ErrAmbiguousRule", err)
	}
	if got, _ := tun.ListRules(table, prio); !slices.Equal(got, []tun.Rule{masked, plain}) {
		t.Fatalf("rules %v after refused delete", got)
	}
	must(t, n.DeleteRule(masked))
	must(t, n.DeleteRule(plain))

	// The plain rule first: it can be deleted alone.
	must(t, n.AddRule(plain))
	must(t, n.AddRule(masked))
	must(t, n.DeleteRule(plain))
	if got, _ := tun.ListRules(table, prio); !slices.Equal(got, []tun.Rule{masked}) {
		t.Fatalf("rules %v, want only %v", got, masked)
	}
	if err := n.DeleteRule(plain); !errors.Is(err, unix.ENOENT) {
		t.Errorf("second DeleteRule(plain) = %v, want ENOENT", err)
	}
	// A foreign rule with more selectors is not vpnd's: ENOENT...
	netnstest.IP(t, "rule", "add", "priority", "10000", "from", "10.0.0.0/8", "uidrange", "3000-3000", "lookup", "98")
	third := tun.Rule{Family: unix.AF_INET, Priority: prio, Table: table, UIDStart: 3000, UIDEnd: 3000}
	if err := n.DeleteRule(third); !errors.Is(err, unix.ENOENT) {
		t.Errorf("DeleteRule over a foreign rule = %v, want ENOENT", err)
	}
	if out := netnstest.IP(t, "rule", "show", "priority", "10000"); !strings.Contains(out, "from 10.0.0.0/8") {
		t.Errorf("foreign rule deleted:\n%s", out)
	}
	// (The kernel would refuse to add third next to it: EEXIST treats the
	// absent source as a wildcard.)
	netnstest.IP(t, "rule", "del", "priority", "10000", "from", "10.0.0.0/8", "uidrange", "3000-3000", "lookup", "98")

	// ...and when vpnd's rule comes after one that the kernel's delete
	// would match (any fwmark), the delete is refused.
	netnstest.IP(t, "rule", "add", "priority", "10000", "fwmark", "0x1/0x1", "uidrange", "3000-3000", "lookup", "98")
	must(t, n.AddRule(third))
	if err := n.DeleteRule(third); !errors.Is(err, tun.ErrAmbiguousRule) {
		t.Errorf("DeleteRule behind a foreign rule = %v, want ErrAmbiguousRule", err)
	}
	if out := netnstest.IP(t, "rule", "show", "priority", "10000"); !strings.Contains(out, "fwmark 0x1/0x1") {
		t.Errorf("foreign rule deleted:\n%s", out)
	}
}

// Contract §7, start-up sweep: vpnd's interface, its rules at its priority
// for its table, every route in its table; nothing else.
func TestSweep(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	log := zaptest.NewLogger(t)
	n := tun.New(log)

	// Decoys that are not vpnd's.
	for _, args := range [][]string{
		{"link", "add", "decoy0", "type", "bridge"},
		{"link", "set", "decoy0", "up"},
		{"addr", "add", "10.50.0.1/24", "dev", "decoy0"},
		{"route", "add", "10.60.0.0/16", "dev", "decoy0", "table", "99"},
		{"route", "add", "10.61.0.0/16", "dev", "decoy0"},
		{"rule", "add", "priority", "9999", "uidrange", "1-1", "lookup", "98"},
		{"rule", "add", "priority", "10000", "uidrange", "1-1", "lookup", "99"},
		{"-6", "rule", "add", "priority", "10001", "uidrange", "1-1", "lookup", "98"},
	} {
		netnstest.IP(t, args...)
	}
	before := kernelState(t)

	// What a killed vpnd left: a tun still held open by its client, its
	// routes and rules, and someone's extra rule and route in its slots.
	_, index := mustTUN(t, n, "vpn-tun")
	must(t, n.AddAddress(index, pfx("10.8.0.2/24")))
	must(t, n.SetUp(index))
	for _, r := range []tun.Route{
		{Table: table, Dst: pfx("0.0.0.0/0"), LinkIndex: index},
		{Table: table, Dst: pfx("192.168.0.0/16"), Throw: true},
		{Table: table, Dst: pfx("fd00:1::/48"), Throw: true},
	} {
		must(t, n.AddRoute(r))
	}
	for _, r := range []tun.Rule{
		{Family: unix.AF_INET, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
		{Family: unix.AF_INET6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
		{Family: unix.AF_INET6, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
	} {
		must(t, n.AddRule(r))
	}
	netnstest.IP(t, "rule", "add", "priority", "10000", "from", "10.0.0.0/8", "lookup", "98")
	netnstest.IP(t, "route", "add", "10.62.0.0/16", "dev", "decoy0", "table", "98")

	removed, err := tun.Sweep(log, "vpn-tun", table, prio)
	must(t, err)
	// The link's own default route goes with the link, so: the link, four
	// rules and three routes.
	if len(removed) != 1+4+3 {
		t.Errorf("removed %d things, want 8:\n%s", len(removed), strings.Join(removed, "\n"))
	}
	if !slices.Contains(removed, "link vpn-tun (index "+strconv.Itoa(index)+")") {
		t.Errorf("removed %q, want the link named", removed)
	}
	if after := kernelState(t); after != before {
		t.Errorf("sweep did not restore the state before vpnd:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Nothing left: a second sweep removes nothing.
	removed, err = tun.Sweep(log, "vpn-tun", table, prio)
	if err != nil || len(removed) != 0 {
		t.Errorf("second sweep: %v, %v", removed, err)
	}

	// A persistent TUN under the name is vpnd's kind of device: removed.
	netnstest.IP(t, "tuntap", "add", "vpn-tun", "mode", "tun")
	removed, err = tun.Sweep(log, "vpn-tun", table, prio)
	if err != nil || len(removed) != 1 || linkExists(t, "vpn-tun") {
		t.Errorf("sweep over a persistent tun: %v, %v; want it removed", removed, err)
	}

	// Any other link under the name is left alone and reported.
	for _, args := range [][]string{
		{"tuntap", "add", "vpn-tun", "mode", "tap"},
		{"link", "add", "vpn-tun", "type", "bridge"},
	} {
		netnstest.IP(t, args...)
		removed, err = tun.Sweep(log, "vpn-tun", table, prio)
		if !errors.Is(err, tun.ErrLinkExists) || len(removed) != 0 || !linkExists(t, "vpn-tun") {
			t.Errorf("sweep over ip %v: %v, %v; want ErrLinkExists and the link kept", args, removed, err)
		}
		netnstest.IP(t, "link", "del", "vpn-tun")
	}

	for _, tb := range []int{0, 253, 254, 255} {
		if _, err := tun.Sweep(log, "vpn-tun", tb, prio); err == nil {
			t.Errorf("Sweep of reserved table %d succeeded", tb)
		}
	}
}

// kernelState renders links, all rules and all routes of all tables.
func kernelState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-br", "link"},
		{"-br", "addr"},
		{"-4", "rule"},
		{"-6", "rule"},
		{"-4", "route", "show", "table", "all"},
		{"-6", "route", "show", "table", "all"},
	} {
		out := netnstest.IP(t, args...)
		// The kernel's own IPv6 link-local routes come and go with
		// address configuration; they are not what the sweep is about.
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "fe80::") || strings.Contains(line, "ff00::/8") || strings.Contains(line, "multicast") {
				continue
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// WatchLink fires on `ip link del` and when the last fd closes; a
// cancelled watch does not fire and leaves no goroutine behind.
func TestWatchLink(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	defer goleak.VerifyNone(t)
	n := tun.New(zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	wait := func(what string, ch <-chan struct{}) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second): // a hang guard, not a timing claim
			t.Fatalf("%s: watch did not fire", what)
		}
	}

	f1, i1, err := n.CreateTUN("tun-del", false)
	must(t, err)
	defer f1.Close()
	ch1, err := n.WatchLink(ctx, i1)
	must(t, err)
	netnstest.IP(t, "link", "del", "tun-del")
	wait("ip link del", ch1)

	f2, i2, err := n.CreateTUN("tun-close", false)
	must(t, err)
	ch2, err := n.WatchLink(ctx, i2)
	must(t, err)
	f2.Close()
	wait("fd close", ch2)

	ch3, err := n.WatchLink(ctx, i2) // already gone
	must(t, err)
	wait("gone before the watch", ch3)

	f4, i4, err := n.CreateTUN("tun-cancel", false)
	must(t, err)
	defer f4.Close()
	ctx4, cancel4 := context.WithCancel(ctx)
	ch4, err := n.WatchLink(ctx4, i4)
	must(t, err)
	// Unrelated link churn does not fire it.
	netnstest.IP(t, "link", "add", "other0", "type", "bridge")
	netnstest.IP(t, "link", "del", "other0")
	cancel4()
	f4.Close()
	select {
	case <-ch4:
		t.Error("a cancelled watch fired")
	case <-time.After(100 * time.Millisecond):
	}
}

// protect: contract §4 (2203004) and §7 (mark bit kept with the others).
func TestCheckAndMarkSocket(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.LoUp(t)
	n := tun.New(zaptest.NewLogger(t))

	sock := func(domain, typ int) int {
		t.Helper()
		fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
		must(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	var p [2]int
	must(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	const closed = 1 << 20 // far above any fd this test opens

	refused := sock(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK)
	listener := sock(unix.AF_INET, unix.SOCK_STREAM)
	must(t, unix.Bind(listener, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := unix.Getsockname(listener)
	must(t, err)
	port := sa.(*unix.SockaddrInet4).Port
	// Bound but not listening: a connect is refused.
	if err := unix.Connect(refused, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != unix.EINPROGRESS {
		t.Fatalf("non-blocking connect: %v, want EINPROGRESS", err)
	}
	pfd := []unix.PollFd{{Fd: int32(refused), Events: unix.POLLOUT}}
	if _, err := unix.Poll(pfd, 10000); err != nil || pfd[0].Revents&unix.POLLERR == 0 {
		t.Fatalf("poll: %v, revents %#x, want POLLERR", err, pfd[0].Revents)
	}

	for _, tc := range []struct {
		name   string
		fd     int
		detail string // "" means accepted
	}{
		{"pipe", p[0], "fd is not a socket"},
		{"closed fd", closed, "is not open"},
		{"unix socket", sock(unix.AF_UNIX, unix.SOCK_STREAM), "socket domain AF_UNIX not AF_INET or AF_INET6"},
		{"netlink socket", sock(unix.AF_NETLINK, unix.SOCK_RAW), "socket domain AF_NETLINK not AF_INET or AF_INET6"},
		{"raw socket", func() int {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)
			must(t, err)
			t.Cleanup(func() { unix.Close(fd) })
			return fd
		}(), "socket type SOCK_RAW not stream or datagram"},
		{"failed tcp connect", refused, "socket has a pending error: connection refused"},
		{"udp", sock(unix.AF_INET, unix.SOCK_DGRAM), ""},
		{"udp6", sock(unix.AF_INET6, unix.SOCK_DGRAM), ""},
		{"unconnected tcp", sock(unix.AF_INET, unix.SOCK_STREAM), ""},
		{"tcp6", sock(unix.AF_INET6, unix.SOCK_STREAM), ""},
	} {
		err := n.CheckSocket(tc.fd)
		if tc.detail == "" {
			if err != nil {
				t.Errorf("%s: %v, want accepted", tc.name, err)
			}
			continue
		}
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.CodeInvalidFD || !strings.Contains(e.Detail, tc.detail) || !errors.Is(err, errs.ErrInvalidFD) {
			t.Errorf("%s: %v, want code 2203004 with detail %q", tc.name, err, tc.detail)
		}
	}

	// MarkSocket keeps the other bits.
	fd := sock(unix.AF_INET, unix.SOCK_DGRAM)
	must(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, 0x5))
	must(t, n.MarkSocket(fd, mark))
	must(t, n.MarkSocket(fd, mark))
	if got, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); got != mark|0x5 {
		t.Errorf("SO_MARK %#x, want %#x", got, mark|0x5)
	}
	fd = sock(unix.AF_INET6, unix.SOCK_STREAM)
	must(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, -1<<31))
	must(t, n.MarkSocket(fd, mark))
	if got, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); uint32(got) != 1<<31|mark {
		t.Errorf("SO_MARK %#x, want %#x", uint32(got), 1<<31|mark)
	}
}
