package sim_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newKernel(t *testing.T, opt sim.Options) *sim.Kernel {
	t.Helper()
	k := sim.New(opt)
	t.Cleanup(k.Close)
	return k
}

// Remove refuses a rule delete that would hit another rule first, as the
// kernel's rule lookup would, but only for a rule that is there: one that
// is gone is not an error, whatever a delete of it would hit.
func TestRemoveRuleExact(t *testing.T) {
	k := newKernel(t, sim.Options{})
	masked := tun.Rule{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 5, UIDEnd: 5, Mask: 0x20000}
	plain := masked
	plain.Mask = 0
	rules := func() []tun.Rule { return k.Snapshot().Rules }

	if _, err := k.Install(&tun.Objects{Rules: []tun.Rule{masked, plain}}); err != nil {
		t.Fatal(err)
	}
	if err := k.Remove(&tun.Objects{Rules: []tun.Rule{plain}}); !errors.Is(err, tun.ErrAmbiguousRule) {
		t.Errorf("Remove(plain) behind masked = %v, want ErrAmbiguousRule", err)
	}
	if got := rules(); !slices.Equal(got, []tun.Rule{masked, plain}) {
		t.Fatalf("rules %v after a refused delete", got)
	}
	if err := k.Remove(&tun.Objects{Rules: []tun.Rule{plain, masked}}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Install(&tun.Objects{Rules: []tun.Rule{plain, masked}}); err != nil {
		t.Fatal(err)
	}
	if err := k.Remove(&tun.Objects{Rules: []tun.Rule{plain}}); err != nil {
		t.Fatal(err)
	}
	// Gone already: no error, and the masked rule stays.
	if err := k.Remove(&tun.Objects{Rules: []tun.Rule{plain}}); err != nil {
		t.Errorf("Remove of a gone rule = %v, want nil", err)
	}
	if got := rules(); !slices.Equal(got, []tun.Rule{masked}) {
		t.Errorf("rules %v, want only %v", got, masked)
	}
}

// Errors name the step and its object in tun.Netlink's words, which end up
// in the details of the manager's errors: "configure link #2".
func TestErrorWords(t *testing.T) {
	k := newKernel(t, sim.Options{})
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = k.Install(&tun.Objects{Link: &tun.Link{Index: index, MTU: 67}})
	if want := fmt.Sprintf("configure link #%d: invalid argument", index); err == nil || err.Error() != want {
		t.Errorf("Install with MTU 67 = %v, want %q", err, want)
	}
	_, err = k.Restore(&tun.Repair{LinkIndex: 99, MTU: 1400, Up: true})
	if want := "set mtu of link #99: no such device\nset up link #99: no such device"; err == nil || err.Error() != want {
		t.Errorf("Restore on a missing link = %q, want %q", err, want)
	}
}

// Read and Occupants report rules as a kernel dump does: IPv4's, then
// IPv6's, each family in its evaluation order.
func TestRuleOrder(t *testing.T) {
	k := newKernel(t, sim.Options{})
	rules := []tun.Rule{
		{Family: unix.AF_INET6, Priority: 10000, Table: 98, UIDStart: 1, UIDEnd: 1},
		{Family: unix.AF_INET, Priority: 10001, Table: 98, UIDStart: 2, UIDEnd: 2},
		{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 3, UIDEnd: 3},
		{Family: unix.AF_INET6, Priority: 10000, Table: 98, UIDStart: 4, UIDEnd: 4},
		{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 5, UIDEnd: 5},
	}
	if _, err := k.Install(&tun.Objects{Rules: rules}); err != nil {
		t.Fatal(err)
	}
	want := []tun.Rule{rules[2], rules[4], rules[1], rules[0], rules[3]}
	s, err := k.Read(tun.Query{Priorities: []int{10000, 10001}})
	if err != nil || !slices.Equal(s.Rules, want) {
		t.Errorf("Read = %v, %v; want %v", s.Rules, err, want)
	}
	occ, err := k.Occupants(98, 10000, 10001)
	var wantOcc []string
	for _, r := range want {
		wantOcc = append(wantOcc, "rule "+r.String())
	}
	if err != nil || !slices.Equal(occ, wantOcc) {
		t.Errorf("Occupants = %q, %v; want %q", occ, err, wantOcc)
	}
	if snap := k.Snapshot().Rules; !slices.Equal(snap, want) {
		t.Errorf("Snapshot rules %v, want %v", snap, want)
	}
}

// Occupants names a route's link, as tun.Netlink does: the words reach
// setUp's error detail.
func TestOccupantsNameLinks(t *testing.T) {
	k := newKernel(t, sim.Options{})
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	routes := []tun.Route{
		{Table: 98, Dst: netip.MustParsePrefix("10.8.0.0/24"), LinkIndex: index},
		{Table: 98, Dst: netip.MustParsePrefix("192.168.0.0/16"), Kind: tun.Throw},
	}
	if _, err := k.Install(&tun.Objects{Link: &tun.Link{Index: index, MTU: 1400}, Routes: routes}); err != nil {
		t.Fatal(err)
	}
	want := []string{"route 10.8.0.0/24 dev vpn-tun table 98", "route throw 192.168.0.0/16 table 98"}
	if got, err := k.Occupants(98, 10000); err != nil || !slices.Equal(got, want) {
		t.Errorf("Occupants = %q, %v; want %q", got, err, want)
	}
}

// A route through a gateway is refused as the kernel refuses an onlink
// one: a gateway that is a local address with EINVAL, any route through a
// link that is down with ENETDOWN.
func TestGatewayChecks(t *testing.T) {
	k := newKernel(t, sim.Options{})
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := netip.MustParsePrefix
	route := func(dst, gw string) tun.Route {
		return tun.Route{Table: 98, Dst: p(dst), Gateway: netip.MustParseAddr(gw), LinkIndex: index}
	}
	_, err = k.Install(&tun.Objects{
		Link: &tun.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{p("10.8.0.2/24"), p("fd00:8::2/64")}},
		Routes: []tun.Route{
			{Table: 98, Dst: p("10.8.0.0/24"), LinkIndex: index},
			{Table: 98, Dst: p("fd00:8::/64"), LinkIndex: index},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		r    tun.Route
		want error
	}{
		// vpnd's gateway routes are onlink: any gateway but a local
		// address is taken to be on the link (checked against the kernel
		// with `ip route add ... onlink`).
		{route("10.9.0.0/16", "10.8.0.1"), nil},
		{route("10.10.0.0/16", "10.7.0.1"), nil},
		{route("10.11.0.0/16", "10.8.0.2"), unix.EINVAL},
		{route("2001:db8:1::/48", "fd00:8::1"), nil},
		{route("2001:db8:2::/48", "fd00:7::1"), nil},
		{route("2001:db8:3::/48", "fd00:8::2"), unix.EINVAL},
	} {
		if _, err := k.Install(&tun.Objects{Routes: []tun.Route{tc.r}}); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("add %s: %v, want %v", tc.r, err, tc.want)
		}
	}
	// Down, the link refuses every route.
	if err := k.External().SetDown(index); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		r    tun.Route
		want error
	}{
		{route("10.12.0.0/16", "10.8.0.1"), unix.ENETDOWN},
		{route("2001:db8:4::/48", "fd00:8::1"), unix.ENETDOWN},
		{tun.Route{Table: 98, Dst: p("10.13.0.0/16"), LinkIndex: index}, unix.ENETDOWN},
	} {
		if _, err := k.Restore(&tun.Repair{LinkIndex: index, Routes: []tun.Route{tc.r}}); !errors.Is(err, tc.want) {
			t.Errorf("restore %s on a down link: %v, want %v", tc.r, err, tc.want)
		}
	}
}

