package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Netlink implements the manager's Kernel interface with rtnetlink, acting
// on the network namespace of the calling process. It keeps no state of its
// own: what is configured is what the kernel says, so the manager's rollback
// and the start-up sweep never have to trust a cache.
type Netlink struct {
	log *zap.Logger
	// h keeps one netlink socket open for all requests. The package-level
	// functions open and close a socket per request, which made a
	// 10,000-route bring-up several times slower.
	h *netlink.Handle

	// watchRcvBuf, if non-zero, sets SO_RCVBUF of link subscriptions and of
	// the change watch. Tests shrink it to force ENOBUFS and exercise the
	// resubscribe and resync paths.
	watchRcvBuf int
}

// New returns a Netlink bound to the current network namespace: its
// netlink socket is opened there, and vpnd never switches namespaces, so
// that is the namespace vpnd was started in.
func New(log *zap.Logger) *Netlink {
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("tun")
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		// The zero Handle works like the package functions: a socket
		// per request. Slower, but correct.
		log.Warn("open netlink socket failed; using one socket per request", zap.Error(err))
		h = &netlink.Handle{}
	}
	return &Netlink{log: log, h: h}
}

// CreateTUN creates a non-persistent TUN device and returns its only fd.
//
// IFF_TUN_EXCL makes the kernel refuse a name that already exists instead of
// attaching to it, so vpnd can never configure or hand out somebody else's
// device. Flags are set explicitly: netlink treats Flags 0 with Queues 1 as
// a request for a multi-queue device.
func (n *Netlink) CreateTUN(name string, blocking bool) (*os.File, int, error) {
	if err := ValidateName(name); err != nil {
		return nil, 0, fmt.Errorf("create tun %q: %w", name, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	link := &netlink.Tuntap{
		LinkAttrs:  attrs,
		Mode:       netlink.TUNTAP_MODE_TUN,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL,
		Queues:     1,
		NonPersist: true,
	}
	if err := n.h.LinkAdd(link); err != nil {
		// TUNSETIFF fails with EBUSY for a taken name, but netlink flattens
		// the errno into text; ask the kernel who holds the name instead.
		if other, lerr := n.h.LinkByName(name); lerr == nil {
			return nil, 0, fmt.Errorf("create tun %s: %w: a %s link (index %d) has this name: %v",
				name, ErrLinkExists, other.Type(), other.Attrs().Index, err)
		}
		return nil, 0, fmt.Errorf("create tun %s: %w", name, err)
	}
	if len(link.Fds) != 1 {
		for _, f := range link.Fds {
			f.Close()
		}
		return nil, 0, fmt.Errorf("create tun %s: got %d fds, want 1", name, len(link.Fds))
	}
	f := link.Fds[0]
	index := link.Attrs().Index
	// From here on, closing f is the rollback: the device is not
	// persistent, so the kernel removes it with its last fd.
	if err := n.finishTUN(f, name, index, blocking); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("create tun %s: %w", name, err)
	}
	n.log.Debug("tun created", zap.String("ifname", name), zap.Int("index", index), zap.Bool("blocking", blocking))
	return f, index, nil
}

// finishTUN checks that the device is what the contract promises and sets
// the fd's modes. It works on the raw fd through SyscallConn: f.Fd() would
// switch the shared open file description back to blocking mode.
func (n *Netlink) finishTUN(f *os.File, name string, index int, blocking bool) error {
	flags, err := TUNFlags(f)
	if err != nil {
		return err
	}
	const want = unix.IFF_TUN | unix.IFF_NO_PI
	const forbidden = unix.IFF_TAP | unix.IFF_MULTI_QUEUE | unix.IFF_PERSIST
	if flags&want != want || flags&forbidden != 0 {
		return fmt.Errorf("device flags %#x, want IFF_TUN|IFF_NO_PI without IFF_TAP, IFF_MULTI_QUEUE or IFF_PERSIST", flags)
	}
	var opErr error
	err = control(f, func(fd int) {
		if opErr = unix.SetNonblock(fd, !blocking); opErr != nil {
			opErr = fmt.Errorf("set O_NONBLOCK=%t: %w", !blocking, opErr)
			return
		}
		fdFlags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			opErr = fmt.Errorf("get fd flags: %w", err)
			return
		}
		if fdFlags&unix.FD_CLOEXEC == 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, fdFlags|unix.FD_CLOEXEC); err != nil {
				opErr = fmt.Errorf("set FD_CLOEXEC: %w", err)
			}
		}
	})
	if err != nil {
		return err
	}
	if opErr != nil {
		return opErr
	}
	if index <= 0 {
		return errors.New("kernel did not report an interface index")
	}
	// netlink looked the index up by name after creation; make sure the
	// name still belongs to a tun device at that index.
	l, err := n.h.LinkByIndex(index)
	if err != nil {
		return fmt.Errorf("look up index %d: %w", index, err)
	}
	if l.Attrs().Name != name || l.Type() != "tuntap" {
		return fmt.Errorf("index %d is a %s link named %q, not the new tun", index, l.Type(), l.Attrs().Name)
	}
	return nil
}

