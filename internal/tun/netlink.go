package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Netlink implements the manager's Kernel interface with rtnetlink, acting
// on the network namespace of the calling process. It holds two sockets for
// vpnd's whole life: one for requests (nlConn), and one that listens to the
// kernel's change notifications (monitor). It keeps no copy of the kernel's
// state: what is configured is what the kernel says, so that a rollback,
// the start-up sweep and self-healing never trust a cache.
type Netlink struct {
	log *zap.Logger
	c   *nlConn
	mon *monitor
	// ipv6 says whether the host has IPv6, so that Install may turn off the
	// link's IPv6 address generation.
	ipv6 bool
}

// New opens vpnd's netlink sockets in the current network namespace. vpnd
// never switches namespaces, so that is the namespace vpnd was started in.
func New(log *zap.Logger) (*Netlink, error) {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("tun")
	c, err := openNLConn()
	if err != nil {
		return nil, err
	}
	n := &Netlink{log: log, c: c}
	_, err = os.Stat("/proc/sys/net/ipv6")
	n.ipv6 = err == nil
	n.mon, err = newMonitor(log.Named("monitor"), n)
	if err != nil {
		c.close()
		return nil, err
	}
	return n, nil
}

// Close closes the sockets and stops the monitor. Watches end without
// their channels being closed.
func (n *Netlink) Close() error {
	n.mon.close()
	return n.c.close()
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
func (n *Netlink) CreateTUN(name string, opt TUNOptions) (*os.File, int, error) {
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
			return nil, 0, fmt.Errorf("create tun %s: %w: %s", name, ErrLinkExists, n.describeLinkNamed(name))
		}
		return nil, 0, fmt.Errorf("create tun %s: TUNSETIFF: %w", name, err)
	}
	// From here on, closing fd is the rollback: the device is not
	// persistent, so the kernel removes it with its last fd.
	idx, err := unix.NewIfreq(name)
	if err == nil {
		err = unix.IoctlIfreq(n.c.fd, unix.SIOCGIFINDEX, idx)
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
	var m msgBuf
	m.begin(unix.RTM_GETLINK, 0)
	m.ifinfo(0, 0, 0)
	m.attr(unix.IFLA_IFNAME, append([]byte(name), 0))
	m.end()
	var desc string
	err := n.c.request(&m, func(_ unix.NlMsghdr, d []byte) error {
		if l, ok := parseLink(d); ok {
			desc = fmt.Sprintf("a %s link (index %d) has this name", linkKind(d), l.Index)
		}
		return nil
	})
	if err != nil || desc == "" {
		return "the kernel refused the name"
	}
	return desc
}

// linkKind reads IFLA_LINKINFO/IFLA_INFO_KIND ("tun", "veth", ...) from an
// RTM_NEWLINK; "device" when it has none. The TUN driver calls its TAP
// devices "tun" too: for those the kind is "tap", from IFLA_TUN_TYPE.
func linkKind(d []byte) string {
	kind := "device"
	if len(d) < unix.SizeofIfInfomsg {
		return kind
	}
	var tunType uint8
	eachAttr(d[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
		if typ == unix.IFLA_LINKINFO {
			eachAttr(v, func(typ uint16, v []byte) {
				switch typ {
				case unix.IFLA_INFO_KIND:
					kind = cString(v)
				case unix.IFLA_INFO_DATA:
					eachAttr(v, func(typ uint16, v []byte) {
						if typ == unix.IFLA_TUN_TYPE && len(v) == 1 {
							tunType = v[0]
						}
					})
				}
			})
		}
	})
	if kind == "tun" && tunType == unix.IFF_TAP {
		return "tap"
	}
	return kind
}

// op is what one message of a batch does, to map the kernel's answer back
// to an object.
type op struct {
	what string // "add route", "set link", ...
	obj  fmt.Stringer
	// optional: a failure is logged, not returned (a host without IPv6
	// cannot turn off IPv6 address generation, and need not).
	optional bool
	apply    func(*Objects) // records the object as installed
}

type prefixStringer netip.Prefix

func (p prefixStringer) String() string { return netip.Prefix(p).String() }

type linkStringer int

func (l linkStringer) String() string { return fmt.Sprintf("#%d", int(l)) }

