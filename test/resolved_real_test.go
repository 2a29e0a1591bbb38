package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/net/dns/dnsmessage"

	vpndclient "github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/dns/resolvedtest"
	"github.com/vpnd/vpnd/test/internal/packet"
)

// The resolved backend against the real systemd-resolved, not the stand-in.
// The test runs a resolved of its own: in the VPN's throwaway network
// namespace, in a private mount namespace (a tmpfs on /run for its runtime
// files, a resolv.conf of the test's bind-mounted on /etc/resolv.conf), on
// the test's private bus, as nobody with the capabilities its unit file
// gives it. Nothing reaches the host's resolver, its files or its bus.
//
// The binaries come from $VPND_TEST_RESOLVED_ROOT, a directory the packages
// systemd-resolved and libsystemd-shared were unpacked into with dpkg -x,
// as scripts/test does; else from the host's own installed
// systemd-resolved; else the test skips. The package is never installed
// for the test: it would point the host's /etc/resolv.conf at resolved.

// realResolvedUID is the uid the test's resolved runs as, with the
// capabilities its unit file gives it: nobody, since dbus-daemon refuses
// uids without a passwd entry, and resolved started as root would want to
// drop to its own user, which hosts without the package lack.
const realResolvedUID = 65534

// realResolvedBins is where a systemd-resolved and its resolvectl are.
type realResolvedBins struct {
	daemon, ctl string
	libDir      string // LD_LIBRARY_PATH for both, "" for the host's own
}

// findRealResolved finds the binaries, or skips the test when there are
// none (scripts/test provides them).
func findRealResolved(t *testing.T) realResolvedBins {
	t.Helper()
	root := os.Getenv("VPND_TEST_RESOLVED_ROOT")
	if root == "" {
		for _, d := range []string{"/usr/lib/systemd/systemd-resolved", "/lib/systemd/systemd-resolved"} {
			if ctl, err := exec.LookPath("resolvectl"); err == nil && isExecutable(d) {
				return realResolvedBins{daemon: d, ctl: ctl}
			}
		}
		t.Skip("no systemd-resolved: set VPND_TEST_RESOLVED_ROOT to a directory the package systemd-resolved was unpacked into (scripts/test does)")
	}
	var b realResolvedBins
	for _, d := range []string{"usr/lib/systemd/systemd-resolved", "lib/systemd/systemd-resolved"} {
		if p := filepath.Join(root, d); isExecutable(p) {
			b.daemon = p
		}
	}
	for _, c := range []string{"usr/bin/resolvectl", "bin/resolvectl"} {
		if p := filepath.Join(root, c); isExecutable(p) {
			b.ctl = p
		}
	}
	if b.daemon == "" || b.ctl == "" {
		t.Fatalf("VPND_TEST_RESOLVED_ROOT=%s holds no systemd-resolved and resolvectl", root)
	}
	if libs, _ := filepath.Glob(filepath.Join(root, "usr/lib/*/systemd/libsystemd-shared-*.so")); len(libs) > 0 {
		b.libDir = filepath.Dir(libs[0])
	}
	return b
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// env is the environment of resolved and resolvectl on bus.
func (b realResolvedBins) env(bus *resolvedtest.Bus) []string {
	env := append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+bus.Address, "SYSTEMD_LOG_TARGET=console", "SYSTEMD_LOG_LEVEL=debug")
	if b.libDir != "" {
		env = append(env, "LD_LIBRARY_PATH="+b.libDir)
	}
	return env
}

// realResolvedScript sets up resolved's private mount namespace (made
// with --propagation private: no mount reaches the host's), then execs it
// as uid $3. $1 is the test's resolv.conf, $2 its resolved.conf; resolved
// writes its runtime files to the tmpfs on /run, and its name probes carry
// the UTS namespace's host name, not the host's.
const realResolvedScript = `set -e
mount --bind "$1" /etc/resolv.conf
mount -t tmpfs -o mode=0755 vpndtest-run /run
mkdir -p /run/systemd/resolve /run/systemd/resolved.conf.d
chown "$3:$3" /run/systemd/resolve
cp "$2" /run/systemd/resolved.conf.d/vpndtest.conf
hostname vpndtest-resolved
uid=$3
shift 3
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups \
	--inh-caps=+setpcap,+net_bind_service,+net_raw --ambient-caps=+setpcap,+net_bind_service,+net_raw "$@"
`

