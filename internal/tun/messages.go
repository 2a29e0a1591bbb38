package tun

import (
	"encoding/binary"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
)

// The rtnetlink requests of an Apply, built with vishvananda/netlink's nl
// package, and what vpnd reads from its dumps.

// Kernel constants that golang.org/x/sys does not name.
const (
	ipv4DevconfRPFilter = 8 // IPV4_DEVCONF_RP_FILTER in linux/ip.h
	rpFilterLoose       = 2
	in6AddrGenModeNone  = 1 // IN6_ADDR_GEN_MODE_NONE in linux/if_link.h
	// ipv6DefaultMetric is the metric the kernel gives an IPv6 route added
	// without one (IP6_RT_PRIO_USER).
	ipv6DefaultMetric = 1024
)

func request(typ uint16, flags int, data ...nl.NetlinkRequestData) []byte {
	req := nl.NewNetlinkRequest(int(typ), flags)
	for _, d := range data {
		req.AddData(d)
	}
	return req.Serialize()
}

func u32(v uint32) []byte { return nl.Uint32Attr(v) }

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// linkSettings is the RTM_NEWLINK that prepares the TUN link before it
// goes up: its MTU, and loose reverse path filtering, so that a packet a
// NORMAL owner's app writes into the TUN is not dropped on a host with
// strict rp_filter (the kernel checks the reverse path in the main table,
// without the uid that selects vpnd's table).
func linkSettings(index, mtu int) []byte {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil).AddRtAttr(ipv4DevconfRPFilter, u32(rpFilterLoose))
	return request(unix.RTM_NEWLINK, 0, msg, nl.NewRtAttr(unix.IFLA_MTU, u32(uint32(mtu))), spec)
}

// linkIPv6Settings is the RTM_NEWLINK that turns off IPv6 address
// generation on the link: no link-local address, hence no router
// solicitations or MLD reports of the kernel's own in the client's TUN. It
// is optional (IPv6 may be off on the host), and it must follow the MTU:
// an MTU below 1280 takes IPv6 off the link, and raising it brings IPv6
// back with the kernel's defaults.
func linkIPv6Settings(index int) []byte {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET6, nil).AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{in6AddrGenModeNone})
	return request(unix.RTM_NEWLINK, 0, msg, spec)
}

func linkUp(index int) []byte {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	return request(unix.RTM_NEWLINK, 0, msg)
}

func linkDel(index int) []byte {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	return request(unix.RTM_DELLINK, 0, msg)
}

// addrFlags are the flags of vpnd's addresses. IFA_F_NOPREFIXROUTE: the
// kernel would otherwise put the prefix route into the main table, where
// it applies to every uid; vpnd puts it into its own table instead. IPv6
// addresses skip duplicate address detection (IFA_F_NODAD): a TUN address
// is nobody else's, and the client uses it at once, while DAD would leave
// it "tentative" for a second or so.
func addrFlags(p netip.Prefix) uint32 {
	flags := uint32(unix.IFA_F_NOPREFIXROUTE)
	if p.Addr().Is6() {
		flags |= unix.IFA_F_NODAD
	}
	return flags
}

func addr(typ uint16, flags int, index int, p netip.Prefix) []byte {
	msg := nl.NewIfAddrmsg(familyOf(p.Addr()))
	msg.Index = uint32(index)
	msg.Prefixlen = uint8(p.Bits())
	a := p.Addr().AsSlice()
	data := []nl.NetlinkRequestData{msg, nl.NewRtAttr(unix.IFA_LOCAL, a), nl.NewRtAttr(unix.IFA_ADDRESS, a)}
	if typ == unix.RTM_NEWADDR {
		f := addrFlags(p)
		msg.Flags = uint8(f)
		data = append(data, nl.NewRtAttr(unix.IFA_FLAGS, u32(f)))
	}
	return request(typ, flags, data...)
}

// routeHeader is what vpnd puts in the rtmsg of its routes of kind k:
// type and scope. A unicast IPv4 route without a gateway is on the link,
// like `ip route add PREFIX dev X`.
func routeHeader(r manager.Route) (typ, scope uint8) {
	switch r.Kind {
	case manager.Throw:
		return unix.RTN_THROW, unix.RT_SCOPE_UNIVERSE
	case manager.Unreachable:
		return unix.RTN_UNREACHABLE, unix.RT_SCOPE_UNIVERSE
	}
	if !r.Gateway.IsValid() && r.Dst.Addr().Is4() {
		return unix.RTN_UNICAST, unix.RT_SCOPE_LINK
	}
	return unix.RTN_UNICAST, unix.RT_SCOPE_UNIVERSE
}

