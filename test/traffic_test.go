package test

// Traffic tests: who the VPN covers and its rules (docs/routing.md),
// proven with real datagrams between two throwaway namespaces.
//
//	namespace A (vpnd, clients)            namespace B (peer host)
//	  veth 192.0.2.1/24  2001:db8:1::1/64 ──  veth 192.0.2.2/24  2001:db8:1::2/64
//	  main: 198.51.100.0/24 via 192.0.2.2     lo: 198.51.100.1, 198.51.100.2,
//	        2001:db8:100::/64 via ...::2          2001:db8:100::1, 2001:db8:100::2
//	  vpn-tun (vpnd): 10.8.0.2/24 fd00:8::2/64    netpeer sink on UDP+TCP port 7000
//
// A datagram that the policy rules send into the VPN shows up on the TUN
// fd its owner holds; one that bypasses the VPN reaches B's sink. "Did
// not reach B" is only claimed after a later datagram did reach B.

import (
	"bufio"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Addresses of the two-namespace world.
const (
	twAddrA4, twAddrB4 = "192.0.2.1", "192.0.2.2"
	twAddrA6, twAddrB6 = "2001:db8:1::1", "2001:db8:1::2"
	twRemote4          = "198.51.100.1" // inside the VPN's routes
	twExcluded4        = "198.51.100.2" // excluded from them
	twRemote6          = "2001:db8:100::1"
	twExcluded6        = "2001:db8:100::2"
	twSinkPort         = "7000"
	twDecapPort        = "5555"
	uidAdmin           = 4002 // admin through the --accounts policy below
)

// twAccounts makes uid 4002 an ADMIN besides root.
const twAccounts = `{"default":"normal","users":{"root":"admin","4002":"admin"}}`

// twVPN is the dual-stack split-tunnel config of the traffic tests: B's
// remote prefixes enter the VPN, one address of each is excluded.
const twVPN = `"addresses":["10.8.0.2/24","fd00:8::2/64"],` +
	`"routes":["198.51.100.0/24","2001:db8:100::/64",` +
	`{"destination":{"address":{"address":"198.51.100.2"},"prefixLength":32},"isExcludedRoute":true},` +
	`{"destination":{"address":{"address":"2001:db8:100::2"},"prefixLength":128},"isExcludedRoute":true}]`

// twFamily is one address family's view of the world.
type twFamily struct {
	name              string
	udp, tcp          string // rawclient socket kinds
	remote, excluded  string
	tunSrc, fromAoutB string // source B sees for traffic that bypasses the VPN
}

var twFamilies = []twFamily{
	{"ipv4", "udp", "tcp", twRemote4, twExcluded4, "10.8.0.2", twAddrA4},
	{"ipv6", "udp6", "tcp6", twRemote6, twExcluded6, "fd00:8::2", twAddrA6},
}

// world is namespace A (vpnd) joined to namespace B (the peer host).
type world struct {
	d    *daemon
	a, b string
	sink *lineProc
	n    int // token counter
}

// newWorld builds the two namespaces, starts vpnd in A and B's sink.
func newWorld(t *testing.T, opts ...daemonOpt) *world {
	t.Helper()
	w := &world{a: newNetns(t), b: newNetns(t)}
	a, b := w.a, w.b
	nsIP(t, a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", b)
	nsIP(t, a, "addr", "add", twAddrA4+"/24", "dev", "veth-a")
	nsIP(t, a, "addr", "add", twAddrA6+"/64", "dev", "veth-a", "nodad")
	nsIP(t, b, "addr", "add", twAddrB4+"/24", "dev", "veth-b")
	nsIP(t, b, "addr", "add", twAddrB6+"/64", "dev", "veth-b", "nodad")
	nsIP(t, a, "link", "set", "veth-a", "up")
	nsIP(t, b, "link", "set", "veth-b", "up")
	for _, addr := range []string{twRemote4 + "/32", twExcluded4 + "/32", twRemote6 + "/128", twExcluded6 + "/128"} {
		nsIP(t, b, "addr", "add", addr, "dev", "lo")
	}
	nsIP(t, a, "route", "add", "198.51.100.0/24", "via", twAddrB4)
	nsIP(t, a, "-6", "route", "add", "2001:db8:100::/64", "via", twAddrB6)
	strictRPFilter(t, a)
	w.d = startDaemon(t, append([]daemonOpt{inNetns(a)}, opts...)...)
	w.sink = startLineProc(t, "netpeer sink", "ip", "netns", "exec", b, lazyBin(t, "netpeer"), "sink", twSinkPort)
	w.sink.wait(t, "READY")
	return w
}

// strictRPFilter turns on strict reverse-path filtering in namespace ns
// (net.ipv4.conf.all and .default rp_filter=1, as RHEL ships), so that
// the traffic tests run on the kind of host where it bites: strict mode
// drops what a NORMAL owner's app writes into the TUN unless vpnd made its
// own link loose (see TestStrictRPFilter and docs/routing.md).
func strictRPFilter(t testing.TB, ns string) {
	t.Helper()
	script := `for f in /proc/sys/net/ipv4/conf/all/rp_filter /proc/sys/net/ipv4/conf/default/rp_filter; do echo 1 > $f; done`
	if out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("rp_filter in %s: %v: %s", ns, err, out)
	}
}

// token returns a payload no other step of the test uses.
func (w *world) token(what string) string {
	w.n++
	return fmt.Sprintf("tok%d-%s", w.n, strings.ReplaceAll(what, " ", "_"))
}

// lineProc is a helper process whose stdout lines the test reads.
type lineProc struct {
	name  string
	cmd   *exec.Cmd
	stdin interface{ Close() error }
	mu    sync.Mutex
	lines []string
	grew  chan struct{} // closed and replaced on every new line
	done  chan struct{}
	errb  *syncBuffer
}

func startLineProc(t testing.TB, name string, argv ...string) *lineProc {
	t.Helper()
	return startLineCmd(t, name, exec.Command(argv[0], argv[1:]...))
}

func startLineCmd(t testing.TB, name string, cmd *exec.Cmd) *lineProc {
	t.Helper()
	p := &lineProc{name: name, cmd: cmd, grew: make(chan struct{}), done: make(chan struct{}), errb: &syncBuffer{}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = p.errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.grew)
			p.grew = make(chan struct{})
			p.mu.Unlock()
		}
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s\nstderr:\n%s", name, strings.Join(p.all(), "\n"), p.errb.String())
		}
	})
	return p
}

