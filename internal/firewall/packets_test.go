package firewall

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/firewall/firewalltest"
	"github.com/vpnd/vpnd/internal/netnstest"
)

// Real packets: uid 2101 sends each datagram that policy routing cannot
// stop out of a veth, and the frames are captured on the peer's end, in a
// namespace of its own.
//
//	test namespace                              peer namespace
//	  up0 192.168.77.1/24 2001:db8:77::1/64  ──  peer0 (AF_PACKET capture)
//	  lo: receivers on 127.0.0.1, ::1, 192.168.77.1
//
// Without vpnd's table every datagram reaches the peer, so each check can
// fail; with it none of uid 2101's does, and sendto says EPERM. "Nothing
// arrived" is claimed only after a later datagram on the same path did.

const (
	uidListed = 2101 // locked down
	uidFree   = 2102 // not listed
	protect   = 0x20000
	probePort = 9999
)

var (
	addr4  = netip.MustParseAddr("192.168.77.1")
	bcast4 = netip.MustParseAddr("192.168.77.255")
	peer4  = netip.MustParseAddr("192.168.77.2")
	addr6  = netip.MustParseAddr("2001:db8:77::1")
	peer6  = netip.MustParseAddr("2001:db8:77::2")
)

// Hang guards, not timing claims: a frame that comes ends the wait at once.
const (
	arrive  = 5 * time.Second
	settled = 10 * time.Second
)

type packetWorld struct {
	bin     string // the test binary, runnable by other uids
	capture *firewalltest.Capture
	n       int
}

// probes are the attack's datagrams plus plain unicast to the peer: a
// locked-down user's unicast is the firewall's too (the policy rules
// refuse it first in vpnd, with ENETUNREACH).
func probes() []firewalltest.Probe {
	return append(firewalltest.Leaks("up0", addr4, bcast4, probePort),
		firewalltest.Probe{Name: "IPv4 unicast to the peer", To: netip.AddrPortFrom(peer4, probePort)},
		firewalltest.Probe{Name: "IPv6 unicast to the peer", To: netip.AddrPortFrom(peer6, probePort)},
	)
}

func newPacketWorld(t *testing.T) *packetWorld {
	t.Helper()
	netnstest.LoUp(t)
	peerNS := inNewNetns(t)
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "peer0", PeerNamespace: netlink.NsFd(peerNS)}
	if err := netlink.LinkAdd(up); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	// No DAD: the addresses are usable at once.
	if err := writeSysctl("net/ipv6/conf/up0/accept_dad", "0"); err != nil {
		t.Fatal(err)
	}
	netnstest.IP(t, "addr", "add", "192.168.77.1/24", "dev", "up0")
	netnstest.IP(t, "addr", "add", "2001:db8:77::1/64", "dev", "up0", "nodad")
	netnstest.IP(t, "link", "set", "up0", "up")
	w := &packetWorld{bin: selfForOthers(t)}
	var peerMAC net.HardwareAddr
	err := inNetns(peerNS, func() error {
		l, err := netlink.LinkByName("peer0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		peerMAC = l.Attrs().HardwareAddr
		w.capture, err = firewalltest.NewCapture(l.Attrs().Index, nil)
		return err
	})
	if err != nil {
		t.Fatalf("peer namespace: %v", err)
	}
	t.Cleanup(func() { w.capture.Close() })
	// The peer has no addresses: unicast goes to its MAC directly.
	netnstest.IP(t, "neigh", "add", peer4.String(), "lladdr", peerMAC.String(), "dev", "up0")
	netnstest.IP(t, "neigh", "add", peer6.String(), "lladdr", peerMAC.String(), "dev", "up0")
	// Wait until both families leave by up0 (carrier, addresses).
	for _, to := range []netip.Addr{peer4, peer6} {
		deadline := time.Now().Add(settled)
		for {
			tok := w.token("ready")
			err := firewalltest.Probe{To: netip.AddrPortFrom(to, probePort)}.Send(tok)
			if err == nil && w.capture.Wait(tok, 100*time.Millisecond) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("datagrams to %s do not reach the peer (last error %v)", to, err)
			}
		}
	}
	return w
}

// writeSysctl writes a sysctl of the test's own namespace.
func writeSysctl(path, value string) error {
	return os.WriteFile("/proc/sys/"+path, []byte(value), 0o644)
}

func (w *packetWorld) token(what string) string {
	w.n++
	return fmt.Sprintf("tok%d-%s", w.n, strings.Map(func(r rune) rune {
		if r == ' ' || r == '%' || r == '=' {
			return '_'
		}
		return r
	}, what))
}

