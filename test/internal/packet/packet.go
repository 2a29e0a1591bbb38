// Package packet parses and builds the few raw IP packets the traffic
// tests need: IPv4 and IPv6 carrying UDP or TCP, as read from and written
// to an IFF_NO_PI TUN device. It is deliberately small; anything it does
// not understand is reported as such, never guessed at.
package packet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// IP protocol numbers.
const (
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Packet is the part of an IP packet the tests look at.
type Packet struct {
	Family   int // 4 or 6
	Proto    int // next header of the IPv6 fixed header, or IPv4's protocol
	Src      netip.Addr
	Dst      netip.Addr
	SrcPort  uint16 // UDP and TCP only
	DstPort  uint16
	Payload  []byte // UDP or TCP payload
	TCPFlags byte
}

// Parse decodes an IPv4 or IPv6 packet. Extension headers are not
// followed: a packet with one reports it as Proto and carries no ports.
func Parse(b []byte) (Packet, error) {
	if len(b) < 1 {
		return Packet{}, errors.New("empty packet")
	}
	var p Packet
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return p, fmt.Errorf("IPv4 packet of %d bytes", len(b))
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < 20 || total < ihl || total > len(b) {
			return p, fmt.Errorf("IPv4 header length %d, total %d, have %d", ihl, total, len(b))
		}
		p.Family, p.Proto = 4, int(b[9])
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		l4 = b[ihl:total]
	case 6:
		if len(b) < 40 {
			return p, fmt.Errorf("IPv6 packet of %d bytes", len(b))
		}
		plen := int(binary.BigEndian.Uint16(b[4:6]))
		if 40+plen > len(b) {
			return p, fmt.Errorf("IPv6 payload length %d, have %d", plen, len(b)-40)
		}
		p.Family, p.Proto = 6, int(b[6])
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40 : 40+plen]
	default:
		return p, fmt.Errorf("IP version %d", b[0]>>4)
	}
	switch p.Proto {
	case ProtoUDP:
		if len(l4) < 8 {
			return p, errors.New("short UDP header")
		}
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
		p.Payload = l4[8:]
	case ProtoTCP:
		if len(l4) < 20 {
			return p, errors.New("short TCP header")
		}
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
		off := int(l4[12]>>4) * 4
		if off < 20 || off > len(l4) {
			return p, fmt.Errorf("TCP data offset %d", off)
		}
		p.TCPFlags = l4[13]
		p.Payload = l4[off:]
	}
	return p, nil
}

// UDP builds an IP packet (IPv4 or IPv6, after src's family) carrying one
// UDP datagram, with correct header and UDP checksums.
func UDP(src, dst netip.AddrPort, payload []byte) ([]byte, error) {
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if s.Is4() != d.Is4() {
		return nil, fmt.Errorf("mixed families %s -> %s", s, d)
	}
	udpLen := 8 + len(payload)
	if udpLen > 0xffff-40 {
		return nil, fmt.Errorf("payload of %d bytes", len(payload))
	}
	udp := make([]byte, udpLen)
	binary.BigEndian.PutUint16(udp[0:2], src.Port())
	binary.BigEndian.PutUint16(udp[2:4], dst.Port())
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpLen))
	copy(udp[8:], payload)

	// The pseudo-header: addresses, protocol and UDP length.
	sum := sumBytes(0, s.AsSlice())
	sum = sumBytes(sum, d.AsSlice())
	sum += ProtoUDP + uint32(udpLen)
	ck := fold(sumBytes(sum, udp))
	if ck == 0 {
		ck = 0xffff // 0 means "no checksum" in IPv4 and is invalid in IPv6
	}
	binary.BigEndian.PutUint16(udp[6:8], ck)

	if s.Is4() {
		h := make([]byte, 20, 20+udpLen)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:4], uint16(20+udpLen))
		h[8] = 64 // TTL
		h[9] = ProtoUDP
		copy(h[12:16], s.AsSlice())
		copy(h[16:20], d.AsSlice())
		binary.BigEndian.PutUint16(h[10:12], fold(sumBytes(0, h)))
		return append(h, udp...), nil
	}
	h := make([]byte, 40, 40+udpLen)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(udpLen))
	h[6] = ProtoUDP
	h[7] = 64 // hop limit
	copy(h[8:24], s.AsSlice())
	copy(h[24:40], d.AsSlice())
	return append(h, udp...), nil
}

