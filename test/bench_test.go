package test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/wire"
)

// The promise that a VPN is gone within 100 ms is a timing claim, so it lives here
// and is shown by the printed figures, not asserted:
//
//	go test -run '^$' -bench . -benchtime 20x ./test/
//
// Each ending is timed from its trigger to the moment the kernel, read
// through netlink dumps in vpnd's namespace in a tight loop, has no link,
// rule or route of vpnd's left.

// nlProbe is a NETLINK_ROUTE socket opened inside a test namespace. The
// socket stays in that namespace whatever thread uses it, so the test
// process never enters the namespace for longer than one socket(2).
type nlProbe struct {
	fd  int
	seq uint32
	buf []byte
}

// openProbe opens a probe in namespace ns and closes it when tb ends.
func openProbe(tb testing.TB, ns string) *nlProbe {
	tb.Helper()
	fd, err := socketInNetns("/run/netns/"+ns, unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		tb.Fatalf("netlink socket in %s: %v", ns, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		tb.Fatal(err)
	}
	p := &nlProbe{fd: fd, buf: make([]byte, 1<<20)}
	tb.Cleanup(func() { unix.Close(p.fd) })
	return p
}

// socketInNetns creates a socket in the namespace at nsPath on a locked
// thread and moves the thread back. The thread is unlocked only once it is
// back home; if that fails it stays locked and dies with its goroutine.
func socketInNetns(nsPath string, domain, typ, proto int) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		defer home.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		fd, serr := unix.Socket(domain, typ, proto)
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			if serr == nil {
				unix.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("setns back home: %w (thread left locked)", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fd, serr}
	}()
	r := <-ch
	return r.fd, r.err
}

// dump sends an RTM_GET* dump request with hdr as its family header and
// calls fn with each reply's payload (header and attributes).
func (p *nlProbe) dump(typ uint16, hdr []byte, fn func(data []byte)) error {
	for attempt := 0; attempt < 10; attempt++ {
		interrupted, err := p.dumpOnce(typ, hdr, fn)
		if err != nil || !interrupted {
			return err
		}
	}
	return errors.New("netlink dump interrupted 10 times")
}

func (p *nlProbe) dumpOnce(typ uint16, hdr []byte, fn func(data []byte)) (bool, error) {
	p.seq++
	req := make([]byte, unix.SizeofNlMsghdr+len(hdr))
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], typ)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], p.seq)
	copy(req[unix.SizeofNlMsghdr:], hdr)
	if err := unix.Sendto(p.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("netlink send: %w", err)
	}
	interrupted := false
	for {
		n, _, err := unix.Recvfrom(p.fd, p.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("netlink recv: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(p.buf[:n])
		if err != nil {
			return false, err
		}
		for _, m := range msgs {
			if m.Header.Seq != p.seq {
				continue
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return interrupted, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
						return false, fmt.Errorf("netlink dump: %w", syscall.Errno(-e))
					}
				}
				return interrupted, nil
			default:
				fn(m.Data)
			}
		}
	}
}

// attrs walks the rtattrs in b.
func attrs(b []byte, fn func(typ uint16, val []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&0x3fff, b[4:l])
		step := (l + 3) &^ 3
		if step > len(b) {
			return
		}
		b = b[step:]
	}
}

// leftovers counts vpnd's objects: links named ifname, rules at priority
// that look up table (both families), and routes in table (both families).
func (p *nlProbe) leftovers(ifname string, table, priority int) (links, rules, routes int, err error) {
	name := append([]byte(ifname), 0)
	err = p.dump(unix.RTM_GETLINK, make([]byte, unix.SizeofIfInfomsg), func(d []byte) {
		if len(d) < unix.SizeofIfInfomsg {
			return
		}
		attrs(d[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
			if typ == unix.IFLA_IFNAME && string(v) == string(name) {
				links++
			}
		})
	})
	if err != nil {
		return
	}
	// fib_rule_hdr and rtmsg are both 12 bytes; byte 4 is the table.
	tableOf := func(d []byte) int {
		t := int(d[4])
		attrs(d[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
			if typ == unix.RTA_TABLE && len(v) == 4 { // FRA_TABLE has the same number
				t = int(binary.NativeEndian.Uint32(v))
			}
		})
		return t
	}
	err = p.dump(unix.RTM_GETRULE, make([]byte, unix.SizeofRtMsg), func(d []byte) {
		if len(d) < unix.SizeofRtMsg || tableOf(d) != table {
			return
		}
		attrs(d[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
			if typ == unix.FRA_PRIORITY && len(v) == 4 && int(binary.NativeEndian.Uint32(v)) == priority {
				rules++
			}
		})
	})
	if err != nil {
		return
	}
	err = p.dump(unix.RTM_GETROUTE, make([]byte, unix.SizeofRtMsg), func(d []byte) {
		if len(d) >= unix.SizeofRtMsg && tableOf(d) == table {
			routes++
		}
	})
	return
}

