package tun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
)

// Netlink implements the manager's Kernel interface with rtnetlink,
// acting on the network namespace of the calling process. It holds, for
// vpnd's whole life, a vishvananda/netlink handle for typed gets and dumps,
// one socket for batches of changes (requests.go), and one that listens to
// the kernel's announcements (monitor.go). It keeps no copy of the
// kernel's state: the reconciler does.
type Netlink struct {
	log *zap.Logger
	h   *netlink.Handle
	req *requests
	mon *monitor
	fw  Firewall
	// ipv6 says whether the host has IPv6, so that a link's IPv6 address
	// generation may be turned off.
	ipv6 bool
}

var _ manager.Kernel = (*Netlink)(nil)

// handleTimeout bounds every request of the typed calls.
const handleTimeout = answerTimeout

// Firewall is vpnd's firewall table (internal/firewall), in the manager's
// terms.
type Firewall interface {
	Holds(manager.Firewall) (bool, error)
	Set(manager.Firewall) error
	// Watch signals changes to the table until ctx ends.
	Watch(ctx context.Context) (<-chan struct{}, error)
	Close() error
}

// New opens vpnd's netlink sockets in the current network namespace. vpnd
// never switches namespaces, so that is the namespace vpnd was started in.
// fw is vpnd's firewall table; nil means none (then only an empty firewall
// can be held).
func New(log *zap.Logger, fw Firewall) (*Netlink, error) {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("tun")
	h, err := openHandle()
	if err != nil {
		return nil, err
	}
	req, err := openRequests()
	if err != nil {
		h.Close()
		return nil, err
	}
	n := &Netlink{log: log, h: h, req: req, fw: fw}
	_, err = os.Stat("/proc/sys/net/ipv6")
	n.ipv6 = err == nil
	n.mon = newMonitor(log.Named("monitor"), req.pid)
	return n, nil
}

func openHandle() (*netlink.Handle, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	if err := h.SetSocketTimeout(handleTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	// Strict checking makes the kernel filter dumps (a route dump reads one
	// table) instead of sending everything.
	if err := h.SetStrictCheck(true); err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	return h, nil
}

// Close stops the monitor and closes the sockets. Call it only once
// nothing uses the Netlink any more (the manager's Shutdown has returned).
func (n *Netlink) Close() error {
	n.mon.close()
	n.req.close()
	n.h.Close()
	if n.fw != nil {
		return n.fw.Close()
	}
	return nil
}

// CreateTUN creates a non-persistent TUN device named name and returns its
// only fd and its interface index: one TUNSETIFF and one SIOCGIFINDEX.
//
// IFF_TUN_EXCL makes the kernel refuse a name that already exists instead of
// attaching to it, so vpnd can never configure or hand out somebody else's
// device. IFF_NO_PI: packets carry no packet-info header. With
// opt.VnetHdr, IFF_VNET_HDR too: each packet is led by a virtio_net_hdr,
// and the kernel's defaults stay (a 10-byte header, every offload off until
// the fd's owner asks with TUNSETOFFLOAD). The fd is close-on-exec, and
// non-blocking unless opt.Blocking. The device lives exactly as long as
// some copy of the fd is open.
func (n *Netlink) CreateTUN(name string, opt manager.TUNOptions) (*os.File, int, error) {
	if err := ValidateName(name); err != nil {
		return nil, 0, fmt.Errorf("create tun %q: %w", name, err)
	}
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if !opt.Blocking {
		flags |= unix.O_NONBLOCK
	}
	tunFlags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_TUN_EXCL)
	if opt.VnetHdr {
		tunFlags |= unix.IFF_VNET_HDR
	}
	fd, err := unix.Open("/dev/net/tun", flags, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("create tun %s: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(tunFlags)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return nil, 0, fmt.Errorf("create tun %s: %w: %s", name, manager.ErrLinkExists, n.describeLinkNamed(name))
		}
		return nil, 0, fmt.Errorf("create tun %s: TUNSETIFF: %w", name, err)
	}
	// From here on, closing fd is the rollback: the device is not
	// persistent, so the kernel removes it with its last fd.
	idx, err := unix.NewIfreq(name)
	if err == nil {
		err = unix.IoctlIfreq(n.req.s.GetFd(), unix.SIOCGIFINDEX, idx)
	}
	if err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("create tun %s: SIOCGIFINDEX: %w", name, err)
	}
	index := int(int32(idx.Uint32()))
	if index <= 0 {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("create tun %s: kernel reported interface index %d", name, index)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), index, nil
}

