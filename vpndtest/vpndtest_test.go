package vpndtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/protocol"
)

// Each test runs on both backends where it can: the kernel one skips
// without root.
var backends = []struct {
	name string
	opt  Option
}{{"kernel", Kernel()}, {"sim", Sim()}}

// normalPolicy makes every user NORMAL but root, so that these tests may
// set a VPN up as whoever runs them (nobody is a GUEST by default).
var normalPolicy = Accounts(`{"default":"normal","users":{"root":"admin"}}`)

const smallVPN = `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	return c
}

// TestSetUpAndLeftovers: an app's VPN through Dial, seen by Leftovers on
// the kernel and by status under both; gone when the app destroys it.
func TestSetUpAndLeftovers(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			e := New(t, b.opt, normalPolicy)
			if e.Simulated() != (b.name == "sim") {
				t.Fatalf("Simulated() = %v under %s", e.Simulated(), b.name)
			}
			uid := uint32(os.Geteuid())
			c := e.Dial(t, uid)
			tun, info, err := c.SetUpRaw(ctx(t), json.RawMessage(smallVPN))
			if err != nil {
				t.Fatal(err)
			}
			defer tun.Close()
			if info.Simulated != e.Simulated() || info.Owner.UID != uid {
				t.Errorf("VpnInfo simulated %v owner %d, want %v and %d", info.Simulated, info.Owner.UID, e.Simulated(), uid)
			}
			kinds := map[Kind]int{}
			for _, l := range e.Leftovers(t) {
				kinds[l.Kind]++
			}
			if e.Simulated() {
				if len(kinds) != 0 {
					t.Errorf("a simulated VPN shows in the namespace: %v", e.Leftovers(t))
				}
			} else if kinds[Link] != 1 || kinds[Rule] == 0 || kinds[Route] == 0 {
				t.Errorf("Leftovers while the VPN is up: %v, want its link, rules and routes", e.Leftovers(t))
			}
			if err := c.Destroy(ctx(t)); err != nil {
				t.Fatal(err)
			}
			if !poll(settle, func() bool { return len(e.Leftovers(t)) == 0 }) {
				t.Errorf("Leftovers after destroy: %v", e.Leftovers(t))
			}
		})
	}
}

// TestDialAsUID: vpnd sees the uid Dial was given, from the connection's
// peer credentials; the connection works from any goroutine.
func TestDialAsUID(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			e := New(t, b.opt)
			c := e.Dial(t, 4000) // skips without root
			_, info, err := c.SetUpRaw(ctx(t), json.RawMessage(smallVPN))
			if err != nil {
				t.Fatal(err)
			}
			if info.Owner.UID != 4000 {
				t.Errorf("owner uid %d, want 4000", info.Owner.UID)
			}
			// The NORMAL user may not set lockdown: vpnd really took it for
			// uid 4000, not for root.
			if err := c.SetLockdown(ctx(t), protocol.Lockdown{Enabled: true}); err == nil {
				t.Errorf("setLockdown as uid 4000 succeeded, want 201")
			}
			if os.Geteuid() != 0 {
				t.Fatal("Dial as another uid did not skip without root")
			}
		})
	}
}

// TestCommand: a command runs as the uid asked for, with VPND_SOCKET set.
func TestCommand(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			e := New(t, b.opt)
			out, err := e.Command(uint32(os.Geteuid()), "sh", "-c", `echo "$(id -u) $VPND_SOCKET"`).Output()
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("%d %s\n", os.Geteuid(), e.Socket()); string(out) != want {
				t.Errorf("own uid: %q, want %q", out, want)
			}
			cmd := e.Command(4000, "id", "-u")
			out, err = cmd.Output()
			if os.Geteuid() != 0 {
				if err == nil || cmd.Err == nil {
					t.Errorf("uid 4000 without root: %q, %v; want an error", out, err)
				}
				return
			}
			if err != nil || string(out) != "4000\n" {
				t.Errorf("uid 4000: %q, %v", out, err)
			}
		})
	}
}

// TestPeer: the peer has its address and is reachable from vpnd's
// namespace; under sim it is the loopback address.
func TestPeer(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			e := New(t, b.opt, Peer())
			if e.Simulated() {
				if e.PeerAddr() != loopback {
					t.Errorf("PeerAddr %s under sim", e.PeerAddr())
				}
				return
			}
			out, err := e.PeerCommand("ip", "-4", "-o", "addr", "show").Output()
			if err != nil || !strings.Contains(string(out), " "+e.PeerAddr().String()+"/24 ") {
				t.Errorf("the peer's addresses: %v\n%s", err, out)
			}
			// The peer's side answers through vpnd's default route.
			out, err = e.Command(0, "ip", "route", "get", "203.0.113.9").Output()
			if err != nil || !strings.Contains(string(out), "via "+e.PeerAddr().String()) {
				t.Errorf("route from vpnd's namespace: %v\n%s", err, out)
			}
			if e.Command(0, "ip", "link", "show", vpndSideLink).Run() != nil {
				t.Errorf("no %s in vpnd's namespace", vpndSideLink)
			}
		})
	}
}

// TestRestart: lockdown, stored in the state directory, outlives a
// restart; a killed vpnd's VPN is swept by the next one.
func TestRestart(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			e := New(t, b.opt, normalPolicy)
			uid := uint32(os.Geteuid())
			admin := e.Dial(t, 0) // skips without root: only root is ADMIN
			if err := admin.SetLockdown(ctx(t), protocol.Lockdown{Enabled: true, Applications: []string{"4000"}}); err != nil {
				t.Fatal(err)
			}
			admin.Close()
			pid := e.PID()
			e.Restart(t)
			if e.PID() == pid {
				t.Fatal("Restart kept the same vpnd")
			}
			c := e.Dial(t, uid)
			st, err := c.Status(ctx(t))
			if err != nil || !st.Lockdown.Enabled {
				t.Fatalf("status after restart: %+v, %v; want lockdown on", st, err)
			}
			if err := c.SetLockdown(ctx(t), protocol.Lockdown{Enabled: false}); err != nil {
				t.Fatal(err)
			}
			tun, _, err := c.SetUpRaw(ctx(t), json.RawMessage(smallVPN))
			if err != nil {
				t.Fatal(err)
			}
			defer tun.Close()
			e.Kill(t)
			e.Restart(t) // sweeps the killed vpnd's VPN; the end checks it
		})
	}
}

// The end-of-test checks must fail when there is something to find. These
// tests use Start and Close, whose error is what New's cleanup reports.

// TestCloseFindsLeftovers: objects of vpnd's left in the namespace fail
// Close, each named, unless the test declared them.
func TestCloseFindsLeftovers(t *testing.T) {
	e := startKernel(t)
	shortSettle(t)
	for _, args := range [][]string{
		{"rule", "add", "priority", "10000", "uidrange", "4000-4000", "lookup", "98"},
		{"rule", "add", "priority", "10001", "uidrange", "4001-4001", "unreachable"},
		{"route", "add", "blackhole", "198.51.100.0/24", "table", "98"},
	} {
		if err := ip(e.Namespace(), args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := run("ip", "netns", "exec", e.Namespace(), "nft", "add", "table", "inet", "vpnd"); err != nil {
		t.Skipf("no nftables here: %v", err)
	}
	e.ExpectLeftovers(Firewall)
	err := e.Close()
	if err == nil {
		t.Fatal("Close found nothing")
	}
	for _, want := range []string{
		"rule ipv4 uidrange 4000-4000 lookup 98 (priority 10000)",
		"lockdown rule ipv4 uidrange 4001-4001 (priority 10001)",
		"route ipv4 blackhole 198.51.100.0/24 (table 98)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Close's error does not name %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "nftables table") {
		t.Errorf("Close names the nftables table, which the test declared:\n%v", err)
	}
}

// TestCloseFindsUndeclaredFirewall: vpnd's nftables table is a leftover
// too. Lockdown left on keeps it after vpnd exits; the test declares the
// lockdown rules only. (A table added by hand would not do: vpnd removes a
// table it does not want while it runs, so whether Close saw it would
// depend on timing.)
func TestCloseFindsUndeclaredFirewall(t *testing.T) {
	e := startKernel(t)
	if err := run("ip", "netns", "exec", e.Namespace(), "nft", "list", "tables"); err != nil {
		t.Skipf("no nftables here: %v", err)
	}
	admin := e.Dial(t, 0)
	if err := admin.SetLockdown(ctx(t), protocol.Lockdown{Enabled: true, Applications: []string{"4000"}}); err != nil {
		t.Fatal(err)
	}
	admin.Close()
	e.Rebase(t)
	e.ExpectLeftovers(LockdownRule)
	err := e.Close()
	if err == nil || !strings.Contains(err.Error(), "nftables table inet vpnd") || !strings.Contains(err.Error(), "ExpectLeftovers") {
		t.Errorf("Close: %v; want the nftables table named, and how to declare it", err)
	}
	if err != nil && strings.Contains(err.Error(), "lockdown rule") {
		t.Errorf("Close names the lockdown rules, which the test declared:\n%v", err)
	}
}

// TestCloseFindsOpenVPN: a VPN still up when the test ends (its client not
// closed) fails the idle check: its objects, vpnd's extra descriptors and
// goroutines.
func TestCloseFindsOpenVPN(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			e := startOn(t, b.opt, normalPolicy)
			shortSettle(t)
			c, err := client.Dial(ctx(t), e.Socket())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tun, _, err := c.SetUpRaw(ctx(t), json.RawMessage(smallVPN))
			if err != nil {
				t.Fatal(err)
			}
			defer tun.Close()
			err = e.Close()
			if err == nil || !strings.Contains(err.Error(), "descriptors") || !strings.Contains(err.Error(), "goroutines") {
				t.Errorf("Close with a VPN up: %v; want descriptors and goroutines named", err)
			}
			if !e.Simulated() && (err == nil || !strings.Contains(err.Error(), "still in the namespace: link vpn-tun")) {
				t.Errorf("Close with a VPN up: %v; want its link named", err)
			}
		})
	}
}

// TestCloseFindsErrorLog: an error-level line fails Close unless the test
// declared it. A bad policy at SIGHUP makes vpnd log one; a good one takes
// effect.
func TestCloseFindsErrorLog(t *testing.T) {
	for _, declared := range []bool{false, true} {
		t.Run(fmt.Sprint("declared=", declared), func(t *testing.T) {
			e := startOn(t, Sim(), normalPolicy)
			if declared {
				e.ExpectLog("policy reload failed")
			}
			e.SetAccounts(t, "{")
			if !strings.Contains(e.Log(), "policy reload failed") {
				t.Fatalf("vpnd did not log the failed reload:\n%s", e.Log())
			}
			uid := uint32(os.Geteuid())
			e.SetAccounts(t, fmt.Sprintf(`{"default":"normal","users":{"%d":"guest"}}`, uid))
			c, err := client.Dial(ctx(t), e.Socket())
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.SetUpRaw(ctx(t), json.RawMessage(smallVPN)); !errors.Is(err, client.ErrGuestDenied) {
				t.Errorf("setUp after the policy made uid %d a guest: %v", uid, err)
			}
			c.Close()
			err = e.Close()
			switch {
			case declared && err != nil:
				t.Errorf("Close with the line declared: %v", err)
			case !declared && (err == nil || !strings.Contains(err.Error(), "policy reload failed")):
				t.Errorf("Close: %v; want the error line quoted", err)
			}
		})
	}
}

// TestCloseFindsBadExit: a vpnd that died of a signal fails Close.
func TestCloseFindsBadExit(t *testing.T) {
	e := startOn(t, Sim())
	syscall.Kill(e.PID(), syscall.SIGKILL)
	<-e.current().exited
	if err := e.Close(); err == nil || !strings.Contains(err.Error(), "want 0") {
		t.Errorf("Close after vpnd was killed behind vpndtest's back: %v", err)
	}
}

// TestRemoveStaleBinDirs: the program directories of test binaries that
// have exited go; those of live ones, and directories of other names that
// look alike (another harness's vpndtest-bin-RANDOM), stay.
func TestRemoveStaleBinDirs(t *testing.T) {
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	dead := exited.Process.Pid
	var dirs []string
	for _, name := range []string{
		fmt.Sprintf("%s%d-", binDirPrefix, dead),        // an exited test binary's: goes
		fmt.Sprintf("%s%d-", binDirPrefix, os.Getpid()), // a live one's: stays
		fmt.Sprintf("vpndtest-bin-%d", dead),            // another harness's: stays
		fmt.Sprintf("vpndtest-bin-%d-", dead),           // the same
	} {
		d, err := os.MkdirTemp("", name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs = append(dirs, d)
	}
	removeStaleBinDirs()
	for i, d := range dirs {
		_, err := os.Stat(d)
		if gone := os.IsNotExist(err); gone != (i == 0) {
			t.Errorf("%s: removed %v, want %v", d, gone, i == 0)
		}
	}
}

// TestBuildOnce: a package is built once per test binary; names stay apart.
func TestBuildOnce(t *testing.T) {
	a := Build(t, "github.com/vpnd/vpnd/examples/simping")
	st, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	if b := Build(t, "../examples/simping"); b != a {
		t.Errorf("the same package by path and by directory: %s and %s", a, b)
	}
	if b := Build(t, "github.com/vpnd/vpnd/cmd/vpnctl"); b == a || filepath.Dir(b) != filepath.Dir(a) {
		t.Errorf("simping at %s, vpnctl at %s", a, b)
	}
	if st2, _ := os.Stat(a); !st2.ModTime().Equal(st.ModTime()) {
		t.Errorf("built twice")
	}
	if Binary(t) == a || filepath.Dir(Binary(t)) != filepath.Dir(a) {
		t.Errorf("vpnd at %s, simping at %s", Binary(t), a)
	}
}

func startOn(t *testing.T, opts ...Option) *Env {
	t.Helper()
	e, err := Start(opts...)
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { e.Close() }) // a no-op once the test closed it
	return e
}

func startKernel(t *testing.T) *Env {
	t.Helper()
	if why := kernelUnavailable(); why != "" {
		t.Skip("needs " + why)
	}
	return startOn(t, Kernel())
}

// shortSettle makes the idle check give up sooner, for tests where it must.
func shortSettle(t *testing.T) {
	old := idleWait
	idleWait = time.Second
	t.Cleanup(func() { idleWait = old })
}
