package tun

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
)

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
		if err := ValidateName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%t", tc.name, err, tc.ok)
		}
	}
}

// fdFlags returns the file status flags (F_GETFL) and descriptor flags
// (F_GETFD) of f, without switching it to blocking mode as Fd would.
func fdFlags(t *testing.T, f *os.File) (fl, fdfl int) {
	t.Helper()
	rc, err := f.SyscallConn()
	must(t, err)
	must(t, rc.Control(func(fd uintptr) {
		fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
		fdfl, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
	}))
	return fl, fdfl
}

// tunFlags asks the TUN driver what the device behind f is (TUNGETIFF).
func tunFlags(t *testing.T, f *os.File) uint16 {
	t.Helper()
	rc, err := f.SyscallConn()
	must(t, err)
	var flags uint16
	var ierr error
	must(t, rc.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			ierr = err
			return
		}
		ierr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr)
		flags = ifr.Uint16()
	}))
	must(t, ierr)
	return flags
}

// The TUN device is IFF_TUN|IFF_NO_PI, single-queue and not persistent (it
// lives exactly as long as its fd); the fd is close-on-exec and
// non-blocking unless asked otherwise; IFF_TUN_EXCL refuses a name that is
// taken, and the error names what holds it.
func TestCreateTUN(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)

	f, index, err := n.CreateTUN("vpn-tun", manager.TUNOptions{})
	must(t, err)
	defer f.Close()
	if got := tunFlags(t, f); got != unix.IFF_TUN|unix.IFF_NO_PI {
		t.Errorf("TUNGETIFF flags %#x, want IFF_TUN|IFF_NO_PI (%#x) and nothing else", got, unix.IFF_TUN|unix.IFF_NO_PI)
	}
	fl, fdfl := fdFlags(t, f)
	if fl&unix.O_NONBLOCK == 0 {
		t.Error("fd is blocking, want O_NONBLOCK")
	}
	if fl&unix.O_ACCMODE != unix.O_RDWR {
		t.Errorf("fd access mode %#x, want O_RDWR", fl&unix.O_ACCMODE)
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
	if info["info_kind"] != "tun" || data["type"] != "tun" || data["pi"] != false || data["vnet_hdr"] != false || data["multi_queue"] != false || data["persist"] != false {
		t.Errorf("linkinfo %v, want a non-persistent single-queue tun without pi", info)
	}

	// IFF_TUN_EXCL: a second device under a taken name is refused, with
	// the holder named.
	want := "a tun link (index " + strconv.Itoa(index) + ") has this name"
	if _, _, err := n.CreateTUN("vpn-tun", manager.TUNOptions{}); !errors.Is(err, manager.ErrLinkExists) || !strings.Contains(err.Error(), want) {
		t.Errorf("second CreateTUN: %v, want ErrLinkExists saying %q", err, want)
	}
	netnstest.IP(t, "link", "add", "foreign0", "type", "bridge")
	if _, _, err := n.CreateTUN("foreign0", manager.TUNOptions{}); !errors.Is(err, manager.ErrLinkExists) || !strings.Contains(err.Error(), "a bridge link (index ") {
		t.Errorf("CreateTUN over a bridge: %v, want ErrLinkExists naming a bridge link", err)
	}
	netnstest.IP(t, "tuntap", "add", "tap0", "mode", "tap")
	if _, _, err := n.CreateTUN("tap0", manager.TUNOptions{}); !errors.Is(err, manager.ErrLinkExists) || !strings.Contains(err.Error(), "a tap link (index ") {
		t.Errorf("CreateTUN over a tap: %v, want ErrLinkExists naming a tap link", err)
	}
	if _, _, err := n.CreateTUN("lo", manager.TUNOptions{}); !errors.Is(err, manager.ErrLinkExists) || !strings.Contains(err.Error(), "(index 1)") {
		t.Errorf("CreateTUN(lo): %v, want ErrLinkExists naming index 1", err)
	}
	for _, bad := range []string{"", "sixteen-bytes-xx", "a/b", "a b", "tun%d"} {
		if _, _, err := n.CreateTUN(bad, manager.TUNOptions{}); err == nil || errors.Is(err, manager.ErrLinkExists) {
			t.Errorf("CreateTUN(%q) = %v, want a name error", bad, err)
		}
	}

	fb, ib, err := n.CreateTUN("vpn-tun-b", manager.TUNOptions{Blocking: true})
	must(t, err)
	if fl, fdfl := fdFlags(t, fb); fl&unix.O_NONBLOCK != 0 || fdfl&unix.FD_CLOEXEC == 0 {
		t.Errorf("blocking fd: flags %#x, fd flags %#x; want no O_NONBLOCK, FD_CLOEXEC", fl, fdfl)
	}
	if ib == index {
		t.Errorf("two links with index %d", ib)
	}

	// Not persistent: the link lives exactly as long as the fd. A dup
	// keeps it alive.
	rc, err := f.SyscallConn()
	must(t, err)
	dup := -1
	must(t, rc.Control(func(fd uintptr) { dup, err = unix.Dup(int(fd)) }))
	must(t, err)
	f.Close()
	if !linkExists(t, "vpn-tun") {
		t.Error("vpn-tun is gone while a dup of its fd is open")
	}
	unix.Close(dup)
	fb.Close()
	for _, name := range []string{"vpn-tun", "vpn-tun-b"} {
		if linkExists(t, name) {
			t.Errorf("%s still exists after its fd was closed", name)
		}
	}
	if !linkExists(t, "foreign0") {
		t.Error("foreign0 is gone")
	}
	// The name is free again.
	f2, _, err := n.CreateTUN("vpn-tun", manager.TUNOptions{})
	must(t, err)
	f2.Close()
}

// With VnetHdr (the config's offload) the TUN is IFF_TUN|IFF_NO_PI|
// IFF_VNET_HDR and nothing else: the same kind of link, the kernel's
// default header size (10 bytes, TUNGETVNETHDRSZ), and the fd's mode as
// asked. Without it, TestCreateTUN sees exactly IFF_TUN|IFF_NO_PI.
func TestCreateTUNVnetHdr(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	const want = unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	for _, opt := range []manager.TUNOptions{{VnetHdr: true}, {VnetHdr: true, Blocking: true}} {
		f, index, err := n.CreateTUN("vpn-tun", opt)
		must(t, err)
		if got := tunFlags(t, f); got != want {
			t.Errorf("%+v: TUNGETIFF flags %#x, want IFF_TUN|IFF_NO_PI|IFF_VNET_HDR (%#x) and nothing else", opt, got, want)
		}
		rc, err := f.SyscallConn()
		must(t, err)
		var size int
		var ierr error
		must(t, rc.Control(func(fd uintptr) { size, ierr = unix.IoctlGetInt(int(fd), unix.TUNGETVNETHDRSZ) }))
		if ierr != nil || size != manager.VnetHdrLen {
			t.Errorf("%+v: TUNGETVNETHDRSZ = %d, %v; want the kernel's default %d", opt, size, ierr, manager.VnetHdrLen)
		}
		if fl, fdfl := fdFlags(t, f); (fl&unix.O_NONBLOCK == 0) != opt.Blocking || fdfl&unix.FD_CLOEXEC == 0 {
			t.Errorf("%+v: flags %#x, fd flags %#x", opt, fl, fdfl)
		}
		links := netnstest.IPJSON(t, "-d", "link", "show", "vpn-tun")
		if len(links) != 1 || int(links[0]["ifindex"].(float64)) != index {
			t.Fatalf("ip link show vpn-tun: %v, want index %d", links, index)
		}
		info, _ := links[0]["linkinfo"].(map[string]any)
		data, _ := info["info_data"].(map[string]any)
		if info["info_kind"] != "tun" || data["type"] != "tun" || data["pi"] != false || data["vnet_hdr"] != true ||
			data["multi_queue"] != false || data["persist"] != false {
			t.Errorf("%+v: linkinfo %v, want a non-persistent single-queue tun without pi, with vnet_hdr", opt, info)
		}
		f.Close()
		if linkExists(t, "vpn-tun") {
			t.Fatalf("vpn-tun still exists after its fd was closed")
		}
	}
}

