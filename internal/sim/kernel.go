// Package sim is vpnd's simulated kernel: an in-memory model of the links,
// addresses, routes, rules and firewall table vpnd manages, behind the same
// Kernel interface as the real one (internal/tun). It serves `vpnd --sim`,
// where vpnd runs with no privilege and changes nothing in the host's
// network configuration, and, wrapped with fault injection, the manager's
// unit tests (internal/tun/tuntest). internal/tun/tuntest runs one scenario
// table against this model and against the real kernel, so that the two
// agree wherever the manager can tell them apart.
//
// A simulated TUN is one end of a SOCK_SEQPACKET socket pair, one IP packet
// per message. The model holds the other end, like a kernel: the link lives
// until every copy of the client's end is closed, and a deleted link
// closes the model's end, so the client reads EOF. A TUN created with
// TUNOptions.VnetHdr carries a virtio_net_hdr before each packet, both
// ways, as a TUN with IFF_VNET_HDR does (vnethdr.go).
package sim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
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
	// ForeignAddrs are the addresses someone else added without vpnd's
	// flags (External.AddForeignAddress).
	ForeignAddrs []netip.Prefix
}

// Route is a route of the model, with its table.
type Route struct {
	Table int
	manager.Route
}

// String renders the route the way `ip route` would, with its table.
func (r Route) String() string { return fmt.Sprintf("%s table %d", r.Route, r.Table) }

// State is everything the model holds. Links are sorted by index; routes
// by family, table and destination; rules by family and priority, in
// insertion order within a priority (the kernel's order).
type State struct {
	Links    []Link
	Routes   []Route
	Rules    []manager.Rule
	Firewall *manager.Firewall // nil: no table
}

// Equal reports whether s and o hold the same things.
func (s State) Equal(o State) bool {
	fwEq := (s.Firewall == nil) == (o.Firewall == nil) && (s.Firewall == nil || s.Firewall.Equal(o.Firewall))
	return slices.EqualFunc(s.Links, o.Links, func(a, b Link) bool {
		return a.Name == b.Name && a.Index == b.Index && a.MTU == b.MTU && a.Up == b.Up && a.VnetHdr == b.VnetHdr &&
			slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.ForeignAddrs, b.ForeignAddrs)
	}) && slices.Equal(s.Routes, o.Routes) && slices.Equal(s.Rules, o.Rules) && fwEq
}

// Options configure a Kernel.
type Options struct {
	// Inject, if set, is asked before every call and every change the
	// Kernel makes on vpnd's behalf (creating a TUN, a read, each op of an
	// Apply, the firewall, marking a socket). A non-nil answer makes that
	// step fail with it, changing nothing; ErrLostAnswer instead lets the
	// change happen and loses the answer, as a full netlink socket does.
	// what names the step ("create tun", "read", "add route"...), obj its
	// object.
	Inject func(what string, obj any) error
	// HostPrefixes answers HostPrefixes; nil means the host has none.
	HostPrefixes func(except string) ([]manager.HostPrefix, error)
	// Packet, if set, is called with each packet the client writes into a
	// simulated TUN, with the link it came in on; what it returns is
	// written back to the client, one packet per message. Packets are
	// IP packets: on a link with VnetHdr the model strips and adds the
	// header.
	Packet func(l Link, pkt []byte) [][]byte
}

// ErrLostAnswer, returned by Options.Inject, lets a change happen but
// loses its answer.
var ErrLostAnswer = fmt.Errorf("netlink answers lost: %w", manager.ErrTransient)

// Kernel is the in-memory kernel. All methods are safe for concurrent use.
type Kernel struct {
	opt Options

	mu        sync.Mutex
	nextIndex int
	links     map[int]*link
	routes    map[routeID]Route
	rules     []manager.Rule // kernel order
	fw        *manager.Firewall
	watches   map[chan struct{}]manager.Places
	pending   manager.Parts
	readers   sync.WaitGroup

	// marksMu guards marks apart from the model: protect never waits for
	// a batch, as with the real kernel.
	marksMu sync.Mutex
	marks   map[sockID]uint32
}

