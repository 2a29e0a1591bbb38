package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// kernelState describes what a vpnd that refuses to start must leave as
// it found it: every link (name, index, flags), every rule, the routes of
// the tables the tests use, and vpn-tun's addresses.
func kernelState(t testing.TB, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, l := range nsLinks(t, ns) {
		fmt.Fprintf(&b, "link %s %d %v\n", l.Ifname, l.Ifindex, l.Flags)
	}
	for _, r := range nsRules(t, ns) {
		fmt.Fprintf(&b, "rule %s\n", r)
	}
	for _, table := range []int{defaultTable, 97, 254} {
		for _, r := range nsRoutes(t, ns, table) {
			fmt.Fprintf(&b, "table %d: %s\n", table, r)
		}
	}
	if nsLink(t, ns, defaultIfname) != nil {
		for _, a := range nsAddrs(t, ns, defaultIfname) {
			fmt.Fprintf(&b, "addr %s/%d\n", a.Local, a.Prefixlen)
		}
	}
	return b.String()
}

// plantLeftovers puts in ns what a killed vpnd with the default names
// leaves behind, which a start-up sweep removes: its TUN link and a rule
// at its priority that looks up its table.
func plantLeftovers(t testing.TB, ns string) {
	t.Helper()
	nsIP(t, ns, "tuntap", "add", defaultIfname, "mode", "tun")
	nsIP(t, ns, "-4", "rule", "add", "priority", fmt.Sprint(defaultPriority), "uidrange", "5-5", "lookup", fmt.Sprint(defaultTable))
}

// wantNotSwept fails unless plantLeftovers' objects are still there.
func wantNotSwept(t testing.TB, ns string) {
	t.Helper()
	if p := nsLeftovers(t, ns, defaultIfname, defaultTable, defaultPriority); len(p) != 2 {
		t.Errorf("a vpnd that refused to start swept the namespace: left %q, want the planted link and rule", p)
	}
}

// One owner per namespace: a second vpnd that would serve any of the
// running one's interface name, table, rule priority or priority+1 (its
// lockdown rules) exits 1 naming the running one, and touches nothing:
// no sweep, no socket file. Before, it swept first and so deleted the
// running VPN's link (the VPN ended with linkGone).
func TestOneVpndPerNamespace(t *testing.T) {
	kernelOnly(t, "ownership of kernel names; any number of simulated vpnds may run")
	t.Parallel()
	a := startDaemon(t)
	sub := a.dial(t, uidRoot)
	ok(t, sub.call("subscribe", "{}", ""))
	owner := a.dial(t, uidNormal)
	info := setUpOK(t, owner.call("setUp", setUpParams, ""))
	wantState(t, sub, "setUp", true)
	before := kernelState(t, a.ns)
	if !strings.Contains(before, "link "+defaultIfname) {
		t.Fatalf("no VPN to protect:\n%s", before)
	}
	// The message names A: its pid and its command line.
	namesA := []string{fmt.Sprintf("pid %d", a.pid), bin(t, "vpnd") + " --socket " + a.sock}

	refused := func(t *testing.T, ns, sock string, want string, flags ...string) {
		t.Helper()
		ownSock := sock != a.sock
		// A state directory of its own: a second vpnd given A's is
		// refused for that first (TestStateDirShared).
		flags = append(flags, "--state-dir", newStateDir(t))
		code, out := runVpndToExitIn(t, ns, nil, sock, flags...)
		if code != 1 {
			t.Errorf("second vpnd exited %d, want 1: %s", code, out)
		}
		for _, s := range append([]string{want}, namesA...) {
			if !strings.Contains(out, s) {
				t.Errorf("the message does not say %q:\n%s", s, out)
			}
		}
		if after := kernelState(t, a.ns); after != before {
			t.Errorf("the second vpnd changed the first one's namespace:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if st, err := os.Lstat(a.sock); err != nil || st.Mode()&os.ModeSocket == 0 {
			t.Errorf("the running vpnd's socket file: %v", err)
		}
		if _, err := os.Lstat(sock); ownSock && !os.IsNotExist(err) {
			t.Errorf("the refused vpnd created its socket file %s (lstat: %v)", sock, err)
		}
	}
	otherSock := func() string { return filepath.Join(newDaemonDir(t), "b.sock") }

	t.Run("same namespace, same socket", func(t *testing.T) {
		refused(t, a.ns, a.sock, "interface vpn-tun")
	})
	t.Run("other socket, same interface name", func(t *testing.T) {
		refused(t, a.ns, otherSock(), "interface vpn-tun", "--table", "97", "--rule-priority", "20000")
	})
	t.Run("other socket, same table only", func(t *testing.T) {
		refused(t, a.ns, otherSock(), "routing table 98", "--ifname", "vpn-b", "--rule-priority", "20000")
	})
	t.Run("other socket, same priority only", func(t *testing.T) {
		refused(t, a.ns, otherSock(), "rule priority 10000", "--ifname", "vpn-b", "--table", "97")
	})
	t.Run("priority one above: its rules would sit on the lockdown priority", func(t *testing.T) {
		refused(t, a.ns, otherSock(), "rule priority 10001", "--ifname", "vpn-b", "--table", "97", "--rule-priority", "10001")
	})
	t.Run("priority one below: its lockdown priority is ours", func(t *testing.T) {
		refused(t, a.ns, otherSock(), "rule priority 10000", "--ifname", "vpn-b", "--table", "97", "--rule-priority", "9999")
	})
	t.Run("another namespace, same socket", func(t *testing.T) {
		// It owns its own namespace's names, but the socket path is
		// taken by a live vpnd: it refuses before its sweep.
		ns := newNetns(t)
		plantLeftovers(t, ns)
		refused(t, ns, a.sock, "already served by")
		wantNotSwept(t, ns)
	})

	// A's VPN lived through all of it: same link, owner still connected,
	// and the next event the subscriber sees is the owner's destroy, not
	// linkGone.
	if st := owner.status(); st.State != "connected" || st.VPN == nil || st.VPN.Index != info.Index {
		t.Errorf("status after the refused starts: %+v, want the VPN on index %d", st, info.Index)
	}
	ok(t, owner.call("destroy", "{}", ""))
	wantState(t, sub, "destroy", false)
	a.waitClean(t, "destroy")
}

// Different interface name, table and priority in one namespace: two
// vpnds run side by side, each with its own VPN.
func TestTwoVpndsWithTheirOwnNames(t *testing.T) {
	kernelOnly(t, "ownership of kernel names; any number of simulated vpnds may run")
	t.Parallel()
	a := startDaemon(t)
	b := startDaemon(t, inNetns(a.ns), withKernelNames("vpn-b", 97, 20000, 0x40000), withFlags("--state-dir", newStateDir(t)))
	ca := a.dial(t, uidRoot)
	cb := b.dial(t, uidRoot)
	setUpOK(t, ca.call("setUp", `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`, ""))
	setUpOK(t, cb.call("setUp", `{"addresses":["10.9.0.2/24"],"routes":["203.0.113.0/24"]}`, ""))
	if a.link(t, "vpn-tun") == nil || b.link(t, "vpn-b") == nil {
		t.Errorf("both VPNs should be up: %v", a.links(t))
	}
	ok(t, ca.call("destroy", "{}", ""))
	ok(t, cb.call("destroy", "{}", ""))
	a.waitClean(t, "destroy")
	b.waitClean(t, "destroy")
}

// The names go away with the process, however it ends: a new vpnd starts
// on the same names and socket at once, and a killed one's leftovers are
// swept.
func TestOwnershipEndsWithTheProcess(t *testing.T) {
	kernelOnly(t, "ownership of kernel names; any number of simulated vpnds may run")
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			a := startDaemon(t)
			owner := a.dial(t, uidRoot)
			setUpOK(t, owner.call("setUp", setUpParams, ""))
			if sig == syscall.SIGKILL {
				a.kill(t)
			} else {
				a.stop(t)
			}
			b := startDaemon(t, inNetns(a.ns), withSocket(a.sock))
			if p := b.leftovers(t); len(p) > 0 {
				t.Errorf("after the new start: %s", strings.Join(p, "; "))
			}
			c := b.dial(t, uidRoot)
			setUpOK(t, c.call("setUp", setUpParams, ""))
			ok(t, c.call("destroy", "{}", ""))
			b.waitClean(t, "destroy")
		})
	}
}