// describeLinkNamed says what holds an interface name, for an error.
func (n *Netlink) describeLinkNamed(name string) string {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return "the kernel refused the name"
	}
	return fmt.Sprintf("a %s link (index %d) has this name", linkKind(l), l.Attrs().Index)
}

// linkKind is "tun" for a TUN device, "tap" for the TUN driver's TAP
// devices, and the kind the kernel reports otherwise ("veth"...).
func linkKind(l netlink.Link) string {
	if t, ok := l.(*netlink.Tuntap); ok {
		if t.Mode == netlink.TUNTAP_MODE_TAP {
			return "tap"
		}
		return "tun"
	}
	if k := l.Type(); k != "" && k != "device" {
		return k
	}
	return "device"
}

// retryDump calls dump until it completes without the kernel flagging it
// interrupted, at most dumpAttempts times.
func retryDump(what string, dump func() error) error {
	for range dumpAttempts {
		err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			if err != nil {
				return fmt.Errorf("%s: %w", what, handleError(err))
			}
			return nil
		}
	}
	return fmt.Errorf("%s: dump interrupted %d times (the kernel's state kept changing): %w", what, dumpAttempts, manager.ErrTransient)
}

// handleError marks a timeout of the typed calls as transient.
func handleError(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) && transientErrno(errno) {
		return fmt.Errorf("%w: %w", manager.ErrTransient, err)
	}
	return err
}

// Read reports what q asks for: the links with the indexes q.Links and the
// link named q.Places.IfName, with their addresses; every route in the
// table; every rule at the priorities.
func (n *Netlink) Read(q manager.Query) (*manager.Have, error) {
	have := &manager.Have{}
	if q.What&manager.PartLinks != 0 {
		if err := n.readLinks(q, have); err != nil {
			return nil, err
		}
	}
	if q.What&manager.PartRoutes != 0 {
		var routes []netlink.Route
		err := retryDump(fmt.Sprintf("read routes in table %d", q.Places.Table), func() (err error) {
			routes, err = n.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: q.Places.Table}, netlink.RT_FILTER_TABLE)
			return err
		})
		if err != nil {
			return nil, err
		}
		have.LinkNames = map[int]string{}
		for _, k := range routes {
			if r, ok := fromRoute(k); ok && k.Table == q.Places.Table {
				have.Routes = append(have.Routes, r)
				if r.LinkIndex != 0 {
					have.LinkNames[r.LinkIndex] = ""
				}
			}
		}
		for index := range have.LinkNames {
			if l, err := n.h.LinkByIndex(index); err == nil {
				have.LinkNames[index] = l.Attrs().Name
			}
		}
	}
	if q.What&manager.PartRules != 0 {
		rules, err := n.dumpRules()
		if err != nil {
			return nil, fmt.Errorf("read rules: %w", err)
		}
		for _, r := range rules {
			if slices.Contains(q.Places.Priorities, r.Priority) {
				have.Rules = append(have.Rules, r)
			}
		}
	}
	return have, nil
}

func (n *Netlink) readLinks(q manager.Query, have *manager.Have) (err error) {
	n.mon.beginRead()
	defer func() {
		n.mon.endRead(have.Links, err == nil)
	}()
	byIndex := map[int]*manager.LinkState{}
	add := func(l netlink.Link) {
		a := l.Attrs()
		if _, ok := byIndex[a.Index]; ok {
			return
		}
		have.Links = append(have.Links, manager.LinkState{Index: a.Index, Name: a.Name, TUN: linkKind(l) == "tun",
			MTU: a.MTU, Up: a.Flags&net.FlagUp != 0})
		byIndex[a.Index] = nil
	}
	for _, index := range q.Links {
		l, err := n.h.LinkByIndex(index)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound) || errors.Is(err, unix.ENODEV):
			continue
		case err != nil:
			return fmt.Errorf("read link %d: %w", index, handleError(err))
		}
		add(l)
	}
	named := slices.ContainsFunc(have.Links, func(l manager.LinkState) bool { return l.Name == q.Places.IfName })
	if name := q.Places.IfName; name != "" && !named {
		l, err := n.h.LinkByName(name)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound) || errors.Is(err, unix.ENODEV):
		case err != nil:
			return fmt.Errorf("read link %s: %w", name, handleError(err))
		default:
			add(l)
		}
	}
	if len(have.Links) == 0 {
		return nil
	}
	for i := range have.Links {
		byIndex[have.Links[i].Index] = &have.Links[i]
	}
	var addrs []netlink.Addr
	err = retryDump("read addresses", func() (err error) {
		addrs, err = n.h.AddrList(nil, netlink.FAMILY_ALL)
		return err
	})
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if l := byIndex[a.LinkIndex]; l != nil {
			if ma, ok := fromAddr(a); ok {
				l.Addrs = append(l.Addrs, ma)
			}
		}
	}
	for i := range have.Links {
		sortAddrs(have.Links[i].Addrs)
	}
	return nil
}

