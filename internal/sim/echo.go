package sim

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync/atomic"
)

// The simulated host behind a simulated TUN. An app's packets go nowhere in
// simulation mode, but the app must still be able to see that its tunnel
// works, so the host answers the one kind of packet every host answers
// about itself: an ICMP or ICMPv6 echo request to one of the link's own
// addresses. Everything else is dropped, silently, as a host drops what
// it has no socket for (no port-unreachable errors either: those would be
// answers the app might mistake for a peer).
//
// Echo checks what a host's stack checks before it answers: the IP header
// (version, lengths, IPv4's header checksum), the ICMP checksum (ICMPv6's
// over the pseudo-header), a sender that may be answered, a destination
// that is the link's own. It does not reassemble fragments, follow IPv6
// extension headers or fragment its answer: a request that is fragmented,
// carries an extension header, or whose answer would not fit the link's
// MTU, is dropped.

// Protocol numbers and ICMP types that Echo knows.
const (
	protoICMP         = 1
	protoICMPv6       = 58
	icmpEchoReply     = 0
	icmpEchoRequest   = 8
	icmpv6EchoRequest = 128
	icmpv6EchoReply   = 129
	// replyTTL is the TTL or hop limit of an answer, Linux's default.
	replyTTL = 64
)

// ipv4ID numbers the IPv4 replies, as a host numbers the datagrams it
// sends.
var ipv4ID atomic.Uint32

// Echo answers pkt, a packet the client wrote into the simulated TUN l:
// an echo reply if pkt is an echo request to one of l's addresses, nothing
// otherwise. It is sim.Options.Packet for `vpnd --sim`. The reply is a new
// slice: pkt is the caller's buffer.
func Echo(l Link, pkt []byte) [][]byte {
	if len(pkt) == 0 {
		return nil
	}
	var reply []byte
	switch pkt[0] >> 4 {
	case 4:
		reply = echo4(l, pkt)
	case 6:
		reply = echo6(l, pkt)
	}
	if reply == nil || len(reply) > l.MTU {
		return nil
	}
	return [][]byte{reply}
}

// echo4 answers an ICMP echo request in an IPv4 packet.
func echo4(l Link, pkt []byte) []byte {
	if len(pkt) < 20 {
		return nil
	}
	ihl := int(pkt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if ihl < 20 || total < ihl || total > len(pkt) {
		return nil
	}
	if checksum(0, pkt[:ihl]) != 0 {
		return nil // a bad header checksum
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
		return nil // a fragment: more fragments, or an offset
	}
	if pkt[9] != protoICMP {
		return nil
	}
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	dst := netip.AddrFrom4([4]byte(pkt[16:20]))
	if !answerable(src) || !l.owns(dst) {
		return nil
	}
	icmp := pkt[ihl:total]
	if len(icmp) < 8 || icmp[0] != icmpEchoRequest || checksum(0, icmp) != 0 {
		return nil
	}

	reply := make([]byte, 20+len(icmp))
	h := reply[:20]
	h[0] = 0x45   // version 4, no options
	h[1] = pkt[1] // the request's TOS, as Linux answers
	binary.BigEndian.PutUint16(h[2:4], uint16(len(reply)))
	// As Linux's echo replies: a fresh identification, fragments allowed.
	binary.BigEndian.PutUint16(h[4:6], uint16(ipv4ID.Add(1)))
	h[8] = replyTTL
	h[9] = protoICMP
	copy(h[12:16], dst.AsSlice())
	copy(h[16:20], src.AsSlice())
	binary.BigEndian.PutUint16(h[10:12], checksum(0, h))

	m := reply[20:]
	copy(m, icmp) // code, identifier, sequence number and data, unchanged
	m[0] = icmpEchoReply
	m[2], m[3] = 0, 0
	binary.BigEndian.PutUint16(m[2:4], checksum(0, m))
	return reply
}

// echo6 answers an ICMPv6 echo request in an IPv6 packet with no extension
// header.
func echo6(l Link, pkt []byte) []byte {
	if len(pkt) < 40 {
		return nil
	}
	plen := int(binary.BigEndian.Uint16(pkt[4:6]))
	if 40+plen > len(pkt) || pkt[6] != protoICMPv6 {
		return nil
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	dst := netip.AddrFrom16([16]byte(pkt[24:40]))
	if !answerable(src) || !l.owns(dst) {
		return nil
	}
	icmp := pkt[40 : 40+plen]
	if len(icmp) < 8 || icmp[0] != icmpv6EchoRequest || checksum(pseudoHeader6(src, dst, len(icmp)), icmp) != 0 {
		return nil
	}

	reply := make([]byte, 40+len(icmp))
	h := reply[:40]
	// Version 6 and the request's traffic class; flow label 0.
	tclass := pkt[0]<<4 | pkt[1]>>4
	h[0] = 6<<4 | tclass>>4
	h[1] = tclass << 4
	binary.BigEndian.PutUint16(h[4:6], uint16(len(icmp)))
	h[6] = protoICMPv6
	h[7] = replyTTL
	copy(h[8:24], dst.AsSlice())
	copy(h[24:40], src.AsSlice())

	m := reply[40:]
	copy(m, icmp)
	m[0] = icmpv6EchoReply
	m[2], m[3] = 0, 0
	binary.BigEndian.PutUint16(m[2:4], checksum(pseudoHeader6(dst, src, len(m)), m))
	return reply
}

// owns reports whether a is one of the link's own addresses.
func (l Link) owns(a netip.Addr) bool {
	return slices.ContainsFunc(l.Addresses, func(p netip.Prefix) bool { return p.Addr() == a })
}

// answerable reports whether a host would answer a packet from src. Linux
// drops, as martians, packets from addresses no packet may come from:
// IPv4's 0.0.0.0/8 and limited broadcast, the IPv6 unspecified address,
// multicast, IPv4-mapped IPv6 addresses, and loopback arriving on any
// other link than lo.
func answerable(src netip.Addr) bool {
	switch {
	case !src.IsValid(), src.IsMulticast(), src.IsLoopback(), src.Is4In6():
		return false
	case src.Is4():
		return src.As4()[0] != 0 && src != netip.AddrFrom4([4]byte{255, 255, 255, 255})
	default:
		return !src.IsUnspecified()
	}
}

// pseudoHeader6 is the partial sum of ICMPv6's pseudo-header (RFC 8200
// section 8.1): source, destination, upper-layer length, next header.
func pseudoHeader6(src, dst netip.Addr, length int) uint32 {
	var sum uint32
	sum = addWords(sum, src.AsSlice())
	sum = addWords(sum, dst.AsSlice())
	sum += uint32(length>>16) + uint32(length&0xffff)
	return sum + protoICMPv6
}

// checksum is the Internet checksum (RFC 1071) of b on top of the partial
// sum initial. Over data that carries a correct checksum it is 0.
func checksum(initial uint32, b []byte) uint16 {
	sum := addWords(initial, b)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// addWords adds b to sum as big-endian 16-bit words, a last odd byte
// padded with zero.
func addWords(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
		if sum >= 1<<31 {
			sum = sum>>16 + sum&0xffff // never overflow, whatever the length
		}
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}
