package server

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/rpc"
	"github.com/vpnd/vpnd/internal/rpc/rpctest"
	"github.com/vpnd/vpnd/protocol"
)

const statusLine = `{"jsonrpc":"2.0","id":1,"method":"status"}` + "\n"

// served dials and asserts the connection is admitted and answered.
func served(t *testing.T, sock, what string) *net.UnixConn {
	t.Helper()
	c, r := rawDial(t, sock)
	c.Write([]byte(statusLine))
	if resp := readResp(t, r); resp.Error != nil {
		t.Fatalf("%s: refused: %+v", what, resp.Error)
	}
	return c
}

// refused dials and asserts the documented error line, then the close.
func refused(t *testing.T, sock, what, detail string) {
	t.Helper()
	_, r := rawDial(t, sock)
	resp := readResp(t, r)
	if resp.Error == nil || resp.Error.Code != int(errs.CodeInternal) || string(resp.ID) != "null" || !strings.Contains(resp.Error.Data.Detail, detail) {
		t.Fatalf("%s: got %+v, want 19900002 %q with id null", what, resp.Error, detail)
	}
	if _, err := r.ReadByte(); err == nil {
		t.Fatalf("%s: the refused connection stays open", what)
	}
}

// ADMIN callers may exceed the global limit by the reserve, so that users
// who fill every slot cannot lock root out; the reserve has its limit too.
func TestAdminReserve(t *testing.T) {
	h := policy(t, `{"default":"normal"}`)
	b := start(t, Config{MaxConns: 3, AdminReserve: 2, Policy: h})
	for i := 0; i < 3; i++ {
		served(t, b.sock, "under the limit")
	}
	refused(t, b.sock, "a NORMAL caller over the limit", "the limit is 3")
	admin, _ := auth.ParsePolicy([]byte(`{"default":"admin"}`))
	h.Store(admin)
	served(t, b.sock, "an ADMIN caller in the reserve")
	served(t, b.sock, "an ADMIN caller in the reserve")
	refused(t, b.sock, "an ADMIN caller over the reserve", "the limit is 3")
}

// Only connections really open count against the limits: a session busy
// elsewhere has not noticed yet that its client closed, and must not make
// the next connection be refused.
func TestLimitsCountOpenConnections(t *testing.T) {
	for name, cfg := range map[string]Config{"per-user limit": {MaxConnsPerUser: 2}, "global limit": {MaxConns: 2, AdminReserve: -1}} {
		release := make(chan struct{})
		var calls atomic.Int32
		cfg.Lookup = func(uid, gid uint32) (auth.Identity, error) {
			if calls.Add(1) <= 2 {
				<-release // the two destroy calls hang in the user database
			}
			return auth.Identity{UID: uid, GID: gid}, nil
		}
		cfg.Policy = policy(t, `{"default":"normal"}`)
		b := start(t, cfg)
		for i := 0; i < 2; i++ {
			c, _ := rawDial(t, b.sock)
			c.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"destroy"}` + "\n"))
			deadline := time.Now().Add(5 * time.Second)
			for calls.Load() < int32(i+1) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			c.Close() // the client gives up; its session is still busy
		}
		served(t, b.sock, name+": after the two connections closed")
		close(release)
	}
}

// The user database is not asked with the server's lock held: a slow
// lookup at the connection limit holds up nobody else.
func TestLookupWithoutLock(t *testing.T) {
	release := make(chan struct{})
	asked := make(chan struct{}, 1)
	lookup := func(uid, gid uint32) (auth.Identity, error) {
		asked <- struct{}{}
		<-release
		return auth.Identity{UID: uid, GID: gid}, nil
	}
	b := start(t, Config{MaxConnsPerUser: 1, Policy: policy(t, `{"default":"normal"}`), Lookup: lookup})
	served(t, b.sock, "the first connection")
	c, r := rawDial(t, b.sock) // over the per-user limit: is it ADMIN?
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("the lookup at the limit did not happen")
	}
	counted := make(chan int, 1)
	go func() { counted <- b.s.Conns() }()
	select {
	case n := <-counted:
		if n != 1 {
			t.Errorf("Conns() = %d during the lookup, want 1", n)
		}
		close(release)
	case <-time.After(2 * time.Second):
		t.Error("Conns() waited for a user database lookup: it runs under the server's lock")
		close(release)
		<-counted
	}
	if resp := readResp(t, r); resp.Error == nil {
		t.Fatal("the NORMAL user's second connection was admitted")
	}
	c.Close()
}

// bigEvent is a setUp notification of a VPN with n routes.
func bigEvent(n int) protocol.StateChanged {
	info := &protocol.VpnInfo{Interface: "vpn-tun"}
	for i := 0; i < n; i++ {
		info.Routes = append(info.Routes, fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))
	}
	return protocol.StateChanged{IsConnected: true, Interface: "vpn-tun", Reason: protocol.ReasonSetUp, VPN: info}
}

// subscribeRaw subscribes a raw connection that then never reads.
func subscribeRaw(t *testing.T, sock string) (*net.UnixConn, *bufio.Reader) {
	t.Helper()
	c, r := rawDial(t, sock)
	c.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"subscribe"}` + "\n"))
	readResp(t, r)
	return c, r
}

