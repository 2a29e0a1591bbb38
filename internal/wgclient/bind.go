package wgclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"

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
// (vpnd's protect is the mark) and UDP GSO/GRO (no use while the TUN
// side has no offloads and hands over one packet at a time).
type protectedBind struct {
	protect ProtectFunc

	mu  sync.Mutex
	v4  *net.UDPConn
	v6  *net.UDPConn
	pc4 *ipv4.PacketConn
	pc6 *ipv6.PacketConn

	msgs sync.Pool // *[]ipv6.Message of conn.IdealBatchSize, for Send
}

var _ conn.Bind = (*protectedBind)(nil)

func newProtectedBind(protect ProtectFunc) *protectedBind {
	b := &protectedBind{protect: protect}
	b.msgs.New = func() any {
		msgs := make([]ipv6.Message, conn.IdealBatchSize)
		for i := range msgs {
			msgs[i].Buffers = make(net.Buffers, 1)
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
			fns = append(fns, b.receiveFunc(b.pc4))
		}
		if v6 != nil {
			b.v6, b.pc6 = v6, ipv6.NewPacketConn(v6)
			fns = append(fns, b.receiveFunc(b.pc6))
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
func (b *protectedBind) receiveFunc(br batchReader) conn.ReceiveFunc {
	msgs := make([]ipv6.Message, conn.IdealBatchSize)
	for i := range msgs {
		msgs[i].Buffers = make(net.Buffers, 1)
	}
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		ms := msgs[:len(bufs)]
		for i := range ms {
			ms[i].Buffers[0] = bufs[i]
		}
		n, err := br.ReadBatch(ms, 0)
		if err != nil {
			return 0, err
		}
		for i := 0; i < n; i++ {
			sizes[i] = ms[i].N
			ua, ok := ms[i].Addr.(*net.UDPAddr)
			if sizes[i] == 0 || !ok {
				sizes[i] = 0
				continue
			}
			ap := ua.AddrPort()
			eps[i] = &endpoint{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
		}
		return n, nil
	}
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

// Send sends bufs to ep with sendmmsg.
func (b *protectedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	var w batchWriter
	var ua *net.UDPAddr
	if e.Addr().Is4() {
		if b.pc4 != nil {
			w = b.pc4
		}
		ip := e.Addr().As4()
		ua = &net.UDPAddr{IP: ip[:], Port: int(e.Port())}
	} else {
		if b.pc6 != nil {
			w = b.pc6
		}
		ip := e.Addr().As16()
		ua = &net.UDPAddr{IP: ip[:], Port: int(e.Port())}
	}
	b.mu.Unlock()
	if w == nil {
		return syscall.EAFNOSUPPORT
	}
	mp := b.msgs.Get().(*[]ipv6.Message)
	defer b.msgs.Put(mp)
	ms := (*mp)[:len(bufs)]
	for i := range ms {
		ms[i].Buffers[0] = bufs[i]
		ms[i].Addr = ua
	}
	for len(ms) > 0 {
		n, err := w.WriteBatch(ms, 0)
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
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
