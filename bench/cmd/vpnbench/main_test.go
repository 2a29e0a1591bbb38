package main

import (
	"encoding/binary"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/netnstest"
)

func TestMedianAndPercentile(t *testing.T) {
	for _, c := range []struct {
		xs          []float64
		median, p99 float64
	}{
		{[]float64{3}, 3, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 4},
		{[]float64{5, 1, 4, 2, 3}, 3, 5},
	} {
		if got := median(c.xs); got != c.median {
			t.Errorf("median(%v) = %v, want %v", c.xs, got, c.median)
		}
		if got := percentile(c.xs, 99); got != c.p99 {
			t.Errorf("p99(%v) = %v, want %v", c.xs, got, c.p99)
		}
	}
	// Nearest rank on 200 values 1..200: the 99th percentile is the 198th.
	xs := make([]float64, 200)
	for i := range xs {
		xs[i] = float64(200 - i)
	}
	if got := percentile(xs, 99); got != 198 {
		t.Errorf("p99 of 1..200 = %v, want 198", got)
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(percentile(nil, 99)) {
		t.Error("no samples must give NaN")
	}
	if xs[0] != 200 {
		t.Error("percentile sorted its argument in place")
	}
}

// interleave must rotate the order in every round, run the warm-up
// rounds unrecorded, and stop at the first error.
func TestInterleave(t *testing.T) {
	var order []string
	var recorded []bool
	mk := func(name string) func(bool) error {
		return func(rec bool) error {
			order = append(order, name)
			recorded = append(recorded, rec)
			return nil
		}
	}
	if err := interleave(2, 1, mk("A"), mk("B"), mk("C")); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(order, ""), "ABCBCACAB"; got != want {
		t.Errorf("order %s, want %s", got, want)
	}
	if want := []bool{false, false, false, true, true, true, true, true, true}; !slices.Equal(recorded, want) {
		t.Errorf("recorded %v, want %v", recorded, want)
	}
	calls := 0
	err := interleave(5, 0, func(bool) error { calls++; return os.ErrClosed })
	if err == nil || calls != 1 {
		t.Errorf("error after %d calls: %v; want the first error at once", calls, err)
	}
}

func TestFinishRatios(t *testing.T) {
	v := vpndSeries("vpnd", unitMs)
	v.Samples = []float64{2, 4, 6}
	b := baseSeries("floor", unitMs)
	b.Samples = []float64{1, 2, 3}
	empty := baseSeries("none", unitMs)
	r := newResult("x", "x", v, b, empty)
	r.finish()
	if v.Median != 4 || b.Median != 2 || b.Ratio == nil || *b.Ratio != 2 {
		t.Errorf("medians %v %v, ratio %v; want 4, 2, 2", v.Median, b.Median, b.Ratio)
	}
	if v.Ratio != nil || empty.Ratio != nil || empty.Median != 0 {
		t.Error("only baselines with samples get a ratio")
	}
}

func TestReplaceSection(t *testing.T) {
	doc := "# Bench\n\nintro\n"
	got, err := replaceSection(doc, "table 1\n")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, doc) || !strings.Contains(got, "table 1") {
		t.Fatalf("append: %q", got)
	}
	got2, err := replaceSection(got+"\noutro\n", "table 2\n")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got2, "table 1") || !strings.Contains(got2, "table 2") || !strings.HasSuffix(got2, "\noutro\n") ||
		!strings.HasPrefix(got2, doc) || strings.Count(got2, "vpnbench:begin") != 1 {
		t.Fatalf("replace: %q", got2)
	}
	if _, err := replaceSection(endMarker+"\n<!-- vpnbench:begin -->", "x"); err == nil {
		t.Error("markers in the wrong order must be refused")
	}
}

