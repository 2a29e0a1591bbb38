// Package tuntest provides Fake, an in-memory kernel for the manager's unit
// tests. It behaves like tun.Netlink where the manager can observe it: the
// same errnos for duplicates and missing objects, links that vanish with
// their routes and addresses, a "TUN fd" that is a real file whose last
// close removes the link, and WatchLink. fake_test.go runs one scenario
// table against Fake and against the real kernel to keep it honest.
//
// On top, Fake records every call and can fail any chosen call, so that a
// test can walk a bring-up through every failure point and check that the
// rollback restores the Snapshot from before.
package tuntest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/tun"
)

// Link is a fake link as Snapshot reports it.
type Link struct {
	Name      string
	Index     int
	MTU       int
	Up        bool
	Addresses []netip.Prefix // in the order they were added
}

// State is everything the fake kernel holds. Links are sorted by index;
// routes by family, table and destination; rules by family and priority,
// in insertion order within a priority (the kernel's order).
type State struct {
	Links  []Link
	Routes []tun.Route
	Rules  []tun.Rule
}

// Equal reports whether s and o hold the same things.
func (s State) Equal(o State) bool {
	return slices.EqualFunc(s.Links, o.Links, func(a, b Link) bool {
		return a.Name == b.Name && a.Index == b.Index && a.MTU == b.MTU && a.Up == b.Up && slices.Equal(a.Addresses, b.Addresses)
	}) && slices.Equal(s.Routes, o.Routes) && slices.Equal(s.Rules, o.Rules)
}

// Call is one recorded call: the method, its arguments rendered as text,
// and what it returned.
type Call struct {
	Method string
	Args   string
	Err    error
}

func (c Call) String() string {
	if c.Err != nil {
		return fmt.Sprintf("%s(%s) = %v", c.Method, c.Args, c.Err)
	}
	return fmt.Sprintf("%s(%s)", c.Method, c.Args)
}

// mutating are the methods that count as steps for FailAt.
var mutating = map[string]bool{
	"CreateTUN": true, "DeleteLink": true, "AddAddress": true, "DeleteAddress": true,
	"SetMTU": true, "SetUp": true, "AddRoute": true, "DeleteRoute": true,
	"AddRule": true, "DeleteRule": true, "MarkSocket": true,
}

// DefaultMTU is the MTU of a new fake tun, as for a real one.
const DefaultMTU = 1500

// Fake is an in-memory tun.Netlink. The zero value is not usable; call New.
// All methods are safe for concurrent use.
type Fake struct {
	mu        sync.Mutex
	nextIndex int
	links     map[int]*link
	routes    []tun.Route
	rules     []tun.Rule // kernel order
	marks     map[sockID]uint32
	calls     []Call
	steps     int
	perMethod map[string]int
	failAt    map[int]error
	failOn    map[string]map[int]error
	pollers   sync.WaitGroup
	// changeSubs are the WatchChanges channels.
	changeSubs []chan struct{}
}

type link struct {
	Link
	watchers map[*watcher]struct{}
	stop     int // write end of the poller's stop pipe; -1 once used
}

type watcher struct {
	ch   chan struct{}
	stop func() bool
}

type sockID struct{ dev, ino uint64 }

// New returns an empty fake kernel. Like a fresh network namespace it has
// a loopback link, index 1, which is not in Snapshot.
func New() *Fake {
	return &Fake{
		nextIndex: 2,
		links:     map[int]*link{},
		marks:     map[sockID]uint32{},
		perMethod: map[string]int{},
		failAt:    map[int]error{},
		failOn:    map[string]map[int]error{},
	}
}

// FailAt makes the step-th mutating call (counting from 1 over the fake's
// whole life, see Steps) fail with err, changing nothing.
func (f *Fake) FailAt(step int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt[step] = err
}

// FailOn makes the nth call (from 1) of method fail with err, changing
// nothing. Any method can be failed, including WatchLink and CheckSocket.
func (f *Fake) FailOn(method string, nth int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failOn[method] == nil {
		f.failOn[method] = map[int]error{}
	}
	f.failOn[method][nth] = err
}

// ClearFailures forgets all injected failures.
func (f *Fake) ClearFailures() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt = map[int]error{}
	f.failOn = map[string]map[int]error{}
}

// Steps returns how many mutating calls have been made so far. A test that
// runs one bring-up on a fresh Fake learns from it how many failure points
// there are to try with FailAt.
func (f *Fake) Steps() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.steps
}

