package rpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/rpc/rpctest"
	"github.com/vpnd/vpnd/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// socketPair returns two connected SOCK_STREAM Unix sockets.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) { return rpctest.SocketPair(t) }

// connPair returns a reading Conn and the raw peer socket.
func connPair(t testing.TB) (*Conn, *net.UnixConn) {
	a, b := socketPair(t)
	c := NewConn(a)
	t.Cleanup(func() { c.Close() })
	return c, b
}

// probe is a pipe whose write end we hand out. Once every copy of the
// write end is closed, reading the read end gives EOF: that proves the
// receiver did not leak its copy.
type probe struct {
	r, w *os.File
}

func newProbe(t testing.TB) *probe {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return &probe{r: r, w: w}
}

// wfd returns the raw write fd for a raw sendmsg. The probe keeps w open.
func (p *probe) wfd(t testing.TB) int {
	rc, err := p.w.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var out int
	rc.Control(func(fd uintptr) { out = int(fd) })
	return out
}

func (p *probe) ino(t testing.TB) uint64 { return inode(t, p.w) }

func inode(t testing.TB, f *os.File) uint64 {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// closedEverywhere closes our write end and reports whether the read end
// sees EOF, i.e. nobody else holds the write end.
func (p *probe) closedEverywhere(t testing.TB) bool {
	t.Helper()
	p.w.Close()
	p.r.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := p.r.Read(make([]byte, 1))
	return err == io.EOF
}

func mustClosed(t testing.TB, ps ...*probe) {
	t.Helper()
	for i, p := range ps {
		if !p.closedEverywhere(t) {
			t.Errorf("probe %d: write end still open somewhere (fd leaked)", i)
		}
	}
}

func sendRaw(t testing.TB, uc *net.UnixConn, data string, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := uc.WriteMsgUnix([]byte(data), oob, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n < len(data) {
		if _, err := uc.Write([]byte(data[n:])); err != nil {
			t.Fatal(err)
		}
	}
}

func countFDs(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func read(t testing.TB, c *Conn) Message {
	t.Helper()
	m, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	return m
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func TestOneFD(t *testing.T) {
	c, peer := connPair(t)
	p := newProbe(t)
	sendRaw(t, peer, `{"jsonrpc":"2.0","id":1,"method":"protect","fds":1}`+"\n", p.wfd(t))
	m := read(t, c)
	if m.FDErr != nil || len(m.Files) != 1 {
		t.Fatalf("got %d files, FDErr %v", len(m.Files), m.FDErr)
	}
	if string(m.Line) != `{"jsonrpc":"2.0","id":1,"method":"protect","fds":1}` {
		t.Fatalf("line %q", m.Line)
	}
	if got, want := inode(t, m.Files[0]), p.ino(t); got != want {
		t.Fatalf("received inode %d, sent %d", got, want)
	}
	// Go asks for MSG_CMSG_CLOEXEC on Linux: the fd must not leak into
	// children vpnd or vpnctl starts.
	rc, _ := m.Files[0].SyscallConn()
	var flags int
	rc.Control(func(fd uintptr) { flags, _ = unix.FcntlInt(fd, unix.F_GETFD, 0) })
	if flags&unix.FD_CLOEXEC == 0 {
		t.Error("received fd is not close-on-exec")
	}
	closeAll(m.Files)
	mustClosed(t, p)
}

func TestSeveralFDsInOneMessage(t *testing.T) {
	c, peer := connPair(t)
	ps := []*probe{newProbe(t), newProbe(t), newProbe(t)}
	sendRaw(t, peer, `{"fds":3}`+"\n", ps[0].wfd(t), ps[1].wfd(t), ps[2].wfd(t))
	m := read(t, c)
	if m.FDErr != nil || len(m.Files) != 3 {
		t.Fatalf("got %d files, FDErr %v", len(m.Files), m.FDErr)
	}
	for i := range ps {
		if inode(t, m.Files[i]) != ps[i].ino(t) {
			t.Errorf("file %d out of order", i)
		}
	}
	closeAll(m.Files)
	mustClosed(t, ps...)
}

func TestPipelinedMessagesWithFDs(t *testing.T) {
	c, peer := connPair(t)
	ps := []*probe{newProbe(t), newProbe(t), newProbe(t), newProbe(t)}
	// All sent before anything is read, so reads glue messages together.
	sendRaw(t, peer, `{"id":1,"fds":1}`+"\n", ps[0].wfd(t))
	sendRaw(t, peer, `{"id":2}`+"\n")
	sendRaw(t, peer, `{"id":3,"fds":2}`+"\n", ps[1].wfd(t), ps[2].wfd(t))
	sendRaw(t, peer, `{"id":4,"fds":0}`+"\n"+`{"id":5,"fds":1}`+"\n", ps[3].wfd(t))
	// The last fd went with the first byte of id 4, but ids 4 and 5 came
	// in one read, so the fd cannot be told apart from one sent with id
	// 5: it stays queued and id 5 takes it, as the queue rule says.
	want := [][]*probe{{ps[0]}, nil, {ps[1], ps[2]}, nil, {ps[3]}}
	for i, w := range want {
		m := read(t, c)
		if !strings.Contains(string(m.Line), fmt.Sprintf(`"id":%d`, i+1)) {
			t.Fatalf("message %d: line %q", i+1, m.Line)
		}
		if len(m.Files) != len(w) {
			t.Fatalf("message %d: %d files, want %d", i+1, len(m.Files), len(w))
		}
		for j := range w {
			if inode(t, m.Files[j]) != w[j].ino(t) {
				t.Errorf("message %d file %d: wrong fd", i+1, j)
			}
		}
		if m.FDErr != nil {
			t.Errorf("message %d: FDErr %v", i+1, m.FDErr)
		}
		closeAll(m.Files)
	}
	mustClosed(t, ps...)
}

func TestStrayFDsAreClosed(t *testing.T) {
	cases := []struct {
		name  string
		line  string
		sent  int
		claim int
		fdErr bool
	}{
		{"undeclared", `{"jsonrpc":"2.0","id":1,"method":"status"}`, 1, 0, false},
		{"declared too few", `{"fds":1}`, 3, 1, false},
		{"declared zero", `{"fds":0}`, 2, 0, false},
		{"not JSON", `garbage {"fds":1}`, 1, 0, false},
		{"JSON array", `[{"fds":1}]`, 1, 0, false},
		{"broken JSON object", `{"fds":1,`, 1, 0, false},
		{"declared too many", `{"fds":2}`, 1, 0, true},
		{"negative", `{"fds":-1}`, 1, 0, true},
		{"fraction", `{"fds":1.5}`, 1, 0, true},
		{"string", `{"fds":"1"}`, 1, 0, true},
		{"null", `{"fds":null}`, 1, 0, true},
		{"huge", `{"fds":99999999999999999999}`, 1, 0, true},
		{"nested fds ignored", `{"params":{"fds":1}}`, 1, 0, false},
		{"key is case-sensitive", `{"FDS":1}`, 1, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, peer := connPair(t)
			var ps []*probe
			var fds []int
			for range tc.sent {
				p := newProbe(t)
				ps = append(ps, p)
				fds = append(fds, p.wfd(t))
			}
			before := countFDs(t)
			sendRaw(t, peer, tc.line+"\n", fds...)
			m := read(t, c)
			if string(m.Line) != tc.line {
				t.Fatalf("line %q", m.Line)
			}
			if len(m.Files) != tc.claim || (m.FDErr != nil) != tc.fdErr {
				t.Fatalf("claimed %d (want %d), FDErr %v", len(m.Files), tc.claim, m.FDErr)
			}
			// Strays are closed by the time the message is returned.
			if got := countFDs(t); got != before+tc.claim {
				t.Errorf("open fds %d, want %d", got, before+tc.claim)
			}
			closeAll(m.Files)
			mustClosed(t, ps...)
		})
	}
}

// A message whose bytes arrive over several reads, with an undeclared fd
// on its first byte: the fd is closed once the message is processed, and
// the next message does not get it.
func TestStrayOnSplitMessage(t *testing.T) {
	c, peer := connPair(t)
	p := newProbe(t)
	sendRaw(t, peer, `{"id":1,`, p.wfd(t))
	done := make(chan Message)
	go func() { m, _ := c.ReadMessage(); done <- m }()
	time.Sleep(20 * time.Millisecond)
	sendRaw(t, peer, `"x":2}`+"\n")
	m := <-done
	if len(m.Files) != 0 {
		t.Fatal("claimed an undeclared fd")
	}
	sendRaw(t, peer, `{"id":2,"fds":1}`+"\n")
	m = read(t, c)
	if m.FDErr == nil || len(m.Files) != 0 {
		t.Fatalf("second message got %d files, FDErr %v", len(m.Files), m.FDErr)
	}
	mustClosed(t, p)
}

func TestTooManyFDsQueued(t *testing.T) {
	t.Run("one sendmsg of 17", func(t *testing.T) {
		c, peer := connPair(t)
		ps, fds := probes(t, 17)
		sendRaw(t, peer, `{"fds":17}`+"\n", fds...)
		if _, err := c.ReadMessage(); !errors.Is(err, ErrTooManyFDs) {
			t.Fatalf("err %v, want ErrTooManyFDs", err)
		}
		if _, err := c.ReadMessage(); !errors.Is(err, ErrTooManyFDs) {
			t.Fatalf("error not sticky: %v", err)
		}
		mustClosed(t, ps...)
	})
	t.Run("accumulated on one partial message", func(t *testing.T) {
		c, peer := connPair(t)
		ps, fds := probes(t, 18)
		sendRaw(t, peer, `{"fds":`, fds[:9]...)
		done := make(chan error)
		go func() { _, err := c.ReadMessage(); done <- err }()
		time.Sleep(20 * time.Millisecond)
		sendRaw(t, peer, `18`, fds[9:]...)
		if err := <-done; !errors.Is(err, ErrTooManyFDs) {
			t.Fatalf("err %v, want ErrTooManyFDs", err)
		}
		mustClosed(t, ps...)
	})
	t.Run("16 is fine", func(t *testing.T) {
		c, peer := connPair(t)
		ps, fds := probes(t, 16)
		sendRaw(t, peer, `{"fds":16}`+"\n", fds...)
		m := read(t, c)
		if len(m.Files) != 16 {
			t.Fatalf("got %d files", len(m.Files))
		}
		closeAll(m.Files)
		mustClosed(t, ps...)
	})
}

func probes(t testing.TB, n int) ([]*probe, []int) {
	var ps []*probe
	var fds []int
	for range n {
		p := newProbe(t)
		ps = append(ps, p)
		fds = append(fds, p.wfd(t))
	}
	return ps, fds
}

// 250 fds in one sendmsg (SCM_MAX_FD is 253) overflow the oob buffer: the
// kernel sets MSG_CTRUNC and closes what did not fit; we close the rest.
func TestHugeFDBatch(t *testing.T) {
	c, peer := connPair(t)
	p := newProbe(t)
	fds := make([]int, 250)
	for i := range fds {
		fd, err := unix.FcntlInt(uintptr(p.wfd(t)), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds[i] = fd
	}
	before := countFDs(t)
	sendRaw(t, peer, `{"fds":250}`+"\n", fds...)
	for _, fd := range fds {
		unix.Close(fd)
	}
	_, err := c.ReadMessage()
	if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrTooManyFDs) {
		t.Fatalf("err %v, want ErrTruncated", err)
	}
	if got := countFDs(t); got != before-250 {
		t.Errorf("open fds %d, want %d", got, before-250)
	}
	mustClosed(t, p)
}

func TestEOFClosesQueued(t *testing.T) {
	c, peer := connPair(t)
	p := newProbe(t)
	sendRaw(t, peer, `{"fds":1`, p.wfd(t)) // never completed
	peer.Close()
	if _, err := c.ReadMessage(); err != io.EOF {
		t.Fatalf("err %v, want io.EOF", err)
	}
	mustClosed(t, p)
}

func TestCloseClosesQueued(t *testing.T) {
	c, peer := connPair(t)
	p := newProbe(t)
	sendRaw(t, peer, `{"id":1}`+"\n"+`{"fds":1}`, p.wfd(t))
	read(t, c) // the partial second message and its fd stay queued
	c.Close()
	mustClosed(t, p)
	if _, err := c.ReadMessage(); err == nil {
		t.Fatal("read after Close succeeded")
	}
}

func TestCloseUnblocksReader(t *testing.T) {
	c, _ := connPair(t)
	done := make(chan error)
	go func() { _, err := c.ReadMessage(); done <- err }()
	time.Sleep(10 * time.Millisecond)
	c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("err %v", err)
	}
}

func writeAsync(peer *net.UnixConn, data []byte) <-chan error {
	ch := make(chan error, 1)
	go func() { _, err := peer.Write(data); ch <- err }()
	return ch
}

func TestLineLimit(t *testing.T) {
	t.Run("exactly the limit", func(t *testing.T) {
		c, peer := connPair(t)
		data := bytes.Repeat([]byte("a"), protocol.MaxMessage-1)
		data = append(data, '\n')
		data = append(data, "{}\n"...)
		werr := writeAsync(peer, data)
		m := read(t, c)
		if len(m.Line) != protocol.MaxMessage-1 {
			t.Fatalf("line length %d", len(m.Line))
		}
		if m := read(t, c); string(m.Line) != "{}" {
			t.Fatalf("next line %q", m.Line)
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
	})
	for _, extra := range []string{"\n", "", "bbbb\n"} {
		t.Run(fmt.Sprintf("one over, then %q", extra), func(t *testing.T) {
			c, peer := connPair(t)
			p := newProbe(t)
			sendRaw(t, peer, "x", p.wfd(t)) // an fd on the oversize message
			data := bytes.Repeat([]byte("a"), protocol.MaxMessage-1)
			data = append(data, extra...)
			werr := writeAsync(peer, data)
			if _, err := c.ReadMessage(); !errors.Is(err, ErrTooLong) {
				t.Fatalf("err %v, want ErrTooLong", err)
			}
			c.Close()
			<-werr
			mustClosed(t, p)
		})
	}
}

func TestWriteMessageWithFDs(t *testing.T) {
	a, b := socketPair(t)
	w, r := NewConn(a), NewConn(b)
	defer w.Close()
	defer r.Close()
	p1, p2 := newProbe(t), newProbe(t)
	if err := w.WriteMessage([]byte(`{"fds":2}`), p1.w, p2.w); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMessage([]byte(`{"id":2}`)); err != nil {
		t.Fatal(err)
	}
	m := read(t, r)
	if len(m.Files) != 2 || inode(t, m.Files[0]) != p1.ino(t) || inode(t, m.Files[1]) != p2.ino(t) {
		t.Fatalf("bad files %v", m.Files)
	}
	closeAll(m.Files)
	if m := read(t, r); string(m.Line) != `{"id":2}` || len(m.Files) != 0 {
		t.Fatalf("second message %q %d", m.Line, len(m.Files))
	}
	// The sender keeps its files.
	if _, err := p1.w.Write([]byte("x")); err != nil {
		t.Fatalf("sender's file was closed: %v", err)
	}
	p1.r.Read(make([]byte, 1))
	mustClosed(t, p1, p2)
}

func TestWriteMessageRejects(t *testing.T) {
	a, _ := socketPair(t)
	w := NewConn(a)
	defer w.Close()
	if err := w.WriteMessage([]byte("a\nb")); err == nil {
		t.Error("newline accepted")
	}
	if err := w.WriteMessage(make([]byte, protocol.MaxMessage)); !errors.Is(err, ErrTooLong) {
		t.Errorf("oversize: %v", err)
	}
	p := newProbe(t)
	p.w.Close()
	if err := w.WriteMessage([]byte("{}"), p.w); err == nil {
		t.Error("closed file accepted")
	}
}

// A message far larger than the socket buffer is sent with several
// write calls; the fds still travel with the first byte.
func TestPartialWrites(t *testing.T) {
	a, b := socketPair(t)
	rc, _ := a.SyscallConn()
	rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096) })
	w, r := NewConn(a), NewConn(b)
	defer w.Close()
	defer r.Close()
	p := newProbe(t)
	big := `{"fds":1,"pad":"` + strings.Repeat("z", 1<<20) + `"}`
	werr := make(chan error, 1)
	go func() { werr <- w.WriteMessage([]byte(big), p.w) }()
	m := read(t, r)
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if string(m.Line) != big || len(m.Files) != 1 {
		t.Fatalf("line length %d, %d files", len(m.Line), len(m.Files))
	}
	closeAll(m.Files)
	mustClosed(t, p)
}