// One Apply brings a whole VPN up in one sendmsg: the link's MTU, loose
// reverse path filtering, no IPv6 address generation (so no fe80::
// address), addresses without prefix routes in main and, for IPv6,
// without duplicate address detection, up; every kind of route and rule.
// `ip` sees exactly that, and Read gives it back as vpnd made it (nothing
// Foreign), rules in the kernel's order. One Apply of the teardown
// removes it all and detaches the client's fd; a second teardown finds
// everything gone, which is no error.
func TestApplyBringUpAndTeardown(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	f, index := makeTUN(t, n, "vpn-tun")
	o := fullVPN(index)
	sends := n.req.sends.Load()
	applyAll(t, n, o.upOps()...)
	if got := n.req.sends.Load() - sends; got != 1 {
		t.Errorf("the bring-up took %d sendmsg, want 1", got)
	}

	l := linkJSON(t, "vpn-tun")
	if l["mtu"].(float64) != 1400 || !slices.Contains(l["flags"].([]any), any("UP")) {
		t.Errorf("link: mtu %v flags %v, want 1400 and UP", l["mtu"], l["flags"])
	}
	if got := readFile(t, "/proc/sys/net/ipv4/conf/vpn-tun/rp_filter"); got != "2" {
		t.Errorf("rp_filter of vpn-tun is %s, want 2 (loose)", got)
	}
	if got := readFile(t, "/proc/sys/net/ipv6/conf/vpn-tun/addr_gen_mode"); got != "1" {
		t.Errorf("addr_gen_mode of vpn-tun is %s, want 1 (none)", got)
	}
	var addrs []addrInfo
	for _, a := range linkAddrs(t, "vpn-tun") {
		if a.Prefix.Addr().IsLinkLocalUnicast() {
			t.Errorf("vpn-tun has the link-local address %s", a.Prefix)
			continue
		}
		if !a.NoPrefixRoute {
			t.Errorf("address %s lacks noprefixroute", a.Prefix)
		}
		if a.Prefix.Addr().Is6() && (!a.NoDAD || a.Tentative) {
			t.Errorf("address %s: nodad %t, tentative %t", a.Prefix, a.NoDAD, a.Tentative)
		}
		addrs = append(addrs, a)
	}
	if got, want := strs(addrs), strs(o.link.Addrs); got != want {
		t.Errorf("vpn-tun has addresses\n%s\nwant\n%s", got, want)
	}
	// No prefix route, IPv4 or IPv6 (nor a link-local one), in main: there
	// it would serve every uid.
	for _, fam := range []string{"-4", "-6"} {
		for _, r := range netnstest.IPJSON(t, fam, "route", "show", "table", "main") {
			if r["dev"] == "vpn-tun" {
				t.Errorf("main table has a route through vpn-tun: %v", r)
			}
		}
	}
	kernelHolds(t, "after the bring-up", o.routes, o.rules)

	// Rules as a user reads them, for the shapes that matter.
	rule4 := netnstest.IP(t, "-4", "rule", "show")
	for _, want := range []string{
		"10000:\tfrom all fwmark 0/0x20000 uidrange 1000-1000 lookup 98",
		"10000:\tfrom all uidrange 0-999 lookup 98",
		"10001:\tfrom all fwmark 0/0x20000 uidrange 2000-2999 unreachable",
	} {
		if !strings.Contains(rule4, want) {
			t.Errorf("ip -4 rule lacks %q:\n%s", want, rule4)
		}
	}

	// Read gives back exactly what vpnd made: rules in the kernel's order
	// (IPv4, then IPv6; by priority; in order of addition within one).
	h := readAll(t, n)
	if len(h.Links) != 1 {
		t.Fatalf("Read links %+v, want vpn-tun", h.Links)
	}
	if got := h.Links[0]; got.Index != index || got.Name != "vpn-tun" || !got.TUN || got.MTU != 1400 || !got.Up {
		t.Errorf("Read link %+v, want vpn-tun #%d, a TUN, mtu 1400, up", got, index)
	}
	if got, want := addrStrs(h.Links[0].Addrs), strs(o.link.Addrs); got != want {
		t.Errorf("Read addresses\n%s\nwant\n%s", got, want)
	}
	if got, want := strs(h.Routes), strs(o.routes); got != want {
		t.Errorf("Read routes\n%s\nwant\n%s", got, want)
	}
	for _, r := range h.Routes {
		if !slices.Contains(o.routes, r) {
			t.Errorf("Read route %#v is not one vpnd made", r)
		}
	}
	wantRules := slices.Clone(o.rules)
	slices.SortStableFunc(wantRules, func(a, b manager.Rule) int {
		if a.Family != b.Family {
			return a.Family - b.Family
		}
		return a.Priority - b.Priority
	})
	if !slices.Equal(h.Rules, wantRules) {
		t.Errorf("Read rules\n%v\nwant\n%v", h.Rules, wantRules)
	}
	// Only what is asked for.
	for _, tc := range []struct {
		q                     manager.Query
		links, routes, nrules int
	}{
		{manager.Query{}, 0, 0, 0},
		{manager.Query{Places: places}, 0, 0, 0},
		{manager.Query{Places: places, What: manager.PartLinks}, 1, 0, 0},
		{manager.Query{Places: places, What: manager.PartRoutes}, 0, len(o.routes), 0},
		{manager.Query{Places: places, What: manager.PartRules}, 0, 0, len(o.rules)},
		{manager.Query{Places: manager.Places{Table: table + 1, Priorities: []int{prio - 1}}, What: manager.PartAll}, 0, 0, 0},
		{manager.Query{Links: []int{index, 9999}, What: manager.PartLinks}, 1, 0, 0},
		{manager.Query{Places: manager.Places{IfName: "gone"}, Links: []int{9999}, What: manager.PartLinks}, 0, 0, 0},
	} {
		h, err := n.Read(tc.q)
		if err != nil || len(h.Links) != tc.links || len(h.Routes) != tc.routes || len(h.Rules) != tc.nrules {
			t.Errorf("Read(%+v) = %d links, %d routes, %d rules, %v; want %d, %d, %d",
				tc.q, len(h.Links), len(h.Routes), len(h.Rules), err, tc.links, tc.routes, tc.nrules)
		}
	}

	applyAll(t, n, o.downOps()...)
	if linkExists(t, "vpn-tun") {
		t.Error("the link survived the teardown")
	}
	kernelHolds(t, "after the teardown", nil, nil)
	// The client's fd is detached from the deleted device.
	rc, err := f.SyscallConn()
	must(t, err)
	var rerr error
	must(t, rc.Control(func(fd uintptr) { _, rerr = unix.Read(int(fd), make([]byte, 100)) }))
	if !errors.Is(rerr, unix.EBADFD) {
		t.Errorf("read from the TUN fd after the teardown: %v, want EBADFD", rerr)
	}
	// Everything gone: deleting it again is no error.
	applyAll(t, n, o.downOps()...)
	if h := readAll(t, n, index); len(h.Links)+len(h.Routes)+len(h.Rules) != 0 {
		t.Errorf("Read after the teardown: %+v", h)
	}
}

