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

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/tun"
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
		if err := tun.ValidateName(tc.name); (err == nil) != tc.ok {
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
	n := newNetlink(t)

	f, index, err := n.CreateTUN("vpn-tun", tun.TUNOptions{})
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
	if _, _, err := n.CreateTUN("vpn-tun", tun.TUNOptions{}); !errors.Is(err, tun.ErrLinkExists) || !strings.Contains(err.Error(), want) {
		t.Errorf("second CreateTUN: %v, want ErrLinkExists saying %q", err, want)
	}
	netnstest.IP(t, "link", "add", "foreign0", "type", "bridge")
	if _, _, err := n.CreateTUN("foreign0", tun.TUNOptions{}); !errors.Is(err, tun.ErrLinkExists) || !strings.Contains(err.Error(), "a bridge link (index ") {
		t.Errorf("CreateTUN over a bridge: %v, want ErrLinkExists naming a bridge link", err)
	}
	netnstest.IP(t, "tuntap", "add", "tap0", "mode", "tap")
	if _, _, err := n.CreateTUN("tap0", tun.TUNOptions{}); !errors.Is(err, tun.ErrLinkExists) || !strings.Contains(err.Error(), "a tap link (index ") {
		t.Errorf("CreateTUN over a tap: %v, want ErrLinkExists naming a tap link", err)
	}
	if _, _, err := n.CreateTUN("lo", tun.TUNOptions{}); !errors.Is(err, tun.ErrLinkExists) || !strings.Contains(err.Error(), "(index 1)") {
		t.Errorf("CreateTUN(lo): %v, want ErrLinkExists naming index 1", err)
	}
	for _, bad := range []string{"", "sixteen-bytes-xx", "a/b", "a b", "tun%d"} {
		if _, _, err := n.CreateTUN(bad, tun.TUNOptions{}); err == nil || errors.Is(err, tun.ErrLinkExists) {
			t.Errorf("CreateTUN(%q) = %v, want a name error", bad, err)
		}
	}

	fb, ib, err := n.CreateTUN("vpn-tun-b", tun.TUNOptions{Blocking: true})
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
	f2, _, err := n.CreateTUN("vpn-tun", tun.TUNOptions{})
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
	n := newNetlink(t)
	const want = unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	for _, opt := range []tun.TUNOptions{{VnetHdr: true}, {VnetHdr: true, Blocking: true}} {
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
		if ierr != nil || size != tun.VnetHdrLen {
			t.Errorf("%+v: TUNGETVNETHDRSZ = %d, %v; want the kernel's default %d", opt, size, ierr, tun.VnetHdrLen)
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

// Install of a whole VPN: the link's MTU, loose reverse path filtering, no
// IPv6 address generation (so no fe80:: address), addresses without prefix
// routes in main, up; every kind of route and rule, read back from the
// kernel exactly.
func TestInstall(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := newNetlink(t)
	_, index := createTUN(t, n, "vpn-tun")
	o := fullVPN(index)
	added, err := n.Install(o)
	must(t, err)
	if got, want := strs(added.Routes), strs(o.Routes); got != want {
		t.Errorf("Install reports routes\n%s\nwant\n%s", got, want)
	}
	if !slices.Equal(added.Rules, o.Rules) || added.Link == nil || added.Link.Index != index || added.Link.MTU != 1400 ||
		!slices.Equal(added.Link.Addrs, o.Link.Addrs) {
		t.Errorf("Install reports %+v (link %+v), want all of %+v", added, added.Link, o)
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
		if a.Tentative {
			t.Errorf("address %s is tentative: IFA_F_NODAD missing", a.Prefix)
		}
		addrs = append(addrs, a)
	}
	if got, want := strs(addrs), strs(o.Link.Addrs); got != want {
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
	if out := netnstest.IP(t, "-6", "route"); strings.Contains(out, "vpn-tun") {
		t.Errorf("ip -6 route shows vpn-tun:\n%s", out)
	}
	kernelHolds(t, "after Install", o.Routes, o.Rules)

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

	// Read reports the same, exactly, rules in the kernel's order (IPv4,
	// then IPv6; by priority; in order of addition within a priority).
	s, err := n.Read(tun.Query{LinkIndex: index, Table: table, Priorities: []int{prio, lock}})
	must(t, err)
	if s.Link == nil || s.Link.Index != index || s.Link.Name != "vpn-tun" || s.Link.MTU != 1400 || !s.Link.Up {
		t.Fatalf("Read link %+v, want vpn-tun #%d, mtu 1400, up", s.Link, index)
	}
	if got, want := strs(s.Link.Addrs), strs(o.Link.Addrs); got != want {
		t.Errorf("Read addresses\n%s\nwant\n%s", got, want)
	}
	if got, want := strs(s.Routes), strs(o.Routes); got != want {
		t.Errorf("Read routes\n%s\nwant\n%s", got, want)
	}
	wantRules := slices.Clone(o.Rules)
	slices.SortStableFunc(wantRules, func(a, b tun.Rule) int {
		if a.Family != b.Family {
			return a.Family - b.Family
		}
		return a.Priority - b.Priority
	})
	if !slices.Equal(s.Rules, wantRules) {
		t.Errorf("Read rules\n%v\nwant\n%v", s.Rules, wantRules)
	}
	// A query for nothing reads nothing; one for another table or
	// priority reads none of these.
	if s, err := n.Read(tun.Query{}); err != nil || s.Link != nil || len(s.Routes)+len(s.Rules) != 0 {
		t.Errorf("Read(nothing) = %+v, %v", s, err)
	}
	if s, err := n.Read(tun.Query{Table: table + 1, Priorities: []int{prio - 1}}); err != nil || len(s.Routes)+len(s.Rules) != 0 {
		t.Errorf("Read(other table and priority) = %+v, %v", s, err)
	}
	// A link that is gone reads as nil.
	if s, err := n.Read(tun.Query{LinkIndex: 9999}); err != nil || s.Link != nil {
		t.Errorf("Read(missing link) = %+v, %v", s, err)
	}
}

// Install that fails part-way returns exactly what it added and names the
// first object the kernel refused; removing what it returned leaves the
// kernel as before.
func TestInstallPartial(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := newNetlink(t)
	planted := tun.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999}
	for _, tc := range []struct {
		name    string
		change  func(o *tun.Objects)
		plant   bool   // someone else's rule equal to one of the VPN's
		errText string // the first failure, as Install words it
		errno   unix.Errno
	}{
		{
			// Gateway routes are onlink (a TUN has no neighbours): the
			// kernel takes any gateway but a local address.
			name: "gateway is a local address, rule exists",
			change: func(o *tun.Objects) {
				bad := tun.Route{Table: table, Dst: pfx("10.9.0.0/16"), Gateway: o.Link.Addrs[0].Addr(), LinkIndex: o.Link.Index}
				o.Routes = slices.Insert(o.Routes, 2, bad)
			},
			plant:   true,
			errText: "add route 10.9.0.0/16 via 10.8.0.2 dev #",
			errno:   unix.EINVAL,
		},
		{
			name: "IPv6 gateway is a local address",
			change: func(o *tun.Objects) {
				bad := tun.Route{Table: table, Dst: pfx("2001:db8:9::/48"), Gateway: ip("fd00:8::2"), LinkIndex: o.Link.Index}
				o.Routes = slices.Insert(o.Routes, 2, bad)
			},
			errText: "add route 2001:db8:9::/48 via fd00:8::2 dev #",
			errno:   unix.EINVAL,
		},
		{
			name:    "rule exists",
			change:  func(o *tun.Objects) {},
			plant:   true,
			errText: "add rule ipv4 10000: uidrange 0-999 lookup 98",
			errno:   unix.EEXIST,
		},
		{
			name: "duplicate address",
			change: func(o *tun.Objects) {
				o.Link.Addrs = append(o.Link.Addrs, pfx("10.8.0.2/24"))
			},
			errText: "add address 10.8.0.2/24",
			errno:   unix.EEXIST,
		},
		{
			name:    "MTU too small",
			change:  func(o *tun.Objects) { o.Link.MTU = 67 },
			errText: "configure link #",
			errno:   unix.EINVAL,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, index := createTUN(t, n, "vpn-tun")
			defer f.Close()
			o := fullVPN(index)
			tc.change(o)
			if tc.plant {
				netnstest.IP(t, "rule", "add", "priority", "10000", "uidrange", "0-999", "lookup", "98")
				defer netnstest.IP(t, "rule", "del", "priority", "10000", "uidrange", "0-999", "lookup", "98")
			}
			added, err := n.Install(o)
			if !errors.Is(err, tc.errno) || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("Install: %v, want %v naming %q", err, tc.errno, tc.errText)
			}
			// What was added is o less what failed: check with the kernel.
			wantRoutes := slices.DeleteFunc(slices.Clone(o.Routes), func(r tun.Route) bool {
				return r.Gateway.IsValid() && slices.ContainsFunc(o.Link.Addrs, func(a netip.Prefix) bool { return a.Addr() == r.Gateway })
			})
			wantRules := o.Rules
			if tc.plant {
				wantRules = slices.DeleteFunc(slices.Clone(o.Rules), func(r tun.Rule) bool { return r == planted })
			}
			if got, want := strs(added.Routes), strs(wantRoutes); got != want {
				t.Errorf("added routes\n%s\nwant\n%s", got, want)
			}
			if got, want := strs(added.Rules), strs(wantRules); got != want {
				t.Errorf("added rules\n%s\nwant\n%s", got, want)
			}
			var kernelAddrs []netip.Prefix
			for _, a := range linkAddrs(t, "vpn-tun") {
				kernelAddrs = append(kernelAddrs, a.Prefix)
			}
			if got, want := strs(added.Link.Addrs), strs(kernelAddrs); got != want {
				t.Errorf("added addresses\n%s\nkernel has\n%s", got, want)
			}
			all := slices.Clone(added.Rules)
			if tc.plant {
				all = append(all, planted)
			}
			kernelHolds(t, "after a failed Install", added.Routes, all)

			must(t, n.Remove(&added))
			if linkExists(t, "vpn-tun") {
				t.Error("Remove left the link")
			}
			var left []tun.Rule
			if tc.plant {
				left = []tun.Rule{planted}
			}
			kernelHolds(t, "after Remove", nil, left)
		})
	}

	// An invalid object: nothing is sent, nothing added.
	_, index := createTUN(t, n, "vpn-tun")
	o := fullVPN(index)
	o.Routes = append(o.Routes, tun.Route{Table: 0, Dst: pfx("10.1.0.0/16"), LinkIndex: index})
	added, err := n.Install(o)
	if err == nil || !strings.Contains(err.Error(), "add route 10.1.0.0/16") || added.Len() != 0 || added.Link != nil {
		t.Errorf("Install of an invalid route: %+v, %v; want an error naming it and nothing added", added, err)
	}
	if l := linkJSON(t, "vpn-tun"); l["mtu"].(float64) != 1500 || slices.Contains(l["flags"].([]any), any("UP")) {
		t.Errorf("an invalid Install changed the link: %v", l)
	}
	kernelHolds(t, "after an invalid Install", nil, nil)
}

// Remove deletes everything: rules, routes that do not go with the link,
// the link with its addresses and routes. What is gone already is not an
// error.
func TestRemove(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := newNetlink(t)
	f, index := createTUN(t, n, "vpn-tun")
	o := fullVPN(index)
	_, err := n.Install(o)
	must(t, err)
	must(t, n.Remove(o))
	if linkExists(t, "vpn-tun") {
		t.Error("link survived Remove")
	}
	kernelHolds(t, "after Remove", nil, nil)
	// The client's fd is detached from the deleted device.
	rc, err := f.SyscallConn()
	must(t, err)
	var rerr error
	must(t, rc.Control(func(fd uintptr) { _, rerr = unix.Read(int(fd), make([]byte, 100)) }))
	if !errors.Is(rerr, unix.EBADFD) {
		t.Errorf("read from the TUN fd after Remove: %v, want EBADFD", rerr)
	}
	// Everything gone: a second Remove is fine.
	must(t, n.Remove(o))

	// The link went with its fd before Remove: the rules and the routes
	// that do not go with the link are still removed.
	f, index = createTUN(t, n, "vpn-tun")
	o = fullVPN(index)
	_, err = n.Install(o)
	must(t, err)
	f.Close()
	must(t, n.Remove(o))
	kernelHolds(t, "after Remove of a VPN whose link had gone", nil, nil)

	// Nothing but rules and routes (lockdown's rules, say).
	o = &tun.Objects{Routes: []tun.Route{{Table: table, Dst: pfx("192.168.0.0/16"), Kind: tun.Throw}}, Rules: fullVPN(0).Rules[6:]}
	_, err = n.Install(o)
	must(t, err)
	kernelHolds(t, "after Install without a link", o.Routes, o.Rules)
	must(t, n.Remove(o))
	kernelHolds(t, "after Remove without a link", nil, nil)
	must(t, n.Remove(&tun.Objects{}))
}

// Remove never deletes a rule it did not mean: the kernel deletes the first
// rule that matches the selectors a request carries, and vpnd's request
// cannot say "no fwmark".
func TestRemoveRuleExact(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := newNetlink(t)
	masked := tun.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5, Mask: mark}
	plain := masked
	plain.Mask = 0
	rules := func() []tun.Rule { return kernelRules(t, prio) }

	// Someone's masked rule comes first: deleting vpnd's plain rule would
	// delete it instead, so Remove refuses and names it.
	netnstest.IP(t, "rule", "add", "priority", "10000", "uidrange", "5-5", "fwmark", "0/0x20000", "lookup", "98")
	_, err := n.Install(&tun.Objects{Rules: []tun.Rule{plain}})
	must(t, err)
	err = n.Remove(&tun.Objects{Rules: []tun.Rule{plain}})
	if !errors.Is(err, tun.ErrAmbiguousRule) || !strings.Contains(err.Error(), "delete rule "+plain.String()) || !strings.Contains(err.Error(), masked.String()) {
		t.Errorf("Remove(plain) behind masked = %v, want ErrAmbiguousRule naming both", err)
	}
	if got := rules(); !slices.Equal(got, []tun.Rule{masked, plain}) {
		t.Fatalf("rules %v after a refused delete, want %v", got, []tun.Rule{masked, plain})
	}
	// Both are vpnd's to remove, in any order of the request.
	must(t, n.Remove(&tun.Objects{Rules: []tun.Rule{plain, masked}}))
	if got := rules(); len(got) != 0 {
		t.Fatalf("rules %v left", got)
	}

	// The plain rule first: it can be removed alone.
	_, err = n.Install(&tun.Objects{Rules: []tun.Rule{plain, masked}})
	must(t, err)
	must(t, n.Remove(&tun.Objects{Rules: []tun.Rule{plain}}))
	if got := rules(); !slices.Equal(got, []tun.Rule{masked}) {
		t.Fatalf("rules %v, want only %v", got, masked)
	}
	// Gone already, though a delete of it would hit the masked rule: no
	// request, no error.
	must(t, n.Remove(&tun.Objects{Rules: []tun.Rule{plain}}))
	if got := rules(); !slices.Equal(got, []tun.Rule{masked}) {
		t.Fatalf("rules %v, want only %v", got, masked)
	}
	must(t, n.Remove(&tun.Objects{Rules: []tun.Rule{masked}}))

	// A foreign rule with more selectors than vpnd's would be deleted by
	// a request for vpnd's: with vpnd's rule gone, nothing is sent.
	third := tun.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 3000, UIDEnd: 3000}
	netnstest.IP(t, "rule", "add", "priority", "10000", "from", "10.0.0.0/8", "uidrange", "3000-3000", "lookup", "98")
	must(t, n.Remove(&tun.Objects{Rules: []tun.Rule{third}}))
	if out := netnstest.IP(t, "rule", "show", "priority", "10000"); !strings.Contains(out, "from 10.0.0.0/8") {
		t.Errorf("foreign rule deleted:\n%s", out)
	}
	netnstest.IP(t, "rule", "del", "priority", "10000", "from", "10.0.0.0/8", "uidrange", "3000-3000", "lookup", "98")

	// A foreign rule with any fwmark in front of vpnd's rule would be
	// deleted by vpnd's request: refused, and kept.
	netnstest.IP(t, "rule", "add", "priority", "10000", "fwmark", "0x1/0x1", "uidrange", "3000-3000", "lookup", "98")
	_, err = n.Install(&tun.Objects{Rules: []tun.Rule{third}})
	must(t, err)
	if err := n.Remove(&tun.Objects{Rules: []tun.Rule{third}}); !errors.Is(err, tun.ErrAmbiguousRule) {
		t.Errorf("Remove behind a foreign fwmark rule = %v, want ErrAmbiguousRule", err)
	}
	if out := netnstest.IP(t, "rule", "show", "priority", "10000"); !strings.Contains(out, "fwmark 0x1/0x1") || !strings.Contains(out, "uidrange 3000-3000 lookup 98") {
		t.Errorf("a rule was deleted:\n%s", out)
	}

	// The same, for unreachable rules (lockdown's).
	refuse := tun.Rule{Family: v6, Priority: lock, UIDStart: 7, UIDEnd: 7, Action: tun.Refuse}
	netnstest.IP(t, "-6", "rule", "add", "priority", "10001", "uidrange", "7-7", "fwmark", "0/0x20000", "unreachable")
	_, err = n.Install(&tun.Objects{Rules: []tun.Rule{refuse}})
	must(t, err)
	if err := n.Remove(&tun.Objects{Rules: []tun.Rule{refuse}}); !errors.Is(err, tun.ErrAmbiguousRule) {
		t.Errorf("Remove of an unreachable rule behind a masked one = %v, want ErrAmbiguousRule", err)
	}
	if got := kernelRules(t, lock); len(got) != 2 {
		t.Errorf("unreachable rules %v, want both kept", got)
	}
}

