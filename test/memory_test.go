package test

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/metrics"
	"github.com/vpnd/vpnd/test/internal/wire"
)

// rssLimitKB is what vpnd's resident set may reach under any of the
// attacks below: 256 MB.
const rssLimitKB = 256 << 10

// vpnd's default request-line timeout; the stalled-lines attack waits for
// it.
const lineTimeout = 10 * time.Second

// dialAs opens n connections to vpnd as uid (gid the same number) and
// returns them to the test process: a dialas process running as uid
// connects and hands the sockets over, so vpnd sees uid as their peer,
// while the test drives them at wire speed. They are closed when the test
// ends.
func (d *daemon) dialAs(t testing.TB, uid uint32, n int) []*wire.Conn {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0])
	child := os.NewFile(uintptr(sp[1]), "dialas-handoff")
	cmd := exec.Command(lazyBin(t, "dialas"), d.sock, strconv.Itoa(n))
	cmd.ExtraFiles = []*os.File{child}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: primaryGID(uid), Groups: []uint32{}}}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		child.Close()
		t.Fatalf("start dialas as uid %d: %v", uid, err)
	}
	child.Close()
	var fds []int
	oob := make([]byte, unix.CmsgSpace(256*4))
	one := make([]byte, 1)
	for {
		nr, oobn, _, _, err := unix.Recvmsg(sp[0], one, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("receive connections from dialas: %v", err)
		}
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				t.Fatal(err)
			}
			for i := range msgs {
				got, err := unix.ParseUnixRights(&msgs[i])
				if err != nil {
					t.Fatal(err)
				}
				fds = append(fds, got...)
			}
		}
		if nr == 0 {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("dialas as uid %d: %v: %s", uid, err, stderr.String())
	}
	conns := make([]*wire.Conn, len(fds))
	for i, fd := range fds {
		conns[i] = wire.FromFD(fd)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	if len(conns) != n {
		t.Fatalf("dialas as uid %d handed over %d connections, want %d", uid, len(conns), n)
	}
	return conns
}

// hangUp shuts c down both ways: a writer blocked on it returns EPIPE and
// vpnd reads EOF, even while another goroutine still uses the fd.
func hangUp(c *wire.Conn) { unix.Shutdown(c.FD(), unix.SHUT_RDWR) }

