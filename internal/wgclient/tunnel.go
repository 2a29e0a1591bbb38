// Package wgclient is a WireGuard client for vpnd: it reads a wg-quick
// configuration file, asks vpnd for a VPN with the file's addresses,
// routes (the union of the peers' AllowedIPs), DNS and MTU, and runs a
// wireguard-go device on the TUN that vpnd hands back. Every UDP socket
// the device opens is protected through vpnd before it is bound, so the
// encrypted traffic bypasses the VPN even when AllowedIPs covers the
// endpoint (0.0.0.0/0). It needs no capability: vpnd does everything that
// needs one.
package wgclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/protocol"
)

// Options are how Up reaches vpnd and what it serves.
type Options struct {
	// Socket is vpnd's socket; "" is the default.
	Socket string
	// UAPIDir is where the tunnel serves its state for `vpnd-wg show`
	// (DIR/IFNAME.sock); "" serves nothing.
	UAPIDir string
	// Log receives wireguard-go's messages; nil discards them.
	Log io.Writer
	// Verbose adds wireguard-go's debug messages.
	Verbose bool
	// Resolver resolves endpoint names; nil is the system's.
	Resolver Resolver
	// NoOffload sets the VPN up without vpnd's offload member, so that
	// the TUN has no IFF_VNET_HDR and the tunnel runs vpndTUN, one packet
	// per read and write, batched.
	NoOffload bool

	// TestNoProtect leaves the tunnel sockets unprotected. It exists only
	// so that tests can show that protect is what keeps the encrypted
	// traffic out of the VPN: with it, a tunnel whose AllowedIPs cover
	// the endpoint routes its own packets back into itself and never
	// completes a handshake.
	TestNoProtect bool
}

// Tunnel is a running WireGuard VPN.
type Tunnel struct {
	Info  *protocol.VpnInfo
	Notes []string // what of the configuration was left out, and why
	// Endpoints are the peers' resolved endpoints, in file order
	// (invalid for a peer without one).
	Endpoints []netip.AddrPort
	UAPIPath  string // "" if not served
	// Offload is true when the tunnel runs on a TUN with IFF_VNET_HDR,
	// through wireguard-go's offload-aware device (TSO/USO and GRO on the
	// TUN).
	Offload bool

	vpnd *client.Client
	// ownsVPN: our setUp succeeded. vpnd knows owners by uid, so a
	// rollback after a refused setUp must not call destroy: it would end
	// the VPN that the same user runs from another process.
	ownsVPN bool
	tun     tun.Device
	dev     *device.Device
	uapi    *uapiServer

	done      chan struct{}
	closing   atomic.Bool // Close has begun: endings seen now are its own
	closeOnce sync.Once
	closeErr  error
	endMu     sync.Mutex
	endErr    error // why the tunnel ended by itself
}

// Up sets the VPN up and starts the tunnel. On failure nothing is left:
// the VPN is destroyed and every socket closed. A refusal from vpnd is a
// *client.Error carrying vpnd's code.
func Up(ctx context.Context, cfg *Config, opts Options) (_ *Tunnel, err error) {
	vc, notes, err := cfg.VpnConfig()
	if err != nil {
		return nil, err
	}
	// An unsafe UAPI directory fails before there is a VPN to undo.
	if opts.UAPIDir != "" {
		if _, err := openUAPIDir(opts.UAPIDir, false); err != nil {
			return nil, err
		}
	}
	// Before the VPN exists: its routes could capture the lookups.
	endpoints, err := cfg.ResolveEndpoints(ctx, opts.Resolver)
	if err != nil {
		return nil, err
	}
	t := &Tunnel{Notes: notes, Endpoints: endpoints, done: make(chan struct{})}
	defer func() {
		if err != nil {
			t.teardown(context.Background())
		}
	}()

	t.vpnd, err = client.Dial(ctx, opts.Socket)
	if err != nil {
		return nil, err
	}
	vc.Offload = !opts.NoOffload
	tunFile, info, note, err := setUp(ctx, t.vpnd, vc)
	if err != nil {
		return nil, err
	}
	if note != "" {
		t.Notes = append(t.Notes, note)
	}
	t.Info, t.ownsVPN = info, true
	t.tun, t.Offload, err = openTUN(tunFile, info)
	if err != nil {
		tunFile.Close()
		return nil, err
	}

	protect := func(fd int) error { return t.vpnd.ProtectFD(ctx, fd) }
	if opts.TestNoProtect {
		protect = nil
	}
	t.dev = device.NewDevice(t.tun, newProtectedBind(protect), newLogger(opts, info.Interface))
	if err := t.dev.IpcSet(cfg.UAPI(endpoints)); err != nil {
		return nil, fmt.Errorf("configure the WireGuard device: %w", err)
	}
	// Up opens the bind: each socket is protected before it is bound.
	if err := t.dev.Up(); err != nil {
		return nil, fmt.Errorf("bring the WireGuard device up: %w", unwrapProtect(err))
	}
	if opts.UAPIDir != "" {
		t.uapi, err = listenUAPI(opts.UAPIDir, info.Interface, t.dev)
		if err != nil {
			return nil, err
		}
		t.UAPIPath = t.uapi.path
	}
	go t.watch()
	return t, nil
}