// Calls returns a copy of the call log.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Snapshot returns a deep copy of the state.
func (f *Fake) Snapshot() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	var s State
	for _, l := range f.links {
		c := l.Link
		c.Addresses = slices.Clone(l.Addresses)
		s.Links = append(s.Links, c)
	}
	slices.SortFunc(s.Links, func(a, b Link) int { return a.Index - b.Index })
	s.Routes = slices.Clone(f.routes)
	SortRoutes(s.Routes)
	s.Rules = slices.Clone(f.rules)
	slices.SortStableFunc(s.Rules, func(a, b tun.Rule) int {
		if a.Family != b.Family {
			return a.Family - b.Family
		}
		return a.Priority - b.Priority
	})
	return s
}

// SortRoutes sorts routes by family, table, destination and bits: the
// order Snapshot uses, for comparing with routes read from a kernel.
func SortRoutes(rs []tun.Route) {
	slices.SortFunc(rs, func(a, b tun.Route) int {
		if a.Family() != b.Family() {
			return a.Family() - b.Family()
		}
		if a.Table != b.Table {
			return a.Table - b.Table
		}
		if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
			return c
		}
		return a.Dst.Bits() - b.Dst.Bits()
	})
}

// Mark returns the mark MarkSocket recorded for the socket behind fd.
func (f *Fake) Mark(fd int) (uint32, bool) {
	id, err := socketID(fd)
	if err != nil {
		return 0, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.marks[id]
	return m, ok
}

// begin counts a call and returns the injected failure for it, if any.
// f.mu must be held.
func (f *Fake) begin(method string) error {
	f.perMethod[method]++
	var err error
	if mutating[method] {
		f.steps++
		err = f.failAt[f.steps]
	}
	if e := f.failOn[method][f.perMethod[method]]; e != nil {
		err = e
	}
	return err
}

// record logs a call. f.mu must be held.
func (f *Fake) record(method, args string, err error) error {
	f.calls = append(f.calls, Call{Method: method, Args: args, Err: err})
	if err == nil && mutating[method] && method != "MarkSocket" {
		f.changedLocked()
	}
	return err
}

// CreateTUN makes a fake TUN link. The file it returns is the read end of
// a pipe, in the blocking mode asked for. The fake holds the write end and
// removes the link, like the kernel, once every copy of the read end is
// closed: in this process or in any other it was passed to.
func (f *Fake) CreateTUN(name string, blocking bool) (*os.File, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := fmt.Sprintf("%q, %t", name, blocking)
	if err := f.begin("CreateTUN"); err != nil {
		return nil, 0, f.record("CreateTUN", args, err)
	}
	if err := tun.ValidateName(name); err != nil {
		return nil, 0, f.record("CreateTUN", args, fmt.Errorf("create tun %q: %w", name, err))
	}
	if name == "lo" {
		return nil, 0, f.record("CreateTUN", args, fmt.Errorf("create tun %s: %w: a device link (index 1) has this name", name, tun.ErrLinkExists))
	}
	for _, l := range f.links {
		if l.Name == name {
			return nil, 0, f.record("CreateTUN", args, fmt.Errorf("create tun %s: %w: a tuntap link (index %d) has this name", name, tun.ErrLinkExists, l.Index))
		}
	}
	file, holdFD, err := newTUNFile(name, blocking)
	if err != nil {
		return nil, 0, f.record("CreateTUN", args, fmt.Errorf("create tun %s: %w", name, err))
	}
	var stop [2]int
	if err := unix.Pipe2(stop[:], unix.O_CLOEXEC); err != nil {
		file.Close()
		unix.Close(holdFD)
		return nil, 0, f.record("CreateTUN", args, fmt.Errorf("create tun %s: %w", name, err))
	}
	index := f.nextIndex
	f.nextIndex++
	f.links[index] = &link{
		Link:     Link{Name: name, Index: index, MTU: DefaultMTU},
		watchers: map[*watcher]struct{}{},
		stop:     stop[1],
	}
	f.pollers.Add(1)
	go f.pollReaders(index, holdFD, stop[0])
	return file, index, f.record("CreateTUN", args, nil)
}

// newTUNFile opens the pipe and sets the modes the way tun.Netlink does:
// non-blocking when wrapped in an *os.File, then switched through
// SyscallConn, close-on-exec throughout.
func newTUNFile(name string, blocking bool) (*os.File, int, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, 0, err
	}
	file := os.NewFile(uintptr(p[0]), "/dev/net/tun")
	if err := unix.SetNonblock(p[1], false); err != nil {
		file.Close()
		unix.Close(p[1])
		return nil, 0, err
	}
	rc, err := file.SyscallConn()
	if err == nil {
		var opErr error
		err = rc.Control(func(fd uintptr) { opErr = unix.SetNonblock(int(fd), !blocking) })
		if err == nil {
			err = opErr
		}
	}
	if err != nil {
		file.Close()
		unix.Close(p[1])
		return nil, 0, err
	}
	return file, p[1], nil
}