// routeID is a route's identity in the model: its table and its identity
// there. The model keeps routes by it, so that a VPN of 10,000 routes is
// not quadratic.
type routeID struct {
	table int
	key   manager.RouteKey
}

func idOf(r Route) routeID {
	r.Metric = metric(r.Route)
	return routeID{r.Table, r.Key()}
}

// deleteRoutesLocked deletes the routes del selects and says how many.
func (k *Kernel) deleteRoutesLocked(del func(Route) bool) int {
	n := 0
	for id, r := range k.routes {
		if del(r) {
			delete(k.routes, id)
			n++
		}
	}
	return n
}

type link struct {
	Link
	held *os.File // the model's end of the socket pair
}

type sockID struct{ dev, ino uint64 }

// New returns an empty model. Like a fresh network namespace it has a
// loopback link, index 1, which is not in Snapshot.
func New(opt Options) *Kernel {
	return &Kernel{
		opt:       opt,
		nextIndex: 2,
		links:     map[int]*link{},
		routes:    map[routeID]Route{},
		marks:     map[sockID]uint32{},
		watches:   map[chan struct{}]manager.Places{},
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
		c.Addresses = sortedPrefixes(l.Addresses)
		c.ForeignAddrs = sortedPrefixes(l.ForeignAddrs)
		s.Links = append(s.Links, c)
	}
	slices.SortFunc(s.Links, func(a, b Link) int { return a.Index - b.Index })
	for _, r := range k.routes {
		s.Routes = append(s.Routes, r)
	}
	SortRoutes(s.Routes)
	s.Rules = slices.Clone(k.rules)
	slices.SortStableFunc(s.Rules, func(a, b manager.Rule) int {
		if a.Family != b.Family {
			return a.Family - b.Family
		}
		return a.Priority - b.Priority
	})
	if k.fw != nil {
		fw := *k.fw
		s.Firewall = &fw
	}
	return s
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// SortRoutes sorts routes by family, table, destination and bits: the
// order Snapshot uses, for comparing with routes read from a kernel.
func SortRoutes(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int {
		fa, fb := a.Dst.Addr().Is4(), b.Dst.Addr().Is4()
		if fa != fb {
			if fa {
				return -1
			}
			return 1
		}
		if a.Table != b.Table {
			return a.Table - b.Table
		}
		if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
			return c
		}
		if a.Dst.Bits() != b.Dst.Bits() {
			return a.Dst.Bits() - b.Dst.Bits()
		}
		return int(int64(a.Metric) - int64(b.Metric))
	})
}

// Close deletes every link and waits until the TUN readers have exited.
// Files handed out stay open (they read EOF).
func (k *Kernel) Close() error {
	k.mu.Lock()
	for index := range k.links {
		k.removeLinkLocked(index, false)
	}
	k.mu.Unlock()
	k.readers.Wait()
	return nil
}