// Install sets up the link of o (MTU, loose reverse path filtering, no IPv6
// address generation, the addresses, then up) and adds o's routes and
// rules, in that order, as one batch (usually one round trip). It returns
// what it added: all of o unless err is set; err names the first object the
// kernel refused. The kernel still tried every other request; the caller
// removes exactly what was added to roll back. Install sends nothing if any
// object is invalid.
func (n *Netlink) Install(o *Objects) (Objects, error) {
	if err := o.Validate(); err != nil {
		return Objects{}, err
	}
	var m msgBuf
	ops := make([]op, 0, o.Len()+3)
	var added Objects
	if l := o.Link; l != nil {
		added.Link = &Link{Index: l.Index, MTU: l.MTU, Addrs: make([]netip.Prefix, 0, len(l.Addrs))}
		m.linkSettings(l.Index, l.MTU)
		ops = append(ops, op{what: "configure link", obj: linkStringer(l.Index)})
		if n.ipv6 {
			m.linkIPv6Settings(l.Index)
			ops = append(ops, op{what: "turn off IPv6 address generation on link", obj: linkStringer(l.Index), optional: true})
		}
		for _, a := range l.Addrs {
			m.addr(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, l.Index, a)
			ops = append(ops, op{what: "add address", obj: prefixStringer(a), apply: func(o *Objects) {
				o.Link.Addrs = append(o.Link.Addrs, a)
			}})
		}
		m.linkUp(l.Index)
		ops = append(ops, op{what: "set up link", obj: linkStringer(l.Index)})
	}
	added.Routes = make([]Route, 0, len(o.Routes))
	for _, r := range o.Routes {
		m.route(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, r)
		r.Dst = r.Dst.Masked() // as the kernel holds it
		ops = append(ops, op{what: "add route", obj: r, apply: func(o *Objects) { o.Routes = append(o.Routes, r) }})
	}
	added.Rules = make([]Rule, 0, len(o.Rules))
	for _, r := range o.Rules {
		m.rule(unix.RTM_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, r)
		ops = append(ops, op{what: "add rule", obj: r, apply: func(o *Objects) { o.Rules = append(o.Rules, r) }})
	}
	if o.Link != nil {
		n.mon.expect(o.Link.Index, o.Link.MTU, true, o.Link.Addrs)
	}
	results, err := n.c.exchange(&m)
	if err != nil {
		// The answers were lost: ask the kernel what is there.
		return n.present(o), fmt.Errorf("install: %w", err)
	}
	var first error
	for i, op := range ops {
		if e := results[i]; e != nil {
			if op.optional {
				n.log.Debug("optional link setting refused", zap.String("what", op.what), zap.Error(e))
				continue
			}
			if first == nil {
				first = fmt.Errorf("%s %s: %w", op.what, op.obj, e)
			}
			continue
		}
		if op.apply != nil {
			op.apply(&added)
		}
	}
	return added, first
}

// present returns the objects of o that the kernel has, after a batch whose
// answers were lost.
func (n *Netlink) present(o *Objects) Objects {
	q := Query{}
	if o.Link != nil {
		q.LinkIndex = o.Link.Index
	}
	for _, r := range o.Routes {
		q.Table = r.Table
	}
	for _, r := range o.Rules {
		if !slices.Contains(q.Priorities, r.Priority) {
			q.Priorities = append(q.Priorities, r.Priority)
		}
	}
	var out Objects
	s, err := n.Read(q)
	if err != nil {
		n.log.Error("read kernel state after a lost batch", zap.Error(err))
		// Assume everything is there: removing what is not is harmless.
		return *o
	}
	if o.Link != nil && s.Link != nil {
		out.Link = &Link{Index: o.Link.Index, MTU: o.Link.MTU}
		for _, a := range o.Link.Addrs {
			if slices.Contains(s.Link.Addrs, a) {
				out.Link.Addrs = append(out.Link.Addrs, a)
			}
		}
	}
	have := make(map[Route]bool, len(s.Routes))
	for _, r := range s.Routes {
		have[r] = true
	}
	for _, r := range o.Routes {
		r.Dst = r.Dst.Masked()
		if have[r] {
			out.Routes = append(out.Routes, r)
		}
	}
	for _, r := range o.Rules {
		if slices.Contains(s.Rules, r) {
			out.Rules = append(out.Rules, r)
		}
	}
	return out
}

