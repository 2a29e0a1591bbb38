package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Batches. A VPN may carry 10,000 routes, 2,000 addresses and about 500
// rules. Sent one request at a time, each waiting for its acknowledgement,
// they cost one round trip each; vpnd instead packs many requests into one
// sendmsg and asks for an acknowledgement on the last request of each chunk
// only. The kernel processes a sendmsg's requests in order, before sendmsg
// returns, and reports every failure whether asked to or not, so the one
// acknowledgement says "everything before me is done" and the failures say
// exactly which requests did not take: rollback stays exact.
const (
	// chunkBytes bounds one sendmsg. Bigger chunks mean fewer round trips;
	// the kernel copies the whole chunk into one buffer first, and the
	// socket's send buffer must hold it.
	chunkBytes = 256 << 10
	// sockBuf is the send and receive buffer of the request socket: a chunk
	// must fit in the first, and the errors of a chunk (each carrying only
	// the failed request's header, thanks to NETLINK_CAP_ACK) in the second.
	sockBuf = 4 << 20
	// dumpAttempts bounds retries of a dump that the kernel flagged as
	// interrupted (NLM_F_DUMP_INTR: the table changed while it was read).
	dumpAttempts = 10
)

// errDumpInterrupted is a dump that stayed inconsistent after dumpAttempts.
var errDumpInterrupted = errors.New("netlink dump interrupted (the kernel's state kept changing)")

// nlConn is vpnd's one request socket to rtnetlink, opened at start and used
// for every request, so that no call pays for a socket of its own. Strict
// checking makes the kernel filter dumps (a route dump reads one table, an
// address dump one link) instead of sending everything. Requests are
// serialised: one exchange at a time.
type nlConn struct {
	mu   sync.Mutex
	fd   int
	pid  uint32 // the port id the kernel gave the socket; notifications of our own changes carry it
	seq  uint32
	rbuf []byte
	// sends counts sendmsg calls: the round trips that tests measure.
	sends atomic.Int64
}

func openNLConn() (*nlConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	// The *FORCE variants need CAP_NET_ADMIN, which vpnd has; without it the
	// capped sizes still work for ordinary configurations.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sockBuf)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, sockBuf)
	}
	for _, opt := range []int{unix.NETLINK_EXT_ACK, unix.NETLINK_CAP_ACK, unix.NETLINK_GET_STRICT_CHK} {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, opt, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("netlink socket option %d: %w", opt, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink socket: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket name: %w", err)
	}
	nsa, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket name: unexpected %T", sa)
	}
	return &nlConn{fd: fd, pid: nsa.Pid, rbuf: make([]byte, 64<<10)}, nil
}

func (c *nlConn) close() error { return unix.Close(c.fd) }

// msgBuf builds netlink messages back to back in one buffer.
type msgBuf struct {
	b    []byte
	msgs []int // offset of each message's header
	cur  int   // offset of the message being built, -1 when none
}

func (m *msgBuf) reset() {
	m.b, m.msgs, m.cur = m.b[:0], m.msgs[:0], -1
}

// begin starts a message of type typ with flags (NLM_F_REQUEST is added).
func (m *msgBuf) begin(typ, flags uint16) {
	m.cur = len(m.b)
	m.msgs = append(m.msgs, m.cur)
	m.b = binary.NativeEndian.AppendUint32(m.b, 0) // length, set by end
	m.b = binary.NativeEndian.AppendUint16(m.b, typ)
	m.b = binary.NativeEndian.AppendUint16(m.b, flags|unix.NLM_F_REQUEST)
	m.b = binary.NativeEndian.AppendUint32(m.b, 0) // seq, set when sent
	m.b = binary.NativeEndian.AppendUint32(m.b, 0) // port id: the kernel's business
}

// end finishes the current message.
func (m *msgBuf) end() {
	binary.NativeEndian.PutUint32(m.b[m.cur:], uint32(len(m.b)-m.cur))
	m.pad()
	m.cur = -1
}

func (m *msgBuf) pad() {
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}

func (m *msgBuf) bytes(v ...byte) { m.b = append(m.b, v...) }
func (m *msgBuf) u16(v uint16)    { m.b = binary.NativeEndian.AppendUint16(m.b, v) }
func (m *msgBuf) u32(v uint32)    { m.b = binary.NativeEndian.AppendUint32(m.b, v) }

// attr appends one attribute, padded to 4 bytes.
func (m *msgBuf) attr(typ uint16, v []byte) {
	m.u16(uint16(unix.SizeofRtAttr + len(v)))
	m.u16(typ)
	m.b = append(m.b, v...)
	m.pad()
}