// Restore puts back what self-healing asks for: routes of a flushed table,
// the up state of a link set down with the IPv6 addresses that went with
// it, the MTU, rules. What is back already (EEXIST) does not count.
func TestRestore(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := newNetlink(t)
	_, index := createTUN(t, n, "vpn-tun")
	o := fullVPN(index)
	// A VPN may have a link-local address of its own.
	o.Link.Addrs = append(o.Link.Addrs, pfx("fe80::8:2/64"))
	_, err := n.Install(o)
	must(t, err)
	q := tun.Query{LinkIndex: index, Table: table, Priorities: []int{prio, lock}}
	masked := func(rs []tun.Route) []tun.Route {
		rs = slices.Clone(rs)
		for i := range rs {
			rs[i].Dst = rs[i].Dst.Masked()
		}
		return rs
	}
	wantAll := func(what string) {
		t.Helper()
		s, err := n.Read(q)
		must(t, err)
		if s.Link == nil || s.Link.MTU != 1400 || !s.Link.Up || strs(s.Link.Addrs) != strs(o.Link.Addrs) {
			t.Errorf("%s: link %+v", what, s.Link)
		}
		if got, want := strs(s.Routes), strs(o.Routes); got != want {
			t.Errorf("%s: routes\n%s\nwant\n%s", what, got, want)
		}
		if got, want := strs(s.Rules), strs(o.Rules); got != want {
			t.Errorf("%s: rules\n%s\nwant\n%s", what, got, want)
		}
		for _, a := range linkAddrs(t, "vpn-tun") {
			if !a.NoPrefixRoute || !slices.Contains(o.Link.Addrs, a.Prefix) {
				t.Errorf("%s: address %+v", what, a)
			}
		}
		for _, r := range netnstest.IPJSON(t, "-6", "route", "show", "table", "main") {
			if r["dev"] == "vpn-tun" {
				t.Errorf("%s: main has %v", what, r)
			}
		}
	}

	// A flushed table.
	netnstest.IP(t, "-4", "route", "flush", "table", "98")
	netnstest.IP(t, "-6", "route", "flush", "table", "98")
	if s, err := n.Read(q); err != nil || len(s.Routes) != 0 {
		t.Fatalf("after flush: %v, %v", s.Routes, err)
	}
	done, err := n.Restore(&tun.Repair{LinkIndex: index, Routes: o.Routes})
	must(t, err)
	if got, want := strs(done.Routes), strs(o.Routes); got != want || done.Up || done.MTU != 0 || len(done.Addrs)+len(done.Rules) != 0 {
		t.Errorf("Restore reports %+v, want the routes only", done)
	}
	wantAll("after restoring a flushed table")

	// The link set down: it lost its routes and IPv6 addresses.
	netnstest.IP(t, "link", "set", "vpn-tun", "down")
	s, err := n.Read(q)
	must(t, err)
	if s.Link.Up {
		t.Fatal("link still up")
	}
	var lostAddrs []netip.Prefix
	for _, a := range o.Link.Addrs {
		if !slices.Contains(s.Link.Addrs, a) {
			lostAddrs = append(lostAddrs, a)
		}
	}
	if got := strs(lostAddrs); got != "fd00:8::2/64\nfd00:9::2/128\nfe80::8:2/64" {
		t.Errorf("a link set down lost addresses\n%s\nwant the IPv6 ones", got)
	}
	var lostRoutes []tun.Route
	for _, r := range masked(o.Routes) {
		if !slices.Contains(s.Routes, r) {
			lostRoutes = append(lostRoutes, r)
			if r.Kind != tun.Unicast {
				t.Errorf("a link set down lost %s", r)
			}
		}
	}
	if len(lostRoutes) != 7 {
		t.Errorf("a link set down lost %d routes, want the 7 through it:\n%s", len(lostRoutes), strs(lostRoutes))
	}
	done, err = n.Restore(&tun.Repair{LinkIndex: index, Up: true, Addrs: lostAddrs, Routes: lostRoutes})
	must(t, err)
	if !done.Up || strs(done.Addrs) != strs(lostAddrs) || strs(done.Routes) != strs(lostRoutes) {
		t.Errorf("Restore reports %+v", done)
	}
	wantAll("after restoring a link set down")

	// The MTU, an address and a rule.
	netnstest.IP(t, "link", "set", "vpn-tun", "mtu", "1300")
	netnstest.IP(t, "addr", "del", "10.8.1.2/32", "dev", "vpn-tun")
	netnstest.IP(t, "-6", "rule", "del", "priority", "10000", "uidrange", "0-999", "lookup", "98")
	lostRule := tun.Rule{Family: v6, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999}
	done, err = n.Restore(&tun.Repair{LinkIndex: index, MTU: 1400, Addrs: []netip.Prefix{pfx("10.8.1.2/32")}, Rules: []tun.Rule{lostRule}})
	must(t, err)
	if done.MTU != 1400 || done.Up || !slices.Equal(done.Addrs, []netip.Prefix{pfx("10.8.1.2/32")}) || !slices.Equal(done.Rules, []tun.Rule{lostRule}) {
		t.Errorf("Restore reports %+v", done)
	}
	wantAll("after restoring the MTU, an address and a rule")

	// An MTU below IPv6's minimum takes IPv6 off the link, and with it the
	// setting that keeps the kernel from generating a link-local address:
	// restoring the MTU must not leave the link with one.
	netnstest.IP(t, "link", "set", "vpn-tun", "mtu", "1200")
	s, err = n.Read(q)
	must(t, err)
	var v6Addrs []netip.Prefix
	var v6Routes []tun.Route
	for _, a := range o.Link.Addrs {
		if a.Addr().Is6() {
			v6Addrs = append(v6Addrs, a)
		}
	}
	for _, r := range o.Routes {
		if r.Dst.Addr().Is6() && r.Kind == tun.Unicast {
			v6Routes = append(v6Routes, r)
		}
	}
	if len(s.Link.Addrs) != 2 || len(s.Routes) != len(o.Routes)-len(v6Routes) {
		t.Fatalf("at MTU 1200: addresses %v, routes %v; want IPv6's gone", s.Link.Addrs, s.Routes)
	}
	done, err = n.Restore(&tun.Repair{LinkIndex: index, MTU: 1400, Addrs: v6Addrs, Routes: v6Routes})
	must(t, err)
	if done.MTU != 1400 || strs(done.Addrs) != strs(v6Addrs) || strs(done.Routes) != strs(v6Routes) {
		t.Errorf("Restore reports %+v", done)
	}
	if got := readFile(t, "/proc/sys/net/ipv6/conf/vpn-tun/addr_gen_mode"); got != "1" {
		t.Errorf("after restoring the MTU, addr_gen_mode of vpn-tun is %s, want 1 (none)", got)
	}
	wantAll("after restoring an MTU below IPv6's minimum")

	// Everything is there: addresses and rules answer EEXIST and do not
	// count; the link's settings and replaced routes do.
	done, err = n.Restore(&tun.Repair{LinkIndex: index, Addrs: o.Link.Addrs, Rules: o.Rules})
	if err != nil || len(done.Addrs)+len(done.Rules) != 0 {
		t.Errorf("Restore of what is there = %+v, %v; want nothing restored, no error", done, err)
	}
	if r := (tun.Repair{}); !r.Empty() {
		t.Error("an empty Repair is not Empty")
	}
	done, err = n.Restore(&tun.Repair{LinkIndex: index})
	if err != nil || !done.Empty() {
		t.Errorf("empty Restore = %+v, %v", done, err)
	}
	wantAll("after restoring what was there")

	// A route someone changed is replaced with vpnd's.
	netnstest.IP(t, "route", "replace", "198.51.100.0/24", "dev", "vpn-tun", "table", "98")
	_, err = n.Restore(&tun.Repair{LinkIndex: index, Routes: o.Routes[4:5]})
	must(t, err)
	wantAll("after restoring a changed route")

	// Failures are reported with the object: a gone link.
	netnstest.IP(t, "link", "del", "vpn-tun")
	done, err = n.Restore(&tun.Repair{LinkIndex: index, Up: true, Addrs: o.Link.Addrs[:1]})
	if !errors.Is(err, unix.ENODEV) || !strings.Contains(err.Error(), "restore address 10.8.0.2/24") || !done.Empty() {
		t.Errorf("Restore on a gone link = %+v, %v; want ENODEV naming the address", done, err)
	}
}