// Remove deletes o from the kernel as one batch: rules first, so that from
// then on no traffic looks up the table; then the routes that do not go
// with the link (throw and unreachable routes); then the link, which takes
// its addresses and every route through it along (deleting 10,000 of those
// one by one took 700 ms), and detaches the client's fd even if the client
// still holds it. With parallelRemoveRoutes or more routes that stay
// behind, the link is deleted beside them instead, after the rules. Only if
// the link cannot be deleted are its routes and addresses deleted one by
// one. Objects already gone are not errors. It
// goes on past errors, so that one stuck object does not keep the others in
// place, and returns them all.
//
// The kernel deletes the first rule that matches the selectors a request
// carries, treating absent ones as wildcards, and a request cannot say "no
// fwmark": so a delete of "uidrange 5-5 lookup 98" would also hit "uidrange
// 5-5 fwmark 0x0/0x20000 lookup 98" if that came first. Remove therefore
// reads the rules at o's priorities once, and skips (with ErrAmbiguousRule)
// a rule whose delete would hit another rule first. A rule that is not
// there is gone, whatever its delete would hit: nothing is sent for it.
func (n *Netlink) Remove(o *Objects) error {
	var errs []error
	var m msgBuf
	var ops []op
	if len(o.Rules) > 0 {
		rules, err := n.rulesAt(o.Rules)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove rules: %w", err))
		}
		for i := len(o.Rules) - 1; i >= 0 && err == nil; i-- {
			r := o.Rules[i]
			j := slices.IndexFunc(rules, func(k kRule) bool { return k.matchedBy(r) })
			if j < 0 || !slices.ContainsFunc(rules[j:], func(k kRule) bool { got, ok := k.vpnd(); return ok && got == r }) {
				continue // gone already
			}
			if got, ok := rules[j].vpnd(); !ok || got != r {
				errs = append(errs, fmt.Errorf("delete rule %s: %w: %s", r, ErrAmbiguousRule, rules[j]))
				continue
			}
			rules = slices.Delete(rules, j, j+1)
			m.rule(unix.RTM_DELRULE, 0, r)
			ops = append(ops, op{what: "delete rule", obj: r})
		}
	}
	unlinked := 0
	for _, r := range o.Routes {
		if !r.OnLink() {
			unlinked++
		}
	}
	if o.Link != nil && unlinked >= parallelRemoveRoutes {
		// Many routes stay behind the link: delete the link beside them.
		// The rules go first, on their own, so that the table is out of
		// use before its link goes, as in the single batch below.
		if len(ops) > 0 {
			results, err := n.c.exchange(&m)
			errs = append(errs, opErrors(ops, results, err)...)
			m.reset()
			ops = ops[:0]
		}
		linkDone := make(chan error, 1)
		go func() { linkDone <- n.deleteLinkAside(o.Link.Index) }()
		for i := len(o.Routes) - 1; i >= 0; i-- {
			if r := o.Routes[i]; !r.OnLink() {
				m.route(unix.RTM_DELROUTE, 0, r)
				ops = append(ops, op{what: "delete route", obj: r})
			}
		}
		results, err := n.c.exchange(&m)
		errs = append(errs, opErrors(ops, results, err)...)
		if err := <-linkDone; err != nil && !IsGone(err) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", linkStringer(o.Link.Index), err))
			errs = append(errs, n.removeLinkObjects(o)...)
		}
		return errors.Join(errs...)
	}
	for i := len(o.Routes) - 1; i >= 0; i-- {
		if r := o.Routes[i]; !r.OnLink() {
			m.route(unix.RTM_DELROUTE, 0, r)
			ops = append(ops, op{what: "delete route", obj: r})
		}
	}
	linkOp := -1
	if o.Link != nil {
		linkOp = len(ops)
		m.linkDel(o.Link.Index)
		ops = append(ops, op{what: "delete link", obj: linkStringer(o.Link.Index)})
	}
	if len(ops) == 0 {
		return errors.Join(errs...)
	}
	results, err := n.c.exchange(&m)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("remove: %w", err))...)
	}
	linkStuck := false
	for i, op := range ops {
		if e := results[i]; e != nil && !IsGone(e) {
			errs = append(errs, fmt.Errorf("%s %s: %w", op.what, op.obj, e))
			if i == linkOp {
				linkStuck = true
			}
		}
	}
	if linkStuck {
		errs = append(errs, n.removeLinkObjects(o)...)
	}
	return errors.Join(errs...)
}