// stop closes stdin, then signals, then kills; it waits for the exit.
func (p *lineProc) stop(t testing.TB) {
	p.stdin.Close()
	select {
	case <-p.done:
		return
	case <-time.After(time.Second):
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(hangGuard):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *lineProc) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// find returns the first line containing every sub.
func (p *lineProc) find(subs ...string) (string, bool) {
	for _, l := range p.all() {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(l, s)
		}
		if all {
			return l, true
		}
	}
	return "", false
}

// wait waits (hangGuard) for a line containing every sub and returns it.
func (p *lineProc) wait(t testing.TB, subs ...string) string {
	t.Helper()
	deadline := time.After(hangGuard)
	for {
		p.mu.Lock()
		grew := p.grew
		p.mu.Unlock()
		if l, ok := p.find(subs...); ok {
			return l
		}
		select {
		case <-grew:
		case <-p.done:
			if l, ok := p.find(subs...); ok {
				return l
			}
			t.Fatalf("%s exited without printing %q; stderr: %s", p.name, subs, p.errb.String())
		case <-deadline:
			t.Fatalf("%s did not print %q within %v; got %q", p.name, subs, hangGuard, p.all())
		}
	}
}

// ---------------------------------------------------------------------------
// Clients inside namespace A

// dialIn starts a rawclient as uid inside the daemon's namespace, so that
// its sockets are A's. (d.dial runs it in the test's own namespace, which is
// fine for the wire but must never carry traffic.)
func (w *world) dialIn(t testing.TB, uid uint32) *client {
	t.Helper()
	argv := []string{"netns", "exec", w.a}
	if uid != 0 {
		argv = append(argv, "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", primaryGID(uid)), "--clear-groups")
	}
	argv = append(argv, bin(t, "rawclient"), w.d.sock)
	cmd := exec.Command("ip", argv...)
	return startClient(t, cmd, uid, fmt.Sprintf("READY uid=%d ", uid))
}

// setUpVPN sets up cfg (JSON object members) as c and returns the info.
func (c *client) setUpVPN(members string) vpnInfo {
	c.t.Helper()
	return setUpOK(c.t, c.call("setUp", "{"+members+"}", ""))
}

// newSock creates a named socket in the client.
func (c *client) newSock(name, kind string) { c.t.Helper(); c.must("sock " + name + " " + kind) }

// protectSock asks vpnd to protect the client's named socket.
func (c *client) protectSock(name string) {
	c.t.Helper()
	ok(c.t, c.call("protect", "{}", "@"+name))
}