// Occupants lists everything in vpnd's table and at its priorities, with
// links named.
func TestOccupants(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := newNetlink(t)
	if got, err := n.Occupants(table, prio, lock); err != nil || len(got) != 0 {
		t.Fatalf("Occupants of a fresh namespace = %q, %v", got, err)
	}
	netnstest.IP(t, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
	netnstest.IP(t, "link", "set", "veth0", "up")
	for _, args := range [][]string{
		{"rule", "add", "priority", "10000", "from", "10.0.0.0/8", "lookup", "99"},
		{"-6", "rule", "add", "priority", "10001", "uidrange", "1-1", "unreachable"},
		{"rule", "add", "priority", "9999", "lookup", "98"},
		{"route", "add", "10.62.0.0/16", "dev", "veth0", "table", "98"},
		{"-6", "route", "add", "throw", "2001:db8::/32", "table", "98"},
		{"route", "add", "10.63.0.0/16", "dev", "veth0", "table", "99"},
	} {
		netnstest.IP(t, args...)
	}
	got, err := n.Occupants(table, prio, lock)
	must(t, err)
	text := strings.Join(got, "\n")
	if len(got) != 4 {
		t.Errorf("Occupants = \n%s\nwant 4", text)
	}
	for _, want := range []string{
		"rule ipv4 10000: (+1 other selectors) lookup 99",
		"rule ipv6 10001: uidrange 1-1 unreachable",
		"route 10.62.0.0/16 dev veth0 table 98",
		"route throw 2001:db8::/32 table 98",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("Occupants lacks %q:\n%s", want, text)
		}
	}
}

