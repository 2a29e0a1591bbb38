package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/packet"
	"github.com/vpnd/vpnd/test/internal/wire"
)

// Simulation mode itself (`vpnd --sim`), whatever VPND_TEST_BACKEND says:
// vpnd runs as an ordinary user without any capability; the VPN's fd is
// one end of a SOCK_SEQPACKET socket pair; the simulated host answers
// echo requests to the VPN's own addresses with correct replies and drops
// every other packet; closing the fd ends the VPN with linkGone; protect
// sets no mark; lockdown lives in vpnd and its state directory; nothing
// changes in the namespace, from start to end.

// simAddrs is the simulated VPN of these tests.
const simAddrs = `{"addresses":["10.8.0.2/24","fd00:8::2/64"]}`

var (
	simPeer4, simOwn4 = netip.MustParseAddr("10.8.0.1"), netip.MustParseAddr("10.8.0.2")
	simPeer6, simOwn6 = netip.MustParseAddr("fd00:8::1"), netip.MustParseAddr("fd00:8::2")
)

// startSim starts `vpnd --sim` as simUID and checks that it runs without
// privilege.
func startSim(t *testing.T, opts ...daemonOpt) *daemon {
	t.Helper()
	d := startDaemon(t, append([]daemonOpt{withFlags("--sim")}, opts...)...)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf("\nUid:\t%d\t%d\t%d\t%d\n", simUID, simUID, simUID, simUID),
		"\nCapEff:\t0000000000000000\n", "\nCapPrm:\t0000000000000000\n",
	} {
		if !strings.Contains(string(status), want) {
			t.Fatalf("vpnd --sim should run as uid %d with no capability; /proc/%d/status lacks %q:\n%s", simUID, d.pid, want, status)
		}
	}
	return d
}