func (m *msgBuf) attrU32(typ uint16, v uint32) {
	m.u16(unix.SizeofRtAttr + 4)
	m.u16(typ)
	m.u32(v)
}

// nest starts a nested attribute and returns what endNest needs.
func (m *msgBuf) nest(typ uint16) int {
	at := len(m.b)
	m.u16(0)
	m.u16(typ | unix.NLA_F_NESTED)
	return at
}

func (m *msgBuf) endNest(at int) {
	binary.NativeEndian.PutUint16(m.b[at:], uint16(len(m.b)-at))
}

// mark and truncate let a dump callback that builds messages start over
// when the dump is restarted.
func (m *msgBuf) mark() [2]int { return [2]int{len(m.b), len(m.msgs)} }

func (m *msgBuf) truncate(at [2]int) { m.b, m.msgs = m.b[:at[0]], m.msgs[:at[1]] }

// n is the number of messages built.
func (m *msgBuf) n() int { return len(m.msgs) }

// msgEnd is the offset just past message i.
func (m *msgBuf) msgEnd(i int) int {
	if i+1 < len(m.msgs) {
		return m.msgs[i+1]
	}
	return len(m.b)
}

// nlError is the kernel's answer to one failed request: its errno and, with
// extended acknowledgements, the kernel's own words ("Nexthop device is not
// up").
type nlError struct {
	errno unix.Errno
	msg   string
}

func (e *nlError) Error() string {
	if e.msg != "" {
		return e.errno.Error() + " (" + e.msg + ")"
	}
	return e.errno.Error()
}

func (e *nlError) Unwrap() error { return e.errno }

// exchange sends every message of m, in chunks, and returns each one's
// error (nil for success), indexed like m's messages. An error of its own
// means the answers were lost (for example ENOBUFS): some requests may have
// been applied, and the caller must ask the kernel what is there.
func (c *nlConn) exchange(m *msgBuf) ([]error, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	results := make([]error, m.n())
	for first := 0; first < m.n(); {
		last := first
		for last+1 < m.n() && m.msgEnd(last+1)-m.msgs[first] <= chunkBytes {
			last++
		}
		base := c.seq + 1
		for i := first; i <= last; i++ {
			c.seq++
			h := m.msgs[i]
			binary.NativeEndian.PutUint32(m.b[h+8:], c.seq)
			flags := binary.NativeEndian.Uint16(m.b[h+6:]) &^ unix.NLM_F_ACK
			if i == last {
				flags |= unix.NLM_F_ACK
			}
			binary.NativeEndian.PutUint16(m.b[h+6:], flags)
		}
		if err := c.send(m.b[m.msgs[first]:m.msgEnd(last)]); err != nil {
			return results, err
		}
		if err := c.readAcks(base, c.seq, results[first:last+1]); err != nil {
			return results, err
		}
		first = last + 1
	}
	return results, nil
}

func (c *nlConn) send(b []byte) error {
	for {
		c.sends.Add(1)
		err := unix.Sendto(c.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink send: %w", err)
		}
		return nil
	}
}