// putRoute is the RTM_NEWROUTE that adds r to table, or replaces the route
// with r's identity there (NLM_F_REPLACE): the kernel matches a replace on
// family, destination, TOS and metric, as vpnd identifies a route.
func putRoute(table int, r manager.Route) []byte {
	dst := r.Dst.Masked()
	msg := nl.NewRtMsg()
	msg.Family = uint8(familyOf(dst.Addr()))
	msg.Dst_len = uint8(dst.Bits())
	msg.Tos = r.Tos
	msg.Protocol = unix.RTPROT_STATIC
	msg.Type, msg.Scope = routeHeader(r)
	msg.Table = tableByte(table)
	data := []nl.NetlinkRequestData{msg, nl.NewRtAttr(unix.RTA_TABLE, u32(uint32(table)))}
	if dst.Bits() > 0 {
		data = append(data, nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
	}
	if r.Metric != 0 {
		data = append(data, nl.NewRtAttr(unix.RTA_PRIORITY, u32(r.Metric)))
	}
	if r.Kind == manager.Unicast {
		data = append(data, nl.NewRtAttr(unix.RTA_OIF, u32(uint32(r.LinkIndex))))
		if r.Gateway.IsValid() {
			// A TUN is a point-to-point link without neighbours: every
			// gateway is on it. "onlink" says so, so that the kernel does
			// not look for a route to the gateway, which would make a
			// route's success depend on its position in the batch.
			msg.Flags = unix.RTNH_F_ONLINK
			data = append(data, nl.NewRtAttr(unix.RTA_GATEWAY, r.Gateway.AsSlice()))
		}
	}
	return request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, data...)
}

