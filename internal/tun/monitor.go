package tun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"go.uber.org/zap"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
)

// The monitor is one netlink socket that hears every change the kernel
// announces to the link, address, route and rule groups of both families,
// and records which parts of vpnd's places each one touched (Sync). The
// reconciler reads a part again only when the monitor says so.
//
// It is a socket of its own rather than vishvananda/netlink's
// LinkSubscribe, AddrSubscribe and RouteSubscribe: those have no rules,
// give one socket and goroutine each, and cannot say "every announcement
// queued before now has been seen", which is what makes the reconciler's
// view exact. The socket is read through Go's runtime poller, and both the
// reader and Sync read it under one lock with MSG_DONTWAIT: once Sync has
// found the socket empty, every announcement the kernel made before that
// is in pending. Messages are parsed with vishvananda/netlink's nl
// package.
//
// Changes that vpnd's own request socket made carry its port id. A socket
// filter drops those of routes and rules in the kernel (a 10,000-route
// bring-up would otherwise queue 10,000 of them); the kernel announces a
// link's MTU and up state, and IPv6 addresses, with port id 0 whoever
// asked, so those come through, and are told apart by what they show
// (facts.go).
type monitor struct {
	log *zap.Logger
	pid uint32

	mu      sync.Mutex
	f       *os.File // nil until Watch, and while re-opening
	buf     []byte
	places  manager.Places
	tracked map[int]bool // links of vpnd's: announcements about them matter
	facts   facts        // of vpnd's links (facts.go)
	pending manager.Parts
	wake    chan struct{}
	closed  bool
	stop    context.CancelFunc
	done    chan struct{}
	// rcvBuf is SO_RCVBUF (tests shrink it to provoke ENOBUFS).
	rcvBuf int
}

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

// reopenDelay spaces attempts to re-open a failed monitor socket.
const reopenDelay = 200 * time.Millisecond

func newMonitor(log *zap.Logger, pid uint32) *monitor {
	return &monitor{log: log, pid: pid, buf: make([]byte, 64<<10), tracked: map[int]bool{}, rcvBuf: monitorRcvBuf}
}

// Watch starts the monitor for p (one watch at a time: a second replaces
// the first).
func (n *Netlink) Watch(ctx context.Context, p manager.Places) (<-chan struct{}, error) {
	m := n.mon
	f, err := m.open()
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		cancel()
		f.Close()
		return nil, errors.New("watch: netlink monitor closed")
	}
	if m.stop != nil {
		m.stop()
		old := m.done
		m.mu.Unlock()
		<-old
		m.mu.Lock()
	}
	m.f, m.places, m.stop, m.done = f, p, cancel, make(chan struct{})
	m.wake = make(chan struct{}, 1)
	m.pending = manager.PartAll // nothing was heard before now
	wake, done := m.wake, m.done
	m.mu.Unlock()
	go m.run(wctx, done)
	if n.fw != nil {
		fwc, err := n.fw.Watch(wctx)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("watch firewall: %w", err)
		}
		go func() {
			for range fwc {
				m.mu.Lock()
				m.noteLocked(manager.PartFirewall)
				m.mu.Unlock()
			}
		}()
	}
	return wake, nil
}

// Sync returns the parts that changed since the last Sync, after taking in
// every announcement queued so far.
func (n *Netlink) Sync() manager.Parts {
	m := n.mon
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stop == nil {
		return manager.PartAll // never listened: nothing can be trusted
	}
	// While the socket is being re-opened nothing is heard; the outage
	// counts as PartAll when it begins and again once the socket is back,
	// so that nothing changed meanwhile is missed, and the reader is not
	// made to read everything on every call until then.
	if m.f != nil {
		if err := m.drainLocked(); err != nil {
			m.noteLocked(manager.PartAll)
		}
	}
	p := m.pending
	m.pending = 0
	return p
}

func (m *monitor) open() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("monitor socket: %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, m.rcvBuf) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, m.rcvBuf)
	}
	// The filter goes on before the groups are joined, so that no echo is
	// queued unfiltered.
	filter, err := ownEchoFilter(m.pid)
	if err == nil {
		err = unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, filter)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("monitor filter: %w", err)
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

// ownEchoFilter is a socket filter that drops, in the kernel, the
// announcements of the routes and rules that vpnd's own request socket
// (port id pid) added or deleted: the kernel stamps an announcement with
// the port id of the request that caused it. Each announcement is one skb
// holding one message, so the header at offset 0 is all there is to look
// at.
func ownEchoFilter(pid uint32) (*unix.SockFprog, error) {
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
		typeAt = 4  // nlmsghdr.nlmsg_type
		pidAt  = 12 // nlmsghdr.nlmsg_pid
	)
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: typeAt, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be16(unix.RTM_NEWROUTE), SkipTrue: 3},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be16(unix.RTM_DELROUTE), SkipTrue: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be16(unix.RTM_NEWRULE), SkipTrue: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be16(unix.RTM_DELRULE), SkipFalse: 2},
		bpf.LoadAbsolute{Off: pidAt, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be32(pid), SkipTrue: 1},
		bpf.RetConstant{Val: 0xffffffff}, // keep it whole
		bpf.RetConstant{Val: 0},          // drop it
	}
	if pid == 0 {
		// No request socket to tell apart: keep everything.
		prog = prog[7:8]
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return &unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}, nil
}