// TUNFlags returns the IFF_* flags of the TUN device behind f (TUNGETIFF).
// It includes IFF_PERSIST when the device outlives its fds.
func TUNFlags(f *os.File) (uint16, error) {
	var flags uint16
	var opErr error
	err := control(f, func(fd int) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			opErr = err
			return
		}
		if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
			opErr = fmt.Errorf("TUNGETIFF: %w", err)
			return
		}
		flags = ifr.Uint16()
	})
	if err != nil {
		return 0, err
	}
	return flags, opErr
}

func control(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("syscall conn: %w", err)
	}
	if err := rc.Control(func(fd uintptr) { fn(int(fd)) }); err != nil {
		return fmt.Errorf("control fd: %w", err)
	}
	return nil
}

// linkRef names a link by index only; the netlink calls used here send just
// the index.
func linkRef(index int) netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}
}

func checkIndex(index int) error {
	if index <= 0 {
		return fmt.Errorf("invalid interface index %d", index)
	}
	return nil
}

// DeleteLink deletes the link with this index. A link that is already gone
// (the client closed the fd, someone ran `ip link del`) is not an error.
func (n *Netlink) DeleteLink(index int) error {
	if err := checkIndex(index); err != nil {
		return fmt.Errorf("delete link: %w", err)
	}
	if err := n.h.LinkDel(linkRef(index)); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil
		}
		return fmt.Errorf("delete link %d: %w", index, err)
	}
	n.log.Debug("link deleted", zap.Int("index", index))
	return nil
}

func toAddr(p netip.Prefix) (*netlink.Addr, error) {
	if !p.IsValid() {
		return nil, fmt.Errorf("invalid prefix %s", p)
	}
	if p.Addr().Is4In6() {
		return nil, fmt.Errorf("IPv4-mapped address %s is not supported", p)
	}
	a := &netlink.Addr{IPNet: prefixToIPNet(p)}
	if p.Addr().Is6() {
		// A VPN address is not shared with anyone on a tun link, and the
		// client uses it at once: duplicate address detection would only
		// leave it "tentative" and unusable for a second or so.
		a.Flags = unix.IFA_F_NODAD
	}
	return a, nil
}

// AddAddress adds addr to the link. IPv6 addresses skip DAD (IFA_F_NODAD).
func (n *Netlink) AddAddress(index int, addr netip.Prefix) error {
	a, err := toAddr(addr)
	if err == nil {
		err = checkIndex(index)
	}
	if err == nil {
		err = n.h.AddrAdd(linkRef(index), a)
	}
	if err != nil {
		return fmt.Errorf("add address %s to link %d: %w", addr, index, err)
	}
	return nil
}