// parallelRemoveRoutes is the number of routes that do not go with the
// link (throw and unreachable ones) from which Remove deletes the link on a
// socket of its own, beside the route deletes. A link's unregistration
// holds the kernel's RTNL lock only in part: the rest (tens of
// milliseconds of waiting for RCU grace periods and references) blocks only
// the request that asked for it, and the next request in the same batch.
// On another socket the route deletes go on meanwhile: 9,999 throw routes
// and the link then take the longer of the two, not their sum. For a few
// routes a second socket costs more than it saves.
const parallelRemoveRoutes = 256

// deleteLinkAside deletes link index on a netlink socket of its own, so that
// the request socket stays free meanwhile. Without a socket to spare (at
// the fd limit, say) it waits for the request socket instead.
func (n *Netlink) deleteLinkAside(index int) error {
	c, err := openNLConn()
	if err != nil {
		c = n.c
	} else {
		defer c.close()
	}
	var m msgBuf
	m.linkDel(index)
	results, err := c.exchange(&m)
	if err != nil {
		return err
	}
	return results[0]
}

// opErrors returns the errors of an exchange of ops, leaving out those that
// say the object is gone.
func opErrors(ops []op, results []error, err error) []error {
	var errs []error
	if err != nil {
		errs = append(errs, fmt.Errorf("remove: %w", err))
	}
	for i, op := range ops {
		if i < len(results) {
			if e := results[i]; e != nil && !IsGone(e) {
				errs = append(errs, fmt.Errorf("%s %s: %w", op.what, op.obj, e))
			}
		}
	}
	return errs
}

// removeLinkObjects deletes one by one what the link would have taken
// along, for a link that could not be deleted: its routes and addresses.
func (n *Netlink) removeLinkObjects(o *Objects) []error {
	var m msgBuf
	var ops []op
	for i := len(o.Routes) - 1; i >= 0; i-- {
		if r := o.Routes[i]; r.OnLink() {
			m.route(unix.RTM_DELROUTE, 0, r)
			ops = append(ops, op{what: "delete route", obj: r})
		}
	}
	for _, a := range o.Link.Addrs {
		m.addr(unix.RTM_DELADDR, 0, o.Link.Index, a)
		ops = append(ops, op{what: "delete address", obj: prefixStringer(a)})
	}
	if len(ops) == 0 {
		return nil
	}
	results, err := n.c.exchange(&m)
	return opErrors(ops, results, err)
}

// IsGone reports whether err says the object is already absent, which is
// what a teardown wants anyway (the link took it, or someone else removed it).
func IsGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// rulesAt dumps the rules at the priorities of rs, in the kernel's order.
func (n *Netlink) rulesAt(rs []Rule) ([]kRule, error) {
	var prios []int
	for _, r := range rs {
		if !slices.Contains(prios, r.Priority) {
			prios = append(prios, r.Priority)
		}
	}
	var out []kRule
	err := n.dumpRules(func() { out = out[:0] }, func(k kRule) {
		if slices.Contains(prios, k.priority) {
			k.raw = nil
			k.other = slices.Clone(k.other)
			out = append(out, k)
		}
	})
	return out, err
}

// dumpRules dumps the rules of both families. The kernel dumps every rule
// (it cannot filter them), in order within each family.
func (n *Netlink) dumpRules(reset func(), fn func(kRule)) error {
	var m msgBuf
	m.begin(unix.RTM_GETRULE, unix.NLM_F_DUMP)
	m.bytes(unix.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0)
	m.u32(0)
	m.end()
	return n.c.dump(&m, reset, func(h unix.NlMsghdr, d []byte) error {
		if h.Type != unix.RTM_NEWRULE {
			return nil
		}
		if k, ok := parseRule(d); ok && (k.family == unix.AF_INET || k.family == unix.AF_INET6) {
			fn(k)
		}
		return nil
	})
}

