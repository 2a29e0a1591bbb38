package test

// WireGuard on vpnd, end to end: vpnd-wg runs as a normal uid with no
// capability in namespace A, on the TUN that vpnd made, and talks to a
// plain wireguard-go peer in namespace B.
//
//	namespace A (vpnd; vpnd-wg as uid 4000)      namespace B (the peer)
//	  veth-a 192.0.2.1/24  ──────────────────────  veth-b 192.0.2.2/24
//	  main: default via 192.0.2.2                   wg-b 10.8.0.1/24 (root TUN, wireguard-go,
//	  vpn-tun 10.8.0.2/24 (vpnd), routes                 UDP 51820), echo on port 7001,
//	  0.0.0.0/0 for uid 4000                             sink on port 7002
//
// AllowedIPs is 0.0.0.0/0: the endpoint 192.0.2.2 is inside the VPN's
// routes, so only vpnd's protect keeps the encrypted datagrams out of the
// VPN. A's main table has a default route, as a host has: with loose
// reverse-path filtering the kernel checks a reply's source against the
// main table, which must know a way to it.

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/wgclient"
	"github.com/vpnd/vpnd/test/internal/packet"
)

const (
	wgAddrA, wgAddrB = "10.8.0.2", "10.8.0.1"
	wgPort           = 51820
	wgEchoPort       = "7001"
	wgSinkPort       = "7002"
	wgUserSinkPort   = "7004" // wgUID's sink in A
	wgUID            = uidNormal
)

// wgWorld is namespaces A and B joined by a veth, the two ends' wg-quick
// files, and the peer in B.
type wgWorld struct {
	a, b       string
	dir        string // 0755: the config files
	uapiDir    string // owned by wgUID, 0700
	confA      string // A's file, owned by wgUID, 0600
	confB      string
	pubA, pubB wgclient.Key
	// extra are more identities in A that B also knows as peers, each
	// with its own subnet 10.(9+i).0.0/24 (A .2, B .1), for tunnels that
	// run beside vpnd-wg's.
	extra []wgExtra
}

type wgExtra struct {
	conf         string // root's, 0600
	addrA, addrB string
}

