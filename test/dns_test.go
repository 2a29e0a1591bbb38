package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vpnd/vpnd/internal/dns/resolvedtest"
)

// DNS that follows the VPN. The resolved backend talks to a stand-in for
// systemd-resolved on a private bus (resolvedtest), the file backend
// rewrites a resolv.conf in a temporary directory: no test touches the
// host's system bus or its /etc/resolv.conf.

// dnsFullTunnel is a full-tunnel VPN (no routes: a default route per
// family) with DNS servers of both families and a search domain.
const dnsFullTunnel = `{"addresses":["10.8.0.2/24","fd00::2/64"],"dnsAddresses":["10.8.0.1","fd00::53"],"searchDomains":["corp.example"]}`

// dnsSplitTunnel carries only two prefixes.
const dnsSplitTunnel = `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24","10.0.0.0/8"],"dnsAddresses":["10.8.0.1"],"searchDomains":["corp.example","lab.example"]}`

// resolvedPrepareCalls is what resolved gets for every VPN's link index,
// before the link is up: multicast name resolution off.
func resolvedPrepareCalls(index int) []string {
	return []string{fmt.Sprintf(`SetLinkLLMNR(%d, "no")`, index), fmt.Sprintf(`SetLinkMulticastDNS(%d, "no")`, index)}
}

// resolvedUndoCalls is what resolved gets when a VPN with DNS settings on
// link index ends.
func resolvedUndoCalls(index int) []string {
	return []string{
		fmt.Sprintf(`SetLinkDNS(%d, [])`, index),
		fmt.Sprintf(`SetLinkDomains(%d, [])`, index),
		fmt.Sprintf(`SetLinkDefaultRoute(%d, false)`, index),
	}
}

// resolvedCalls is what resolved gets for dnsFullTunnel on link index.
func resolvedCalls(index int) []string {
	return []string{
		fmt.Sprintf(`SetLinkLLMNR(%d, "no")`, index),
		fmt.Sprintf(`SetLinkMulticastDNS(%d, "no")`, index),
		fmt.Sprintf(`SetLinkDefaultRoute(%d, true)`, index),
		fmt.Sprintf(`SetLinkDomains(%d, [("corp.example", false) (".", true)])`, index),
		fmt.Sprintf(`SetLinkDNS(%d, [(2, 10.8.0.1) (10, fd00::53)])`, index),
	}
}

// withStandIn starts a private bus with the stand-in resolved on it, and
// the daemon option that points vpnd at it.
func withStandIn(t *testing.T) (*resolvedtest.Resolved, daemonOpt) {
	t.Helper()
	bus := resolvedtest.StartBus(t)
	return resolvedtest.StartResolved(t, bus), withEnv("DBUS_SYSTEM_BUS_ADDRESS=" + bus.Address)
}

