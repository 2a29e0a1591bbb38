package tun

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"
)

// The rtnetlink messages vpnd sends and reads, encoded and decoded by hand:
// a bring-up is one batch of them, and the self-healing diff reads 10,000
// routes at a time, so neither may allocate per object.

// Kernel constants that golang.org/x/sys does not name.
const (
	ipv4DevconfRPFilter = 8 // IPV4_DEVCONF_RP_FILTER in linux/ip.h
	rpFilterLoose       = 2
	in6AddrGenModeNone  = 1 // IN6_ADDR_GEN_MODE_NONE in linux/if_link.h
)

// route appends an RTM_NEWROUTE or RTM_DELROUTE for r. Add and delete carry
// the same attributes, so a delete matches exactly what the add created:
// the kernel compares type, scope, protocol, link and gateway when given.
func (m *msgBuf) route(typ, flags uint16, r Route) {
	dst := r.Dst.Masked()
	m.begin(typ, flags)
	rtType, scope := uint8(unix.RTN_UNICAST), uint8(unix.RT_SCOPE_UNIVERSE)
	switch r.Kind {
	case Throw:
		rtType = unix.RTN_THROW
	case Unreachable:
		rtType = unix.RTN_UNREACHABLE
	default:
		if !r.Gateway.IsValid() && dst.Addr().Is4() {
			// Like `ip route add PREFIX dev X`: the destination is on the link.
			scope = unix.RT_SCOPE_LINK
		}
	}
	table := uint8(unix.RT_TABLE_UNSPEC)
	if r.Table < 256 {
		table = uint8(r.Table)
	}
	m.bytes(uint8(r.Family()), uint8(dst.Bits()), 0, 0, table, unix.RTPROT_STATIC, scope, rtType)
	// A TUN is a point-to-point link without neighbours: every gateway is
	// on it. "onlink" says so, so that the kernel does not look for a
	// route to the gateway, which would make a route's success depend on
	// its position in the batch (or fail for a route to the gateway's own
	// prefix).
	var rtFlags uint32
	if r.Kind == Unicast && r.Gateway.IsValid() {
		rtFlags = unix.RTNH_F_ONLINK
	}
	m.u32(rtFlags)
	m.attrU32(unix.RTA_TABLE, uint32(r.Table))
	if dst.Bits() > 0 {
		m.attr(unix.RTA_DST, dst.Addr().AsSlice())
	}
	if r.Kind == Unicast {
		m.attrU32(unix.RTA_OIF, uint32(r.LinkIndex))
		if r.Gateway.IsValid() {
			m.attr(unix.RTA_GATEWAY, r.Gateway.AsSlice())
		}
	}
	m.end()
}

// rule appends an RTM_NEWRULE or RTM_DELRULE for r. fib_rule_hdr has
// rtmsg's layout.
func (m *msgBuf) rule(typ, flags uint16, r Rule) {
	m.begin(typ, flags)
	action := uint8(unix.FR_ACT_TO_TBL)
	table := uint8(0)
	if r.Action == Refuse {
		action = unix.FR_ACT_UNREACHABLE
	} else if r.Table < 256 {
		table = uint8(r.Table)
	}
	m.bytes(uint8(r.Family), 0, 0, 0, table, 0, 0, action)
	m.u32(0) // flags
	m.attrU32(unix.FRA_PRIORITY, uint32(r.Priority))
	if r.Action == Lookup {
		m.attrU32(unix.FRA_TABLE, uint32(r.Table))
	}
	var uids [8]byte
	binary.NativeEndian.PutUint32(uids[0:], r.UIDStart)
	binary.NativeEndian.PutUint32(uids[4:], r.UIDEnd)
	m.attr(unix.FRA_UID_RANGE, uids[:])
	if r.Mask != 0 {
		// "fwmark 0x0/Mask"
		m.attrU32(unix.FRA_FWMARK, 0)
		m.attrU32(unix.FRA_FWMASK, r.Mask)
	}
	m.end()
}

// addr appends an RTM_NEWADDR or RTM_DELADDR for p on the link. Addresses
// get IFA_F_NOPREFIXROUTE: the kernel would otherwise put the prefix route
// into the main table, where it applies to every uid; vpnd puts it into its
// own table instead. IPv6 addresses skip duplicate address detection
// (IFA_F_NODAD): a TUN address is nobody else's, and the client uses it at
// once, while DAD would leave it "tentative" for a second or so.
func (m *msgBuf) addr(typ, flags uint16, index int, p netip.Prefix) {
	m.begin(typ, flags)
	fam := uint8(familyOf(p.Addr()))
	ifaFlags := uint32(unix.IFA_F_NOPREFIXROUTE)
	if p.Addr().Is6() {
		ifaFlags |= unix.IFA_F_NODAD
	}
	m.bytes(fam, uint8(p.Bits()), uint8(ifaFlags), 0)
	m.u32(uint32(index))
	a := p.Addr().AsSlice()
	m.attr(unix.IFA_LOCAL, a)
	m.attr(unix.IFA_ADDRESS, a)
	m.attrU32(unix.IFA_FLAGS, ifaFlags)
	m.end()
}

