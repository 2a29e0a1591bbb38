package sim

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// The echo responder is checked three ways: the Internet checksum against
// RFC 1071's own example; known answers, that is requests and the replies
// Linux gave to them; and, as root, live against the kernel: the same
// requests go into a real TUN in a throwaway network namespace and into
// Echo, and the answers must agree byte for byte.

var (
	peer4  = netip.MustParseAddr("10.8.0.1")
	own4   = netip.MustParseAddr("10.8.0.2")
	peer6  = netip.MustParseAddr("fd00:8::1")
	own6   = netip.MustParseAddr("fd00:8::2")
	echoLn = Link{Name: "vpn-tun", Index: 2, MTU: 1500, Up: true, Addresses: []netip.Prefix{
		netip.PrefixFrom(own4, 24), netip.PrefixFrom(own6, 64),
	}}
)

// TestChecksumRFC1071 checks the sum with RFC 1071's example (section 3):
// the words 0001 f203 f4f5 f6f7 sum to ddf2, whose complement is 220d.
func TestChecksumRFC1071(t *testing.T) {
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := checksum(0, b); got != 0x220d {
		t.Fatalf("checksum %#04x, want 0x220d", got)
	}
	// With its checksum appended, data sums to zero; an odd length is
	// padded with a zero byte.
	if got := checksum(0, append(b, 0x22, 0x0d)); got != 0 {
		t.Fatalf("checksum over data and its checksum %#04x, want 0", got)
	}
	if checksum(0, []byte{0xab}) != checksum(0, []byte{0xab, 0x00}) {
		t.Fatal("an odd byte is not padded with zero")
	}
	// A long buffer of 0xff bytes does not overflow the 32-bit sum.
	if got := checksum(0, bytes.Repeat([]byte{0xff}, 1<<20)); got != 0 {
		t.Fatalf("checksum of 1 MiB of 0xff %#04x, want 0", got)
	}
}

// echoRequest describes a request the tests build.
type echoRequest struct {
	src, dst netip.Addr
	id, seq  uint16
	payload  []byte
	tos      byte // IPv4 TOS or IPv6 traffic class
	code     byte
}

// build makes the packet, with correct checksums.
func (r echoRequest) build() []byte {
	icmp := make([]byte, 8+len(r.payload))
	icmp[1] = r.code
	binary.BigEndian.PutUint16(icmp[4:6], r.id)
	binary.BigEndian.PutUint16(icmp[6:8], r.seq)
	copy(icmp[8:], r.payload)
	if r.src.Is4() {
		icmp[0] = icmpEchoRequest
		binary.BigEndian.PutUint16(icmp[2:4], checksum(0, icmp))
		h := make([]byte, 20)
		h[0], h[1] = 0x45, r.tos
		binary.BigEndian.PutUint16(h[2:4], uint16(20+len(icmp)))
		binary.BigEndian.PutUint16(h[4:6], 0x1234) // identification
		h[8], h[9] = 64, protoICMP
		copy(h[12:16], r.src.AsSlice())
		copy(h[16:20], r.dst.AsSlice())
		binary.BigEndian.PutUint16(h[10:12], checksum(0, h))
		return append(h, icmp...)
	}
	icmp[0] = icmpv6EchoRequest
	binary.BigEndian.PutUint16(icmp[2:4], checksum(pseudoHeader6(r.src, r.dst, len(icmp)), icmp))
	h := make([]byte, 40)
	h[0], h[1] = 6<<4|r.tos>>4, r.tos<<4
	binary.BigEndian.PutUint16(h[4:6], uint16(len(icmp)))
	h[6], h[7] = protoICMPv6, 64
	copy(h[8:24], r.src.AsSlice())
	copy(h[24:40], r.dst.AsSlice())
	return append(h, icmp...)
}

func ping4(id uint16, payload string) echoRequest {
	return echoRequest{src: peer4, dst: own4, id: id, seq: 1, payload: []byte(payload)}
}

func ping6(id uint16, payload string) echoRequest {
	return echoRequest{src: peer6, dst: own6, id: id, seq: 1, payload: []byte(payload)}
}

// packetCase is a packet built with a given ICMP identifier, so that the
// comparison with Linux can tell whose reply is whose.
type packetCase struct {
	name string
	pkt  func(id uint16) []byte
}