// External's DeleteRule is `ip rule del`: the kernel deletes the first
// rule that matches the selectors given, which need not be the rule named.
func TestExternalDeleteRuleFirstMatch(t *testing.T) {
	k := newKernel(t, sim.Options{})
	masked := tun.Rule{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 5, UIDEnd: 5, Mask: 0x20000}
	plain := masked
	plain.Mask = 0
	if err := k.External().AddRule(masked); err != nil {
		t.Fatal(err)
	}
	if err := k.External().DeleteRule(plain); err != nil {
		t.Errorf("delete of %s with only %s there: %v, want it deleted", plain, masked, err)
	}
	if rules := k.Snapshot().Rules; len(rules) != 0 {
		t.Errorf("rules %v left", rules)
	}
	if err := k.External().AddRule(plain); err != nil {
		t.Fatal(err)
	}
	if err := k.External().DeleteRule(masked); !errors.Is(err, unix.ENOENT) {
		t.Errorf("delete of %s with only %s there: %v, want ENOENT", masked, plain, err)
	}
}

// A watch of a link that is gone already is gone at once; a watch of a
// live link is gone when the link is deleted, by vpnd or by someone else.
func TestWatchGone(t *testing.T) {
	k := newKernel(t, sim.Options{})
	gone, _, err := k.Watch(t.Context(), tun.ChangeFilter{LinkIndex: 42})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
	default:
		t.Error("a watch of a missing link is not gone")
	}
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gone, _, err = k.Watch(t.Context(), tun.ChangeFilter{LinkIndex: index})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
		t.Fatal("a watch of a live link is gone")
	default:
	}
	if !k.External().DeleteLink(index) {
		t.Fatal("DeleteLink found no link")
	}
	select {
	case <-gone:
	default:
		t.Error("a watch of a deleted link is not gone")
	}
	// A watch with no link never goes.
	gone, _, err = k.Watch(t.Context(), tun.ChangeFilter{Table: 98})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
		t.Error("a watch of no link is gone")
	default:
	}
}

