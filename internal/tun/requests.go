package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
)

// Batches. A VPN may carry 10,000 routes, 2,000 addresses and about 500
// rules. Sent one request at a time, each waiting for its acknowledgement,
// they cost one round trip each; vpnd instead packs many requests into one
// sendmsg and asks for an acknowledgement on the last request of each chunk
// only. The kernel processes a sendmsg's requests in order, before sendmsg
// returns, and reports every failure whether asked to or not, so the one
// acknowledgement says "everything before me is done" and the failures say
// exactly which requests did not take.
//
// vishvananda/netlink builds every message (nl.NetlinkRequest and its
// data); its NetlinkSocket sends one request per sendmsg and waits for one
// answer, so the few lines that put several serialised requests into one
// sendmsg, and match the acknowledgements back, are here.
const (
	// chunkBytes bounds one sendmsg. Bigger chunks mean fewer round trips;
	// the kernel copies the whole chunk into one buffer first, and the
	// socket's send buffer must hold it.
	chunkBytes = 256 << 10
	// sockBuf is the send and receive buffer of the request socket: a chunk
	// must fit in the first, and the errors of a chunk (each carrying only
	// the failed request's header, thanks to NETLINK_CAP_ACK) in the second.
	sockBuf = 4 << 20
	// answerTimeout bounds the wait for the kernel's answer to a request.
	// The kernel answers within microseconds or milliseconds; a lost
	// answer (or a bug in matching them) must not block vpnd forever.
	answerTimeout = 10 * time.Second
	// dumpAttempts bounds retries of a dump that the kernel flagged as
	// interrupted (NLM_F_DUMP_INTR: the table changed while it was read).
	dumpAttempts = 10
)

// requests is vpnd's socket for changes and for the dumps the typed calls
// of vishvananda/netlink cannot make (rules with their action). One
// exchange at a time.
type requests struct {
	mu  sync.Mutex
	s   *nl.NetlinkSocket
	pid uint32 // the port id the kernel gave the socket: its changes' notifications carry it
	seq uint32
	// sends counts sendmsg calls: the round trips that tests measure.
	sends atomic.Int64
}

func openRequests() (*requests, error) {
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	fd := s.GetFd()
	// The *FORCE variants need CAP_NET_ADMIN, which vpnd has; without it the
	// capped sizes still work for ordinary configurations.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sockBuf)
	}
	if s.SetReceiveBufferSize(sockBuf, true) != nil {
		s.SetReceiveBufferSize(sockBuf, false)
	}
	for _, opt := range []int{unix.NETLINK_EXT_ACK, unix.NETLINK_CAP_ACK, unix.NETLINK_GET_STRICT_CHK} {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, opt, 1); err != nil {
			s.Close()
			return nil, fmt.Errorf("netlink socket option %d: %w", opt, err)
		}
	}
	tv := unix.NsecToTimeval(answerTimeout.Nanoseconds())
	s.SetReceiveTimeout(&tv)
	s.SetSendTimeout(&tv)
	pid, err := s.GetPid()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("netlink socket name: %w", err)
	}
	return &requests{s: s, pid: pid}, nil
}

func (r *requests) close() { r.s.Close() }

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

// Is makes an errno that may not happen again (a full buffer, an
// interrupted call) an ErrTransient.
func (e *nlError) Is(target error) bool {
	return target == manager.ErrTransient && transientErrno(e.errno)
}

func transientErrno(errno unix.Errno) bool {
	return errno == unix.ENOBUFS || errno == unix.EAGAIN || errno == unix.EINTR || errno == unix.EBUSY || errno == unix.ENOMEM
}

// lostError says that the answers to a batch were lost: some of it may
// have been carried out.
func lostError(err error) error {
	return fmt.Errorf("netlink: %w: %w", manager.ErrTransient, err)
}

// exchange sends the serialised requests msgs, in chunks, and returns each
// one's error (nil for success), indexed like msgs. An error of its own
// means the answers were lost (for example ENOBUFS, or a timeout): some
// requests may have been applied, and the caller must ask the kernel what
// is there.
func (r *requests) exchange(msgs [][]byte) ([]error, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	results := make([]error, len(msgs))
	var buf []byte
	for first := 0; first < len(msgs); {
		size := len(msgs[first])
		last := first
		for last+1 < len(msgs) && size+len(msgs[last+1]) <= chunkBytes {
			last++
			size += len(msgs[last])
		}
		base := r.seq + 1
		buf = buf[:0]
		for i := first; i <= last; i++ {
			r.seq++
			m := msgs[i]
			binary.NativeEndian.PutUint32(m[8:12], r.seq)
			flags := binary.NativeEndian.Uint16(m[6:8]) &^ unix.NLM_F_ACK
			if i == last {
				flags |= unix.NLM_F_ACK
			}
			binary.NativeEndian.PutUint16(m[6:8], flags)
			buf = append(buf, m...)
		}
		if err := r.send(buf); err != nil {
			r.resync()
			return results, lostError(err)
		}
		if err := r.readAcks(base, last-first+1, results[first:last+1]); err != nil {
			r.resync()
			return results, lostError(err)
		}
		first = last + 1
	}
	return results, nil
}