// udpSend sends text from the named socket to ip:port.
func (c *client) udpSend(name, ip, port, text string) {
	c.t.Helper()
	c.must(fmt.Sprintf("sendto %s %s %s %s", name, ip, port, text))
}

// tunPacket reads the client's TUN for up to d and returns the UDP or TCP
// packet carrying token ("" if none).
func (c *client) tunPacket(d time.Duration, token string) string {
	c.t.Helper()
	for _, l := range c.must(fmt.Sprintf("tunread %d %s", d.Milliseconds(), token)) {
		if strings.HasPrefix(l, "PKT ") {
			return strings.TrimPrefix(l, "PKT ")
		}
	}
	return ""
}

// ---------------------------------------------------------------------------
// Assertions with packets

// Windows of the traffic checks. A positive wait is a hang guard; the
// negative window only bounds "nothing came", and every negative claim is
// backed by a later positive control that took the other path.
const (
	twArrive  = 5 * time.Second
	twNothing = 300 * time.Millisecond
)

// wantCaptured sends a fresh unprotected datagram from sender to dst and
// expects it on tunOwner's TUN, addressed to dst:7000 with the TUN's
// source. It returns the token, which must never reach B (see wantNotAtB).
func (w *world) wantCaptured(t *testing.T, f twFamily, sender, tunOwner *client, sock, dst, what string) string {
	t.Helper()
	tok := w.token(what)
	if sock == "" {
		sock = tok
		sender.newSock(sock, f.udp)
	}
	sender.udpSend(sock, dst, twSinkPort, tok)
	pkt := tunOwner.tunPacket(twArrive, tok)
	want := fmt.Sprintf("%s udp %s ", f.name[3:], f.tunSrc)
	if pkt == "" {
		t.Errorf("%s: datagram %s to %s did not arrive on the TUN of uid %d", what, tok, dst, tunOwner.uid)
	} else if !strings.HasPrefix(pkt, want) || !strings.Contains(pkt, fmt.Sprintf(" %s %s %q", dst, twSinkPort, tok)) {
		t.Errorf("%s: TUN packet %q, want %s... to %s:%s carrying %q", what, pkt, want, dst, twSinkPort, tok)
	}
	return tok
}

// wantAtB sends a datagram from sender's socket (a fresh unprotected one if
// sock is "") to dst and expects B's sink to get it from A's veth address,
// and tunOwner's TUN (if any) not to.
func (w *world) wantAtB(t *testing.T, f twFamily, sender, tunOwner *client, sock, dst, what string) {
	t.Helper()
	tok := w.token(what)
	if sock == "" {
		sock = tok
		sender.newSock(sock, f.udp)
	}
	sender.udpSend(sock, dst, twSinkPort, tok)
	if l, ok := w.sinkWait(tok); !ok {
		t.Errorf("%s: datagram %s to %s did not reach B", what, tok, dst)
	} else if !strings.HasPrefix(l, "UDP "+bracket(f.fromAoutB)+":") {
		t.Errorf("%s: B got %q, want it from %s", what, l, f.fromAoutB)
	}
	if tunOwner != nil {
		if pkt := tunOwner.tunPacket(twNothing, tok); pkt != "" {
			t.Errorf("%s: datagram %s also showed up on the TUN: %s", what, tok, pkt)
		}
	}
}

// wantNotAtB checks that none of the captured tokens reached B. Call it
// after a wantAtB, whose datagram was sent later and did arrive.
func (w *world) wantNotAtB(t *testing.T, tokens ...string) {
	t.Helper()
	for _, tok := range tokens {
		if l, ok := w.sink.find(tok); ok {
			t.Errorf("captured datagram %s also reached B: %q", tok, l)
		}
	}
}

func (w *world) sinkWait(tok string) (string, bool) {
	deadline := time.Now().Add(twArrive)
	for time.Now().Before(deadline) {
		w.sink.mu.Lock()
		grew := w.sink.grew
		w.sink.mu.Unlock()
		if l, ok := w.sink.find(" " + tok); ok {
			return l, true
		}
		select {
		case <-grew:
		case <-time.After(time.Until(deadline)):
		}
	}
	return w.sink.find(" " + tok)
}

func bracket(ip string) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]"
	}
	return ip
}

// ---------------------------------------------------------------------------
// The tests

