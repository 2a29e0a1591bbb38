// Package rpc is vpnd's wire codec (docs/protocol.md): newline-framed JSON-RPC
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
//
// A daemon holds many connections and must not let any peer make it hold
// much memory. A Conn allocates a read buffer when it reads, and the
// buffer goes with the line that ends it: a connection that has nothing
// left to process holds no buffer, and a daemon that waits for each
// request in Wait holds none for an idle connection. ReadLimits add a
// deadline for a line to complete and a Budget of bytes held across
// connections.
package rpc

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

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
	// ErrLineTimeout: a line did not complete within
	// ReadLimits.LineTimeout of its first byte.
	ErrLineTimeout = errors.New("rpc: line not completed in time")
)

// maxFDsPerRead sizes the oob buffer. It is larger than MaxQueuedFDs so
// that a peer sending 17..32 fds at once is detected as ErrTooManyFDs with
// every fd accounted for; more than that is ErrTruncated, and the kernel
// closes whatever did not fit.
const maxFDsPerRead = 32

// readChunk is the most one recvmsg asks for.
const readChunk = 64 << 10

// firstBuf is the size of a read buffer: a usual request fits (a status
// request is 45 bytes, a typical setUp a few hundred). A longer line
// grows the buffer.
const firstBuf = 1 << 10

var oobSize = unix.CmsgSpace(maxFDsPerRead * 4)

// Message is one received line and the descriptors it claimed.
type Message struct {
	// Line is the message without its trailing newline. The caller owns
	// it.
	Line []byte
	// Files are the descriptors the line claimed through its "fds"
	// member, in arrival order. The caller owns and must close them.
	Files []*os.File
	// FDErr is non-nil if the "fds" member was bad: not a non-negative
	// integer, or more than were queued. Files is then nil and every fd
	// the line would have claimed has been closed.
	FDErr error
	// Envelope holds the line's JSON-RPC members, found once here to read
	// "fds"; a reader may use them instead of decoding the line again.
	Envelope Envelope
}

// ReadLimits bound what a peer can make a daemon's ReadMessage hold.
type ReadLimits struct {
	// LineTimeout is how long a line may take to complete once its first
	// byte arrived; then ReadMessage fails with ErrLineTimeout. Zero
	// means no limit. A connection with no partial line may stay idle
	// for ever.
	LineTimeout time.Duration
	// Budget, if not nil, is drawn from for the bytes of a message beyond
	// FreeBytes, in the share of Key. A message's bytes count until the
	// next ReadMessage call, when the caller has answered it, or
	// until Close.
	Budget *Budget
	Key    uint32
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
	uc   *net.UnixConn
	stop chan struct{} // closed by Close and CloseRead: stop waiting for budget

	wmu sync.Mutex // serialises whole messages on the write side

	rmu       sync.Mutex // serialises readers
	buf       []byte     // received, unprocessed bytes are buf[start:]
	oob       []byte     // the ancillary data of a read
	start     int
	scanned   int   // buf[start:scanned] holds no newline
	bufOff    int64 // stream offset of buf[start]
	readOff   int64 // stream offset of the next byte to be read
	lineStart time.Time
	lastRead  time.Time
	lastSize  int   // bytes of the last message handed out
	rerr      error // sticky fatal read error
	limits    ReadLimits

	dmu          sync.Mutex // guards the deadlines
	userDeadline time.Time
	lineDeadline time.Time

	qmu      sync.Mutex // guards queue, closed, slot and stopped (Close runs concurrently with reads)
	queue    []queuedFD
	closed   bool
	stopped  bool
	slot     bool // holds a slot of limits.Budget
	stopOnce sync.Once
}

// NewConn wraps c. The Conn owns c from now on.
func NewConn(c *net.UnixConn) *Conn {
	return &Conn{uc: c, stop: make(chan struct{})}
}

// SetReadLimits sets the limits for ReadMessage. Call it before the first
// ReadMessage.
func (c *Conn) SetReadLimits(l ReadLimits) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.limits = l
}

