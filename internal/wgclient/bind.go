package wgclient

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// ProtectFunc asks vpnd to protect the socket fd (the caller keeps it),
// so that its traffic bypasses the VPN. client.(*Client).ProtectFD is one.
type ProtectFunc func(fd int) error

// protectedBind is a conn.Bind whose every socket is protected through
// vpnd before it is even bound, so before anything is sent from it.
//
// wireguard-go's StdNetBind cannot do this: it creates its sockets inside
// Open with a fixed, unexported list of socket options, and hands no
// socket out on Linux. This Bind keeps what matters of it for a client:
// one IPv4 and one IPv6 socket on the same port, recvmmsg and sendmmsg
// batches. It leaves out what a client does without: sticky source
// addresses (IP_PKTINFO, for servers with several addresses), SO_MARK
// (vpnd's protect is the mark).
//
// It sends with UDP GSO where the kernel has it: the TUN's reads come in
// batches, and a run of equal-sized datagrams to one endpoint goes down
// the stack as one buffer of up to 64 segments, which the kernel splits
// as late as it can (on a veth, not at all: the peer's GRO gets it
// whole). The datagrams are not copied: each is one iovec of the message.
// It receives with UDP GRO likewise.
type protectedBind struct {
	protect ProtectFunc

	mu    sync.Mutex
	v4    *net.UDPConn
	v6    *net.UDPConn
	pc4   *ipv4.PacketConn
	pc6   *ipv6.PacketConn
	gso4  bool // UDP_SEGMENT works on v4
	gso6  bool
	noGSO bool // never use GSO (tests)

	msgs sync.Pool // *[]ipv6.Message of conn.IdealBatchSize, for Send
}

var _ conn.Bind = (*protectedBind)(nil)

func newProtectedBind(protect ProtectFunc) *protectedBind {
	b := &protectedBind{protect: protect}
	b.msgs.New = func() any {
		msgs := make([]ipv6.Message, conn.IdealBatchSize)
		for i := range msgs {
			msgs[i].OOB = make([]byte, 0, unix.CmsgSpace(2))
		}
		return &msgs
	}
	return b
}

// socketBufferSize is wireguard-go's: 7 MiB, silently capped by the
// kernel at net.core.{r,w}mem_max (raising the cap needs CAP_NET_ADMIN).
const socketBufferSize = 7 << 20

// listen opens one UDP socket. Control runs after socket(2) and before
// bind(2): the socket is protected there, or not opened at all.
func (b *protectedBind) listen(network string, port int) (*net.UDPConn, int, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketBufferSize)
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, socketBufferSize)
			if network == "udp6" {
				// Leave IPv4 to the IPv4 socket on the same port.
				if err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
					return
				}
			}
			if b.protect != nil {
				err = b.protect(int(fd))
			}
		})
		if cerr != nil {
			return cerr
		}
		return err
	}}
	pc, err := lc.ListenPacket(context.Background(), network, ":"+strconv.Itoa(port))
	if err != nil {
		return nil, 0, err
	}
	uc := pc.(*net.UDPConn)
	return uc, uc.LocalAddr().(*net.UDPAddr).Port, nil
}

// Open opens the IPv4 and IPv6 sockets on port (0: a random one, the
// same for both). A host without IPv6 gets only the IPv4 socket.
func (b *protectedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.v4 != nil || b.v6 != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	for tries := 0; ; tries++ {
		v4, p, err := b.listen("udp4", int(port))
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, 0, fmt.Errorf("open the IPv4 tunnel socket: %w", err)
		}
		if v4 == nil {
			p = int(port)
		}
		v6, p6, err := b.listen("udp6", p)
		if port == 0 && v4 != nil && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
			v4.Close() // the random port is taken for IPv6: try another
			continue
		}
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			if v4 != nil {
				v4.Close()
			}
			return nil, 0, fmt.Errorf("open the IPv6 tunnel socket: %w", err)
		}
		var fns []conn.ReceiveFunc
		if v4 != nil {
			b.v4, b.pc4 = v4, ipv4.NewPacketConn(v4)
			b.gso4 = !b.noGSO && supportsGSO(v4)
			fns = append(fns, b.receiveFunc(b.pc4, !b.noGSO && enableGRO(v4)))
		}
		if v6 != nil {
			b.v6, b.pc6 = v6, ipv6.NewPacketConn(v6)
			b.gso6 = !b.noGSO && supportsGSO(v6)
			fns = append(fns, b.receiveFunc(b.pc6, !b.noGSO && enableGRO(v6)))
			if v4 == nil {
				p = p6
			}
		}
		if len(fns) == 0 {
			return nil, 0, syscall.EAFNOSUPPORT
		}
		return fns, uint16(p), nil
	}
}