// CreateTUN makes a simulated TUN link and returns the client's end of its
// socket pair, in the blocking mode asked for, close-on-exec. With
// opt.VnetHdr every message carries a virtio_net_hdr before the packet.
func (k *Kernel) CreateTUN(name string, opt manager.TUNOptions) (*os.File, int, error) {
	if err := validateName(name); err != nil {
		return nil, 0, fmt.Errorf("create tun %q: %w", name, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.inject("create tun", name); err != nil {
		return nil, 0, fmt.Errorf("create tun %s: %w", name, err)
	}
	if name == "lo" {
		return nil, 0, fmt.Errorf("create tun %s: %w: a device link (index 1) has this name", name, manager.ErrLinkExists)
	}
	for _, l := range k.links {
		if l.Name == name {
			return nil, 0, fmt.Errorf("create tun %s: %w: a tun link (index %d) has this name", name, manager.ErrLinkExists, l.Index)
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
				k.removeLinkLocked(l.Index, true)
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
		n, err := unix.Poll(p, 0)
		for err == unix.EINTR { // a signal, not an answer
			n, err = unix.Poll(p, 0)
		}
		if err == nil && n == 1 {
			hup = p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0
		} else if err == nil {
			hup = false
		}
	})
	return hup
}

// validateName refuses what tun.CreateTUN refuses (tun.ValidateName):
// what the kernel's dev_valid_name refuses (empty, longer than
// IFNAMSIZ-1, "." and "..", '/', ':' and white space), control
// characters, and '%', which the kernel would take for a template.
func validateName(name string) error {
	bad := name == "" || len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/:%")
	for _, r := range name {
		bad = bad || unicode.IsSpace(r) || r < 0x20 || r == 0x7f
	}
	if bad {
		return fmt.Errorf("invalid interface name %q", name)
	}
	return nil
}

// removeLinkLocked deletes a link as the kernel does: its addresses and
// every route through it go too; rules stay. announce says that vpnd did
// not ask for it. k.mu must be held.
func (k *Kernel) removeLinkLocked(index int, announce bool) bool {
	l, ok := k.links[index]
	if !ok {
		return false
	}
	delete(k.links, index)
	k.deleteRoutesLocked(func(r Route) bool { return r.Kind == manager.Unicast && r.LinkIndex == index })
	l.held.Close() // the client reads EOF; the reader exits
	if announce {
		k.announceLocked(manager.PartLinks|manager.PartRoutes, nil)
	}
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

// The model's single steps, each as the kernel would answer it.

// ipv6MinMTU is IPv6's minimum MTU: below it the kernel takes IPv6 off a
// link.
const ipv6MinMTU = 1280

// setMTULocked sets a link's MTU, and returns the parts of vpnd's places
// it changed besides, which the kernel announces whoever asked for the
// change: an MTU below 1280 takes IPv6 off the link, with its addresses
// and the routes through it; raising it again brings IPv6 back with the
// kernel's defaults, and on a link that is up with a link-local address
// of the kernel's own, which lacks vpnd's flags.
func (k *Kernel) setMTULocked(index, mtu int) (manager.Parts, error) {
	l, err := k.linkLocked(index)
	if err == nil && (mtu < 68 || mtu > 65535) {
		err = unix.EINVAL
	}
	if err != nil {
		return 0, err
	}
	var side manager.Parts
	switch {
	case mtu < ipv6MinMTU && l.MTU >= ipv6MinMTU:
		side = k.dropIPv6Locked(l)
	case mtu >= ipv6MinMTU && l.MTU < ipv6MinMTU && l.Up:
		l.ForeignAddrs = append(l.ForeignAddrs, linkLocal(index))
		side = manager.PartLinks
	}
	l.MTU = mtu
	return side, nil
}

// linkLocal is the link-local address the model's kernel makes up for
// link index.
func linkLocal(index int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfe, 0x80, 14: byte(index >> 8), 15: byte(index)}), 64)
}

// dropIPv6Locked takes IPv6 off a link: its addresses and the routes
// through it. It returns the parts that changed: the link's if it had
// IPv6 addresses, the routes' if IPv6 routes went (the kernel announces
// those, unlike IPv4 routes that go with their link).
func (k *Kernel) dropIPv6Locked(l *link) manager.Parts {
	var side manager.Parts
	if k.deleteRoutesLocked(func(r Route) bool {
		return r.Kind == manager.Unicast && r.LinkIndex == l.Index && r.Dst.Addr().Is6()
	}) > 0 {
		side |= manager.PartRoutes
	}
	is6 := func(p netip.Prefix) bool { return p.Addr().Is6() }
	if slices.ContainsFunc(l.Addresses, is6) || slices.ContainsFunc(l.ForeignAddrs, is6) {
		side |= manager.PartLinks
	}
	l.Addresses = slices.DeleteFunc(l.Addresses, is6)
	l.ForeignAddrs = slices.DeleteFunc(l.ForeignAddrs, is6)
	return side
}

