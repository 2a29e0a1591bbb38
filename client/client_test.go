package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/rpc"
	"github.com/vpnd/vpnd/internal/rpc/rpctest"
	"github.com/vpnd/vpnd/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeServer is the daemon's end of a socketpair. The test drives it:
// requests arrive on reqs, and the test answers with reply/fail/notify.
type fakeServer struct {
	t    *testing.T
	conn *rpc.Conn
	reqs chan request
	done chan struct{}
}

type request struct {
	protocol.Request
	files []*os.File
}

func newPair(t *testing.T) (*Client, *fakeServer) {
	t.Helper()
	a, b := rpctest.SocketPair(t)
	c := New(a)
	s := serve(t, b)
	t.Cleanup(func() {
		c.Close()
		s.close()
	})
	return c, s
}

func serve(t *testing.T, uc *net.UnixConn) *fakeServer {
	s := &fakeServer{t: t, conn: rpc.NewConn(uc), reqs: make(chan request, 64), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer close(s.reqs)
		for {
			m, err := s.conn.ReadMessage()
			if err != nil {
				return
			}
			var r request
			if err := json.Unmarshal(m.Line, &r.Request); err != nil {
				t.Errorf("server: bad request %q: %v", m.Line, err)
			}
			r.files = m.Files
			s.reqs <- r
		}
	}()
	return s
}

func (s *fakeServer) close() {
	s.conn.Close()
	<-s.done
	for r := range s.reqs {
		for _, f := range r.files {
			f.Close()
		}
	}
}

// The fakeServer's methods run on goroutines that play the daemon, and
// only the test's own goroutine may stop the test (t.Fatal): they report
// failures with t.Errorf and carry on with zero values, and the client
// call the test waits for then fails or times out.

func (s *fakeServer) next() request {
	s.t.Helper()
	select {
	case r, ok := <-s.reqs:
		if !ok {
			s.t.Error("server: connection closed")
		}
		return r
	case <-time.After(5 * time.Second):
		s.t.Error("server: no request")
	}
	return request{}
}

func (s *fakeServer) send(resp protocol.Response, files ...*os.File) {
	s.t.Helper()
	resp.JSONRPC = protocol.Version
	resp.FDs = len(files)
	b, err := json.Marshal(resp)
	if err != nil {
		s.t.Error(err)
		return
	}
	if err := s.conn.WriteMessage(b, files...); err != nil {
		s.t.Errorf("server write: %v", err)
	}
}

func (s *fakeServer) reply(id json.RawMessage, result any, files ...*os.File) {
	s.t.Helper()
	b, err := json.Marshal(result)
	if err != nil {
		s.t.Error(err)
		return
	}
	s.send(protocol.Response{ID: id, Result: b}, files...)
}

func (s *fakeServer) fail(id json.RawMessage, err error) {
	s.t.Helper()
	s.send(protocol.Response{ID: id, Error: protocol.NewErrorObject(err)})
}

func (s *fakeServer) notify(ev protocol.StateChanged) {
	s.t.Helper()
	b, _ := json.Marshal(ev)
	s.send(protocol.Response{Method: protocol.MethodStateChanged, Params: b})
}