// peerClosed reports whether vpnd has closed c.
func peerClosed(c *wire.Conn) bool {
	p := []unix.PollFd{{Fd: int32(c.FD()), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(p, 0)
	return err == nil && n > 0 && p[0].Revents&(unix.POLLHUP|unix.POLLRDHUP) != 0
}

// resetPeakRSS makes the kernel's high-water mark of vpnd's resident set
// (VmHWM) start again from its current size.
func (d *daemon) resetPeakRSS(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", d.pid), []byte("5"), 0); err != nil {
		t.Fatalf("reset vpnd's peak RSS: %v", err)
	}
}

// observer is "every other client": a NORMAL user's connection that asks
// for status every 100 ms while an attack runs.
type observer struct {
	stop    chan struct{}
	done    chan struct{}
	served  int
	slowest time.Duration
	err     error
}

func (d *daemon) observe(t testing.TB, uid uint32) *observer {
	t.Helper()
	c := d.dialAs(t, uid, 1)[0]
	tv := unix.NsecToTimeval(hangGuard.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(c.FD(), unix.SOL_SOCKET, opt, &tv); err != nil {
			t.Fatal(err)
		}
	}
	o := &observer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(o.done)
		for id := 1; ; id++ {
			start := time.Now()
			if err := c.Send([]byte(request(id, "status", "{}", 0) + "\n")); err != nil {
				o.err = fmt.Errorf("status %d: send: %w", id, err)
				return
			}
			line, err := c.ReadLine()
			if err != nil {
				o.err = fmt.Errorf("status %d: no answer: %w", id, err)
				return
			}
			var m rpcMsg
			if err := json.Unmarshal(line, &m); err != nil || m.Error != nil || !m.idIs(id) {
				o.err = fmt.Errorf("status %d: answer %.200s", id, line)
				return
			}
			o.served++
			o.slowest = max(o.slowest, time.Since(start))
			select {
			case <-o.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return o
}

// finish stops the observer and fails the test if it was not served
// throughout. A fresh connection of uid must be served too.
func (o *observer) finish(t testing.TB, d *daemon, uid uint32, what string) {
	t.Helper()
	close(o.stop)
	<-o.done
	if o.err != nil {
		t.Errorf("%s: another client was not served: %v", what, o.err)
	}
	t.Logf("%s: another client got %d status answers meanwhile, the slowest in %v", what, o.served, o.slowest.Round(time.Millisecond))
	c := d.dialAs(t, uid, 1)[0]
	tv := unix.NsecToTimeval(hangGuard.Nanoseconds())
	unix.SetsockoptTimeval(c.FD(), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	writeLine(t, c, request(1, "status", "{}", 0))
	ok(t, mustRead(t, c))
	c.Close()
}

// peakRSS reports vpnd's high-water mark since the last reset, and fails
// the test if it reached rssLimitKB.
func (d *daemon) checkPeakRSS(t testing.TB, what string) {
	t.Helper()
	peak := procStatusField(t, d.pid, "VmHWM")
	t.Logf("%s: vpnd's peak RSS %.1f MB (now %.1f MB)", what, float64(peak)/1024, float64(procStatusField(t, d.pid, "VmRSS"))/1024)
	if peak >= rssLimitKB {
		t.Errorf("%s: vpnd's peak RSS is %d MB, want < %d MB", what, peak>>10, rssLimitKB>>10)
	}
}

// TestMemoryAttacks runs three memory exhaustion attacks by unprivileged
// users, each against a fresh vpnd (the Go runtime keeps memory it once
// used, so one attack would inflate the next one's figure). Under each,
// vpnd's resident set must stay below 256 MB and another NORMAL user must
// be served throughout.
func TestMemoryAttacks(t *testing.T) {
	t.Parallel()
	start := func(t *testing.T, opts ...daemonOpt) *daemon {
		d := startDaemon(t, opts...)
		t.Logf("vpnd's RSS at start: %.1f MB", float64(procStatusField(t, d.pid, "VmRSS"))/1024)
		return d
	}

	// 64 connections (the per-user limit) each send a line of nearly
	// 4 MiB and stall before its newline. vpnd holds at most its budget
	// of unanswered request bytes, and drops a line that does not
	// complete within its timeout.
	t.Run("stalled lines", func(t *testing.T) {
		d := start(t)
		conns := d.dialAs(t, uidNormal, 64)
		d.resetPeakRSS(t)
		obs := d.observe(t, uidNormal2)
		prefix := `{"jsonrpc":"2.0","id":1,"method":"status","params":{"pad":"`
		line := []byte(prefix + strings.Repeat("x", maxMessage-len(prefix)-16))
		var writers sync.WaitGroup
		for _, c := range conns {
			writers.Add(1)
			go func() {
				defer writers.Done()
				c.Send(line) // fails with EPIPE once vpnd drops the line
			}()
		}
		start := time.Now()
		// Every line that vpnd read the first byte of is dropped within
		// the timeout; lines still waiting for the byte budget are not
		// being read and may last longer.
		var closed int
		deadline := start.Add(lineTimeout + settle)
		for time.Now().Before(deadline) {
			closed = 0
			for _, c := range conns {
				if peerClosed(c) {
					closed++
				}
			}
			if closed > 0 && time.Since(start) > lineTimeout+time.Second {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("after %v vpnd had closed %d of the %d stalled connections", time.Since(start).Round(100*time.Millisecond), closed, len(conns))
		if closed == 0 {
			t.Errorf("vpnd closed none of the stalled connections within %v", lineTimeout+settle)
		}
		if !d.logContains("request line timed out") {
			t.Errorf("vpnd did not log why it closed the stalled connections")
		}
		obs.finish(t, d, uidNormal2, "stalled lines")
		d.checkPeakRSS(t, "stalled lines")
		for _, c := range conns {
			hangUp(c)
		}
		writers.Wait()
	})

	// 64 connections each send, again and again, 4 MiB lines made of
	// some 340,000 JSON members, at the top level or in params: decoding
	// must not multiply what vpnd holds.
	t.Run("many members", func(t *testing.T) {
		d := start(t)
		conns := d.dialAs(t, uidNormal, 64)
		d.resetPeakRSS(t)
		obs := d.observe(t, uidNormal2)
		lines := [][]byte{
			manyMembers(`{"jsonrpc":"2.0","id":1,"method":"status",`, `}`),
			manyMembers(`{"jsonrpc":"2.0","id":1,"method":"status","params":{`, `}}`),
		}
		start := time.Now()
		var wg sync.WaitGroup
		errc := make(chan error, len(conns))
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tv := unix.NsecToTimeval(3 * hangGuard.Nanoseconds())
				unix.SetsockoptTimeval(c.FD(), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
				line := lines[i%len(lines)]
				for round := 0; round < 1; round++ {
					if err := c.Send(line); err != nil {
						errc <- fmt.Errorf("connection %d: send: %w", i, err)
						return
					}
					answer, err := c.ReadLine()
					if err != nil {
						errc <- fmt.Errorf("connection %d: read: %w", i, err)
						return
					}
					var m rpcMsg
					if err := json.Unmarshal(answer, &m); err != nil {
						errc <- fmt.Errorf("connection %d: answer %.200s", i, answer)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Error(err)
		}
		// A hang guard, not a timing goal: it takes seconds. A budget
		// slot kept by a connection that answered and went idle made it
		// take minutes.
		took := time.Since(start)
		t.Logf("the 64 lines were answered in %v", took.Round(time.Millisecond))
		if took > time.Minute {
			t.Errorf("answering the 64 lines took %v: large requests of one user wait for slots nobody gives back", took)
		}
		obs.finish(t, d, uidNormal2, "many members")
		d.checkPeakRSS(t, "many members")
	})

	t.Run("slow metrics connections", func(t *testing.T) {
		// vpnd runs with the descriptor limit that vpnd.service sets.
		d := start(t, withFlags("--metrics-listen", metricsAddr), withPrefix("prlimit", fmt.Sprintf("--nofile=%d", unitNOFILE(t)), "--"))
		d.resetPeakRSS(t)
		obs := d.observe(t, uidNormal2)
		slowMetricsAttack(t, d)
		obs.finish(t, d, uidNormal2, "slow metrics connections")
		d.checkPeakRSS(t, "slow metrics connections")
	})

	// ~1,000 subscribers (16 users, 62 connections each) never read,
	// while a VPN of 10,000 routes goes up and down 30 times: vpnd
	// encodes each notification once, whatever the number of
	// subscribers, and drops subscribers that fall too far behind.
	t.Run("subscribers that never read", func(t *testing.T) {
		d := start(t)
		var subs []*wire.Conn
		for uid := uint32(4100); uid < 4116; uid++ {
			subs = append(subs, d.dialAs(t, uid, 62)...)
		}
		for i, c := range subs {
			writeLine(t, c, request(i+1, "subscribe", "{}", 0))
		}
		d.resetPeakRSS(t)
		obs := d.observe(t, uidNormal2)
		owner := d.rawConn(t)
		cfg := largeConfig()
		start := time.Now()
		for i := 0; i < 30; i++ {
			fd := setUpKeep(t, owner, 2*i+1, cfg)
			writeLine(t, owner, request(2*i+2, "destroy", "{}", 0))
			ok(t, mustRead(t, owner))
			unix.Close(fd)
		}
		t.Logf("30 up/down cycles of a 10,000-route VPN with %d subscribers that never read: %v", len(subs), time.Since(start).Round(time.Millisecond))
		obs.finish(t, d, uidNormal2, "subscribers")
		d.checkPeakRSS(t, "subscribers")
		owner.Close()
		for _, c := range subs {
			c.Close()
		}
	})
}

// unitNOFILE is the descriptor limit that dist/systemd/vpnd.service
// gives vpnd (LimitNOFILE=).
func unitNOFILE(t testing.TB) int {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "dist", "systemd", "vpnd.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "LimitNOFILE="); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("vpnd.service: %s", line)
			}
			return n
		}
	}
	t.Fatal("vpnd.service sets no LimitNOFILE")
	return 0
}

// slowMetricsAttack: an ordinary user keeps 20,000 connections to vpnd's
// metrics listener, each sending the start of a request header and never
// the rest, and opens a new one whenever vpnd closes one, for attackFor.
// (Two attacking processes hold 10,000 each: a process here may not raise
// its descriptor limit.) Meanwhile vpnd's socket must accept ("accept
// failing" never logged) and answer a fresh connection every half
// second, vpnd must hold no more than metrics.MaxConns connections of the
// attack, and the metrics must be served again once the attack ends.
func slowMetricsAttack(t *testing.T, d *daemon) {
	const processes, each, attackFor = 2, 10000, 12 * time.Second
	var stdins []io.WriteCloser
	var outs []*syncBuffer
	var exits []<-chan struct{}
	for range processes {
		cmd := exec.Command("ip", "netns", "exec", d.ns,
			"setpriv", "--reuid", fmt.Sprint(uidNormal), "--regid", fmt.Sprint(uidNormal), "--clear-groups",
			lazyBin(t, "slowhttp"), metricsAddr, fmt.Sprint(each))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		exits = append(exits, startBackground(t, cmd))
		stdins, outs = append(stdins, stdin), append(outs, out)
	}
	stop := func() {
		for _, s := range stdins {
			s.Close()
		}
	}
	defer stop()
	start := time.Now()
	fresh, unanswered, mostFDs := 0, 0, 0
	for time.Since(start) < attackFor {
		time.Sleep(500 * time.Millisecond)
		mostFDs = max(mostFDs, d.fdCount(t))
		c, err := wire.Dial(d.sock)
		if err != nil {
			t.Errorf("after %v of the attack: connect to vpnd's socket: %v", time.Since(start).Round(time.Millisecond), err)
			continue
		}
		tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
		unix.SetsockoptTimeval(c.FD(), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		fresh++
		if c.Send([]byte(request(1, "status", "{}", 0)+"\n")) != nil {
			unanswered++
		} else if _, err := c.ReadLine(); err != nil {
			unanswered++
		}
		c.Close()
	}
	stop()
	for i, exited := range exits {
		select {
		case <-exited:
		case <-time.After(hangGuard):
			t.Errorf("slowhttp did not stop")
		}
		t.Logf("attacker %d: %s", i+1, strings.TrimSpace(outs[i].String()))
	}
	t.Logf("after %v of the attack: vpnd held at most %d descriptors (sampled); %d of %d fresh connections to vpnd's socket unanswered",
		attackFor, mostFDs, unanswered, fresh)
	if unanswered > 0 {
		t.Errorf("%d of %d fresh connections to vpnd's socket were not answered during the attack", unanswered, fresh)
	}
	if d.logContains("accept failing") {
		t.Errorf("vpnd's socket stopped accepting during the attack")
	}
	// The observer's connection and the fresh one are the only others.
	if limit := len(d.baseFDs) + metrics.MaxConns + 4; mostFDs > limit {
		t.Errorf("vpnd held %d descriptors during the attack, want at most %d: %d after start, %d metrics connections and a few clients", mostFDs, limit, len(d.baseFDs), metrics.MaxConns)
	}
	scrape(t, d)
}

// manyMembers returns head, then "aN":0 members up to nearly 4 MiB, then
// tail and a newline.
func manyMembers(head, tail string) []byte {
	var b strings.Builder
	b.Grow(maxMessage)
	b.WriteString(head)
	for i := 0; b.Len() < maxMessage-len(tail)-16; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"a%d":0`, i)
	}
	b.WriteString(tail + "\n")
	return []byte(b.String())
}

// TestIdleConnectionMemory prints what idle connections cost vpnd:
// resident memory per connection while 1,000 are open and idle, after
// each made one call, and what is left once they all closed. The figures
// include garbage the Go runtime has not collected yet; the server
// package's TestIdleConnectionFootprint counts what is live. The bounds
// asserted are loose: they catch a regression by a multiple of the goal
// (10 KB per idle connection), which vpnbench measures.
func TestIdleConnectionMemory(t *testing.T) {
	t.Parallel()
	const n = 1000
	d := startDaemon(t)
	// rss samples VmRSS and RssAnon (the pages of vpnd's binary that a
	// first call touches are no cost of a connection) a few times over a
	// second and keeps the lowest: the runtime frees memory lazily.
	rss := func() (all, anon int) {
		all, anon = procStatusField(t, d.pid, "VmRSS"), procStatusField(t, d.pid, "RssAnon")
		for i := 0; i < 10; i++ {
			time.Sleep(100 * time.Millisecond)
			all, anon = min(all, procStatusField(t, d.pid, "VmRSS")), min(anon, procStatusField(t, d.pid, "RssAnon"))
		}
		return all, anon
	}
	// Warm up: the first calls allocate what vpnd keeps for good.
	warm := d.rawConn(t)
	for i := 0; i < 3; i++ {
		writeLine(t, warm, request(i+1, "status", "{}", 0))
		ok(t, mustRead(t, warm))
	}
	warm.Close()
	base, baseAnon := rss()
	conns := make([]*wire.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := wire.Dial(d.sock)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	eventually(t, "vpnd holds the connections", func() (bool, string) {
		got := d.fdCount(t) - len(d.baseFDs)
		return got >= n, fmt.Sprintf("%d connections", got)
	})
	idle, idleAnon := rss()
	for i, c := range conns {
		writeLine(t, c, request(i+1, "status", "{}", 0))
	}
	for _, c := range conns {
		ok(t, mustRead(t, c))
	}
	called, calledAnon := rss()
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	eventually(t, "vpnd closes the connections", func() (bool, string) {
		got := d.fdCount(t) - len(d.baseFDs)
		return got <= 0, fmt.Sprintf("%d connections", got)
	})
	after, afterAnon := rss()
	per := func(a, b int) float64 { return float64(a-b) / n }
	t.Logf("vpnd RSS (anonymous part): %d kB (%d) after start; with %d idle connections %d kB (%d): %.1f kB (%.1f) each; after one call each %d kB (%d): %.1f kB (%.1f) each; once they closed %d kB (%d): %+.0f%% (%+d kB)",
		base, baseAnon, n, idle, idleAnon, per(idle, base), per(idleAnon, baseAnon),
		called, calledAnon, per(called, base), per(calledAnon, baseAnon),
		after, afterAnon, 100*float64(after-base)/float64(base), afterAnon-baseAnon)
	if per(idle, base) > 16 || per(called, base) > 24 {
		t.Errorf("idle connections cost %.1f kB each (%.1f kB after a call): far above the 10 kB goal", per(idle, base), per(called, base))
	}
}