// pollReaders waits until the pipe has no reader left (POLLERR on the
// write end) or the link is deleted (the stop pipe), then closes the write
// end, so that a reader still holding the fd sees the device go away.
func (f *Fake) pollReaders(index, holdFD, stopFD int) {
	defer f.pollers.Done()
	defer unix.Close(holdFD)
	defer unix.Close(stopFD)
	fds := []unix.PollFd{{Fd: int32(holdFD)}, {Fd: int32(stopFD), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
			f.mu.Lock()
			f.removeLinkLocked(index)
			f.mu.Unlock()
			return
		}
	}
}

// removeLinkLocked deletes a link as the kernel does: its addresses and
// every route through it go too; rules stay. f.mu must be held.
func (f *Fake) removeLinkLocked(index int) bool {
	l, ok := f.links[index]
	if !ok {
		return false
	}
	delete(f.links, index)
	defer f.changedLocked()
	f.routes = slices.DeleteFunc(f.routes, func(r tun.Route) bool { return !r.Throw && r.LinkIndex == index })
	for w := range l.watchers {
		w.stop()
		close(w.ch)
	}
	if l.stop >= 0 {
		unix.Close(l.stop) // wakes the poller with POLLHUP on the stop pipe
		l.stop = -1
	}
	return true
}

// DeleteLinkExternally removes a link the way `ip link del` would, behind
// vpnd's back. It is not a call and not a step. It reports whether the
// link existed.
func (f *Fake) DeleteLinkExternally(index int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.removeLinkLocked(index)
}

// Close deletes every link and waits until all helper goroutines have
// exited, for leak checks. Files handed out stay open (they read EOF).
func (f *Fake) Close() {
	f.mu.Lock()
	for index := range f.links {
		f.removeLinkLocked(index)
	}
	f.mu.Unlock()
	f.pollers.Wait()
}

// DeleteLink deletes the link; a missing one is not an error.
func (f *Fake) DeleteLink(index int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := fmt.Sprint(index)
	if err := f.begin("DeleteLink"); err != nil {
		return f.record("DeleteLink", args, err)
	}
	if index <= 0 {
		return f.record("DeleteLink", args, fmt.Errorf("delete link: invalid interface index %d", index))
	}
	f.removeLinkLocked(index)
	return f.record("DeleteLink", args, nil)
}

// linkLocked returns the link or ENODEV. f.mu must be held.
func (f *Fake) linkLocked(index int) (*link, error) {
	if index <= 0 {
		return nil, fmt.Errorf("invalid interface index %d", index)
	}
	l, ok := f.links[index]
	if !ok {
		return nil, unix.ENODEV
	}
	return l, nil
}

func checkAddr(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix %s", p)
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("IPv4-mapped address %s is not supported", p)
	}
	return nil
}

// sameAddress is the kernel's duplicate test: IPv4 addresses clash with
// the same prefix length, IPv6 addresses whatever the length.
func sameAddress(a, b netip.Prefix) bool {
	if a.Addr() != b.Addr() {
		return false
	}
	return a.Addr().Is6() || a.Bits() == b.Bits()
}

// AddAddress adds addr; a duplicate is EEXIST, a missing link ENODEV.
func (f *Fake) AddAddress(index int, addr netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := fmt.Sprintf("%d, %s", index, addr)
	if err := f.begin("AddAddress"); err != nil {
		return f.record("AddAddress", args, err)
	}
	err := checkAddr(addr)
	var l *link
	if err == nil {
		l, err = f.linkLocked(index)
	}
	if err == nil && slices.ContainsFunc(l.Addresses, func(a netip.Prefix) bool { return sameAddress(a, addr) }) {
		err = unix.EEXIST
	}
	if err != nil {
		return f.record("AddAddress", args, fmt.Errorf("add address %s to link %d: %w", addr, index, err))
	}
	l.Addresses = append(l.Addresses, addr)
	return f.record("AddAddress", args, nil)
}