// run reads the socket until ctx ends, re-opening it if it fails.
func (m *monitor) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		f := m.f
		m.mu.Unlock()
		if f != nil {
			f.Close() // ends the read below
		}
	})
	for {
		m.mu.Lock()
		f := m.f
		m.mu.Unlock()
		err := m.readAll(f)
		if ctx.Err() != nil {
			m.mu.Lock()
			m.f = nil
			m.mu.Unlock()
			return
		}
		m.log.Error("netlink monitor failed; re-opening it", zap.Error(err))
		m.mu.Lock()
		f.Close()
		m.f = nil
		m.noteLocked(manager.PartAll)
		m.mu.Unlock()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(reopenDelay):
			}
			nf, err := m.open()
			if err == nil {
				m.mu.Lock()
				m.f = nf
				// Changes may have been missed meanwhile.
				m.noteLocked(manager.PartAll)
				m.mu.Unlock()
				break
			}
			m.log.Error("re-open netlink monitor failed", zap.Error(err))
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

// drainLocked processes whatever announcements are queued now.
func (m *monitor) drainLocked() error {
	if m.f == nil {
		return errors.New("monitor not open")
	}
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
			m.log.Warn("netlink monitor overflowed; reading everything again")
			m.noteLocked(manager.PartAll)
			continue
		case rerr != nil:
			return rerr
		}
		msgs, err := syscall.ParseNetlinkMessage(m.buf[:n])
		if err != nil {
			// A message we cannot parse may have been the one that mattered.
			m.noteLocked(manager.PartAll)
			continue
		}
		for _, msg := range msgs {
			m.noteLocked(m.parts(msg))
		}
	}
}

// noteLocked records that parts p changed, and wakes the watcher.
func (m *monitor) noteLocked(p manager.Parts) {
	if p == 0 {
		return
	}
	m.pending |= p
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// parts says which of vpnd's places an announcement touched.
func (m *monitor) parts(msg syscall.NetlinkMessage) manager.Parts {
	d := msg.Data
	own := msg.Header.Pid != 0 && msg.Header.Pid == m.pid
	switch msg.Header.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		if len(d) < unix.SizeofIfInfomsg {
			return manager.PartAll
		}
		index := int(nl.DeserializeIfInfomsg(d).Index)
		name := ""
		if attrs, err := nl.ParseRouteAttr(d[unix.SizeofIfInfomsg:]); err == nil {
			for _, a := range attrs {
				if a.Attr.Type == unix.IFLA_IFNAME {
					name = unix.ByteSliceToString(a.Value)
				}
			}
		}
		if name == m.places.IfName && msg.Header.Type == unix.RTM_NEWLINK {
			m.tracked[index] = true
		}
		if !m.tracked[index] && name != m.places.IfName {
			return 0
		}
		if msg.Header.Type == unix.RTM_DELLINK {
			deleting := m.forget(index)
			delete(m.tracked, index)
			if deleting {
				return 0
			}
			return manager.PartLinks | manager.PartRoutes
		}
		if m.linkAsKnown(index, d) {
			return 0
		}
		return manager.PartLinks
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		if len(d) < unix.SizeofIfAddrmsg {
			return manager.PartAll
		}
		if m.tracked[int(nl.DeserializeIfAddrmsg(d).Index)] && !m.addrAsKnown(msg.Header.Type, d) {
			return manager.PartLinks
		}
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		if own || len(d) < unix.SizeofRtMsg {
			return 0
		}
		table := int(nl.DeserializeRtMsg(d).Table)
		if attrs, err := nl.ParseRouteAttr(d[unix.SizeofRtMsg:]); err == nil {
			for _, a := range attrs {
				if a.Attr.Type == unix.RTA_TABLE && len(a.Value) == 4 {
					table = int(binary.NativeEndian.Uint32(a.Value))
				}
			}
		}
		if table == m.places.Table && !m.routeAsKnown(msg.Header.Type, d) {
			return manager.PartRoutes
		}
	case unix.RTM_NEWRULE, unix.RTM_DELRULE:
		if own {
			return 0
		}
		if r, ok := parseRule(msg); ok && slices.Contains(m.places.Priorities, r.Priority) {
			return manager.PartRules
		}
	}
	return 0
}

// close stops the monitor.
func (m *monitor) close() {
	m.mu.Lock()
	m.closed = true
	stop, done := m.stop, m.done
	m.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}
