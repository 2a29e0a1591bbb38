// Command soak runs vpnd through many setUp/protect/destroy cycles with
// random owner deaths and reports whether anything leaks. It is not part
// of `go test`; run it as root from the module root:
//
//	go run ./test/soak -n 10000 -timeout 10m
//
// It creates its own network namespace (soak-<random>), runs vpnd inside
// it with `ip netns exec`, and deletes the namespace on exit, on SIGINT and
// on SIGTERM. Each cycle sets a two-family VPN up, protects a UDP socket,
// and ends the VPN in one of four ways, chosen at random: destroy, the
// owner's connection closes, the owner closes only the TUN fd, or an owner
// process holding both is killed with SIGKILL. A subscriber checks that
// every VPN ends with one notification of the expected reason.
//
// It prints vpnd's fd count, RSS (VmRSS), thread count and goroutine
// count at the start, every 1000 cycles and at the end. The first three
// come from /proc; the goroutine count from vpnd's log: vpnd runs with
// --log-level info --log-format json, logs a "runtime stats" line (with
// goroutines, fds and connections) on SIGUSR1, and the soak reads the new
// part of the log file after each signal. The soak exits non-zero if
// vpnd's fd count or goroutine count grew (both measured at the end after
// letting connections settle), anything of vpnd's is left in the kernel,
// any cycle failed, or vpnd did not exit 0 on SIGTERM.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/protocol"
)

// config has both families, included and excluded (throw) routes.
const config = `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["198.51.100.0/24","2001:db8::/32",` +
	`{"destination":{"address":{"address":"198.51.100.128"},"prefixLength":25},"isExcludedRoute":true},` +
	`{"destination":{"address":{"address":"2001:db8:1::"},"prefixLength":48},"isExcludedRoute":true}]}`

const (
	ifname     = "vpn-tun"
	table      = 98
	priority   = 10000
	protectBit = 0x20000
)

// The ways a cycle's VPN ends.
const (
	endDestroy = iota
	endConnClose
	endTUNClose
	endKill
	numEnds
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-child" {
		os.Exit(child(os.Args[2]))
	}
	os.Exit(run())
}

// child is an owner process for the kill ending: it sets a VPN up, says
// UP, and holds fd and connection until it is killed.
func child(sock string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, sock)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	f, _, err := c.SetUpRaw(ctx, json.RawMessage(config))
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer f.Close()
	fmt.Println("UP")
	os.Stdin.Read(make([]byte, 1)) // until killed, or the parent goes away
	return 0
}

type soak struct {
	ns, dir, sock string
	vpnd          *exec.Cmd
	vpndDone      chan struct{}
	vpndLog       *os.File
	logOff        int64 // how far runtimeStats has read vpnd's log
	self          string
	events        <-chan protocol.StateChanged
	counts        [numEnds]int
	failures      int
}