// DeleteAddress removes exactly addr (address and prefix length); a
// missing one is EADDRNOTAVAIL, a missing link ENODEV. Removing the link's
// last IPv4 address flushes its IPv4 routes, as in the kernel.
func (f *Fake) DeleteAddress(index int, addr netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := fmt.Sprintf("%d, %s", index, addr)
	if err := f.begin("DeleteAddress"); err != nil {
		return f.record("DeleteAddress", args, err)
	}
	err := checkAddr(addr)
	var l *link
	if err == nil {
		l, err = f.linkLocked(index)
	}
	i := -1
	if err == nil {
		if i = slices.Index(l.Addresses, addr); i < 0 {
			err = unix.EADDRNOTAVAIL
		}
	}
	if err != nil {
		return f.record("DeleteAddress", args, fmt.Errorf("delete address %s from link %d: %w", addr, index, err))
	}
	l.Addresses = slices.Delete(l.Addresses, i, i+1)
	if addr.Addr().Is4() && !slices.ContainsFunc(l.Addresses, func(p netip.Prefix) bool { return p.Addr().Is4() }) {
		// With its last IPv4 address gone the kernel disables IPv4 on the
		// link and flushes every IPv4 route through it, in every table.
		f.routes = slices.DeleteFunc(f.routes, func(r tun.Route) bool {
			return !r.Throw && r.LinkIndex == index && r.Dst.Addr().Is4()
		})
	}
	return f.record("DeleteAddress", args, nil)
}

// SetMTU sets the MTU; outside 68-65535 (a tun's limits) it is EINVAL.
func (f *Fake) SetMTU(index, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := fmt.Sprintf("%d, %d", index, mtu)
	if err := f.begin("SetMTU"); err != nil {
		return f.record("SetMTU", args, err)
	}
	l, err := f.linkLocked(index)
	if err == nil && (mtu < 68 || mtu > 65535) {
		err = unix.EINVAL
	}
	if err != nil {
		return f.record("SetMTU", args, fmt.Errorf("set mtu %d on link %d: %w", mtu, index, err))
	}
	l.MTU = mtu
	return f.record("SetMTU", args, nil)
}

// SetUp sets the link up.
func (f *Fake) SetUp(index int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := fmt.Sprint(index)
	if err := f.begin("SetUp"); err != nil {
		return f.record("SetUp", args, err)
	}
	l, err := f.linkLocked(index)
	if err != nil {
		return f.record("SetUp", args, fmt.Errorf("set link %d up: %w", index, err))
	}
	l.Up = true
	return f.record("SetUp", args, nil)
}

func canonical(r tun.Route) tun.Route {
	r.Dst = r.Dst.Masked()
	return r
}

// AddRoute adds r. As in the kernel: a second route to the same
// destination in the same table is EEXIST; a missing link ENODEV; a link
// that is down ENETDOWN; a gateway outside the link's prefixes
// ENETUNREACH.
func (f *Fake) AddRoute(r tun.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := r.String()
	if err := f.begin("AddRoute"); err != nil {
		return f.record("AddRoute", args, err)
	}
	err := r.Validate()
	r = canonical(r)
	if err == nil && !r.Throw {
		var l *link
		l, err = f.linkLocked(r.LinkIndex)
		switch {
		case err != nil:
		case !l.Up:
			err = unix.ENETDOWN
		case r.Gateway.IsValid() && !f.onLinkLocked(l, r.Table, r.Gateway):
			err = unix.ENETUNREACH
		}
	}
	if err == nil && slices.ContainsFunc(f.routes, func(o tun.Route) bool { return o.Table == r.Table && o.Dst == r.Dst }) {
		err = unix.EEXIST
	}
	if err != nil {
		return f.record("AddRoute", args, fmt.Errorf("add route %s: %w", r, err))
	}
	f.routes = append(f.routes, r)
	return f.record("AddRoute", args, nil)
}

// onLinkLocked is the kernel's gateway check, simplified: the gateway must
// be directly reachable through the link, by one of the link's address
// prefixes (their routes are in table main) or by a gateway-less route
// through the link in the new route's own table, which the kernel consults
// first. f.mu must be held.
func (f *Fake) onLinkLocked(l *link, table int, gw netip.Addr) bool {
	if slices.ContainsFunc(l.Addresses, func(p netip.Prefix) bool { return p.Contains(gw) }) {
		return true
	}
	return slices.ContainsFunc(f.routes, func(o tun.Route) bool {
		return o.Table == table && !o.Throw && o.LinkIndex == l.Index && !o.Gateway.IsValid() && o.Dst.Contains(gw)
	})
}