// ifinfo appends an ifinfomsg header.
func (m *msgBuf) ifinfo(index int, flags, change uint32) {
	m.bytes(unix.AF_UNSPEC, 0)
	m.u16(0) // type
	m.u32(uint32(int32(index)))
	m.u32(flags)
	m.u32(change)
}

// linkSettings appends the RTM_NEWLINK that prepares the TUN link before it
// goes up: its MTU, loose reverse path filtering (so that a packet a NORMAL
// owner's app writes into the TUN is not dropped on a host with strict
// rp_filter: the kernel checks the reverse path in the main table, without
// the uid that selects vpnd's table), and no IPv6 address generation (no
// link-local address, hence no router solicitations or MLD reports of the
// kernel's own in the client's TUN). The IPv6 setting is optional: ipv6 may
// be off on the host. It must precede the link going up.
func (m *msgBuf) linkSettings(index, mtu int) {
	m.begin(unix.RTM_NEWLINK, 0)
	m.ifinfo(index, 0, 0)
	m.attrU32(unix.IFLA_MTU, uint32(mtu))
	spec := m.nest(unix.IFLA_AF_SPEC)
	inet := m.nest(unix.AF_INET)
	conf := m.nest(unix.IFLA_INET_CONF)
	m.attrU32(ipv4DevconfRPFilter, rpFilterLoose)
	m.endNest(conf)
	m.endNest(inet)
	m.endNest(spec)
	m.end()
}

// linkIPv6Settings appends the RTM_NEWLINK that turns off IPv6 address
// generation on the link (see linkSettings).
func (m *msgBuf) linkIPv6Settings(index int) {
	m.begin(unix.RTM_NEWLINK, 0)
	m.ifinfo(index, 0, 0)
	spec := m.nest(unix.IFLA_AF_SPEC)
	inet6 := m.nest(unix.AF_INET6)
	m.attr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{in6AddrGenModeNone})
	m.endNest(inet6)
	m.endNest(spec)
	m.end()
}

// linkMTU appends an RTM_NEWLINK that sets only the MTU.
func (m *msgBuf) linkMTU(index, mtu int) {
	m.begin(unix.RTM_NEWLINK, 0)
	m.ifinfo(index, 0, 0)
	m.attrU32(unix.IFLA_MTU, uint32(mtu))
	m.end()
}

// linkUp appends an RTM_NEWLINK that sets the link up.
func (m *msgBuf) linkUp(index int) {
	m.begin(unix.RTM_NEWLINK, 0)
	m.ifinfo(index, unix.IFF_UP, unix.IFF_UP)
	m.end()
}

// linkDel appends an RTM_DELLINK.
func (m *msgBuf) linkDel(index int) {
	m.begin(unix.RTM_DELLINK, 0)
	m.ifinfo(index, 0, 0)
	m.end()
}

// kRoute is a route as a dump reports it, with what vpnd needs to decide
// whether it is one of its own, to describe it, and to delete it.
type kRoute struct {
	family, dstLen, tos, table, proto, scope, typ uint8
	tableID                                       int
	dst                                           netip.Prefix
	gw                                            netip.Addr
	oif                                           int
	priority                                      uint32
	hasPriority                                   bool
	multipath                                     bool
}

func parseRoute(d []byte) (kRoute, bool) {
	var k kRoute
	if len(d) < unix.SizeofRtMsg {
		return k, false
	}
	k.family, k.dstLen, k.tos, k.table, k.proto, k.scope, k.typ = d[0], d[1], d[3], d[4], d[5], d[6], d[7]
	k.tableID = int(k.table)
	var dst []byte
	eachAttr(d[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_TABLE:
			if len(v) == 4 {
				k.tableID = int(binary.NativeEndian.Uint32(v))
			}
		case unix.RTA_DST:
			dst = v
		case unix.RTA_GATEWAY:
			if a, ok := netip.AddrFromSlice(v); ok {
				k.gw = a.Unmap()
			}
		case unix.RTA_OIF:
			if len(v) == 4 {
				k.oif = int(binary.NativeEndian.Uint32(v))
			}
		case unix.RTA_PRIORITY:
			if len(v) == 4 {
				k.priority, k.hasPriority = binary.NativeEndian.Uint32(v), true
			}
		case unix.RTA_MULTIPATH:
			k.multipath = true
		}
	})
	var a netip.Addr
	switch k.family {
	case unix.AF_INET:
		a = netip.IPv4Unspecified()
	case unix.AF_INET6:
		a = netip.IPv6Unspecified()
	default:
		return k, false
	}
	if dst != nil {
		var ok bool
		if a, ok = netip.AddrFromSlice(dst); !ok {
			return k, false
		}
	}
	p, err := a.Prefix(int(k.dstLen))
	if err != nil {
		return k, false
	}
	k.dst = p
	return k, true
}