// clean reports whether nothing of d's VPN is left in the kernel.
func (p *nlProbe) clean(tb testing.TB, d *daemon) bool {
	l, ru, ro, err := p.leftovers(d.ifname, d.table, d.priority)
	if err != nil {
		tb.Fatal(err)
	}
	return l+ru+ro == 0
}

// waitClean polls the kernel and returns when d's VPN is gone. It sleeps
// between dumps as long as the last dump took (at least 50 µs), so that
// dumping a large table again and again takes at most half a CPU from the
// teardown it measures. hangGuard stops a hang.
func (p *nlProbe) waitClean(tb testing.TB, d *daemon) time.Time {
	tb.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		start := time.Now()
		if p.clean(tb, d) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			tb.Fatalf("vpnd's VPN still in the kernel after %v: %v", hangGuard, d.leftovers(tb))
		}
		time.Sleep(max(50*time.Microsecond, time.Since(start)))
	}
}

// startBenchDaemon starts vpnd in namespace ns like startDaemon, for a
// testing.B. Its cleanup stops vpnd with SIGTERM and checks the
// namespace, unless the benchmark already stopped it.
func startBenchDaemon(b *testing.B, ns string) *daemon {
	b.Helper()
	d := &daemon{
		t: b, ns: ns, dir: newDaemonDir(b), stderr: &syncBuffer{}, exitedCh: make(chan struct{}),
		ifname: defaultIfname, table: defaultTable, priority: defaultPriority, mark: defaultMark, sim: simBackend,
	}
	d.sock = filepath.Join(d.dir, "vpnd.sock")
	d.launch(b, "--log-level", "info")
	return d
}

// teardownWays are the ways a VPN ends. Each returns the trigger time, after
// setting up a VPN (untimed) and firing the trigger.
var teardownWays = []string{"destroy", "ownerConnClosed", "ownerKilled", "tunClosed", "linkDeleted", "SIGTERM", "SIGINT"}

func BenchmarkTeardown(b *testing.B) {
	kernelOnly(b, "how fast the kernel is clean after each ending")
	requireRoot(b)
	for _, way := range teardownWays {
		b.Run(way, func(b *testing.B) {
			ns := newNetns(b)
			probe := openProbe(b, ns)
			perDaemon := way == "SIGTERM" || way == "SIGINT"
			var d *daemon
			if !perDaemon {
				d = startBenchDaemon(b, ns)
			}
			var times []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if perDaemon {
					d = startBenchDaemon(b, ns)
				}
				times = append(times, timeTeardown(b, d, probe, way, richConfig))
				if perDaemon {
					if code := d.waitExit(b); code != 0 {
						b.Fatalf("vpnd exited %d after %s", code, way)
					}
					d.stop(b)
				}
			}
			reportTimes(b, times, "ms/teardown")
		})
	}
}

// timeTeardown sets up a VPN (untimed), ends it in way, and returns the
// time from the trigger until probe sees nothing of vpnd's left. The
// benchmark timer runs for that time only.
func timeTeardown(b *testing.B, d *daemon, probe *nlProbe, way, params string) time.Duration {
	b.StopTimer()
	trigger := armTeardown(b, d, way, params)
	b.StartTimer()
	start := time.Now()
	trigger()
	end := probe.waitClean(b, d)
	b.StopTimer()
	return end.Sub(start)
}