func sortAddrs(as []manager.Addr) {
	slices.SortFunc(as, func(a, b manager.Addr) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
}

// dumpRules dumps the rules of both families, in the kernel's order. It
// is not vishvananda/netlink's RuleList, which drops a rule's action:
// vpnd must tell its lookup rules from lockdown's unreachable ones.
func (n *Netlink) dumpRules() ([]manager.Rule, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETRULE, unix.NLM_F_DUMP)
	req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_UNSPEC}})
	var rules []manager.Rule
	err := n.req.dump(req, func() { rules = rules[:0] }, func(m syscallMessage) {
		if m.Header.Type != unix.RTM_NEWRULE {
			return
		}
		if r, ok := parseRule(m); ok && (r.Family == unix.AF_INET || r.Family == unix.AF_INET6) {
			rules = append(rules, r)
		}
	})
	return rules, err
}

// Apply carries out ops in order, as few sendmsg calls as the batch needs
// (usually one). Each SetLink also turns off the link's IPv6 address
// generation, a request of its own whose failure is only logged (a host
// without IPv6 cannot, and need not).
//
// A teardown of a VPN with many routes that do not go with its link (throw
// and unreachable routes) deletes the link on a socket of its own, beside
// the route deletes, once the rules are gone: see parallelRemoveRoutes.
func (n *Netlink) Apply(ops []manager.Op) ([]error, error) {
	n.mon.expect(ops)
	results := make([]error, len(ops))
	linkDels, routeDels := 0, 0
	for _, op := range ops {
		switch op.Kind {
		case manager.DelLink:
			linkDels++
		case manager.DelRoute:
			routeDels++
		}
	}
	if linkDels == 0 || routeDels < parallelRemoveRoutes {
		return results, n.apply(ops, results)
	}
	// The rules go first, on their own, so that the table is out of use
	// before its link goes; then the links beside everything else.
	lastRule := -1
	for i, op := range ops {
		if op.Kind == manager.DelRule || op.Kind == manager.AddRule {
			lastRule = i
		}
	}
	if err := n.apply(ops[:lastRule+1], results[:lastRule+1]); err != nil {
		return results, err
	}
	rest := ops[lastRule+1:]
	var links, others []int
	for i, op := range rest {
		if op.Kind == manager.DelLink {
			links = append(links, lastRule+1+i)
		} else {
			others = append(others, lastRule+1+i)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, i := range links {
			results[i] = n.deleteLinkAside(ops[i].Link.Index)
		}
	}()
	sub := make([]manager.Op, len(others))
	subResults := make([]error, len(others))
	for j, i := range others {
		sub[j] = ops[i]
	}
	err := n.apply(sub, subResults)
	<-done
	for j, i := range others {
		results[i] = subResults[j]
	}
	return results, err
}

// parallelRemoveRoutes is the number of route deletes from which Apply
// deletes a link on a socket of its own, beside them. A link's
// unregistration holds the kernel's RTNL lock only in part: the rest (tens
// of milliseconds of waiting for RCU grace periods and references) blocks
// only the request that asked for it, and the next request in the same
// batch. On another socket the route deletes go on meanwhile: 9,999 throw
// routes and the link then take the longer of the two, not their sum. For
// a few routes a second socket costs more than it saves.
const parallelRemoveRoutes = 256

// deleteLinkAside deletes a link with a request socket of its own.
func (n *Netlink) deleteLinkAside(index int) error {
	err := netlink.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}})
	var errno unix.Errno
	if errors.As(err, &errno) && isGone(errno) {
		return nil
	}
	if err != nil {
		return &nlError{errno: errno, msg: err.Error()}
	}
	return nil
}

// apply sends ops as one batch and records each op's result.
func (n *Netlink) apply(ops []manager.Op, results []error) error {
	if len(ops) == 0 {
		return nil
	}
	msgs := make([][]byte, 0, len(ops)+1)
	owner := make([]int, 0, len(ops)+1) // the op of each message; -1: optional
	for i, op := range ops {
		msgs = append(msgs, n.message(op))
		owner = append(owner, i)
		if op.Kind == manager.SetLink && n.ipv6 {
			msgs = append(msgs, linkIPv6Settings(op.Link.Index))
			owner = append(owner, -1)
		}
	}
	got, err := n.req.exchange(msgs)
	for j, e := range got {
		i := owner[j]
		switch {
		case e == nil:
		case i < 0:
			n.log.Debug("optional link setting refused", zap.Error(e))
		case isDelete(ops[i].Kind) && isGone(e):
			// Gone already: what a delete wants.
		default:
			results[i] = e
		}
	}
	return err
}

