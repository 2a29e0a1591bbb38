package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Route batches. A VPN may carry 10,000 routes. Added one request at a
// time, each waiting for its acknowledgement, they took about 200 ms on
// the development machine; AddRoutes sends them in batches of batchSize
// requests per sendmsg and then collects the acknowledgements, which the
// kernel sends one per request, in order.
const (
	batchSize = 256
	// batchRcvBuf holds a batch's acknowledgements (an error ack carries
	// the whole failed request) with room to spare.
	batchRcvBuf = 4 << 20
	// smallBatch is below what is worth a socket of its own.
	smallBatch = 8
)

// AddRoutes adds rs in order and returns the routes the kernel added (with
// host bits masked, as the kernel holds them),
// which are all of them unless err is set. err is the first failure, by
// position in rs; the kernel still tried every other route, and those it
// added are in the result, so that the caller can remove exactly them.
// Each route is installed exactly as AddRoute would install it.
func (n *Netlink) AddRoutes(rs []Route) ([]Route, error) {
	if len(rs) <= smallBatch {
		added := make([]Route, 0, len(rs))
		var first error
		for _, r := range rs {
			if err := n.AddRoute(r); err != nil {
				if first == nil {
					first = err
				}
				continue
			}
			r.Dst = r.Dst.Masked()
			added = append(added, r)
		}
		return added, first
	}
	for _, r := range rs {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("add route %s: %w", r, err)
		}
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("add routes: socket: %w", err)
	}
	defer unix.Close(fd)
	// SO_RCVBUFFORCE needs CAP_NET_ADMIN, which vpnd has; fall back to
	// the capped SO_RCVBUF otherwise.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, batchRcvBuf) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, batchRcvBuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("add routes: bind: %w", err)
	}
	errs := make([]error, len(rs))
	buf := make([]byte, 0, batchSize*128)
	rbuf := make([]byte, 1<<16)
	for start := 0; start < len(rs); start += batchSize {
		end := min(start+batchSize, len(rs))
		buf = buf[:0]
		for i := start; i < end; i++ {
			buf = appendNewRoute(buf, rs[i], uint32(i+1))
		}
		if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, fmt.Errorf("add routes: send: %w", err)
		}
		if err := readAcks(fd, rbuf, start, end, errs); err != nil {
			// Without the acknowledgements, ask the kernel which of rs
			// it has, so that the caller can remove exactly those.
			return n.present(rs), fmt.Errorf("add routes: %w", err)
		}
	}
	added := make([]Route, 0, len(rs))
	var first error
	for i, r := range rs {
		if errs[i] != nil {
			if first == nil {
				first = fmt.Errorf("add route %s: %w", r, errs[i])
			}
			continue
		}
		r.Dst = r.Dst.Masked() // as the kernel holds it
		added = append(added, r)
	}
	return added, first
}

// present returns the routes of rs that the kernel has.
func (n *Netlink) present(rs []Route) []Route {
	have := map[Route]bool{}
	listed := map[int]bool{}
	for _, r := range rs {
		if listed[r.Table] {
			continue
		}
		listed[r.Table] = true
		got, err := ListRoutes(r.Table)
		if err != nil {
			n.log.Error("list routes after a failed batch", zap.Int("table", r.Table), zap.Error(err))
			continue
		}
		for _, k := range got {
			have[k] = true
		}
	}
	var out []Route
	for _, r := range rs {
		r.Dst = r.Dst.Masked()
		if have[r] {
			out = append(out, r)
		}
	}
	return out
}

// readAcks reads acknowledgements until every request of sequence number
// start+1 to end has one, and records each one's error in errs.
func readAcks(fd int, rbuf []byte, start, end int, errs []error) error {
	pending := end - start
	seen := make([]bool, end-start)
	for pending > 0 {
		n, _, err := unix.Recvfrom(fd, rbuf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive acknowledgements: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rbuf[:n])
		if err != nil {
			return fmt.Errorf("parse acknowledgements: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			i := int(m.Header.Seq) - 1
			if i < start || i >= end || seen[i-start] {
				continue
			}
			seen[i-start] = true
			pending--
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				errs[i] = unix.Errno(-code)
			}
		}
	}
	return nil
}

// appendNewRoute appends an RTM_NEWROUTE request for r with sequence
// number seq. It carries what nlRoute gives netlink.RouteAdd: protocol
// static, scope link for an IPv4 route on the link without a gateway,
// type throw or unicast, the table as an attribute, the destination with
// its host bits masked, and the link and gateway of a unicast route.
func appendNewRoute(b []byte, r Route, seq uint32) []byte {
	dst := r.Dst.Masked()
	hdr := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, set below
	b = binary.NativeEndian.AppendUint16(b, unix.RTM_NEWROUTE)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel fills it in
	typ, scope := uint8(unix.RTN_UNICAST), uint8(unix.RT_SCOPE_UNIVERSE)
	if r.Throw {
		typ = unix.RTN_THROW
	} else if !r.Gateway.IsValid() && dst.Addr().Is4() {
		scope = unix.RT_SCOPE_LINK
	}
	table := uint8(unix.RT_TABLE_UNSPEC)
	if r.Table < 256 {
		table = uint8(r.Table)
	}
	b = append(b, uint8(r.Family()), uint8(dst.Bits()), 0, 0, table, unix.RTPROT_STATIC, scope, typ)
	b = binary.NativeEndian.AppendUint32(b, 0) // rtm_flags
	b = appendAttr(b, unix.RTA_TABLE, binary.NativeEndian.AppendUint32(nil, uint32(r.Table)))
	b = appendAttr(b, unix.RTA_DST, dst.Addr().AsSlice())
	if !r.Throw {
		b = appendAttr(b, unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, uint32(r.LinkIndex)))
		if r.Gateway.IsValid() {
			b = appendAttr(b, unix.RTA_GATEWAY, r.Gateway.AsSlice())
		}
	}
	binary.NativeEndian.PutUint32(b[hdr:], uint32(len(b)-hdr))
	return b
}

// appendAttr appends one rtattr, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	l := unix.SizeofRtAttr + len(v)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for l%unix.RTA_ALIGNTO != 0 {
		b = append(b, 0)
		l++
	}
	return b
}