// The perf matcher must pair the request read with the reply on the same
// socket, ignoring other sockets, other sizes and failed calls.
func TestMatchServerTimes(t *testing.T) {
	script := `
   101 100.000000000: syscalls:sys_enter_recvmsg: fd: 0x00000009, msg: 0x1, flags: 0x40000000
   101 100.000001000:  syscalls:sys_exit_recvmsg: 0x30
   102 100.000100000: syscalls:sys_enter_recvmsg: fd: 0x0000000d, msg: 0x1, flags: 0x40000000
   102 100.000200000:  syscalls:sys_exit_recvmsg: 0x12c
   103 100.000300000: syscalls:sys_enter_sendmsg: fd: 0x00000004, msg: 0x1, flags: 0x0
   103 100.000400000:  syscalls:sys_exit_sendmsg: 0x40
   102 100.001000000: syscalls:sys_enter_sendmsg: fd: 0x0000000d, msg: 0x1, flags: 0x0
   102 100.001700000:  syscalls:sys_exit_sendmsg: 0xfffffffffffffff5
   102 100.001800000: syscalls:sys_enter_sendmsg: fd: 0x0000000d, msg: 0x1, flags: 0x0
   102 100.002200000:  syscalls:sys_exit_sendmsg: 0x200
   102 100.003000000: syscalls:sys_enter_recvmsg: fd: 0x0000000d, msg: 0x1, flags: 0x40000000
   102 100.003000000:  syscalls:sys_exit_recvmsg: 0x12c
   104 100.004000000: syscalls:sys_enter_sendmsg: fd: 0x0000000d, msg: 0x1, flags: 0x0
   104 100.005000500:  syscalls:sys_exit_sendmsg: 0x200
`
	times, err := matchServerTimes([]byte(script), 300)
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{2.0, 2.0005}
	if len(times) != len(want) {
		t.Fatalf("times %v, want %v", times, want)
	}
	for i := range want {
		if math.Abs(times[i]-want[i]) > 1e-9 {
			t.Errorf("times[%d] = %v ms, want %v", i, times[i], want[i])
		}
	}
	if _, err := matchServerTimes([]byte("nothing\n"), 300); err == nil {
		t.Error("a script without events must be an error")
	}
}

func TestIPCommands(t *testing.T) {
	s := routesSpec(3)
	b, b6 := s.ipBatch(1000)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 5+3+1 { // link, address, prefix route; 3 routes; the rule
		t.Fatalf("batch has %d lines:\n%s", len(lines), b)
	}
	for _, want := range []string{
		"tuntap add dev vpn-tun mode tun",
		"addr add 10.8.0.2/24 dev vpn-tun noprefixroute",
		"route add 10.8.0.0/24 dev vpn-tun table 98 proto static",
		"route add 198.18.0.16/29 dev vpn-tun table 98 proto static",
		"rule add priority 10000 uidrange 1000-1000 fwmark 0/0x20000 lookup 98",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("batch lacks %q", want)
		}
	}
	want6 := "route add unreachable default table 98 proto static\nrule add priority 10000 uidrange 1000-1000 fwmark 0/0x20000 lookup 98\n"
	if string(b6) != want6 {
		t.Errorf("-6 batch:\n%s\nwant:\n%s", b6, want6)
	}
	// 10,000 distinct routes fit the benchmarking range.
	r := routesSpec(10000).Routes
	last := r[len(r)-1]
	if !last.Addr().Is4() || last.Addr().As4()[0] != 198 || last.Addr().As4()[1] != 19 {
		t.Errorf("route 9999 is %v, want one in 198.18.0.0/15", last)
	}
}

