package main

import (
	"encoding/binary"
	"net/netip"
)

// echoRequest builds an IPv4 packet carrying an ICMP echo request.
func echoRequest(src, dst [4]byte, id, seq uint16, data []byte) []byte {
	p := make([]byte, 28+len(data))
	p[0], p[8], p[9] = 0x45, 64, 1 // IPv4 without options; TTL; ICMP
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	copy(p[12:16], src[:])
	copy(p[16:20], dst[:])
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20]))
	p[20] = 8 // echo request
	binary.BigEndian.PutUint16(p[24:26], id)
	binary.BigEndian.PutUint16(p[26:28], seq)
	copy(p[28:], data)
	binary.BigEndian.PutUint16(p[22:24], checksum(p[20:]))
	return p
}

// echoReply is what parseEchoReply finds in an ICMP echo reply.
type echoReply struct {
	src     netip.Addr
	id, seq uint16
}

// parseEchoReply reports whether p is an IPv4 packet carrying an ICMP echo
// reply, and what it says.
func parseEchoReply(p []byte) (echoReply, bool) {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != 1 {
		return echoReply{}, false
	}
	hl := int(p[0]&0x0f) * 4
	if hl < 20 || len(p) < hl+8 || p[hl] != 0 { // type 0: echo reply
		return echoReply{}, false
	}
	return echoReply{
		src: netip.AddrFrom4([4]byte(p[12:16])),
		id:  binary.BigEndian.Uint16(p[hl+4:]),
		seq: binary.BigEndian.Uint16(p[hl+6:]),
	}, true
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