// send sends each probe once as uid (with mark on its socket if non-zero)
// and returns the tokens and sendto's answers ("OK", "ERR EPERM ...").
func (w *packetWorld) send(t *testing.T, uid uint32, mark uint32, ps []firewalltest.Probe) (tokens, answers []string) {
	t.Helper()
	var args []string
	for _, p := range ps {
		p.Mark = mark
		tok := w.token(fmt.Sprintf("uid%d-%s", uid, p.Name))
		tokens = append(tokens, tok)
		args = append(args, p.Arg(tok))
	}
	answers = runAs(t, w.bin, uid, mark != 0, envSend+"=1", args...)
	if len(answers) != len(ps) {
		t.Fatalf("sender answered %q for %d probes", answers, len(ps))
	}
	return tokens, answers
}

// wantLeave sends ps as uid and expects each to be sent and to reach the
// peer.
func (w *packetWorld) wantLeave(t *testing.T, uid, mark uint32, ps []firewalltest.Probe) {
	t.Helper()
	tokens, answers := w.send(t, uid, mark, ps)
	for i, p := range ps {
		if answers[i] != "OK" {
			t.Errorf("%s from uid %d (mark %#x): sendto: %s, want success", p.Name, uid, mark, answers[i])
		} else if !w.capture.Wait(tokens[i], arrive) {
			t.Errorf("%s from uid %d (mark %#x): sent, but nothing reached the peer", p.Name, uid, mark)
		}
	}
}

// wantBlocked sends ps as uid and expects each sendto to fail with EPERM
// and nothing to reach the peer: checked after the same datagrams from
// uidFree did reach it.
func (w *packetWorld) wantBlocked(t *testing.T, uid, mark uint32, ps []firewalltest.Probe) {
	t.Helper()
	tokens, answers := w.send(t, uid, mark, ps)
	for i, p := range ps {
		if !strings.HasPrefix(answers[i], "ERR EPERM ") {
			t.Errorf("%s from uid %d (mark %#x): sendto: %s, want EPERM", p.Name, uid, mark, answers[i])
		}
	}
	w.wantLeave(t, uidFree, 0, ps) // later, same paths
	for i, p := range ps {
		if w.capture.Seen(tokens[i]) {
			t.Errorf("%s from uid %d (mark %#x): reached the peer", p.Name, uid, mark)
		}
	}
}

func ofFamily(ps []firewalltest.Probe, v6 bool) []firewalltest.Probe {
	var out []firewalltest.Probe
	for _, p := range ps {
		if p.To.Addr().Is6() == v6 {
			out = append(out, p)
		}
	}
	return out
}