// answered are requests a host answers, each with what makes it special.
var answered = []packetCase{
	{"ipv4", func(id uint16) []byte { return ping4(id, "vpnd simulated host").build() }},
	{"ipv4 odd length", func(id uint16) []byte { return ping4(id, "odd").build() }},
	{"ipv4 empty payload", func(id uint16) []byte { return ping4(id, "").build() }},
	{"ipv4 tos", func(id uint16) []byte { r := ping4(id, "tos"); r.tos = 0xb8; return r.build() }},
	{"ipv4 1472 bytes of payload: 1500 in all", func(id uint16) []byte { return ping4(id, strings.Repeat("x", 1472)).build() }},
	{"ipv4 with trailing bytes after total length", func(id uint16) []byte { return append(ping4(id, "pad").build(), 0, 0, 0, 0) }},
	{"ipv4 header with options", func(id uint16) []byte {
		// IHL 6: one word of NOP options, which a host ignores.
		p := ping4(id, "options").build()
		h := append([]byte{}, p[:20]...)
		h[0] = 0x46
		h = append(h, 1, 1, 1, 1)
		binary.BigEndian.PutUint16(h[2:4], uint16(len(p)+4))
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:12], checksum(0, h))
		return append(h, p[20:]...)
	}},
	{"ipv6", func(id uint16) []byte { return ping6(id, "vpnd simulated host").build() }},
	{"ipv6 odd length", func(id uint16) []byte { return ping6(id, "odd").build() }},
	{"ipv6 traffic class", func(id uint16) []byte { r := ping6(id, "tclass"); r.tos = 0xb8; return r.build() }},
	{"ipv6 1452 bytes of payload: 1500 in all", func(id uint16) []byte { return ping6(id, strings.Repeat("y", 1452)).build() }},
}

// dropped are packets a host does not answer with an echo reply.
var dropped = []packetCase{
	{"ipv4 to another address", func(id uint16) []byte { r := ping4(id, "x"); r.dst = netip.MustParseAddr("10.8.0.3"); return r.build() }},
	{"ipv4 bad header checksum", func(id uint16) []byte { p := ping4(id, "x").build(); p[10] ^= 0xff; return p }},
	{"ipv4 bad ICMP checksum", func(id uint16) []byte { p := ping4(id, "x").build(); p[22] ^= 0xff; return p }},
	{"ipv4 payload changed after the checksum", func(id uint16) []byte { p := ping4(id, "abcd").build(); p[len(p)-1] ^= 1; return p }},
	{"ipv4 echo reply", func(id uint16) []byte { p := ping4(id, "x").build(); p[20] = icmpEchoReply; fixICMP4(p); return p }},
	{"ipv4 more fragments", func(id uint16) []byte { p := ping4(id, "x").build(); p[6] |= 0x20; fixIPv4(p); return p }},
	{"ipv4 fragment offset", func(id uint16) []byte { p := ping4(id, "x").build(); p[7] = 1; fixIPv4(p); return p }},
	{"ipv4 udp", func(id uint16) []byte { p := ping4(id, "xxxxxxxxxx").build(); p[9] = 17; fixIPv4(p); return p }},
	{"ipv4 from 0.0.0.0", func(id uint16) []byte { r := ping4(id, "x"); r.src = netip.IPv4Unspecified(); return r.build() }},
	{"ipv4 from multicast", func(id uint16) []byte {
		r := ping4(id, "x")
		r.src = netip.MustParseAddr("224.0.0.1")
		return r.build()
	}},
	{"ipv4 from loopback", func(id uint16) []byte {
		r := ping4(id, "x")
		r.src = netip.MustParseAddr("127.0.0.1")
		return r.build()
	}},
	{"ipv4 from broadcast", func(id uint16) []byte {
		r := ping4(id, "x")
		r.src = netip.MustParseAddr("255.255.255.255")
		return r.build()
	}},
	{"ipv4 total length beyond the packet", func(id uint16) []byte { p := ping4(id, "x").build(); return p[:len(p)-1] }},
	{"ipv4 short ICMP header", func(id uint16) []byte {
		p := ping4(id, "").build()[:24]
		binary.BigEndian.PutUint16(p[2:4], 24)
		fixIPv4(p)
		return p
	}},
	{"ipv6 to another address", func(id uint16) []byte {
		r := ping6(id, "x")
		r.dst = netip.MustParseAddr("fd00:8::3")
		return r.build()
	}},
	{"ipv6 bad ICMPv6 checksum", func(id uint16) []byte { p := ping6(id, "x").build(); p[42] ^= 0xff; return p }},
	{"ipv6 checksum without the pseudo-header", func(id uint16) []byte {
		p := ping6(id, "x").build()
		p[42], p[43] = 0, 0
		binary.BigEndian.PutUint16(p[42:44], checksum(0, p[40:]))
		return p
	}},
	{"ipv6 echo reply", func(id uint16) []byte { p := ping6(id, "x").build(); p[40] = icmpv6EchoReply; fixICMP6(p); return p }},
	{"ipv6 from multicast", func(id uint16) []byte { r := ping6(id, "x"); r.src = netip.MustParseAddr("ff02::1"); return r.build() }},
	{"ipv6 from ::", func(id uint16) []byte { r := ping6(id, "x"); r.src = netip.IPv6Unspecified(); return r.build() }},
	{"ipv6 from ::1", func(id uint16) []byte { r := ping6(id, "x"); r.src = netip.IPv6Loopback(); return r.build() }},
	{"ipv6 payload length beyond the packet", func(id uint16) []byte { p := ping6(id, "x").build(); return p[:len(p)-1] }},
	{"ipv6 neighbor solicitation", func(id uint16) []byte {
		p := ping6(id, "xxxxxxxxxxxxxxxx").build()
		p[40], p[41] = 135, 0
		fixICMP6(p)
		return p
	}},
	{"ipv4 in an ipv6 version nibble", func(id uint16) []byte { p := ping4(id, "x").build(); p[0] = 0x65; return p }},
	{"version 5", func(id uint16) []byte { p := ping4(id, "x").build(); p[0] = 0x55; return p }},
	{"one byte", func(id uint16) []byte { return []byte{0x45} }},
}

