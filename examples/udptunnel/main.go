// Command udptunnel is a small VPN app on vpnd: it sets a VPN up, protects
// its UDP socket so that the tunnel's own datagrams bypass the VPN, and
// carries each IP packet the TUN gives it, whole, in one UDP datagram to a
// server, writing what the server sends back into the TUN.
//
//	udptunnel -socket /run/vpnd/vpnd.sock -server 192.0.2.2:4000 [-address 10.77.0.2/24] [-check]
//
// The VPN is a full tunnel: every packet of the app's user (every user's,
// when the app runs as an admin account) enters the TUN, and only the
// protected socket reaches the server directly. The app prints "UP IFNAME
// ADDRESS" once the VPN is up, and runs until SIGINT or SIGTERM, when it
// destroys the VPN and exits 0, or until vpnd ends the VPN or goes away,
// when it says why and exits 1.
//
// With -check it also proves the tunnel works end to end: it sends the
// server ICMP echo requests to its own VPN address, as the far side of
// the tunnel would; the server sends them back, the app writes them into
// the TUN, the host behind the TUN answers (the kernel, or a simulated
// vpnd's host), and the reply comes out of the TUN and makes the same
// round trip. It prints "CHECK ok ..." at the first reply, or "CHECK
// failed ..." after 50 tries.
//
// The server side, for trying and testing the app, is a UDP echo that
// sends every datagram back to where it came from:
//
//	udptunnel -echo 192.0.2.2:4000
//
// It prints "ECHO ADDR:PORT" once it listens (port 0 picks one).
//
// Its test, main_test.go, runs both with vpndtest, on the kernel and on a
// simulated vpnd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/protocol"
)

func main() {
	socket := flag.String("socket", os.Getenv("VPND_SOCKET"), "vpnd's socket (default $VPND_SOCKET, else vpnd's default)")
	server := flag.String("server", "", "the server's `ADDR:PORT`")
	address := flag.String("address", "10.77.0.2/24", "the VPN's address, `CIDR`")
	check := flag.Bool("check", false, "check the tunnel with echo requests once it is up")
	echo := flag.String("echo", "", "run the server side instead: a UDP echo on `ADDR:PORT`")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	if *echo != "" {
		err = runEcho(ctx, *echo)
	} else {
		err = runTunnel(ctx, *socket, *server, *address, *check)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "udptunnel:", err)
		os.Exit(1)
	}
}

// runTunnel is the app: it returns nil once ctx ends, or why the tunnel
// ended before.
func runTunnel(ctx context.Context, socket, server, address string, check bool) error {
	raddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		return fmt.Errorf("-server: %w", err)
	}
	own, err := netip.ParsePrefix(address)
	if err != nil || !own.Addr().Is4() {
		return fmt.Errorf("-address %q: want an IPv4 CIDR", address)
	}
	c, err := client.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close() // would end the VPN too

	// Unconnected: every send looks its route up, with the protect mark.
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Before setUp: the full tunnel would otherwise take the tunnel's own
	// datagrams too, and they would loop back into the TUN.
	if err := c.Protect(ctx, conn); err != nil {
		return fmt.Errorf("protect: %w", err)
	}
	addr, _ := protocol.ParseLinkAddress(own.String())
	tun, info, err := c.SetUp(ctx, protocol.VpnConfig{Addresses: []protocol.LinkAddress{addr}, MTU: 1400})
	if err != nil {
		return fmt.Errorf("setUp: %w", err)
	}
	defer tun.Close()
	fmt.Printf("UP %s %s\n", info.Interface, own)

	t := &tunnel{tun: tun, conn: conn, server: raddr.AddrPort(), own: own.Addr(), replies: make(chan echoReply, 1)}
	errc := make(chan error, 3)
	go func() { errc <- t.fromTUN() }()
	go func() { errc <- t.toTUN() }()
	if check {
		go func() {
			if err := t.check(ctx, info.Interface); err != nil {
				errc <- err
			}
		}()
	}
	select {
	case <-ctx.Done():
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.Destroy(dctx)
	case <-c.Done():
		return fmt.Errorf("vpnd closed the connection: %w", c.Err())
	case err := <-errc:
		return err
	}
}

// tunnel carries packets between the TUN and the server.
type tunnel struct {
	tun     *os.File
	conn    *net.UDPConn
	server  netip.AddrPort
	own     netip.Addr
	replies chan echoReply // replies to check's probes
}

// fromTUN sends each packet the TUN gives to the server, one datagram each.
func (t *tunnel) fromTUN() error {
	buf := make([]byte, 65535)
	for {
		n, err := t.tun.Read(buf)
		if err != nil {
			return fmt.Errorf("the VPN ended: read TUN: %w", err)
		}
		if _, err := t.conn.WriteToUDPAddrPort(buf[:n], t.server); err != nil {
			return fmt.Errorf("send to the server: %w", err)
		}
	}
}

// toTUN writes each datagram from the server into the TUN, but for
// replies to check's probes, which end their round trip here.
func (t *tunnel) toTUN() error {
	buf := make([]byte, 65535)
	for {
		n, from, err := t.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return fmt.Errorf("receive from the server: %w", err)
		}
		if from.Port() != t.server.Port() || from.Addr().Unmap() != t.server.Addr().Unmap() {
			continue // only the server may inject packets
		}
		if r, ok := parseEchoReply(buf[:n]); ok && r.id == probeID {
			select {
			case t.replies <- r:
			default:
			}
			continue
		}
		if _, err := t.tun.Write(buf[:n]); err != nil {
			return fmt.Errorf("write TUN: %w", err)
		}
	}
}

// probeID marks check's echo requests.
const probeID = 0x7564 // "ud"

// check sends echo requests to the VPN's own address through the server,
// as from the far side of the tunnel, until one is answered, and returns
// nil then (or when ctx ends).
func (t *tunnel) check(ctx context.Context, ifname string) error {
	far := t.own.Prev()
	if !far.IsValid() || far.IsUnspecified() {
		far = t.own.Next()
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for seq := uint16(1); seq <= 50; seq++ {
		probe := echoRequest(far.As4(), t.own.As4(), probeID, seq, []byte("udptunnel check"))
		if _, err := t.conn.WriteToUDPAddrPort(probe, t.server); err != nil {
			return fmt.Errorf("check: send: %w", err)
		}
		select {
		case r := <-t.replies:
			fmt.Printf("CHECK ok: echo reply from %s (seq %d) through %s and the server, %v after the first probe\n",
				r.src, r.seq, ifname, time.Since(start).Round(time.Millisecond))
			return nil
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
	fmt.Println("CHECK failed: no echo reply to 50 probes")
	return errors.New("the tunnel check failed")
}

// runEcho is the server side: a UDP echo.
func runEcho(ctx context.Context, addr string) error {
	conn, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("ECHO %s\n", conn.LocalAddr())
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	buf := make([]byte, 65535)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		conn.WriteTo(buf[:n], from)
	}
}