func (c *nlConn) recv() ([]byte, error) {
	for {
		n, _, err := unix.Recvfrom(c.fd, c.rbuf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		return c.rbuf[:n], nil
	}
}

// readAcks reads answers until the acknowledgement of sequence number last,
// recording the error of each request from first to last in results.
func (c *nlConn) readAcks(first, last uint32, results []error) error {
	for {
		b, err := c.recv()
		if err != nil {
			return err
		}
		done := false
		err = eachMsg(b, func(h unix.NlMsghdr, data []byte) error {
			if h.Type != unix.NLMSG_ERROR || h.Seq < first || h.Seq > last {
				return nil // not an answer to this chunk (a stale one, say)
			}
			e, err := parseNLError(h, data)
			if err != nil {
				return err
			}
			if e != nil {
				results[h.Seq-first] = e
			}
			if h.Seq == last {
				done = true
			}
			return nil
		})
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// parseNLError decodes an NLMSG_ERROR payload: nil for an acknowledgement.
func parseNLError(h unix.NlMsghdr, data []byte) (*nlError, error) {
	if len(data) < 4 {
		return nil, errors.New("netlink: short error message")
	}
	code := int32(binary.NativeEndian.Uint32(data[:4]))
	if code == 0 {
		return nil, nil
	}
	e := &nlError{errno: unix.Errno(-code)}
	if h.Flags&unix.NLM_F_ACK_TLVS == 0 {
		return e, nil
	}
	// The failed request's header follows, and its payload too unless the
	// kernel capped it; then the extended-ack attributes.
	off := 4 + unix.SizeofNlMsghdr
	if h.Flags&unix.NLM_F_CAPPED == 0 && len(data) >= off {
		reqLen := int(binary.NativeEndian.Uint32(data[4:8]))
		off = 4 + nlAlign(reqLen)
	}
	if off <= len(data) {
		eachAttr(data[off:], func(typ uint16, v []byte) {
			if typ == unix.NLMSGERR_ATTR_MSG {
				e.msg = cString(v)
			}
		})
	}
	return e, nil
}

// dump sends one dump request and calls fn for each message of the answer.
// An interrupted dump (the kernel's state changed meanwhile) is restarted,
// so fn must tolerate being called again from the start: reset is called
// before each attempt.
func (c *nlConn) dump(req *msgBuf, reset func(), fn func(h unix.NlMsghdr, data []byte) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for range dumpAttempts {
		reset()
		c.seq++
		seq := c.seq
		binary.NativeEndian.PutUint32(req.b[8:], seq)
		if err := c.send(req.b); err != nil {
			return err
		}
		interrupted, err := c.readDump(seq, fn)
		if err != nil {
			return err
		}
		if !interrupted {
			return nil
		}
	}
	return errDumpInterrupted
}

func (c *nlConn) readDump(seq uint32, fn func(h unix.NlMsghdr, data []byte) error) (interrupted bool, err error) {
	var fnErr error
	for {
		b, err := c.recv()
		if err != nil {
			return false, err
		}
		done := false
		err = eachMsg(b, func(h unix.NlMsghdr, data []byte) error {
			if h.Seq != seq {
				return nil
			}
			if h.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch h.Type {
			case unix.NLMSG_DONE:
				done = true
				if len(data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(data[:4])); code < 0 {
						return unix.Errno(-code)
					}
				}
			case unix.NLMSG_ERROR:
				done = true
				e, err := parseNLError(h, data)
				if err != nil {
					return err
				}
				if e != nil {
					return e
				}
			default:
				if fnErr == nil {
					fnErr = fn(h, data)
				}
			}
			return nil
		})
		if err != nil {
			return false, err
		}
		if done {
			return interrupted, fnErr
		}
	}
}

// request sends one request that is answered by one message (a get by
// index) and hands the answer to fn.
func (c *nlConn) request(req *msgBuf, fn func(h unix.NlMsghdr, data []byte) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	seq := c.seq
	binary.NativeEndian.PutUint32(req.b[8:], seq)
	if err := c.send(req.b); err != nil {
		return err
	}
	for {
		b, err := c.recv()
		if err != nil {
			return err
		}
		done := false
		var result error
		err = eachMsg(b, func(h unix.NlMsghdr, data []byte) error {
			if h.Seq != seq {
				return nil
			}
			done = true
			if h.Type == unix.NLMSG_ERROR {
				e, err := parseNLError(h, data)
				if err != nil {
					return err
				}
				if e != nil {
					result = e
				}
				return nil
			}
			result = fn(h, data)
			return nil
		})
		if err != nil {
			return err
		}
		if done {
			return result
		}
	}
}

// eachMsg calls fn for every netlink message in b.
func eachMsg(b []byte, fn func(h unix.NlMsghdr, data []byte) error) error {
	for len(b) >= unix.SizeofNlMsghdr {
		h := unix.NlMsghdr{
			Len:   binary.NativeEndian.Uint32(b[0:4]),
			Type:  binary.NativeEndian.Uint16(b[4:6]),
			Flags: binary.NativeEndian.Uint16(b[6:8]),
			Seq:   binary.NativeEndian.Uint32(b[8:12]),
			Pid:   binary.NativeEndian.Uint32(b[12:16]),
		}
		if h.Len < unix.SizeofNlMsghdr || int(h.Len) > len(b) {
			return fmt.Errorf("netlink: malformed message (length %d of %d)", h.Len, len(b))
		}
		if err := fn(h, b[unix.SizeofNlMsghdr:h.Len]); err != nil {
			return err
		}
		next := nlAlign(int(h.Len))
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return nil
}

// eachAttr calls fn for every attribute in b, with the nested flag cleared.
func eachAttr(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		fn(typ, b[unix.SizeofRtAttr:l])
		step := nlAlign(l)
		if step > len(b) {
			return
		}
		b = b[step:]
	}
}

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