// divergent are requests Linux answers and the simulated host does not:
// what it does not model, documented in docs/design.md.
var divergent = []packetCase{
	{"ipv4 reply larger than the MTU", func(id uint16) []byte { return ping4(id, strings.Repeat("z", 1473)).build() }},
	{"ipv6 hop-by-hop options header", func(id uint16) []byte {
		p := ping6(id, "hbh").build()
		// Next header 0 (hop-by-hop), whose 8 bytes say ICMPv6 follows and
		// carry a PadN option.
		hbh := []byte{protoICMPv6, 0, 1, 4, 0, 0, 0, 0}
		out := append(append(append([]byte{}, p[:40]...), hbh...), p[40:]...)
		out[6] = 0
		binary.BigEndian.PutUint16(out[4:6], uint16(len(out)-40))
		return out
	}},
}

func fixIPv4(p []byte) {
	ihl := int(p[0]&0x0f) * 4
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:12], checksum(0, p[:ihl]))
}

func fixICMP4(p []byte) {
	ihl := int(p[0]&0x0f) * 4
	p[ihl+2], p[ihl+3] = 0, 0
	binary.BigEndian.PutUint16(p[ihl+2:ihl+4], checksum(0, p[ihl:]))
}

func fixICMP6(p []byte) {
	src, dst := netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
	p[42], p[43] = 0, 0
	binary.BigEndian.PutUint16(p[42:44], checksum(pseudoHeader6(src, dst, len(p)-40), p[40:]))
}

func TestEchoAnswers(t *testing.T) {
	for _, tc := range answered {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.pkt(0x4242)
			out := Echo(echoLn, req)
			if len(out) != 1 {
				t.Fatalf("%d replies, want 1", len(out))
			}
			checkReply(t, req, out[0])
		})
	}
}