// realResolvedConf turns LLMNR and mDNS on for the whole host, so that only
// a link's own setting keeps them off it: what a host that uses them has.
const realResolvedConf = "[Resolve]\nLLMNR=yes\nMulticastDNS=yes\n"

// realResolved is a running systemd-resolved of the test's.
type realResolved struct {
	bins realResolvedBins
	bus  *resolvedtest.Bus
	ns   string
	log  *syncBuffer
}

// startRealResolved starts resolved in namespace ns on bus and waits until
// it owns its name there. It is stopped when t ends.
func startRealResolved(t *testing.T, bins realResolvedBins, bus *resolvedtest.Bus, ns string) *realResolved {
	t.Helper()
	dir := t.TempDir()
	resolvConf := filepath.Join(dir, "resolv.conf")
	conf := filepath.Join(dir, "resolved.conf")
	if err := os.WriteFile(resolvConf, []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(realResolvedConf), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &realResolved{bins: bins, bus: bus, ns: ns, log: &syncBuffer{}}
	cmd := exec.Command("ip", "netns", "exec", ns, "unshare", "--mount", "--uts", "--propagation", "private",
		"sh", "-c", realResolvedScript, "sh", resolvConf, conf, fmt.Sprint(realResolvedUID), bins.daemon)
	cmd.Env = bins.env(bus)
	cmd.Stdout, cmd.Stderr = r.log, r.log
	exited := startBackground(t, cmd)
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(hangGuard):
		}
		if t.Failed() {
			t.Logf("systemd-resolved's log:\n%s", r.log.String())
		}
	})
	// Its start is slow on a loaded machine: hangGuard, not settle,
	// bounds the wait.
	conn := bus.Connect(t)
	deadline := time.Now().Add(hangGuard)
	for {
		select {
		case <-exited:
			t.Fatalf("systemd-resolved exited:\n%s", r.log.String())
		default:
		}
		var has bool
		err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, resolvedtest.Service).Store(&has)
		if err == nil && has {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd-resolved does not own its name on the test bus after %v (%v):\n%s", hangGuard, err, r.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

// linkProperty reads a property of resolved's Link object for ifindex.
func (r *realResolved) linkProperty(t *testing.T, ifindex int, name string) any {
	t.Helper()
	conn := r.bus.Connect(t)
	var path dbus.ObjectPath
	if err := conn.Object(resolvedtest.Service, resolvedtest.Path).Call(resolvedtest.Interface+".GetLink", 0, int32(ifindex)).Store(&path); err != nil {
		t.Fatalf("GetLink(%d): %v", ifindex, err)
	}
	v, err := conn.Object(resolvedtest.Service, path).GetProperty("org.freedesktop.resolve1.Link." + name)
	if err != nil {
		t.Fatalf("link %d: property %s: %v", ifindex, name, err)
	}
	return v.Value()
}

// ctl runs resolvectl with args in the namespace (where interface names
// are the VPN's) to its end and returns its output.
func (r *realResolved) ctl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang guard
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", r.ns, r.bins.ctl}, args...)...)
	cmd.Env = append(r.bins.env(r.bus), "SYSTEMD_LOG_LEVEL=info")
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("resolvectl %v did not finish: %s", args, out)
	}
	return string(out)
}

// query runs `resolvectl query NAME` to its end and returns its output.
// Once it returns, every transaction of the lookup is over: resolved has
// sent every packet it was going to send for it.
func (r *realResolved) query(t *testing.T, name string) string {
	t.Helper()
	return r.ctl(t, "query", "--cache=no", name)
}

// tunnelFarEnd plays the VPN's far end on the TUN: it records every packet
// that comes out, and answers each DNS query to one of the VPN's servers
// with NXDOMAIN, as the servers would for names they do not know.
type tunnelFarEnd struct {
	tun     *os.File
	servers map[netip.Addr]bool
	done    chan struct{}

	mu   sync.Mutex
	pkts []packet.Packet
	errs []error
}