// An MTU below 1280 takes IPv6 off the link, with its IPv6 addresses and
// routes, as in the kernel; until the MTU is raised, IPv6 addresses are
// refused (EINVAL) and so are IPv6 routes through the link (ENODEV).
func TestMTUBelowIPv6Minimum(t *testing.T) {
	k := newKernel(t, sim.Options{})
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := netip.MustParsePrefix
	o := &tun.Objects{
		Link: &tun.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{p("10.8.0.2/24"), p("fd00:8::2/64")}},
		Routes: []tun.Route{
			{Table: 98, Dst: p("10.8.0.0/24"), LinkIndex: index},
			{Table: 98, Dst: p("fd00:8::/64"), LinkIndex: index},
			{Table: 98, Dst: p("2001:db8::/48"), Kind: tun.Throw},
		},
	}
	if _, err := k.Install(o); err != nil {
		t.Fatal(err)
	}
	if err := k.External().SetMTU(index, 1279); err != nil {
		t.Fatal(err)
	}
	s, err := k.Read(tun.Query{LinkIndex: index, Table: 98})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Link.Addrs, o.Link.Addrs[:1]) || !slices.Equal(s.Routes, []tun.Route{o.Routes[0], o.Routes[2]}) {
		t.Errorf("at MTU 1279: addresses %v, routes %v; want IPv6's gone", s.Link.Addrs, s.Routes)
	}
	_, err = k.Restore(&tun.Repair{LinkIndex: index, Addrs: o.Link.Addrs[1:], Routes: o.Routes[1:2]})
	if !errors.Is(err, unix.EINVAL) || !errors.Is(err, unix.ENODEV) {
		t.Errorf("IPv6 on a link at MTU 1279: %v, want EINVAL for the address and ENODEV for the route", err)
	}
	done, err := k.Restore(&tun.Repair{LinkIndex: index, MTU: 1400, Addrs: o.Link.Addrs[1:], Routes: o.Routes[1:2]})
	if err != nil || done.MTU != 1400 || len(done.Addrs) != 1 || len(done.Routes) != 1 {
		t.Errorf("Restore = %+v, %v; want the MTU, the address and the route", done, err)
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
// the blocking mode asked for; names are checked as for a real TUN.
func TestCreateTUN(t *testing.T) {
	k := newKernel(t, sim.Options{})
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fl, fdfl, typ := fdFlags(t, f); fl&unix.O_NONBLOCK == 0 || fdfl&unix.FD_CLOEXEC == 0 || typ != unix.SOCK_SEQPACKET {
		t.Errorf("fd: flags %#x, fd flags %#x, type %d; want O_NONBLOCK, FD_CLOEXEC, SOCK_SEQPACKET", fl, fdfl, typ)
	}
	fb, ib, err := k.CreateTUN("vpn-tun-b", tun.TUNOptions{Blocking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	if fl, fdfl, _ := fdFlags(t, fb); fl&unix.O_NONBLOCK != 0 || fdfl&unix.FD_CLOEXEC == 0 {
		t.Errorf("blocking fd: flags %#x, fd flags %#x", fl, fdfl)
	}
	if index < 2 || ib == index {
		t.Errorf("indexes %d and %d; want distinct, above lo's", index, ib)
	}
	want := []sim.Link{
		{Name: "vpn-tun", Index: index, MTU: sim.DefaultMTU},
		{Name: "vpn-tun-b", Index: ib, MTU: sim.DefaultMTU},
	}
	if got := k.Snapshot(); !got.Equal(sim.State{Links: want}) {
		t.Errorf("Snapshot %+v, want %+v", got, want)
	}
	for _, tc := range []struct{ name, text string }{
		{"vpn-tun", fmt.Sprintf("a tun link (index %d) has this name", index)},
		{"lo", "(index 1) has this name"},
	} {
		if _, _, err := k.CreateTUN(tc.name, tun.TUNOptions{}); !errors.Is(err, tun.ErrLinkExists) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("CreateTUN(%q) = %v, want ErrLinkExists saying %q", tc.name, err, tc.text)
		}
	}
	for _, bad := range []string{"", "sixteen-bytes-xx", "a/b", "tun%d"} {
		if _, _, err := k.CreateTUN(bad, tun.TUNOptions{}); err == nil || errors.Is(err, tun.ErrLinkExists) {
			t.Errorf("CreateTUN(%q) = %v, want a name error", bad, err)
		}
	}
}

// Each packet the client writes reaches Options.Packet whole, with the
// link it came in on, while the link is up; each answer comes back as one
// message.
func TestPackets(t *testing.T) {
	type call struct {
		l   sim.Link
		pkt []byte
	}
	calls := make(chan call, 10)
	k := newKernel(t, sim.Options{Packet: func(l sim.Link, pkt []byte) [][]byte {
		calls <- call{l, bytes.Clone(pkt)}
		if bytes.Equal(pkt, []byte("silence")) {
			return nil
		}
		return [][]byte{append([]byte("re:"), pkt...), []byte("and again")}
	}})
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{Blocking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	addrs := []netip.Prefix{netip.MustParsePrefix("10.8.0.2/24"), netip.MustParsePrefix("fd00:8::2/64")}

	// A link that is down drops what its client writes.
	down, _, err := k.CreateTUN("down", tun.TUNOptions{Blocking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	if _, err := down.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Install(&tun.Objects{Link: &tun.Link{Index: index, MTU: 1400, Addrs: addrs}}); err != nil {
		t.Fatal(err)
	}
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

// The link lives until every copy of the client's end is closed, then goes
// with its routes, as a non-persistent TUN does; its watch is gone.
func TestClientCloseRemovesLink(t *testing.T) {
	k := newKernel(t, sim.Options{})
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gone, _, err := k.Watch(t.Context(), tun.ChangeFilter{LinkIndex: index})
	if err != nil {
		t.Fatal(err)
	}
	throw := tun.Route{Table: 98, Dst: netip.MustParsePrefix("192.168.0.0/16"), Kind: tun.Throw}
	_, err = k.Install(&tun.Objects{
		Link:   &tun.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix("10.8.0.2/24")}},
		Routes: []tun.Route{{Table: 98, Dst: netip.MustParsePrefix("10.8.0.0/24"), LinkIndex: index}, throw},
	})
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := k.CreateTUN("other", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	f.Close()
	<-gone // the test's own timeout guards a hang
	s := k.Snapshot()
	if len(s.Links) != 1 || s.Links[0].Name != "other" || !slices.Equal(s.Routes, []tun.Route{throw}) {
		t.Errorf("after the client closed: %+v", s)
	}
}

// A deleted link closes the model's end: the client reads EOF.
func TestLinkDeletionIsEOF(t *testing.T) {
	k := newKernel(t, sim.Options{})
	for _, del := range []struct {
		name string
		do   func(index int)
	}{
		{"Remove", func(index int) { k.Remove(&tun.Objects{Link: &tun.Link{Index: index}}) }},
		{"External().DeleteLink", func(index int) { k.External().DeleteLink(index) }},
	} {
		for _, blocking := range []bool{true, false} {
			f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{Blocking: blocking})
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
}

// Close deletes every link and waits for the readers: files handed out
// read EOF, and no goroutine is left (TestMain checks).
func TestClose(t *testing.T) {
	k := sim.New(sim.Options{})
	var files []*os.File
	for _, name := range []string{"a", "b", "c"} {
		f, _, err := k.CreateTUN(name, tun.TUNOptions{Blocking: true})
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	k.Close()
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