// UnixConn returns the underlying connection, for the local and remote
// addresses. Reading or writing it directly breaks the framing.
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// ReadMessage returns the next complete line. A non-nil error is fatal for
// the connection: io.EOF, ErrTooLong, ErrTooManyFDs, ErrTruncated,
// ErrLineTimeout or a socket error. A timeout set with SetReadDeadline is
// the exception: it is returned as is and reading may continue.
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
	// The caller has dealt with the previous message.
	c.lastSize = 0
	c.settle()
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

// Wait blocks until the connection has something for ReadMessage (bytes,
// the end of the stream or an error) without reading, and so without a
// read buffer: a server that calls it before each ReadMessage holds no
// buffer for an idle connection. The caller has dealt with the last
// message: its bytes no longer count against the budget. Wait returns
// nil, or the error a read would return now (a timeout set with
// SetReadDeadline, net.ErrClosed). Like ReadMessage, it is for one
// goroutine at a time.
func (c *Conn) Wait() error {
	if len(c.buf) > c.start || c.rerr != nil {
		return nil
	}
	c.lastSize = 0
	c.settle()
	rc, err := c.uc.SyscallConn()
	if err != nil {
		return err
	}
	err = rc.Read(func(fd uintptr) bool {
		p := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		for {
			n, err := unix.Poll(p[:], 0)
			if err == unix.EINTR {
				continue // a signal (the runtime's own, to preempt) is not readiness
			}
			return err != nil || n > 0
		}
	})
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return net.ErrClosed
	}
	return err
}