// dumpRoutes dumps the routes of both families in table. With strict
// checking the kernel reads that table only.
func (n *Netlink) dumpRoutes(table int, reset func(), fn func(kRoute)) error {
	var m msgBuf
	m.begin(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
	t := uint8(unix.RT_TABLE_UNSPEC)
	if table < 256 {
		t = uint8(table)
	}
	m.bytes(unix.AF_UNSPEC, 0, 0, 0, t, 0, 0, 0)
	m.u32(0)
	m.attrU32(unix.RTA_TABLE, uint32(table))
	m.end()
	return n.c.dump(&m, reset, func(h unix.NlMsghdr, d []byte) error {
		if h.Type != unix.RTM_NEWROUTE {
			return nil
		}
		if k, ok := parseRoute(d); ok && k.tableID == table {
			fn(k)
		}
		return nil
	})
}

// dumpAddrs dumps the addresses of both families, of the link with index
// (strict checking filters in the kernel), or of every link for index 0.
func (n *Netlink) dumpAddrs(index int, reset func(), fn func(index int, p netip.Prefix)) error {
	var m msgBuf
	m.begin(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	m.bytes(unix.AF_UNSPEC, 0, 0, 0)
	m.u32(uint32(index))
	m.end()
	return n.c.dump(&m, reset, func(h unix.NlMsghdr, d []byte) error {
		if h.Type != unix.RTM_NEWADDR {
			return nil
		}
		if i, p, ok := parseAddr(d); ok && (index == 0 || i == index) {
			fn(i, p)
		}
		return nil
	})
}

// getLink asks for one link. ok is false if it does not exist.
func (n *Netlink) getLink(index int) (l LinkState, ok bool, err error) {
	var m msgBuf
	m.begin(unix.RTM_GETLINK, 0)
	m.ifinfo(index, 0, 0)
	m.attrU32(unix.IFLA_EXT_MASK, 0)
	m.end()
	err = n.c.request(&m, func(_ unix.NlMsghdr, d []byte) error {
		l, ok = parseLink(d)
		return nil
	})
	if errors.Is(err, unix.ENODEV) {
		return LinkState{}, false, nil
	}
	return l, ok, err
}

// Read reports what the kernel holds of q: the link (nil if it does not
// exist) with its addresses, the vpnd-shaped routes in the table, and the
// vpnd-shaped rules at the priorities.
func (n *Netlink) Read(q Query) (*State, error) {
	s := &State{}
	if q.LinkIndex != 0 {
		l, ok, err := n.getLink(q.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("read link %d: %w", q.LinkIndex, err)
		}
		if ok {
			s.Link = &l
			err := n.dumpAddrs(q.LinkIndex, func() { s.Link.Addrs = s.Link.Addrs[:0] }, func(_ int, p netip.Prefix) {
				s.Link.Addrs = append(s.Link.Addrs, p)
			})
			if err != nil {
				return nil, fmt.Errorf("read addresses of link %d: %w", q.LinkIndex, err)
			}
		}
	}
	if q.Table != 0 {
		err := n.dumpRoutes(q.Table, func() { s.Routes = s.Routes[:0] }, func(k kRoute) {
			if r, ok := k.vpnd(); ok {
				s.Routes = append(s.Routes, r)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("read routes in table %d: %w", q.Table, err)
		}
	}
	if len(q.Priorities) > 0 {
		err := n.dumpRules(func() { s.Rules = s.Rules[:0] }, func(k kRule) {
			if !slices.Contains(q.Priorities, k.priority) {
				return
			}
			if r, ok := k.vpnd(); ok {
				s.Rules = append(s.Rules, r)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("read rules: %w", err)
		}
	}
	return s, nil
}

// Restore puts back what rep lists, as one batch: the link's MTU and up
// state first (a link that was set down has lost its routes and its IPv6
// addresses, and refuses new routes until it is up), then addresses, routes
// (replaced, so that a route someone changed is put back as it was) and
// rules. It returns what it really restored: an address or rule that is
// already there again does not count.
//
// An MTU below IPv6's minimum (1280) takes IPv6 off the link, and with it
// the setting that keeps the kernel from generating an IPv6 link-local
// address; raising the MTU brings IPv6 back with the kernel's defaults and
// a fresh link-local address. So a restored MTU comes with Install's IPv6
// setting again, and the link-local addresses the kernel made are deleted
// after the batch.
func (n *Netlink) Restore(rep *Repair) (Repair, error) {
	done := Repair{LinkIndex: rep.LinkIndex}
	var m msgBuf
	var ops []op
	if rep.MTU > 0 {
		m.linkMTU(rep.LinkIndex, rep.MTU)
		ops = append(ops, op{what: "set mtu of link", obj: linkStringer(rep.LinkIndex), apply: func(*Objects) { done.MTU = rep.MTU }})
		if n.ipv6 {
			m.linkIPv6Settings(rep.LinkIndex)
			ops = append(ops, op{what: "turn off IPv6 address generation on link", obj: linkStringer(rep.LinkIndex), optional: true})
		}
	}
	if rep.Up {
		m.linkUp(rep.LinkIndex)
		ops = append(ops, op{what: "set up link", obj: linkStringer(rep.LinkIndex), apply: func(*Objects) { done.Up = true }})
	}
	for _, a := range rep.Addrs {
		if err := ValidateAddr(a); err != nil {
			return done, fmt.Errorf("restore address %s: %w", a, err)
		}
		m.addr(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, rep.LinkIndex, a)
		ops = append(ops, op{what: "restore address", obj: prefixStringer(a), apply: func(*Objects) { done.Addrs = append(done.Addrs, a) }})
	}
	for _, r := range rep.Routes {
		if err := r.Validate(); err != nil {
			return done, fmt.Errorf("restore route %s: %w", r, err)
		}
		m.route(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, r)
		ops = append(ops, op{what: "restore route", obj: r, apply: func(*Objects) { done.Routes = append(done.Routes, r) }})
	}
	for _, r := range rep.Rules {
		if err := r.Validate(); err != nil {
			return done, fmt.Errorf("restore rule %s: %w", r, err)
		}
		m.rule(unix.RTM_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, r)
		ops = append(ops, op{what: "restore rule", obj: r, apply: func(*Objects) { done.Rules = append(done.Rules, r) }})
	}
	if len(ops) == 0 {
		return done, nil
	}
	n.mon.expect(rep.LinkIndex, rep.MTU, rep.Up, rep.Addrs)
	results, err := n.c.exchange(&m)
	if err != nil {
		return done, fmt.Errorf("restore: %w", err)
	}
	var errs []error
	for i, op := range ops {
		switch e := results[i]; {
		case op.optional:
			if e != nil {
				n.log.Debug("optional link setting refused", zap.String("what", op.what), zap.Error(e))
			}
		case e == nil:
			op.apply(nil)
		case errors.Is(e, unix.EEXIST):
			// Back already: nothing was restored.
		default:
			errs = append(errs, fmt.Errorf("%s %s: %w", op.what, op.obj, e))
		}
	}
	if done.MTU > 0 && n.ipv6 {
		if err := n.deleteLinkLocal(rep.LinkIndex); err != nil {
			errs = append(errs, err)
		}
	}
	return done, errors.Join(errs...)
}

// deleteLinkLocal deletes the IPv6 link-local addresses that the kernel
// generated on a link, and the fe80::/64 route it put into main with them.
// On a TUN device those addresses carry IFA_F_STABLE_PRIVACY (the kernel
// uses random or stable-privacy generation there, never EUI-64); a VPN's
// own link-local address carries IFA_F_NOPREFIXROUTE, and keeps the
// kernel from deleting the route with the address.
func (n *Netlink) deleteLinkLocal(index int) error {
	var ll []netip.Prefix
	var m msgBuf
	m.begin(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	m.bytes(unix.AF_INET6, 0, 0, 0)
	m.u32(uint32(index))
	m.end()
	err := n.c.dump(&m, func() { ll = ll[:0] }, func(h unix.NlMsghdr, d []byte) error {
		if h.Type != unix.RTM_NEWADDR {
			return nil
		}
		i, p, ok := parseAddr(d)
		if !ok || i != index || !p.Addr().IsLinkLocalUnicast() {
			return nil
		}
		if flags := addrFlags(d); flags&unix.IFA_F_STABLE_PRIVACY != 0 && flags&unix.IFA_F_NOPREFIXROUTE == 0 {
			ll = append(ll, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read addresses of link %d: %w", index, err)
	}
	if len(ll) == 0 {
		return nil
	}
	m.reset()
	what := make([]string, 0, len(ll)+1)
	for _, p := range ll {
		m.addr(unix.RTM_DELADDR, 0, index, p)
		what = append(what, "link-local address "+p.String())
	}
	m.begin(unix.RTM_DELROUTE, 0)
	m.bytes(unix.AF_INET6, 64, 0, 0, unix.RT_TABLE_MAIN, unix.RTPROT_KERNEL, unix.RT_SCOPE_NOWHERE, unix.RTN_UNICAST)
	m.u32(0)
	m.attrU32(unix.RTA_TABLE, unix.RT_TABLE_MAIN)
	m.attr(unix.RTA_DST, netip.MustParseAddr("fe80::").AsSlice())
	m.attrU32(unix.RTA_OIF, uint32(index))
	m.end()
	what = append(what, "route fe80::/64 of the link-local addresses")
	results, err := n.c.exchange(&m)
	if err != nil {
		return fmt.Errorf("delete link-local addresses: %w", err)
	}
	var errs []error
	for i, e := range results {
		if e != nil && !IsGone(e) {
			errs = append(errs, fmt.Errorf("delete %s: %w", what[i], e))
		}
	}
	return errors.Join(errs...)
}

// Occupants describes everything that sits where a new VPN would go: every
// route in table, and every rule of either family at one of priorities,
// whatever it looks up. vpnd refuses to share either with someone else, so
// with no VPN up the list should be empty (the start-up sweep emptied it).
func (n *Netlink) Occupants(table int, priorities ...int) ([]string, error) {
	var out []string
	err := n.dumpRules(func() { out = out[:0] }, func(k kRule) {
		if slices.Contains(priorities, k.priority) {
			out = append(out, "rule "+k.String())
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list rules at priority %v: %w", priorities, err)
	}
	nRules := len(out)
	var devs []int
	err = n.dumpRoutes(table, func() { out, devs = out[:nRules], devs[:0] }, func(k kRoute) {
		out = append(out, "route "+k.String())
		devs = append(devs, k.oif)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes in table %d: %w", table, err)
	}
	// Name the devices: "dev #1" means little to a reader.
	for i, dev := range devs {
		if dev <= 0 {
			continue
		}
		if l, ok, err := n.getLink(dev); err == nil && ok {
			out[nRules+i] = strings.Replace(out[nRules+i], fmt.Sprintf("dev #%d", dev), "dev "+l.Name, 1)
		}
	}
	return out, nil
}

// dumpHostPrefixes is HostPrefixes without the cache, and also returns the
// name of every link by index. It lists the addresses (with their prefix length) of every link
// but the one named except, and the on-link prefixes of the main table
// (routes without a gateway) through those links: what a NORMAL user's VPN
// address must not overlap.
func (n *Netlink) dumpHostPrefixes(except string) ([]HostPrefix, map[int]string, error) {
	names := map[int]string{}
	err := n.dumpLinks(func() { clear(names) }, func(l LinkState) { names[l.Index] = l.Name })
	if err != nil {
		return nil, nil, fmt.Errorf("list host links: %w", err)
	}
	var out []HostPrefix
	err = n.dumpAddrs(0, func() { out = out[:0] }, func(index int, p netip.Prefix) {
		if name, ok := names[index]; ok && name != except {
			out = append(out, HostPrefix{Prefix: p, Ifname: name})
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list host addresses: %w", err)
	}
	nAddrs := len(out)
	err = n.dumpRoutes(unix.RT_TABLE_MAIN, func() { out = out[:nAddrs] }, func(k kRoute) {
		if k.typ != unix.RTN_UNICAST || k.gw.IsValid() || k.multipath {
			return
		}
		if name, ok := names[k.oif]; ok && name != except {
			out = append(out, HostPrefix{Prefix: k.dst, Ifname: name})
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list on-link prefixes: %w", err)
	}
	return out, names, nil
}

// dumpLinks dumps every link, without statistics.
func (n *Netlink) dumpLinks(reset func(), fn func(LinkState)) error {
	var m msgBuf
	m.begin(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	m.ifinfo(0, 0, 0)
	m.attrU32(unix.IFLA_EXT_MASK, 0)
	m.end()
	return n.c.dump(&m, reset, func(h unix.NlMsghdr, d []byte) error {
		if h.Type == unix.RTM_NEWLINK {
			if l, ok := parseLink(d); ok {
				fn(l)
			}
		}
		return nil
	})
}