// A NORMAL owner's VPN carries only the owner's uid; the owner's
// protected sockets (protected before or after setUp) bypass it; excluded
// routes bypass it.
func TestTrafficNormalOwner(t *testing.T) {
	kernelOnly(t, "real datagrams through the VPN")
	t.Parallel()
	w := newWorld(t)
	owner := w.dialIn(t, uidNormal)
	other := w.dialIn(t, uidNormal2)

	// OpenHarmony's sample order: protect the tunnel socket, then set up.
	for _, f := range twFamilies {
		owner.newSock("before-"+f.name, f.udp)
		owner.protectSock("before-" + f.name)
	}
	owner.newSock("tcp-before", "tcp")
	owner.protectSock("tcp-before")
	owner.setUpVPN(twVPN)
	for _, f := range twFamilies {
		owner.newSock("after-"+f.name, f.udp)
		owner.protectSock("after-" + f.name)
	}

	for _, f := range twFamilies {
		t.Run(f.name, func(t *testing.T) {
			captured := w.wantCaptured(t, f, owner, owner, "", f.remote, "owner unprotected")
			w.wantAtB(t, f, owner, owner, "before-"+f.name, f.remote, "owner protected before setUp")
			w.wantAtB(t, f, owner, owner, "after-"+f.name, f.remote, "owner protected after setUp")
			w.wantAtB(t, f, owner, owner, "", f.excluded, "owner unprotected to an excluded route")
			w.wantAtB(t, f, other, owner, "", f.remote, "another NORMAL user")
			w.wantNotAtB(t, captured)
		})
	}

	t.Run("protected TCP connection", func(t *testing.T) {
		tok := w.token("owner protected tcp")
		owner.must("connect tcp-before " + twRemote4 + " " + twSinkPort)
		owner.must("write tcp-before " + tok)
		if l, ok := w.sinkWait(tok); !ok || !strings.HasPrefix(l, "TCP "+twAddrA4+":") {
			t.Errorf("protected TCP connection: B got %q (%v), want a line from %s", l, ok, twAddrA4)
		}
	})
}

// An ADMIN owner's VPN carries every uid, and a socket that another
// user protected does not escape it; only the owner's protected sockets
// and excluded routes bypass it.
func TestTrafficAdminOwner(t *testing.T) {
	kernelOnly(t, "real datagrams through the VPN")
	t.Parallel()
	w := newWorld(t)
	owner := w.dialIn(t, uidRoot)
	other := w.dialIn(t, uidNormal)
	third := w.dialIn(t, uidNormal2)

	// With no VPN, a NORMAL user may protect (the check order).
	for _, f := range twFamilies {
		other.newSock("prot-"+f.name, f.udp)
		other.protectSock("prot-" + f.name)
		owner.newSock("prot-"+f.name, f.udp)
		owner.protectSock("prot-" + f.name)
	}
	if m := other.mark(); m&defaultMark == 0 {
		t.Fatalf("uid %d's socket was not marked by protect: mark %#x", other.uid, m)
	}
	owner.setUpVPN(twVPN)
	for _, f := range twFamilies {
		t.Run(f.name, func(t *testing.T) {
			var captured []string
			captured = append(captured,
				w.wantCaptured(t, f, owner, owner, "", f.remote, "admin owner unprotected"),
				w.wantCaptured(t, f, other, owner, "", f.remote, "other user unprotected"),
				w.wantCaptured(t, f, other, owner, "prot-"+f.name, f.remote, "other user protected"),
				w.wantCaptured(t, f, third, owner, "", f.remote, "third user"))
			w.wantAtB(t, f, other, owner, "", f.excluded, "other user to an excluded route")
			w.wantAtB(t, f, owner, owner, "prot-"+f.name, f.remote, "admin owner protected")
			w.wantNotAtB(t, captured...)
		})
	}
}