func startFarEnd(tun *os.File, servers ...string) *tunnelFarEnd {
	f := &tunnelFarEnd{tun: tun, servers: map[netip.Addr]bool{}, done: make(chan struct{})}
	for _, s := range servers {
		f.servers[netip.MustParseAddr(s)] = true
	}
	go f.run()
	return f
}

func (f *tunnelFarEnd) run() {
	defer close(f.done)
	buf := make([]byte, 65536)
	for {
		n, err := f.tun.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
				f.fail(fmt.Errorf("read the TUN: %w", err))
			}
			return
		}
		p, err := packet.Parse(append([]byte(nil), buf[:n]...))
		if err != nil {
			continue // not IP: nothing to look at
		}
		f.mu.Lock()
		f.pkts = append(f.pkts, p)
		f.mu.Unlock()
		if p.Proto == packet.ProtoUDP && p.DstPort == 53 && f.servers[p.Dst] {
			if err := f.answer(p); err != nil {
				f.fail(err)
			}
		}
	}
}

// answer writes an NXDOMAIN response to query p into the TUN.
func (f *tunnelFarEnd) answer(p packet.Packet) error {
	var q dnsmessage.Message
	if err := q.Unpack(p.Payload); err != nil {
		return fmt.Errorf("DNS query from %s: %w", p.Src, err)
	}
	resp := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: q.ID, Response: true, RecursionDesired: q.RecursionDesired, RecursionAvailable: true, RCode: dnsmessage.RCodeNameError},
		Questions: q.Questions,
	}
	payload, err := resp.Pack()
	if err != nil {
		return err
	}
	pkt, err := packet.UDP(netip.AddrPortFrom(p.Dst, p.DstPort), netip.AddrPortFrom(p.Src, p.SrcPort), payload)
	if err != nil {
		return err
	}
	_, err = f.tun.Write(pkt)
	return err
}

func (f *tunnelFarEnd) fail(err error) {
	f.mu.Lock()
	f.errs = append(f.errs, err)
	f.mu.Unlock()
}

// stop ends the far end and returns what came out of the TUN.
func (f *tunnelFarEnd) stop(t *testing.T) []packet.Packet {
	t.Helper()
	f.tun.SetReadDeadline(time.Now())
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, err := range f.errs {
		t.Error(err)
	}
	return f.pkts
}