// Each op of an Apply gets the kernel's own answer, with the kernel's
// words (extended acknowledgement) where it gives some; a failure stops
// nothing; a delete of something that is not there is no error.
func TestApplyErrors(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	_, index := makeTUN(t, n, "vpn-tun")
	ipCmd(t, "rule", "add", "priority", "10000", "uidrange", "0-999", "lookup", "98")
	link := func(i int) manager.Link { return manager.Link{Index: i} }
	route := func(r manager.Route) manager.Op { return manager.Op{Kind: manager.PutRoute, Table: table, Route: r} }
	rule := func(kind manager.OpKind, start, end uint32) manager.Op {
		return manager.Op{Kind: kind, Table: table, Rule: manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: start, UIDEnd: end}}
	}
	cases := []struct {
		op    manager.Op
		want  string
		words string // in the error, from the kernel
	}{
		{manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 67}}, "EINVAL", "mtu less than device minimum"},
		{manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 65536}}, "EINVAL", "mtu greater than device maximum"},
		{manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1400}}, "ok", ""},
		{manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: 9999, MTU: 1400}}, "ENODEV", ""},
		{route(manager.Route{Dst: pfx("10.8.0.0/24"), LinkIndex: index}), "ENETDOWN", "(Device for nexthop is not up)"},
		{manager.Op{Kind: manager.AddAddr, Link: link(index), Addr: pfx("10.8.0.2/24")}, "ok", ""},
		{manager.Op{Kind: manager.AddAddr, Link: link(index), Addr: pfx("10.8.0.2/24")}, "EEXIST", "Address already assigned"},
		{manager.Op{Kind: manager.AddAddr, Link: link(index), Addr: pfx("10.8.0.2/16")}, "ok", ""},
		{manager.Op{Kind: manager.AddAddr, Link: link(index), Addr: pfx("fd00:8::2/64")}, "ok", ""},
		{manager.Op{Kind: manager.AddAddr, Link: link(index), Addr: pfx("fd00:8::2/48")}, "EEXIST", ""},
		{manager.Op{Kind: manager.AddAddr, Link: link(9999), Addr: pfx("10.9.0.2/24")}, "ENODEV", ""},
		{manager.Op{Kind: manager.LinkUp, Link: link(9999)}, "ENODEV", ""},
		{manager.Op{Kind: manager.LinkUp, Link: link(index)}, "ok", ""},
		{route(manager.Route{Dst: pfx("10.8.0.0/24"), LinkIndex: index}), "ok", ""},
		{route(manager.Route{Dst: pfx("10.9.0.0/16"), Gateway: ip("10.8.0.2"), LinkIndex: index}), "EINVAL", "Nexthop has invalid gateway"},
		{route(manager.Route{Dst: pfx("2001:db8:9::/48"), Gateway: ip("fd00:8::2"), LinkIndex: index}), "EINVAL", "Gateway can not be a local address"},
		{route(manager.Route{Dst: pfx("10.10.0.0/16"), Gateway: ip("10.7.0.1"), LinkIndex: index}), "ok", ""},
		{route(manager.Route{Dst: pfx("2001:db8:10::/48"), Gateway: ip("fd00:7::1"), LinkIndex: index}), "ok", ""},
		{route(manager.Route{Dst: pfx("10.11.0.0/16"), LinkIndex: 9999}), "ENODEV", ""},
		{rule(manager.AddRule, 0, 999), "EEXIST", ""},
		{rule(manager.AddRule, 7, 6), "EINVAL", "Invalid uid range"},
		{rule(manager.AddRule, 1000, 1000), "ok", ""},
		{rule(manager.DelRule, 5, 5), "ok", ""},
		{manager.Op{Kind: manager.DelRoute, Table: table, Route: manager.Route{Dst: pfx("10.12.0.0/16")}}, "ok", ""},
		{manager.Op{Kind: manager.DelRoute, Table: table, Route: manager.Route{Dst: pfx("2001:db8:12::/48")}}, "ok", ""},
		{manager.Op{Kind: manager.DelAddr, Link: link(index), Addr: pfx("10.12.0.2/24")}, "ok", ""},
		{manager.Op{Kind: manager.DelAddr, Link: link(9999), Addr: pfx("10.12.0.2/24")}, "ok", ""},
		{manager.Op{Kind: manager.DelLink, Link: link(9999)}, "ok", ""},
	}
	ops := make([]manager.Op, len(cases))
	for i, tc := range cases {
		ops[i] = tc.op
	}
	for i, e := range applyResults(t, n, ops...) {
		tc := cases[i]
		if got := outcome(e); got != tc.want || (e != nil && !strings.Contains(e.Error(), tc.words)) {
			t.Errorf("%s: %v, want %s with the kernel's words %q", tc.op, e, tc.want, tc.words)
		}
		if e != nil {
			t.Logf("%s: %v", tc.op, e)
		}
	}
	// What took is there; nothing else is.
	h := readAll(t, n, index)
	if len(h.Links) != 1 || h.Links[0].MTU != 1400 || !h.Links[0].Up ||
		addrStrs(h.Links[0].Addrs) != "10.8.0.2/16\n10.8.0.2/24\nfd00:8::2/64" {
		t.Errorf("link %+v", h.Links)
	}
	wantRoutes := fmt.Sprintf("10.10.0.0/16 via 10.7.0.1 dev #%[1]d\n10.8.0.0/24 dev #%[1]d\n2001:db8:10::/48 via fd00:7::1 dev #%[1]d", index)
	if got := strs(h.Routes); got != wantRoutes {
		t.Errorf("routes\n%s\nwant\n%s", got, wantRoutes)
	}
	if got := strs(h.Rules); got != "ipv4 10000: uidrange 0-999 lookup 98\nipv4 10000: uidrange 1000-1000 lookup 98" {
		t.Errorf("rules\n%s", got)
	}
}

