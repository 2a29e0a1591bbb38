package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/wire"
)

// The framing rules of docs/protocol.md against hostile clients. Each case runs while a VPN is up and
// then checks three things: vpnd still serves another connection, its
// descriptors are back to what they were with the VPN up (nothing leaked),
// and the VPN in the kernel is exactly as before.

// hostileBed is a vpnd with a VPN up, owned by a rawclient.
type hostileBed struct {
	d      *daemon
	owner  *client
	index  int
	before kernelSnapshot
	fds    []string
}

func newHostileBed(t *testing.T, opts ...daemonOpt) *hostileBed {
	t.Helper()
	d := startDaemon(t, opts...)
	owner := d.dial(t, uidNormal)
	info := setUpOK(t, owner.call("setUp", richConfig, ""))
	d.wantRichVPN(t, uidNormal)
	return &hostileBed{d: d, owner: owner, index: info.Index, before: d.snapshot(t), fds: d.stableFDs(t)}
}

// served asserts that a fresh connection gets a status answer showing the
// bed's VPN.
func (h *hostileBed) served(t testing.TB, what string) {
	t.Helper()
	c := h.d.rawConn(t)
	writeLine(t, c, request(77, "status", "{}", 0))
	var s statusResult
	if err := json.Unmarshal(ok(t, mustRead(t, c)), &s); err != nil {
		t.Fatal(err)
	}
	if s.State != "connected" || s.VPN == nil || s.VPN.Index != h.index {
		t.Errorf("%s: status from another connection %+v, want the VPN with index %d", what, s, h.index)
	}
	c.Close()
}

// intact asserts the three promises after a hostile case.
func (h *hostileBed) intact(t testing.TB, what string) {
	t.Helper()
	h.served(t, what)
	var state string
	if !poll(func() (bool, string) {
		fds := h.d.fdTargets(t)
		state = fmt.Sprintf("%d fds %q, had %d %q", len(fds), fds, len(h.fds), h.fds)
		return equalStrings(fds, h.fds), state
	}) {
		t.Errorf("%s: vpnd's descriptors did not come back: %s", what, state)
	}
	if after := h.d.snapshot(t); fmt.Sprint(after) != fmt.Sprint(h.before) {
		t.Errorf("%s: the VPN changed in the kernel: %+v, was %+v", what, after, h.before)
	}
	if h.d.exited() {
		t.Fatalf("%s: vpnd exited: %v", what, h.d.waitErr)
	}
}

// end destroys the bed's VPN; the harness's leak check follows.
func (h *hostileBed) end(t *testing.T) {
	t.Helper()
	ok(t, h.owner.call("destroy", "{}", ""))
	h.d.waitClean(t, "destroy")
}

// sendMayBeCut sends a line that vpnd may hang up on before it is all
// written: on the descriptors alone, which arrive with the first byte.
func sendMayBeCut(t testing.TB, c *wire.Conn, line string, fds ...int) {
	t.Helper()
	if err := c.Send([]byte(line+"\n"), fds...); err != nil {
		if !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.ECONNRESET) {
			t.Fatalf("send: %v", err)
		}
		t.Logf("vpnd closed the connection while the line was written: %v", err)
	}
}