// Multicast name resolution (LLMNR, mDNS) stays off the VPN's link: the
// host's name probe and single-label lookups would tell whoever runs the
// VPN's far end the host's name and the short names its users look up, and
// nothing there answers them. The proof is the packets the real resolved
// sends through the TUN, from setUp until `resolvectl query` has looked up
// a single-label name (db) and a .local one: the VPN's own DNS servers get
// the query (db.corp.example, after the search domain), and no packet goes
// to LLMNR's or mDNS's groups, in a full tunnel and a split one.
func TestDNSRealResolvedNoMulticastIntoTheTunnel(t *testing.T) {
	kernelOnly(t, "the real systemd-resolved sending real packets into the TUN")
	t.Parallel()
	bins := findRealResolved(t)
	bus := resolvedtest.StartBus(t)
	ns := newNetns(t)
	r := startRealResolved(t, bins, bus, ns)
	d := startDaemon(t, inNetns(ns), withEnv("DBUS_SYSTEM_BUS_ADDRESS="+bus.Address), withFlags("--dns-backend", "resolved"))

	t.Run("the stand-in answers as resolved", func(t *testing.T) {
		// A link resolved knows and does not manage: a TUN of the
		// namespace's, with no one behind it.
		nsIP(t, ns, "tuntap", "add", "dev", "probe0", "mode", "tun")
		defer nsIP(t, ns, "link", "del", "probe0")
		probe := nsLink(t, ns, "probe0")
		conn := bus.Connect(t)
		eventually(t, "resolved knows probe0", func() (bool, string) {
			err := conn.Object(resolvedtest.Service, resolvedtest.Path).Call(resolvedtest.Interface+".GetLink", 0, int32(probe.Ifindex)).Err
			return err == nil, fmt.Sprint(err)
		})
		for _, a := range resolvedtest.Refusals(int32(probe.Ifindex)) {
			if name, msg := resolvedtest.Ask(conn, a); name != a.Name || msg != a.Message {
				t.Errorf("%s%v: resolved answered %q %q, the stand-in answers %q %q", a.Method, a.Args, name, msg, a.Name, a.Message)
			}
		}
	})

	for _, tc := range []struct{ name, config string }{
		{"full tunnel", dnsFullTunnel},
		{"split tunnel", dnsSplitTunnel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
			defer cancel()
			c, err := vpndclient.Dial(ctx, d.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tun, info, err := c.SetUpRaw(ctx, json.RawMessage(tc.config))
			if err != nil {
				t.Fatal(err)
			}
			defer tun.Close()
			farEnd := startFarEnd(tun, info.DNSAddresses...)
			if info.DNSBackend != "resolved" {
				t.Errorf("dnsBackend %q, want resolved", info.DNSBackend)
			}
			for _, p := range []string{"LLMNR", "MulticastDNS"} {
				if v := r.linkProperty(t, info.Index, p); v != "no" {
					t.Errorf("resolved's %s on the VPN's link: %v, want no", p, v)
				}
			}
			// What docs/operations.md tells users to look at: the
			// commands whose output does not change between versions.
			wantDefaultRoute := "yes"
			if tc.config == dnsSplitTunnel {
				wantDefaultRoute = "no"
			}
			for _, c := range []struct{ verb, want string }{
				{"default-route", wantDefaultRoute},
				{"llmnr", "no"},
				{"mdns", "no"},
			} {
				want := fmt.Sprintf("Link %d (vpn-tun): %s\n", info.Index, c.want)
				if got := r.ctl(t, c.verb, "vpn-tun"); got != want {
					t.Errorf("resolvectl %s vpn-tun: %q, want %q", c.verb, got, want)
				}
			}
			out := r.query(t, "db") + r.query(t, "db.local")
			pkts := farEnd.stop(t)

			var seen []string
			ownQuery := false
			for _, p := range pkts {
				seen = append(seen, p.String())
				if p.Proto != packet.ProtoUDP {
					continue
				}
				switch netip.AddrPortFrom(p.Dst, p.DstPort).String() {
				case "224.0.0.252:5355", "[ff02::1:3]:5355":
					t.Errorf("LLMNR into the tunnel: %s", p)
				case "224.0.0.251:5353", "[ff02::fb]:5353":
					t.Errorf("mDNS into the tunnel: %s", p)
				}
				var m dnsmessage.Message
				if p.DstPort == 53 && slices.Contains(info.DNSAddresses, p.Dst.String()) && m.Unpack(p.Payload) == nil &&
					len(m.Questions) == 1 && m.Questions[0].Name.String() == "db.corp.example." {
					ownQuery = true
				}
			}
			if !ownQuery {
				t.Errorf("no query for db.corp.example to the VPN's DNS servers came out of the TUN (resolvectl: %s); packets:\n  %s",
					out, strings.Join(seen, "\n  "))
			}
			if err := c.Destroy(ctx); err != nil {
				t.Fatal(err)
			}
			d.waitClean(t, "destroy")
		})
	}

	// A NORMAL user's VPN changes nothing of the host's resolver, but
	// multicast name resolution is off on its link all the same: there,
	// every user's short-name lookups would go into a TUN that one user
	// reads.
	t.Run("normal user", func(t *testing.T) {
		owner := d.dial(t, uidNormal)
		info := setUpOK(t, owner.call("setUp", dnsFullTunnel, ""))
		if info.DNSBackend != "none" {
			t.Errorf("dnsBackend %q, want none", info.DNSBackend)
		}
		for _, p := range []string{"LLMNR", "MulticastDNS"} {
			if v := r.linkProperty(t, info.Index, p); v != "no" {
				t.Errorf("resolved's %s on the VPN's link: %v, want no", p, v)
			}
		}
		r.query(t, "db")
		r.query(t, "db.local")
		// Every packet of those lookups is in the TUN's queue by now;
		// the window only bounds reading what is queued.
		for _, l := range owner.must("tunall 300") {
			if strings.Contains(l, " 5355 ") || strings.Contains(l, " 5353 ") {
				t.Errorf("multicast name resolution into the tunnel: %s", l)
			}
		}
		ok(t, owner.call("destroy", "{}", ""))
		d.waitClean(t, "destroy")
	})
}