// upVPNLink creates vpn-tun and applies mtu 1400, 10.8.0.2/24,
// fd00:8::2/64, up and the on-link route 10.8.0.0/24 in vpnd's table.
func upVPNLink(t *testing.T, n *Netlink) int {
	t.Helper()
	_, index := makeTUN(t, n, "vpn-tun")
	o := vpnObjects{
		link:   manager.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{pfx("10.8.0.2/24"), pfx("fd00:8::2/64")}},
		routes: []manager.Route{{Dst: pfx("10.8.0.0/24"), LinkIndex: index}},
	}
	applyAll(t, n, o.upOps()...)
	return index
}

// Read reports routes as the kernel holds them: one vpnd could have made
// reads as vpnd's, whoever made it; one with another protocol, scope or
// flags, a source or several next hops is Foreign; a type vpnd never
// makes is OtherKind; metric and TOS are part of the route, IPv6's default
// metric reads as 0. `ip` reads the same (tuntest.KernelRoutes, which
// judges by itself).
func TestReadForeignRoutes(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	index := upVPNLink(t, n)
	for _, args := range [][]string{
		{"route", "add", "10.1.0.0/16", "dev", "vpn-tun", "table", "98", "proto", "static"},
		{"route", "add", "10.2.0.0/16", "dev", "vpn-tun", "table", "98"}, // `ip`'s protocol is boot
		{"route", "add", "10.3.0.0/16", "dev", "vpn-tun", "table", "98", "proto", "static", "scope", "global"},
		{"route", "add", "10.4.0.0/16", "via", "10.8.0.1", "dev", "vpn-tun", "table", "98", "proto", "static", "onlink"},
		{"route", "add", "10.5.0.0/16", "via", "10.8.0.1", "dev", "vpn-tun", "table", "98", "proto", "static"}, // not onlink
		{"route", "add", "10.6.0.0/16", "dev", "vpn-tun", "table", "98", "proto", "static", "src", "10.8.0.2"},
		{"route", "add", "10.7.0.0/16", "table", "98", "proto", "static",
			"nexthop", "via", "10.8.0.1", "dev", "vpn-tun", "onlink", "nexthop", "via", "10.8.0.3", "dev", "vpn-tun", "onlink"},
		{"route", "add", "blackhole", "10.9.0.0/16", "table", "98", "proto", "static"},
		{"route", "add", "throw", "10.10.0.0/16", "table", "98", "proto", "static"},
		{"route", "add", "throw", "10.11.0.0/16", "table", "98", "proto", "static", "metric", "7"},
		{"route", "add", "throw", "10.12.0.0/16", "table", "98", "proto", "static", "tos", "0x10"},
		{"route", "add", "unreachable", "10.13.0.0/16", "table", "98", "proto", "static", "scope", "link"},
		{"route", "add", "throw", "10.14.0.0/16", "table", "98", "proto", "kernel"},
		{"-6", "route", "add", "throw", "2001:db8:1::/48", "table", "98"},
		{"-6", "route", "add", "2001:db8:2::/48", "dev", "vpn-tun", "table", "98", "proto", "static"},
		{"-6", "route", "add", "2001:db8:3::/48", "dev", "vpn-tun", "table", "98", "proto", "static", "metric", "100"},
		{"-6", "route", "add", "2001:db8:4::/48", "via", "fd00:8::1", "dev", "vpn-tun", "table", "98", "proto", "static", "onlink"},
		{"-6", "route", "add", "prohibit", "2001:db8:5::/48", "table", "98", "proto", "static"},
		{"-6", "route", "add", "2001:db8:6::/48", "dev", "vpn-tun", "table", "98", "proto", "static", "metric", "1024"},
		{"-6", "route", "add", "unreachable", "2001:db8:7::/48", "table", "98", "proto", "static"},
		{"route", "add", "throw", "10.99.0.0/16", "table", "99", "proto", "static"},
	} {
		ipCmd(t, args...)
	}
	want := strings.Join([]string{
		"10.1.0.0/16 dev #%[1]d",
		"10.2.0.0/16 dev #%[1]d (changed by someone else)",
		"10.3.0.0/16 dev #%[1]d (changed by someone else)",
		"10.4.0.0/16 via 10.8.0.1 dev #%[1]d",
		"10.5.0.0/16 via 10.8.0.1 dev #%[1]d (changed by someone else)",
		"10.6.0.0/16 dev #%[1]d (changed by someone else)",
		"10.7.0.0/16 (changed by someone else)",
		"10.8.0.0/24 dev #%[1]d",
		"2001:db8:2::/48 dev #%[1]d",
		"2001:db8:3::/48 dev #%[1]d metric 100",
		"2001:db8:4::/48 via fd00:8::1 dev #%[1]d",
		"2001:db8:6::/48 dev #%[1]d",
		"other 10.9.0.0/16 (changed by someone else)",
		"other 2001:db8:5::/48 (changed by someone else)",
		"throw 10.10.0.0/16",
		"throw 10.11.0.0/16 metric 7",
		"throw 10.12.0.0/16 tos 0x10",
		"throw 10.14.0.0/16 (changed by someone else)",
		"throw 2001:db8:1::/48 (changed by someone else)",
		"unreachable 10.13.0.0/16 (changed by someone else)",
		"unreachable 2001:db8:7::/48",
	}, "\n")
	want = fmt.Sprintf(want, index)
	h, err := n.Read(manager.Query{Places: places, What: manager.PartRoutes})
	must(t, err)
	if got := strs(h.Routes); got != want {
		t.Errorf("Read routes\n%s\nwant\n%s", got, want)
	}
	if got := strs(kernelRoutes(t, table)); got != want {
		t.Errorf("ip reads\n%s\nwant\n%s", got, want)
	}
}

// Read reports addresses as the kernel holds them: one without vpnd's
// flags (no prefix route; for IPv6 no duplicate address detection) is
// Foreign, since it may have put a prefix route into main.
func TestReadForeignAddresses(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	index := upVPNLink(t, n)
	for _, args := range [][]string{
		{"addr", "add", "10.66.0.1/24", "dev", "vpn-tun"},
		{"addr", "add", "10.67.0.1/24", "dev", "vpn-tun", "noprefixroute"},
		{"-6", "addr", "add", "fd00:66::1/64", "dev", "vpn-tun", "noprefixroute"},
		{"-6", "addr", "add", "fd00:67::1/64", "dev", "vpn-tun", "noprefixroute", "nodad"},
		{"-6", "addr", "add", "fd00:68::1/64", "dev", "vpn-tun", "nodad"},
	} {
		ipCmd(t, args...)
	}
	h, err := n.Read(manager.Query{Links: []int{index}, What: manager.PartLinks})
	must(t, err)
	want := "10.66.0.1/24 (foreign)\n10.67.0.1/24\n10.8.0.2/24\nfd00:66::1/64 (foreign)\nfd00:67::1/64\nfd00:68::1/64 (foreign)\nfd00:8::2/64"
	if len(h.Links) != 1 || addrStrs(h.Links[0].Addrs) != want {
		t.Errorf("Read addresses %+v\nwant\n%s", h.Links, want)
	}
}

