package wgclient

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
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
// vpnd's TUN is IFF_TUN|IFF_NO_PI without IFF_VNET_HDR: each read is one
// IP packet, no offloads. To cut the per-packet cost of wireguard-go's
// pipeline anyway, Read drains up to a batch of packets that are already
// queued (non-blocking reads until EAGAIN) and waits in the runtime's
// poller only when there is none.
type vpndTUN struct {
	file   *os.File
	rc     syscall.RawConn
	name   string
	mtu    int
	events chan tun.Event

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ tun.Device = (*vpndTUN)(nil)

// openTUN returns the device to run WireGuard on. vpnd's TUN has no
// IFF_VNET_HDR today, and gets vpndTUN. A TUN that has it (a vpnd that
// offers offloads) gets wireguard-go's own device, which turns TSO/USO
// on with TUNSETOFFLOAD (no capability needed, unlike the MTU) and reads
// and writes 64 KiB segments; it is made with CreateUnmonitoredTUNFromFD,
// which sets no MTU and watches nothing.
func openTUN(f *os.File, name string, mtu int) (tun.Device, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tun: %w", err)
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
		return nil, fmt.Errorf("tun: %w", err)
	}
	if errors.Is(ierr, unix.ENOTTY) || errors.Is(ierr, unix.EBADFD) {
		// Not a TUN: vpnd --sim's packet socket, one packet per message.
		return newVpndTUN(f, name, mtu)
	}
	if ierr != nil {
		return nil, fmt.Errorf("tun: TUNGETIFF: %w", ierr)
	}
	if flags&unix.IFF_VNET_HDR == 0 {
		return newVpndTUN(f, name, mtu)
	}
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(dup)
	if err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("tun with offloads: %w", err)
	}
	f.Close() // the device holds its own copy
	return dev, nil
}

// tunBatch is how many packets one Read may return: wireguard-go's own
// batch size, so one Read fills one of its batches.
const tunBatch = 128

// newVpndTUN wraps the TUN file vpnd handed out. The file must be in
// non-blocking mode (vpnd's default), so that reads wait in the poller and
// Read can drain the queue without blocking a thread.
func newVpndTUN(f *os.File, name string, mtu int) (*vpndTUN, error) {
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
	return &vpndTUN{file: f, rc: rc, name: name, mtu: mtu, events: make(chan tun.Event)}, nil
}

func (t *vpndTUN) File() *os.File { return t.file }

// Read returns at least one packet, and every further one already queued,
// up to len(bufs).
func (t *vpndTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	var rerr error
	err := t.rc.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			m, err := unix.Read(int(fd), bufs[n][offset:])
			switch {
			case err == nil:
				sizes[n] = m
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
	var errs []error
	i := 0
	err := t.rc.Write(func(fd uintptr) bool {
		for i < len(bufs) {
			_, err := unix.Write(int(fd), bufs[i][offset:])
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