func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// inode is f's inode number, 0 (and an error reported) if stat fails. It
// is used on the fake daemon's goroutines too, so it does not t.Fatal.
func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Error(err)
		return 0
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// eofSoon reports whether r sees EOF, i.e. every copy of the write end is
// closed.
func eofSoon(r *os.File) bool {
	r.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := r.Read(make([]byte, 1))
	return err == io.EOF
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestRequestShape(t *testing.T) {
	c, s := newPair(t)
	go c.Status(ctx(t))
	r := s.next()
	if r.JSONRPC != "2.0" || r.Method != "status" || string(r.ID) != "1" || string(r.Params) != "{}" || r.FDs != 0 {
		t.Fatalf("request %+v", r.Request)
	}
	s.reply(r.ID, protocol.StatusResult{State: protocol.StateDisconnected})
	go c.Destroy(ctx(t))
	if r := s.next(); string(r.ID) != "2" || r.Method != "destroy" {
		t.Fatalf("second request %+v", r.Request)
	}
}

// Concurrent calls are pipelined and answered out of order; each caller
// gets its own answer.
func TestPipelinedOutOfOrder(t *testing.T) {
	c, s := newPair(t)
	const n = 8
	var wg sync.WaitGroup
	results := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, files, err := c.Call(ctx(t), "echo", map[string]int{"i": i})
			if err != nil || len(files) != 0 {
				t.Errorf("call %d: %v %v", i, err, files)
				return
			}
			results[i] = string(res)
		}()
	}
	var reqs []request
	ids := map[string]bool{}
	for range n {
		r := s.next()
		if ids[string(r.ID)] {
			t.Fatalf("duplicate id %s", r.ID)
		}
		ids[string(r.ID)] = true
		reqs = append(reqs, r)
	}
	for i := len(reqs) - 1; i >= 0; i-- {
		s.reply(reqs[i].ID, reqs[i].Params)
	}
	wg.Wait()
	for i, r := range results {
		if r != fmt.Sprintf(`{"i":%d}`, i) {
			t.Errorf("call %d got %s", i, r)
		}
	}
}

