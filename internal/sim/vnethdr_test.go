package sim

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
)

// A simulated TUN created with VnetHdr (the config's offload) carries a
// virtio_net_hdr before each packet, both ways, as a TUN with IFF_VNET_HDR
// does. Checked against the model's own rules, and as root against the
// kernel: the same messages go into a real TUN with IFF_VNET_HDR and into
// the model, and both answer alike, header included.

// vnetHdr builds a virtio_net_hdr.
func vnetHdr(flags, gsoType byte, csumStart, csumOffset uint16) []byte {
	h := make([]byte, manager.VnetHdrLen)
	h[0], h[1] = flags, gsoType
	binary.NativeEndian.PutUint16(h[6:8], csumStart)
	binary.NativeEndian.PutUint16(h[8:10], csumOffset)
	return h
}

// partial4 is an ICMP echo request whose checksum is left to the device
// (NEEDS_CSUM): ICMP has no pseudo-header, so the field starts at zero.
func partial4(id uint16) []byte {
	p := append(vnetHdr(vnetHdrFNeedsCsum, vnetHdrGSONone, 20, 2), ping4(id, "partial").build()...)
	icmp := p[manager.VnetHdrLen+20:]
	icmp[2], icmp[3] = 0, 0
	return p
}

// partial6 is an ICMPv6 echo request with NEEDS_CSUM: the field holds the
// pseudo-header's sum, folded, not complemented.
func partial6(id uint16) []byte {
	p := append(vnetHdr(vnetHdrFNeedsCsum, vnetHdrGSONone, 40, 2), ping6(id, "partial").build()...)
	icmp := p[manager.VnetHdrLen+40:]
	binary.BigEndian.PutUint16(icmp[2:4], ^checksum(pseudoHeader6(peer6, own6, len(icmp)), nil))
	return p
}

// vnetAnswered are messages a TUN with IFF_VNET_HDR takes and answers.
var vnetAnswered = []packetCase{
	{"ipv4, zero header", func(id uint16) []byte { return append(vnetHdr(0, 0, 0, 0), ping4(id, "zero header").build()...) }},
	{"ipv6, zero header", func(id uint16) []byte { return append(vnetHdr(0, 0, 0, 0), ping6(id, "zero header").build()...) }},
	{"ipv4, checksum left to the device", partial4},
	{"ipv6, checksum left to the device", partial6},
}

// vnetDropped are messages it refuses (EINVAL) or does not answer.
var vnetDropped = []packetCase{
	{"ipv4 without the header", func(id uint16) []byte { return ping4(id, "no header").build() }},
	{"short header", func(uint16) []byte { return vnetHdr(0, 0, 0, 0)[:5] }},
	{"gso tcpv4", func(id uint16) []byte { return append(vnetHdr(0, 1, 0, 0), ping4(id, "gso").build()...) }},
	{"checksum position beyond the packet", func(id uint16) []byte {
		return append(vnetHdr(vnetHdrFNeedsCsum, 0, 20, 4000), ping4(id, "beyond").build()...)
	}},
}

// vnetDivergent are messages Linux answers and the model does not: a
// checksum left to the device whose field does not hold the right partial
// sum. Linux trusts a partial checksum on local delivery; the model
// completes it as a device would, and the host then finds it wrong.
var vnetDivergent = []packetCase{
	{"ipv4, checksum left to the device, wrong partial sum", func(id uint16) []byte {
		p := partial4(id)
		p[manager.VnetHdrLen+22] = 0x55
		return p
	}},
}