func wantResolved(t testing.TB, r *resolvedtest.Resolved, want ...string) {
	t.Helper()
	got := r.WaitCalls(len(want), settle)
	if !slices.Equal(got, want) {
		t.Fatalf("resolved got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// The resolved backend, chosen by auto because resolve1 answers: the exact
// calls and arguments for a full tunnel ("~." and a default route) and a
// split tunnel (search domains only), on the VPN's link index, after
// multicast name resolution is turned off there, and their undoing when
// the VPN ends.
func TestDNSResolved(t *testing.T) {
	kernelOnly(t, "the host's resolver: systemd-resolved's calls for an admin's VPN, which a simulated vpnd never makes (it applies no DNS)")
	t.Parallel()
	standIn, env := withStandIn(t)
	d := startDaemon(t, env)
	if !d.logContains(`"dns_backend":"resolved"`) {
		t.Errorf("vpnd does not log the resolved backend:\n%s", d.stderr.String())
	}
	c := d.dial(t, uidRoot)

	info := setUpOK(t, c.call("setUp", dnsFullTunnel, ""))
	if info.DNSBackend != "resolved" || c.status().VPN.DNSBackend != "resolved" {
		t.Errorf("dnsBackend %q, want resolved", info.DNSBackend)
	}
	want := resolvedCalls(info.Index)
	wantResolved(t, standIn, want...)
	ok(t, c.call("destroy", "{}", ""))
	wantResolved(t, standIn, append(want, resolvedUndoCalls(info.Index)...)...)
	d.waitClean(t, "destroy")

	standIn.Reset()
	info = setUpOK(t, c.call("setUp", dnsSplitTunnel, ""))
	want = append(resolvedPrepareCalls(info.Index),
		fmt.Sprintf(`SetLinkDefaultRoute(%d, false)`, info.Index),
		fmt.Sprintf(`SetLinkDomains(%d, [("corp.example", false) ("lab.example", false)])`, info.Index),
		fmt.Sprintf(`SetLinkDNS(%d, [(2, 10.8.0.1)])`, info.Index),
	)
	wantResolved(t, standIn, want...)
	ok(t, c.call("destroy", "{}", ""))
	wantResolved(t, standIn, append(want, resolvedUndoCalls(info.Index)...)...)
	d.waitClean(t, "destroy")

	// A NORMAL user's VPN does not change the host's resolver; multicast
	// name resolution is off on its link all the same, and a VPN without
	// DNS servers gets that alone too.
	for _, tc := range []struct {
		uid    uint32
		config string
	}{
		{uidNormal, dnsFullTunnel},
		{uidRoot, `{"addresses":["10.8.0.2/24"]}`},
	} {
		standIn.Reset()
		n := d.dial(t, tc.uid)
		info = setUpOK(t, n.call("setUp", tc.config, ""))
		if info.DNSBackend != "none" {
			t.Errorf("uid %d, %s: dnsBackend %q, want none", tc.uid, tc.config, info.DNSBackend)
		}
		ok(t, n.call("destroy", "{}", ""))
		d.waitClean(t, "destroy")
		if calls, want := standIn.Calls(), resolvedPrepareCalls(info.Index); !slices.Equal(calls, want) {
			t.Errorf("uid %d, %s: resolved got %q, want only %q", tc.uid, tc.config, calls, want)
		}
	}
}

// auto picks none when no resolve1 answers (a bus without it, or no bus:
// the harness's default), and setUp still works; --dns-backend resolved
// refuses to start instead.
func TestDNSAutoWithoutResolved(t *testing.T) {
	kernelOnly(t, "how vpnd picks the host's DNS backend; a simulated vpnd always applies none, and refuses --dns-backend resolved")
	t.Parallel()
	bus := resolvedtest.StartBus(t)
	for _, opts := range [][]daemonOpt{{withEnv("DBUS_SYSTEM_BUS_ADDRESS=" + bus.Address)}, nil} {
		d := startDaemon(t, opts...)
		c := d.dial(t, uidRoot)
		info := setUpOK(t, c.call("setUp", dnsFullTunnel, ""))
		if info.DNSBackend != "none" {
			t.Errorf("dnsBackend %q, want none", info.DNSBackend)
		}
		ok(t, c.call("destroy", "{}", ""))
		d.stop(t)
	}
	cmd := vpndCommand(t, newNetns(t), filepath.Join(newDaemonDir(t), "vpnd.sock"), "--dns-backend", "resolved")
	cmd.Env = append(cmd.Env, "DBUS_SYSTEM_BUS_ADDRESS="+bus.Address)
	code, out := runToExit(t, cmd, nil)
	if code != 1 || !strings.Contains(out, "vpnd: --dns-backend resolved: systemd-resolved does not answer on the system bus") {
		t.Errorf("vpnd --dns-backend resolved without resolved: exit %d: %s", code, out)
	}
}

// dnsEndings are the ways a VPN ends while its owner (c) holds it, short
// of vpnd stopping.
var dnsEndings = []struct {
	name string
	end  func(t *testing.T, d *daemon, c *client)
}{
	{"destroy", func(t *testing.T, _ *daemon, c *client) { ok(t, c.call("destroy", "{}", "")) }},
	{"owner's connection closed", func(t *testing.T, _ *daemon, c *client) { c.closeConn() }},
	{"owner killed", func(t *testing.T, _ *daemon, c *client) {
		if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}},
	{"TUN fd closed", func(t *testing.T, _ *daemon, c *client) { c.closeTUN() }},
	{"ip link del", func(t *testing.T, d *daemon, _ *client) { d.ip(t, "link", "del", d.ifname) }},
}

// dnsBackendCheck says what a backend's work looks like during a VPN and
// after it.
type dnsBackendCheck struct {
	opts   func(t *testing.T) []daemonOpt
	during func(t *testing.T, info vpnInfo)
	after  func(t *testing.T, info vpnInfo)
}

// runDNSEndings sets the full-tunnel VPN up and ends it every way there is,
// SIGTERM and SIGINT included, checking the backend's work each time.
func runDNSEndings(t *testing.T, newCheck func(t *testing.T) dnsBackendCheck) {
	t.Run("endings", func(t *testing.T) {
		t.Parallel()
		chk := newCheck(t)
		d := startDaemon(t, chk.opts(t)...)
		for _, e := range dnsEndings {
			t.Run(e.name, func(t *testing.T) {
				c := d.dial(t, uidRoot)
				info := setUpOK(t, c.call("setUp", dnsFullTunnel, ""))
				chk.during(t, info)
				e.end(t, d, c)
				d.waitClean(t, e.name)
				chk.after(t, info)
			})
		}
	})
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			chk := newCheck(t)
			d := startDaemon(t, chk.opts(t)...)
			c := d.dial(t, uidRoot)
			info := setUpOK(t, c.call("setUp", dnsFullTunnel, ""))
			chk.during(t, info)
			d.signal(t, sig)
			if code := d.waitExit(t); code != 0 {
				t.Errorf("exit status %d after %v", code, sig)
			}
			chk.after(t, info)
			d.stop(t)
		})
	}
}