// Read reports links as the kernel holds them: by index and by vpnd's
// name, whatever their kind (only a TUN is TUN: a TAP or a bridge under
// vpnd's name is not), with MTU and up state.
func TestReadLinks(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	_, index := makeTUN(t, n, "tun-a")
	ipCmd(t, "link", "set", "tun-a", "mtu", "1300", "up")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, ""},
		{[]string{"tuntap", "add", "vpn-tun", "mode", "tun"}, "vpn-tun TUN true mtu 1500 up false"},
		{[]string{"tuntap", "add", "vpn-tun", "mode", "tap"}, "vpn-tun TUN false mtu 1500 up false"},
		{[]string{"link", "add", "vpn-tun", "type", "bridge"}, "vpn-tun TUN false mtu 1500 up false"},
	} {
		if tc.args != nil {
			ipCmd(t, tc.args...)
		}
		h, err := n.Read(manager.Query{Places: places, Links: []int{index, 9999}, What: manager.PartLinks})
		must(t, err)
		var got []string
		for _, l := range h.Links {
			got = append(got, fmt.Sprintf("%s TUN %t mtu %d up %t", l.Name, l.TUN, l.MTU, l.Up))
			if l.Name == "tun-a" && l.Index != index {
				t.Errorf("tun-a read with index %d, want %d", l.Index, index)
			}
		}
		want := []string{"tun-a TUN true mtu 1300 up true"}
		if tc.want != "" {
			want = append(want, tc.want)
		}
		if !slices.Equal(got, want) {
			t.Errorf("after ip %v: links %q, want %q", tc.args, got, want)
		}
		if tc.args != nil {
			ipCmd(t, "link", "del", "vpn-tun")
		}
	}
}

// PutRoute replaces the route with its identity (destination, TOS,
// metric) whatever it is now: another protocol, scope, type, gateway or
// link. Routes of another metric or TOS to the same destination are
// other routes and stay.
func TestPutRouteReplaces(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	index := upVPNLink(t, n)
	_, other := makeTUN(t, n, "other")
	applyAll(t, n, manager.Op{Kind: manager.LinkUp, Link: manager.Link{Index: other}})
	ipCmd(t, "route", "add", "throw", "10.1.0.0/16", "table", "98", "proto", "static", "metric", "100")
	ipCmd(t, "route", "add", "throw", "10.1.0.0/16", "table", "98", "proto", "static", "tos", "0x10")
	ipCmd(t, "-6", "route", "add", "throw", "2001:db8:1::/48", "table", "98", "proto", "static", "metric", "100")
	keep := "throw 10.1.0.0/16 metric 100\nthrow 10.1.0.0/16 tos 0x10\nthrow 2001:db8:1::/48 metric 100"
	wanted := []manager.Route{
		{Dst: pfx("10.1.0.0/16"), LinkIndex: index},
		{Dst: pfx("10.2.0.0/16"), Gateway: ip("10.8.0.1"), LinkIndex: index},
		{Dst: pfx("10.3.0.0/16"), Kind: manager.Throw},
		{Dst: pfx("10.4.0.0/16"), Kind: manager.Unreachable},
		{Dst: pfx("2001:db8:1::/48"), LinkIndex: index},
		{Dst: pfx("2001:db8:2::/48"), Kind: manager.Throw},
		{Dst: pfx("2001:db8:3::/48"), Gateway: ip("fd00:8::1"), LinkIndex: index},
	}
	for _, tc := range [][]string{
		{"route", "replace", "10.1.0.0/16", "dev", "vpn-tun", "table", "98", "proto", "boot"},
		{"route", "replace", "10.1.0.0/16", "dev", "vpn-tun", "table", "98", "proto", "static", "scope", "global"},
		{"route", "replace", "blackhole", "10.1.0.0/16", "table", "98", "proto", "static"},
		{"route", "replace", "10.1.0.0/16", "dev", "other", "table", "98", "proto", "static"},
		{"route", "replace", "10.2.0.0/16", "via", "10.8.0.9", "dev", "vpn-tun", "table", "98", "proto", "static", "onlink"},
		{"route", "replace", "10.2.0.0/16", "via", "10.8.0.1", "dev", "vpn-tun", "table", "98", "proto", "boot", "onlink"},
		{"route", "replace", "throw", "10.3.0.0/16", "table", "98", "proto", "boot"},
		{"route", "replace", "unreachable", "10.3.0.0/16", "table", "98", "proto", "static"},
		{"route", "replace", "throw", "10.4.0.0/16", "table", "98", "proto", "static"},
		{"route", "replace", "unreachable", "10.4.0.0/16", "table", "98", "proto", "static", "scope", "link"},
		{"-6", "route", "replace", "throw", "2001:db8:1::/48", "table", "98", "proto", "boot"},
		{"-6", "route", "replace", "2001:db8:1::/48", "dev", "other", "table", "98", "proto", "static"},
		{"-6", "route", "replace", "unreachable", "2001:db8:2::/48", "table", "98", "proto", "static"},
		{"-6", "route", "replace", "prohibit", "2001:db8:2::/48", "table", "98", "proto", "static"},
		{"-6", "route", "replace", "2001:db8:3::/48", "via", "fd00:8::9", "dev", "vpn-tun", "table", "98", "proto", "static", "onlink"},
		{"-6", "route", "replace", "2001:db8:3::/48", "dev", "vpn-tun", "table", "98", "proto", "kernel"},
	} {
		ipCmd(t, tc...)
		var ops []manager.Op
		for _, r := range wanted {
			ops = append(ops, manager.Op{Kind: manager.PutRoute, Table: table, Route: r})
		}
		applyAll(t, n, ops...)
		want := strs(append(slices.Clone(wanted), manager.Route{Dst: pfx("10.8.0.0/24"), LinkIndex: index})) + "\n" + keep
		h, err := n.Read(manager.Query{Places: places, What: manager.PartRoutes})
		must(t, err)
		if got := strs(h.Routes); got != strings.Join(sortedLines(want), "\n") {
			t.Errorf("after ip %s and vpnd's puts:\n%s\nwant\n%s", strings.Join(tc, " "), got, strings.Join(sortedLines(want), "\n"))
		}
	}
}

func sortedLines(s string) []string {
	lines := strings.Split(s, "\n")
	slices.Sort(lines)
	return lines
}

