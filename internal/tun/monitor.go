package tun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
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
// Not all of them do, though: the kernel announces a link's MTU and up
// state through the device notifier, and an IPv6 address once its
// duplicate address detection ends (in a work queue, even with
// IFA_F_NODAD), with port id 0, whoever asked. So the monitor keeps a
// view of each watched link: its last announced MTU and up state, and
// what vpnd itself set (Install and Restore tell it before they send). A
// link announcement matters only if it moves the MTU or the up state to
// something vpnd did not set; a kernel announcement of an address
// matters only if vpnd did not add that address; an IPv6 link-local
// address that vpnd did not add (the kernel's own) never matters.
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
	links   map[int]*linkView // by index, for every link a watch selects
	closed  bool

	broken bool // the socket failed and is not re-opened yet
	// The answer of HostPrefixes (cache.go), and a counter of the
	// announcements that could change it.
	host    hostCache
	hostGen uint64
	done    chan struct{} // closed when the reader has exited
}

// linkView is what the monitor knows of a watched link, to tell the
// kernel's announcements of vpnd's own changes from other changes.
type linkView struct {
	watches int // how many watches select the link
	known   bool
	mtu     int // as last announced, if known
	up      bool
	// What vpnd set: always the VPN's wanted state, so an announcement
	// that moves the link there needs no repair.
	ownMTU   int // 0: none
	ownUp    bool
	ownAddrs map[netip.Prefix]struct{}
}

// announced records an RTM_NEWLINK and reports whether it moved the MTU
// or the up state somewhere vpnd did not set.
func (v *linkView) announced(l LinkState) (changed bool) {
	if v.known {
		changed = l.MTU != v.mtu && (v.ownMTU == 0 || l.MTU != v.ownMTU) ||
			l.Up != v.up && (!v.ownUp || !l.Up)
	} else {
		// Nothing to compare with: the watch has just begun (and this may
		// be an old announcement, such as the link's creation), or
		// announcements were lost (which was signalled). Only a state
		// that vpnd did not set counts.
		changed = v.ownMTU != 0 && l.MTU != v.ownMTU || v.ownUp && !l.Up
	}
	v.known, v.mtu, v.up = true, l.MTU, l.Up
	return changed
}

// expect records what vpnd is about to set on a link: its MTU (0: none),
// the up state, and addresses. It must be called before the request is
// sent, so that the kernel's announcements find it.
func (m *monitor) expect(index, mtu int, up bool, addrs []netip.Prefix) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.links[index]
	if v == nil {
		return // no watch: nobody to tell apart for
	}
	if mtu > 0 {
		v.ownMTU = mtu
	}
	v.ownUp = v.ownUp || up
	for _, a := range addrs {
		v.ownAddrs[a] = struct{}{}
	}
}

// watch is one registration.
type watch struct {
	f       ChangeFilter
	gone    chan struct{} // closed once the link is gone
	changed chan struct{} // one token: something f selects changed
	isGone  bool
}

func newMonitor(log *zap.Logger, n *Netlink) (*monitor, error) {
	m := &monitor{log: log, n: n, buf: make([]byte, 64<<10), watches: map[*watch]struct{}{}, links: map[int]*linkView{}, done: make(chan struct{})}
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
	// The filter goes on before the groups are joined, so that no echo
	// can be queued unfiltered.
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, ownEchoFilter(m.n.c.pid)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("monitor filter: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("monitor bind: %w", err)
	}
	return os.NewFile(uintptr(fd), "netlink-monitor"), nil
}