// The settings undone on every ending: destroy, connection closed, owner
// killed, TUN fd closed, ip link del, SIGTERM, SIGINT.
func TestDNSResolvedEveryEnding(t *testing.T) {
	kernelOnly(t, "the host's resolver: systemd-resolved's settings undone on every ending, which a simulated vpnd never makes (it applies no DNS)")
	t.Parallel()
	runDNSEndings(t, func(t *testing.T) dnsBackendCheck {
		standIn, env := withStandIn(t)
		return dnsBackendCheck{
			opts: func(*testing.T) []daemonOpt { return []daemonOpt{env, withFlags("--dns-backend", "resolved")} },
			during: func(t *testing.T, info vpnInfo) {
				if info.DNSBackend != "resolved" {
					t.Errorf("dnsBackend %q, want resolved", info.DNSBackend)
				}
				wantResolved(t, standIn, resolvedCalls(info.Index)...)
				standIn.Reset()
			},
			after: func(t *testing.T, info vpnInfo) {
				wantResolved(t, standIn, resolvedUndoCalls(info.Index)...)
				standIn.Reset()
			},
		}
	})
}

// resolvConfBefore is the host's resolv.conf in the file backend's tests,
// and resolvConfDuring what vpnd makes of it for dnsFullTunnel.
const (
	resolvConfBefore = "# the host's\nnameserver 192.0.2.53\nsearch home.example\noptions edns0 timeout:2\n"
	resolvConfDuring = `# Written by vpnd for the VPN on vpn-tun. vpnd puts the previous file back when
# the VPN ends, unless this file has been changed in the meantime.
nameserver 10.8.0.1
nameserver fd00::53
search corp.example
options edns0 timeout:2
`
)

// newResolvConf writes resolvConfBefore into a temporary directory and
// returns its path and vpnd's flags for it.
func newResolvConf(t *testing.T) (string, daemonOpt) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte(resolvConfBefore), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, withFlags("--dns-backend", "file", "--resolv-conf", p)
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wantFile waits until p holds want (a teardown after a link event is
// asynchronous).
func wantFile(t testing.TB, p, want string) {
	t.Helper()
	eventually(t, p+" holds what it should", func() (bool, string) {
		b, err := os.ReadFile(p)
		return err == nil && string(b) == want, fmt.Sprintf("%q (%v), want %q", b, err, want)
	})
}

// noRecord checks that vpnd's state directory in ns keeps no resolv.conf
// record.
func noRecord(t testing.TB, ns string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(stateDirFor(t, ns), "resolv-conf.json")); !os.IsNotExist(err) {
		t.Errorf("resolv.conf record still in the state directory (%v)", err)
	}
}