// DelRoute deletes the route with its identity in vpnd's table, whatever
// its type, protocol, scope or link, in both families, at the default
// metric and at others; routes of another metric or TOS, or in another
// table, stay. An IPv4 delete at metric 0 is the kernel's wildcard for the
// metric: with no metric-0 route left it deletes the one of the lowest
// metric to the destination.
func TestDelRouteIdentity(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	index := upVPNLink(t, n)
	for _, args := range [][]string{
		{"route", "add", "throw", "10.1.0.0/16", "table", "98", "proto", "boot"},
		{"route", "add", "blackhole", "10.1.0.0/16", "table", "98", "proto", "static", "metric", "100"},
		{"route", "add", "10.1.0.0/16", "dev", "vpn-tun", "table", "98", "proto", "kernel", "tos", "0x10"},
		{"route", "add", "throw", "10.1.0.0/16", "table", "99", "proto", "static"},
		{"route", "add", "10.2.0.0/16", "via", "10.8.0.1", "dev", "vpn-tun", "table", "98", "proto", "boot", "onlink", "scope", "global"},
		{"route", "add", "unreachable", "10.3.0.0/16", "table", "98", "proto", "static", "scope", "link"},
		{"-6", "route", "add", "throw", "2001:db8:1::/48", "table", "98", "proto", "boot"},
		{"-6", "route", "add", "prohibit", "2001:db8:1::/48", "table", "98", "proto", "static", "metric", "100"},
		{"-6", "route", "add", "2001:db8:2::/48", "dev", "vpn-tun", "table", "98", "proto", "boot", "metric", "1024"},
		{"-6", "route", "add", "unreachable", "2001:db8:3::/48", "table", "98", "proto", "static", "metric", "5"},
		{"-6", "route", "add", "throw", "2001:db8:4::/48", "table", "98", "proto", "static", "metric", "5"},
	} {
		ipCmd(t, args...)
	}
	routes := func() string {
		h, err := n.Read(manager.Query{Places: places, What: manager.PartRoutes})
		must(t, err)
		var out []manager.Route
		for _, r := range h.Routes {
			if r.Dst != pfx("10.8.0.0/24") {
				out = append(out, r)
			}
		}
		return strs(out)
	}
	del := func(dst string, metric uint32, tos uint8) manager.Op {
		return manager.Op{Kind: manager.DelRoute, Table: table, Route: manager.Route{Dst: pfx(dst), Metric: metric, Tos: tos}}
	}
	for _, tc := range []struct {
		ops  []manager.Op
		gone string
	}{
		{[]manager.Op{del("10.1.0.0/16", 0, 0)}, "throw 10.1.0.0/16 (changed by someone else)"},
		{[]manager.Op{del("10.1.0.0/16", 0, 0x10)}, fmt.Sprintf("10.1.0.0/16 dev #%d tos 0x10 (changed by someone else)", index)},
		{[]manager.Op{del("10.2.0.0/16", 0, 0), del("10.3.0.0/16", 0, 0)},
			fmt.Sprintf("10.2.0.0/16 via 10.8.0.1 dev #%d (changed by someone else)\nunreachable 10.3.0.0/16 (changed by someone else)", index)},
		{[]manager.Op{del("2001:db8:1::/48", 0, 0)}, "throw 2001:db8:1::/48 (changed by someone else)"},
		{[]manager.Op{del("2001:db8:2::/48", 0, 0), del("2001:db8:3::/48", 5, 0)},
			fmt.Sprintf("2001:db8:2::/48 dev #%d (changed by someone else)\nunreachable 2001:db8:3::/48 metric 5", index)},
		// Gone already: no error, and nothing else goes, IPv6 and IPv4 at
		// a metric but 0.
		{[]manager.Op{del("2001:db8:1::/48", 0, 0), del("2001:db8:4::/48", 0, 0), del("10.1.0.0/16", 5, 0)}, ""},
		{[]manager.Op{del("2001:db8:1::/48", 100, 0)}, "other 2001:db8:1::/48 metric 100 (changed by someone else)"},
		// The kernel's wildcard: 10.1.0.0/16 at metric 0 is gone, the
		// delete takes the one at metric 100.
		{[]manager.Op{del("10.1.0.0/16", 0, 0)}, "other 10.1.0.0/16 metric 100 (changed by someone else)"},
	} {
		before := routes()
		applyAll(t, n, tc.ops...)
		after := routes()
		var gone []string
		for _, r := range strings.Split(before, "\n") {
			if !slices.Contains(strings.Split(after, "\n"), r) {
				gone = append(gone, r)
			}
		}
		if got := strings.Join(gone, "\n"); got != tc.gone {
			t.Errorf("%v deleted\n%s\nwant\n%s", tc.ops, got, tc.gone)
		}
	}
	if got := strs(kernelRoutes(t, 99)); got != "throw 10.1.0.0/16" {
		t.Errorf("table 99 holds %s", got)
	}
}

// ruleStr renders a rule read from the kernel, with its mark.
func ruleStr(r manager.Rule) string {
	s := r.String()
	if r.Mark != 0 {
		s += fmt.Sprintf(" (mark %#x)", r.Mark)
	}
	return s
}