// Close is bounded by ShutdownTimeout, however slowly subscribers read:
// it does not wait for each to drain its queue in turn, a write timeout
// per notification.
func TestCloseIsBounded(t *testing.T) {
	const subscribers = 4
	b := start(t, Config{WriteTimeout: 5 * time.Second, ShutdownTimeout: time.Second})
	var readers sync.WaitGroup
	for i := 0; i < subscribers; i++ {
		_, r := subscribeRaw(t, b.sock)
		readers.Add(1)
		go func() {
			// Reads 8 kB every 50 ms: each write makes progress within
			// the write timeout, but the queue takes half a minute.
			defer readers.Done()
			buf := make([]byte, 8<<10)
			for {
				if _, err := r.Read(buf); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	ev := bigEvent(10000)
	for i := 0; i < 12; i++ {
		b.s.broadcast(ev)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	b.s.Close()
	took := time.Since(start)
	t.Logf("Close with %d slow subscribers took %v", subscribers, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("Close took %v, want about its 1 s timeout", took)
	}
	readers.Wait()
}

// A subscriber that does not read is dropped once its queued
// notifications pass eventBytes, before their number reaches eventQueue.
func TestSubscriberBytesBounded(t *testing.T) {
	b := start(t, Config{WriteTimeout: time.Minute})
	slow, r := subscribeRaw(t, b.sock)
	ev := bigEvent(10000)
	frame, _ := notificationFrame(ev)
	n := eventBytes/len(frame) + 8 // past the byte bound, far from eventQueue
	if n >= eventQueue {
		t.Fatalf("%d notifications of %d bytes do not test the byte bound", n, len(frame))
	}
	for i := 0; i < n; i++ {
		b.s.broadcast(ev)
	}
	slow.SetReadDeadline(time.Now().Add(3 * time.Second))
	got := 0
	for {
		if _, err := r.ReadBytes('\n'); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the subscriber that did not read was not dropped (it got %d of %d notifications)", got, n)
			}
			break
		}
		got++
	}
	t.Logf("the subscriber that did not read got %d of %d notifications of %d bytes before vpnd closed it", got, n, len(frame))
}

// A notification is encoded once, and the same bytes are queued for every
// subscriber.
func TestNotificationEncodedOnce(t *testing.T) {
	b := start(t, Config{})
	const subscribers = 100
	for i := 0; i < subscribers; i++ {
		a, _ := rpctest.SocketPair(t)
		ss := &session{s: b.s, c: rpc.NewConn(a)}
		ss.subscribe() // the writer is never started: frames stay queued
		t.Cleanup(ss.endSubscription)
	}
	ev := bigEvent(10000)
	frame, _ := notificationFrame(ev)
	// The fewest bytes allocated in a few tries: the counter is the
	// process's, and other goroutines may allocate meanwhile.
	const tries = 3
	least := uint64(1 << 62)
	for i := 0; i < tries; i++ {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b.s.broadcast(ev)
		runtime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	t.Logf("one %d-byte notification to %d subscribers allocated %d bytes", len(frame), subscribers, least)
	if least > 20*uint64(len(frame)) {
		t.Errorf("broadcast allocated %d bytes for a %d-byte notification to %d subscribers: it is encoded per subscriber", least, len(frame), subscribers)
	}
	b.s.subMu.Lock()
	defer b.s.subMu.Unlock()
	var first [tries]*byte
	for _, sub := range b.s.subs {
		if len(sub.frames) != tries {
			t.Fatalf("%d frames queued, want %d", len(sub.frames), tries)
		}
		for i := 0; i < tries; i++ {
			f := <-sub.frames
			if first[i] == nil {
				first[i] = &f[0]
			} else if &f[0] != first[i] {
				t.Fatal("subscribers got copies of the notification, not the same bytes")
			}
		}
	}
}

// fakeListener fails accept as a process out of descriptors does, then
// hands over one connection, then reports itself closed.
type fakeListener struct {
	fails int
	conn  *net.UnixConn
	calls int
}

func (l *fakeListener) AcceptUnix() (*net.UnixConn, error) {
	l.calls++
	switch {
	case l.calls <= l.fails:
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	case l.conn != nil:
		c := l.conn
		l.conn = nil
		return c, nil
	}
	return nil, net.ErrClosed
}

// At descriptor exhaustion, accept backs off exponentially up to a
// second, and logs once when it starts failing and once, with the count,
// when it recovers.
func TestAcceptBackoff(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	b := start(t, Config{Log: zap.New(core)})
	a, _ := rpctest.SocketPair(t)
	const fails = 12
	l := &fakeListener{fails: fails, conn: a}
	var mu sync.Mutex
	var slept []time.Duration
	b.s.sleep = func(d time.Duration) { mu.Lock(); slept = append(slept, d); mu.Unlock() }
	if err := b.s.serve(l); err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000}
	if fmt.Sprint(slept) != fmt.Sprint(scale(want, time.Millisecond)) {
		t.Errorf("backoff %v, want %v", slept, scale(want, time.Millisecond))
	}
	if n := logs.FilterMessage("accept failing, backing off").Len(); n != 1 {
		t.Errorf("%d \"accept failing\" lines for %d failures, want 1", n, fails)
	}
	rec := logs.FilterMessage("accept recovered").All()
	if len(rec) != 1 || rec[0].ContextMap()["failures"] != int64(fails) {
		t.Errorf("recovery logged as %+v, want once with failures=%d", rec, fails)
	}
	if other := logs.Filter(func(e observer.LoggedEntry) bool { return strings.HasPrefix(e.Message, "accept") }).Len(); other != 2 {
		t.Errorf("%d accept lines in all, want 2", other)
	}
}

func scale(ds []time.Duration, unit time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d * unit
	}
	return out
}