// checkReply checks a reply field by field against its request: the
// addresses swapped, the TTL, the type, the identifier, sequence number and
// data kept, both checksums valid.
func checkReply(t *testing.T, req, reply []byte) {
	t.Helper()
	if req[0]>>4 == 4 {
		ihl := int(req[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(req[2:4]))
		if reply[0] != 0x45 || int(binary.BigEndian.Uint16(reply[2:4])) != len(reply) || reply[9] != protoICMP || reply[8] != replyTTL {
			t.Errorf("IPv4 header % x", reply[:20])
		}
		if reply[1] != req[1] {
			t.Errorf("TOS %#x, want the request's %#x", reply[1], req[1])
		}
		if checksum(0, reply[:20]) != 0 {
			t.Errorf("bad IPv4 header checksum: % x", reply[:20])
		}
		if !bytes.Equal(reply[12:16], req[16:20]) || !bytes.Equal(reply[16:20], req[12:16]) {
			t.Errorf("addresses % x -> % x, want the request's swapped", reply[12:16], reply[16:20])
		}
		icmp, want := reply[20:], req[ihl:total]
		if icmp[0] != icmpEchoReply || icmp[1] != want[1] || !bytes.Equal(icmp[4:], want[4:]) {
			t.Errorf("ICMP % x, want an echo reply to % x", icmp, want)
		}
		if checksum(0, icmp) != 0 {
			t.Errorf("bad ICMP checksum")
		}
		return
	}
	if reply[0]>>4 != 6 || reply[6] != protoICMPv6 || reply[7] != replyTTL || int(binary.BigEndian.Uint16(reply[4:6])) != len(reply)-40 {
		t.Errorf("IPv6 header % x", reply[:40])
	}
	if tc, want := reply[0]<<4|reply[1]>>4, req[0]<<4|req[1]>>4; tc != want {
		t.Errorf("traffic class %#x, want the request's %#x", tc, want)
	}
	if !bytes.Equal(reply[8:24], req[24:40]) || !bytes.Equal(reply[24:40], req[8:24]) {
		t.Errorf("addresses not swapped")
	}
	icmp, want := reply[40:], req[40:]
	if icmp[0] != icmpv6EchoReply || icmp[1] != want[1] || !bytes.Equal(icmp[4:], want[4:]) {
		t.Errorf("ICMPv6 % x, want an echo reply to % x", icmp, want)
	}
	src, dst := netip.AddrFrom16([16]byte(reply[8:24])), netip.AddrFrom16([16]byte(reply[24:40]))
	if checksum(pseudoHeader6(src, dst, len(icmp)), icmp) != 0 {
		t.Errorf("bad ICMPv6 checksum")
	}
}

func TestEchoDrops(t *testing.T) {
	cases := append(append(dropped[:len(dropped):len(dropped)], divergent...),
		packetCase{"empty", func(uint16) []byte { return nil }})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if out := Echo(echoLn, tc.pkt(0x4242)); len(out) != 0 {
				t.Errorf("answered with % x", out)
			}
		})
	}
	// The link's addresses decide, not the family's.
	down := echoLn
	down.Addresses = []netip.Prefix{netip.PrefixFrom(own6, 64)}
	if out := Echo(down, ping4(1, "x").build()); len(out) != 0 {
		t.Errorf("an IPv4 echo request answered on a link without IPv4 address")
	}
}

// TestEchoKnownAnswers: requests and the replies Linux 6.x gave them
// through a TUN (printed by TestEchoMatchesLinux with -v). IPv4's
// identification and header checksum, and IPv6's flow label, are Linux's
// free choice; the rest must match byte for byte.
func TestEchoKnownAnswers(t *testing.T) {
	for _, tc := range []struct{ name, req, reply string }{
		{"ipv4",
			"4500002f12340000400154880a0800010a0800020800453f03e9000176706e642073696d756c6174656420686f7374",
			"4500002f0f260000400157960a0800020a08000100004d3f03e9000176706e642073696d756c6174656420686f7374"},
		{"ipv6",
			"60000000001b3a40fd000008000000000000000000000001fd0000080000000000000000000000028000d2cd03f0000176706e642073696d756c6174656420686f7374",
			"600e4bc1001b3a40fd000008000000000000000000000002fd0000080000000000000000000000018100d1cd03f0000176706e642073696d756c6174656420686f7374"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := hex.DecodeString(tc.req)
			want, _ := hex.DecodeString(tc.reply)
			out := Echo(echoLn, req)
			if len(out) != 1 || !bytes.Equal(masked(out[0]), masked(want)) {
				t.Fatalf("reply %x, want Linux's %s", out, tc.reply)
			}
			checkReply(t, req, out[0])
		})
	}
}

