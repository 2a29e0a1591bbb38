// Package rpc is vpnd's wire codec (contract §2): newline-framed JSON-RPC
// messages over a SOCK_STREAM Unix socket, with file descriptors passed as
// SCM_RIGHTS. Both the daemon and the public client use it, so that the
// fd-claiming rules are implemented exactly once.
//
// Descriptors and bytes travel separately: the kernel delivers the fds of a
// sendmsg together with the read that contains the first byte of that
// sendmsg, and a message says how many it carries with a top-level "fds"
// member. Conn therefore queues every received fd in arrival order, lets
// each complete line claim the next N, and closes what no message can
// claim any more.
package rpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/protocol"
)

// Fatal read errors. After any of them the connection is unusable and
// ReadMessage keeps returning the same error.
var (
	// ErrTooLong: a line (newline included) is longer than
	// protocol.MaxMessage. The daemon answers a parse error, then closes.
	ErrTooLong = errors.New("rpc: message longer than 4 MiB")
	// ErrTooManyFDs: more than protocol.MaxQueuedFDs descriptors were
	// queued and not claimed.
	ErrTooManyFDs = fmt.Errorf("rpc: more than %d file descriptors queued", protocol.MaxQueuedFDs)
	// ErrTruncated: the kernel truncated the ancillary data (MSG_CTRUNC):
	// the peer sent more descriptors in one sendmsg than we accept.
	ErrTruncated = errors.New("rpc: ancillary data truncated")
)

// maxFDsPerRead sizes the oob buffer. It is larger than MaxQueuedFDs so
// that a peer sending 17..32 fds at once is detected as ErrTooManyFDs with
// every fd accounted for; more than that is ErrTruncated, and the kernel
// closes whatever did not fit.
const maxFDsPerRead = 32

// readChunk is how much one recvmsg asks for.
const readChunk = 64 << 10

// Message is one received line and the descriptors it claimed.
type Message struct {
	// Line is the message without its trailing newline. It is a copy the
	// caller owns.
	Line []byte
	// Files are the descriptors the line claimed through its "fds"
	// member, in arrival order. The caller owns and must close them.
	Files []*os.File
	// FDErr is non-nil if the "fds" member was bad: not a non-negative
	// integer, or more than were queued. Files is then nil and every fd
	// the line would have claimed has been closed.
	FDErr error
	// Members are the line's top-level members, decoded once here to find
	// "fds", when the line is a JSON object; nil otherwise. A reader may
	// use them instead of decoding the line again.
	Members map[string]json.RawMessage
}

// queuedFD is a received descriptor waiting to be claimed. end is the
// stream offset just past the read that delivered it: the sender attached
// it to some byte before end, so a message starting at or after end
// cannot own it.
type queuedFD struct {
	f   *os.File
	end int64
}

// Conn is a framed, fd-passing connection. ReadMessage must be called from
// one goroutine at a time; WriteMessage, Close and the deadline setters may
// be called concurrently with it and with each other.
type Conn struct {
	uc *net.UnixConn

	wmu sync.Mutex // serialises whole messages on the write side

	rmu     sync.Mutex // serialises readers
	rbuf    []byte     // recvmsg buffer
	oob     []byte
	buf     []byte // received, unprocessed bytes are buf[start:]
	start   int
	scanned int   // buf[start:scanned] holds no newline
	bufOff  int64 // stream offset of buf[start]
	readOff int64 // stream offset of the next byte to be read
	rerr    error // sticky fatal read error

	qmu    sync.Mutex // guards queue and closed (Close runs concurrently with reads)
	queue  []queuedFD
	closed bool
}

// NewConn wraps c. The Conn owns c from now on.
func NewConn(c *net.UnixConn) *Conn {
	return &Conn{
		uc:   c,
		rbuf: make([]byte, readChunk),
		oob:  make([]byte, unix.CmsgSpace(maxFDsPerRead*4)),
	}
}