func TestFirewallDropsWhatRoutingMisses(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	w := newPacketWorld(t)
	tab, err := Open("vpnd")
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	apply := func(t *testing.T, s Spec) {
		t.Helper()
		if err := tab.Apply(s); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	all := probes()
	lockdown := Spec{Lockdown: []UIDRange{{Start: uidListed, End: uidListed}}, AllowIfname: "vpn-tun", ProtectMark: protect}

	t.Run("without the table every datagram leaves", func(t *testing.T) {
		w.wantLeave(t, uidListed, 0, all)
	})
	t.Run("lockdown: EPERM, nothing reaches the peer", func(t *testing.T) {
		apply(t, lockdown)
		w.wantBlocked(t, uidListed, 0, all)
	})
	t.Run("lockdown: a protected socket passes", func(t *testing.T) {
		apply(t, lockdown)
		w.wantLeave(t, uidListed, protect, all)
		// Another bit of the mark is not the protect bit.
		w.wantBlocked(t, uidListed, 0x1, all)
	})
	t.Run("lockdown: loopback and local delivery pass", func(t *testing.T) {
		apply(t, lockdown)
		w.wantLocal(t, uidListed)
	})
	t.Run("lockdown: the VPN's link passes", func(t *testing.T) {
		// up0 plays the VPN's link: uid 2101's datagrams may leave by it.
		apply(t, Spec{Lockdown: lockdown.Lockdown, AllowIfname: "up0"})
		w.wantLeave(t, uidListed, 0, all)
	})
	t.Run("fail-closed IPv6: only IPv6 is dropped", func(t *testing.T) {
		apply(t, Spec{FailClosedV6: lockdown.Lockdown, AllowIfname: "vpn-tun", ProtectMark: protect})
		w.wantBlocked(t, uidListed, 0, ofFamily(all, true))
		w.wantLeave(t, uidListed, 0, ofFamily(all, false))
		w.wantLeave(t, uidListed, protect, ofFamily(all, true))
	})
	t.Run("fail-closed IPv4: only IPv4 is dropped", func(t *testing.T) {
		apply(t, Spec{FailClosedV4: lockdown.Lockdown, AllowIfname: "vpn-tun", ProtectMark: protect})
		w.wantBlocked(t, uidListed, 0, ofFamily(all, false))
		w.wantLeave(t, uidListed, 0, ofFamily(all, true))
		w.wantLeave(t, uidListed, protect, ofFamily(all, false))
	})
	t.Run("256 listed users and an ADMIN VPN's complement ranges", func(t *testing.T) {
		// 256 users, every other uid from 2001, so no two merge: 2101
		// is the 51st. For fail-closed, the complement of another 256
		// (an ADMIN VPN's blocked list), among them the free user.
		listed, other := []uint32{}, []uint32{uidFree}
		for i := range uint32(256) {
			listed = append(listed, 2001+2*i)
			if i < 255 {
				other = append(other, 10001+2*i)
			}
		}
		s := Spec{Lockdown: rangesOf(listed), FailClosedV6: complementOf(other), ProtectMark: protect}
		if len(s.Lockdown) != 256 || len(s.FailClosedV6) != 257 {
			t.Fatalf("%d and %d ranges", len(s.Lockdown), len(s.FailClosedV6))
		}
		apply(t, s)
		if ok, err := tab.Holds(s); !ok || err != nil {
			t.Fatalf("Holds = %v, %v", ok, err)
		}
		w.wantBlocked(t, uidListed, 0, all)
	})
	t.Run("neighbour discovery without a socket is not matched", func(t *testing.T) {
		// Even with root locked down: the kernel's neighbour
		// solicitation for an unknown address has no socket of root's.
		apply(t, Spec{Lockdown: []UIDRange{{Start: 0, End: 0}}})
		target := netip.MustParseAddr("2001:db8:77::3")
		_, answers := w.send(t, uidFree, 0, []firewalltest.Probe{{Name: "unicast to an unknown neighbour", To: netip.AddrPortFrom(target, probePort)}})
		if answers[0] != "OK" {
			t.Fatalf("sendto: %s", answers[0])
		}
		if !w.waitFrame(isSolicitation(target), arrive) {
			t.Errorf("no neighbour solicitation for %s reached the peer", target)
		}
	})
	t.Run("no table again: every datagram leaves", func(t *testing.T) {
		apply(t, Spec{})
		w.wantLeave(t, uidListed, 0, all)
	})
}

func rangesOf(uids []uint32) []UIDRange {
	var out []UIDRange
	for _, u := range uids {
		out = append(out, UIDRange{Start: u, End: u})
	}
	return out
}

func complementOf(uids []uint32) []UIDRange {
	var out []UIDRange
	next := uint32(0)
	for _, u := range uids {
		if u > next {
			out = append(out, UIDRange{Start: next, End: u - 1})
		}
		next = u + 1
	}
	return append(out, UIDRange{Start: next, End: 4294967294})
}

// isSolicitation matches an IPv6 neighbour solicitation (ICMPv6 type 135)
// for target, as captured (the IPv6 packet, no link header).
func isSolicitation(target netip.Addr) func([]byte) bool {
	t16 := target.As16()
	return func(b []byte) bool {
		return len(b) >= 64 && b[0]>>4 == 6 && b[6] == unix.IPPROTO_ICMPV6 && b[40] == 135 && bytes.Equal(b[48:64], t16[:])
	}
}

func (w *packetWorld) waitFrame(match func([]byte) bool, d time.Duration) bool {
	return w.capture.WaitFunc(match, d)
}

// wantLocal checks that uid's datagrams to loopback and to the host's own
// address are delivered.
func (w *packetWorld) wantLocal(t *testing.T, uid uint32) {
	t.Helper()
	var ps []firewalltest.Probe
	var socks []*net.UDPConn
	for _, a := range []string{"127.0.0.1", "::1", addr4.String(), addr6.String()} {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(a), 0)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		socks = append(socks, c)
		ps = append(ps, firewalltest.Probe{Name: "local delivery to " + a, To: c.LocalAddr().(*net.UDPAddr).AddrPort()})
	}
	tokens, answers := w.send(t, uid, 0, ps)
	buf := make([]byte, 2048)
	for i, c := range socks {
		if answers[i] != "OK" {
			t.Errorf("%s: sendto: %s", ps[i].Name, answers[i])
			continue
		}
		c.SetReadDeadline(time.Now().Add(arrive))
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != tokens[i] {
			t.Errorf("%s: read %q, %v; want %q", ps[i].Name, buf[:n], err, tokens[i])
		}
	}
}