func (r *requests) send(b []byte) error {
	for {
		r.sends.Add(1)
		err := unix.Sendto(r.s.GetFd(), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink send: %w", err)
		}
		return nil
	}
}

// receive reads one datagram of answers.
// resyncLimit bounds the reads of a resync: the answers of a chunk and
// the rest of one dump.
const resyncLimit = 1 << 20

// resync empties the socket after its answers were lost, so that the
// next exchange starts clean. Lost answers leave the socket in a state
// that would lose the next ones too: the kernel marks a socket it found
// full as congested, and drops every answer to it until its reader has
// emptied it, so the next request's acknowledgement would never come; a
// dump the kernel could not go on with stays under way, going on only as
// its reader reads, and the kernel refuses every new dump meanwhile
// (EBUSY). So everything queued is read and dropped, which lets such a
// dump run to its end, until the socket is empty.
func (r *requests) resync() {
	buf := make([]byte, 64<<10)
	for range resyncLimit {
		_, _, err := unix.Recvfrom(r.s.GetFd(), buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EBADF) {
			return
		}
	}
}

func (r *requests) receive() ([]syscall.NetlinkMessage, error) {
	msgs, _, err := r.s.Receive()
	if errors.Is(err, unix.EAGAIN) {
		return nil, fmt.Errorf("netlink receive: no answer within %v", answerTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink receive: %w", err)
	}
	return msgs, nil
}

// inChunk reports whether seq is one of the n sequence numbers from base,
// across a wrap of the 32-bit counter.
func inChunk(seq, base uint32, n int) bool { return seq-base < uint32(n) }

// readAcks reads answers until the acknowledgement of the last of the n
// requests from sequence number base, recording each request's error in
// results.
func (r *requests) readAcks(base uint32, n int, results []error) error {
	last := base + uint32(n) - 1
	for {
		msgs, err := r.receive()
		if err != nil {
			return err
		}
		done := false
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || !inChunk(m.Header.Seq, base, n) {
				continue // not an answer to this chunk (a stale one, say)
			}
			e, err := parseNLError(m)
			if err != nil {
				return err
			}
			if e != nil {
				results[m.Header.Seq-base] = e
			}
			if m.Header.Seq == last {
				done = true
			}
		}
		if done {
			return nil
		}
	}
}

// parseNLError decodes an NLMSG_ERROR: nil for an acknowledgement.
func parseNLError(m syscall.NetlinkMessage) (*nlError, error) {
	data := m.Data
	if len(data) < 4 {
		return nil, errors.New("netlink: short error message")
	}
	code := int32(binary.NativeEndian.Uint32(data[:4]))
	if code == 0 {
		return nil, nil
	}
	e := &nlError{errno: unix.Errno(-code)}
	if m.Header.Flags&unix.NLM_F_ACK_TLVS == 0 {
		return e, nil
	}
	// The failed request's header follows, and its payload too unless the
	// kernel capped it; then the extended-ack attributes.
	off := 4 + unix.SizeofNlMsghdr
	if m.Header.Flags&unix.NLM_F_CAPPED == 0 && len(data) >= off {
		off = 4 + nlAlign(int(binary.NativeEndian.Uint32(data[4:8])))
	}
	if off <= len(data) {
		attrs, _ := nl.ParseRouteAttr(data[off:])
		for _, a := range attrs {
			if a.Attr.Type == unix.NLMSGERR_ATTR_MSG {
				e.msg = unix.ByteSliceToString(a.Value)
			}
		}
	}
	return e, nil
}

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// dump sends the dump request req and calls fn with each message of the
// answer. An interrupted dump (the kernel's state changed meanwhile) is
// restarted, so fn must tolerate being called again from the start: reset
// is called before each attempt.
func (r *requests) dump(req *nl.NetlinkRequest, reset func(), fn func(m syscall.NetlinkMessage)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	last := fmt.Errorf("netlink dump interrupted %d times (the kernel's state kept changing): %w", dumpAttempts, manager.ErrTransient)
	for range dumpAttempts {
		reset()
		r.seq++
		req.Seq = r.seq
		r.sends.Add(1)
		if err := r.s.Send(req); err != nil {
			r.resync()
			return lostError(fmt.Errorf("netlink send: %w", err))
		}
		interrupted, err := r.readDump(req.Seq, fn)
		if errors.Is(err, unix.EBUSY) {
			// A dump whose answers were lost is still under way in the
			// kernel: let it end, and ask again.
			r.resync()
			last = err
			continue
		}
		if err != nil {
			if errors.Is(err, manager.ErrTransient) {
				r.resync()
			}
			return err
		}
		if !interrupted {
			return nil
		}
	}
	return last
}

func (r *requests) readDump(seq uint32, fn func(m syscall.NetlinkMessage)) (interrupted bool, err error) {
	for {
		msgs, err := r.receive()
		if err != nil {
			return false, lostError(err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code < 0 {
						return false, &nlError{errno: unix.Errno(-code)}
					}
				}
				return interrupted, nil
			case unix.NLMSG_ERROR:
				e, err := parseNLError(m)
				if err != nil {
					return false, err
				}
				if e != nil {
					return false, e
				}
				return interrupted, nil
			default:
				fn(m)
			}
		}
	}
}

type syscallMessage = syscall.NetlinkMessage