// delRoute is the RTM_DELROUTE that deletes the route with r's identity in
// table, whatever its type, protocol or scope: type "unspec", protocol 0
// and scope "nowhere" are the kernel's wildcards.
func delRoute(table int, r manager.Route) []byte {
	dst := r.Dst.Masked()
	msg := &nl.RtMsg{RtMsg: unix.RtMsg{
		Family: uint8(familyOf(dst.Addr())), Dst_len: uint8(dst.Bits()), Tos: r.Tos,
		Table: tableByte(table), Scope: unix.RT_SCOPE_NOWHERE,
	}}
	data := []nl.NetlinkRequestData{msg, nl.NewRtAttr(unix.RTA_TABLE, u32(uint32(table)))}
	if dst.Bits() > 0 {
		data = append(data, nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
	}
	metric := r.Metric
	if metric == 0 && dst.Addr().Is6() {
		metric = ipv6DefaultMetric // an IPv6 delete without one matches any
	}
	if metric != 0 {
		data = append(data, nl.NewRtAttr(unix.RTA_PRIORITY, u32(metric)))
	}
	return request(unix.RTM_DELROUTE, 0, data...)
}

func tableByte(table int) uint8 {
	if table < 256 {
		return uint8(table)
	}
	return unix.RT_TABLE_UNSPEC
}

func ruleAction(a manager.RuleAction) uint8 {
	if a == manager.Refuse {
		return nl.FR_ACT_UNREACHABLE
	}
	return nl.FR_ACT_TO_TBL
}

// rule is the RTM_NEWRULE or RTM_DELRULE for r. A fib_rule_hdr has
// rtmsg's layout. A rule read with other selectors is deleted with
// exactly the attributes the kernel reported, so that the delete matches
// it and no other rule.
func rule(typ uint16, flags int, r manager.Rule) []byte {
	if r.Selectors != "" {
		req := nl.NewNetlinkRequest(int(typ), flags)
		req.AddRawData([]byte(r.Selectors))
		return req.Serialize()
	}
	msg := &nl.RtMsg{RtMsg: unix.RtMsg{Family: uint8(r.Family), Type: ruleAction(r.Action)}}
	data := []nl.NetlinkRequestData{msg, nl.NewRtAttr(nl.FRA_PRIORITY, u32(uint32(r.Priority)))}
	if r.Action == manager.Lookup {
		msg.Table = tableByte(r.Table)
		data = append(data, nl.NewRtAttr(nl.FRA_TABLE, u32(uint32(r.Table))))
	}
	var uids [8]byte
	binary.NativeEndian.PutUint32(uids[0:], r.UIDStart)
	binary.NativeEndian.PutUint32(uids[4:], r.UIDEnd)
	data = append(data, nl.NewRtAttr(nl.FRA_UID_RANGE, uids[:]))
	if r.Mask != 0 {
		// "fwmark Mark/Mask"
		data = append(data, nl.NewRtAttr(nl.FRA_FWMARK, u32(r.Mark)), nl.NewRtAttr(nl.FRA_FWMASK, u32(r.Mask)))
	}
	return request(typ, flags, data...)
}

// parseRule converts a dumped RTM_NEWRULE. A rule with anything vpnd never
// sets (another action, source or destination, TOS, interfaces, ports, no
// uid range...) carries its whole message body in Selectors.
func parseRule(m syscall.NetlinkMessage) (manager.Rule, bool) {
	d := m.Data
	if len(d) < unix.SizeofRtMsg {
		return manager.Rule{}, false
	}
	h := nl.DeserializeRtMsg(d)
	r := manager.Rule{Family: int(h.Family), Table: int(h.Table)}
	switch h.Type {
	case nl.FR_ACT_TO_TBL:
		r.Action = manager.Lookup
	case nl.FR_ACT_UNREACHABLE:
		r.Action = manager.Refuse
	default:
		r.Action = manager.OtherAction
	}
	attrs, err := nl.ParseRouteAttr(d[unix.SizeofRtMsg:])
	if err != nil {
		return manager.Rule{}, false
	}
	other := h.Dst_len != 0 || h.Src_len != 0 || h.Tos != 0 || h.Flags&unix.FIB_RULE_INVERT != 0 || r.Action == manager.OtherAction
	hasUID := false
	for _, a := range attrs {
		v := a.Value
		switch a.Attr.Type {
		case nl.FRA_TABLE:
			if len(v) == 4 {
				r.Table = int(binary.NativeEndian.Uint32(v))
			}
		case nl.FRA_PRIORITY:
			if len(v) == 4 {
				r.Priority = int(binary.NativeEndian.Uint32(v))
			}
		case nl.FRA_UID_RANGE:
			if len(v) == 8 {
				r.UIDStart, r.UIDEnd, hasUID = binary.NativeEndian.Uint32(v[0:]), binary.NativeEndian.Uint32(v[4:]), true
			}
		case nl.FRA_FWMARK:
			if len(v) == 4 {
				r.Mark = binary.NativeEndian.Uint32(v)
			}
		case nl.FRA_FWMASK:
			if len(v) == 4 {
				r.Mask = binary.NativeEndian.Uint32(v)
			}
		case nl.FRA_PROTOCOL, nl.FRA_SUPPRESS_PREFIXLEN, nl.FRA_SUPPRESS_IFGROUP, unix.FRA_UNSPEC:
			// Not selectors, or defaults.
		default:
			other = true
		}
	}
	if r.Action != manager.Lookup {
		r.Table = 0
	}
	if other || !hasUID || (r.Mask == 0 && r.Mark != 0) {
		r.Selectors = string(d)
	}
	return r, true
}

// fromRoute converts a route of vishvananda/netlink's dump. A route that
// differs from what vpnd makes in something manager.Route does not show
// (protocol, scope, flags, source, next hops) is Foreign.
func fromRoute(k netlink.Route) (manager.Route, bool) {
	var dst netip.Prefix
	switch {
	case k.Dst != nil:
		a, ok := netip.AddrFromSlice(k.Dst.IP)
		if !ok {
			return manager.Route{}, false
		}
		bits, _ := k.Dst.Mask.Size()
		if a.Is4In6() && k.Family == unix.AF_INET {
			a = a.Unmap()
		}
		dst = netip.PrefixFrom(a, bits)
	case k.Family == unix.AF_INET:
		dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	case k.Family == unix.AF_INET6:
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	default:
		return manager.Route{}, false
	}
	r := manager.Route{Dst: dst.Masked(), Tos: uint8(k.Tos), Metric: uint32(k.Priority)}
	if dst.Addr().Is6() && r.Metric == ipv6DefaultMetric {
		r.Metric = 0
	}
	switch k.Type {
	case unix.RTN_UNICAST:
		r.Kind = manager.Unicast
		r.LinkIndex = k.LinkIndex
		if k.Gw != nil {
			if gw, ok := netip.AddrFromSlice(k.Gw); ok {
				if dst.Addr().Is4() {
					gw = gw.Unmap()
				}
				r.Gateway = gw
			}
		}
	case unix.RTN_THROW:
		r.Kind = manager.Throw
	case unix.RTN_UNREACHABLE:
		r.Kind = manager.Unreachable
	default:
		r.Kind = manager.OtherKind
	}
	typ, scope := routeHeader(r)
	// Flags the kernel sets on its own, as the link's state changes.
	const dynamic = unix.RTNH_F_LINKDOWN | unix.RTNH_F_DEAD | unix.RTNH_F_OFFLOAD | unix.RTNH_F_TRAP
	flags := k.Flags &^ dynamic
	wantFlags := 0
	if r.Kind == manager.Unicast && r.Gateway.IsValid() {
		wantFlags = unix.RTNH_F_ONLINK
	}
	r.Foreign = k.Protocol != unix.RTPROT_STATIC || uint8(k.Type) != typ || uint8(k.Scope) != scope ||
		flags != wantFlags || len(k.MultiPath) > 0 || k.Src != nil || r.Kind == manager.OtherKind
	if r.Kind != manager.Unicast {
		// IPv6 reports reject routes on the loopback device; vpnd's have none.
		r.LinkIndex, r.Gateway = 0, netip.Addr{}
	}
	return r, true
}

// fromAddr converts an address of vishvananda/netlink's dump. An address
// without vpnd's flags is Foreign.
func fromAddr(a netlink.Addr) (manager.Addr, bool) {
	if a.IPNet == nil {
		return manager.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return manager.Addr{}, false
	}
	bits, _ := a.Mask.Size()
	if len(a.Mask) == net4Len {
		ip = ip.Unmap()
	}
	p := netip.PrefixFrom(ip, bits)
	want := addrFlags(p)
	return manager.Addr{Prefix: p, Foreign: uint32(a.Flags)&want != want}, true
}

const net4Len = 4