// readUntilClosed reads and discards until vpnd closes the connection,
// returning the messages read. A hang fails after hangGuard (SO_RCVTIMEO).
func readUntilClosed(t testing.TB, c *wire.Conn) []rpcMsg {
	t.Helper()
	var out []rpcMsg
	for {
		line, err := c.ReadLine()
		if errors.Is(err, unix.EAGAIN) {
			t.Fatalf("vpnd did not close the connection within %v", hangGuard)
		}
		if err != nil {
			if err != io.EOF {
				t.Logf("connection ended with %v", err)
			}
			return out
		}
		var m rpcMsg
		if json.Unmarshal(line, &m) == nil {
			out = append(out, m)
		}
		if fds, _ := c.TakeFDs(c.PendingFDs()); len(fds) > 0 {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
}

func TestHostileClients(t *testing.T) {
	t.Parallel()
	h := newHostileBed(t)
	d := h.d

	t.Run("line over 4 MiB", func(t *testing.T) {
		// With a newline after 4 MiB + 1 byte, and with no newline at all:
		// vpnd must not wait for the end of an oversize line.
		for _, withNewline := range []bool{true, false} {
			c := d.rawConn(t)
			line := `{"jsonrpc":"2.0","id":1,"method":"status","params":{` + strings.Repeat(" ", maxMessage) + `}}`
			if withNewline {
				line += "\n"
			}
			wrote := make(chan struct{})
			go func() { defer close(wrote); c.Send([]byte(line)) }()
			msgs := readUntilClosed(t, c)
			<-wrote
			if len(msgs) != 1 || msgs[0].Error == nil || msgs[0].Error.Code != -32700 {
				t.Errorf("newline %v: got %+v, want one parse error then the connection closed", withNewline, msgs)
			}
			c.Close()
			h.intact(t, "line over 4 MiB")
		}
	})

	t.Run("invalid UTF-8", func(t *testing.T) {
		c := d.rawConn(t)
		for i, line := range []string{
			"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"setUp\",\"params\":{\"addresses\":[\"10.9.0.2/24\"],\"searchDomains\":[\"a\xffb.example\"]}}",
			"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"destroy\",\"params\":{\"\xc0\xaf\":1}}",          // overlong '/'
			"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"destroy\",\"params\":{},\"x\":\"\xed\xa0\x80\"}", // a surrogate in UTF-8
			"\xfe\xff{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"destroy\"}",
			"\x80",
		} {
			writeLine(t, c, line)
			wantError(t, mustRead(t, c), -32700)
			writeLine(t, c, request(100+i, "status", "{}", 0))
			ok(t, mustRead(t, c))
		}
		c.Close()
		h.intact(t, "invalid UTF-8")
	})

	t.Run("deeply nested JSON", func(t *testing.T) {
		c := d.rawConn(t)
		deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
		for i, line := range []string{
			strings.Repeat("[", 100000),
			deep,
			strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000),
			`{"jsonrpc":"2.0","id":1,"method":"setUp","params":{"addresses":` + deep + `}}`,
			`{"jsonrpc":"2.0","id":1,"method":"destroy","params":` + strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000) + `}`,
			`{"jsonrpc":"2.0","id":` + deep + `,"method":"destroy"}`,
		} {
			writeLine(t, c, line)
			m := mustRead(t, c)
			if m.Error == nil {
				t.Errorf("case %d: nested JSON accepted: %.200s", i, m.raw)
			} else if c := m.Error.Code; c != -32700 && c != -32600 && c != 19900001 {
				t.Errorf("case %d: error %d, want -32700, -32600 or 19900001", i, c)
			}
			writeLine(t, c, request(100+i, "status", "{}", 0))
			ok(t, mustRead(t, c))
		}
		c.Close()
		h.intact(t, "deeply nested JSON")
	})

	t.Run("half a line, then a stall", func(t *testing.T) {
		// 50 stalled clients, each with half a request sent.
		var stalled []*wire.Conn
		for i := 0; i < 50; i++ {
			c := d.rawConn(t)
			if err := c.Send([]byte(`{"jsonrpc":"2.0","id":` + fmt.Sprint(i) + `,"method":"sta`)); err != nil {
				t.Fatal(err)
			}
			stalled = append(stalled, c)
		}
		// Everyone else is served meanwhile, setUp included.
		for i := 0; i < 10; i++ {
			h.served(t, "while 50 clients stall")
		}
		other := d.dial(t, uidRoot)
		wantError(t, other.call("setUp", setUpParams, ""), 2203002)
		ok(t, other.call("protect", "{}", "udp"))
		other.closeConn()
		// A stalled client that finishes its line is answered.
		for i, c := range stalled {
			writeLine(t, c, `tus"}`)
			m := mustRead(t, c)
			ok(t, m)
			if !m.idIs(i) {
				t.Errorf("stalled client %d got %s", i, m.raw)
			}
			c.Close()
		}
		h.intact(t, "half a line")
	})

	t.Run("descriptors on messages that declare none", func(t *testing.T) {
		c := d.rawConn(t)
		var probes []func() bool
		for i := 0; i < 10; i++ {
			var fds []int
			for j := 0; j < 8; j++ {
				fd, open := probePipe(t)
				fds = append(fds, fd)
				probes = append(probes, open)
			}
			writeLine(t, c, request(i+1, "status", "{}", 0), fds...)
			ok(t, mustRead(t, c))
		}
		// And on a failing setUp that declares none.
		fd, open := probePipe(t)
		probes = append(probes, open)
		writeLine(t, c, request(99, "setUp", richConfig, 0), fd)
		wantError(t, mustRead(t, c), 2203002)
		for i, open := range probes {
			wantClosedByVPND(t, open, fmt.Sprintf("undeclared fd %d", i))
		}
		c.Close()
		h.intact(t, "undeclared descriptors")
	})

	t.Run("250 descriptors in one sendmsg", func(t *testing.T) {
		c := d.rawConn(t)
		fd, open := probePipe(t)
		fds := []int{fd}
		for i := 1; i < 250; i++ {
			dup, err := unix.Dup(fd)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, dup)
		}
		sendMayBeCut(t, c, request(1, "protect", "{}", 1), fds...)
		for _, f := range fds[1:] {
			unix.Close(f)
		}
		msgs := readUntilClosed(t, c)
		t.Logf("vpnd answered %d message(s) before closing", len(msgs))
		wantClosedByVPND(t, open, "250 fds in one message")
		c.Close()
		h.intact(t, "250 descriptors")
	})

	t.Run("a client that never reads its responses", func(t *testing.T) {
		c := d.rawConn(t)
		// Write far more requests than the socket buffers hold answers
		// for, and never read. vpnd's writes block; after its write
		// timeout (5 s) it must drop this client.
		var batch strings.Builder
		for i := 0; i < 100; i++ {
			batch.WriteString(request(i+1, "status", "{}", 0) + "\n")
		}
		start := time.Now()
		writerDone := make(chan error, 1)
		go func() {
			for i := 0; i < 400; i++ { // 40,000 requests
				if err := c.Send([]byte(batch.String())); err != nil {
					writerDone <- err
					return
				}
			}
			writerDone <- nil
		}()
		// While the hostile client is stuck, others are served.
		time.Sleep(500 * time.Millisecond)
		for i := 0; i < 5; i++ {
			h.served(t, "while a client does not read")
		}
		select {
		case err := <-writerDone:
			if err == nil {
				t.Fatalf("vpnd took 40,000 requests from a client that reads nothing, without blocking")
			}
			t.Logf("vpnd dropped the non-reading client after %v (write error %v)", time.Since(start).Round(time.Millisecond), err)
		case <-time.After(3 * hangGuard):
			t.Fatalf("vpnd did not drop a client that does not read within %v", 3*hangGuard)
		}
		if !poll(func() (bool, string) { return d.logContains("write failed, closing"), "" }) {
			t.Errorf("vpnd did not log why it dropped the client")
		}
		c.Close()
		h.intact(t, "never reads")
	})

	t.Logf("vpnd threads at the end: %d (vpnd exposes no goroutine count)", d.threads(t))
	h.end(t)
}