// armTeardown sets up a VPN for one ending and returns the function that
// triggers it. The owner is the test process (uid 0) except for
// ownerKilled, where it is a rawclient of uid killedOwner (uidNormal if
// not given) holding fd and connection.
func armTeardown(b testing.TB, d *daemon, way, params string, killedOwner ...uint32) func() {
	b.Helper()
	if way == "ownerKilled" {
		uid := uint32(uidNormal)
		if len(killedOwner) > 0 {
			uid = killedOwner[0]
		}
		c := d.dial(b, uid)
		setUpOK(b, c.response(c.send("setUp", params, "")))
		return func() { c.cmd.Process.Signal(syscall.SIGKILL) }
	}
	c, err := wire.Dial(d.sock)
	if err != nil {
		b.Fatal(err)
	}
	tv := unix.NsecToTimeval(hangGuard.Nanoseconds())
	unix.SetsockoptTimeval(c.FD(), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	tunFD := setUpKeep(b, c, 1, params)
	b.Cleanup(func() { c.Close(); unix.Close(tunFD) })
	switch way {
	case "destroy":
		return func() { c.Send([]byte(request(2, "destroy", "{}", 0) + "\n")) }
	case "ownerConnClosed":
		return func() { c.Close() }
	case "tunClosed":
		return func() { unix.Close(tunFD); tunFD = -1 }
	case "linkDeleted":
		return func() {
			if _, err := nsIPErr(d.ns, "link", "del", d.ifname); err != nil {
				b.Error(err)
			}
		}
	case "SIGTERM":
		return func() { d.cmd.Process.Signal(syscall.SIGTERM) }
	case "SIGINT":
		return func() { d.cmd.Process.Signal(syscall.SIGINT) }
	}
	b.Fatalf("unknown ending %q", way)
	return nil
}

// reportTimes reports the mean (as unit), median and maximum in ms.
func reportTimes(b *testing.B, times []time.Duration, unit string) {
	if len(times) == 0 {
		return
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	var sum time.Duration
	for _, t := range times {
		sum += t
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(sum/time.Duration(len(times))), unit)
	b.ReportMetric(ms(times[len(times)/2]), "p50-ms")
	b.ReportMetric(ms(times[len(times)-1]), "max-ms")
}

// benchDaemonConn starts vpnd in a fresh namespace and connects to it as
// root; both end with the benchmark.
func benchDaemonConn(b *testing.B) (*daemon, *wire.Conn) {
	b.Helper()
	requireRoot(b)
	d := startBenchDaemon(b, newNetns(b))
	c, err := wire.Dial(d.sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return d, c
}

// BenchmarkSetUpDestroy is one setUp (with the TUN fd back) and destroy
// through the socket, as root, with a two-family VPN.
func BenchmarkSetUpDestroy(b *testing.B) {
	d, c := benchDaemonConn(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		fd := setUpKeep(b, c, 2*i+1, richConfig)
		writeLine(b, c, request(2*i+2, "destroy", "{}", 0))
		ok(b, mustRead(b, c))
		unix.Close(fd)
	}
	b.StopTimer()
	if p := d.leftovers(b); len(p) > 0 {
		b.Errorf("after destroy: %v", p)
	}
}

// BenchmarkSelfHeal measures how long vpnd takes to restore a rule that
// someone deleted: from the moment `ip rule del` has returned until the
// kernel shows the rule again. Repairs are rate-limited (5, then one per
// 2 s), so each iteration first waits, untimed, for the bucket to refill;
// run it with a fixed count, e.g. -benchtime=10x.
func BenchmarkSelfHeal(b *testing.B) {
	kernelOnly(b, "kernel objects changed behind vpnd's back")
	if b.N > 50 {
		b.Skipf("b.N = %d: each iteration waits 2 s for the repair budget; use -benchtime=10x", b.N)
	}
	d, c := benchDaemonConn(b)
	ns := d.ns
	probe := openProbe(b, ns)
	fd := setUpKeep(b, c, 1, richConfig)
	defer unix.Close(fd)
	_, want, _, err := probe.leftovers(d.ifname, d.table, d.priority)
	if err != nil {
		b.Fatal(err)
	}
	var times []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		time.Sleep(2 * time.Second) // refill one repair token
		if out, err := exec.Command("ip", "-n", ns, "-6", "rule", "del", "priority", "10000", "uidrange", "0-0").CombinedOutput(); err != nil {
			b.Fatalf("ip rule del: %v: %s", err, out)
		}
		start := time.Now()
		b.StartTimer()
		deadline := start.Add(hangGuard)
		for {
			_, rules, _, err := probe.leftovers(d.ifname, d.table, d.priority)
			if err != nil {
				b.Fatal(err)
			}
			if rules == want {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("rule not restored after %v", hangGuard)
			}
			time.Sleep(50 * time.Microsecond)
		}
		times = append(times, time.Since(start))
	}
	b.StopTimer()
	reportTimes(b, times, "ms/repair")
}

// largeConfig is a config at the limit of 10,000
// routes in all: 9,900 included IPv4 routes and 100 excluded ones, plus an IPv6 address.
func largeConfig() string {
	var b strings.Builder
	b.WriteString(`{"addresses":["10.200.0.2/16","fd00::2/64"],"routes":[`)
	for i := 0; i < 9900; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"10.%d.%d.0/24"`, i/256, i%256)
	}
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, `,{"destination":{"address":{"address":"10.%d.%d.128"},"prefixLength":25},"isExcludedRoute":true}`, i/256, i%256)
	}
	b.WriteString(`]}`)
	return b.String()
}

// BenchmarkLargeConfig times setUp and destroy of a VPN with 10,000
// routes, separately, through the socket.
func BenchmarkLargeConfig(b *testing.B) {
	kernelOnly(b, "the kernel's cost of 10,000 routes")
	d, c := benchDaemonConn(b)
	cfg := largeConfig()
	var up, down time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		fd := setUpKeep(b, c, 2*i+1, cfg)
		up += time.Since(start)
		start = time.Now()
		writeLine(b, c, request(2*i+2, "destroy", "{}", 0))
		ok(b, mustRead(b, c))
		down += time.Since(start)
		unix.Close(fd)
	}
	b.StopTimer()
	b.ReportMetric(float64(up.Milliseconds())/float64(b.N), "ms/setUp")
	b.ReportMetric(float64(down.Milliseconds())/float64(b.N), "ms/destroy")
	if p := d.leftovers(b); len(p) > 0 {
		b.Errorf("after destroy: %v", p)
	}
}