// setUpLocked sets a link up or down, and returns the parts of vpnd's
// places it changed besides, as setMTULocked does.
func (k *Kernel) setUpLocked(index int, up bool) (manager.Parts, error) {
	l, err := k.linkLocked(index)
	if err != nil {
		return 0, err
	}
	var side manager.Parts
	if l.Up && !up {
		// A link set down loses its routes, and its IPv6 addresses
		// (keep_addr_on_down=0).
		side = k.dropIPv6Locked(l)
		k.deleteRoutesLocked(func(r Route) bool { return r.Kind == manager.Unicast && r.LinkIndex == index })
	}
	l.Up = up
	return side, nil
}

func (k *Kernel) addAddrLocked(index int, p netip.Prefix, foreign bool) error {
	l, err := k.linkLocked(index)
	if err != nil {
		return err
	}
	if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return unix.EINVAL
	}
	if p.Addr().Is6() && l.MTU < ipv6MinMTU {
		return unix.EINVAL // no IPv6 on the link
	}
	clash := func(a netip.Prefix) bool { return sameAddress(a, p) }
	if slices.ContainsFunc(l.Addresses, clash) || slices.ContainsFunc(l.ForeignAddrs, clash) {
		return unix.EEXIST
	}
	if foreign {
		l.ForeignAddrs = append(l.ForeignAddrs, p)
	} else {
		l.Addresses = append(l.Addresses, p)
	}
	return nil
}

func (k *Kernel) delAddrLocked(index int, p netip.Prefix) error {
	l, err := k.linkLocked(index)
	if err != nil {
		return err
	}
	if i := slices.Index(l.Addresses, p); i >= 0 {
		l.Addresses = slices.Delete(l.Addresses, i, i+1)
	} else if i := slices.Index(l.ForeignAddrs, p); i >= 0 {
		l.ForeignAddrs = slices.Delete(l.ForeignAddrs, i, i+1)
	} else {
		return unix.EADDRNOTAVAIL
	}
	is4 := func(a netip.Prefix) bool { return a.Addr().Is4() }
	if p.Addr().Is4() && !slices.ContainsFunc(l.Addresses, is4) && !slices.ContainsFunc(l.ForeignAddrs, is4) {
		// With its last IPv4 address gone the kernel disables IPv4 on the
		// link and flushes every IPv4 route through it, in every table.
		k.deleteRoutesLocked(func(r Route) bool {
			return r.Kind == manager.Unicast && r.LinkIndex == index && r.Dst.Addr().Is4()
		})
	}
	return nil
}