// The file backend: during the VPN its servers first, then its search
// domains; after every ending the exact bytes of before.
func TestDNSFileEveryEnding(t *testing.T) {
	kernelOnly(t, "the host's resolv.conf rewritten and put back on every ending; a simulated vpnd refuses --dns-backend file")
	t.Parallel()
	runDNSEndings(t, func(t *testing.T) dnsBackendCheck {
		p, flags := newResolvConf(t)
		var ns string
		return dnsBackendCheck{
			opts: func(t *testing.T) []daemonOpt {
				return []daemonOpt{flags, beforeStart(func(_ testing.TB, n string) { ns = n })}
			},
			during: func(t *testing.T, info vpnInfo) {
				if info.DNSBackend != "file" {
					t.Errorf("dnsBackend %q, want file", info.DNSBackend)
				}
				if got := readFile(t, p); got != resolvConfDuring {
					t.Errorf("during the VPN:\n%s\nwant:\n%s", got, resolvConfDuring)
				}
			},
			after: func(t *testing.T, _ vpnInfo) {
				wantFile(t, p, resolvConfBefore)
				noRecord(t, ns)
			},
		}
	})
}

// A vpnd killed with SIGKILL leaves the VPN's resolv.conf; the next vpnd
// restores the exact previous bytes before it serves.
func TestDNSFileRestoredAfterSIGKILL(t *testing.T) {
	kernelOnly(t, "the host's resolv.conf put back at the next start; a simulated vpnd refuses --dns-backend file")
	t.Parallel()
	p, flags := newResolvConf(t)
	d := startDaemon(t, flags)
	c := d.dial(t, uidRoot)
	setUpOK(t, c.call("setUp", dnsFullTunnel, ""))
	d.kill(t)
	if got := readFile(t, p); got != resolvConfDuring {
		t.Fatalf("after SIGKILL:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(stateDirFor(t, d.ns), "resolv-conf.json")); err != nil {
		t.Fatalf("no record for the next start: %v", err)
	}
	// startDaemon returns once vpnd serves: the file must be back by then.
	d2 := startDaemon(t, inNetns(d.ns), flags)
	if got := readFile(t, p); got != resolvConfBefore {
		t.Errorf("after the restart:\n%s\nwant:\n%s", got, resolvConfBefore)
	}
	noRecord(t, d.ns)
	if !d2.logContains("resolv.conf restored", p) {
		t.Errorf("the restart does not log the restore:\n%s", d2.stderr.String())
	}
	// And it still works.
	c2 := d2.dial(t, uidRoot)
	setUpOK(t, c2.call("setUp", dnsFullTunnel, ""))
	ok(t, c2.call("destroy", "{}", ""))
	wantFile(t, p, resolvConfBefore)
}

// Someone else rewrote the file while the VPN was up: vpnd keeps their
// content, says so, and drops its record.
func TestDNSFileChangedUnderneath(t *testing.T) {
	kernelOnly(t, "the host's resolv.conf changed under vpnd; a simulated vpnd refuses --dns-backend file")
	t.Parallel()
	p, flags := newResolvConf(t)
	d := startDaemon(t, flags)
	c := d.dial(t, uidRoot)
	setUpOK(t, c.call("setUp", dnsFullTunnel, ""))
	const newer = "# a DHCP client's\nnameserver 198.51.100.53\n"
	if err := os.WriteFile(p, []byte(newer), 0o644); err != nil {
		t.Fatal(err)
	}
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
	if got := readFile(t, p); got != newer {
		t.Errorf("after the VPN:\n%s\nwant the newer file:\n%s", got, newer)
	}
	if !d.logContains(`"level":"warn"`, "changed by someone else", p) {
		t.Errorf("no warning about the change:\n%s", d.stderr.String())
	}
	noRecord(t, d.ns)
}

// A resolv.conf that cannot be written (its directory became read-only,
// as under systemd's ProtectSystem=strict) rolls the whole VPN back:
// 19900002 naming the file and the reason, nothing left in the kernel,
// the file as it was.
func TestDNSFileWriteFails(t *testing.T) {
	kernelOnly(t, "the host's resolv.conf not writable; a simulated vpnd refuses --dns-backend file")
	t.Parallel()
	p, flags := newResolvConf(t)
	d := startDaemon(t, flags)
	dir := filepath.Dir(p)
	// In vpnd's own mount namespace (ip netns exec made one), so that
	// only vpnd sees the directory read-only.
	if out, err := exec.Command("nsenter", "-t", fmt.Sprint(d.pid), "-m", "mount", "--bind", "-o", "ro", dir, dir).CombinedOutput(); err != nil {
		t.Fatalf("make %s read-only for vpnd: %v: %s", dir, err, out)
	}
	c := d.dial(t, uidRoot)
	wantError(t, c.call("setUp", dnsFullTunnel, ""), 19900002,
		"apply DNS settings through file", "replace "+p, "read-only file system")
	if p := d.leftovers(t); len(p) > 0 {
		t.Errorf("after the failed setUp: %s", strings.Join(p, "; "))
	}
	if s := c.status(); s.State != "disconnected" {
		t.Errorf("status %+v", s)
	}
	if got := readFile(t, p); got != resolvConfBefore {
		t.Errorf("file changed:\n%s", got)
	}
	noRecord(t, d.ns)
}

// What the file backend cannot safely replace stops vpnd at start, with
// the reason: a symbolic link (resolved's stub), a mount point (a
// container's resolv.conf).
func TestDNSFileRefusedAtStart(t *testing.T) {
	kernelOnly(t, "the file backend's start-up checks of the host's resolv.conf; a simulated vpnd refuses --dns-backend file before them")
	t.Parallel()
	dir := t.TempDir()
	stub := filepath.Join(dir, "stub-resolv.conf")
	os.WriteFile(stub, []byte("nameserver 127.0.0.53\n"), 0o644)
	link := filepath.Join(dir, "resolv.conf")
	if err := os.Symlink(stub, link); err != nil {
		t.Fatal(err)
	}
	code, out := runVpndToExit(t, filepath.Join(newDaemonDir(t), "vpnd.sock"), "--dns-backend", "file", "--resolv-conf", link)
	if code != 1 || !strings.Contains(out, "vpnd: --resolv-conf "+link+" is a symbolic link to "+stub) {
		t.Errorf("symbolic link: exit %d: %s", code, out)
	}

	file := filepath.Join(dir, "mounted-resolv.conf")
	os.WriteFile(file, []byte("nameserver 192.0.2.53\n"), 0o644)
	code, out = runVpndToExitIn(t, newNetns(t), execAfter("mount --bind "+stub+" "+file),
		filepath.Join(newDaemonDir(t), "vpnd.sock"), "--dns-backend", "file", "--resolv-conf", file)
	if code != 1 || !strings.Contains(out, "vpnd: --resolv-conf "+file+" is a mount point") {
		t.Errorf("mount point: exit %d: %s", code, out)
	}
	if b, _ := os.ReadFile(stub); string(b) != "nameserver 127.0.0.53\n" {
		t.Errorf("the link's target changed: %q", b)
	}
}

// vpnctl up warns when the VPN carries DNS servers that no backend
// applies, and only then. Under sim the backend is always none
// (TestSimulationAppliesNoDNS): the resolved part is the kernel's.
func TestDNSVpnctlWarns(t *testing.T) {
	t.Parallel()
	const warning = "vpnctl: warning: vpnd applies none of the VPN's DNS servers"
	up := func(d *daemon, dnsArgs ...string) string {
		args := append([]string{"--socket", d.sock, "up", "--address", "10.8.0.2/24"}, dnsArgs...)
		_, stderr, code := vpnctlRun(t, 0, append(args, "--", "true")...)
		if code != 0 {
			t.Fatalf("vpnctl up %v: exit %d: %s", dnsArgs, code, stderr)
		}
		d.waitClean(t, "vpnctl up -- true")
		return stderr
	}
	none := startDaemon(t)
	if s := up(none, "--dns", "10.8.0.1"); !strings.Contains(s, warning) {
		t.Errorf("backend none, with a DNS server: no warning: %q", s)
	}
	if s := up(none); strings.Contains(s, warning) {
		t.Errorf("no DNS servers: warning anyway: %q", s)
	}
	if simBackend {
		return
	}
	_, env := withStandIn(t)
	resolved := startDaemon(t, env)
	if s := up(resolved, "--dns", "10.8.0.1"); strings.Contains(s, warning) {
		t.Errorf("backend resolved: warning anyway: %q", s)
	}
}

// Another program appends a nameserver to the file while the VPN is up:
// when the VPN ends, vpnd removes exactly its own lines and keeps the
// appended one, with the host's own lines back. Before, vpnd kept the
// newer file whole, and with it the VPN's nameservers, dead once the VPN
// was gone.
func TestDNSFileKeepsOthersEdits(t *testing.T) {
	kernelOnly(t, "the host's resolv.conf edited under vpnd; a simulated vpnd refuses --dns-backend file")
	t.Parallel()
	p, flags := newResolvConf(t)
	d := startDaemon(t, flags)
	c := d.dial(t, uidRoot)
	setUpOK(t, c.call("setUp", dnsFullTunnel, ""))
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("nameserver 198.51.100.1\n")
	f.Close()
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
	if got, want := readFile(t, p), resolvConfBefore+"nameserver 198.51.100.1\n"; got != want {
		t.Errorf("after the VPN:\n%s\nwant:\n%s", got, want)
	}
	if !d.logContains(`"level":"warn"`, "vpnd removed its own lines and kept the other changes", p) {
		t.Errorf("no warning about the edit:\n%s", d.stderr.String())
	}
	noRecord(t, d.ns)
}

// A resolv.conf over 64 KiB is refused: at start, naming it, and in a
// setUp if it grew since, with nothing changed. Before, vpnd read any
// size (256 MB cost it 4.5 GB) under the manager's lock.
func TestDNSFileTooLarge(t *testing.T) {
	kernelOnly(t, "the host's resolv.conf; a simulated vpnd refuses --dns-backend file")
	t.Parallel()
	big := "# " + strings.Repeat("x", 64<<10) + "\nnameserver 192.0.2.53\n"
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte(big), 0o644)
	ns := newNetns(t)
	plantLeftovers(t, ns)
	wantRefusedStart(t, ns, []string{"--dns-backend", "file", "--resolv-conf", p},
		fmt.Sprintf("vpnd: --resolv-conf %s is %d bytes, more than the 65536 that vpnd reads", p, len(big)))

	p, flags := newResolvConf(t)
	d := startDaemon(t, flags)
	os.WriteFile(p, []byte(big), 0o644)
	c := d.dial(t, uidRoot)
	wantError(t, c.call("setUp", dnsFullTunnel, ""), 19900002, fmt.Sprintf("%s is %d bytes, more than the 65536", p, len(big)))
	if p := d.leftovers(t); len(p) > 0 {
		t.Errorf("after the refused setUp: %s", strings.Join(p, "; "))
	}
	if readFile(t, p) != big {
		t.Errorf("the file changed")
	}
	noRecord(t, d.ns)
}