func TestRouteKeyAndForAdd(t *testing.T) {
	attr := func(typ uint16, v []byte) []byte {
		a := make([]byte, 4, 8+len(v))
		binary.NativeEndian.PutUint16(a, uint16(4+len(v)))
		binary.NativeEndian.PutUint16(a[2:], typ)
		a = append(a, v...)
		for len(a)%4 != 0 {
			a = append(a, 0)
		}
		return a
	}
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	hdr := []byte{unix.AF_INET, 24, 0, 0, unix.RT_TABLE_UNSPEC, unix.RTPROT_STATIC, unix.RT_SCOPE_LINK, unix.RTN_UNICAST, 0x10, 0, 0, 0}
	p := append(append([]byte(nil), hdr...), attr(unix.RTA_TABLE, u32(98))...)
	p = append(p, attr(unix.RTA_DST, []byte{10, 8, 0, 0})...)
	p = append(p, attr(unix.RTA_CACHEINFO, make([]byte, 16))...)
	p = append(p, attr(unix.RTA_OIF, u32(7))...)
	if got := routeTable(p); got != 98 {
		t.Errorf("table %d, want 98 (from RTA_TABLE)", got)
	}
	add := routeForAdd(p)
	if binary.NativeEndian.Uint32(add[8:]) != 0 {
		t.Error("routeForAdd kept the rtm_flags")
	}
	var types []uint16
	eachAttr(add[unix.SizeofRtMsg:], func(typ uint16, _ []byte) { types = append(types, typ) })
	if !slices.Equal(types, []uint16{unix.RTA_TABLE, unix.RTA_DST, unix.RTA_OIF}) {
		t.Errorf("attributes %v, want table, dst, oif", types)
	}
	if routeKey(add) != routeKey(p) {
		t.Errorf("re-add key %q differs from the dumped route's %q", routeKey(add), routeKey(p))
	}
	q := append(append([]byte(nil), hdr...), attr(unix.RTA_TABLE, u32(98))...)
	q = append(q, attr(unix.RTA_DST, []byte{10, 9, 0, 0})...)
	if routeKey(q) == routeKey(p) {
		t.Error("two destinations, one key")
	}
}