type batchReader interface {
	ReadBatch(ms []ipv6.Message, flags int) (int, error)
}

// receiveFunc reads a batch of datagrams with one recvmmsg. wireguard-go
// calls each ReceiveFunc from one goroutine, so its messages are its own.
//
// With UDP GRO on the socket, the kernel hands over runs of datagrams
// from one sender as one buffer (the peer's GSO sends arrive whole); each
// is then cut back into datagrams. Without GRO, the kernel would have to
// segment them on the way in, one skb each.
func (b *protectedBind) receiveFunc(br batchReader, gro bool) conn.ReceiveFunc {
	msgs := make([]ipv6.Message, conn.IdealBatchSize)
	for i := range msgs {
		msgs[i].Buffers = make(net.Buffers, 1)
		msgs[i].OOB = make([]byte, unix.CmsgSpace(4))
	}
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		ms := msgs[:len(bufs)]
		for i := range ms {
			ms[i].Buffers[0] = bufs[i]
			ms[i].OOB = ms[i].OOB[:cap(ms[i].OOB)]
		}
		readAt := 0
		if gro {
			// Read few coalesced messages into the last buffers and
			// spread their segments over the batch from the front.
			readAt = len(ms) - (len(ms)+maxGSOSegments-1)/maxGSOSegments
		}
		got, err := br.ReadBatch(ms[readAt:], 0)
		if err != nil {
			return 0, err
		}
		n := 0
		for i := readAt; i < readAt+got; i++ {
			m := &ms[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok || m.N == 0 {
				continue
			}
			ap := ua.AddrPort()
			ep := &endpoint{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
			seg := m.N
			if gro {
				if s := segmentSize(m.OOB[:m.NN]); s > 0 {
					seg = s
				}
			}
			for start := 0; start < m.N; start += seg {
				end := min(start+seg, m.N)
				if n > i || (n == i && end < m.N) {
					// Cannot happen with the sizes above: a segment
					// would overwrite a message not yet split.
					return n, errors.New("coalesced datagrams overflow the batch")
				}
				sizes[n] = copy(bufs[n], m.Buffers[0][start:end])
				eps[n] = ep
				n++
			}
		}
		return n, nil
	}
}

// segmentSize returns the UDP_GRO segment size in a control message, or 0.
func segmentSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO {
			switch {
			case len(data) >= 4:
				return int(binary.NativeEndian.Uint32(data))
			case len(data) >= 2:
				return int(binary.NativeEndian.Uint16(data))
			}
		}
		oob = rest
	}
	return 0
}

// Close closes the sockets; the ReceiveFuncs then return net.ErrClosed.
func (b *protectedBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	if b.v4 != nil {
		errs = append(errs, b.v4.Close())
	}
	if b.v6 != nil {
		errs = append(errs, b.v6.Close())
	}
	b.v4, b.v6, b.pc4, b.pc6 = nil, nil, nil, nil
	return errors.Join(errs...)
}

// SetMark does nothing: setting SO_MARK needs CAP_NET_ADMIN, and vpnd's
// protect already marks the sockets.
func (b *protectedBind) SetMark(uint32) error { return nil }

type batchWriter interface {
	WriteBatch(ms []ipv6.Message, flags int) (int, error)
}