func run() int {
	n := flag.Int("n", 10000, "number of cycles")
	timeout := flag.Duration("timeout", 10*time.Minute, "stop after this long even if fewer cycles ran")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "soak: must run as root (network namespaces)")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		if s, ok := <-sigs; ok {
			fmt.Fprintf(os.Stderr, "soak: %v: stopping\n", s)
			cancel()
		}
	}()

	s := &soak{}
	defer s.cleanup()
	if err := s.start(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	fds0, rss0, thr0 := s.vpndStats()
	rt0, err := s.runtimeStats()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	fmt.Printf("start: vpnd pid %d in netns %s: fds %d, VmRSS %d kB, threads %d, goroutines %d (connections %d)\n",
		s.vpnd.Process.Pid, s.ns, fds0, rss0, thr0, rt0.Goroutines, rt0.Connections)

	begin := time.Now()
	done := 0
	for done < *n && ctx.Err() == nil {
		if err := s.cycle(ctx, mrand.IntN(numEnds)); err != nil {
			if ctx.Err() != nil {
				break
			}
			s.failures++
			fmt.Fprintf(os.Stderr, "soak: cycle %d: %v\n", done, err)
			if s.failures > 20 {
				fmt.Fprintln(os.Stderr, "soak: too many failures, stopping")
				break
			}
			s.waitNoVPN()
		}
		done++
		if done%1000 == 0 {
			fds, rss, thr := s.vpndStats()
			gor := "?"
			if rt, err := s.runtimeStats(); err != nil {
				fmt.Fprintf(os.Stderr, "soak: cycle %d: %v\n", done, err)
			} else {
				gor = strconv.Itoa(rt.Goroutines)
			}
			fmt.Printf("cycle %d: fds %d, VmRSS %d kB, threads %d, goroutines %s, %.1f cycles/s\n",
				done, fds, rss, thr, gor, float64(done)/time.Since(begin).Seconds())
		}
	}
	elapsed := time.Since(begin)
	// Let the last teardown's descriptors close and connections' goroutines
	// end before the final count.
	var fds1, rss1, thr1 int
	var rt1 rtStats
	var rtErr error
	for i := 0; i < 50; i++ {
		fds1, rss1, thr1 = s.vpndStats()
		rt1, rtErr = s.runtimeStats()
		if fds1 <= fds0 && rtErr == nil && rt1.Goroutines <= rt0.Goroutines {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("end: %d cycles in %v (%.1f cycles/s): %v by destroy/connClose/tunClose/kill\n",
		done, elapsed.Round(time.Millisecond), float64(done)/elapsed.Seconds(), s.counts)
	fmt.Printf("end: vpnd fds %d (start %d), VmRSS %d kB (start %d), threads %d (start %d), goroutines %d (start %d), connections %d (start %d), failed cycles %d\n",
		fds1, fds0, rss1, rss0, thr1, thr0, rt1.Goroutines, rt0.Goroutines, rt1.Connections, rt0.Connections, s.failures)

	status := 0
	if fds1 > fds0 {
		fmt.Println("FAIL: vpnd's fd count grew")
		status = 1
	}
	if rtErr != nil {
		fmt.Println("FAIL:", rtErr)
		status = 1
	} else if rt1.Goroutines > rt0.Goroutines {
		fmt.Println("FAIL: vpnd's goroutine count grew")
		status = 1
	}
	if left := s.leftovers(); len(left) > 0 {
		fmt.Println("FAIL: left in the kernel:", strings.Join(left, "; "))
		status = 1
	}
	if s.failures > 0 {
		fmt.Println("FAIL: some cycles failed")
		status = 1
	}
	if err := s.stopVPND(); err != nil {
		fmt.Println("FAIL:", err)
		status = 1
	}
	if status == 0 {
		fmt.Println("PASS")
	}
	return status
}

func (s *soak) start() error {
	b := make([]byte, 4)
	rand.Read(b)
	s.ns = "soak-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", s.ns).CombinedOutput(); err != nil {
		s.ns = ""
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	if out, err := exec.Command("ip", "-n", s.ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %v: %s", err, out)
	}
	dir, err := os.MkdirTemp("", "vpnd-soak-")
	if err != nil {
		return err
	}
	s.dir = dir
	s.sock = filepath.Join(dir, "vpnd.sock")
	if s.self, err = os.Executable(); err != nil {
		return err
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" {
		return fmt.Errorf("find the module root (go env GOMOD): %v", err)
	}
	vpndBin := filepath.Join(dir, "vpnd")
	build := exec.Command("go", "build", "-o", vpndBin, "./cmd/vpnd")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/vpnd: %v: %s", err, out)
	}
	if s.vpndLog, err = os.Create(filepath.Join(dir, "vpnd.log")); err != nil {
		return err
	}
	s.vpnd = exec.Command("ip", "netns", "exec", s.ns, vpndBin, "--socket", s.sock, "--log-level", "info", "--log-format", "json")
	s.vpnd.Stdout, s.vpnd.Stderr = s.vpndLog, s.vpndLog
	if err := s.vpnd.Start(); err != nil {
		return err
	}
	s.vpndDone = make(chan struct{})
	go func() { s.vpnd.Wait(); close(s.vpndDone) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := dialUnix(s.sock); err == nil {
			unix.Close(c)
			break
		}
		select {
		case <-s.vpndDone:
			return fmt.Errorf("vpnd exited at start: %s", s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vpnd not ready: %s", s.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := client.Dial(context.Background(), s.sock)
	if err != nil {
		return err
	}
	if s.events, err = sub.Subscribe(ctx); err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond) // readiness probe's connection closes
	return nil
}

func dialUnix(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// cycle runs one setUp/protect/end cycle and checks the notifications.
func (s *soak) cycle(ctx context.Context, end int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s.counts[end]++
	admin, err := client.Dial(ctx, s.sock)
	if err != nil {
		return err
	}
	defer admin.Close()

	var owner *client.Client
	var tun *os.File
	var kid *exec.Cmd
	if end == endKill {
		kid = exec.Command(s.self, "-child", s.sock)
		stdin, _ := kid.StdinPipe()
		defer stdin.Close()
		out, _ := kid.StdoutPipe()
		if err := kid.Start(); err != nil {
			return err
		}
		defer kid.Wait()
		defer kid.Process.Kill()
		line, _ := bufio.NewReader(out).ReadString('\n')
		if strings.TrimSpace(line) != "UP" {
			return fmt.Errorf("child owner: %q", line)
		}
	} else {
		if owner, err = client.Dial(ctx, s.sock); err != nil {
			return err
		}
		defer owner.Close()
		if tun, _, err = owner.SetUpRaw(ctx, json.RawMessage(config)); err != nil {
			return fmt.Errorf("setUp: %w", err)
		}
		defer tun.Close()
	}
	if err := s.wantEvent(ctx, "setUp", true); err != nil {
		return err
	}

	// protect, by the owner (or by root, for the child's VPN).
	protector := admin
	if owner != nil {
		protector = owner
	}
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(sock)
	if err := protector.ProtectFD(ctx, sock); err != nil {
		return fmt.Errorf("protect: %w", err)
	}
	if m, err := unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_MARK); err != nil || m&protectBit == 0 {
		return fmt.Errorf("protect: SO_MARK %#x (%v)", m, err)
	}

	var want []string
	switch end {
	case endDestroy:
		if err := owner.Destroy(ctx); err != nil {
			return fmt.Errorf("destroy: %w", err)
		}
		want = []string{"destroy"}
	case endConnClose:
		owner.Close() // the TUN fd stays open until the deferred close
		want = []string{"ownerGone"}
	case endTUNClose:
		tun.Close()
		want = []string{"linkGone"}
	case endKill:
		kid.Process.Signal(syscall.SIGKILL)
		want = []string{"ownerGone", "linkGone"}
	}
	return s.wantEvent(ctx, strings.Join(want, "|"), false)
}

// wantEvent waits for the next notification and checks its reason (one of
// a |-separated list) and isConnected.
func (s *soak) wantEvent(ctx context.Context, reasons string, connected bool) error {
	select {
	case ev, ok := <-s.events:
		if !ok {
			return errors.New("the subscriber's connection ended")
		}
		for _, r := range strings.Split(reasons, "|") {
			if ev.Reason == r && ev.IsConnected == connected {
				return nil
			}
		}
		return fmt.Errorf("notification reason %q connected %v, want %s connected %v", ev.Reason, ev.IsConnected, reasons, connected)
	case <-ctx.Done():
		return fmt.Errorf("no %s notification: %w", reasons, ctx.Err())
	}
}

// waitNoVPN drains notifications after a failed cycle until no VPN is up.
func (s *soak) waitNoVPN() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, s.sock)
	if err != nil {
		return
	}
	defer c.Close()
	c.Destroy(ctx)
	for {
		select {
		case <-s.events:
		case <-time.After(300 * time.Millisecond):
			return
		}
	}
}

// vpndStats reads vpnd's fd count, VmRSS (kB) and thread count.
func (s *soak) vpndStats() (fds, rss, threads int) {
	pid := s.vpnd.Process.Pid
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			rss, _ = strconv.Atoi(f[0])
		case "Threads":
			threads, _ = strconv.Atoi(f[0])
		}
	}
	return len(ents), rss, threads
}