// 1,000 idle connections with --max-connections 1000 (the VPN owner's is
// one of them): a NORMAL user's next one gets a 19900002 line naming the
// limit and is closed, not left hanging, while root still gets in; the
// idle ones are still served; a freed slot is reused; everything is
// released at the end.
func TestHostileConnectionLimit(t *testing.T) {
	t.Parallel()
	const limit = 1000
	h := newHostileBed(t, withFlags("--max-connections", fmt.Sprint(limit)))
	d := h.d
	var idle []*wire.Conn
	closeIdle := func() {
		for _, c := range idle {
			c.Close()
		}
		idle = nil
	}
	defer closeIdle()
	for i := 0; i < limit-1; i++ { // the owner holds the 1000th
		c, err := wire.Dial(d.sock)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		idle = append(idle, c)
	}
	// About 1.4 s on a quiet machine with -race; seen over 5 s in CI,
	// among the other tests.
	eventuallyWithin(t, hangGuard, "vpnd holds 1000 connections", func() (bool, string) {
		n := d.fdCount(t)
		return n >= len(h.fds)+limit-1, fmt.Sprintf("%d fds", n)
	})
	// A NORMAL user's next connection gets the error line and is closed.
	extra := d.dialAs(t, uidNormal2, 1)[0]
	tv := unix.NsecToTimeval(hangGuard.Nanoseconds())
	unix.SetsockoptTimeval(extra.FD(), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	m, open := readMsg(t, extra)
	if !open {
		t.Fatalf("connection %d closed without an error line", limit+1)
	}
	wantError(t, m, 19900002, fmt.Sprint(limit))
	if _, open := readMsg(t, extra); open {
		t.Errorf("connection %d stays open after the error", limit+1)
	}
	extra.Close()
	// root, an ADMIN, still gets in: admins have a reserve beyond the
	// limit, so that users who fill it cannot lock root out.
	admin := d.rawConn(t)
	writeLine(t, admin, request(4, "status", "{}", 0))
	ok(t, mustRead(t, admin))
	admin.Close()

	// The idle ones are served.
	for _, c := range []*wire.Conn{idle[0], idle[len(idle)/2], idle[len(idle)-1]} {
		writeLine(t, c, request(5, "status", "{}", 0))
		ok(t, mustRead(t, c))
	}
	// A freed slot is taken by the next client.
	idle[0].Close()
	idle = idle[1:]
	eventually(t, "a freed slot serves a new client", func() (bool, string) {
		c, err := wire.Dial(d.sock)
		if err != nil {
			return false, err.Error()
		}
		defer c.Close()
		tv := unix.NsecToTimeval(hangGuard.Nanoseconds())
		unix.SetsockoptTimeval(c.FD(), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		c.Send([]byte(request(6, "status", "{}", 0) + "\n"))
		line, err := c.ReadLine()
		if err != nil {
			return false, err.Error()
		}
		return !strings.Contains(string(line), "error"), string(line)
	})
	closeIdle()
	h.intact(t, "1000 idle connections")
	t.Logf("vpnd threads after 1000 connections: %d", d.threads(t))
	h.end(t)
}

// A subscriber that never reads while many state changes happen: vpnd
// drops it (its queue is bounded), keeps changing state at full speed,
// tells a reading subscriber about every change, and leaks nothing.
func TestHostileSlowSubscriber(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	base := d.stableFDs(t)

	slow := d.rawConn(t)
	writeLine(t, slow, request(1, "subscribe", "{}", 0))
	ok(t, mustRead(t, slow))

	good := d.rawConn(t)
	writeLine(t, good, request(1, "subscribe", "{}", 0))
	ok(t, mustRead(t, good))
	var reasons []string
	var wg sync.WaitGroup
	const cycles = 200
	wg.Add(1)
	go func() {
		defer wg.Done()
		for len(reasons) < 2*cycles {
			line, err := good.ReadLine()
			if err != nil {
				return
			}
			var m struct {
				Params stateChanged `json:"params"`
			}
			json.Unmarshal(line, &m)
			reasons = append(reasons, m.Params.Reason)
		}
	}()

	owner, err := wire.Dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	start := time.Now()
	for i := 0; i < cycles; i++ {
		fd := setUpKeep(t, owner, 2*i+1, richConfig)
		writeLine(t, owner, request(2*i+2, "destroy", "{}", 0))
		ok(t, mustRead(t, owner))
		unix.Close(fd)
	}
	t.Logf("%d setUp/destroy cycles with a stuck subscriber: %v", cycles, time.Since(start).Round(time.Millisecond))
	wg.Wait()
	if len(reasons) != 2*cycles {
		t.Fatalf("the reading subscriber got %d notifications, want %d", len(reasons), 2*cycles)
	}
	for i, r := range reasons {
		if want := map[int]string{0: "setUp", 1: "destroy"}[i%2]; r != want {
			t.Fatalf("notification %d: reason %q, want %q", i, r, want)
		}
	}
	msgs := readUntilClosed(t, slow)
	if len(msgs) >= 2*cycles {
		t.Errorf("the stuck subscriber was not dropped: it got all %d notifications", len(msgs))
	}
	t.Logf("the stuck subscriber got %d notifications before vpnd closed it", len(msgs))
	slow.Close()
	good.Close()
	owner.Close()
	eventually(t, "descriptors back", func() (bool, string) {
		fds := d.fdTargets(t)
		return equalStrings(fds, base), fmt.Sprintf("%q, had %q", fds, base)
	})
	c := d.dial(t, uidNormal)
	d.richCycle(t, c)
}

// TestHostilePerUserLimit: one NORMAL user cannot take every connection
// slot; its extra connection gets an error line, and root still gets in.
func TestHostilePerUserLimit(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, withFlags("--max-connections-per-user", "3"))
	for i := 0; i < 3; i++ {
		c := d.dial(t, 4000)
		ok(t, c.call("status", "{}", ""))
	}
	extra := d.dial(t, 4000)
	m, open := extra.recv()
	if !open {
		t.Fatal("the connection over the per-user limit closed without an error line")
	}
	wantError(t, m, 19900002, "per-user limit is 3")
	if _, open := extra.recv(); open {
		t.Fatal("the connection over the per-user limit stays open")
	}
	// Other users, and the ADMIN root, are still served.
	ok(t, d.dial(t, 4001).call("status", "{}", ""))
	ok(t, d.dial(t, uidRoot).call("status", "{}", ""))
}
