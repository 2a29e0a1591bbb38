// Package sim is vpnd's simulated kernel: an in-memory model of the links,
// addresses, routes and rules vpnd manages, behind the same Kernel interface
// as the real one (internal/tun). It serves `vpnd --sim`, where vpnd runs
// with no privilege and changes nothing in the host's network configuration,
// and, wrapped with fault injection, the manager's unit tests
// (internal/tun/tuntest). internal/tun/tuntest runs one scenario table
// against this model and against the real kernel, so that the two agree
// wherever the manager can tell them apart.
//
// A simulated TUN is one end of a SOCK_SEQPACKET socket pair, one IP packet
// per message. The model holds the other end, like a kernel: the link lives
// until every copy of the client's end is closed, and a deleted link
// closes the model's end, so the client reads EOF. A TUN created with
// TUNOptions.VnetHdr carries a virtio_net_hdr before each packet, both
// ways, as a TUN with IFF_VNET_HDR does (vnethdr.go).
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/tun"
)

// DefaultMTU is the MTU of a new simulated TUN, as for a real one.
const DefaultMTU = 1500

// Link is a simulated link as Snapshot reports it.
type Link struct {
	Name      string
	Index     int
	MTU       int
	Up        bool
	Addresses []netip.Prefix // sorted
	// VnetHdr: the TUN was created with TUNOptions.VnetHdr, and each
	// message on it carries a virtio_net_hdr before the packet.
	VnetHdr bool
}

// State is everything the model holds. Links are sorted by index; routes
// by family, table and destination; rules by family and priority, in
// insertion order within a priority (the kernel's order).
type State struct {
	Links  []Link
	Routes []tun.Route
	Rules  []tun.Rule
}

// Equal reports whether s and o hold the same things.
func (s State) Equal(o State) bool {
	return slices.EqualFunc(s.Links, o.Links, func(a, b Link) bool {
		return a.Name == b.Name && a.Index == b.Index && a.MTU == b.MTU && a.Up == b.Up && a.VnetHdr == b.VnetHdr &&
			slices.Equal(a.Addresses, b.Addresses)
	}) && slices.Equal(s.Routes, o.Routes) && slices.Equal(s.Rules, o.Rules)
}

// Options configure a Kernel.
type Options struct {
	// Inject, if set, is asked before every change the Kernel makes on
	// vpnd's behalf (creating a TUN, each object of a batch, marking a
	// socket); a non-nil answer makes that change fail with it, changing
	// nothing. what names the change ("add route", "create tun"...), obj
	// its object.
	Inject func(what string, obj any) error
	// HostPrefixes answers HostPrefixes; nil means the host has none.
	HostPrefixes func(except string) ([]tun.HostPrefix, error)
	// Packet, if set, is called with each packet the client writes into a
	// simulated TUN, with the link it came in on; what it returns is
	// written back to the client, one packet per message. Packets are
	// IP packets: on a link with VnetHdr the model strips and adds the
	// header.
	Packet func(l Link, pkt []byte) [][]byte
}

// Kernel is the in-memory kernel. All methods are safe for concurrent use.
type Kernel struct {
	opt Options

	mu        sync.Mutex
	nextIndex int
	links     map[int]*link
	routes    []tun.Route
	rules     []tun.Rule // kernel order
	watches   map[*watch]struct{}
	readers   sync.WaitGroup

	// marksMu guards marks apart from the model: protect never waits for
	// a batch, as with the real kernel.
	marksMu sync.Mutex
	marks   map[sockID]uint32
}

type link struct {
	Link
	held *os.File // the model's end of the socket pair
}

type watch struct {
	f       tun.ChangeFilter
	gone    chan struct{}
	changed chan struct{}
	isGone  bool
}

type sockID struct{ dev, ino uint64 }

// linkRef names a link in errors and in the fault injector's log as
// tun.Netlink does: "configure link #3".
type linkRef int

func (l linkRef) String() string { return fmt.Sprintf("#%d", int(l)) }

// New returns an empty model. Like a fresh network namespace it has a
// loopback link, index 1, which is not in Snapshot.
func New(opt Options) *Kernel {
	return &Kernel{
		opt:       opt,
		nextIndex: 2,
		links:     map[int]*link{},
		marks:     map[sockID]uint32{},
		watches:   map[*watch]struct{}{},
	}
}