func TestConcurrentWriters(t *testing.T) {
	a, b := socketPair(t)
	w, r := NewConn(a), NewConn(b)
	defer w.Close()
	defer r.Close()
	const writers, each = 4, 25
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				pr, pw, err := os.Pipe()
				if err != nil {
					t.Error(err)
					return
				}
				// Not inode(t, ...): only the test's goroutine may t.Fatal.
				fi, err := pw.Stat()
				if err != nil {
					t.Error(err)
					return
				}
				ino := fi.Sys().(*syscall.Stat_t).Ino
				line := fmt.Sprintf(`{"g":%d,"i":%d,"ino":%d,"fds":1,"pad":"%s"}`, g, i, ino, strings.Repeat("p", 3000*i))
				if err := w.WriteMessage([]byte(line), pw); err != nil {
					t.Error(err)
				}
				pr.Close()
				pw.Close()
			}
		}()
	}
	seen := map[[2]int]bool{}
	for range writers * each {
		m := read(t, r)
		var v struct {
			G, I int
			Ino  uint64
		}
		if err := json.Unmarshal(m.Line, &v); err != nil {
			t.Fatalf("interleaved message: %v", err)
		}
		if len(m.Files) != 1 || inode(t, m.Files[0]) != v.Ino {
			t.Fatalf("message %d/%d: wrong fd", v.G, v.I)
		}
		closeAll(m.Files)
		seen[[2]int{v.G, v.I}] = true
	}
	wg.Wait()
	if len(seen) != writers*each {
		t.Fatalf("saw %d distinct messages", len(seen))
	}
}