// UnixConn returns the underlying connection, for the local and remote
// addresses. Reading or writing it directly breaks the framing.
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// ReadMessage returns the next complete line. A non-nil error is fatal for
// the connection: io.EOF, ErrTooLong, ErrTooManyFDs, ErrTruncated or a
// socket error. A timeout set with SetReadDeadline is the exception: it is
// returned as is and reading may continue.
func (c *Conn) ReadMessage() (Message, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rerr != nil {
		return Message{}, c.rerr
	}
	// After Close, lines already buffered are not handed out: whoever
	// closed the connection is done with it, and a reader that went on
	// would serve requests it can no longer answer.
	c.qmu.Lock()
	closed := c.closed
	c.qmu.Unlock()
	if closed {
		return Message{}, net.ErrClosed
	}
	for {
		if i := bytes.IndexByte(c.buf[c.scanned:], '\n'); i >= 0 {
			end := c.scanned + i // index of the newline
			if end-c.start+1 > protocol.MaxMessage {
				return Message{}, c.fail(ErrTooLong)
			}
			return c.takeLine(end), nil
		}
		c.scanned = len(c.buf)
		if len(c.buf)-c.start >= protocol.MaxMessage {
			return Message{}, c.fail(ErrTooLong)
		}
		if err := c.fill(); err != nil {
			return Message{}, err
		}
	}
}

// takeLine cuts buf[start:nl] out as a message and claims its fds.
func (c *Conn) takeLine(nl int) Message {
	line := bytes.Clone(c.buf[c.start:nl])
	msgStart := c.bufOff
	next := c.bufOff + int64(nl-c.start+1)
	c.start = nl + 1
	c.scanned = c.start
	c.bufOff = next
	if c.start == len(c.buf) {
		c.buf, c.start, c.scanned = c.buf[:0], 0, 0
	}

	members := objectMembers(line)
	n, fdErr := declaredFDs(members)
	m := Message{Line: line, Members: members}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	c.dropStrayLocked(msgStart)
	switch {
	case fdErr != nil:
		m.FDErr = fdErr
	case n > len(c.queue):
		m.FDErr = fmt.Errorf("rpc: message declares %d fds, %d received", n, len(c.queue))
		n = len(c.queue)
		closeQueued(c.queue[:n])
		c.queue = c.queue[n:]
	case n > 0:
		m.Files = make([]*os.File, n)
		for i := range n {
			m.Files[i] = c.queue[i].f
		}
		c.queue = c.queue[n:]
	}
	// Whatever arrived with a read that ended inside this message was
	// attached to this message or an earlier one: no later message can
	// claim it.
	c.dropStrayLocked(next)
	return m
}

// dropStrayLocked closes queued fds delivered by reads that ended at or
// before off.
func (c *Conn) dropStrayLocked(off int64) {
	i := 0
	for i < len(c.queue) && c.queue[i].end <= off {
		i++
	}
	if i > 0 {
		closeQueued(c.queue[:i])
		c.queue = c.queue[i:]
	}
}

// fill performs one recvmsg, queueing any fds it delivers.
func (c *Conn) fill() error {
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.rbuf, c.oob)
	fds, perr := parseRights(c.oob[:oobn])

	if perr != nil {
		closeFDs(fds)
		return c.fail(perr)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		closeFDs(fds)
		return c.fail(ErrTruncated)
	}

	if n > 0 {
		if c.start > 0 && c.start >= len(c.buf)/2 {
			k := copy(c.buf, c.buf[c.start:])
			c.buf = c.buf[:k]
			c.scanned -= c.start
			c.start = 0
		}
		c.buf = append(c.buf, c.rbuf[:n]...)
		c.readOff += int64(n)
	}
	if len(fds) > 0 {
		c.qmu.Lock()
		if c.closed {
			// Close ran while we were in recvmsg: nobody will drain
			// the queue any more.
			c.qmu.Unlock()
			closeFDs(fds)
			return c.fail(net.ErrClosed)
		}
		for _, fd := range fds {
			c.queue = append(c.queue, queuedFD{f: os.NewFile(uintptr(fd), "rpc-fd"), end: c.readOff})
		}
		// Everything before the first unprocessed byte has been
		// processed, so fds from reads that ended there are strays.
		c.dropStrayLocked(c.bufOff)
		tooMany := len(c.queue) > protocol.MaxQueuedFDs
		c.qmu.Unlock()
		if tooMany {
			return c.fail(ErrTooManyFDs)
		}
	}

	if err != nil {
		if errors.Is(err, io.EOF) {
			return c.fail(io.EOF)
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return err
		}
		return c.fail(err)
	}
	if n == 0 && len(fds) == 0 {
		return c.fail(io.EOF)
	}
	return nil
}

