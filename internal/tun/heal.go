package tun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Occupants describes everything that sits where a new VPN would go: every
// route in table, and every rule of either family at priority, whatever
// table it looks up. vpnd refuses to share either with someone else, so
// with no VPN up the list should be empty (the start-up sweep emptied it).
func (n *Netlink) Occupants(table, priority int) ([]string, error) {
	var out []string
	filter := netlink.NewRule()
	filter.Priority = priority
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := retryDump(func() ([]netlink.Rule, error) {
			return netlink.RuleListFiltered(family, filter, netlink.RT_FILTER_PRIORITY)
		})
		if err != nil {
			return nil, fmt.Errorf("list rules at priority %d: %w", priority, err)
		}
		for _, k := range rules {
			out = append(out, "rule "+describeNLRule(k))
		}
	}
	routes, err := listRoutes(table)
	if err != nil {
		return nil, fmt.Errorf("list routes in table %d: %w", table, err)
	}
	for _, k := range routes {
		d := describeNLRoute(k)
		if k.LinkIndex > 0 {
			// Name the device: "dev #1" means little to a reader.
			if l, err := netlink.LinkByIndex(k.LinkIndex); err == nil {
				d = strings.Replace(d, fmt.Sprintf("dev #%d", k.LinkIndex), "dev "+l.Attrs().Name, 1)
			}
		}
		out = append(out, "route "+d)
	}
	return out, nil
}

// ListRules is the package's ListRules, as a method for the manager.
func (n *Netlink) ListRules(table, priority int) ([]Rule, error) { return ListRules(table, priority) }

// ListRoutes is the package's ListRoutes, as a method for the manager.
func (n *Netlink) ListRoutes(table int) ([]Route, error) { return ListRoutes(table) }

// ReplaceRoute puts r in place of whatever route has its destination in
// its table (`ip route replace`): how vpnd restores a route that someone
// changed.
func (n *Netlink) ReplaceRoute(r Route) error {
	nr, err := nlRoute(r)
	if err == nil {
		err = n.h.RouteReplace(nr)
	}
	if err != nil {
		return fmt.Errorf("replace route %s: %w", r, err)
	}
	return nil
}

// changeGroups are the rtnetlink multicast groups whose messages may mean
// that one of vpnd's rules or routes changed: routes and rules of both
// families, and links (a link set down loses its routes).
var changeGroups = []uint{
	unix.RTNLGRP_LINK,
	unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE,
	unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE,
}

// ChangeFilter says which rtnetlink changes matter to a watcher: routes in
// Table, rules at Priority or looking up Table, and the link with index
// LinkIndex. Zero fields match nothing.
type ChangeFilter struct {
	Table     int
	Priority  int
	LinkIndex int
}

// WatchChanges returns a channel that gets a token whenever a route, rule
// or link that f selects changed in this namespace, and also after the
// kernel dropped messages (ENOBUFS), since a lost message may have been the
// one that mattered. Changes to other tables, priorities and links are
// ignored, so that a busy routing daemon elsewhere costs vpnd nothing. The
// channel holds at most one token: a burst of changes coalesces into one,
// and the reader re-reads the kernel's state anyway. It closes when ctx is
// cancelled.
func (n *Netlink) WatchChanges(ctx context.Context, f ChangeFilter) (<-chan struct{}, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("watch changes: socket: %w", err)
	}
	if n.watchRcvBuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, n.watchRcvBuf); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("watch changes: SO_RCVBUF: %w", err)
		}
	}
	var groups uint32
	for _, g := range changeGroups {
		groups |= 1 << (g - 1)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch changes: bind: %w", err)
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch changes: eventfd: %w", err)
	}
	ch := make(chan struct{}, 1)
	unstop := context.AfterFunc(ctx, func() {
		unix.Write(stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	})
	go func() {
		defer close(ch)
		defer unix.Close(stop)
		defer unix.Close(fd)
		defer unstop()
		n.readChanges(fd, stop, f, ch)
	}()
	return ch, nil
}

func (n *Netlink) readChanges(fd, stop int, f ChangeFilter, ch chan<- struct{}) {
	buf := make([]byte, 64<<10)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(stop), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			n.log.Error("watch changes: poll failed", zap.Error(err))
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents == 0 {
			continue
		}
		// Drain what is there, noting whether any message concerns f
		// (or was lost: ENOBUFS).
		relevant := false
		for {
			m, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if errors.Is(err, unix.ENOBUFS) {
				n.log.Warn("netlink change monitor overflowed; resyncing")
				relevant = true
				continue
			}
			if err != nil && !errors.Is(err, unix.EINTR) {
				n.log.Error("watch changes: receive failed", zap.Error(err))
				return
			}
			if err == nil && f.matches(buf[:m]) {
				relevant = true
			}
		}
		if !relevant {
			continue
		}
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// matches reports whether any message in b concerns f. A message it cannot
// parse counts as a match: better one needless resync than a missed one.
func (f ChangeFilter) matches(b []byte) bool {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return true
	}
	for _, m := range msgs {
		d := m.Data
		switch m.Header.Type {
		case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
			if len(d) < unix.SizeofRtMsg {
				return true
			}
			table, _ := rtAttrs(d, int(d[4]))
			if f.Table != 0 && table == f.Table {
				return true
			}
		case unix.RTM_NEWRULE, unix.RTM_DELRULE:
			// fib_rule_hdr has rtmsg's size, with the table at byte 4.
			if len(d) < unix.SizeofRtMsg {
				return true
			}
			table, prio := rtAttrs(d, int(d[4]))
			if (f.Table != 0 && table == f.Table) || (f.Priority != 0 && prio == f.Priority) {
				return true
			}
		case unix.RTM_NEWLINK, unix.RTM_DELLINK:
			if len(d) < unix.SizeofIfInfomsg {
				return true
			}
			index := int(int32(binary.NativeEndian.Uint32(d[4:8])))
			if f.LinkIndex != 0 && index == f.LinkIndex {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// rtAttrs reads the table (RTA_TABLE, which FRA_TABLE shares, overriding
// the 8-bit header field) and the priority (FRA_PRIORITY) from the
// attributes after an rtmsg or fib_rule_hdr.
func rtAttrs(d []byte, table int) (int, int) {
	prio := 0
	b := d[unix.SizeofRtMsg:]
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4])
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		v := b[unix.SizeofRtAttr:l]
		switch {
		case typ == unix.RTA_TABLE && len(v) == 4:
			table = int(binary.NativeEndian.Uint32(v))
		case typ == unix.FRA_PRIORITY && len(v) == 4:
			prio = int(binary.NativeEndian.Uint32(v))
		}
		step := (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1)
		if step > len(b) {
			break
		}
		b = b[step:]
	}
	return table, prio
}