func TestReadDeadlineIsNotFatal(t *testing.T) {
	c, peer := connPair(t)
	sendRaw(t, peer, `{"a":`)
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := c.ReadMessage(); !os.IsTimeout(err) {
		t.Fatalf("err %v, want timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	sendRaw(t, peer, "1}\n")
	if m := read(t, c); string(m.Line) != `{"a":1}` {
		t.Fatalf("line %q", m.Line)
	}
}

func TestPeerCred(t *testing.T) {
	c, _ := connPair(t)
	cred, err := c.PeerCred()
	if err != nil {
		t.Fatal(err)
	}
	if int(cred.Uid) != os.Getuid() || int(cred.Pid) != os.Getpid() {
		t.Fatalf("cred %+v", cred)
	}
}

func TestNoFDLeakOverall(t *testing.T) {
	before := countFDs(t)
	func() {
		c, peer := connPair(t)
		ps, fds := probes(t, 3)
		sendRaw(t, peer, `{"fds":1}`+"\n"+`garbage`+"\n", fds[0], fds[1])
		sendRaw(t, peer, `{"fds":5}`+"\n", fds[2])
		m := read(t, c)
		closeAll(m.Files)
		read(t, c)
		read(t, c)
		c.Close()
		peer.Close()
		mustClosed(t, ps...)
		for _, p := range ps {
			p.r.Close()
		}
	}()
	if after := countFDs(t); after != before {
		t.Fatalf("fds before %d, after %d", before, after)
	}
}
