// Command simping is what a VPN app's test can do against vpnd's
// simulation mode (`vpnd --sim`), which needs no root: set up a VPN with
// the client package, check an error the app must handle, and send an
// ICMP echo request to the VPN's own address through the file setUp
// returned, where the simulated host answers it.
//
//	vpnd --sim --socket /tmp/sim/vpnd.sock --state-dir /tmp/sim/state &
//	go run ./examples/simping -socket /tmp/sim/vpnd.sock
//
// It exits 0 and prints the reply, or prints what went wrong and exits 1.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/protocol"
)

func main() {
	socket := flag.String("socket", os.Getenv("VPND_SOCKET"), "vpnd's socket")
	flag.Parse()
	if err := run(*socket); err != nil {
		fmt.Fprintln(os.Stderr, "simping:", err)
		os.Exit(1)
	}
}

func run(socket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close() // closing the connection would end the VPN too

	addr, _ := protocol.ParseLinkAddress("10.8.0.2/24")
	cfg := protocol.VpnConfig{Addresses: []protocol.LinkAddress{addr}}
	tun, info, err := c.SetUp(ctx, cfg)
	if err != nil {
		return fmt.Errorf("setUp: %w", err)
	}
	defer tun.Close()
	if !info.Simulated {
		return errors.New("this vpnd is not simulated: run vpnd --sim")
	}

	// The slot is taken: a second setUp fails with 2203002.
	if _, _, err := c.SetUp(ctx, cfg); !errors.Is(err, client.ErrVPNExists) {
		return fmt.Errorf("second setUp: %v, want client.ErrVPNExists", err)
	}

	// One IP packet per write and per read, as on a TUN. The simulated
	// host answers echo requests to the VPN's own addresses.
	if _, err := tun.Write(echoRequest([4]byte{10, 8, 0, 1}, [4]byte{10, 8, 0, 2}, 7, []byte("hello"))); err != nil {
		return err
	}
	tun.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 65536)
	n, err := tun.Read(buf)
	if err != nil {
		return fmt.Errorf("no reply: %w", err)
	}
	reply := buf[:n]
	if n < 28 || reply[9] != 1 || reply[20] != 0 || binary.BigEndian.Uint16(reply[26:28]) != 7 {
		return fmt.Errorf("not an echo reply to sequence 7: % x", reply)
	}
	fmt.Printf("echo reply from %d.%d.%d.%d: %q\n", reply[12], reply[13], reply[14], reply[15], reply[28:])

	return c.Destroy(ctx)
}

// echoRequest builds an IPv4 packet with an ICMP echo request.
func echoRequest(src, dst [4]byte, seq uint16, data []byte) []byte {
	p := make([]byte, 28+len(data))
	p[0], p[8], p[9] = 0x45, 64, 1 // IPv4, no options; TTL; ICMP
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	copy(p[12:16], src[:])
	copy(p[16:20], dst[:])
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20]))
	p[20] = 8 // echo request
	binary.BigEndian.PutUint16(p[24:26], 1)
	binary.BigEndian.PutUint16(p[26:28], seq)
	copy(p[28:], data)
	binary.BigEndian.PutUint16(p[22:24], checksum(p[20:]))
	return p
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
