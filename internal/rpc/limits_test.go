package rpc

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/signaltest"
	"github.com/vpnd/vpnd/protocol"
)

// A malformed control buffer still gives up every fd it carries, so that
// the reader can close them: a well-formed SCM_RIGHTS message followed by
// one whose header claims more bytes than there are, itself carrying fds.
func TestParseRightsMalformed(t *testing.T) {
	ps, fds := probes(t, 4)
	good := unix.UnixRights(fds[0], fds[1])
	bad := unix.UnixRights(fds[2], fds[3])
	// Claim 64 more bytes than the buffer holds.
	binary.NativeEndian.PutUint64(bad[0:8], uint64(len(bad)+64))
	got, err := parseRights(append(good, bad...))
	if err == nil {
		t.Error("a malformed control message parsed without an error")
	}
	if len(got) != 4 {
		t.Fatalf("got fds %v, want the 4 the buffer carries", got)
	}
	for i, fd := range got {
		if fd != fds[i] {
			t.Errorf("fd %d: got %d, want %d", i, fd, fds[i])
		}
	}
	// The read path closes what parseRights returns: nothing stays open.
	closeFDs(got)
	mustClosed(t, ps...)

	// Well-formed buffers parse as before, and a bare header without
	// room for a header is an error.
	ps, fds = probes(t, 3)
	got, err = parseRights(append(unix.UnixRights(fds[0]), unix.UnixRights(fds[1], fds[2])...))
	if err != nil || len(got) != 3 {
		t.Fatalf("two SCM_RIGHTS messages: %v %v", got, err)
	}
	closeFDs(got)
	mustClosed(t, ps...)
	if _, err := parseRights(make([]byte, 7)); err == nil {
		t.Error("7 stray bytes parsed without an error")
	}
}

func TestParseEnvelope(t *testing.T) {
	for _, line := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"status","params":{"a":[1,{"b":"}"}]},"fds":2}`,
		` { "id" : "x\"y" , "method":"m" , "x":{"id":7}, "params" : [ ] } `,
		`{"params" : {} , "id":1}`,
		`{"\u0069d":3,"\u006dethod":"status","id":4}`,
		`{"ID":1,"Method":"status","fds":-1,"FDS":1}`,
		`{"params":null,"jsonrpc":2.0,"id":null,"method":"\ud83d\ude00"}`,
		`{}`, `[]`, `"x"`, `3`, `null`, `{"a":`, `{"a":1}}`, ``, "\xff",
		`{"a":"` + strings.Repeat(`\\`, 10) + `","id":[[[{}]]],"method":true}`,
	} {
		e := ParseEnvelope([]byte(line))
		checkEnvelope(t, line, e)
	}
}

// checkEnvelope compares e with what encoding/json decodes from line.
func checkEnvelope(t *testing.T, line string, e Envelope) {
	t.Helper()
	if got := json.Valid([]byte(line)); got != e.JSON {
		t.Fatalf("%q: JSON = %v, want %v", line, e.JSON, got)
	}
	var m map[string]json.RawMessage
	isObject := json.Unmarshal([]byte(line), &m) == nil && m != nil
	if e.Object != (e.JSON && isObject) {
		t.Fatalf("%q: Object = %v", line, e.Object)
	}
	if !e.Object {
		if e.JSONRPC != nil || e.ID != nil || e.Method != nil || e.Params != nil || e.FDs != nil {
			t.Fatalf("%q: members of a non-object: %+v", line, e)
		}
		return
	}
	for name, got := range map[string]json.RawMessage{"jsonrpc": e.JSONRPC, "id": e.ID, "method": e.Method, "params": e.Params, "fds": e.FDs} {
		want, ok := m[name]
		if ok != (got != nil) {
			t.Fatalf("%q: %s present = %v, want %v", line, name, got != nil, ok)
		}
		if ok && !jsonEqual(got, want) {
			t.Fatalf("%q: %s = %s, want %s", line, name, got, want)
		}
		// The value itself, without the white space around it: the
		// server looks at its first byte.
		if len(bytes.TrimSpace(got)) != len(got) {
			t.Fatalf("%q: %s = %q, with white space", line, name, got)
		}
	}
}

func jsonEqual(a, b []byte) bool {
	var ca, cb bytes.Buffer
	return json.Compact(&ca, a) == nil && json.Compact(&cb, b) == nil && bytes.Equal(ca.Bytes(), cb.Bytes())
}

// FuzzParseEnvelope: ParseEnvelope agrees with encoding/json's decoding
// into a map on every input.
func FuzzParseEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"status","params":{},"fds":1}`,
		`{"a":[1,2,{"b":"c\"}"}],"id":"x"}`, `{"\u0066ds":1}`, `[{"id":1}]`, `{"id":1,"id":2}`,
		` null `, `"x"`, `{"id":"\ud800"}`, "{\"id\":\"\xff\"}", `{"params" : {} }`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		checkEnvelope(t, string(line), ParseEnvelope(line))
	})
}