// trustedApplications and blockedApplications narrow an ADMIN's VPN,
// here an ADMIN made so by the --accounts policy.
func TestTrafficAppLists(t *testing.T) {
	kernelOnly(t, "real datagrams through the VPN")
	t.Parallel()
	w := newWorld(t, withAccounts(twAccounts))
	owner := w.dialIn(t, uidAdmin)
	listed := w.dialIn(t, uidNormal)
	unlisted := w.dialIn(t, uidNormal2)
	for _, f := range twFamilies {
		owner.newSock("prot-"+f.name, f.udp)
		owner.protectSock("prot-" + f.name)
	}

	t.Run("trusted", func(t *testing.T) {
		owner.setUpVPN(twVPN + `,"trustedApplications":["4000"]`)
		defer func() { ok(t, owner.call("destroy", "{}", "")); owner.closeTUN(); w.d.waitClean(t, "destroy") }()
		for _, f := range twFamilies {
			t.Run(f.name, func(t *testing.T) {
				c := w.wantCaptured(t, f, listed, owner, "", f.remote, "trusted user")
				w.wantAtB(t, f, unlisted, owner, "", f.remote, "untrusted user")
				w.wantAtB(t, f, owner, owner, "", f.remote, "owner, not in the trusted list")
				w.wantNotAtB(t, c)
			})
		}
	})

	t.Run("blocked", func(t *testing.T) {
		owner.setUpVPN(twVPN + `,"blockedApplications":["4000"]`)
		defer func() { ok(t, owner.call("destroy", "{}", "")); owner.closeTUN(); w.d.waitClean(t, "destroy") }()
		for _, f := range twFamilies {
			t.Run(f.name, func(t *testing.T) {
				c1 := w.wantCaptured(t, f, unlisted, owner, "", f.remote, "unblocked user")
				c2 := w.wantCaptured(t, f, owner, owner, "", f.remote, "owner, not blocked")
				w.wantAtB(t, f, listed, owner, "", f.remote, "blocked user")
				w.wantAtB(t, f, owner, owner, "prot-"+f.name, f.remote, "owner protected")
				w.wantNotAtB(t, c1, c2)
			})
		}
	})
}

// The end-to-end flow of a real VPN app: `vpnctl up -- tunfwd`
// hands the TUN to a forwarder that protects its tunnel socket and carries
// each packet over UDP to a decapsulating peer in B, which answers. An app
// in A talks to B's remote addresses through the tunnel, both families,
// on a full-tunnel VPN (default routes), so the forwarder's own socket
// would loop if protect did not work.
func TestTrafficTunnelRoundTrip(t *testing.T) {
	kernelOnly(t, "real datagrams through the VPN")
	t.Parallel()
	w := newWorld(t)
	decap := startLineProc(t, "netpeer decap", "ip", "netns", "exec", w.b, lazyBin(t, "netpeer"),
		"decap", twAddrB4+":"+twDecapPort)
	decap.wait(t, "READY")

	cmd := exec.Command("ip", "netns", "exec", w.a, "setpriv", fmt.Sprintf("--reuid=%d", uidNormal),
		fmt.Sprintf("--regid=%d", uidNormal), "--clear-groups",
		bin(t, "vpnctl"), "--socket", w.d.sock, "up", "--address", "10.8.0.2/24", "--address", "fd00:8::2/64",
		"--", lazyBin(t, "tunfwd"), w.d.sock, twAddrB4+":"+twDecapPort)
	fwd := startLineCmd(t, "vpnctl up -- tunfwd", cmd)
	fwd.wait(t, "READY")

	// Full tunnel: both default routes, and the owner's rules.
	if got := w.d.routeStrings(t); !equalStrings(got, sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 default dev vpn-tun",
		"ipv6 default dev vpn-tun", "ipv6 fd00:8::/64 dev vpn-tun")) {
		t.Errorf("full-tunnel routes %q", got)
	}

	app := w.dialIn(t, uidNormal)
	for _, f := range twFamilies {
		t.Run(f.name, func(t *testing.T) {
			tok := w.token("round trip")
			app.newSock(tok, f.udp)
			app.udpSend(tok, f.remote, twSinkPort, tok)
			out := app.must("recvfrom " + tok + " 5000")
			want := fmt.Sprintf("FROM %s %s echo %s", f.remote, twSinkPort, tok)
			if len(out) != 1 || out[0] != want {
				t.Errorf("app got %q, want %q", out, want)
			}
			if l := decap.wait(t, tok); !strings.Contains(l, fmt.Sprintf("DECAP %s udp %s ", f.name[3:], f.tunSrc)) {
				t.Errorf("decapsulated %q, want a packet from the TUN address %s", l, f.tunSrc)
			}
			if l, ok := w.sink.find(tok); ok {
				t.Errorf("the app's datagram bypassed the tunnel and reached B's sink: %q", l)
			}
		})
	}

	// vpnctl forwards SIGTERM to tunfwd, which exits 0; vpnctl then ends
	// the VPN and exits with tunfwd's status.
	fwd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-fwd.done:
		if code := fwd.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("vpnctl up -- tunfwd exited %d after SIGTERM; stderr %s", code, fwd.errb.String())
		}
	case <-time.After(hangGuard):
		t.Fatalf("vpnctl up -- tunfwd ignored SIGTERM")
	}
	w.d.waitClean(t, "tunfwd exited")
}