// An editor that rewrites resolv.conf in place (truncate, then write)
// races 300 VPN cycles: whenever the editor is between two writes, the
// file holds the editor's content, never nothing. vpnd may refuse a
// setUp while the file keeps changing under it, and then changes
// nothing. Before, vpnd could record a truncated, empty file as the one
// to restore, and left resolv.conf empty.
func TestDNSFileRacingEditor(t *testing.T) {
	kernelOnly(t, "the host's resolv.conf rewritten under vpnd; a simulated vpnd refuses --dns-backend file")
	t.Parallel()
	const editors = "# the editor's\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte(editors), 0o644)
	d := startDaemon(t, withFlags("--dns-backend", "file", "--resolv-conf", p))
	var mu sync.Mutex // held by the editor from truncate to the end of its write
	stop, done := make(chan struct{}), make(chan struct{})
	writes := 0
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// A slow editor: the file stays empty for 8-15 ms, and the
			// pauses between its writes are longer than a VPN cycle, so
			// that what vpnd records is what it restores.
			mu.Lock()
			if f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0); err == nil {
				time.Sleep(time.Duration(8+i%8) * time.Millisecond)
				f.WriteString(editors)
				f.Close()
				writes++
			}
			mu.Unlock()
			time.Sleep(time.Duration(100+i*37%50) * time.Millisecond)
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()
	c := d.dial(t, uidRoot)
	refused := 0
	const cycles = 300
	for i := 0; i < cycles; i++ {
		m := c.call("setUp", dnsFullTunnel, "")
		if m.Error != nil {
			wantError(t, m, 19900002, "kept changing")
			refused++
		} else {
			ok(t, c.call("destroy", "{}", ""))
		}
		d.waitClean(t, "destroy")
		mu.Lock()
		got := readFile(t, p)
		mu.Unlock()
		if got != editors {
			t.Fatalf("cycle %d: after the VPN, between two of the editor's writes, the file holds %q, want the editor's %q", i, got, editors)
		}
	}
	close(stop)
	<-done
	t.Logf("the editor wrote %d times during %d cycles; %d setUps were refused because the file kept changing", writes, cycles, refused)
	if refused == cycles {
		t.Errorf("every setUp was refused: the race was not run")
	}
	if got := readFile(t, p); got != editors {
		t.Errorf("at the end: %q", got)
	}
	noRecord(t, d.ns)
}
