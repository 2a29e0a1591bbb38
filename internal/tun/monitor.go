package tun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The monitor is one netlink socket, open for vpnd's whole life, that hears
// every change the kernel announces to the link, address, route and rule
// groups of both families. Watches are registrations on it: starting one
// costs no socket and no dump, which keeps them off setUp's critical path.
//
// It is read through Go's runtime poller (RawConn.Read), so stopping it is
// closing the file: the poller keeps the descriptor alive until the reader
// has returned, and no stop byte can land in a reused descriptor.
//
// A change that vpnd itself asked for arrives with vpnd's request socket's
// port id and is ignored: self-healing must not repair its own repairs.
// When the kernel drops notifications because the socket's buffer was full
// (ENOBUFS), any of them might have mattered, so every watch is told that
// something changed and every watched link is checked directly.

// monitorGroups are the rtnetlink multicast groups the monitor joins.
var monitorGroups = []uint{
	unix.RTNLGRP_LINK,
	unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR,
	unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE,
	unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE,
}

// monitorRcvBuf holds the notifications of a burst such as `ip route flush`
// of a 10,000-route table (one notification per route).
const monitorRcvBuf = 16 << 20

// resubscribeDelay spaces attempts to re-open a failed monitor socket.
const resubscribeDelay = 200 * time.Millisecond

type monitor struct {
	log *zap.Logger
	n   *Netlink

	mu      sync.Mutex // guards everything below, and reading the socket
	f       *os.File
	rcvBuf  int // SO_RCVBUF, 0 for monitorRcvBuf (tests shrink it)
	buf     []byte
	watches map[*watch]struct{}
	closed  bool
	done    chan struct{} // closed when the reader has exited
}

// watch is one registration.
type watch struct {
	f       ChangeFilter
	gone    chan struct{} // closed once the link is gone
	changed chan struct{} // one token: something f selects changed
	isGone  bool
}

func newMonitor(log *zap.Logger, n *Netlink) (*monitor, error) {
	m := &monitor{log: log, n: n, buf: make([]byte, 64<<10), watches: map[*watch]struct{}{}, done: make(chan struct{})}
	f, err := m.open()
	if err != nil {
		return nil, err
	}
	m.f = f
	go m.run()
	return m, nil
}

func (m *monitor) open() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("monitor socket: %w", err)
	}
	size := m.rcvBuf
	if size == 0 {
		size = monitorRcvBuf
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, size)
	}
	var groups uint32
	for _, g := range monitorGroups {
		groups |= 1 << (g - 1)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("monitor bind: %w", err)
	}
	return os.NewFile(uintptr(fd), "netlink-monitor"), nil
}

func (m *monitor) run() {
	defer close(m.done)
	for {
		m.mu.Lock()
		f := m.f
		m.mu.Unlock()
		err := m.readAll(f)
		m.mu.Lock()
		closed := m.closed
		m.mu.Unlock()
		if closed {
			return
		}
		m.log.Error("netlink monitor failed; re-opening it", zap.Error(err))
		for {
			nf, err := m.open()
			if err == nil {
				m.mu.Lock()
				if m.closed {
					m.mu.Unlock()
					nf.Close()
					return
				}
				m.f.Close()
				m.f = nf
				// Changes may have been missed meanwhile.
				m.overflowLocked()
				m.mu.Unlock()
				break
			}
			m.log.Error("re-open netlink monitor failed", zap.Error(err))
			time.Sleep(resubscribeDelay)
			m.mu.Lock()
			closed := m.closed
			m.mu.Unlock()
			if closed {
				return
			}
		}
	}
}

// readAll drains the socket whenever it is readable, until it fails or is
// closed.
func (m *monitor) readAll(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var fatal error
	err = rc.Read(func(uintptr) bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		fatal = m.drainLocked()
		return fatal != nil
	})
	if fatal != nil {
		return fatal
	}
	return err
}

// drain processes whatever notifications are queued now. A caller that
// wants to act on the kernel's current state (no event in flight) calls it
// first.
func (m *monitor) drain() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.drainLocked()
	}
}

