// Package wire is the integration tests' own, deliberately independent
// implementation of vpnd's framing (docs/protocol.md): one JSON value per line,
// descriptors as SCM_RIGHTS in the same sendmsg as a message's first byte.
// It does not import internal/rpc on purpose, so that a bug in the daemon's
// codec cannot hide behind the same bug in the tests.
package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// maxFDsPerRead is how many descriptors one read accepts; vpnd sends at
// most one per message, so anything close to this is a bug.
const maxFDsPerRead = 64

// Conn is a client connection to vpnd's socket.
type Conn struct {
	fd     int
	buf    []byte // bytes read and not yet returned as a line
	fds    []int  // descriptors received and not yet returned
	eof    bool
	rdErr  error
	closed bool
}

// Dial connects to the Unix socket at path.
func Dial(path string) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect %s: %w", path, err)
	}
	return &Conn{fd: fd}, nil
}

// FD returns the connection's socket descriptor.
func (c *Conn) FD() int { return c.fd }

// Close closes the connection and every received descriptor not yet taken.
func (c *Conn) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
	return unix.Close(c.fd)
}

// Send writes msg (which should end in '\n' to form a complete line) with
// fds attached to its first byte, then the rest of it. It sends the first
// byte alone when fds is not empty, so the descriptors travel exactly with
// the message's first byte.
func (c *Conn) Send(msg []byte, fds ...int) error {
	if len(fds) > 0 {
		if len(msg) == 0 {
			return errors.New("cannot attach descriptors to an empty message")
		}
		oob := unix.UnixRights(fds...)
		if err := unix.Sendmsg(c.fd, msg[:1], oob, nil, 0); err != nil {
			return fmt.Errorf("sendmsg: %w", err)
		}
		msg = msg[1:]
	}
	for len(msg) > 0 {
		n, err := unix.Write(c.fd, msg)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("write: %w", err)
		}
		msg = msg[n:]
	}
	return nil
}

// ReadLine returns the next line (without '\n') and the descriptors that
// arrived with the bytes read so far and have not been returned yet. The
// caller decides, from the message's "fds" member, how many of them belong
// to the line: use TakeFDs. io.EOF means the peer closed the connection;
// a final partial line is returned as an error.
func (c *Conn) ReadLine() ([]byte, error) {
	for {
		if i := bytes.IndexByte(c.buf, '\n'); i >= 0 {
			line := append([]byte(nil), c.buf[:i]...)
			c.buf = c.buf[i+1:]
			return line, nil
		}
		if c.eof {
			if len(c.buf) > 0 {
				return nil, fmt.Errorf("connection closed inside a message (%d bytes)", len(c.buf))
			}
			if c.rdErr != nil {
				return nil, c.rdErr
			}
			return nil, io.EOF
		}
		if err := c.fill(); err != nil {
			return nil, err
		}
	}
}

// TakeFDs removes and returns the next n received descriptors.
func (c *Conn) TakeFDs(n int) ([]int, error) {
	if n > len(c.fds) {
		return nil, fmt.Errorf("message declares %d descriptors, %d received", n, len(c.fds))
	}
	out := append([]int(nil), c.fds[:n]...)
	c.fds = c.fds[n:]
	return out, nil
}

// PendingFDs is how many received descriptors no message has taken.
func (c *Conn) PendingFDs() int { return len(c.fds) }

func (c *Conn) fill() error {
	b := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxFDsPerRead*4))
	for {
		n, oobn, flags, _, err := unix.Recvmsg(c.fd, b, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// A peer that closes with unread data makes the kernel report
			// ECONNRESET once the queue is drained: that is a close too.
			if err == unix.ECONNRESET {
				c.eof, c.rdErr = true, nil
				return nil
			}
			return fmt.Errorf("recvmsg: %w", err)
		}
		if oobn > 0 {
			msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
			if perr != nil {
				return fmt.Errorf("parse control message: %w", perr)
			}
			for _, m := range msgs {
				fds, rerr := unix.ParseUnixRights(&m)
				if rerr != nil {
					continue
				}
				c.fds = append(c.fds, fds...)
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return errors.New("control message truncated (MSG_CTRUNC)")
		}
		if n == 0 {
			c.eof = true
			return nil
		}
		c.buf = append(c.buf, b[:n]...)
		return nil
	}
}

// File wraps a received descriptor.
func File(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }

// FromFD wraps an already connected socket, for example one that another
// process connected and handed over. The Conn owns fd.
func FromFD(fd int) *Conn { return &Conn{fd: fd} }