// rtStats is what vpnd logs on SIGUSR1.
type rtStats struct {
	Msg         string `json:"msg"`
	Goroutines  int    `json:"goroutines"`
	FDs         int    `json:"fds"`
	Connections int    `json:"connections"`
}

// runtimeStats sends vpnd SIGUSR1 and waits for the "runtime stats" line
// it logs. It reads the log file from s.logOff on through its own
// descriptor (vpnd shares the offset of s.vpndLog's), only complete lines,
// and skips what was logged before the signal, so a line from an earlier
// signal that came late is not taken for this one's.
func (s *soak) runtimeStats() (rtStats, error) {
	f, err := os.Open(s.vpndLog.Name())
	if err != nil {
		return rtStats{}, err
	}
	defer f.Close()
	// next reads the complete lines logged since s.logOff and returns the
	// first runtime stats line among them, if any.
	next := func() (rtStats, bool, error) {
		fi, err := f.Stat()
		if err != nil || fi.Size() <= s.logOff {
			return rtStats{}, false, err
		}
		buf := make([]byte, fi.Size()-s.logOff)
		n, err := f.ReadAt(buf, s.logOff)
		if err != nil && n == 0 {
			return rtStats{}, false, err
		}
		buf = buf[:n]
		for {
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				return rtStats{}, false, nil // an incomplete line stays for the next read
			}
			line := buf[:i]
			buf = buf[i+1:]
			s.logOff += int64(i + 1)
			if !bytes.Contains(line, []byte(`"runtime stats"`)) {
				continue
			}
			var rt rtStats
			if json.Unmarshal(line, &rt) == nil && rt.Msg == "runtime stats" {
				return rt, true, nil
			}
		}
	}
	for { // skip what is there already
		if _, ok, err := next(); err != nil {
			return rtStats{}, err
		} else if !ok {
			break
		}
	}
	if err := s.vpnd.Process.Signal(syscall.SIGUSR1); err != nil {
		return rtStats{}, fmt.Errorf("SIGUSR1 to vpnd: %w", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		rt, ok, err := next()
		if err != nil {
			return rtStats{}, err
		}
		if ok {
			return rt, nil
		}
		if time.Now().After(deadline) {
			return rtStats{}, errors.New("no runtime stats line in vpnd's log within 5s of SIGUSR1")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leftovers lists vpnd's objects still in the namespace, read with ip.
func (s *soak) leftovers() []string {
	var left []string
	if out, err := exec.Command("ip", "-n", s.ns, "link", "show", ifname).CombinedOutput(); err == nil {
		left = append(left, "link: "+strings.TrimSpace(string(out)))
	}
	for _, fam := range []string{"-4", "-6"} {
		out, _ := exec.Command("ip", "-n", s.ns, fam, "rule", "show", "priority", strconv.Itoa(priority)).Output()
		if t := strings.TrimSpace(string(out)); t != "" {
			left = append(left, "rules: "+t)
		}
		out, _ = exec.Command("ip", "-n", s.ns, fam, "route", "show", "table", strconv.Itoa(table)).Output()
		if t := strings.TrimSpace(string(out)); t != "" {
			left = append(left, "routes: "+t)
		}
	}
	return left
}

// stopVPND sends SIGTERM and expects exit status 0.
func (s *soak) stopVPND() error {
	s.vpnd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.vpndDone:
	case <-time.After(20 * time.Second):
		s.vpnd.Process.Kill()
		<-s.vpndDone
		return errors.New("vpnd did not exit on SIGTERM within 20s")
	}
	if code := s.vpnd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("vpnd exited %d on SIGTERM: %s", code, s.logTail())
	}
	return nil
}

func (s *soak) logTail() string {
	if s.vpndLog == nil {
		return ""
	}
	// Only the end: the log grows by a "vpn up" and a "vpn down" line a cycle.
	f, err := os.Open(s.vpndLog.Name())
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-4000, 0)
	b := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(b, off)
	return string(b[:n])
}

// cleanup kills vpnd if it still runs and deletes the namespace and the
// temporary directory.
func (s *soak) cleanup() {
	if s.vpnd != nil && s.vpnd.Process != nil && s.vpndDone != nil {
		select {
		case <-s.vpndDone:
		default:
			s.vpnd.Process.Kill()
			<-s.vpndDone
		}
	}
	if s.ns != "" {
		if out, err := exec.Command("ip", "netns", "del", s.ns).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "soak: ip netns del %s: %v: %s\n", s.ns, err, out)
		}
	}
	if s.vpndLog != nil {
		s.vpndLog.Close()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}