// simVnetTUN creates a simulated TUN with VnetHdr, up, with the echo host.
func simVnetTUN(t *testing.T) (*Kernel, *os.File) {
	t.Helper()
	k := New(Options{Packet: Echo})
	t.Cleanup(func() { k.Close() })
	f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{VnetHdr: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	mustApply(t, k, upOps(index, 1500, echoLn.Addresses...)...)
	return k, f
}

// readMsg reads one message from fd, waiting up to wait; nil if none came.
func readMsg(t *testing.T, fd int, wait time.Duration) []byte {
	t.Helper()
	buf := make([]byte, 65536)
	deadline := time.Now().Add(wait)
	for {
		n, err := unix.Read(fd, buf)
		if err == nil {
			return append([]byte{}, buf[:n]...)
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
}

func TestVnetHdr(t *testing.T) {
	k, f := simVnetTUN(t)
	if s := k.Snapshot(); len(s.Links) != 1 || !s.Links[0].VnetHdr {
		t.Fatalf("links %+v, want one with VnetHdr", s.Links)
	}
	fd := int(f.Fd())
	for _, tc := range vnetAnswered {
		t.Run(tc.name, func(t *testing.T) {
			msg := tc.pkt(0x4242)
			if _, err := unix.Write(fd, msg); err != nil {
				t.Fatal(err)
			}
			out := readMsg(t, fd, 5*time.Second)
			if len(out) < manager.VnetHdrLen || !bytes.Equal(out[:manager.VnetHdrLen], make([]byte, manager.VnetHdrLen)) {
				t.Fatalf("reply % x, want a zero virtio_net_hdr first", out)
			}
			checkReply(t, msg[manager.VnetHdrLen:], out[manager.VnetHdrLen:])
		})
	}
	for _, tc := range vnetDropped {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := unix.Write(fd, tc.pkt(0x4343)); err != nil {
				t.Fatal(err)
			}
			// A later request is answered: the one before was not.
			if _, err := unix.Write(fd, vnetAnswered[0].pkt(0x4444)); err != nil {
				t.Fatal(err)
			}
			out := readMsg(t, fd, 5*time.Second)
			if len(out) < manager.VnetHdrLen+28 || binary.BigEndian.Uint16(out[manager.VnetHdrLen+24:]) != 0x4444 {
				t.Errorf("first answer % x, want the one to the later request", out)
			}
		})
	}
	// Without VnetHdr, a message is the packet alone.
	_, plain, _ := upTUN(t, false)
	if _, err := unix.Write(int(plain.Fd()), ping4(1, "plain").build()); err != nil {
		t.Fatal(err)
	}
	if out := readMsg(t, int(plain.Fd()), 5*time.Second); len(out) == 0 || out[0] != 0x45 {
		t.Errorf("reply on a TUN without VnetHdr % x, want a bare IPv4 packet", out)
	}
}

// TestVnetHdrMatchesLinux writes every message of the tables into a real
// TUN with IFF_VNET_HDR in a fresh network namespace, and into the model:
// where Linux answers, the model gives the same header and, but for what
// Linux chooses freely, the same reply; where Linux refuses the write or
// does not answer, the model does not answer either.
func TestVnetHdrMatchesLinux(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.LoUp(t)
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("simvnet0")
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"addr", "add", "10.8.0.2/24", "dev", "simvnet0"},
		{"addr", "add", "fd00:8::2/64", "dev", "simvnet0", "nodad"},
		{"link", "set", "simvnet0", "up"},
	} {
		netnstest.IP(t, args...)
	}
	waitIPv6(t, "simvnet0", own6)
	_, sim := simVnetTUN(t)

	// answer returns the reply to the request with ICMP identifier id,
	// header included, or nil; other messages (router solicitations, MLD
	// reports) are skipped.
	answer := func(fd int, id uint16, wait time.Duration) []byte {
		deadline := time.Now().Add(wait)
		for {
			out := readMsg(t, fd, time.Until(deadline))
			if out == nil {
				return nil
			}
			p := out[manager.VnetHdrLen:]
			var icmp []byte
			switch {
			case len(p) >= 28 && p[0]>>4 == 4 && p[20] == icmpEchoReply:
				icmp = p[20:]
			case len(p) >= 48 && p[0]>>4 == 6 && p[40] == icmpv6EchoReply:
				icmp = p[40:]
			}
			if icmp != nil && binary.BigEndian.Uint16(icmp[4:6]) == id {
				return out
			}
		}
	}
	id := uint16(2000)
	for _, table := range []struct {
		name     string
		cases    []packetCase
		answered bool
	}{{"answered", vnetAnswered, true}, {"dropped", vnetDropped, false}, {"divergent", vnetDivergent, true}} {
		for _, tc := range table.cases {
			id++
			t.Run(table.name+": "+tc.name, func(t *testing.T) {
				msg := tc.pkt(id)
				if _, err := unix.Write(fd, msg); err != nil && !errors.Is(err, unix.EINVAL) {
					t.Fatalf("write to the TUN: %v", err)
				}
				if _, err := unix.Write(int(sim.Fd()), tc.pkt(id)); err != nil {
					t.Fatal(err)
				}
				wait := 2 * time.Second
				if !table.answered {
					wait = 300 * time.Millisecond
				}
				linux, got := answer(fd, id, wait), answer(int(sim.Fd()), id, wait)
				switch {
				case table.answered && linux == nil:
					t.Fatalf("Linux did not answer; the table is wrong")
				case !table.answered && linux != nil:
					t.Fatalf("Linux answered % x; the table is wrong", linux)
				case linux == nil:
					if got != nil {
						t.Errorf("the model answered % x", got)
					}
				case table.name == "divergent":
					if got != nil {
						t.Errorf("the model answered: move the case to the answered table")
					}
				case got == nil:
					t.Errorf("the model did not answer; Linux did: % x", linux)
				default:
					if !bytes.Equal(got[:manager.VnetHdrLen], linux[:manager.VnetHdrLen]) {
						t.Errorf("header % x, Linux's % x", got[:manager.VnetHdrLen], linux[:manager.VnetHdrLen])
					}
					if !bytes.Equal(masked(got[manager.VnetHdrLen:]), masked(linux[manager.VnetHdrLen:])) {
						t.Errorf("reply %x\nLinux %x", got[manager.VnetHdrLen:], linux[manager.VnetHdrLen:])
					}
				}
			})
		}
	}
}