// vpnd converts the route to vpnd's shape. ok is false for routes vpnd never
// makes (other types, multipath, tos), which thus cannot be vpnd's.
func (k kRoute) vpnd() (Route, bool) {
	if k.multipath || k.tos != 0 {
		return Route{}, false
	}
	r := Route{Table: k.tableID, Dst: k.dst}
	switch k.typ {
	case unix.RTN_UNICAST:
		r.LinkIndex, r.Gateway = k.oif, k.gw
	case unix.RTN_THROW:
		// IPv6 reports reject routes on the loopback device; vpnd's have no link.
		r.Kind = Throw
	case unix.RTN_UNREACHABLE:
		r.Kind = Unreachable
	default:
		return Route{}, false
	}
	return r, true
}

func (k kRoute) String() string {
	if r, ok := k.vpnd(); ok {
		return r.String()
	}
	return fmt.Sprintf("%s type %d table %d", k.dst, k.typ, k.tableID)
}

// delete appends a request that deletes exactly this dumped route: table,
// destination, type, tos and metric, with any nexthop (scope "nowhere" is
// the kernel's wildcard).
func (k kRoute) delete(m *msgBuf) {
	m.begin(unix.RTM_DELROUTE, 0)
	m.bytes(k.family, k.dstLen, 0, k.tos, k.table, 0, unix.RT_SCOPE_NOWHERE, k.typ)
	m.u32(0)
	m.attrU32(unix.RTA_TABLE, uint32(k.tableID))
	if k.dstLen > 0 {
		m.attr(unix.RTA_DST, k.dst.Addr().AsSlice())
	}
	if k.hasPriority {
		m.attrU32(unix.RTA_PRIORITY, k.priority)
	}
	m.end()
}

// kRule is a rule as a dump reports it.
type kRule struct {
	family, action uint8
	flags          uint32
	table          int
	priority       int
	uidStart       uint32
	uidEnd         uint32
	hasUID         bool
	mark, mask     uint32
	hasMark        bool
	// other lists selectors vpnd never sets (source, interface, ports...),
	// by attribute type; a rule with any of them is not vpnd's.
	other          []uint16
	tos            uint8
	srcLen, dstLen uint8
	// raw is the message, for an exact delete. It points into the receive
	// buffer: clone it to keep it past the dump's callback.
	raw []byte
}

func parseRule(d []byte) (kRule, bool) {
	var k kRule
	if len(d) < unix.SizeofRtMsg {
		return k, false
	}
	k.family, k.srcLen, k.dstLen, k.tos, k.action = d[0], d[2], d[1], d[3], d[7]
	k.table = int(d[4])
	k.flags = binary.NativeEndian.Uint32(d[8:12])
	eachAttr(d[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.FRA_TABLE:
			if len(v) == 4 {
				k.table = int(binary.NativeEndian.Uint32(v))
			}
		case unix.FRA_PRIORITY:
			if len(v) == 4 {
				k.priority = int(binary.NativeEndian.Uint32(v))
			}
		case unix.FRA_UID_RANGE:
			if len(v) == 8 {
				k.uidStart, k.uidEnd, k.hasUID = binary.NativeEndian.Uint32(v[0:]), binary.NativeEndian.Uint32(v[4:]), true
			}
		case unix.FRA_FWMARK:
			if len(v) == 4 {
				k.mark, k.hasMark = binary.NativeEndian.Uint32(v), true
			}
		case unix.FRA_FWMASK:
			if len(v) == 4 {
				k.mask = binary.NativeEndian.Uint32(v)
			}
		case unix.FRA_PROTOCOL, unix.FRA_SUPPRESS_PREFIXLEN, unix.FRA_SUPPRESS_IFGROUP, unix.FRA_UNSPEC:
			// Not selectors, or defaults.
		default:
			k.other = append(k.other, typ)
		}
	})
	k.raw = d
	return k, true
}

