package wgclient

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/vpnd/vpnd/protocol"
)

// vpndTUN is the TUN device that vpnd created, as a wireguard-go
// tun.Device.
//
// wireguard-go's own tun.CreateTUNFromFile does not fit an unprivileged
// client: it always sets the MTU with SIOCSIFMTU, which needs
// CAP_NET_ADMIN even to set the value the link already has, and it starts
// two watchers (a netlink listener and a once-a-second probe write) for
// up/down events that only matter to a program that owns the link. Here
// vpnd owns the link: it set the addresses, the MTU and the up state, and
// it ends the VPN by deleting the link, which the reads see as EBADFD.
//
// vpndTUN runs where the TUN has no offloads: a TUN without IFF_VNET_HDR
// (vpnd-wg --no-offload, or a vpnd older than the offload member), where
// each read is one IP packet, and vpnd --sim's socket pair. To cut the
// per-packet cost of wireguard-go's pipeline anyway, Read drains up to a
// batch of packets that are already queued (non-blocking reads until
// EAGAIN) and waits in the runtime's poller only when there is none.
//
// With vnetHdr (vpnd --sim with offload: a socket pair that carries a
// virtio_net_hdr before each packet, but takes no TUN ioctl, so no
// offload), each packet read is led by a header, which Read drops, and
// Write puts a zero header (a whole, checksummed packet) before each
// packet, in the room wireguard-go leaves before offset.
type vpndTUN struct {
	file    *os.File
	rc      syscall.RawConn
	name    string
	mtu     int
	vnetHdr bool
	events  chan tun.Event

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ tun.Device = (*vpndTUN)(nil)

// openTUN returns the device to run WireGuard on, and whether it has the
// TUN's offloads. What the fd is decides, as TUNGETIFF reports it. A TUN
// with IFF_VNET_HDR (the VPN was set up with offload) gets wireguard-go's
// own device, which turns TSO/USO on with TUNSETOFFLOAD (no capability
// needed, unlike the MTU) and reads and writes up to 64 KiB at a time; it
// is made with CreateUnmonitoredTUNFromFD, which sets no MTU and watches
// nothing. A TUN without it gets vpndTUN. An fd that is not a TUN is vpnd
// --sim's socket pair, which carries a virtio_net_hdr when info says
// offload.
func openTUN(f *os.File, info *protocol.VpnInfo) (tun.Device, bool, error) {
	name, mtu := info.Interface, info.MTU
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, false, fmt.Errorf("tun: %w", err)
	}
	var flags uint16
	var dup int
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		var ifr *unix.Ifreq
		if ifr, ierr = unix.NewIfreq(name); ierr != nil {
			return
		}
		if ierr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr); ierr != nil {
			return
		}
		if flags = ifr.Uint16(); flags&unix.IFF_VNET_HDR != 0 {
			dup, ierr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		}
	}); err != nil {
		return nil, false, fmt.Errorf("tun: %w", err)
	}
	if errors.Is(ierr, unix.ENOTTY) || errors.Is(ierr, unix.EBADFD) {
		// Not a TUN: vpnd --sim's packet socket, one packet per message.
		dev, err := newVpndTUN(f, name, mtu, info.Offload)
		return dev, false, err
	}
	if ierr != nil {
		return nil, false, fmt.Errorf("tun: TUNGETIFF: %w", ierr)
	}
	if flags&unix.IFF_VNET_HDR == 0 {
		dev, err := newVpndTUN(f, name, mtu, false)
		return dev, false, err
	}
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(dup)
	if err != nil {
		unix.Close(dup)
		return nil, false, fmt.Errorf("tun with offloads: %w", err)
	}
	f.Close() // the device holds its own copy
	return dev, true, nil
}

// tunBatch is how many packets one Read may return: wireguard-go's own
// batch size, so one Read fills one of its batches.
const tunBatch = 128