// fail records a fatal read error and releases every queued fd.
func (c *Conn) fail(err error) error {
	c.rerr = err
	c.buf, c.start, c.scanned = nil, 0, 0
	c.qmu.Lock()
	closeQueued(c.queue)
	c.queue = nil
	c.qmu.Unlock()
	return err
}

// parseRights returns every fd in every SCM_RIGHTS message of oob. On a
// parse error it still returns the fds it could extract, for closing.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("rpc: parse control message: %w", err)
	}
	var fds []int
	var perr error
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil && perr == nil {
			perr = fmt.Errorf("rpc: parse SCM_RIGHTS: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, perr
}

// objectMembers decodes line's top-level members if it is a JSON object,
// and returns nil otherwise.
func objectMembers(line []byte) map[string]json.RawMessage {
	i := 0
	for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r') {
		i++
	}
	if i == len(line) || line[i] != '{' {
		return nil // not an object: no need to parse
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		return nil
	}
	return obj
}

// declaredFDs reads the "fds" member. A line that is not a JSON object, or
// has no "fds", declares 0. The key is matched exactly, unlike
// encoding/json's case-insensitive struct fields.
func declaredFDs(members map[string]json.RawMessage) (int, error) {
	raw, ok := members["fds"]
	if !ok {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(raw), 10, 31)
	if err != nil {
		return 0, fmt.Errorf("rpc: \"fds\" must be a non-negative integer, got %.20s", raw)
	}
	return int(n), nil
}

// WriteMessage sends line followed by a newline, with files attached as
// SCM_RIGHTS to the first byte. It writes the whole message or fails;
// concurrent calls do not interleave. The caller keeps ownership of files.
func (c *Conn) WriteMessage(line []byte, files ...*os.File) error {
	if len(line)+1 > protocol.MaxMessage {
		return ErrTooLong
	}
	if bytes.IndexByte(line, '\n') >= 0 {
		return errors.New("rpc: message contains a newline")
	}
	if len(files) > protocol.MaxQueuedFDs {
		return fmt.Errorf("rpc: %d files in one message, at most %d", len(files), protocol.MaxQueuedFDs)
	}
	b := make([]byte, len(line)+1)
	copy(b, line)
	b[len(line)] = '\n'

	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(files) == 0 {
		_, err := c.uc.Write(b)
		return err
	}
	err := withFDs(files, make([]int, 0, len(files)), func(fds []int) error {
		n, _, err := c.uc.WriteMsgUnix(b, unix.UnixRights(fds...), nil)
		if err != nil {
			return err
		}
		if n < len(b) {
			// The fds went with the first byte; the rest is plain data.
			_, err = c.uc.Write(b[n:])
		}
		return err
	})
	runtime.KeepAlive(files)
	return err
}

// withFDs calls fn with the raw descriptors of files. It nests
// SyscallConn().Control so that every fd stays referenced, and cannot be
// closed and reused, until fn returns. Fd() is avoided on purpose: it
// would switch a shared non-blocking file (the TUN) to blocking mode.
func withFDs(files []*os.File, fds []int, fn func([]int) error) error {
	if len(files) == 0 {
		return fn(fds)
	}
	f := files[0]
	if f == nil {
		return errors.New("rpc: nil file")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("rpc: file %s: %w", f.Name(), err)
	}
	var ferr error
	cerr := rc.Control(func(fd uintptr) {
		ferr = withFDs(files[1:], append(fds, int(fd)), fn)
	})
	if cerr != nil {
		return fmt.Errorf("rpc: file %s: %w", f.Name(), cerr)
	}
	return ferr
}

// SetReadDeadline sets the deadline for ReadMessage.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for WriteMessage. A write that times
// out may have sent part of a message; the connection must then be closed.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.uc.SetWriteDeadline(t) }

// PeerCred returns the peer's credentials as the kernel recorded them at
// connect time (SO_PEERCRED). Nothing the peer sends can change them.
func (c *Conn) PeerCred() (*unix.Ucred, error) {
	rc, err := c.uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("getsockopt SO_PEERCRED", serr)
	}
	return cred, nil
}

// Close closes the socket and every fd still queued. It unblocks a
// concurrent ReadMessage, and is safe to call more than once.
func (c *Conn) Close() error {
	err := c.uc.Close()
	c.qmu.Lock()
	c.closed = true
	closeQueued(c.queue)
	c.queue = nil
	c.qmu.Unlock()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func closeQueued(q []queuedFD) {
	for _, e := range q {
		e.f.Close()
	}
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}