// Send sends bufs to ep with sendmmsg, runs of equal-sized datagrams as
// one GSO message each where the kernel supports it.
func (b *protectedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	is4 := e.Addr().Is4()
	b.mu.Lock()
	var w batchWriter
	gso := b.gso6
	if is4 {
		gso = b.gso4
		if b.pc4 != nil {
			w = b.pc4
		}
	} else if b.pc6 != nil {
		w = b.pc6
	}
	b.mu.Unlock()
	if w == nil {
		return syscall.EAFNOSUPPORT
	}
	var ua *net.UDPAddr
	if is4 {
		ip := e.Addr().As4()
		ua = &net.UDPAddr{IP: ip[:], Port: int(e.Port())}
	} else {
		ip := e.Addr().As16()
		ua = &net.UDPAddr{IP: ip[:], Port: int(e.Port())}
	}
	mp := b.msgs.Get().(*[]ipv6.Message)
	defer b.msgs.Put(mp)
	err := sendBatch(w, fillMessages(*mp, bufs, ua, gso))
	if gso && isGSOError(err) {
		// The route's device cannot take UDP_SEGMENT: send plainly,
		// from now on.
		b.mu.Lock()
		if is4 {
			b.gso4 = false
		} else {
			b.gso6 = false
		}
		b.mu.Unlock()
		err = sendBatch(w, fillMessages(*mp, bufs, ua, false))
	}
	return err
}

// maxGSOSegments is the kernel's limit of segments in one UDP_SEGMENT
// send; maxGSOBytes keeps the whole within one IP datagram's 64 KiB.
const (
	maxGSOSegments = 64
	maxGSOBytes    = 65535 - 40 - 8
)

// fillMessages turns bufs into messages to ua. With gso, each message
// carries a run of datagrams of one size (the last may be shorter) as its
// iovecs, with a UDP_SEGMENT control message of that size.
func fillMessages(ms []ipv6.Message, bufs [][]byte, ua *net.UDPAddr, gso bool) []ipv6.Message {
	n := 0
	for i := 0; i < len(bufs); n++ {
		j, total := i+1, len(bufs[i])
		if gso {
			size := len(bufs[i])
			for j < len(bufs) && j-i < maxGSOSegments && len(bufs[j]) <= size && total+len(bufs[j]) <= maxGSOBytes {
				total += len(bufs[j])
				j++
				if len(bufs[j-1]) < size {
					break // a shorter datagram ends the run
				}
			}
		}
		m := &ms[n]
		m.Buffers = bufs[i:j]
		m.Addr = ua
		m.OOB = m.OOB[:0]
		if j-i > 1 {
			m.OOB = appendSegmentSize(m.OOB, uint16(len(bufs[i])))
		}
		i = j
	}
	return ms[:n]
}

// appendSegmentSize appends a UDP_SEGMENT control message.
func appendSegmentSize(oob []byte, size uint16) []byte {
	start := len(oob)
	oob = slices.Grow(oob, unix.CmsgSpace(2))[:start+unix.CmsgSpace(2)]
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[start]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[start+unix.CmsgLen(0):], size)
	return oob
}

func sendBatch(w batchWriter, ms []ipv6.Message) error {
	for len(ms) > 0 {
		n, err := w.WriteBatch(ms, 0)
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

// supportsGSO reports whether the kernel knows UDP_SEGMENT on c.
func supportsGSO(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		_, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	}); err != nil {
		return false
	}
	return serr == nil
}

// enableGRO turns UDP_GRO on, and reports whether it is on.
func enableGRO(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var on bool
	if err := rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil {
			v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO)
			on = err == nil && v == 1
		}
	}); err != nil {
		return false
	}
	return on
}

// isGSOError: EIO is what udp_send_skb returns when the outgoing device
// cannot checksum, which UDP_SEGMENT requires.
func isGSOError(err error) bool {
	return errors.Is(err, unix.EIO)
}

// ParseEndpoint reads an "address:port" endpoint.
func (b *protectedBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &endpoint{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// BatchSize is how many datagrams one receive or send may carry.
func (b *protectedBind) BatchSize() int { return conn.IdealBatchSize }

// endpoint is a peer's address. The source address is left to the
// kernel's routing (no sticky source): a client has one way out.
type endpoint struct{ netip.AddrPort }

var _ conn.Endpoint = (*endpoint)(nil)

func (e *endpoint) ClearSrc()           {}
func (e *endpoint) SrcToString() string { return "" }
func (e *endpoint) DstToString() string { return e.AddrPort.String() }
func (e *endpoint) DstToBytes() []byte  { b, _ := e.AddrPort.MarshalBinary(); return b }
func (e *endpoint) DstIP() netip.Addr   { return e.Addr() }
func (e *endpoint) SrcIP() netip.Addr   { return netip.Addr{} }