// newVpndTUN wraps the TUN file vpnd handed out. The file must be in
// non-blocking mode (vpnd's default), so that reads wait in the poller and
// Read can drain the queue without blocking a thread. vnetHdr says that
// each packet on it is led by a virtio_net_hdr.
func newVpndTUN(f *os.File, name string, mtu int, vnetHdr bool) (*vpndTUN, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tun: %w", err)
	}
	var flags int
	var ferr error
	// Control, never f.Fd(): Fd would switch the file to blocking mode.
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		return nil, fmt.Errorf("tun: %w", err)
	}
	if ferr != nil {
		return nil, fmt.Errorf("tun: fcntl: %w", ferr)
	}
	if flags&unix.O_NONBLOCK == 0 {
		return nil, errors.New("tun: the TUN file is in blocking mode; set it up without isBlocking")
	}
	return &vpndTUN{file: f, rc: rc, name: name, mtu: mtu, vnetHdr: vnetHdr, events: make(chan tun.Event)}, nil
}

func (t *vpndTUN) File() *os.File { return t.file }

// Read returns at least one packet, and every further one already queued,
// up to len(bufs).
func (t *vpndTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	hdr := t.hdrLen()
	if offset < hdr {
		return 0, io.ErrShortBuffer
	}
	n := 0
	var rerr error
	err := t.rc.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			// The header, if any, lands in the room before offset.
			m, err := unix.Read(int(fd), bufs[n][offset-hdr:])
			switch {
			case err == nil && m > 0 && m < hdr:
				// Too short for its header: not a packet. (0 is the
				// end, or an empty message, shown as before.)
			case err == nil:
				sizes[n] = max(m-hdr, 0)
				n++
			case err == unix.EINTR:
			case err == unix.EAGAIN:
				return n > 0 // nothing yet: wait in the poller
			default:
				rerr = err
				return true
			}
		}
		return true
	})
	if n > 0 {
		return n, nil // an error after some packets shows on the next call
	}
	if err == nil {
		err = rerr
	}
	if errors.Is(err, unix.EBADFD) || t.closed.Load() {
		// Closed, or the link was deleted: vpnd ended the VPN.
		err = os.ErrClosed
	}
	return 0, err
}

// Write writes each packet; one bad packet does not stop the others.
func (t *vpndTUN) Write(bufs [][]byte, offset int) (int, error) {
	hdr := t.hdrLen()
	if offset < hdr {
		return 0, io.ErrShortBuffer
	}
	var errs []error
	i := 0
	err := t.rc.Write(func(fd uintptr) bool {
		for i < len(bufs) {
			// A zero header: a whole packet, its checksums done.
			clear(bufs[i][offset-hdr : offset])
			_, err := unix.Write(int(fd), bufs[i][offset-hdr:])
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false
			case errors.Is(err, unix.EBADFD):
				errs = append(errs, os.ErrClosed)
				return true
			case err != nil:
				errs = append(errs, err)
			}
			i++
		}
		return true
	})
	if err != nil {
		errs = append(errs, err)
	}
	return i, errors.Join(errs...)
}

// hdrLen is the size of the header before each packet on the file.
func (t *vpndTUN) hdrLen() int {
	if t.vnetHdr {
		return virtioNetHdrLen
	}
	return 0
}

// virtioNetHdrLen is the size of struct virtio_net_hdr, the kernel's
// default for a TUN with IFF_VNET_HDR, which vpnd keeps.
const virtioNetHdrLen = 10

// MTU is the MTU vpnd applied.
func (t *vpndTUN) MTU() (int, error) { return t.mtu, nil }

// Name is the interface's name, as vpnd reported it.
func (t *vpndTUN) Name() (string, error) { return t.name, nil }

// Events never sends: the device is brought up by the client itself, and
// the link's state is vpnd's business. It is closed by Close.
func (t *vpndTUN) Events() <-chan tun.Event { return t.events }

// BatchSize is the most packets one Read returns.
func (t *vpndTUN) BatchSize() int { return tunBatch }

// Close closes the TUN file; the link goes away with the last copy of it.
func (t *vpndTUN) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		close(t.events)
		t.closeErr = t.file.Close()
	})
	return t.closeErr
}