func (n *Netlink) message(op manager.Op) []byte {
	switch op.Kind {
	case manager.SetLink:
		return linkSettings(op.Link.Index, op.Link.MTU)
	case manager.LinkUp:
		return linkUp(op.Link.Index)
	case manager.AddAddr:
		return addr(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, op.Link.Index, op.Addr)
	case manager.DelAddr:
		return addr(unix.RTM_DELADDR, 0, op.Link.Index, op.Addr)
	case manager.PutRoute:
		return putRoute(op.Table, op.Route)
	case manager.DelRoute:
		return delRoute(op.Table, op.Route)
	case manager.AddRule:
		return rule(unix.RTM_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, op.Rule)
	case manager.DelRule:
		return rule(unix.RTM_DELRULE, 0, op.Rule)
	case manager.DelLink:
		return linkDel(op.Link.Index)
	}
	panic(fmt.Sprintf("unknown op %v", op.Kind))
}

func isDelete(k manager.OpKind) bool {
	return k == manager.DelAddr || k == manager.DelRoute || k == manager.DelRule || k == manager.DelLink
}

// isGone reports whether err says the object is already absent, which is
// what a delete wants anyway.
func isGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// FirewallHolds reports whether vpnd's firewall table holds exactly f.
func (n *Netlink) FirewallHolds(f manager.Firewall) (bool, error) {
	if n.fw == nil {
		return f.Empty(), nil
	}
	return n.fw.Holds(f)
}

// SetFirewall makes vpnd's firewall table f.
func (n *Netlink) SetFirewall(f manager.Firewall) error {
	if n.fw == nil {
		if f.Empty() {
			return nil
		}
		return errors.New("this vpnd has no firewall table")
	}
	return n.fw.Set(f)
}

// HostPrefixes lists the addresses (with their prefix length) of every
// link but the one named except, and the on-link prefixes of the main
// table (routes without a gateway) through those links: what a NORMAL
// user's VPN address must not overlap.
func (n *Netlink) HostPrefixes(except string) ([]manager.HostPrefix, error) {
	return hostPrefixes(n.h, except)
}

func hostPrefixes(h *netlink.Handle, except string) ([]manager.HostPrefix, error) {
	var links []netlink.Link
	if err := retryDump("list host links", func() (err error) { links, err = h.LinkList(); return err }); err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var addrs []netlink.Addr
	if err := retryDump("list host addresses", func() (err error) { addrs, err = h.AddrList(nil, netlink.FAMILY_ALL); return err }); err != nil {
		return nil, err
	}
	var out []manager.HostPrefix
	for _, a := range addrs {
		name, ok := names[a.LinkIndex]
		if !ok || name == except {
			continue
		}
		if ma, ok := fromAddr(a); ok {
			out = append(out, manager.HostPrefix{Prefix: ma.Prefix, Ifname: name})
		}
	}
	var routes []netlink.Route
	err := retryDump("list on-link prefixes", func() (err error) {
		routes, err = h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, k := range routes {
		if k.Type != unix.RTN_UNICAST || k.Gw != nil || len(k.MultiPath) > 0 {
			continue
		}
		name, ok := names[k.LinkIndex]
		if !ok || name == except {
			continue
		}
		if r, ok := fromRoute(k); ok {
			out = append(out, manager.HostPrefix{Prefix: r.Dst, Ifname: name})
		}
	}
	return out, nil
}

// HostReader reads the host's addresses and on-link prefixes, and nothing
// else, through a netlink socket of its own. Netlink dumps need no
// privilege, so `vpnd --sim`, which runs as any user and changes nothing in
// the kernel, uses it to refuse a NORMAL user's overlapping addresses
// exactly as vpnd does on a host.
type HostReader struct{ h *netlink.Handle }

// NewHostReader opens the reader's socket in the current network
// namespace.
func NewHostReader() (*HostReader, error) {
	h, err := openHandle()
	if err != nil {
		return nil, err
	}
	return &HostReader{h: h}, nil
}

// HostPrefixes is Netlink.HostPrefixes.
func (r *HostReader) HostPrefixes(except string) ([]manager.HostPrefix, error) {
	return hostPrefixes(r.h, except)
}

// Close closes the socket.
func (r *HostReader) Close() error {
	r.h.Close()
	return nil
}