// Fail at start, not later: without CAP_NET_ADMIN, or without a usable
// /dev/net/tun, vpnd exits 1 naming what is missing, before its sweep.
// Before, it logged "serving" and failed every setUp with 19900002.
func TestStartupChecks(t *testing.T) {
	kernelOnly(t, "the start-up checks (CAP_NET_ADMIN, /dev/net/tun), which --sim skips")
	t.Parallel()

	t.Run("no CAP_NET_ADMIN", func(t *testing.T) {
		t.Parallel()
		ns := newNetns(t)
		plantLeftovers(t, ns)
		sock := filepath.Join(newDaemonDir(t), "vpnd.sock")
		// A non-root uid: setpriv's change of uid clears every capability.
		prefix := []string{"setpriv", "--reuid", fmt.Sprint(uidNormal), "--regid", fmt.Sprint(uidNormal), "--clear-groups"}
		code, out := runVpndToExitIn(t, ns, prefix, sock)
		if code != 1 {
			t.Errorf("exit %d, want 1: %s", code, out)
		}
		want := "vpnd: missing capability CAP_NET_ADMIN (run as root or grant it, e.g. AmbientCapabilities=CAP_NET_ADMIN)\n"
		if !strings.Contains(out, want) {
			t.Errorf("the message does not name the capability:\n%s", out)
		}
		wantNotSwept(t, ns)
	})

	t.Run("no /dev/net/tun", func(t *testing.T) {
		t.Parallel()
		ns := newNetns(t)
		plantLeftovers(t, ns)
		sock := filepath.Join(newDaemonDir(t), "vpnd.sock")
		// A private mount namespace whose /dev/net is an empty tmpfs: the
		// host's device node is never touched.
		prefix := append([]string{"unshare", "--mount", "--propagation", "private"},
			execAfter("mount -t tmpfs -o mode=0755 tmpfs /dev/net")...)
		code, out := runVpndToExitIn(t, ns, prefix, sock)
		if code != 1 {
			t.Errorf("exit %d, want 1: %s", code, out)
		}
		if !strings.Contains(out, "vpnd: /dev/net/tun: no such file or directory") {
			t.Errorf("the message does not name /dev/net/tun:\n%s", out)
		}
		if strings.Contains(out, "CAP_NET_ADMIN") {
			t.Errorf("root was told it lacks CAP_NET_ADMIN:\n%s", out)
		}
		wantNotSwept(t, ns)
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			t.Errorf("the host's /dev/net/tun: %v", err)
		}
	})
}
