package sim

import (
	"encoding/binary"

	"github.com/vpnd/vpnd/internal/manager"
)

// The virtio_net_hdr of a simulated TUN with VnetHdr (the config's
// offload). A TUN with IFF_VNET_HDR puts this 10-byte header (struct
// virtio_net_hdr, in the host's byte order) before every packet, both
// ways:
//
//	flags       u8   VIRTIO_NET_HDR_F_NEEDS_CSUM (1): the checksum at
//	                 csum_start+csum_offset is still to be completed
//	gso_type    u8   VIRTIO_NET_HDR_GSO_NONE (0), or TCPV4, UDP, TCPV6...
//	hdr_len     u16  length of the headers to copy into each segment
//	gso_size    u16  payload of each segment
//	csum_start  u16  where the checksummed data starts
//	csum_offset u16  where, from csum_start, the checksum goes
//
// The simulated host sends only echo replies, whole and checksummed, so
// its header is all zeros: no flag, GSO_NONE, as Linux's own for such a
// packet. Of what the app writes it honours what a TUN would for an echo
// request: a header of GSO_NONE, with or without NEEDS_CSUM (the model
// then completes the checksum as the device would). A GSO packet (TCP or
// UDP, which the host drops anyway), or a header that is short or whose
// checksum position lies outside the packet, is dropped: a TUN refuses
// such a write with EINVAL, but a socket pair cannot fail a write that
// it has already taken.

const (
	vnetHdrFNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetHdrGSONone    = 0 // VIRTIO_NET_HDR_GSO_NONE
)

// fromVnetHdr returns the packet behind the header of msg, a message the
// client wrote, with its checksum completed if the header asks for it; ok
// is false if a TUN would not take msg.
func fromVnetHdr(msg []byte) (pkt []byte, ok bool) {
	if len(msg) < manager.VnetHdrLen {
		return nil, false
	}
	h, pkt := msg[:manager.VnetHdrLen], msg[manager.VnetHdrLen:]
	if h[1] != vnetHdrGSONone {
		return nil, false
	}
	if h[0]&vnetHdrFNeedsCsum != 0 {
		start := int(binary.NativeEndian.Uint16(h[6:8]))
		at := start + int(binary.NativeEndian.Uint16(h[8:10]))
		if at+2 > len(pkt) {
			return nil, false
		}
		// The field holds the pseudo-header's sum, not complemented: the
		// sum from start to the end, folded and complemented, is the
		// checksum.
		binary.BigEndian.PutUint16(pkt[at:at+2], checksum(0, pkt[start:]))
	}
	return pkt, true
}

// toVnetHdr returns pkt, a whole and checksummed packet for the client,
// behind a header that says so: all zeros.
func toVnetHdr(pkt []byte) []byte {
	out := make([]byte, manager.VnetHdrLen+len(pkt))
	copy(out[manager.VnetHdrLen:], pkt)
	return out
}