func (m *monitor) drainLocked() error {
	rc, err := m.f.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var n int
		var rerr error
		cerr := rc.Control(func(fd uintptr) {
			n, _, rerr = unix.Recvfrom(int(fd), m.buf, unix.MSG_DONTWAIT)
		})
		switch {
		case cerr != nil:
			return cerr
		case errors.Is(rerr, unix.EAGAIN):
			return nil
		case errors.Is(rerr, unix.EINTR):
			continue
		case errors.Is(rerr, unix.ENOBUFS):
			m.log.Warn("netlink monitor overflowed; resyncing")
			m.overflowLocked()
			continue
		case rerr != nil:
			return rerr
		}
		if err := eachMsg(m.buf[:n], m.eventLocked); err != nil {
			// A message we cannot parse may have been the one that mattered.
			m.overflowLocked()
		}
	}
}

// eventLocked dispatches one notification to the watches it concerns.
func (m *monitor) eventLocked(h unix.NlMsghdr, d []byte) error {
	own := h.Pid != 0 && h.Pid == m.n.c.pid
	switch h.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		if len(d) < unix.SizeofIfInfomsg {
			return errors.New("short link message")
		}
		index := int(int32(binary.NativeEndian.Uint32(d[4:8])))
		for w := range m.watches {
			if w.f.LinkIndex != index || w.isGone {
				continue
			}
			if h.Type == unix.RTM_DELLINK {
				w.isGone = true
				close(w.gone)
				continue
			}
			if !own {
				w.signal()
			}
		}
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		if own {
			return nil
		}
		if len(d) < unix.SizeofIfAddrmsg {
			return errors.New("short address message")
		}
		index := int(binary.NativeEndian.Uint32(d[4:8]))
		for w := range m.watches {
			if w.f.LinkIndex == index {
				w.signal()
			}
		}
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		if own {
			return nil
		}
		k, ok := parseRoute(d)
		if !ok {
			return nil // another family (multicast routes, say)
		}
		for w := range m.watches {
			if w.f.Table != 0 && k.tableID == w.f.Table {
				w.signal()
			}
		}
	case unix.RTM_NEWRULE, unix.RTM_DELRULE:
		if own {
			return nil
		}
		k, ok := parseRule(d)
		if !ok {
			return errors.New("short rule message")
		}
		for w := range m.watches {
			if (w.f.Table != 0 && k.table == w.f.Table) || slices.Contains(w.f.Priorities, k.priority) {
				w.signal()
			}
		}
	}
	return nil
}

// overflowLocked handles lost notifications: every watch may have missed
// something, and a watched link may be gone.
func (m *monitor) overflowLocked() {
	for w := range m.watches {
		if w.isGone {
			continue
		}
		w.signal()
		if w.f.LinkIndex != 0 {
			if _, ok, err := m.n.getLink(w.f.LinkIndex); err == nil && !ok {
				w.isGone = true
				close(w.gone)
			}
		}
	}
}

func (w *watch) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (m *monitor) close() {
	m.mu.Lock()
	m.closed = true
	f := m.f
	m.mu.Unlock()
	f.Close()
	<-m.done
}

// Watch reports changes that f selects until ctx is cancelled. gone is
// closed once the link with index f.LinkIndex no longer exists: deleted,
// moved to another namespace, or removed by the kernel when the last fd of
// a non-persistent TUN was closed. changed gets a token (at most one
// waits) whenever something f selects changed, other than by vpnd's own
// requests, or may have changed (lost notifications): the reader re-reads
// the kernel's state anyway. Cancelling ctx stops the watch without closing
// either channel.
func (n *Netlink) Watch(ctx context.Context, f ChangeFilter) (gone, changed <-chan struct{}, err error) {
	w := &watch{f: f, gone: make(chan struct{}), changed: make(chan struct{}, 1)}
	m := n.mon
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, nil, errors.New("watch: netlink monitor closed")
	}
	m.watches[w] = struct{}{}
	m.mu.Unlock()
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		delete(m.watches, w)
		m.mu.Unlock()
	})
	if f.LinkIndex != 0 {
		// The registration is live, so a deletion after this check cannot
		// be missed; one before it is seen here.
		_, ok, err := n.getLink(f.LinkIndex)
		if err != nil {
			return nil, nil, fmt.Errorf("watch link %d: %w", f.LinkIndex, err)
		}
		if !ok {
			m.mu.Lock()
			if !w.isGone {
				w.isGone = true
				close(w.gone)
			}
			m.mu.Unlock()
		}
	}
	return w.gone, w.changed, nil
}