// ownEchoFilter is a socket filter that drops, in the kernel, the
// announcements of the routes and rules that vpnd's own request socket
// (port id pid) added or deleted: the kernel stamps an announcement with
// the port id of the request that caused it. The monitor ignores them
// anyway (eventLocked; the host-prefix cache looks only at the main
// table, where vpnd adds nothing), but a 10,000-route bring-up would
// otherwise queue 10,000 of them, to be read and parsed, and could
// overflow the socket's buffer into a resync. Links and addresses pass:
// the link view follows vpnd's own changes to them. Each announcement is
// one skb holding one message, so the header at offset 0 is all there is
// to look at.
func ownEchoFilter(pid uint32) *unix.SockFprog {
	// Classic BPF loads in network byte order; netlink's header is in the
	// host's. be gives the value a load of v's bytes yields.
	be16 := func(v uint16) uint32 {
		var b [2]byte
		binary.NativeEndian.PutUint16(b[:], v)
		return uint32(binary.BigEndian.Uint16(b[:]))
	}
	be32 := func(v uint32) uint32 {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], v)
		return binary.BigEndian.Uint32(b[:])
	}
	const (
		ldH    = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldW    = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret    = unix.BPF_RET | unix.BPF_K
		typeAt = 4  // nlmsghdr.nlmsg_type
		pidAt  = 12 // nlmsghdr.nlmsg_pid
	)
	// Jumps count instructions from the one after the jump.
	prog := []unix.SockFilter{
		/* 0 */ {Code: ldH, K: typeAt},
		/* 1 */ {Code: jeq, K: be16(unix.RTM_NEWROUTE), Jt: 3},
		/* 2 */ {Code: jeq, K: be16(unix.RTM_DELROUTE), Jt: 2},
		/* 3 */ {Code: jeq, K: be16(unix.RTM_NEWRULE), Jt: 1},
		/* 4 */ {Code: jeq, K: be16(unix.RTM_DELRULE), Jf: 2},
		/* 5 */ {Code: ldW, K: pidAt},
		/* 6 */ {Code: jeq, K: be32(pid), Jt: 1},
		/* 7 */ {Code: ret, K: 0xffffffff}, // keep it whole
		/* 8 */ {Code: ret, K: 0}, // drop it
	}
	if pid == 0 {
		// No request socket to tell apart: keep everything.
		prog = prog[7:8]
	}
	return &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
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
		// Until the socket is re-opened nothing is heard: no cached
		// answer may be trusted.
		m.broken = true
		m.dropCachesLocked()
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
				m.broken = false
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
// first. It reports whether the monitor is hearing the kernel: false when
// it is closed or broken, and then nothing it remembers may be trusted.
func (m *monitor) drain() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.broken {
		return false
	}
	if err := m.drainLocked(); err != nil {
		m.dropCachesLocked()
		return false
	}
	return true
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
	m.cacheEventLocked(h, d)
	switch h.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		if len(d) < unix.SizeofIfInfomsg {
			return errors.New("short link message")
		}
		index := int(int32(binary.NativeEndian.Uint32(d[4:8])))
		v := m.links[index]
		if v == nil {
			return nil // no watch selects this link
		}
		changed := false
		if h.Type == unix.RTM_NEWLINK {
			l, _ := parseLink(d)
			changed = v.announced(l) && !own
		}
		for w := range m.watches {
			if w.f.LinkIndex != index || w.isGone {
				continue
			}
			if h.Type == unix.RTM_DELLINK {
				w.isGone = true
				close(w.gone)
				continue
			}
			if changed {
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
		v := m.links[index]
		if v == nil {
			return nil // no watch selects this link
		}
		if _, p, ok := parseAddr(d); ok {
			_, mine := v.ownAddrs[p]
			switch {
			case mine && h.Type == unix.RTM_NEWADDR && h.Pid == 0:
				return nil // the kernel finishing an address vpnd added
			case !mine && p.Addr().IsLinkLocalUnicast():
				// The kernel's own link-local address, made or deleted (by
				// Restore, announced with port id 0 as every IPv6 address
				// deletion is): nothing vpnd wants changed.
				return nil
			}
		}
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
	m.dropCachesLocked()
	for _, v := range m.links {
		v.known = false
	}
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
// the kernel's state anyway. Of the link, that is its MTU, its up state
// and its addresses: what self-healing restores. Cancelling ctx stops the
// watch without closing either channel.
func (n *Netlink) Watch(ctx context.Context, f ChangeFilter) (gone, changed <-chan struct{}, err error) {
	w := &watch{f: f, gone: make(chan struct{}), changed: make(chan struct{}, 1)}
	m := n.mon
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, nil, errors.New("watch: netlink monitor closed")
	}
	m.watches[w] = struct{}{}
	if f.LinkIndex != 0 {
		v := m.links[f.LinkIndex]
		if v == nil {
			v = &linkView{ownAddrs: map[netip.Prefix]struct{}{}}
			m.links[f.LinkIndex] = v
		}
		v.watches++
	}
	m.mu.Unlock()
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		delete(m.watches, w)
		if v := m.links[f.LinkIndex]; v != nil {
			if v.watches--; v.watches == 0 {
				delete(m.links, f.LinkIndex)
			}
		}
		m.mu.Unlock()
	})
	if f.LinkIndex != 0 {
		// The registration is live, so a deletion after this check cannot
		// be missed; one before it is seen here.
		l, ok, err := n.getLink(f.LinkIndex)
		if err != nil {
			return nil, nil, fmt.Errorf("watch link %d: %w", f.LinkIndex, err)
		}
		m.mu.Lock()
		if v := m.links[f.LinkIndex]; ok && v != nil && !v.known {
			// The state the next announcement is compared with, unless
			// one came first.
			v.known, v.mtu, v.up = true, l.MTU, l.Up
		}
		if !ok && !w.isGone {
			w.isGone = true
			close(w.gone)
		}
		m.mu.Unlock()
	}
	return w.gone, w.changed, nil
}
