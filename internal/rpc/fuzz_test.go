package rpc

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/protocol"
)

// FuzzReadMessage feeds arbitrary bytes, with nfds%20 descriptors attached
// to the first of two writes split at split, through a socketpair. Whatever
// the input, ReadMessage must not panic, must return well-formed lines,
// must never hand out more fds than were sent, and must not leak one.
func FuzzReadMessage(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"protect","params":{},"fds":1}`+"\n"), uint8(1), uint16(0))
	f.Add([]byte("{\"fds\":2}\n{\"fds\":1}\n"), uint8(3), uint16(10))
	f.Add([]byte("not json\n{\"fds\":1}\n"), uint8(1), uint16(3))
	f.Add([]byte(`{"fds":-1}`+"\n"), uint8(1), uint16(0))
	f.Add([]byte(`{"fds":17}`+"\n"), uint8(17), uint16(0))
	f.Add([]byte("\n\n\n"), uint8(0), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, nfds uint8, split uint16) {
		n := int(nfds % 20)
		s := int(split)
		if s > len(data) {
			s = len(data)
		}
		c, peer := connPair(t)
		p := newProbe(t)
		fds := make([]int, n)
		for i := range fds {
			fd, err := unix.FcntlInt(uintptr(p.wfd(t)), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds[i] = fd
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer peer.CloseWrite()
			var oob []byte
			if n > 0 {
				oob = unix.UnixRights(fds...)
			}
			if s > 0 || n > 0 {
				k, _, err := peer.WriteMsgUnix(data[:s], oob, nil)
				if err != nil {
					return
				}
				s = k
			}
			peer.Write(data[s:])
		}()
		claimed := 0
		for {
			m, err := c.ReadMessage()
			if err != nil {
				break
			}
			if bytes.IndexByte(m.Line, '\n') >= 0 || len(m.Line) >= protocol.MaxMessage {
				t.Fatalf("bad line %q", m.Line)
			}
			if m.FDErr != nil && len(m.Files) != 0 {
				t.Fatal("files returned with FDErr")
			}
			claimed += len(m.Files)
			closeAll(m.Files)
		}
		c.Close()
		<-done
		for _, fd := range fds {
			unix.Close(fd)
		}
		if claimed > n {
			t.Fatalf("claimed %d fds, sent %d", claimed, n)
		}
		if !p.closedEverywhere(t) {
			t.Fatal("fd leaked")
		}
	})
}