// TestEchoMatchesLinux sends every request of the tables into a real TUN
// in a fresh network namespace, and into Echo: where Linux answers with an
// echo reply, Echo must give the same bytes but for what Linux chooses
// freely (IPv4's identification and so the header checksum, IPv6's flow
// label); where it does not, nothing.
func TestEchoMatchesLinux(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.LoUp(t)
	f := openTUN(t, "simecho0")
	defer f.Close()
	for _, args := range [][]string{
		{"addr", "add", "10.8.0.2/24", "dev", "simecho0"},
		{"addr", "add", "fd00:8::2/64", "dev", "simecho0", "nodad"},
		{"link", "set", "simecho0", "up"},
	} {
		netnstest.IP(t, args...)
	}
	waitIPv6(t, "simecho0", own6)
	// Each request carries its own ICMP identifier, and replies are told
	// apart by it: the kernel may answer in another order than it was
	// asked. All the requests go in one batch; a last request of each
	// family, answered, ends it, and a short grace period catches replies
	// that overtook nothing.
	type sent struct {
		table string
		tc    packetCase
		req   []byte
	}
	var batch []sent
	id := uint16(1000)
	for _, table := range []struct {
		name  string
		cases []packetCase
	}{{"answered", answered}, {"dropped", dropped}, {"divergent", divergent}} {
		for _, tc := range table.cases {
			id++
			batch = append(batch, sent{table.name, tc, tc.pkt(id)})
		}
	}
	end4, end6 := ping4(1, "end").build(), ping6(1, "end").build()
	for _, s := range batch {
		if _, err := f.Write(s.req); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Fatalf("write %s to the TUN: %v", s.tc.name, err)
		}
	}
	f.Write(end4)
	f.Write(end6)
	replies := map[uint16][]byte{} // by ICMP identifier
	buf := make([]byte, 65536)
	deadline := time.Now().Add(5 * time.Second)
	ended := 0
	for ended < 2 || time.Now().Before(deadline) {
		f.SetReadDeadline(deadline)
		n, err := f.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := buf[:n]
		var icmp []byte
		switch {
		case p[0]>>4 == 4 && n >= 28 && binary.BigEndian.Uint16(p[6:8])&0x1fff == 0 && p[20] == icmpEchoReply:
			icmp = p[20:]
		case p[0]>>4 == 6 && n >= 48 && p[40] == icmpv6EchoReply:
			icmp = p[40:]
		default:
			continue // router solicitations, MLD reports, ICMP errors, fragments
		}
		rid := binary.BigEndian.Uint16(icmp[4:6])
		if rid == 1 {
			ended++
			if ended == 2 {
				deadline = time.Now().Add(200 * time.Millisecond)
			}
			continue
		}
		replies[rid] = append([]byte{}, p...)
	}
	if ended < 2 {
		t.Fatalf("Linux did not answer the last requests")
	}
	id = 1000
	for _, s := range batch {
		id++
		t.Run(s.table+": "+s.tc.name, func(t *testing.T) {
			linux, answered := replies[id]
			got := Echo(echoLn, s.req)
			switch s.table {
			case "answered":
				if !answered {
					t.Fatalf("Linux did not answer; the table is wrong")
				}
				if len(got) != 1 || !bytes.Equal(masked(got[0]), masked(linux)) {
					t.Errorf("Echo %x\nLinux %x", got, linux)
				}
				if s.tc.name == "ipv4" || s.tc.name == "ipv6" {
					t.Logf("request %x\nreply %x", s.req, linux)
				}
			case "dropped":
				if answered {
					t.Errorf("Linux answered %x; the table is wrong", linux)
				}
				if len(got) != 0 {
					t.Errorf("Echo answered %x", got)
				}
			case "divergent":
				if !answered {
					t.Errorf("Linux does not answer: move the case to the dropped table")
				}
			}
		})
	}
}

// waitIPv6 waits until the kernel uses the IPv6 address a of link dev:
// it configures an address, even one added with nodad, from a work
// queue, and until then neither answers for it nor adds its local route.
// Requests sent before would go unanswered.
func waitIPv6(t *testing.T, dev string, a netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(netnstest.IP(t, "-6", "route", "show", "table", "local", "dev", dev), "local "+a.String()+" ") {
		if time.Now().After(deadline) {
			t.Fatalf("the kernel never took %s on %s into use", a, dev)
		}
		time.Sleep(time.Millisecond)
	}
}

// masked clears what Linux chooses freely in a reply: IPv4's
// identification and header checksum, IPv6's flow label.
func masked(p []byte) []byte {
	p = append([]byte{}, p...)
	if p[0]>>4 == 4 {
		p[4], p[5], p[10], p[11] = 0, 0, 0, 0
	} else {
		p[1] &= 0xf0
		p[2], p[3] = 0, 0
	}
	return p
}

// openTUN creates a TUN device the way vpnd does, without vpnd's code.
func openTUN(t *testing.T, name string) *os.File {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun")
}