// Finding the envelope of a line of 340,000 members builds nothing per
// member: decoding it into a map took ten times the line.
func TestParseEnvelopeDoesNotAmplify(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"jsonrpc":"2.0","id":1,"method":"status",`)
	for i := 0; b.Len() < protocol.MaxMessage-32; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"a`)
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString(`":0`)
	}
	b.WriteString(`}`)
	line := []byte(b.String())
	// The fewest bytes allocated in a few runs: the counter is the
	// process's, and other goroutines may allocate meanwhile.
	least := uint64(1 << 62)
	for i := 0; i < 3; i++ {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ParseEnvelope(line)
		runtime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	if least > 4096 {
		t.Errorf("ParseEnvelope of a %d-byte line allocated %d bytes, want nothing", len(line), least)
	}
}

func limitedPair(t *testing.T, l ReadLimits) (*Conn, *net.UnixConn) {
	c, peer := connPair(t)
	c.SetReadLimits(l)
	return c, peer
}

// A line whose first byte arrived must complete within LineTimeout; an
// idle connection may stay idle.
func TestLineTimeout(t *testing.T) {
	c, peer := limitedPair(t, ReadLimits{LineTimeout: 200 * time.Millisecond})
	// Idle, the connection has no deadline: a user deadline of 400 ms
	// passes first, and is not fatal.
	c.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	if _, err := c.ReadMessage(); !os.IsTimeout(err) {
		t.Fatalf("idle: err %v, want the user's timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	peer.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"status"}` + "\n" + `{"jsonrpc":"2.0","id":2,`))
	if m := read(t, c); !bytes.Contains(m.Line, []byte(`"id":1`)) {
		t.Fatalf("line %q", m.Line)
	}
	start := time.Now()
	c.SetReadDeadline(start.Add(5 * time.Second)) // a hang guard, not fatal
	_, err := c.ReadMessage()
	if !errors.Is(err, ErrLineTimeout) {
		t.Fatalf("half a line: err %v, want ErrLineTimeout", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("the line timed out after %v, want about 200 ms", waited)
	}
	if _, err := c.ReadMessage(); !errors.Is(err, ErrLineTimeout) {
		t.Errorf("after the timeout: %v, want it again", err)
	}
}

// Lines beyond FreeBytes wait for a slot of the budget: with one slot,
// a second large line is not read while the first holds it, small lines
// are never held up, and the slot comes back when the first connection
// reads on (it has answered) or closes.
func TestBudgetBackpressure(t *testing.T) {
	b := NewBudget(protocol.MaxMessage, protocol.MaxMessage)
	if b.Free() != 1 {
		t.Fatalf("%d slots, want 1", b.Free())
	}
	big := []byte(`{"pad":"` + strings.Repeat("x", 1<<20) + `"}` + "\n")
	a, peerA := limitedPair(t, ReadLimits{Budget: b, Key: 1})
	c2, peerB := limitedPair(t, ReadLimits{Budget: b, Key: 2})
	small, peerS := limitedPair(t, ReadLimits{Budget: b, Key: 2})

	go peerA.Write(big)
	if m := read(t, a); len(m.Line) != len(big)-1 {
		t.Fatalf("first line: %d bytes", len(m.Line))
	}
	if b.Free() != 0 {
		t.Fatal("an unanswered large message holds no slot")
	}
	wrote := make(chan error, 1)
	go func() { _, err := peerB.Write(big); wrote <- err }()
	got := make(chan Message, 1)
	go func() {
		m, _ := c2.ReadMessage()
		got <- m
	}()
	peerS.Write([]byte(`{"id":"small"}` + "\n"))
	if m := read(t, small); string(m.Line) != `{"id":"small"}` {
		t.Fatalf("small line %q", m.Line)
	}
	select {
	case m := <-got:
		t.Fatalf("a second large line (%d bytes) was read with no slot free", len(m.Line))
	case <-time.After(300 * time.Millisecond):
	}
	// The first connection has answered: waiting for its next message
	// gives the slot back.
	waited := make(chan error, 1)
	go func() { waited <- a.Wait() }()
	select {
	case m := <-got:
		if len(m.Line) != len(big)-1 {
			t.Fatalf("second line: %d bytes", len(m.Line))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second large line was not read once the slot was free")
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	a.Close()
	<-waited
	c2.Close()
	if b.Free() != 1 {
		t.Fatalf("%d slots free after Close, want 1", b.Free())
	}
}

// Close wakes a reader waiting for a slot and gives back what it holds.
func TestCloseWhileWaitingForBudget(t *testing.T) {
	b := NewBudget(protocol.MaxMessage, protocol.MaxMessage)
	holder, peerH := limitedPair(t, ReadLimits{Budget: b})
	go peerH.Write([]byte(`{"pad":"` + strings.Repeat("x", 100<<10)))
	// Read until the holder has its slot (its line is over FreeBytes).
	holder.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	holder.ReadMessage()
	if b.Free() != 0 {
		t.Fatal("a partial line over FreeBytes holds no slot")
	}
	waiter, peerW := limitedPair(t, ReadLimits{Budget: b})
	go peerW.Write([]byte(`{"pad":"` + strings.Repeat("y", 100<<10)))
	errc := make(chan error, 1)
	go func() { _, err := waiter.ReadMessage(); errc <- err }()
	time.Sleep(100 * time.Millisecond)
	waiter.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("err %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a reader waiting for the budget")
	}
	holder.Close()
	if b.Free() != 1 {
		t.Fatalf("%d slots free, want 1", b.Free())
	}
}

// A connection holds no read buffer once it has nothing left to process
// (Wait then holds none either), and does not keep a buffer that grew for
// a long line: the start of the next line moves to a buffer of the first
// size. Otherwise a client could make every connection hold a buffer of
// 4 MiB for a line of a few bytes, outside the budget, which counts
// bytes, not buffers.
func TestBuffersReleased(t *testing.T) {
	c, peer := connPair(t)
	sendRaw(t, peer, `{"a":1}`+"\n")
	if err := c.Wait(); err != nil || c.buf != nil {
		t.Fatalf("Wait: %v, and a buffer of %d bytes", err, cap(c.buf))
	}
	read(t, c)
	if c.buf != nil {
		t.Fatalf("after a small message the connection holds %d bytes", cap(c.buf))
	}
	go peer.Write([]byte(`{"pad":"` + strings.Repeat("x", 1<<20) + `"}` + "\n" + `{"b":`))
	m := read(t, c)
	if len(m.Line) < 1<<20 {
		t.Fatalf("line %d bytes", len(m.Line))
	}
	// Only the start of the next line is kept, in a buffer of the first
	// size.
	for len(c.buf) == 0 {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		c.ReadMessage()
	}
	if cap(c.buf) > firstBuf {
		t.Fatalf("holding a partial line of %d bytes in %d", len(c.buf)-c.start, cap(c.buf))
	}
}

// One key holds at most its share of the slots: its next take waits while
// other keys still get slots, and a slot it gives back wakes it.
func TestBudgetShare(t *testing.T) {
	b := NewBudget(3*protocol.MaxMessage, 2*protocol.MaxMessage)
	never := make(chan struct{})
	for i := 0; i < 2; i++ {
		if !b.take(1, never) {
			t.Fatal("take failed")
		}
	}
	took := make(chan bool, 1)
	stop := make(chan struct{})
	go func() { took <- b.take(1, stop) }()
	select {
	case <-took:
		t.Fatal("a key took more than its share")
	case <-time.After(100 * time.Millisecond):
	}
	if !b.take(2, never) {
		t.Fatal("another key got no slot")
	}
	if b.Free() != 0 {
		t.Fatalf("%d slots free, want 0", b.Free())
	}
	b.give(1)
	select {
	case ok := <-took:
		if !ok {
			t.Fatal("the waiting take gave up")
		}
	case <-time.After(5 * time.Second): // a hang guard
		t.Fatal("a slot given back did not wake the waiting take")
	}
	// With every slot taken, a take gives up when stop closes.
	go func() { took <- b.take(3, stop) }()
	close(stop)
	if ok := <-took; ok {
		t.Fatal("a take with no free slot succeeded")
	}
}

// Wait returns when a message arrives, and at once when one is buffered.
func TestWait(t *testing.T) {
	c, peer := connPair(t)
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v with nothing to read", err)
	case <-time.After(100 * time.Millisecond):
	}
	sendRaw(t, peer, `{"a":1}`+"\n"+`{"b":2}`+"\n")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	read(t, c)
	if err := c.Wait(); err != nil {
		t.Fatalf("Wait with a message buffered: %v", err)
	}
	read(t, c)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := c.Wait(); !os.IsTimeout(err) {
		t.Fatalf("Wait past the deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	peer.Close()
	if err := c.Wait(); err != nil {
		t.Fatalf("Wait at EOF: %v", err)
	}
	if _, err := c.ReadMessage(); err != io.EOF {
		t.Fatalf("ReadMessage at EOF: %v", err)
	}
}

// Wait returns only when there is something to read, or with the read's
// error: a signal that interrupts its poll (EINTR) is not readiness.
// Before, such a Wait returned nil and its session sat in a read, with a
// read buffer, until the next request.
func TestWaitIgnoresSignals(t *testing.T) {
	const conns, rounds = 64, 200
	signaltest.Storm(t)
	var wg sync.WaitGroup
	var spurious atomic.Int64
	for range conns {
		c, _ := connPair(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				c.uc.SetReadDeadline(time.Now().Add(50 * time.Microsecond))
				if err := c.Wait(); err == nil {
					spurious.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := spurious.Load(); n > 0 {
		t.Errorf("Wait returned nil %d times of %d with nothing to read", n, conns*rounds)
	}
}