// HostPrefixes lists every other link's addresses and on-link prefixes in
// main; not gateway routes, and not the excepted link's.
func TestHostPrefixes(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.LoUp(t)
	n := newNetlink(t)
	_, index := createTUN(t, n, "vpn-tun")
	_, err := n.Install(fullVPN(index))
	must(t, err)
	for _, args := range [][]string{
		{"link", "add", "veth0", "type", "veth", "peer", "name", "veth1"},
		{"link", "set", "veth0", "up"},
		{"addr", "add", "192.0.2.1/24", "dev", "veth0"},
		{"addr", "add", "fd10::1/64", "dev", "veth0", "nodad"},
		{"route", "add", "198.18.0.0/15", "dev", "veth0"},
		{"route", "add", "203.0.113.0/24", "via", "192.0.2.254"},
		{"route", "add", "198.51.100.0/24", "dev", "veth0", "table", "97"},
	} {
		netnstest.IP(t, args...)
	}
	render := func(ps []tun.HostPrefix) string {
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
	got, err := n.HostPrefixes("vpn-tun")
	must(t, err)
	want := strings.Join([]string{
		"127.0.0.1/8 lo",
		"192.0.2.0/24 veth0",
		"192.0.2.1/24 veth0",
		"198.18.0.0/15 veth0",
		"::1/128 lo",
		"fd10::/64 veth0",
		"fd10::1/64 veth0",
	}, "\n")
	if render(got) != want {
		t.Errorf("HostPrefixes(except vpn-tun) =\n%s\nwant\n%s", render(got), want)
	}
	got, err = n.HostPrefixes("")
	must(t, err)
	for _, a := range fullVPN(index).Link.Addrs {
		if !strings.Contains(render(got), a.String()+" vpn-tun") {
			t.Errorf("HostPrefixes(\"\") lacks %s on vpn-tun:\n%s", a, render(got))
		}
	}
}

// The start-up sweep removes vpnd's interface (if it is a TUN), its rules
// at its priority that look up its table whatever their selectors, every
// route in its table, and lockdown rules nobody wants; nothing else.
func TestSweep(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := newNetlink(t)
	spec := tun.SweepSpec{IfName: "vpn-tun", Table: table, Priority: prio}

	// Decoys that are not vpnd's.
	for _, args := range [][]string{
		{"link", "add", "decoy0", "type", "bridge"},
		{"link", "set", "decoy0", "up"},
		{"addr", "add", "10.50.0.1/24", "dev", "decoy0"},
		{"route", "add", "10.60.0.0/16", "dev", "decoy0", "table", "99"},
		{"route", "add", "10.61.0.0/16", "dev", "decoy0"},
		{"rule", "add", "priority", "9999", "uidrange", "1-1", "lookup", "98"},
		{"rule", "add", "priority", "10000", "uidrange", "1-1", "lookup", "99"},
		{"rule", "add", "priority", "10000", "uidrange", "2-2", "unreachable"},
		{"-6", "rule", "add", "priority", "10002", "uidrange", "1-1", "lookup", "98"},
		{"rule", "add", "priority", "10001", "from", "10.0.0.0/8", "uidrange", "3-3", "unreachable"},
		{"rule", "add", "priority", "10001", "uidrange", "4-4", "lookup", "97"},
	} {
		netnstest.IP(t, args...)
	}
	before := kernelState(t)

	// What a killed vpnd left: a TUN still held open by its client, its
	// routes and rules, and others' rules and routes in its slots.
	_, index := createTUN(t, n, "vpn-tun")
	o := fullVPN(index)
	o.Rules = o.Rules[:6] // lockdown's come later
	_, err := n.Install(o)
	must(t, err)
	netnstest.IP(t, "rule", "add", "priority", "10000", "from", "10.0.0.0/8", "lookup", "98")
	netnstest.IP(t, "-6", "rule", "add", "priority", "10000", "fwmark", "0x1/0x1", "iif", "lo", "lookup", "98")
	netnstest.IP(t, "route", "add", "10.62.0.0/16", "dev", "decoy0", "table", "98")
	netnstest.IP(t, "route", "add", "blackhole", "10.63.0.0/16", "table", "98")
	netnstest.IP(t, "-6", "route", "add", "prohibit", "2001:db8:7::/48", "table", "98")

	removed, err := n.Sweep(nil, spec)
	must(t, err)
	// The link takes the routes through it along; the others are deleted
	// one by one: the link, 6+2 rules, 4 routes of the VPN and 3 others.
	if len(removed) != 1+8+4+3 {
		t.Errorf("removed %d things, want 16:\n%s", len(removed), strings.Join(removed, "\n"))
	}
	if !slices.Contains(removed, "link vpn-tun (index "+strconv.Itoa(index)+") with the 7 routes through it") {
		t.Errorf("removed %q, want the link named with its 7 routes", removed)
	}
	if after := kernelState(t); after != before {
		t.Errorf("sweep did not restore the state before vpnd:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// Nothing left: a second sweep removes nothing.
	if removed, err := n.Sweep(nil, spec); err != nil || len(removed) != 0 {
		t.Errorf("second sweep: %q, %v", removed, err)
	}

	// Lockdown rules nobody wants are removed; wanted ones, and others at
	// that priority, stay.
	_, err = n.Install(&tun.Objects{Rules: fullVPN(0).Rules[6:]})
	must(t, err)
	keep := fullVPN(0).Rules[6]
	spec.LockdownPriority = lock
	spec.Keep = func(r tun.Rule) bool { return r == keep }
	removed, err = n.Sweep(nil, spec)
	if err != nil || len(removed) != 1 || !strings.Contains(removed[0], "ipv6 10001: uidrange 2000-2999") {
		t.Errorf("sweep of lockdown rules: %q, %v; want the IPv6 one removed", removed, err)
	}
	refusing := slices.DeleteFunc(kernelRules(t, lock), func(r tun.Rule) bool { return r.Action != tun.Refuse })
	if !slices.Equal(refusing, []tun.Rule{keep}) {
		t.Errorf("vpnd-shaped unreachable rules at %d: %v, want %v", lock, refusing, keep)
	}
	spec.Keep = nil
	if removed, err := n.Sweep(nil, spec); err != nil || len(removed) != 1 {
		t.Errorf("sweep wanting no lockdown: %q, %v", removed, err)
	}
	if after := kernelState(t); after != before {
		t.Errorf("lockdown sweeps touched others:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	spec.LockdownPriority = 0

	// A persistent TUN under the name is vpnd's kind of device: removed.
	netnstest.IP(t, "tuntap", "add", "vpn-tun", "mode", "tun")
	removed, err = n.Sweep(nil, spec)
	if err != nil || len(removed) != 1 || linkExists(t, "vpn-tun") {
		t.Errorf("sweep over a persistent tun: %q, %v; want it removed", removed, err)
	}

	// Any other link under the name is left alone and reported, after the
	// rest of the sweep is done.
	for _, args := range [][]string{
		{"tuntap", "add", "vpn-tun", "mode", "tap"},
		{"link", "add", "vpn-tun", "type", "bridge"},
		{"link", "add", "vpn-tun", "type", "veth", "peer", "name", "vpn-peer"},
	} {
		netnstest.IP(t, args...)
		netnstest.IP(t, "route", "add", "throw", "10.64.0.0/16", "table", "98")
		removed, err = n.Sweep(nil, spec)
		if !errors.Is(err, tun.ErrLinkExists) || len(removed) != 1 || !linkExists(t, "vpn-tun") {
			t.Errorf("sweep over ip %v: %q, %v; want ErrLinkExists, the route removed and the link kept", args, removed, err)
		}
		netnstest.IP(t, "link", "del", "vpn-tun")
	}

	for _, tb := range []int{0, 253, 254, 255, -1} {
		if _, err := n.Sweep(nil, tun.SweepSpec{IfName: "vpn-tun", Table: tb, Priority: prio}); err == nil {
			t.Errorf("Sweep of reserved table %d succeeded", tb)
		}
	}
	if _, err := n.Sweep(nil, tun.SweepSpec{IfName: "vpn-tun", Table: table}); err == nil {
		t.Error("Sweep at priority 0 succeeded")
	}
	if _, err := n.Sweep(nil, tun.SweepSpec{IfName: "bad/name", Table: table, Priority: prio}); err == nil {
		t.Error("Sweep of an invalid name succeeded")
	}
}

// kernelState renders links, addresses, all rules and all routes of all
// tables.
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
		for line := range strings.SplitSeq(out, "\n") {
			if strings.Contains(line, "fe80::") || strings.Contains(line, "ff00::/8") || strings.Contains(line, "multicast") {
				continue
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// protect: CheckSocket accepts only AF_INET/AF_INET6 stream or datagram
// sockets without a pending error (2203004 with a precise detail
// otherwise); MarkSocket sets the mark bit and keeps the others.
func TestCheckAndMarkSocket(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.LoUp(t)
	n := newNetlink(t)

	sock := func(domain, typ, proto int) int {
		t.Helper()
		fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		must(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	var p [2]int
	must(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	const closed = 1 << 20 // far above any fd this test opens

	refused := sock(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	listener := sock(unix.AF_INET, unix.SOCK_STREAM, 0)
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
		{"negative fd", -1, "fd -1 is negative"},
		{"pipe", p[0], "fd is not a socket"},
		{"closed fd", closed, "is not open"},
		{"unix socket", sock(unix.AF_UNIX, unix.SOCK_STREAM, 0), "socket domain AF_UNIX not AF_INET or AF_INET6"},
		{"netlink socket", sock(unix.AF_NETLINK, unix.SOCK_RAW, 0), "socket domain AF_NETLINK not AF_INET or AF_INET6"},
		{"raw socket", sock(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP), "socket type SOCK_RAW not stream or datagram"},
		{"sctp-style seqpacket", sock(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0), "socket domain AF_UNIX"},
		{"failed tcp connect", refused, "socket has a pending error: connection refused"},
		{"udp", sock(unix.AF_INET, unix.SOCK_DGRAM, 0), ""},
		{"udp6", sock(unix.AF_INET6, unix.SOCK_DGRAM, 0), ""},
		{"unconnected tcp", sock(unix.AF_INET, unix.SOCK_STREAM, 0), ""},
		{"tcp6", sock(unix.AF_INET6, unix.SOCK_STREAM, 0), ""},
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

	// MarkSocket keeps the other bits, and marking twice is marking once.
	fd := sock(unix.AF_INET, unix.SOCK_DGRAM, 0)
	must(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, 0x5))
	must(t, n.MarkSocket(fd, mark))
	must(t, n.MarkSocket(fd, mark))
	if got, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); got != mark|0x5 {
		t.Errorf("SO_MARK %#x, want %#x", got, mark|0x5)
	}
	fd = sock(unix.AF_INET6, unix.SOCK_STREAM, 0)
	must(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, -1<<31))
	must(t, n.MarkSocket(fd, mark))
	if got, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); uint32(got) != 1<<31|mark {
		t.Errorf("SO_MARK %#x, want %#x", uint32(got), 1<<31|mark)
	}
	if err := n.MarkSocket(p[0], mark); err == nil {
		t.Error("MarkSocket of a pipe succeeded")
	}
}

// Close stops the monitor: no goroutine is left, and Watch refuses.
func TestCloseStopsMonitor(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n, err := tun.New(nil)
	must(t, err)
	f, index, err := n.CreateTUN("vpn-tun", tun.TUNOptions{})
	must(t, err)
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, _, err := n.Watch(ctx, tun.ChangeFilter{LinkIndex: index, Table: table, Priorities: []int{prio}}); err != nil {
		t.Fatal(err)
	}
	must(t, n.Close())
	goleak.VerifyNone(t)
	if _, _, err := n.Watch(ctx, tun.ChangeFilter{LinkIndex: index}); err == nil {
		t.Error("Watch after Close succeeded")
	}
}