// Read reports rules as the kernel holds them, in its order: a rule of
// the shapes vpnd makes reads as vpnd's whoever made it; one with
// anything vpnd never sets (a source, an interface, an inverted match,
// ports, no uid range) carries the kernel's own encoding in Selectors,
// with the action it has (OtherAction for blackhole, goto...).
//
// The kernel's rule lookups treat what a request leaves out as a
// wildcard, and some selectors not at all: an add is EEXIST if a rule
// matches it but for a source, destination or TOS the add does not give,
// or an inverted match; a delete hits the first rule, in the kernel's
// order, that has everything the delete gives. So a DelRule of a rule
// read with Selectors deletes exactly that rule where no rule before it
// has all its selectors; vpnd's shape of a rule (no mark) hits a masked
// one before it; a rule without a uid range hits the first rule of its
// table at its priority.
func TestRulesAsTheKernelHoldsThem(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	for _, args := range [][]string{
		{"rule", "add", "priority", "10000", "from", "10.0.0.0/8", "uidrange", "5-5", "lookup", "98"},
		{"rule", "add", "priority", "10000", "from", "10.1.0.0/16", "uidrange", "5-5", "lookup", "98"},
		{"rule", "add", "priority", "10000", "iif", "lo", "uidrange", "6-6", "lookup", "98"},
		{"rule", "add", "priority", "10000", "not", "uidrange", "7-7", "lookup", "98"},
		{"rule", "add", "priority", "10000", "uidrange", "8-8", "ipproto", "udp", "dport", "53", "lookup", "98"},
		{"rule", "add", "priority", "10000", "uidrange", "9-9", "fwmark", "0x1", "lookup", "97"},
		{"rule", "add", "priority", "10000", "uidrange", "10-10", "goto", "32766"},
		{"rule", "add", "priority", "10000", "lookup", "98"},
		{"rule", "add", "priority", "10000", "uidrange", "11-11", "lookup", "98", "protocol", "boot"},
		{"rule", "add", "priority", "10000", "fwmark", "0/0x20000", "uidrange", "12-12", "lookup", "98"},
		{"rule", "add", "priority", "10000", "uidrange", "12-12", "lookup", "98"},
		{"-6", "rule", "add", "priority", "10001", "uidrange", "8-8", "blackhole"},
		{"-6", "rule", "add", "priority", "10001", "uidrange", "9-9", "fwmark", "0/0x20000", "unreachable"},
		{"-6", "rule", "add", "priority", "10001", "uidrange", "9-9", "fwmark", "0/0x20000", "prohibit"},
		{"rule", "add", "priority", "9999", "uidrange", "5-5", "lookup", "98"},
	} {
		ipCmd(t, args...)
	}
	read := func() []manager.Rule {
		t.Helper()
		h, err := n.Read(manager.Query{Places: places, What: manager.PartRules})
		must(t, err)
		return h.Rules
	}
	rules := read()
	var got []string
	for _, r := range rules {
		got = append(got, ruleStr(r))
	}
	want := []string{
		"ipv4 10000: uidrange 5-5 (and other selectors) lookup 98",
		"ipv4 10000: uidrange 5-5 (and other selectors) lookup 98",
		"ipv4 10000: uidrange 6-6 (and other selectors) lookup 98",
		"ipv4 10000: uidrange 7-7 (and other selectors) lookup 98",
		"ipv4 10000: uidrange 8-8 (and other selectors) lookup 98",
		"ipv4 10000: uidrange 9-9 fwmark 0x1/0xffffffff lookup 97 (mark 0x1)",
		"ipv4 10000: uidrange 10-10 (and other selectors) (another action)",
		"ipv4 10000: uidrange 0-0 (and other selectors) lookup 98",
		"ipv4 10000: uidrange 11-11 lookup 98",
		"ipv4 10000: uidrange 12-12 fwmark 0x0/0x20000 lookup 98",
		"ipv4 10000: uidrange 12-12 lookup 98",
		"ipv6 10001: uidrange 8-8 (and other selectors) (another action)",
		"ipv6 10001: uidrange 9-9 fwmark 0x0/0x20000 unreachable",
		"ipv6 10001: uidrange 9-9 fwmark 0x0/0x20000 (and other selectors) (another action)",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Read rules\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// `ip`'s independent view agrees on which carry selectors.
	for i, k := range kernelRules(t, prio, lock) {
		if (k.Selectors != "") != (rules[i].Selectors != "") || k.Action != rules[i].Action {
			t.Errorf("rule %d: ip reads %+v, vpnd %+v", i, k, rules[i])
		}
	}

	// Adds: a source the add does not give, and an inverted match, do
	// not count; an interface and the protocol do (so a rule of vpnd's
	// shape made with another protocol is not in the way of vpnd's own,
	// and reads the same).
	rule := func(uid uint32) manager.Rule {
		return manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: uid, UIDEnd: uid}
	}
	add := func(r manager.Rule) manager.Op { return manager.Op{Kind: manager.AddRule, Table: table, Rule: r} }
	del := func(r manager.Rule) manager.Op { return manager.Op{Kind: manager.DelRule, Table: table, Rule: r} }
	var outcomes []string
	for _, e := range applyResults(t, n, add(rule(5)), add(rule(7)), add(rule(11)), add(rule(6)), del(rule(6)), del(rule(11))) {
		outcomes = append(outcomes, outcome(e))
	}
	if want := []string{"EEXIST", "EEXIST", "ok", "ok", "ok", "ok"}; !slices.Equal(outcomes, want) {
		t.Errorf("adds of uidrange 5-5, 7-7, 11-11, 6-6 and the deletes of 6-6 and 11-11: %v, want %v", outcomes, want)
	}
	// The deletes of vpnd's 6-6 and 11-11 hit the rules before them that
	// have all they give: someone's iif rule, and the one made with
	// another protocol. vpnd's own stay, last at their priority.
	after := slices.Clone(rules[:11])
	after = slices.Delete(after, 8, 9)
	after = slices.Delete(after, 2, 3)
	after = append(after, rule(11), rule(6))
	after = append(after, rules[11:]...)
	if got := read(); !slices.Equal(got, after) {
		t.Fatalf("rules\n%v\nwant\n%v", got, after)
	}
	rules = after

	// Deletes of rules read with Selectors: exactly that rule, though a
	// delete without its selectors would hit another one first.
	for _, pick := range []func(r manager.Rule) bool{
		func(r manager.Rule) bool {
			return r.Selectors != "" && r.UIDStart == 5 && r.Family == v4 && r != rules[0]
		},
		func(r manager.Rule) bool { return r.Selectors != "" && r.UIDStart == 7 },
		func(r manager.Rule) bool { return r.Selectors != "" && r.UIDStart == 8 && r.Family == v4 },
		func(r manager.Rule) bool { return r.Action == manager.OtherAction && r.Family == v4 },
		func(r manager.Rule) bool { return r.Action == manager.OtherAction && r.Family == v6 && r.UIDStart == 9 },
		func(r manager.Rule) bool { return r.Action == manager.OtherAction && r.Family == v6 },
	} {
		before := read()
		j := slices.IndexFunc(before, pick)
		if j < 0 {
			t.Fatalf("no such rule in %v", before)
		}
		victim := before[j]
		applyAll(t, n, del(victim))
		if got, want := read(), slices.Delete(slices.Clone(before), j, j+1); !slices.Equal(got, want) {
			t.Errorf("delete of %s (rule %d) left\n%v\nwant\n%v", victim, j, got, want)
		}
	}
	// Left: from 10.0.0.0/8 uidrange 5-5, the mark rule, no uid range,
	// the masked and the plain uidrange 12-12, 11-11, 6-6, and IPv6's
	// unreachable one. vpnd's shape of uidrange 12-12 hits the masked one.
	left := read()
	if len(left) != 8 || left[4] != rule(12) {
		t.Fatalf("rules left: %v", left)
	}
	applyAll(t, n, del(rule(12)))
	if got := read(); !slices.Equal(got, slices.Delete(slices.Clone(left), 3, 4)) {
		t.Errorf("delete of %s: left\n%v\nwant the masked rule before it gone", rule(12), got)
	}
	// A rule without a uid range: its delete hits the first rule at its
	// priority that looks up its table, whatever that one's uids.
	left = read()
	if left[2].UIDStart != 0 || left[2].Selectors == "" {
		t.Fatalf("rule 2 is %v, want the one without a uid range", left[2])
	}
	applyAll(t, n, del(left[2]))
	if got := read(); !slices.Equal(got, slices.Delete(slices.Clone(left), 0, 1)) {
		t.Errorf("delete of the rule without a uid range: left\n%v\nwant %s gone instead", got, left[0])
	}
	if got := kernelRules(t, 9999); len(got) != 1 {
		t.Errorf("rules at 9999: %v", got)
	}
}

