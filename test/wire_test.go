package test

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// maxMessage is the protocol's limit, newline included.
const maxMessage = 4 << 20

// probePipe returns the read end of a fresh pipe, to be sent to vpnd, and
// a function reporting whether some copy of it is still open anywhere:
// once vpnd closed its copy (and ours is closed), writing gives EPIPE.
func probePipe(t testing.TB) (int, func() bool) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	rfd, err := unix.Dup(int(r.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	t.Cleanup(func() { w.Close() })
	sent := false
	return rfd, func() bool {
		if !sent {
			unix.Close(rfd) // our copy, after it was sent
			sent = true
		}
		_, err := w.Write([]byte{0})
		return !errors.Is(err, syscall.EPIPE)
	}
}

// wantClosedByVPND waits until vpnd closed its copy of a probe pipe.
func wantClosedByVPND(t testing.TB, open func() bool, what string) {
	t.Helper()
	eventually(t, what+": vpnd closes the descriptor", func() (bool, string) {
		return !open(), "the pipe still has a reader"
	})
}

// The wire.
func TestWire(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)

	t.Run("pipelined requests answered in order with their ids", func(t *testing.T) {
		c := d.rawConn(t)
		batch := request(1, "status", "{}", 0) + "\n" +
			`{"jsonrpc":"2.0","id":"b","method":"nope"}` + "\n" +
			request(3, "destroy", "{}", 0) + "\n" +
			`{"jsonrpc":"2.0","id":4.5,"method":"status","params":{}}` + "\n" +
			request(5, "status", "{}", 0)
		writeLine(t, c, batch)
		for _, want := range []string{"1", `"b"`, "3", "4.5", "5"} {
			m := mustRead(t, c)
			if string(m.ID) != want {
				t.Errorf("response id %s, want %s: %s", m.ID, want, m.raw)
			}
		}
	})

	t.Run("notifications get no response", func(t *testing.T) {
		c := d.rawConn(t)
		writeLine(t, c, `{"jsonrpc":"2.0","method":"status","params":{}}`+"\n"+
			`{"jsonrpc":"2.0","method":"nope"}`+"\n"+
			`{"jsonrpc":"2.0","method":"destroy","params":{}}`+"\n"+
			request(9, "status", "{}", 0))
		m := mustRead(t, c)
		if !m.idIs(9) {
			t.Errorf("first message %s, want the response to id 9", m.raw)
		}
	})

	t.Run("a line of exactly 4 MiB is accepted", func(t *testing.T) {
		c := d.rawConn(t)
		// JSON whitespace pads a status request to exactly 4 MiB with the
		// newline.
		head, tail := `{"jsonrpc":"2.0","id":1,"method":"status","params":{}`, `}`
		line := head + strings.Repeat(" ", maxMessage-len(head)-len(tail)-1) + tail
		if len(line)+1 != maxMessage {
			t.Fatalf("built %d bytes", len(line)+1)
		}
		writeLine(t, c, line)
		m := mustRead(t, c)
		ok(t, m)
		if !m.idIs(1) {
			t.Errorf("response %s, want id 1", m.raw)
		}

		// A 4 MiB unknown method: the answer must still fit in a message,
		// so vpnd must not echo the whole name back.
		head, tail = `{"jsonrpc":"2.0","id":2,"method":"`, `"}`
		line = head + strings.Repeat("x", maxMessage-len(head)-len(tail)-1) + tail
		writeLine(t, c, line)
		wantError(t, mustRead(t, c), -32601)
		writeLine(t, c, request(3, "status", "{}", 0))
		ok(t, mustRead(t, c))
	})

	t.Run("a longer line: parse error, connection closed, others served", func(t *testing.T) {
		other := d.rawConn(t)
		c := d.rawConn(t)
		line := `{"jsonrpc":"2.0","id":1,"method":"` + strings.Repeat("x", maxMessage) + `"}`
		// vpnd may close while we still write; that is fine. Wait for the
		// writer before the connection's fd is closed and reused.
		wrote := make(chan struct{})
		defer func() { <-wrote }()
		go func() {
			defer close(wrote)
			c.Send([]byte(line + "\n"))
		}()
		m, open := readMsg(t, c)
		if !open {
			t.Fatalf("vpnd closed the connection without a parse error")
		}
		wantError(t, m, -32700)
		if _, open := readMsg(t, c); open {
			t.Errorf("the connection stays open after an oversize message")
		}
		writeLine(t, other, request(7, "status", "{}", 0))
		ok(t, mustRead(t, other))
		fresh := d.rawConn(t)
		writeLine(t, fresh, request(8, "status", "{}", 0))
		ok(t, mustRead(t, fresh))
	})

	t.Run("undeclared descriptors are closed", func(t *testing.T) {
		c := d.rawConn(t)
		fd, open := probePipe(t)
		writeLine(t, c, request(1, "status", "{}", 0), fd)
		ok(t, mustRead(t, c))
		wantClosedByVPND(t, open, "fd on a message without \"fds\"")
		writeLine(t, c, request(2, "status", "{}", 0))
		ok(t, mustRead(t, c))
	})

	t.Run("descriptors of failed messages are closed", func(t *testing.T) {
		c := d.rawConn(t)
		for _, tc := range []struct {
			name, line string
			code       int
		}{
			{"unknown method", `{"jsonrpc":"2.0","id":1,"method":"nope","fds":1}`, -32601},
			{"not JSON", `nope {"fds":1}`, -32700},
			{"not a request", `{"jsonrpc":"1.0","id":1,"method":"status","fds":1}`, -32600},
			{"protect of a pipe", `{"jsonrpc":"2.0","id":1,"method":"protect","params":{},"fds":1}`, 2203004},
			{"setUp with bad params", `{"jsonrpc":"2.0","id":1,"method":"setUp","params":{"addresses":[]},"fds":1}`, 19900001},
		} {
			fd, open := probePipe(t)
			writeLine(t, c, tc.line, fd)
			wantError(t, mustRead(t, c), tc.code)
			wantClosedByVPND(t, open, tc.name)
		}
	})

	t.Run("descriptors queued when the connection ends are closed", func(t *testing.T) {
		c := d.rawConn(t)
		fd, open := probePipe(t)
		if err := c.Send([]byte(`{"jsonrpc"`), fd); err != nil {
			t.Fatal(err)
		}
		c.Close()
		wantClosedByVPND(t, open, "fd queued at close")
	})

	t.Run("more than 16 queued descriptors close the connection", func(t *testing.T) {
		c := d.rawConn(t)
		fd, open := probePipe(t)
		fds := []int{fd}
		for i := 1; i < 17; i++ {
			dup, err := unix.Dup(fd)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, dup)
		}
		sendMayBeCut(t, c, request(1, "protect", "{}", 17), fds...)
		for i := 1; i < 17; i++ {
			unix.Close(fds[i])
		}
		if msgs := readUntilClosed(t, c); len(msgs) > 1 {
			t.Errorf("vpnd answered %d messages on a connection with 17 queued fds", len(msgs))
		}
		wantClosedByVPND(t, open, "17 queued fds")
	})

	t.Run("each message takes the next declared fds in arrival order", func(t *testing.T) {
		c := d.rawConn(t)
		pipeFD, open := probePipe(t)
		udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(udp)
		writeLine(t, c, request(1, "protect", "{}", 1), pipeFD)
		writeLine(t, c, request(2, "status", "{}", 0))
		writeLine(t, c, request(3, "protect", "{}", 1), udp)
		m := mustRead(t, c)
		if !m.idIs(1) {
			t.Fatalf("first response %s", m.raw)
		}
		wantError(t, m, 2203004)
		ok(t, mustRead(t, c))
		m = mustRead(t, c)
		if !m.idIs(3) {
			t.Fatalf("third response %s", m.raw)
		}
		ok(t, m)
		if mk := markOf(t, udp); mk != d.protectedMark(0) {
			t.Errorf("the UDP socket sent with the third message has SO_MARK %#x, want %#x", mk, d.protectedMark(0))
		}
		wantClosedByVPND(t, open, "pipe of a failed protect")
	})

	t.Run("setUp's response carries the TUN fd", func(t *testing.T) {
		c := d.rawConn(t)
		writeLine(t, c, request(1, "setUp", setUpParams, 0))
		m := mustRead(t, c) // readMsg closes the received fd
		setUpOK(t, m)
		wantTUNFD(t, m, "vpn-tun", true)
		d.waitClean(t, "the only TUN fd closed")
	})
}