// putRouteLocked adds r as the kernel does: a second route with the same
// identity in the same table is EEXIST (unless replace, which replaces
// it); a missing link ENODEV; a gateway that is a local address EINVAL; a
// link that is down ENETDOWN. vpnd's gateway routes are "onlink": any
// other gateway is taken to be on the link.
func (k *Kernel) putRouteLocked(r Route, replace bool) error {
	if !r.Dst.IsValid() || r.Table <= 0 {
		return unix.EINVAL
	}
	r.Dst = r.Dst.Masked()
	r.Metric = metric(r.Route)
	if r.Kind == manager.Unicast {
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
	id := idOf(r)
	if _, ok := k.routes[id]; ok && !replace {
		return unix.EEXIST
	}
	k.routes[id] = r
	return nil
}

// localLocked reports whether a is an address of one of the links.
func (k *Kernel) localLocked(a netip.Addr) bool {
	for _, l := range k.links {
		is := func(p netip.Prefix) bool { return p.Addr() == a }
		if slices.ContainsFunc(l.Addresses, is) || slices.ContainsFunc(l.ForeignAddrs, is) {
			return true
		}
	}
	return false
}

// ipv6DefaultMetric is the metric of an IPv6 route added without one.
const ipv6DefaultMetric = 1024

// metric is r's metric as the model keeps it: an IPv6 route's default
// metric is 0, as Read reports it and vpnd asks for it.
func metric(r manager.Route) uint32 {
	if r.Dst.Addr().Is6() && r.Metric == ipv6DefaultMetric {
		return 0
	}
	return r.Metric
}

// delRouteLocked deletes the route with r's identity in r's table,
// whatever it is. Where there is none, an IPv4 delete at metric 0 is
// the kernel's wildcard for the metric (a delete without RTA_PRIORITY):
// it deletes the route of the lowest metric to the destination.
func (k *Kernel) delRouteLocked(r Route) error {
	r.Metric = metric(r.Route)
	id := idOf(r)
	if _, ok := k.routes[id]; !ok && r.Dst.Addr().Is4() && r.Metric == 0 {
		var best *routeID
		for oid, o := range k.routes {
			if o.Table == r.Table && o.Dst == r.Dst.Masked() && o.Tos == r.Tos && (best == nil || o.Metric < k.routes[*best].Metric) {
				b := oid
				best = &b
			}
		}
		if best != nil {
			id = *best
		}
	}
	if _, ok := k.routes[id]; !ok {
		return unix.ESRCH
	}
	delete(k.routes, id)
	return nil
}

// Rules. The model keeps what else a rule matches on (Rule.Selectors,
// which on a host is the kernel's own encoding) as `ip rule` words:
// "from 10.0.0.0/8 iif lo", "not"... and looks rules up as the kernel
// does (fib_rules.c): an add is refused (EEXIST) when a rule equals it
// in everything but a source, destination or TOS that the add does not
// give, and an inverted match; a delete hits the first rule, in the
// kernel's order, that has everything the delete gives.

// selectors parses `ip rule` words into selector and value. An inverted
// match ("not") is left out: no lookup of the kernel compares it.
func selectors(s string) map[string]string {
	f := strings.Fields(s)
	out := map[string]string{}
	for i := 0; i < len(f); i++ {
		switch {
		case f[i] == "not":
		case f[i] == "l3mdev" || i+1 == len(f):
			out[f[i]] = ""
		default:
			out[f[i]] = f[i+1]
			i++
		}
	}
	return out
}

// wildcardOnAdd are the selectors that an add leaving them out does not
// compare (the family's compare function of fib_rules_ops).
var wildcardOnAdd = map[string]bool{"from": true, "to": true, "tos": true, "dsfield": true}

// exists reports whether the kernel refuses to add r because of o.
func exists(r, o manager.Rule) bool {
	if o.Family != r.Family || o.Priority != r.Priority || o.Action != r.Action || o.Table != r.Table ||
		o.Mark != r.Mark || o.Mask != r.Mask || o.UIDStart != r.UIDStart || o.UIDEnd != r.UIDEnd {
		return false
	}
	rs, have := selectors(r.Selectors), selectors(o.Selectors)
	for key, v := range rs {
		if ov, ok := have[key]; !ok || ov != v {
			return false
		}
	}
	for key := range have {
		if _, ok := rs[key]; !ok && !wildcardOnAdd[key] {
			return false
		}
	}
	return true
}

func (k *Kernel) addRuleLocked(r manager.Rule) error {
	if r.Family != unix.AF_INET && r.Family != unix.AF_INET6 || r.Priority <= 0 || r.UIDStart > r.UIDEnd {
		return unix.EINVAL
	}
	if slices.ContainsFunc(k.rules, func(o manager.Rule) bool { return exists(r, o) }) {
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

// matchesDelete reports whether the kernel, asked to delete r, could
// delete k: what the request leaves out is a wildcard. Family, priority,
// action and uid range always count (vpnd always gives them); the table,
// the mark and the mask count where not 0; every selector given counts.
func matchesDelete(r, k manager.Rule) bool {
	if k.Family != r.Family || k.Priority != r.Priority || k.Action != r.Action ||
		r.Table != 0 && k.Table != r.Table || r.Mark != 0 && k.Mark != r.Mark || r.Mask != 0 && k.Mask != r.Mask ||
		k.UIDStart != r.UIDStart || k.UIDEnd != r.UIDEnd {
		return false
	}
	ks := selectors(k.Selectors)
	for key, v := range selectors(r.Selectors) {
		if kv, ok := ks[key]; !ok || kv != v {
			return false
		}
	}
	return true
}

// delRuleLocked deletes the kernel's first match for a delete of r, which
// may be another rule.
func (k *Kernel) delRuleLocked(r manager.Rule) error {
	i := slices.IndexFunc(k.rules, func(o manager.Rule) bool { return matchesDelete(r, o) })
	if i < 0 {
		return unix.ENOENT
	}
	k.rules = slices.Delete(k.rules, i, i+1)
	return nil
}

// isGone reports whether a delete's error says the object is absent.
func isGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// Apply carries out ops as tun.Netlink does: each in turn, a failure does
// not stop the others, a delete of something absent is no error.
func (k *Kernel) Apply(ops []manager.Op) ([]error, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	results := make([]error, len(ops))
	var lost error
	for i, op := range ops {
		err := k.inject(opName(op), op)
		if errors.Is(err, ErrLostAnswer) {
			lost, err = err, nil
		}
		if err == nil {
			err = k.applyLocked(op)
		}
		if err != nil && isDelete(op.Kind) && isGone(err) {
			err = nil
		}
		if err != nil {
			results[i] = err
		}
	}
	if lost != nil {
		return results, lost
	}
	return results, nil
}

func (k *Kernel) applyLocked(op manager.Op) error {
	switch op.Kind {
	case manager.SetLink:
		// What an MTU takes along is announced, as the kernel announces
		// it whoever asked: vpnd cannot tell it from its own request.
		side, err := k.setMTULocked(op.Link.Index, op.Link.MTU)
		k.announceLocked(side, nil)
		return err
	case manager.LinkUp:
		_, err := k.setUpLocked(op.Link.Index, true)
		return err
	case manager.AddAddr:
		return k.addAddrLocked(op.Link.Index, op.Addr, false)
	case manager.DelAddr:
		return k.delAddrLocked(op.Link.Index, op.Addr)
	case manager.PutRoute:
		r := op.Route
		r.Foreign = false
		return k.putRouteLocked(Route{Table: op.Table, Route: r}, true)
	case manager.DelRoute:
		return k.delRouteLocked(Route{Table: op.Table, Route: op.Route})
	case manager.AddRule:
		return k.addRuleLocked(op.Rule)
	case manager.DelRule:
		return k.delRuleLocked(op.Rule)
	case manager.DelLink:
		if !k.removeLinkLocked(op.Link.Index, false) {
			return unix.ENODEV
		}
		return nil
	}
	return unix.EINVAL
}

func isDelete(kind manager.OpKind) bool {
	return kind == manager.DelAddr || kind == manager.DelRoute || kind == manager.DelRule || kind == manager.DelLink
}

// opName is the step name Inject gets for op: "add route", "delete
// rule"...
func opName(op manager.Op) string {
	switch op.Kind {
	case manager.SetLink:
		return "configure link"
	case manager.LinkUp:
		return "set up link"
	case manager.AddAddr:
		return "add address"
	case manager.DelAddr:
		return "delete address"
	case manager.PutRoute:
		return "add route"
	case manager.DelRoute:
		return "delete route"
	case manager.AddRule:
		return "add rule"
	case manager.DelRule:
		return "delete rule"
	case manager.DelLink:
		return "delete link"
	}
	return "op"
}

// Read reports what q asks for, as a kernel dump would.
func (k *Kernel) Read(q manager.Query) (*manager.Have, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.inject("read", q.What); err != nil {
		return nil, err
	}
	h := &manager.Have{}
	if q.What&manager.PartLinks != 0 {
		for _, l := range k.links {
			if l.Name != q.Places.IfName && !slices.Contains(q.Links, l.Index) {
				continue
			}
			s := manager.LinkState{Index: l.Index, Name: l.Name, TUN: true, MTU: l.MTU, Up: l.Up}
			for _, p := range l.Addresses {
				s.Addrs = append(s.Addrs, manager.Addr{Prefix: p})
			}
			for _, p := range l.ForeignAddrs {
				s.Addrs = append(s.Addrs, manager.Addr{Prefix: p, Foreign: true})
			}
			slices.SortFunc(s.Addrs, func(a, b manager.Addr) int {
				if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
					return c
				}
				return a.Prefix.Bits() - b.Prefix.Bits()
			})
			h.Links = append(h.Links, s)
		}
		slices.SortFunc(h.Links, func(a, b manager.LinkState) int { return a.Index - b.Index })
	}
	if q.What&manager.PartRoutes != 0 {
		h.LinkNames = map[int]string{}
		for _, r := range k.routes {
			if r.Table == q.Places.Table {
				h.Routes = append(h.Routes, r.Route)
				if l, ok := k.links[r.LinkIndex]; ok {
					h.LinkNames[r.LinkIndex] = l.Name
				} else if r.LinkIndex == 1 {
					h.LinkNames[1] = "lo"
				}
			}
		}
		// A dump has an order (IPv4's, then IPv6's); the map has none.
		slices.SortFunc(h.Routes, func(a, b manager.Route) int {
			return cmp.Or(a.Dst.Addr().Compare(b.Dst.Addr()), a.Dst.Bits()-b.Dst.Bits(),
				cmp.Compare(a.Tos, b.Tos), cmp.Compare(a.Metric, b.Metric))
		})
	}
	if q.What&manager.PartRules != 0 {
		// A dump of both families: IPv4's, then IPv6's, each in the
		// kernel's order.
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			for _, r := range k.rules {
				if r.Family == fam && slices.Contains(q.Places.Priorities, r.Priority) {
					h.Rules = append(h.Rules, r)
				}
			}
		}
	}
	return h, nil
}

// FirewallHolds reports whether the model's firewall table is exactly f.
func (k *Kernel) FirewallHolds(f manager.Firewall) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.inject("read firewall", nil); err != nil {
		return false, err
	}
	if k.fw == nil {
		return f.Empty(), nil
	}
	return !f.Empty() && k.fw.Equal(&f), nil
}