func TestSetUpReceivesTUN(t *testing.T) {
	c, s := newPair(t)
	pr, pw := pipe(t)
	info := protocol.VpnInfo{Interface: "vpn-tun", Index: 7, MTU: 1400, Addresses: []string{"10.8.0.2/24"}}
	go func() {
		r := s.next()
		var cfg protocol.VpnConfig
		if err := json.Unmarshal(r.Params, &cfg); err != nil || r.Method != "setUp" || cfg.MTU != 1400 {
			t.Errorf("setUp request %s %s %v", r.Method, r.Params, err)
		}
		s.reply(r.ID, info, pw)
	}()
	a, _ := protocol.ParseLinkAddress("10.8.0.2/24")
	tun, got, err := c.SetUp(ctx(t), protocol.VpnConfig{Addresses: []protocol.LinkAddress{a}, MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	if got.Interface != "vpn-tun" || got.Index != 7 || got.MTU != 1400 {
		t.Fatalf("info %+v", got)
	}
	if inode(t, tun) != inode(t, pw) {
		t.Fatal("not the fd the server sent")
	}
	tun.Close()
	pw.Close()
	if !eofSoon(pr) {
		t.Fatal("TUN fd leaked")
	}
}

func TestSetUpRawSentAsIs(t *testing.T) {
	c, s := newPair(t)
	_, pw := pipe(t)
	raw := `{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"0.0.0.0"},"prefixLength":0}}]}`
	go func() {
		r := s.next()
		if string(r.Params) != raw {
			t.Errorf("params %s", r.Params)
		}
		s.reply(r.ID, protocol.VpnInfo{Interface: "vpn-tun"}, pw)
	}()
	tun, _, err := c.SetUpRaw(ctx(t), json.RawMessage(raw))
	if err != nil {
		t.Fatal(err)
	}
	tun.Close()
}

func TestSetUpWithoutFD(t *testing.T) {
	c, s := newPair(t)
	go func() {
		r := s.next()
		s.reply(r.ID, protocol.VpnInfo{})
	}()
	_, _, err := c.SetUp(ctx(t), protocol.VpnConfig{})
	var e *Error
	if err == nil || errors.As(err, &e) {
		t.Fatalf("err %v", err)
	}
}

func TestErrorMapping(t *testing.T) {
	c, s := newPair(t)
	sentinels := map[errs.Code]error{
		errs.CodeGuestDenied: ErrGuestDenied, errs.CodeVPNExists: ErrVPNExists,
		errs.CodeInvalidFD: ErrInvalidFD, errs.CodeInvalidParam: ErrInvalidParam,
		errs.CodeInternal: ErrInternal, errs.CodePermission: ErrPermission,
		errs.CodeParse: ErrParse, errs.CodeInvalidRequest: ErrInvalidRequest,
		errs.CodeMethodNotFound: ErrMethodNotFound,
	}
	if len(sentinels) != len(errs.Codes()) {
		t.Fatal("a catalogued code has no client sentinel")
	}
	for code, sentinel := range sentinels {
		_, pw := pipe(t)
		go func() {
			r := s.next()
			// An fd on an error response must not leak either.
			s.send(protocol.Response{ID: r.ID, Error: protocol.NewErrorObject(errs.New(code, "detail %d", code))}, pw)
		}()
		err := c.Destroy(ctx(t))
		if !errors.Is(err, sentinel) {
			t.Errorf("code %d: %v is not its sentinel", code, err)
		}
		for other, os := range sentinels {
			if other != code && errors.Is(err, os) {
				t.Errorf("code %d matches sentinel %d", code, other)
			}
		}
		var e *Error
		if !errors.As(err, &e) || e.Code != code || e.Detail != fmt.Sprintf("detail %d", code) {
			t.Errorf("code %d: %#v", code, err)
		}
	}
}

func TestSubscribe(t *testing.T) {
	c, s := newPair(t)
	// A notification before the subscription is not delivered.
	s.notify(protocol.StateChanged{Reason: "early"})
	go func() {
		r := s.next()
		if r.Method != "subscribe" {
			t.Errorf("method %s", r.Method)
		}
		s.reply(r.ID, struct{}{})
		for _, reason := range []string{"setUp", "destroy", "linkGone"} {
			s.notify(protocol.StateChanged{IsConnected: reason == "setUp", Interface: "vpn-tun", Reason: reason})
		}
	}()
	ch, err := c.Subscribe(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"setUp", "destroy", "linkGone"} {
		select {
		case ev := <-ch:
			if ev.Reason != want || ev.Interface != "vpn-tun" || ev.IsConnected != (want == "setUp") {
				t.Fatalf("got %+v, want %s", ev, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no notification")
		}
	}
	c.Close()
	for range ch { // closed on Close
	}
}

// A subscriber that never reads does not block responses or Close.
func TestSlowSubscriber(t *testing.T) {
	c, s := newPair(t)
	go func() {
		r := s.next()
		s.reply(r.ID, struct{}{})
		for range 100 {
			s.notify(protocol.StateChanged{Reason: "setUp"})
		}
		r = s.next()
		s.reply(r.ID, protocol.StatusResult{State: "disconnected"})
	}()
	ch, err := c.Subscribe(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(ctx(t)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for n < 100 {
		<-ch
		n++
	}
	c.Close()
	if _, ok := <-ch; ok {
		t.Fatal("extra notification")
	}
}

// subscribed returns a Client subscribed to a fake daemon, and the
// daemon's end of the connection.
func subscribed(t *testing.T) (*Client, <-chan protocol.StateChanged, *fakeServer) {
	t.Helper()
	c, s := newPair(t)
	go func() {
		r := s.next()
		s.reply(r.ID, struct{}{})
	}()
	ch, err := c.Subscribe(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	return c, ch, s
}

// vpnd's last words before it goes away (vpnStateChanged "shutdown", then
// the close) arrive in that order: by the time Done is closed, the
// notification is on the channel, so that a subscriber that watches both
// (vpnctl up does) drains the channel and reports the shutdown, not a lost
// connection. Repeated, as a late delivery is a race the reader usually
// but not always wins.
func TestNotificationsBeforeDone(t *testing.T) {
	for i := range 200 {
		c, ch, s := subscribed(t)
		s.notify(protocol.StateChanged{Interface: "vpn-tun", Reason: "shutdown"})
		s.conn.Close()
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed")
		}
		select {
		case ev, ok := <-ch:
			if !ok || ev.Reason != "shutdown" {
				t.Fatalf("run %d: after Done: %+v %v, want the shutdown notification", i, ev, ok)
			}
		default:
			t.Fatalf("run %d: Done closed before the notification read before it is on the channel", i)
		}
		if _, ok := <-ch; ok {
			t.Fatalf("run %d: extra notification", i)
		}
		c.Close()
		s.close()
	}
}

// A subscriber that has fallen behind when vpnd goes away still gets every
// notification read before the end, then the channel closes and Err says
// why the connection ended.
func TestNotificationsAfterConnectionLost(t *testing.T) {
	c, ch, s := subscribed(t)
	const n = 5 * subscriptionBuffer
	for i := range n {
		s.notify(protocol.StateChanged{Reason: fmt.Sprint(i)})
	}
	s.conn.Close()
	<-c.Done()
	got := 0
	for ev := range ch {
		if ev.Reason != fmt.Sprint(got) {
			t.Fatalf("notification %d: %+v", got, ev)
		}
		got++
	}
	if got != n {
		t.Fatalf("got %d notifications, want %d", got, n)
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "connection to vpnd lost") {
		t.Fatalf("Err %v", err)
	}
}

func TestSubscribeRefused(t *testing.T) {
	c, s := newPair(t)
	go func() {
		r := s.next()
		s.fail(r.ID, errs.New(errs.CodeMethodNotFound, ""))
	}()
	if _, err := c.Subscribe(ctx(t)); !errors.Is(err, ErrMethodNotFound) {
		t.Fatalf("err %v", err)
	}
}

// A cancelled call returns at once; its late response, fd included, is
// discarded, and the connection keeps working.
func TestContextCancel(t *testing.T) {
	c, s := newPair(t)
	pr, pw := pipe(t)
	cctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() {
		_, _, err := c.SetUp(cctx, protocol.VpnConfig{})
		errc <- err
	}()
	r := s.next()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	s.reply(r.ID, protocol.VpnInfo{}, pw)
	pw.Close()
	if !eofSoon(pr) {
		t.Fatal("late fd leaked")
	}
	go func() {
		r := s.next()
		s.reply(r.ID, protocol.StatusResult{State: "connected"})
	}()
	st, err := c.Status(ctx(t))
	if err != nil || st.State != "connected" {
		t.Fatalf("status %+v %v", st, err)
	}
	// An already cancelled context sends nothing.
	if err := c.Destroy(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

func TestProtect(t *testing.T) {
	c, s := newPair(t)
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	want := inode(t, mustFile(t, udp))
	for _, viaFD := range []bool{false, true} {
		go func() {
			r := s.next()
			if r.Method != "protect" || r.FDs != 1 || len(r.files) != 1 || string(r.Params) != "{}" {
				t.Errorf("protect request %+v, %d files", r.Request, len(r.files))
			} else if inode(t, r.files[0]) != want {
				t.Error("protect sent a different socket")
			}
			for _, f := range r.files {
				f.Close()
			}
			s.reply(r.ID, struct{}{})
		}()
		if viaFD {
			f := mustFile(t, udp)
			rc, _ := f.SyscallConn()
			var fd int
			rc.Control(func(u uintptr) { fd = int(u) })
			err = c.ProtectFD(ctx(t), fd)
		} else {
			err = c.Protect(ctx(t), udp)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// The caller's socket is still open and usable.
	if _, err := udp.WriteToUDP([]byte("x"), udp.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatalf("socket unusable after protect: %v", err)
	}
}

func mustFile(t *testing.T, c *net.UDPConn) *os.File {
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestProtectBadFD(t *testing.T) {
	c, _ := newPair(t)
	if err := c.ProtectFD(ctx(t), 1<<20); !errors.Is(err, ErrInvalidFD) {
		t.Fatalf("err %v", err)
	}
}

// When vpnd goes away, calls in flight and later calls fail with a
// transport error that is not an *Error, and Done is closed.
func TestDaemonGone(t *testing.T) {
	c, s := newPair(t)
	errc := make(chan error)
	go func() {
		r := s.next()
		s.reply(r.ID, struct{}{})
	}()
	sub, err := c.Subscribe(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, err := c.Status(ctx(t)); errc <- err }()
	s.next()
	s.conn.Close()
	err = <-errc
	var e *Error
	if err == nil || errors.As(err, &e) {
		t.Fatalf("in-flight call: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if c.Err() == nil {
		t.Fatal("Err is nil after the connection ended")
	}
	if _, ok := <-sub; ok {
		t.Fatal("subscription channel not closed")
	}
	if err := c.Destroy(ctx(t)); err == nil || errors.As(err, &e) {
		t.Fatalf("later call: %v", err)
	}
}

func TestClosedClient(t *testing.T) {
	c, _ := newPair(t)
	c.Close()
	if err := c.Destroy(ctx(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("err %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestDial(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vpnd.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		uc, err := l.AcceptUnix()
		if err != nil {
			return
		}
		conn := rpc.NewConn(uc)
		defer conn.Close()
		m, err := conn.ReadMessage()
		if err != nil {
			return
		}
		var r protocol.Request
		json.Unmarshal(m.Line, &r)
		conn.WriteMessage([]byte(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":{"state":"disconnected","vpn":null}}`))
		conn.ReadMessage() // until the client closes
	}()
	c, err := Dial(ctx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status(ctx(t))
	if err != nil || st.State != "disconnected" || st.VPN != nil {
		t.Fatalf("status %+v %v", st, err)
	}
	if _, err := Dial(ctx(t), filepath.Join(t.TempDir(), "nope.sock")); err == nil {
		t.Fatal("dial of a missing socket succeeded")
	}
}

// SetLockdown sends setLockdown with {"enabled","applications"}, and
// returns vpnd's refusal as its sentinel.
func TestSetLockdown(t *testing.T) {
	c, s := newPair(t)
	for _, tc := range []struct {
		l    protocol.Lockdown
		want string
	}{
		{protocol.Lockdown{Enabled: true, Applications: []string{"alice", "1001"}}, `{"enabled":true,"applications":["alice","1001"]}`},
		{protocol.Lockdown{}, `{"enabled":false,"applications":null}`},
	} {
		done := make(chan error, 1)
		go func() { done <- c.SetLockdown(ctx(t), tc.l) }()
		r := s.next()
		if r.Method != "setLockdown" || string(r.Params) != tc.want || r.FDs != 0 {
			t.Errorf("request %s %s, want setLockdown %s", r.Method, r.Params, tc.want)
		}
		s.reply(r.ID, struct{}{})
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- c.SetLockdown(ctx(t), protocol.Lockdown{Enabled: true, Applications: []string{"bob"}}) }()
	s.fail(s.next().ID, errs.New(errs.CodePermission, "setLockdown needs an admin account"))
	if err := <-done; !errors.Is(err, ErrPermission) {
		t.Fatalf("refused: %v, want ErrPermission", err)
	}
}

// A connection vpnd refuses at its connection limits: vpnd writes one
// error line with a null id and closes without reading. The failing call
// returns that error, whether the request was sent before the refusal
// (the read then ends in ECONNRESET) or after vpnd closed (the write
// fails with EPIPE), and so do later calls and Err.
func TestRefusedConnection(t *testing.T) {
	const detail = "too many connections from uid 1000: the per-user limit is 64"
	refusal := `{"jsonrpc":"2.0","id":null,"error":{"code":19900002,"message":"System internal error.","data":{"detail":"` + detail + `"}}}` + "\n"
	for i := 0; i < 20; i++ {
		// Once with the request sent first, then racing vpnd's close.
		callFirst := i == 0
		a, b := rpctest.SocketPair(t)
		c := New(a)
		defer c.Close()
		errc := make(chan error, 1)
		if callFirst {
			go func() { _, err := c.Status(ctx(t)); errc <- err }()
			// Wait until the request is in vpnd's receive queue: closing
			// with it unread makes the client's read fail with ECONNRESET.
			rc, _ := b.SyscallConn()
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				var n int
				rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
				if n > 0 {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		b.Write([]byte(refusal))
		b.Close()
		if !callFirst {
			go func() { _, err := c.Status(ctx(t)); errc <- err }()
		}
		err := <-errc
		var e *Error
		if !errors.As(err, &e) || e.Code != errs.CodeInternal || e.Detail != detail || !errors.Is(err, ErrInternal) {
			t.Fatalf("call first %v: err %v, want 19900002 with vpnd's detail", callFirst, err)
		}
		if err := c.Destroy(ctx(t)); !errors.As(err, &e) || e.Detail != detail {
			t.Fatalf("a later call: %v", err)
		}
		if err := c.Err(); !errors.As(err, &e) || e.Detail != detail {
			t.Fatalf("Err: %v", err)
		}
	}
}