func (k *Kernel) inject(what string, obj any) error {
	if k.opt.Inject == nil {
		return nil
	}
	return k.opt.Inject(what, obj)
}

// Snapshot returns a deep copy of the state.
func (k *Kernel) Snapshot() State {
	k.mu.Lock()
	defer k.mu.Unlock()
	var s State
	for _, l := range k.links {
		c := l.Link
		// The kernel's address order is its own business: sort.
		c.Addresses = slices.Clone(l.Addresses)
		slices.SortFunc(c.Addresses, func(a, b netip.Prefix) int {
			if c := a.Addr().Compare(b.Addr()); c != 0 {
				return c
			}
			return a.Bits() - b.Bits()
		})
		s.Links = append(s.Links, c)
	}
	slices.SortFunc(s.Links, func(a, b Link) int { return a.Index - b.Index })
	s.Routes = slices.Clone(k.routes)
	SortRoutes(s.Routes)
	s.Rules = slices.Clone(k.rules)
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

// Close deletes every link and waits until the TUN readers have exited.
// Files handed out stay open (they read EOF).
func (k *Kernel) Close() {
	k.mu.Lock()
	for index := range k.links {
		k.removeLinkLocked(index)
	}
	k.mu.Unlock()
	k.readers.Wait()
}

// CreateTUN makes a simulated TUN link and returns the client's end of its
// socket pair, in the blocking mode asked for, close-on-exec. With
// opt.VnetHdr every message carries a virtio_net_hdr before the packet.
func (k *Kernel) CreateTUN(name string, opt tun.TUNOptions) (*os.File, int, error) {
	if err := tun.ValidateName(name); err != nil {
		return nil, 0, fmt.Errorf("create tun %q: %w", name, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.inject("create tun", name); err != nil {
		return nil, 0, fmt.Errorf("create tun %s: %w", name, err)
	}
	if name == "lo" {
		return nil, 0, fmt.Errorf("create tun %s: %w: a device link (index 1) has this name", name, tun.ErrLinkExists)
	}
	for _, l := range k.links {
		if l.Name == name {
			return nil, 0, fmt.Errorf("create tun %s: %w: a tun link (index %d) has this name", name, tun.ErrLinkExists, l.Index)
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("create tun %s: socketpair: %w", name, err)
	}
	if opt.Blocking {
		if err := unix.SetNonblock(fds[0], false); err != nil {
			unix.Close(fds[0])
			unix.Close(fds[1])
			return nil, 0, fmt.Errorf("create tun %s: %w", name, err)
		}
	}
	index := k.nextIndex
	k.nextIndex++
	l := &link{Link: Link{Name: name, Index: index, MTU: DefaultMTU, VnetHdr: opt.VnetHdr}, held: os.NewFile(uintptr(fds[1]), "sim-tun")}
	k.links[index] = l
	k.readers.Add(1)
	go k.serve(l)
	return os.NewFile(uintptr(fds[0]), "/dev/net/tun"), index, nil
}

// serve reads the packets the client writes, answers them through
// Options.Packet, and removes the link when every copy of the client's end
// is closed (EOF), as the kernel removes a non-persistent TUN.
func (k *Kernel) serve(l *link) {
	defer k.readers.Done()
	rc, err := l.held.SyscallConn()
	if err != nil {
		panic(err) // an *os.File of a socket always has one
	}
	buf := make([]byte, 65536)
	for {
		n, err := l.held.Read(buf)
		if n == 0 && err == io.EOF && !hungUp(rc) {
			continue // an empty packet, not the end: a TUN drops it
		}
		if err != nil {
			// EOF: the client closed its end. Any other error: the model
			// closed its own end (the link was deleted).
			k.mu.Lock()
			if k.links[l.Index] == l {
				k.removeLinkLocked(l.Index)
			}
			k.mu.Unlock()
			return
		}
		k.mu.Lock()
		cur, up := l.Link, l.Up
		cur.Addresses = slices.Clone(l.Addresses)
		k.mu.Unlock()
		if k.opt.Packet == nil || !up {
			continue
		}
		pkt := buf[:n]
		if cur.VnetHdr {
			var ok bool
			if pkt, ok = fromVnetHdr(pkt); !ok {
				continue
			}
		}
		for _, out := range k.opt.Packet(cur, pkt) {
			if cur.VnetHdr {
				out = toVnetHdr(out)
			}
			// Never wait for the client: one that does not read loses
			// packets once its queue is full, as on a TUN, and the
			// packets it writes are still read meanwhile.
			rc.Control(func(fd uintptr) { unix.Send(int(fd), out, unix.MSG_DONTWAIT) })
		}
	}
}

// hungUp reports whether the peer of a socket pair end closed its end: a
// read of zero bytes is that, or an empty message.
func hungUp(rc syscall.RawConn) bool {
	hup := true
	rc.Control(func(fd uintptr) {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(p, 0); err == nil && n == 1 {
			hup = p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0
		} else if err == nil {
			hup = false
		}
	})
	return hup
}

// removeLinkLocked deletes a link as the kernel does: its addresses and
// every route through it go too; rules stay. k.mu must be held.
func (k *Kernel) removeLinkLocked(index int) bool {
	l, ok := k.links[index]
	if !ok {
		return false
	}
	delete(k.links, index)
	k.routes = slices.DeleteFunc(k.routes, func(r tun.Route) bool { return r.Kind == tun.Unicast && r.LinkIndex == index })
	for w := range k.watches {
		if w.f.LinkIndex == index && !w.isGone {
			w.isGone = true
			close(w.gone)
		}
	}
	l.held.Close() // the client reads EOF; the reader exits
	return true
}

func (k *Kernel) linkLocked(index int) (*link, error) {
	if index <= 0 {
		return nil, fmt.Errorf("invalid interface index %d", index)
	}
	l, ok := k.links[index]
	if !ok {
		return nil, unix.ENODEV
	}
	return l, nil
}

// sameAddress is the kernel's duplicate test: IPv4 addresses clash with
// the same prefix length, IPv6 addresses whatever the length.
func sameAddress(a, b netip.Prefix) bool {
	if a.Addr() != b.Addr() {
		return false
	}
	return a.Addr().Is6() || a.Bits() == b.Bits()
}

// ops: the model's single steps, each as the kernel would answer it.

// ipv6MinMTU is IPv6's minimum MTU: below it the kernel takes IPv6 off a
// link.
const ipv6MinMTU = 1280

func (k *Kernel) setMTULocked(index, mtu int) error {
	l, err := k.linkLocked(index)
	if err == nil && (mtu < 68 || mtu > 65535) {
		err = unix.EINVAL
	}
	if err != nil {
		return err
	}
	l.MTU = mtu
	if mtu < ipv6MinMTU {
		// IPv6 leaves the link with its addresses and routes; raising the
		// MTU again brings IPv6 back without them.
		k.routes = slices.DeleteFunc(k.routes, func(r tun.Route) bool {
			return r.Kind == tun.Unicast && r.LinkIndex == index && r.Dst.Addr().Is6()
		})
		l.Addresses = slices.DeleteFunc(l.Addresses, func(p netip.Prefix) bool { return p.Addr().Is6() })
	}
	return nil
}

func (k *Kernel) setUpLocked(index int, up bool) error {
	l, err := k.linkLocked(index)
	if err != nil {
		return err
	}
	if l.Up && !up {
		// A link set down loses its routes, and its IPv6 addresses
		// (keep_addr_on_down=0).
		k.routes = slices.DeleteFunc(k.routes, func(r tun.Route) bool { return r.Kind == tun.Unicast && r.LinkIndex == index })
		l.Addresses = slices.DeleteFunc(l.Addresses, func(p netip.Prefix) bool { return p.Addr().Is6() })
	}
	l.Up = up
	return nil
}

func (k *Kernel) addAddrLocked(index int, p netip.Prefix) error {
	if err := tun.ValidateAddr(p); err != nil {
		return err
	}
	l, err := k.linkLocked(index)
	if err != nil {
		return err
	}
	if p.Addr().Is6() && l.MTU < ipv6MinMTU {
		return unix.EINVAL // no IPv6 on the link
	}
	if slices.ContainsFunc(l.Addresses, func(a netip.Prefix) bool { return sameAddress(a, p) }) {
		return unix.EEXIST
	}
	l.Addresses = append(l.Addresses, p)
	return nil
}

func (k *Kernel) delAddrLocked(index int, p netip.Prefix) error {
	l, err := k.linkLocked(index)
	if err != nil {
		return err
	}
	i := slices.Index(l.Addresses, p)
	if i < 0 {
		return unix.EADDRNOTAVAIL
	}
	l.Addresses = slices.Delete(l.Addresses, i, i+1)
	if p.Addr().Is4() && !slices.ContainsFunc(l.Addresses, func(a netip.Prefix) bool { return a.Addr().Is4() }) {
		// With its last IPv4 address gone the kernel disables IPv4 on the
		// link and flushes every IPv4 route through it, in every table.
		k.routes = slices.DeleteFunc(k.routes, func(r tun.Route) bool {
			return r.Kind == tun.Unicast && r.LinkIndex == index && r.Dst.Addr().Is4()
		})
	}
	return nil
}

// addRouteLocked adds r as the kernel does: a second route to the same
// destination in the same table is EEXIST (unless replace); a missing link
// ENODEV; a gateway that is a local address EINVAL; a link that is down
// ENETDOWN. vpnd's gateway routes are "onlink": any other gateway is taken
// to be on the link.
func (k *Kernel) addRouteLocked(r tun.Route, replace bool) error {
	if err := r.Validate(); err != nil {
		return err
	}
	r.Dst = r.Dst.Masked()
	if r.Kind == tun.Unicast {
		l, err := k.linkLocked(r.LinkIndex)
		switch {
		case err != nil:
			return err
		case r.Dst.Addr().Is6() && l.MTU < ipv6MinMTU:
			return unix.ENODEV // no IPv6 on the link
		case r.Gateway.Is4() && !l.Up:
			return unix.ENETDOWN // IPv4 checks an onlink gateway's link first
		case r.Gateway.IsValid() && k.localLocked(r.Gateway):
			return unix.EINVAL // "Gateway can not be a local address"
		case !l.Up:
			return unix.ENETDOWN
		}
	}
	i := slices.IndexFunc(k.routes, func(o tun.Route) bool { return o.Table == r.Table && o.Dst == r.Dst })
	switch {
	case i >= 0 && replace:
		k.routes[i] = r
	case i >= 0:
		return unix.EEXIST
	default:
		k.routes = append(k.routes, r)
	}
	return nil
}

// localLocked reports whether a is an address of one of the links.
func (k *Kernel) localLocked(a netip.Addr) bool {
	for _, l := range k.links {
		if slices.ContainsFunc(l.Addresses, func(p netip.Prefix) bool { return p.Addr() == a }) {
			return true
		}
	}
	return false
}

func (k *Kernel) delRouteLocked(r tun.Route) error {
	r.Dst = r.Dst.Masked()
	i := slices.Index(k.routes, r)
	if i < 0 {
		return unix.ESRCH
	}
	k.routes = slices.Delete(k.routes, i, i+1)
	return nil
}

func (k *Kernel) addRuleLocked(r tun.Rule) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if slices.Contains(k.rules, r) {
		return unix.EEXIST
	}
	// After the existing rules of its priority, as in the kernel.
	i := len(k.rules)
	for j, o := range k.rules {
		if o.Family == r.Family && o.Priority > r.Priority {
			i = j
			break
		}
	}
	k.rules = slices.Insert(k.rules, i, r)
	return nil
}

// delRuleLocked deletes the kernel's first match for a delete of r, which
// may be another rule: the caller checks for that first.
func (k *Kernel) delRuleLocked(r tun.Rule) error {
	i := slices.IndexFunc(k.rules, r.MatchesDelete)
	if i < 0 {
		return unix.ENOENT
	}
	k.rules = slices.Delete(k.rules, i, i+1)
	return nil
}

// Install applies o as tun.Netlink does: each object is tried in turn, a
// failure does not stop the others, and the result lists what took.
func (k *Kernel) Install(o *tun.Objects) (tun.Objects, error) {
	if err := o.Validate(); err != nil {
		return tun.Objects{}, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var added tun.Objects
	var first error
	fail := func(what string, obj any, err error) {
		if first == nil {
			first = fmt.Errorf("%s %v: %w", what, obj, err)
		}
	}
	step := func(what string, obj any, do func() error) bool {
		err := k.inject(what, obj)
		if err == nil {
			err = do()
		}
		if err != nil {
			fail(what, obj, err)
			return false
		}
		return true
	}
	if l := o.Link; l != nil {
		added.Link = &tun.Link{Index: l.Index, MTU: l.MTU, Addrs: []netip.Prefix{}}
		step("configure link", linkRef(l.Index), func() error { return k.setMTULocked(l.Index, l.MTU) })
		for _, a := range l.Addrs {
			if step("add address", a, func() error { return k.addAddrLocked(l.Index, a) }) {
				added.Link.Addrs = append(added.Link.Addrs, a)
			}
		}
		step("set up link", linkRef(l.Index), func() error { return k.setUpLocked(l.Index, true) })
	}
	added.Routes = []tun.Route{}
	for _, r := range o.Routes {
		if step("add route", r, func() error { return k.addRouteLocked(r, false) }) {
			r.Dst = r.Dst.Masked()
			added.Routes = append(added.Routes, r)
		}
	}
	added.Rules = []tun.Rule{}
	for _, r := range o.Rules {
		if step("add rule", r, func() error { return k.addRuleLocked(r) }) {
			added.Rules = append(added.Rules, r)
		}
	}
	return added, first
}

// Remove deletes o as tun.Netlink does: rules (skipping, with
// ErrAmbiguousRule, one that is there but whose delete would hit another
// rule first), routes that do not go with the link, then the link; if the
// link cannot be deleted, its routes and addresses one by one. Gone
// objects are no errors.
func (k *Kernel) Remove(o *tun.Objects) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	step := func(what string, obj any, do func() error) bool {
		err := k.inject(what, obj)
		if err == nil {
			err = do()
		}
		if err != nil && !tun.IsGone(err) {
			errs = append(errs, fmt.Errorf("%s %v: %w", what, obj, err))
			return false
		}
		return true
	}
	for i := len(o.Rules) - 1; i >= 0; i-- {
		r := o.Rules[i]
		j := slices.IndexFunc(k.rules, r.MatchesDelete)
		if j < 0 || !slices.Contains(k.rules[j:], r) {
			continue // gone already
		}
		if k.rules[j] != r {
			errs = append(errs, fmt.Errorf("delete rule %s: %w: %s", r, tun.ErrAmbiguousRule, k.rules[j]))
			continue
		}
		step("delete rule", r, func() error { return k.delRuleLocked(r) })
	}
	for i := len(o.Routes) - 1; i >= 0; i-- {
		if r := o.Routes[i]; !r.OnLink() {
			step("delete route", r, func() error { return k.delRouteLocked(r) })
		}
	}
	if l := o.Link; l != nil {
		deleted := step("delete link", linkRef(l.Index), func() error {
			if !k.removeLinkLocked(l.Index) {
				return unix.ENODEV
			}
			return nil
		})
		if !deleted {
			for i := len(o.Routes) - 1; i >= 0; i-- {
				if r := o.Routes[i]; r.OnLink() {
					step("delete route", r, func() error { return k.delRouteLocked(r) })
				}
			}
			for _, a := range l.Addrs {
				step("delete address", a, func() error { return k.delAddrLocked(l.Index, a) })
			}
		}
	}
	return errors.Join(errs...)
}

// Read reports the state of q's link, table and priorities.
func (k *Kernel) Read(q tun.Query) (*tun.State, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := &tun.State{}
	if q.LinkIndex != 0 {
		if l, ok := k.links[q.LinkIndex]; ok {
			s.Link = &tun.LinkState{Index: l.Index, Name: l.Name, MTU: l.MTU, Up: l.Up, Addrs: slices.Clone(l.Addresses)}
		}
	}
	if q.Table != 0 {
		for _, r := range k.routes {
			if r.Table == q.Table {
				s.Routes = append(s.Routes, r)
			}
		}
	}
	for r := range k.rulesLocked() {
		if slices.Contains(q.Priorities, r.Priority) {
			s.Rules = append(s.Rules, r)
		}
	}
	return s, nil
}

// rulesLocked yields the rules as a kernel dump of both families does:
// IPv4's, then IPv6's, each in the kernel's order.
func (k *Kernel) rulesLocked() iter.Seq[tun.Rule] {
	return func(yield func(tun.Rule) bool) {
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			for _, r := range k.rules {
				if r.Family == fam && !yield(r) {
					return
				}
			}
		}
	}
}

// Restore puts back what r lists, as tun.Netlink does.
func (k *Kernel) Restore(r *tun.Repair) (tun.Repair, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	done := tun.Repair{LinkIndex: r.LinkIndex}
	var errs []error
	step := func(what string, obj any, do func() error) bool {
		err := k.inject(what, obj)
		if err == nil {
			err = do()
		}
		switch {
		case err == nil:
			return true
		case errors.Is(err, unix.EEXIST):
		default:
			errs = append(errs, fmt.Errorf("%s %v: %w", what, obj, err))
		}
		return false
	}
	if r.MTU > 0 && step("set mtu of link", linkRef(r.LinkIndex), func() error { return k.setMTULocked(r.LinkIndex, r.MTU) }) {
		done.MTU = r.MTU
	}
	if r.Up && step("set up link", linkRef(r.LinkIndex), func() error { return k.setUpLocked(r.LinkIndex, true) }) {
		done.Up = true
	}
	for _, a := range r.Addrs {
		if step("restore address", a, func() error { return k.addAddrLocked(r.LinkIndex, a) }) {
			done.Addrs = append(done.Addrs, a)
		}
	}
	for _, rt := range r.Routes {
		if step("restore route", rt, func() error { return k.addRouteLocked(rt, true) }) {
			done.Routes = append(done.Routes, rt)
		}
	}
	for _, rl := range r.Rules {
		if step("restore rule", rl, func() error { return k.addRuleLocked(rl) }) {
			done.Rules = append(done.Rules, rl)
		}
	}
	return done, errors.Join(errs...)
}

// Watch registers a watch. Changes made through the Kernel interface are
// vpnd's own and are not reported; changes made through External are. As
// with tun.Netlink, a watch of a link that is already gone is gone at once.
func (k *Kernel) Watch(ctx context.Context, f tun.ChangeFilter) (gone, changed <-chan struct{}, err error) {
	w := &watch{f: f, gone: make(chan struct{}), changed: make(chan struct{}, 1)}
	k.mu.Lock()
	k.watches[w] = struct{}{}
	if _, ok := k.links[f.LinkIndex]; f.LinkIndex != 0 && !ok {
		w.isGone = true
		close(w.gone)
	}
	k.mu.Unlock()
	context.AfterFunc(ctx, func() {
		k.mu.Lock()
		delete(k.watches, w)
		k.mu.Unlock()
	})
	return w.gone, w.changed, nil
}

// Occupants lists every rule at priorities and every route in table, in
// tun.Netlink's words: a route names its link, if the link exists.
func (k *Kernel) Occupants(table int, priorities ...int) ([]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for r := range k.rulesLocked() {
		if slices.Contains(priorities, r.Priority) {
			out = append(out, "rule "+r.String())
		}
	}
	for _, r := range k.routes {
		if r.Table == table {
			s := r.String()
			if l, ok := k.links[r.LinkIndex]; ok {
				s = strings.Replace(s, fmt.Sprintf("dev #%d", r.LinkIndex), "dev "+l.Name, 1)
			}
			out = append(out, "route "+s)
		}
	}
	return out, nil
}

// HostPrefixes answers from Options.HostPrefixes.
func (k *Kernel) HostPrefixes(except string) ([]tun.HostPrefix, error) {
	if k.opt.HostPrefixes == nil {
		return nil, nil
	}
	return k.opt.HostPrefixes(except)
}

// CheckSocket checks the real fd, exactly as tun.Netlink does.
func (k *Kernel) CheckSocket(fd int) error { return tun.CheckSocket(fd) }

// MarkSocket records the mark in memory: a simulated vpnd has no privilege
// to set SO_MARK, and no VPN for the mark to bypass. The first mark of a
// socket starts from its real SO_MARK, so other bits are kept as in the
// kernel.
func (k *Kernel) MarkSocket(fd int, mark uint32) error {
	k.marksMu.Lock()
	defer k.marksMu.Unlock()
	if err := k.inject("mark socket", fd); err != nil {
		return err
	}
	id, err := socketID(fd)
	if err != nil {
		return fmt.Errorf("get SO_MARK of fd %d: %w", fd, err)
	}
	old, ok := k.marks[id]
	if !ok {
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		if err != nil {
			return fmt.Errorf("get SO_MARK of fd %d: %w", fd, err)
		}
		old = uint32(v)
	}
	k.marks[id] = old | mark
	return nil
}

// Mark returns the mark MarkSocket recorded for the socket behind fd.
func (k *Kernel) Mark(fd int) (uint32, bool) {
	id, err := socketID(fd)
	if err != nil {
		return 0, false
	}
	k.marksMu.Lock()
	defer k.marksMu.Unlock()
	m, ok := k.marks[id]
	return m, ok
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