// DeleteRoute deletes the route matching r's table, destination, type,
// link and gateway; none is ESRCH.
func (f *Fake) DeleteRoute(r tun.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := r.String()
	if err := f.begin("DeleteRoute"); err != nil {
		return f.record("DeleteRoute", args, err)
	}
	err := r.Validate()
	r = canonical(r)
	i := -1
	if err == nil {
		if i = slices.Index(f.routes, r); i < 0 {
			err = unix.ESRCH
		}
	}
	if err != nil {
		return f.record("DeleteRoute", args, fmt.Errorf("delete route %s: %w", r, err))
	}
	f.routes = slices.Delete(f.routes, i, i+1)
	return f.record("DeleteRoute", args, nil)
}

// AddRule adds r after the existing rules of its priority; an identical
// rule is EEXIST.
func (f *Fake) AddRule(r tun.Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := r.String()
	if err := f.begin("AddRule"); err != nil {
		return f.record("AddRule", args, err)
	}
	err := r.Validate()
	if err == nil && slices.Contains(f.rules, r) {
		err = unix.EEXIST
	}
	if err != nil {
		return f.record("AddRule", args, fmt.Errorf("add rule %s: %w", r, err))
	}
	f.rules = append(f.rules, r)
	return f.record("AddRule", args, nil)
}

// DeleteRule deletes exactly r: ENOENT if r is not there, and, like
// tun.Netlink, ErrAmbiguousRule when the kernel's first match would be
// another rule.
func (f *Fake) DeleteRule(r tun.Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := r.String()
	if err := f.begin("DeleteRule"); err != nil {
		return f.record("DeleteRule", args, err)
	}
	err := r.Validate()
	i := -1
	if err == nil {
		// Every candidate has r's priority, so insertion order is the
		// kernel's order among them.
		if !slices.Contains(f.rules, r) {
			err = unix.ENOENT
		}
		for j, k := range f.rules {
			if err != nil {
				break
			}
			if !r.MatchesDelete(k) {
				continue
			}
			if k != r {
				err = fmt.Errorf("%w: %s", tun.ErrAmbiguousRule, k)
			} else {
				i = j
			}
			break
		}
		if err == nil && i < 0 {
			err = unix.ENOENT
		}
	}
	if err != nil {
		return f.record("DeleteRule", args, fmt.Errorf("delete rule %s: %w", r, err))
	}
	f.rules = slices.Delete(f.rules, i, i+1)
	return f.record("DeleteRule", args, nil)
}

// WatchLink returns a channel closed when the link goes, for whatever
// reason; it is closed at once if the link does not exist. Cancelling ctx
// stops the watch without closing the channel.
func (f *Fake) WatchLink(ctx context.Context, index int) (<-chan struct{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := fmt.Sprint(index)
	if err := f.begin("WatchLink"); err != nil {
		return nil, f.record("WatchLink", args, err)
	}
	if index <= 0 {
		return nil, f.record("WatchLink", args, fmt.Errorf("watch link: invalid interface index %d", index))
	}
	ch := make(chan struct{})
	l, ok := f.links[index]
	if !ok {
		close(ch)
		return ch, f.record("WatchLink", args, nil)
	}
	w := &watcher{ch: ch}
	w.stop = context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(l.watchers, w)
	})
	l.watchers[w] = struct{}{}
	return ch, f.record("WatchLink", args, nil)
}

// CheckSocket checks the real fd, exactly as tun.Netlink does.
func (f *Fake) CheckSocket(fd int) error {
	f.mu.Lock()
	err := f.begin("CheckSocket")
	f.mu.Unlock()
	if err == nil {
		err = tun.CheckSocket(fd)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.record("CheckSocket", fmt.Sprint(fd), err)
}

// MarkSocket records the mark in memory (setting SO_MARK needs
// CAP_NET_ADMIN, which unit tests lack). The first mark of a socket starts
// from its real SO_MARK, so other bits are kept as in the kernel.
func (f *Fake) MarkSocket(fd int, mark uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := fmt.Sprintf("%d, %#x", fd, mark)
	if err := f.begin("MarkSocket"); err != nil {
		return f.record("MarkSocket", args, err)
	}
	id, err := socketID(fd)
	if err != nil {
		return f.record("MarkSocket", args, fmt.Errorf("get SO_MARK of fd %d: %w", fd, err))
	}
	old, ok := f.marks[id]
	if !ok {
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		if err != nil {
			return f.record("MarkSocket", args, fmt.Errorf("get SO_MARK of fd %d: %w", fd, err))
		}
		old = uint32(v)
	}
	f.marks[id] = old | mark
	return f.record("MarkSocket", args, nil)
}

// socketID names the socket behind fd independently of the fd number, so a
// mark follows the socket through dup and fd passing.
func socketID(fd int) (sockID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return sockID{}, err
	}
	return sockID{dev: st.Dev, ino: st.Ino}, nil
}