// setUpper is what setUp needs of a *client.Client.
type setUpper interface {
	SetUp(ctx context.Context, cfg protocol.VpnConfig) (*os.File, *protocol.VpnInfo, error)
}

// setUp asks vpnd for the VPN. A vpnd older than the offload member
// refuses it as an unknown member (19900001, "offload: unknown member"),
// and a vpnd whose --allow-offload leaves the caller out refuses it with
// 201 and a detail that starts "offload: ". Then setUp asks once more
// without it, and returns a note saying so.
func setUp(ctx context.Context, c setUpper, vc protocol.VpnConfig) (*os.File, *protocol.VpnInfo, string, error) {
	f, info, err := c.SetUp(ctx, vc)
	var ve *client.Error
	if err == nil || !vc.Offload || !errors.As(err, &ve) {
		return f, info, "", err
	}
	var why string
	switch {
	case errors.Is(err, client.ErrInvalidParam) && strings.HasSuffix(ve.Detail, "offload: unknown member"):
		why = "an older vpnd"
	case errors.Is(err, client.ErrPermission) && strings.HasPrefix(ve.Detail, "offload: "):
		why = "not allowed to this user"
	default:
		return f, info, "", err
	}
	vc.Offload = false
	f, info, err = c.SetUp(ctx, vc)
	return f, info, fmt.Sprintf("vpnd refused offload (%s): %s; set up again without it, so the TUN has no offloads", ve.Detail, why), err
}

// unwrapProtect digs vpnd's refusal out of wireguard-go's wrapping, so
// that it prints with vpnd's code.
func unwrapProtect(err error) error {
	var ve *client.Error
	if errors.As(err, &ve) {
		return fmt.Errorf("protect the tunnel socket: %w", ve)
	}
	return err
}

// watch ends the tunnel when vpnd goes away, or when the device stops by
// itself (the link was deleted: vpnd ended the VPN).
func (t *Tunnel) watch() {
	var why error
	select {
	case <-t.vpnd.Done():
		why = t.vpnd.Err()
	case <-t.dev.Wait():
		why = errors.New("the WireGuard device stopped: the VPN's interface is gone")
	case <-t.done:
		return
	}
	if t.closing.Load() {
		return
	}
	t.endMu.Lock()
	t.endErr = why
	t.endMu.Unlock()
	t.Close()
}

// Done is closed when the tunnel has ended, by Close or by itself.
func (t *Tunnel) Done() <-chan struct{} { return t.done }

// Err says why the tunnel ended by itself; nil after Close or while up.
func (t *Tunnel) Err() error {
	t.endMu.Lock()
	defer t.endMu.Unlock()
	return t.endErr
}

// Status is the device's state, as `vpnd-wg show` prints it.
func (t *Tunnel) Status() (*Status, error) {
	s, err := t.dev.IpcGet()
	if err != nil {
		return nil, err
	}
	st, err := parseGet(bufio.NewReader(strings.NewReader(s + "errno=0\n")))
	if err != nil {
		return nil, err
	}
	st.Name = t.Info.Interface
	return st, nil
}

// Close ends the VPN: vpnd destroys it (rules, routes, link), then the
// device stops and its sockets close, then the connection to vpnd.
func (t *Tunnel) Close() error {
	t.closeOnce.Do(func() {
		t.closing.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		t.closeErr = t.teardown(ctx)
		close(t.done)
	})
	return t.closeErr
}

func (t *Tunnel) teardown(ctx context.Context) error {
	var errs []error
	if t.uapi != nil {
		errs = append(errs, t.uapi.Close())
	}
	if t.ownsVPN && t.vpnd.Err() == nil {
		if err := t.vpnd.Destroy(ctx); err != nil && t.vpnd.Err() == nil {
			errs = append(errs, fmt.Errorf("destroy: %w", err))
		}
	}
	if t.dev != nil {
		t.dev.Close() // closes the TUN and the bind
	} else if t.tun != nil {
		errs = append(errs, t.tun.Close())
	}
	if t.vpnd != nil {
		t.vpnd.Close()
	}
	return errors.Join(errs...)
}

func newLogger(opts Options, ifname string) *device.Logger {
	l := &device.Logger{Verbosef: device.DiscardLogf, Errorf: device.DiscardLogf}
	if opts.Log == nil {
		return l
	}
	lg := log.New(opts.Log, "vpnd-wg: "+ifname+": ", log.LstdFlags)
	l.Errorf = lg.Printf
	if opts.Verbose {
		l.Verbosef = lg.Printf
	}
	return l
}