// newWGWorld builds the namespaces and the files, and starts the peer's
// wireguard-go device, echo server and sink in B. extra is how many more
// identities A gets (see wgWorld.extra).
func newWGWorld(t testing.TB, extra int) *wgWorld {
	t.Helper()
	w := &wgWorld{a: newNetns(t), b: newNetns(t), dir: newDaemonDir(t)}
	a, b := w.a, w.b
	nsIP(t, a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", b)
	nsIP(t, a, "addr", "add", twAddrA4+"/24", "dev", "veth-a")
	nsIP(t, b, "addr", "add", twAddrB4+"/24", "dev", "veth-b")
	nsIP(t, a, "link", "set", "veth-a", "up")
	nsIP(t, b, "link", "set", "veth-b", "up")
	// vpnd makes reverse-path filtering loose on its own link; loose mode
	// still wants some route back to the tunnel's inner sources.
	nsIP(t, a, "route", "add", "default", "via", twAddrB4)

	privA, err := wgclient.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	privB, err := wgclient.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	psk, err := wgclient.GeneratePresharedKey()
	if err != nil {
		t.Fatal(err)
	}
	w.pubA, w.pubB = privA.PublicKey(), privB.PublicKey()
	all := func(s ...string) []netip.Prefix {
		var ps []netip.Prefix
		for _, x := range s {
			ps = append(ps, netip.MustParsePrefix(x))
		}
		return ps
	}
	cfgA := wgclient.Config{
		Interface: wgclient.Interface{PrivateKey: privA, Addresses: all(wgAddrA + "/24")},
		Peers: []wgclient.Peer{{
			PublicKey: w.pubB, PresharedKey: psk, Endpoint: fmt.Sprintf("%s:%d", twAddrB4, wgPort),
			// ::/0 has no IPv6 address to go with: vpnd-wg leaves it out
			// and vpnd blocks IPv6 for the owner instead.
			AllowedIPs: all("0.0.0.0/0", "::/0"), PersistentKeepalive: 25,
		}},
	}
	cfgB := wgclient.Config{
		Interface: wgclient.Interface{PrivateKey: privB, Addresses: all(wgAddrB + "/24"), ListenPort: wgPort},
		Peers:     []wgclient.Peer{{PublicKey: w.pubA, PresharedKey: psk, AllowedIPs: all(wgAddrA + "/32")}},
	}
	for i := 0; i < extra; i++ {
		priv, err := wgclient.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		x := wgExtra{conf: filepath.Join(w.dir, fmt.Sprintf("x%d.conf", i)),
			addrA: fmt.Sprintf("10.%d.0.2", 9+i), addrB: fmt.Sprintf("10.%d.0.1", 9+i)}
		cfg := cfgA
		cfg.Interface = wgclient.Interface{PrivateKey: priv, Addresses: all(x.addrA + "/24")}
		if err := os.WriteFile(x.conf, cfg.Marshal(), 0o600); err != nil {
			t.Fatal(err)
		}
		cfgB.Peers = append(cfgB.Peers, wgclient.Peer{PublicKey: priv.PublicKey(), PresharedKey: psk, AllowedIPs: all(x.addrA + "/32")})
		w.extra = append(w.extra, x)
	}
	w.confA = filepath.Join(w.dir, "a.conf")
	w.confB = filepath.Join(w.dir, "b.conf")
	w.uapiDir = filepath.Join(w.dir, "run")
	for _, f := range []struct {
		path string
		data []byte
	}{{w.confA, cfgA.Marshal()}, {w.confB, cfgB.Marshal()}} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(w.uapiDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{w.confA, w.uapiDir} {
		if err := os.Chown(p, wgUID, int(primaryGID(wgUID))); err != nil {
			t.Fatal(err)
		}
	}

	peer := startLineProc(t, "wgpeer device", "ip", "netns", "exec", b, lazyBin(t, "wgpeer"), "device", "wg-b", w.confB)
	peer.wait(t, "READY")
	nsIP(t, b, "addr", "add", wgAddrB+"/24", "dev", "wg-b")
	for _, x := range w.extra {
		nsIP(t, b, "addr", "add", x.addrB+"/24", "dev", "wg-b")
	}
	nsIP(t, b, "link", "set", "wg-b", "up")
	startLineProc(t, "wgpeer echo", "ip", "netns", "exec", b, lazyBin(t, "wgpeer"), "echo", wgEchoPort).wait(t, "READY")
	startLineProc(t, "wgpeer sink", "ip", "netns", "exec", b, lazyBin(t, "wgpeer"), "sink", wgSinkPort).wait(t, "READY")
	return w
}

// asUser is the command prefix that runs a program in A as wgUID, with
// no capability and no supplementary group.
func (w *wgWorld) asUser(argv ...string) *exec.Cmd {
	args := []string{"netns", "exec", w.a, "setpriv", fmt.Sprintf("--reuid=%d", wgUID),
		fmt.Sprintf("--regid=%d", primaryGID(wgUID)), "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"}
	return exec.Command("ip", append(args, argv...)...)
}

// up starts `vpnd-wg up` as wgUID against d and waits until the tunnel is
// up.
func (w *wgWorld) up(t testing.TB, d *daemon, flags ...string) *lineProc {
	t.Helper()
	argv := append([]string{lazyBin(t, "vpnd-wg"), "up", "--socket", d.sock, "--uapi-dir", w.uapiDir}, flags...)
	p := startLineCmd(t, "vpnd-wg up", w.asUser(append(argv, w.confA)...))
	p.wait(t, "vpn-tun is up")
	return p
}

// probe makes one TCP and one UDP round trip as wgUID to B's echo server
// through the tunnel, and returns the helper's output and whether both
// came back.
func (w *wgWorld) probe(t testing.TB, timeout time.Duration) (string, bool) {
	t.Helper()
	tok := "tok-" + randomHex(4)
	out, err := w.asUser(lazyBin(t, "wgpeer"), "probe", "--timeout", timeout.String(), wgAddrB, wgEchoPort, tok).CombinedOutput()
	return string(out), err == nil && strings.Contains(string(out), "TCP ok "+tok) && strings.Contains(string(out), "UDP ok "+tok)
}

// startUserSink starts a TCP sink in A as wgUID, on wgUserSinkPort, for
// transfers from B to A through the tunnel.
func (w *wgWorld) startUserSink(t testing.TB) {
	t.Helper()
	startLineCmd(t, "wgpeer sink (uid 4000, A)", w.asUser(lazyBin(t, "wgpeer"), "sink", wgUserSinkPort)).wait(t, "READY")
}

// bulk sends n bytes of TCP through the tunnel each way: from A as wgUID
// to B's sink, and from B to wgUID's sink in A (startUserSink).
func (w *wgWorld) bulk(t testing.TB, n int) {
	t.Helper()
	for _, cmd := range []*exec.Cmd{
		w.asUser(lazyBin(t, "wgpeer"), "blast", wgAddrB+":"+wgSinkPort, fmt.Sprint(n)),
		exec.Command("ip", "netns", "exec", w.b, lazyBin(t, "wgpeer"), "blast", wgAddrA+":"+wgUserSinkPort, fmt.Sprint(n)),
	} {
		if out, err := cmd.CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "BLAST bytes=") {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
	}
}

// largestTCP returns the largest TCP payload captured between A's tunnel
// address and B's, sent by A (out) or received.
func (c *capture) largestTCP(out bool) int {
	c.t.Helper()
	largest := 0
	c.count(func(p capPacket) bool {
		src, dst := wgAddrB, wgAddrA
		if out {
			src, dst = wgAddrA, wgAddrB
		}
		if p.out == out && p.Proto == packet.ProtoTCP && p.Src.String() == src && p.Dst.String() == dst {
			largest = max(largest, len(p.Payload))
		}
		return false
	})
	return largest
}

// wantOffload checks that the tunnel runs as it should with or without
// the TUN's offloads: what vpnd-wg and vpnd say, and what the kernel does
// with bulk TCP on vpn-tun. With TSO on the TUN, A's TCP hands vpnd-wg
// segments larger than the MTU, and vpnd-wg writes what it decrypts
// coalesced (GRO); without, no TCP packet on vpn-tun is larger than the
// MTU allows.
func (w *wgWorld) wantOffload(t *testing.T, d *daemon, p *lineProc, offload bool) {
	t.Helper()
	word := map[bool]string{false: "off", true: "on"}[offload]
	if l, ok := p.find("vpn-tun is up"); !ok || !strings.HasSuffix(l, "; offload "+word) {
		t.Errorf("vpnd-wg said %q, want the up line to end with offload %s", l, word)
	}
	if st := d.vpnStatus(t); st.VPN == nil || st.VPN.Offload != offload {
		t.Errorf("vpnd's status %+v, want offload %v", st.VPN, offload)
	}
	tun := startCapture(t, w.a, "vpn-tun")
	w.bulk(t, 8<<20)
	const mss = 1420 - 40 // the tunnel's MTU less IPv4 and TCP headers
	sent, received := tun.largestTCP(true), tun.largestTCP(false)
	t.Logf("offload %s: largest TCP payload on vpn-tun %d bytes sent, %d received", word, sent, received)
	if offload && (sent <= mss || received <= mss) {
		t.Errorf("with offload, the largest TCP payloads on vpn-tun are %d sent and %d received, want both above %d (TSO, GRO)", sent, received, mss)
	}
	if !offload && (sent > mss || received > mss || sent == 0 || received == 0) {
		t.Errorf("without offload, the largest TCP payloads on vpn-tun are %d sent and %d received, want both in 1-%d", sent, received, mss)
	}
}

// terminate sends sig to a helper and waits (hangGuard) for its exit
// status.
func terminate(t testing.TB, p *lineProc, sig syscall.Signal) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(hangGuard):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not exit within %v of %v", p.name, hangGuard, sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

// procStatus returns the fields of /proc/PID/status named in keys.
func procStatus(t testing.TB, pid int, keys ...string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		for _, want := range keys {
			if k == want {
				out[k] = strings.Join(strings.Fields(v), " ")
			}
		}
	}
	return out
}

// TestWireGuard: vpnd-wg brings a real WireGuard tunnel up as a normal
// user, on a TUN with offloads (and, with --no-offload, without), its
// encrypted traffic leaves by the protected socket, the tunnel breaks
// without protect, and a SIGKILL leaves nothing in the kernel.
func TestWireGuard(t *testing.T) {
	kernelOnly(t, "a real WireGuard tunnel: encrypted packets through the TUN and out by the protected socket's mark")
	w := newWGWorld(t, 0)
	d := startDaemon(t, inNetns(w.a))
	veth := startCapture(t, w.b, "veth-b")
	w.startUserSink(t)

	client := w.up(t, d)
	// A normal user with no capability at all.
	st := procStatus(t, client.cmd.Process.Pid, "Uid", "CapEff", "CapPrm", "CapBnd")
	if st["Uid"] != fmt.Sprintf("%d %d %d %d", wgUID, wgUID, wgUID, wgUID) || st["CapEff"] != "0000000000000000" ||
		st["CapPrm"] != "0000000000000000" || st["CapBnd"] != "0000000000000000" {
		t.Fatalf("vpnd-wg runs with %v, want uid %d and no capability", st, wgUID)
	}
	// stderr comes through its own pipe: the note, written before the "is
	// up" line, may show after it.
	eventually(t, "a note about the IPv6 route left out", func() (bool, string) {
		return strings.Contains(client.errb.String(), "AllowedIPs ::/0 not routed: no IPv6 address"), client.errb.String()
	})
	tun := startCapture(t, w.a, "vpn-tun")

	t.Run("round trips", func(t *testing.T) {
		if out, ok := w.probe(t, hangGuard); !ok {
			t.Fatalf("TCP and UDP round trips through the tunnel:\n%s", out)
		}
	})

	t.Run("bulk TCP with the TUN's offloads", func(t *testing.T) {
		w.wantOffload(t, d, client, true)
	})

	t.Run("encrypted packets leave by the protected socket", func(t *testing.T) {
		// The probes went into the TUN as plain packets...
		if n := tun.count(func(p capPacket) bool { return p.out && p.Dst.String() == wgAddrB }); n == 0 {
			t.Fatalf("the probes' packets to %s never showed on vpn-tun: the capture sees nothing", wgAddrB)
		}
		// ...and came out on the veth as UDP to the endpoint, from A.
		fromA := func(p capPacket) bool {
			return p.Proto == packet.ProtoUDP && p.Src.String() == twAddrA4 && p.Dst.String() == twAddrB4 && p.DstPort == wgPort
		}
		if n := veth.count(fromA); n == 0 {
			t.Errorf("no UDP datagram from %s to %s:%d on veth-b", twAddrA4, twAddrB4, wgPort)
		}
		// None of the tunnel's own datagrams went into the VPN.
		toEndpoint := func(p capPacket) bool { return p.out && p.Dst.String() == twAddrB4 }
		if n := tun.count(toEndpoint); n != 0 {
			t.Errorf("%d packets to the endpoint %s looped into vpn-tun", n, twAddrB4)
		}
	})

	t.Run("show", func(t *testing.T) {
		out, err := w.asUser(lazyBin(t, "vpnd-wg"), "show", "--uapi-dir", w.uapiDir).CombinedOutput()
		if err != nil {
			t.Fatalf("vpnd-wg show: %v\n%s", err, out)
		}
		for _, want := range []string{"interface: vpn-tun\n", "  public key: " + w.pubA.String() + "\n", "  private key: (hidden)\n",
			"\npeer: " + w.pubB.String() + "\n", "  preshared key: (hidden)\n", fmt.Sprintf("  endpoint: %s:%d\n", twAddrB4, wgPort),
			"  allowed ips: 0.0.0.0/0, ::/0\n", "  latest handshake: ", " received, ", " sent\n", "  persistent keepalive: every 25 seconds\n"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("vpnd-wg show lacks %q:\n%s", want, out)
			}
		}
		t.Logf("vpnd-wg show:\n%s", out)
	})

	t.Run("a refusal prints vpnd's code and message", func(t *testing.T) {
		out, err := w.asUser(lazyBin(t, "vpnd-wg"), "up", "--socket", d.sock, "--uapi-dir", w.uapiDir, w.confA).CombinedOutput()
		if code := exitCode(err); code != 1 || !strings.HasPrefix(string(out), "vpnd-wg: 2203002 VPN already exists. (") {
			t.Errorf("second vpnd-wg up: exit %d, output:\n%s", code, out)
		}
		// The first tunnel is untouched.
		if out, ok := w.probe(t, hangGuard); !ok {
			t.Errorf("the tunnel after the refused second up:\n%s", out)
		}
	})

	t.Run("SIGTERM ends it cleanly", func(t *testing.T) {
		if code := terminate(t, client, syscall.SIGTERM); code != 0 {
			t.Errorf("vpnd-wg exited %d on SIGTERM; stderr: %s", code, client.errb.String())
		}
		if _, ok := client.find("vpn-tun is down"); !ok {
			t.Errorf("no \"is down\" line: %q", client.all())
		}
		if probs := d.leftovers(t); len(probs) > 0 {
			t.Errorf("after SIGTERM: %s", strings.Join(probs, "; "))
		}
		if _, err := os.Lstat(wgclient.UAPIPath(w.uapiDir, "vpn-tun")); err == nil {
			t.Errorf("the state socket is still there")
		}
	})

	t.Run("--no-offload: the batching device", func(t *testing.T) {
		c := w.up(t, d, "--no-offload")
		if out, ok := w.probe(t, hangGuard); !ok {
			t.Fatalf("TCP and UDP round trips through the tunnel without offload:\n%s", out)
		}
		w.wantOffload(t, d, c, false)
		if code := terminate(t, c, syscall.SIGTERM); code != 0 {
			t.Errorf("vpnd-wg --no-offload exited %d on SIGTERM; stderr: %s", code, c.errb.String())
		}
		if probs := d.leftovers(t); len(probs) > 0 {
			t.Errorf("after SIGTERM: %s", strings.Join(probs, "; "))
		}
	})

	t.Run("without protect the tunnel breaks", func(t *testing.T) {
		veth.reset()
		broken := w.up(t, d, "--test-no-protect")
		tun := startCapture(t, w.a, "vpn-tun")
		if out, ok := w.probe(t, 3*time.Second); ok {
			t.Errorf("round trips worked without protect:\n%s", out)
		}
		// The tunnel's datagrams to the endpoint were routed into the
		// VPN, that is into the tunnel itself...
		toEndpoint := func(p capPacket) bool {
			return p.out && p.Proto == packet.ProtoUDP && p.Dst.String() == twAddrB4 && p.DstPort == wgPort
		}
		if n := tun.count(toEndpoint); n == 0 {
			t.Errorf("no datagram to the endpoint looped into vpn-tun")
		}
		// ...and none reached B.
		if n := veth.count(func(p capPacket) bool { return p.Proto == packet.ProtoUDP && p.DstPort == wgPort }); n != 0 {
			t.Errorf("%d datagrams reached the endpoint without protect", n)
		}
		terminate(t, broken, syscall.SIGTERM)
		eventually(t, "kernel clean after the unprotected tunnel", func() (bool, string) {
			probs := d.leftovers(t)
			return len(probs) == 0, strings.Join(probs, "; ")
		})
	})

	t.Run("vpnd ending the VPN ends vpnd-wg", func(t *testing.T) {
		c := w.up(t, d)
		down := exec.Command("ip", "netns", "exec", w.a, bin(t, "vpnctl"), "down")
		down.Env = append(os.Environ(), "VPND_SOCKET="+d.sock)
		if out, err := down.CombinedOutput(); err != nil {
			t.Fatalf("vpnctl down as root: %v\n%s", err, out)
		}
		select {
		case <-c.done:
		case <-time.After(hangGuard):
			t.Fatalf("vpnd-wg still runs %v after an admin's destroy", hangGuard)
		}
		if code := c.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(c.errb.String(), "vpnd-wg: the tunnel ended: ") {
			t.Errorf("vpnd-wg exited %d; stderr: %s", code, c.errb.String())
		}
		if probs := d.leftovers(t); len(probs) > 0 {
			t.Errorf("after the destroy: %s", strings.Join(probs, "; "))
		}
	})

	t.Run("SIGKILL leaves nothing in the kernel", func(t *testing.T) {
		c := w.up(t, d)
		if out, ok := w.probe(t, hangGuard); !ok {
			t.Fatalf("round trips before the kill:\n%s", out)
		}
		killed := time.Now()
		terminate(t, c, syscall.SIGKILL)
		var clean time.Duration
		eventually(t, "kernel clean after SIGKILL", func() (bool, string) {
			probs := d.leftovers(t)
			clean = time.Since(killed)
			return len(probs) == 0, strings.Join(probs, "; ")
		})
		t.Logf("link, rules and routes gone %v after SIGKILL", clean.Round(time.Microsecond))
	})
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// ---------------------------------------------------------------------------
// Packet capture

// capture records the IP packets that pass one interface of a test
// namespace, both ways, through an AF_PACKET socket opened inside it.
type capture struct {
	t    testing.TB
	name string
	fd   int
	mu   sync.Mutex
	pkts []capPacket
	err  error // why the capture stopped early
	done chan struct{}
}

type capPacket struct {
	packet.Packet
	out bool // sent by this host (PACKET_OUTGOING), not received
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startCapture captures on ifname in ns until the test ends.
func startCapture(t testing.TB, ns, ifname string) *capture {
	t.Helper()
	link := nsLink(t, ns, ifname)
	if link == nil {
		t.Fatalf("no link %s in %s", ifname, ns)
	}
	fd, err := socketInNetns("/run/netns/"+ns, unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatalf("AF_PACKET socket in %s: %v", ns, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: link.Ifindex}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind to %s: %v", ifname, err)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	c := &capture{t: t, name: ifname + " in " + ns, fd: fd, done: make(chan struct{})}
	stop := make(chan struct{})
	go c.run(stop)
	t.Cleanup(func() {
		close(stop)
		<-c.done
		unix.Close(fd)
	})
	return c
}

func (c *capture) run(stop <-chan struct{}) {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err == unix.ENETDOWN {
				time.Sleep(50 * time.Millisecond) // the link is gone
				continue
			}
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		p, perr := packet.Parse(buf[:n])
		if perr != nil {
			continue
		}
		ll, _ := from.(*unix.SockaddrLinklayer)
		out := ll != nil && ll.Pkttype == unix.PACKET_OUTGOING
		c.mu.Lock()
		c.pkts = append(c.pkts, capPacket{Packet: p, out: out})
		c.mu.Unlock()
	}
}

// count returns how many captured packets match; it first waits a moment
// for packets still in the socket's queue. A capture that stopped fails
// the test: a count of 0 would prove nothing.
func (c *capture) count(match func(capPacket) bool) int {
	c.t.Helper()
	time.Sleep(100 * time.Millisecond)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		c.t.Fatalf("the capture on %s stopped: %v", c.name, c.err)
	}
	n := 0
	for _, p := range c.pkts {
		if match(p) {
			n++
		}
	}
	return n
}

// reset forgets what was captured so far.
func (c *capture) reset() {
	time.Sleep(100 * time.Millisecond)
	c.mu.Lock()
	c.pkts = nil
	c.mu.Unlock()
}

// vpnd-wg checks --uapi-dir as vpnd checks its socket directory, before it
// asks vpnd for anything: a directory that another user owns or may
// write, or a path through a symbolic link, is refused with the reason,
// and no VPN is set up. Before, vpnd-wg served its state there silently.
func TestWireGuardUAPIDirChecked(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	// root's, 0755 (newDaemonDir gives a simulated vpnd's directory to
	// that vpnd's user, whom vpnd-wg rightly refuses).
	base, err := os.MkdirTemp("", "vpndtest-wg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	conf := filepath.Join(base, "wg0.conf")
	priv, err := wgclient.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	peer, err := wgclient.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := wgclient.Config{
		Interface: wgclient.Interface{PrivateKey: priv, Addresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24")}},
		Peers: []wgclient.Peer{{PublicKey: peer.PublicKey(), Endpoint: "192.0.2.1:51820",
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}}},
	}
	if err := os.WriteFile(conf, cfg.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(conf, wgUID, int(primaryGID(wgUID)))
	asUser := func(argv ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", d.ns, "setpriv", fmt.Sprintf("--reuid=%d", wgUID),
			fmt.Sprintf("--regid=%d", primaryGID(wgUID)), "--clear-groups"}, argv...)...)
	}
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T) (uapiDir, refused string)
		want    string
	}{
		{"in another user's directory, mode 0777", func(t *testing.T) (string, string) {
			shared := filepath.Join(base, "shared")
			mkdirOwned(t, shared, 0o777, uidNormal2)
			return filepath.Join(shared, "vpnd-wg"), shared
		}, fmt.Sprintf("is owned by uid %d (only root or vpnd-wg's own uid %d may own it)", uidNormal2, wgUID)},
		{"through a symbolic link", func(t *testing.T) (string, string) {
			mkdirOwned(t, filepath.Join(base, "real"), 0o700, wgUID)
			link := filepath.Join(base, "link")
			os.Symlink(filepath.Join(base, "real"), link)
			return link, link
		}, "is a symbolic link (give --uapi-dir a path without symbolic links)"},
		{"the user's own, but writable by all", func(t *testing.T) (string, string) {
			mine := filepath.Join(base, "mine")
			mkdirOwned(t, mine, os.ModeSticky|0o777, wgUID)
			return mine, mine
		}, "has mode 1777"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uapiDir, refused := tc.prepare(t)
			cmd := asUser(lazyBin(t, "vpnd-wg"), "up", "--socket", d.sock, "--uapi-dir", uapiDir, conf)
			var out syncBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			exited := startBackground(t, cmd)
			select {
			case <-exited:
			case <-time.After(hangGuard):
				cmd.Process.Signal(syscall.SIGTERM)
				<-exited
				t.Fatalf("vpnd-wg up used --uapi-dir %s and ran:\n%s", uapiDir, out.String())
			}
			want := "vpnd-wg: unsafe UAPI directory: " + refused + " " + tc.want
			if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(out.String(), want) {
				t.Errorf("exit %d, want 1 saying %q:\n%s", code, want, out.String())
			}
			if p := d.leftovers(t); len(p) > 0 {
				t.Errorf("a VPN was set up: %s", strings.Join(p, "; "))
			}
			if _, err := os.Lstat(filepath.Join(uapiDir, "vpn-tun.sock")); !os.IsNotExist(err) {
				t.Errorf("a socket in the refused directory (%v)", err)
			}
			show, err := asUser(lazyBin(t, "vpnd-wg"), "show", "--uapi-dir", uapiDir).CombinedOutput()
			if exitCode(err) != 1 || !strings.Contains(string(show), want) {
				t.Errorf("vpnd-wg show: %v:\n%s", err, show)
			}
		})
	}
}