// An MTU below IPv6's minimum takes IPv6 off the link with its addresses
// and the routes through it, and refuses IPv6 addresses until it is
// raised. Raising it brings IPv6 back with the kernel's defaults: on a
// link that is up, the kernel generates a link-local address at once,
// with a prefix route in main, before the SetLink's own IPv6 setting
// takes address generation off again. Read reports that address Foreign
// and Sync reports the link, so the reconciler deletes it, and with it
// goes the route in main.
func TestSetLinkAcrossIPv6Minimum(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	_, index := makeTUN(t, n, "vpn-tun")
	if _, err := n.Watch(t.Context(), places); err != nil {
		t.Fatal(err)
	}
	o := fullVPN(index)
	o.rules = nil
	applyAll(t, n, o.upOps()...)
	setMTU := func(mtu int) {
		t.Helper()
		applyAll(t, n, manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: mtu}})
	}
	setMTU(1200)
	h := readAll(t, n)
	if got := addrStrs(h.Links[0].Addrs); got != "10.8.0.2/24\n10.8.1.2/32" {
		t.Errorf("addresses at MTU 1200:\n%s\nwant the IPv4 ones", got)
	}
	for _, r := range h.Routes {
		if r.Dst.Addr().Is6() && r.Kind == manager.Unicast {
			t.Errorf("route %s is still there at MTU 1200", r)
		}
	}
	addr6 := manager.Op{Kind: manager.AddAddr, Link: manager.Link{Index: index}, Addr: pfx("fd00:8::2/64")}
	if got := outcome(applyResults(t, n, addr6)[0]); got == "ok" {
		t.Errorf("an IPv6 address at MTU 1200: %s", got)
	}
	tuntest.WaitIPv6(t, "vpn-tun")
	n.Sync()

	setMTU(1400)
	if got := readFile(t, "/proc/sys/net/ipv6/conf/vpn-tun/addr_gen_mode"); got != "1" {
		t.Errorf("addr_gen_mode of vpn-tun is %s after the MTU came back, want 1 (none)", got)
	}
	if p := n.Sync(); p&manager.PartLinks == 0 {
		t.Errorf("Sync after the MTU came back: %s, want the link", p)
	}
	h = readAll(t, n)
	var generated []manager.Op
	for _, a := range h.Links[0].Addrs {
		if a.Prefix.Addr().Is4() {
			continue
		}
		if !a.Prefix.Addr().IsLinkLocalUnicast() || !a.Foreign {
			t.Errorf("IPv6 address %+v after the MTU came back, want only the kernel's link-local one", a)
		}
		generated = append(generated, manager.Op{Kind: manager.DelAddr, Link: manager.Link{Index: index}, Addr: a.Prefix})
	}
	if len(generated) != 1 || !strings.Contains(netnstest.IP(t, "-6", "route", "show", "table", "main"), "fe80::/64 dev vpn-tun") {
		t.Errorf("addresses %+v and main %s: want one link-local address and its route", h.Links[0].Addrs, netnstest.IP(t, "-6", "route", "show", "table", "main"))
	}
	var ops []manager.Op
	for _, a := range o.link.Addrs {
		if a.Addr().Is6() {
			ops = append(ops, manager.Op{Kind: manager.AddAddr, Link: manager.Link{Index: index}, Addr: a})
		}
	}
	for _, r := range o.routes {
		ops = append(ops, manager.Op{Kind: manager.PutRoute, Table: table, Route: r})
	}
	applyAll(t, n, append(generated, ops...)...)
	tuntest.WaitIPv6(t, "vpn-tun")
	h = readAll(t, n)
	if got, want := addrStrs(h.Links[0].Addrs), strs(o.link.Addrs); got != want {
		t.Errorf("addresses after the MTU came back:\n%s\nwant\n%s", got, want)
	}
	if got, want := strs(h.Routes), strs(o.routes); got != want {
		t.Errorf("routes after the MTU came back:\n%s\nwant\n%s", got, want)
	}
	for _, r := range netnstest.IPJSON(t, "-6", "route", "show", "table", "main") {
		if r["dev"] == "vpn-tun" {
			t.Errorf("main table has a route through vpn-tun: %v", r)
		}
	}
}

// HostPrefixes lists every other link's addresses and on-link prefixes in
// main; not gateway routes, and not the excepted link's. HostReader,
// which `vpnd --sim` uses, answers the same.
func TestHostPrefixes(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.LoUp(t)
	n := openNetlink(t, nil)
	_, index := makeTUN(t, n, "vpn-tun")
	o := fullVPN(index)
	applyAll(t, n, o.upOps()...)
	for _, args := range [][]string{
		{"link", "add", "veth0", "type", "veth", "peer", "name", "veth1"},
		{"link", "set", "veth0", "up"},
		{"addr", "add", "192.0.2.1/24", "dev", "veth0"},
		{"addr", "add", "fd10::1/64", "dev", "veth0", "nodad"},
		{"route", "add", "198.18.0.0/15", "dev", "veth0"},
		{"route", "add", "203.0.113.0/24", "via", "192.0.2.254"},
		{"route", "add", "198.51.100.0/24", "dev", "veth0", "table", "97"},
	} {
		ipCmd(t, args...)
	}
	render := func(ps []manager.HostPrefix) string {
		var out []string
		for _, p := range ps {
			if p.Prefix.Addr().IsLinkLocalUnicast() || p.Prefix.Addr().Is6() && p.Prefix.Masked() == pfx("fe80::/64") {
				continue // the kernel's own link-local addresses and routes
			}
			out = append(out, p.Prefix.String()+" "+p.Ifname)
		}
		slices.Sort(out)
		return strings.Join(out, "\n")
	}
	want := strings.Join([]string{
		"127.0.0.1/8 lo",
		"192.0.2.0/24 veth0",
		"192.0.2.1/24 veth0",
		"198.18.0.0/15 veth0",
		"::1/128 lo",
		"fd10::/64 veth0",
		"fd10::1/64 veth0",
	}, "\n")
	r, err := NewHostReader()
	must(t, err)
	defer r.Close()
	for name, hp := range map[string]func(string) ([]manager.HostPrefix, error){"Netlink": n.HostPrefixes, "HostReader": r.HostPrefixes} {
		got, err := hp("vpn-tun")
		must(t, err)
		if render(got) != want {
			t.Errorf("%s.HostPrefixes(except vpn-tun) =\n%s\nwant\n%s", name, render(got), want)
		}
		got, err = hp("")
		must(t, err)
		for _, a := range o.link.Addrs {
			if !strings.Contains(render(got), a.String()+" vpn-tun") {
				t.Errorf("%s.HostPrefixes(\"\") lacks %s on vpn-tun:\n%s", name, a, render(got))
			}
		}
	}
}

// MarkSocket sets the mark bits and keeps the others; marking twice is
// marking once; a pipe cannot be marked.
func TestMarkSocket(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	sock := func(domain, typ int) int {
		t.Helper()
		fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
		must(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
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
	var p [2]int
	must(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if err := n.MarkSocket(p[0], mark); err == nil {
		t.Error("MarkSocket of a pipe succeeded")
	}
}

// Close stops the monitor: no goroutine is left, and Watch refuses.
func TestCloseStopsMonitor(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n, err := New(nil, nil)
	must(t, err)
	f, _, err := n.CreateTUN("vpn-tun", manager.TUNOptions{})
	must(t, err)
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := n.Watch(ctx, places); err != nil {
		t.Fatal(err)
	}
	ipCmd(t, "route", "add", "throw", "10.0.0.0/8", "table", "98")
	if p := n.Sync(); p != manager.PartAll {
		t.Errorf("the first Sync after Watch = %s, want everything", p)
	}
	must(t, n.Close())
	goleak.VerifyNone(t)
	if _, err := n.Watch(ctx, places); err == nil {
		t.Error("Watch after Close succeeded")
	}
	goleak.VerifyNone(t)
}