// vpnd converts the rule to vpnd's shape. ok is false for rules with
// selectors vpnd never sets, which thus cannot be vpnd's.
func (k kRule) vpnd() (Rule, bool) {
	if !k.hasUID || len(k.other) > 0 || k.tos != 0 || k.srcLen != 0 || k.dstLen != 0 ||
		k.flags&unix.FIB_RULE_INVERT != 0 || k.mark != 0 {
		return Rule{}, false
	}
	// The kernel reports "fwmark 0x0/Mask" as FRA_FWMASK alone.
	r := Rule{Family: int(k.family), Priority: k.priority, UIDStart: k.uidStart, UIDEnd: k.uidEnd, Mask: k.mask}
	switch k.action {
	case unix.FR_ACT_TO_TBL:
		r.Table = k.table
	case unix.FR_ACT_UNREACHABLE:
		r.Action = Refuse
	default:
		return Rule{}, false
	}
	return r, true
}

func (k kRule) String() string {
	if r, ok := k.vpnd(); ok {
		return r.String()
	}
	fam := "ipv4"
	if k.family == unix.AF_INET6 {
		fam = "ipv6"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d:", fam, k.priority)
	if k.hasUID {
		fmt.Fprintf(&b, " uidrange %d-%d", k.uidStart, k.uidEnd)
	}
	if k.hasMark {
		fmt.Fprintf(&b, " fwmark %#x/%#x", k.mark, k.mask)
	}
	if len(k.other) > 0 {
		fmt.Fprintf(&b, " (+%d other selectors)", len(k.other))
	}
	switch k.action {
	case unix.FR_ACT_TO_TBL:
		fmt.Fprintf(&b, " lookup %d", k.table)
	default:
		fmt.Fprintf(&b, " action %d", k.action)
	}
	return b.String()
}

// matchedBy reports whether the kernel, asked to delete r, could delete
// this rule: the kernel's rule_find compares only the selectors a request
// carries, so a foreign rule with more selectors can match.
func (k kRule) matchedBy(r Rule) bool {
	action := uint8(unix.FR_ACT_TO_TBL)
	if r.Action == Refuse {
		action = unix.FR_ACT_UNREACHABLE
	}
	return int(k.family) == r.Family && k.priority == r.Priority && k.action == action &&
		(r.Table == 0 || k.table == r.Table) &&
		k.hasUID && k.uidStart == r.UIDStart && k.uidEnd == r.UIDEnd &&
		(r.Mask == 0 || k.mask == r.Mask)
}

// delete appends a request that deletes exactly this dumped rule: the
// kernel matches a rule delete on every selector the request carries, and
// this one carries all of the rule's.
func (k kRule) delete(m *msgBuf) {
	m.begin(unix.RTM_DELRULE, 0)
	m.bytes(k.raw...)
	m.end()
}

// parseAddr decodes an RTM_NEWADDR: the link index and the address with its
// prefix length (IFA_LOCAL if present, IFA_ADDRESS otherwise).
func parseAddr(d []byte) (index int, p netip.Prefix, ok bool) {
	if len(d) < unix.SizeofIfAddrmsg {
		return 0, p, false
	}
	fam, bits := d[0], int(d[1])
	index = int(binary.NativeEndian.Uint32(d[4:8]))
	var local, address []byte
	eachAttr(d[unix.SizeofIfAddrmsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.IFA_LOCAL:
			local = v
		case unix.IFA_ADDRESS:
			address = v
		}
	})
	if local == nil {
		local = address
	}
	a, ok := netip.AddrFromSlice(local)
	if !ok || (fam == unix.AF_INET) != (len(local) == 4) {
		return 0, p, false
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return 0, p, false
	}
	return index, netip.PrefixFrom(a, bits), true
}

// addrFlags reads an RTM_NEWADDR's flags: IFA_FLAGS if present (the
// header's byte holds only the low 8 bits), the header's otherwise.
func addrFlags(d []byte) uint32 {
	if len(d) < unix.SizeofIfAddrmsg {
		return 0
	}
	flags := uint32(d[2])
	eachAttr(d[unix.SizeofIfAddrmsg:], func(typ uint16, v []byte) {
		if typ == unix.IFA_FLAGS && len(v) == 4 {
			flags = binary.NativeEndian.Uint32(v)
		}
	})
	return flags
}

// parseLink decodes an RTM_NEWLINK: index, name, MTU and whether it is up.
func parseLink(d []byte) (LinkState, bool) {
	if len(d) < unix.SizeofIfInfomsg {
		return LinkState{}, false
	}
	l := LinkState{
		Index: int(int32(binary.NativeEndian.Uint32(d[4:8]))),
		Up:    binary.NativeEndian.Uint32(d[8:12])&unix.IFF_UP != 0,
	}
	eachAttr(d[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.IFLA_IFNAME:
			l.Name = cString(v)
		case unix.IFLA_MTU:
			if len(v) == 4 {
				l.MTU = int(binary.NativeEndian.Uint32(v))
			}
		}
	})
	return l, true
}