// DeleteAddress removes addr from the link.
func (n *Netlink) DeleteAddress(index int, addr netip.Prefix) error {
	a, err := toAddr(addr)
	if err == nil {
		err = checkIndex(index)
	}
	if err == nil {
		err = n.h.AddrDel(linkRef(index), a)
	}
	if err != nil {
		return fmt.Errorf("delete address %s from link %d: %w", addr, index, err)
	}
	return nil
}

// SetMTU sets the link's MTU. The MTU in LinkAttrs is ignored when a tun
// device is created, hence a separate step.
func (n *Netlink) SetMTU(index, mtu int) error {
	err := checkIndex(index)
	if err == nil {
		err = n.h.LinkSetMTU(linkRef(index), mtu)
	}
	if err != nil {
		return fmt.Errorf("set mtu %d on link %d: %w", mtu, index, err)
	}
	return nil
}

// SetUp sets the link administratively up.
func (n *Netlink) SetUp(index int) error {
	err := checkIndex(index)
	if err == nil {
		err = n.h.LinkSetUp(linkRef(index))
	}
	if err != nil {
		return fmt.Errorf("set link %d up: %w", index, err)
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if bits == 32 && !a.Is4() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// nlRoute builds the one netlink route that both AddRoute and DeleteRoute
// send, so that a delete matches exactly what the add created: the kernel
// compares type, scope and protocol when they are given.
func nlRoute(r Route) (*netlink.Route, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	dst := r.Dst.Masked()
	nr := &netlink.Route{
		Family:   r.Family(),
		Table:    r.Table,
		Dst:      prefixToIPNet(dst),
		Protocol: unix.RTPROT_STATIC,
		Scope:    netlink.SCOPE_UNIVERSE,
	}
	if r.Throw {
		nr.Type = unix.RTN_THROW
		return nr, nil
	}
	nr.Type = unix.RTN_UNICAST
	nr.LinkIndex = r.LinkIndex
	switch {
	case r.Gateway.IsValid():
		nr.Gw = net.IP(r.Gateway.AsSlice())
	case dst.Addr().Is4():
		// Like `ip route add PREFIX dev X`: the destination is on the link.
		nr.Scope = netlink.SCOPE_LINK
	}
	return nr, nil
}

// AddRoute adds r. The kernel refuses a second route to the same
// destination in the same table (EEXIST).
func (n *Netlink) AddRoute(r Route) error {
	nr, err := nlRoute(r)
	if err == nil {
		err = n.h.RouteAdd(nr)
	}
	if err != nil {
		return fmt.Errorf("add route %s: %w", r, err)
	}
	return nil
}

// DeleteRoute deletes r: same destination, table, type, link and gateway.
func (n *Netlink) DeleteRoute(r Route) error {
	nr, err := nlRoute(r)
	if err == nil {
		err = n.h.RouteDel(nr)
	}
	if err != nil {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

func nlRule(r Rule) (*netlink.Rule, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	// NewRule, not &Rule{}: the zero Rule would send priority 0 and goto 0.
	nr := netlink.NewRule()
	nr.Family = r.Family
	nr.Priority = r.Priority
	nr.Table = r.Table
	nr.UIDRange = netlink.NewRuleUIDRange(r.UIDStart, r.UIDEnd)
	if r.Mask != 0 {
		// "fwmark 0x0/Mask": netlink sends FRA_FWMARK whenever Mask is
		// non-nil, even for Mark 0, and FRA_FWMASK with the mask.
		mask := r.Mask
		nr.Mark = 0
		nr.Mask = &mask
	}
	return nr, nil
}

// AddRule adds r. An identical rule already present is EEXIST.
func (n *Netlink) AddRule(r Rule) error {
	nr, err := nlRule(r)
	if err == nil {
		err = n.h.RuleAdd(nr)
	}
	if err != nil {
		return fmt.Errorf("add rule %s: %w", r, err)
	}
	return nil
}

// DeleteRule deletes exactly the rule r describes. The kernel deletes the
// first rule that matches the attributes a request carries and treats
// absent ones as wildcards; a request cannot say "no fwmark". So a delete of
// "uidrange 5-5 lookup 98" would also hit "uidrange 5-5 fwmark 0x0/0x20000
// lookup 98" if that came first. DeleteRule therefore looks at the rules at
// r's priority first: if r is not there it returns ENOENT, as the kernel
// would for a missing rule; if the kernel's first match is not r, it refuses
// with ErrAmbiguousRule rather than delete a wider match. (The list and the
// delete are two requests; vpnd is the only writer at its priority.)
func (n *Netlink) DeleteRule(r Rule) error {
	nr, err := nlRule(r)
	if err != nil {
		return fmt.Errorf("delete rule %s: %w", r, err)
	}
	rules, err := listRules(r.Family, r.Table, r.Priority)
	if err != nil {
		return fmt.Errorf("delete rule %s: %w", r, err)
	}
	isR := func(k netlink.Rule) bool {
		got, ok := fromNLRule(k)
		return ok && got == r
	}
	if !slices.ContainsFunc(rules, isR) {
		return fmt.Errorf("delete rule %s: %w", r, unix.ENOENT)
	}
	// The kernel deletes the first rule the request matches; it must be r.
	for _, k := range rules {
		if !kernelMatchesDelete(k, r) {
			continue
		}
		if !isR(k) {
			return fmt.Errorf("delete rule %s: %w: %s", r, ErrAmbiguousRule, describeNLRule(k))
		}
		break
	}
	if err := n.h.RuleDel(nr); err != nil {
		return fmt.Errorf("delete rule %s: %w", r, err)
	}
	return nil
}

// kernelMatchesDelete mirrors the kernel's rule_find for the request nlRule
// builds: table, priority and uid range always count; the mask counts when
// non-zero; the mark (0) counts as a wildcard.
func kernelMatchesDelete(k netlink.Rule, r Rule) bool {
	if k.Table != r.Table || k.Priority != r.Priority || k.Family != r.Family {
		return false
	}
	if k.UIDRange == nil || k.UIDRange.Start != r.UIDStart || k.UIDRange.End != r.UIDEnd {
		return false
	}
	return r.Mask == 0 || maskOf(k) == r.Mask
}

func maskOf(k netlink.Rule) uint32 {
	if k.Mask == nil {
		return 0
	}
	return *k.Mask
}

// fromNLRule converts a kernel rule to vpnd's shape. ok is false for rules
// with selectors vpnd never sets, which thus cannot be vpnd's.
func fromNLRule(k netlink.Rule) (Rule, bool) {
	if k.UIDRange == nil || k.Mark != 0 || k.Src != nil || k.Dst != nil ||
		k.IifName != "" || k.OifName != "" || k.Invert || k.Tos != 0 ||
		k.Goto > 0 || k.IPProto != 0 || k.Dport != nil || k.Sport != nil || k.TunID != 0 {
		return Rule{}, false
	}
	if k.Mask != nil && *k.Mask != 0 && k.Mark != 0 {
		return Rule{}, false
	}
	return Rule{
		Family:   k.Family,
		Priority: k.Priority,
		Table:    k.Table,
		UIDStart: k.UIDRange.Start,
		UIDEnd:   k.UIDRange.End,
		Mask:     maskOf(k),
	}, true
}

// describeNLRule renders any kernel rule, vpnd-shaped or not, for logs.
func describeNLRule(k netlink.Rule) string {
	if r, ok := fromNLRule(k); ok {
		return r.String()
	}
	fam := "ipv4"
	if k.Family == unix.AF_INET6 {
		fam = "ipv6"
	}
	return fmt.Sprintf("%s %s", fam, strings.TrimSpace(strings.TrimPrefix(k.String(), "ip rule ")))
}