// The echo server answers in vpnd's framing, with the status result for
// status and {} otherwise, and closes the descriptors it receives.
func TestEchoServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "echo.sock")
	go serveEcho(path, []byte(`{"state":"disconnected","vpn":null}`))
	var c *frameConn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = dialFrame(path); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, _, err := roundTrip(c, c.request("status", []byte("{}"), 0), -1)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"jsonrpc":"2.0","id":1,"result":{"state":"disconnected","vpn":null}}`; string(r) != want {
		t.Errorf("status: %s, want %s", r, want)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	r, _, err = roundTrip(c, c.request("protect", []byte("{}"), 1), fds[0])
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[0])
	if want := `{"jsonrpc":"2.0","id":2,"result":{}}`; string(r) != want {
		t.Errorf("protect: %s, want %s", r, want)
	}
	// The echo server closed its copy: the pair's other end sees no peer.
	if _, err := unix.Write(fds[1], []byte("x")); err == nil {
		t.Error("the echo server kept the descriptor it was sent")
	}
	if !hasError([]byte(`{"jsonrpc":"2.0","id":3,"error":{"code":201}}`)) || hasError(r) {
		t.Error("hasError")
	}
	if errorCode([]byte(`{"jsonrpc":"2.0","id":3,"error":{"code":2203002,"message":"m"}}`)) != 2203002 {
		t.Error("errorCode")
	}
}

// The self-heal watcher must not call the table complete from a picture
// of the middle of the flush: when the flush's last deletion is answered,
// its reader may still have the notifications of later deletions queued,
// after having seen vpnd re-add the earlier ones.
func TestTableWatchWaitsForEveryDeletion(t *testing.T) {
	want := map[string]bool{"a": true, "b": true, "c": true, "d": true}
	isDone := func(w *tableWatch) bool {
		select {
		case <-w.done:
			return true
		default:
			return false
		}
	}
	w := newTableWatch(want)
	// Read so far: the flush deleted a and b, vpnd re-added both. The
	// deletion of c is still queued; d's deletion failed (ESRCH), so no
	// notification will come for it.
	w.apply([]routeEvent{{del: true, key: "a"}, {del: true, key: "b"}, {key: "a"}, {key: "b"}})
	w.flushed([]string{"a", "b", "c"})
	if isDone(w) {
		t.Fatal("complete before the deletion of c was read")
	}
	w.apply([]routeEvent{{del: true, key: "c"}})
	if isDone(w) {
		t.Fatal("complete while c is missing")
	}
	w.apply([]routeEvent{{key: "c"}})
	if !isDone(w) || w.overflow {
		t.Fatal("not complete once every deletion was read and every route is back")
	}
	// A second round of vpnd's, after completion, changes nothing.
	w.apply([]routeEvent{{key: "c"}})

	// Lost notifications: completion is found by dumping instead.
	w = newTableWatch(want)
	w.lost()
	if isDone(w) {
		t.Fatal("overflow before the flush ended must wait for it")
	}
	w.flushed([]string{"a"})
	if !isDone(w) || !w.overflow {
		t.Fatal("an overflow must end the watch, marked as such")
	}
}

func TestNFTScript(t *testing.T) {
	got := string(typicalSpec().nftScript(1000))
	for _, want := range []string{
		"table inet vpnd {",
		"\tset failclosed_v6 {",
		"elements = { 1000 }",
		"type filter hook output priority filter; policy accept;",
		"meta oiftype loopback accept",
		`oifname "vpn-tun" accept`,
		"meta mark & 0x00020000 != 0x00000000 accept",
		"meta nfproto ipv6 meta skuid @failclosed_v6 drop",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("nft script lacks %q:\n%s", want, got)
		}
	}
	// An IPv4 VPN drops nothing of IPv4 and has no lockdown.
	for _, not := range []string{"failclosed_v4", "lockdown"} {
		if strings.Contains(got, not) {
			t.Errorf("nft script has %s:\n%s", not, got)
		}
	}
}

// The three baselines leave the same kernel state (link settings,
// addresses, routes, rules and vpnd's nftables table, as the firewall
// package writes it), and their teardown leaves nothing, in a network
// namespace of the test's own. (vpnbench compares them with vpnd's before
// it measures.)
func TestBaselinesDoTheSameWork(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	t.Chdir(t.TempDir()) // the batch files
	const uid = 1000
	routes := 3
	s := specFor(routes)
	st := &workerState{batches: map[int][3]string{}}
	fw, err := st.firewall()
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	files, err := st.batchFiles(routes, uid)
	if err != nil {
		t.Fatal(err)
	}
	state := func() string {
		t.Helper()
		lines, err := kernelState(fw, s.nftSpec(uid))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(lines, "\n")
	}
	empty := state()
	if !strings.Contains(empty, "link vpn-tun: none") || !strings.Contains(empty, "nft: no table inet vpnd") {
		t.Fatalf("fresh namespace:\n%s", empty)
	}
	var floorState string
	for _, c := range []struct {
		name  string
		setUp func() (*os.File, error)
	}{
		{"floor", func() (*os.File, error) { return floorSetUp(fw, s, uid) }},
		{"ip-sequence", func() (*os.File, error) { return nil, ipSequence(s, uid, files[2]) }},
		{"ip-batch", func() (*os.File, error) { return nil, ipBatch(files) }},
	} {
		f, err := c.setUp()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := state()
		if err := teardown(fw, uid); err != nil {
			t.Fatalf("%s teardown: %v", c.name, err)
		}
		if f != nil {
			f.Close()
		}
		if c.name == "floor" {
			floorState = got
			for _, want := range []string{
				"route 198.18.0.16/29 type=1 proto=4 scope=253 dev=vpn-tun",
				"rule family=10 priority=10000 uidrange=1000-1000 fwmark=0x0/0x20000 table=98",
				"nft meta nfproto ipv6 meta skuid @failclosed_v6 drop",
				"nft table inet vpnd holds what vpnd writes for the VPN: true",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("floor's state lacks %q:\n%s", want, got)
				}
			}
		} else if got != floorState {
			t.Errorf("%s leaves\n%s\nthe floor\n%s", c.name, got, floorState)
		}
		if after := state(); after != empty {
			t.Errorf("after %s's teardown:\n%s", c.name, after)
		}
	}
	// Nothing else of nftables is left either.
	out, err := exec.Command("nft", "list", "ruleset").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("nft list ruleset after the teardowns: %v\n%s", err, out)
	}
}