// takeLine cuts buf[start:nl] out as a message and claims its fds.
func (c *Conn) takeLine(nl int) Message {
	var line []byte
	if nl+1 == len(c.buf) || cap(c.buf) > firstBuf {
		// Nothing follows the line, or the buffer grew for it: the
		// buffer goes with the line, and whatever follows moves to a
		// buffer of the first size, so that a connection keeps no large
		// buffer for a short rest.
		line = c.buf[c.start:nl:nl]
		rest := c.buf[nl+1:]
		c.buf = nil
		if len(rest) > 0 {
			c.buf = append(make([]byte, 0, max(firstBuf, len(rest))), rest...)
		}
		c.start, c.scanned = 0, 0
	} else {
		line = bytes.Clone(c.buf[c.start:nl])
		c.start = nl + 1
		c.scanned = c.start
	}
	msgStart := c.bufOff
	size := len(line) + 1
	next := c.bufOff + int64(size)
	c.bufOff = next
	c.lastSize = size
	c.lineStart = c.lastRead // the next line, if any, began with the last read

	env := ParseEnvelope(line)
	n, fdErr := declaredFDs(env.FDs)
	m := Message{Line: line, Envelope: env}
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

// pending is how many bytes this connection holds for the budget: the
// unprocessed ones and the last message handed out.
func (c *Conn) pending() int { return len(c.buf) - c.start + c.lastSize }

// settle gives back the budget slot once the connection holds no more
// than FreeBytes.
func (c *Conn) settle() {
	b := c.limits.Budget
	if b == nil || c.pending() > FreeBytes {
		return
	}
	c.qmu.Lock()
	had := c.slot
	c.slot = false
	c.qmu.Unlock()
	if had {
		b.give(c.limits.Key)
	}
}

// room returns how many bytes the next read may take: up to readChunk,
// and within FreeBytes, or within a budget slot (a whole message and
// FreeBytes). A line that outgrows FreeBytes waits for a slot, and the
// wait does not count against its LineTimeout: the connections that hold
// the slots complete their lines or time out, so a slot always comes,
// and meanwhile the waiting line holds no more than FreeBytes.
func (c *Conn) room() (int, error) {
	b := c.limits.Budget
	if b == nil {
		return readChunk, nil
	}
	c.qmu.Lock()
	slot := c.slot
	c.qmu.Unlock()
	if !slot && c.pending() >= FreeBytes {
		waitStart := time.Now()
		if !b.take(c.limits.Key, c.stop) {
			return 0, c.fail(net.ErrClosed)
		}
		c.lineStart = c.lineStart.Add(time.Since(waitStart))
		c.qmu.Lock()
		if c.stopped {
			// Closed while we waited: the slot goes back at once.
			c.qmu.Unlock()
			b.give(c.limits.Key)
			return 0, c.fail(net.ErrClosed)
		}
		c.slot, slot = true, true
		c.qmu.Unlock()
	}
	limit := FreeBytes
	if slot {
		limit += slotBytes
	}
	return max(1, min(readChunk, limit-c.pending())), nil
}

// fill performs one recvmsg, queueing any fds it delivers.
func (c *Conn) fill() error {
	inLine := len(c.buf) > c.start
	want, err := c.room()
	if err != nil {
		return err
	}
	var deadline time.Time
	if c.limits.LineTimeout > 0 && inLine {
		deadline = c.lineStart.Add(c.limits.LineTimeout)
	}
	c.setLineDeadline(deadline)
	p := c.space(want)
	if c.oob == nil {
		c.oob = make([]byte, oobSize)
	}
	n, oobn, flags, _, rerr := c.uc.ReadMsgUnix(p, c.oob)
	if rerr != nil {
		n, oobn = 0, 0
	}
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
		now := time.Now()
		if !inLine {
			c.lineStart = now
		}
		c.lastRead = now
		c.readOff += int64(n)
		c.buf = c.buf[:len(c.buf)+n]
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
	if rerr != nil {
		return c.readFailed(rerr)
	}
	c.settle()
	return nil
}

// space returns room for up to want more bytes after buf's end, moving
// unprocessed bytes to the front and growing the buffer when it is full.
func (c *Conn) space(want int) []byte {
	if c.buf == nil {
		c.buf = make([]byte, 0, firstBuf)
	}
	if c.start > 0 {
		k := copy(c.buf, c.buf[c.start:])
		c.buf = c.buf[:k]
		c.scanned -= c.start
		c.start = 0
	}
	if len(c.buf) == cap(c.buf) {
		c.buf = slices.Grow(c.buf, want)
	}
	return c.buf[len(c.buf):min(cap(c.buf), len(c.buf)+want)]
}

// readFailed turns an error of the read itself into ReadMessage's error.
func (c *Conn) readFailed(err error) error {
	if errors.Is(err, io.EOF) {
		return c.fail(io.EOF)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.dmu.Lock()
		line := c.lineDeadline
		c.dmu.Unlock()
		if !line.IsZero() && !time.Now().Before(line) {
			return c.fail(ErrLineTimeout)
		}
		return err // the caller's deadline: not fatal
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		return c.fail(net.ErrClosed)
	}
	return c.fail(err)
}

// fail records a fatal read error and releases every queued fd and all
// budget.
func (c *Conn) fail(err error) error {
	c.rerr = err
	c.buf, c.start, c.scanned = nil, 0, 0
	c.lastSize = 0
	c.qmu.Lock()
	closeQueued(c.queue)
	c.queue = nil
	c.qmu.Unlock()
	c.settle()
	return err
}

// parseRights returns every fd in every SCM_RIGHTS message of oob. If the
// buffer is malformed it still returns every fd it holds, with an error,
// so that the caller can close them (unix.ParseSocketControlMessage
// returns nothing at all then, and the fds would leak). The kernel only
// writes whole descriptors, so every whole 4 bytes of SCM_RIGHTS data is
// one, even in a message whose length runs past the buffer.
func parseRights(oob []byte) ([]int, error) {
	var fds []int
	var err error
	for len(oob) > 0 {
		if len(oob) < unix.SizeofCmsghdr {
			return fds, fmt.Errorf("rpc: control message: %d stray bytes", len(oob))
		}
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		hlen := int(h.Len)
		bad := hlen < unix.SizeofCmsghdr || hlen > len(oob)
		data := oob[unix.SizeofCmsghdr:]
		if !bad {
			data = oob[unix.SizeofCmsghdr:hlen]
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			for i := 0; i+4 <= len(data); i += 4 {
				fds = append(fds, int(int32(binary.NativeEndian.Uint32(data[i:]))))
			}
			if len(data)%4 != 0 && err == nil {
				err = fmt.Errorf("rpc: SCM_RIGHTS data of %d bytes", len(data))
			}
		}
		if bad {
			return fds, fmt.Errorf("rpc: control message header length %d, %d bytes left", hlen, len(oob))
		}
		next := unix.CmsgSpace(hlen - unix.SizeofCmsghdr)
		if next >= len(oob) {
			break
		}
		oob = oob[next:]
	}
	return fds, err
}

// declaredFDs reads the "fds" member. A line that is not a JSON object, or
// has no "fds", declares 0. The key is matched exactly, unlike
// encoding/json's case-insensitive struct fields.
func declaredFDs(raw json.RawMessage) (int, error) {
	if raw == nil {
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
	b := make([]byte, len(line)+1)
	copy(b, line)
	b[len(line)] = '\n'
	return c.WriteFrame(b, files...)
}

// WriteFrame is WriteMessage for a message that already ends in its
// newline and holds no other: it sends frame as is, without a copy, so
// that one encoded notification can go to many connections. frame is
// only read.
func (c *Conn) WriteFrame(frame []byte, files ...*os.File) error {
	if len(frame) > protocol.MaxMessage {
		return ErrTooLong
	}
	if len(frame) == 0 || frame[len(frame)-1] != '\n' {
		return errors.New("rpc: frame does not end in a newline")
	}
	if len(files) > protocol.MaxQueuedFDs {
		return fmt.Errorf("rpc: %d files in one message, at most %d", len(files), protocol.MaxQueuedFDs)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(files) == 0 {
		_, err := c.uc.Write(frame)
		return err
	}
	err := withFDs(files, make([]int, 0, len(files)), func(fds []int) error {
		n, _, err := c.uc.WriteMsgUnix(frame, unix.UnixRights(fds...), nil)
		if err != nil {
			return err
		}
		if n < len(frame) {
			// The fds went with the first byte; the rest is plain data.
			_, err = c.uc.Write(frame[n:])
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

// SetReadDeadline sets the deadline for ReadMessage. Reaching it is not
// fatal, unlike a line timeout.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.userDeadline = t
	return c.applyDeadlineLocked()
}

func (c *Conn) setLineDeadline(t time.Time) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if t.Equal(c.lineDeadline) {
		return
	}
	c.lineDeadline = t
	c.applyDeadlineLocked()
}

// applyDeadlineLocked puts the earlier of the two deadlines on the socket.
func (c *Conn) applyDeadlineLocked() error {
	d := c.userDeadline
	if d.IsZero() || (!c.lineDeadline.IsZero() && c.lineDeadline.Before(d)) {
		d = c.lineDeadline
	}
	return c.uc.SetReadDeadline(d)
}

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

// PeerGone reports whether the peer has closed the connection (or shut
// down its writing side), without reading: a reader busy elsewhere may
// not have noticed yet. It asks the kernel with a poll that does not
// wait.
func (c *Conn) PeerGone() bool {
	rc, err := c.uc.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	if cerr := rc.Control(func(fd uintptr) {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		n, err := unix.Poll(p, 0)
		gone = err == nil && n > 0 && p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
	}); cerr != nil {
		return true
	}
	return gone
}

// CloseRead shuts down the reading side: ReadMessage returns io.EOF (or
// net.ErrClosed while it waits for budget), and writes still work, so
// that answers and notifications can be flushed before Close.
func (c *Conn) CloseRead() error {
	c.stopReading()
	return c.uc.CloseRead()
}

func (c *Conn) stopReading() {
	c.stopOnce.Do(func() { close(c.stop) })
}

// Close closes the socket, every fd still queued, and gives back any
// budget held. It unblocks a concurrent ReadMessage, and is safe to call
// more than once.
func (c *Conn) Close() error {
	c.stopReading()
	err := c.uc.Close()
	c.qmu.Lock()
	c.closed = true
	c.stopped = true
	closeQueued(c.queue)
	c.queue = nil
	slot := c.slot
	c.slot = false
	c.qmu.Unlock()
	if slot {
		c.limits.Budget.give(c.limits.Key)
	}
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