func sumBytes(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// String renders the packet as the words the rawclient prints:
// "FAMILY PROTO SRC SPORT DST DPORT PAYLOAD" with the payload quoted.
func (p Packet) String() string {
	proto := fmt.Sprint(p.Proto)
	switch p.Proto {
	case ProtoUDP:
		proto = "udp"
	case ProtoTCP:
		proto = "tcp"
	}
	return fmt.Sprintf("%d %s %s %d %s %d %q", p.Family, proto, p.Src, p.SrcPort, p.Dst, p.DstPort, p.Payload)
}

// ICMP and ICMPv6 echo types.
const (
	ICMPEchoRequest   = 8
	ICMPEchoReply     = 0
	ICMPv6EchoRequest = 128
	ICMPv6EchoReply   = 129
	protoICMP         = 1
)

// Echo is an ICMP or ICMPv6 echo request or reply.
type Echo struct {
	Family   int // 4 or 6
	Src, Dst netip.Addr
	TTL      int // or hop limit
	Type     byte
	Code     byte
	ID, Seq  uint16
	Data     []byte
}

// EchoRequest builds an echo request from src to dst (ICMP in IPv4, or
// ICMPv6 in IPv6, after src's family), with correct checksums.
func EchoRequest(src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	m := make([]byte, 8+len(data))
	binary.BigEndian.PutUint16(m[4:6], id)
	binary.BigEndian.PutUint16(m[6:8], seq)
	copy(m[8:], data)
	if src.Is4() {
		m[0] = ICMPEchoRequest
		binary.BigEndian.PutUint16(m[2:4], fold(sumBytes(0, m)))
		h := make([]byte, 20, 20+len(m))
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:4], uint16(20+len(m)))
		h[8], h[9] = 64, protoICMP
		copy(h[12:16], src.AsSlice())
		copy(h[16:20], dst.AsSlice())
		binary.BigEndian.PutUint16(h[10:12], fold(sumBytes(0, h)))
		return append(h, m...)
	}
	m[0] = ICMPv6EchoRequest
	binary.BigEndian.PutUint16(m[2:4], fold(sumBytes(icmpv6Pseudo(src, dst, len(m)), m)))
	h := make([]byte, 40, 40+len(m))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(len(m)))
	h[6], h[7] = ProtoICMPv6, 64
	copy(h[8:24], src.AsSlice())
	copy(h[24:40], dst.AsSlice())
	return append(h, m...)
}

// icmpv6Pseudo is the sum of ICMPv6's pseudo-header: addresses,
// upper-layer length, next header.
func icmpv6Pseudo(src, dst netip.Addr, n int) uint32 {
	return sumBytes(sumBytes(0, src.AsSlice()), dst.AsSlice()) + uint32(n) + ProtoICMPv6
}

// ParseEcho decodes an echo request or reply and checks every checksum it
// carries: IPv4's header checksum, ICMP's, ICMPv6's over the
// pseudo-header. Anything else is an error.
func ParseEcho(b []byte) (Echo, error) {
	var e Echo
	var m []byte
	switch {
	case len(b) >= 20 && b[0] == 0x45:
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if total != len(b) || b[9] != protoICMP {
			return e, fmt.Errorf("IPv4 total length %d of %d bytes, protocol %d", total, len(b), b[9])
		}
		if fold(sumBytes(0, b[:20])) != 0 {
			return e, errors.New("bad IPv4 header checksum")
		}
		e.Family, e.TTL = 4, int(b[8])
		e.Src, e.Dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		m = b[20:]
		if len(m) >= 8 && fold(sumBytes(0, m)) != 0 {
			return e, errors.New("bad ICMP checksum")
		}
	case len(b) >= 40 && b[0]>>4 == 6:
		if int(binary.BigEndian.Uint16(b[4:6])) != len(b)-40 || b[6] != ProtoICMPv6 {
			return e, fmt.Errorf("IPv6 payload length %d of %d bytes, next header %d", binary.BigEndian.Uint16(b[4:6]), len(b)-40, b[6])
		}
		e.Family, e.TTL = 6, int(b[7])
		e.Src, e.Dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		m = b[40:]
		if len(m) >= 8 && fold(sumBytes(icmpv6Pseudo(e.Src, e.Dst, len(m)), m)) != 0 {
			return e, errors.New("bad ICMPv6 checksum")
		}
	default:
		return e, fmt.Errorf("not an IPv4 (without options) or IPv6 packet: % x", b[:min(len(b), 8)])
	}
	if len(m) < 8 {
		return e, errors.New("short ICMP header")
	}
	e.Type, e.Code = m[0], m[1]
	e.ID, e.Seq = binary.BigEndian.Uint16(m[4:6]), binary.BigEndian.Uint16(m[6:8])
	e.Data = m[8:]
	return e, nil
}