// SetFirewall makes the model's firewall table f; the zero Firewall
// removes it.
func (k *Kernel) SetFirewall(f manager.Firewall) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	err := k.inject("set firewall", f)
	if err != nil && !errors.Is(err, ErrLostAnswer) {
		return err
	}
	if f.Empty() {
		k.fw = nil
	} else {
		k.fw = &f
	}
	return err
}

// Watch registers a watch of p: changes made through External in p are
// announced; vpnd's own (through the Kernel interface) are not, but for
// what an MTU takes along, which vpnd cannot tell from its request.
func (k *Kernel) Watch(ctx context.Context, p manager.Places) (<-chan struct{}, error) {
	if err := k.inject("watch", nil); err != nil {
		return nil, err
	}
	ch := make(chan struct{}, 1)
	k.mu.Lock()
	k.watches[ch] = p
	k.mu.Unlock()
	context.AfterFunc(ctx, func() {
		k.mu.Lock()
		delete(k.watches, ch)
		k.mu.Unlock()
	})
	return ch, nil
}

// Sync returns what was announced since the last Sync.
func (k *Kernel) Sync() manager.Parts {
	k.mu.Lock()
	defer k.mu.Unlock()
	p := k.pending
	k.pending = 0
	return p
}

// announceLocked records a change behind vpnd's back to parts p, and
// wakes the watches. in says whether the change was in a watch's places
// (nil: in any); one in none is not announced, as the kernel's monitor
// hears only of changes in vpnd's table and at its priorities.
func (k *Kernel) announceLocked(p manager.Parts, in func(manager.Places) bool) {
	if p == 0 {
		return
	}
	if in != nil && len(k.watches) > 0 {
		found := false
		for _, w := range k.watches {
			found = found || in(w)
		}
		if !found {
			return
		}
	}
	k.pending |= p
	for ch := range k.watches {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// HostPrefixes answers from Options.HostPrefixes.
func (k *Kernel) HostPrefixes(except string) ([]manager.HostPrefix, error) {
	if k.opt.HostPrefixes == nil {
		return nil, nil
	}
	return k.opt.HostPrefixes(except)
}

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