// readPacket reads one packet from the simulated TUN fd, waiting up to
// wait; nil if none came.
func readPacket(t testing.TB, fd int, wait time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(wait)
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err == nil {
			return buf[:n]
		}
		if !errors.Is(err, unix.EAGAIN) {
			t.Fatalf("read the simulated TUN: %v", err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		// EINTR (the Go runtime's signals) just means: look again.
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(p, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			t.Fatal(err)
		}
	}
}

func TestSimulation(t *testing.T) {
	t.Parallel()
	d := startSim(t)
	before := nsState(t, d.ns)

	sub := d.rawConn(t)
	writeLine(t, sub, request(1, "subscribe", "{}", 0))
	ok(t, mustRead(t, sub))
	owner := d.rawConn(t)
	fd := setUpKeep(t, owner, 1, simAddrs)
	closed := false
	defer func() {
		if !closed {
			unix.Close(fd)
		}
	}()
	var sc struct {
		Params struct {
			Reason string  `json:"reason"`
			VPN    vpnInfo `json:"vpn"`
		} `json:"params"`
	}
	if m := mustRead(t, sub); json.Unmarshal([]byte(m.raw), &sc) != nil || sc.Params.Reason != "setUp" || !sc.Params.VPN.Simulated {
		t.Errorf("notification %s, want setUp of a simulated VPN", m.raw)
	}
	v := d.simVPN(t)
	if !equalStrings(v.Addresses, []string{"10.8.0.2/24", "fd00:8::2/64"}) {
		t.Errorf("VpnInfo addresses %v", v.Addresses)
	}
	info, err := wire.Describe(fd)
	if err != nil || info.TUN || info.Domain != unix.AF_UNIX || info.Type != unix.SOCK_SEQPACKET || !info.NonBlocking {
		t.Errorf("the VPN's fd is %s (%v), want a non-blocking AF_UNIX SOCK_SEQPACKET socket", info, err)
	}
	if now := nsState(t, d.ns); now != before {
		t.Errorf("a simulated VPN shows in the namespace:\nbefore:\n%s\nnow:\n%s", before, now)
	}

	t.Run("echo requests get correct replies", func(t *testing.T) {
		for i, tc := range []struct{ src, dst netip.Addr }{{simPeer4, simOwn4}, {simPeer6, simOwn6}} {
			data := []byte(fmt.Sprintf("ping %d through the simulated host", i))
			req := packet.EchoRequest(tc.src, tc.dst, 0x77, uint16(i), data)
			if _, err := unix.Write(fd, req); err != nil {
				t.Fatal(err)
			}
			reply := readPacket(t, fd, hangGuard)
			if reply == nil {
				t.Fatalf("no reply to an echo request to %s", tc.dst)
			}
			e, err := packet.ParseEcho(reply)
			if err != nil {
				t.Fatalf("reply % x: %v", reply, err)
			}
			wantType := byte(packet.ICMPEchoReply)
			if tc.dst.Is6() {
				wantType = packet.ICMPv6EchoReply
			}
			if e.Src != tc.dst || e.Dst != tc.src || e.Type != wantType || e.Code != 0 || e.ID != 0x77 ||
				e.Seq != uint16(i) || !bytes.Equal(e.Data, data) || e.TTL == 0 {
				t.Errorf("reply %+v, want type %d from %s to %s with id 0x77, seq %d and the request's data", e, wantType, tc.dst, tc.src, i)
			}
		}
	})

	t.Run("other packets are dropped", func(t *testing.T) {
		udp, err := packet.UDP(netip.AddrPortFrom(simPeer4, 5000), netip.AddrPortFrom(simOwn4, 7), []byte("echo service?"))
		if err != nil {
			t.Fatal(err)
		}
		badSum := packet.EchoRequest(simPeer4, simOwn4, 1, 1, []byte("x"))
		badSum[len(badSum)-1] ^= 0xff
		for _, p := range [][]byte{
			packet.EchoRequest(simPeer4, netip.MustParseAddr("10.8.0.3"), 1, 1, nil),  // not the VPN's address
			packet.EchoRequest(simPeer6, netip.MustParseAddr("fd00:8::3"), 1, 1, nil), // nor this
			packet.EchoRequest(simPeer4, netip.MustParseAddr("198.51.100.1"), 1, 1, nil),
			badSum,
			udp,
			{0x45, 0, 0, 0},
			{},
		} {
			if _, err := unix.Write(fd, p); err != nil {
				t.Fatal(err)
			}
		}
		// The next answer is the one to this request: nothing came before.
		if _, err := unix.Write(fd, packet.EchoRequest(simPeer4, simOwn4, 0x99, 9, nil)); err != nil {
			t.Fatal(err)
		}
		reply := readPacket(t, fd, hangGuard)
		if e, err := packet.ParseEcho(reply); err != nil || e.ID != 0x99 {
			t.Fatalf("first packet back % x (%v), want the reply to id 0x99: the others were answered", reply, err)
		}
		if p := readPacket(t, fd, 100*time.Millisecond); p != nil {
			t.Errorf("one more packet back: % x", p)
		}
	})

	t.Run("protect checks the socket and sets no mark", func(t *testing.T) {
		c := d.dial(t, uidRoot) // the owner's uid (a NORMAL user would get 201)
		wantError(t, c.call("protect", "{}", "pipe"), 2203004)
		wantError(t, c.call("protect", "{}", "tcpfail"), 2203004)
		wantError(t, c.call("protect", "{}", "unixdgram"), 2203004)
		ok(t, c.call("protect", "{}", "udp"))
		if m := c.mark(); m != 0 {
			t.Errorf("SO_MARK %#x after protect, want 0", m)
		}
	})

	t.Run("closing the fd ends the VPN: linkGone", func(t *testing.T) {
		unix.Close(fd)
		closed = true
		m := mustRead(t, sub)
		if json.Unmarshal([]byte(m.raw), &sc) != nil || sc.Params.Reason != "linkGone" {
			t.Errorf("notification %s, want linkGone", m.raw)
		}
		if s := d.vpnStatus(t); s.State != "disconnected" {
			t.Errorf("status %+v", s)
		}
		// The owner's connection is still served, and the slot is free.
		writeLine(t, owner, request(2, "destroy", "{}", 0))
		ok(t, mustRead(t, owner))
	})

	if after := nsState(t, d.ns); after != before {
		t.Errorf("the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestSimulationLockdown: lockdown's API works in simulation mode as on a
// host, in vpnd and its state directory only: the kernel never sees a
// rule, and the state outlives a restart.
func TestSimulationLockdown(t *testing.T) {
	t.Parallel()
	d := startSim(t)
	before := nsState(t, d.ns)
	admin := d.dial(t, uidRoot)
	wantError(t, d.dial(t, uidNormal).call("setLockdown", `{"enabled":true,"applications":["4000"]}`, ""), 201)
	wantError(t, admin.call("setLockdown", `{"enabled":true}`, ""), 19900001)
	ok(t, admin.call("setLockdown", `{"enabled":true,"applications":["4000","4001"]}`, ""))
	if s := admin.status(); !s.Lockdown.Enabled || !equalStrings(s.Lockdown.Applications, []string{"4000", "4001"}) {
		t.Errorf("status lockdown %+v", s.Lockdown)
	}
	if after := nsState(t, d.ns); after != before {
		t.Errorf("simulated lockdown changed the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	d.stop(t)

	d2 := startSim(t, inNetns(d.ns))
	admin = d2.dial(t, uidRoot)
	if s := admin.status(); !s.Lockdown.Enabled || !equalStrings(s.Lockdown.Applications, []string{"4000", "4001"}) {
		t.Errorf("status lockdown after a restart %+v, want it kept in the state directory", s.Lockdown)
	}
	ok(t, admin.call("setLockdown", `{"enabled":false}`, ""))
	if after := nsState(t, d2.ns); after != before {
		t.Errorf("the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestSimulationAppliesNoDNS: a simulation never touches the host's DNS.
// It refuses a DNS backend asked for by name, and auto does not even
// connect to the system bus (a listener of the test's that records every
// connection): an admin's VPN with DNS servers says dnsBackend "none".
func TestSimulationAppliesNoDNS(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"file", "resolved"} {
		code, out := runVpndToExit(t, filepath.Join(newDaemonDir(t), "vpnd.sock"), "--sim", "--dns-backend", backend)
		if want := "vpnd: --dns-backend " + backend + ": a simulation applies no DNS settings; use none\n"; code != 2 || out != want {
			t.Errorf("vpnd --sim --dns-backend %s: exit %d, %q; want 2, %q", backend, code, out, want)
		}
	}

	bus := filepath.Join(newDaemonDir(t), "system_bus_socket")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bus, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(bus, 0o666); err != nil { // the simulated vpnd's uid may connect
		t.Fatal(err)
	}
	d := startSim(t, withEnv("DBUS_SYSTEM_BUS_ADDRESS=unix:path="+bus))
	c := d.dial(t, uidRoot)
	var info vpnInfo
	if err := json.Unmarshal(ok(t, c.call("setUp", dnsFullTunnel, "")), &info); err != nil || !info.Simulated || info.DNSBackend != "none" {
		t.Errorf("setUp: %+v (%v), want a simulated VPN with dnsBackend none", info, err)
	}
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
	// A connection vpnd made waits in the listener's queue. (A deadline
	// already passed would fail Accept before it looks.)
	ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if conn, err := ln.Accept(); err == nil {
		conn.Close()
		t.Errorf("a simulated vpnd connected to the system bus")
	}
}

// TestSimulationExample runs examples/simping, the README's example, as
// an ordinary user against a simulated vpnd.
func TestSimulationExample(t *testing.T) {
	t.Parallel()
	d := startSim(t)
	cmd := exec.Command(bin(t, "simping"), "-socket", d.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uidNormal, Gid: uidNormal, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `echo reply from 10.8.0.2: "hello"`) {
		t.Errorf("simping: %v\n%s", err, out)
	}
	d.waitClean(t, "simping's destroy")
}
