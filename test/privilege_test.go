package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/vpnd/vpnd/vpndtest"
)

// Least privilege: vpnd works as a non-root user that holds only
// CAP_NET_ADMIN, as an ambient capability, the way vpnd.service runs it.

// uidVpnd is vpnd's own uid in these tests (no passwd entry, like a
// DynamicUser).
const uidVpnd = 4010

// leastPrivilege describes a vpnd that runs as uidVpnd: its socket
// directory and state directory belong to that uid, and /dev/net/tun is
// made usable for it as distributions ship it (0666). The node is a fresh
// one (mknod in a temp dir) bind-mounted over /dev/net/tun in a private
// mount namespace, so the host's node is never changed.
type leastPrivilege struct {
	sockDir, stateDir string
	prefix            []string
}

// newLeastPrivilege prepares the directories; capable false leaves the
// capability out.
func newLeastPrivilege(t testing.TB, capable bool) *leastPrivilege {
	t.Helper()
	l := &leastPrivilege{sockDir: ownedDir(t, uidVpnd, 0o755), stateDir: ownedDir(t, uidVpnd, 0o700)}
	node := filepath.Join(newDaemonDir(t), "tun")
	mount := fmt.Sprintf(`mknod '%[1]s' c 10 200 && chmod 0666 '%[1]s' && mount --bind '%[1]s' /dev/net/tun`, node)
	l.prefix = append([]string{"unshare", "--mount", "--propagation", "private"}, execAfter(mount)...)
	l.prefix = append(l.prefix, "setpriv", fmt.Sprintf("--reuid=%d", uidVpnd), fmt.Sprintf("--regid=%d", uidVpnd), "--clear-groups")
	if capable {
		l.prefix = append(l.prefix, "--inh-caps=+net_admin", "--ambient-caps=+net_admin", "--bounding-set=-all,+net_admin")
	}
	return l
}

// opts start vpnd through l.
func (l *leastPrivilege) opts() []daemonOpt {
	return []daemonOpt{withPrefix(l.prefix...), withSocket(filepath.Join(l.sockDir, "vpnd.sock")), withFlags("--state-dir", l.stateDir)}
}

// ownedDir makes a temp dir owned by uid with mode perm.
func ownedDir(t testing.TB, uid uint32, perm os.FileMode) string {
	t.Helper()
	dir := newDaemonDir(t)
	if err := os.Chown(dir, int(uid), int(primaryGID(uid))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// privilegeScenario runs the same calls against d and returns what the
// kernel holds at each step, from the kernel: lockdown on (an ADMIN call),
// a NORMAL owner's protect and dual-stack setUp, then each way a VPN ends
// (destroy, the TUN closed, the owner's connection closed).
func privilegeScenario(t *testing.T, d *daemon) string {
	t.Helper()
	var b strings.Builder
	snap := func(step string) {
		fmt.Fprintf(&b, "== %s\n%s", step, vpnKernelState(t, d))
	}
	admin := d.dial(t, uidRoot)
	ok(t, admin.call("setLockdown", `{"enabled":true,"applications":["4001"]}`, ""))
	snap("lockdown on")

	const cfg = `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"mtu":1400,` +
		`"routes":["198.51.100.0/24","2001:db8:100::/64",` +
		`{"destination":{"address":{"address":"198.51.100.2"},"prefixLength":32},"isExcludedRoute":true}]}`
	owner := d.dial(t, uidNormal)
	ok(t, owner.call("protect", "{}", "udp"))
	if m := owner.mark(); m != defaultMark {
		t.Errorf("protect set SO_MARK %#x, want %#x", m, defaultMark)
	}
	setUpOK(t, owner.call("setUp", cfg, ""))
	snap("setUp")
	ok(t, owner.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
	snap("destroy")

	setUpOK(t, owner.call("setUp", cfg, ""))
	owner.closeTUN()
	d.waitClean(t, "TUN closed")
	snap("linkGone")

	setUpOK(t, owner.call("setUp", cfg, ""))
	owner.closeConn()
	d.waitClean(t, "owner's connection closed")
	snap("ownerGone")

	last := d.dial(t, uidNormal)
	setUpOK(t, last.call("setUp", cfg, ""))
	snap("setUp before SIGTERM")
	return b.String()
}

// vpnKernelState describes the kernel state a VPN and lockdown make in
// d's namespace: vpn-tun's attributes and addresses, its rp_filter and
// IPv6 address generation, every rule, and the VPN table.
func vpnKernelState(t testing.TB, d *daemon) string {
	t.Helper()
	var lines []string
	if l := d.link(t, d.ifname); l != nil {
		lines = append(lines, fmt.Sprintf("link %s mtu %d kind %s flags %v", l.Ifname, l.MTU, l.kind(), l.Flags))
		for _, a := range d.addrs(t, d.ifname) {
			lines = append(lines, fmt.Sprintf("addr %s %s/%d scope %s", a.Family, a.Local, a.Prefixlen, a.Scope))
		}
		out, err := nsExec(d.ns, "cat", "/proc/sys/net/ipv4/conf/"+d.ifname+"/rp_filter", "/proc/sys/net/ipv6/conf/"+d.ifname+"/addr_gen_mode")
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, "rp_filter, addr_gen_mode: "+strings.Join(strings.Fields(out), " "))
	}
	for _, r := range d.rules(t) {
		lines = append(lines, "rule "+r.String())
	}
	for _, r := range d.routes(t) {
		lines = append(lines, "route "+r.String())
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

// nsExec runs a command in namespace ns and returns its output.
func nsExec(ns string, argv ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s in %s: %v: %s", strings.Join(argv, " "), ns, err, out)
	}
	return string(out), nil
}

// vpnd as a non-root uid holding only CAP_NET_ADMIN (ambient, and nothing
// else in its bounding set) does everything it does as root: lockdown,
// protect, setUp, destroy, every other ending, SIGTERM (exit 0, socket
// removed, nothing left but lockdown's rules), with the same kernel state
// at every step.
func TestLeastPrivilege(t *testing.T) {
	kernelOnly(t, "vpnd as a non-root uid with CAP_NET_ADMIN only, compared with root by the kernel state it makes")
	t.Parallel()
	results := map[string]string{}
	for _, asRoot := range []bool{true, false} {
		name := "non-root with CAP_NET_ADMIN"
		if asRoot {
			name = "root"
		}
		t.Run(name, func(t *testing.T) {
			var opts []daemonOpt
			var l *leastPrivilege
			if !asRoot {
				l = newLeastPrivilege(t, true)
				opts = l.opts()
			}
			d := startDaemon(t, opts...)
			if !asRoot {
				wantCaps(t, d.pid, uidVpnd)
			}
			results[name] = privilegeScenario(t, d)
			d.ExpectLeftovers(vpndtest.LockdownRule, vpndtest.Firewall)
			d.stop(t)
			// Lockdown fails closed: its rules stay when vpnd exits.
			results[name] += "== after exit\n" + vpnKernelState(t, d)
			if !asRoot {
				st, err := os.Stat(filepath.Join(l.stateDir, "lockdown.json"))
				if err != nil || st.Sys().(*syscall.Stat_t).Uid != uidVpnd {
					t.Errorf("lockdown's state file: %v, want it written by uid %d", err, uidVpnd)
				}
			}
		})
	}
	root, user := results["root"], results["non-root with CAP_NET_ADMIN"]
	if root == "" || user == "" {
		return // a subtest failed already
	}
	if root != user {
		t.Errorf("the kernel state differs.\nas root:\n%s\nas uid %d with CAP_NET_ADMIN:\n%s", root, uidVpnd, user)
	}
	if !strings.Contains(root, "link vpn-tun mtu 1400") || !strings.Contains(root, "uidrange 4001-4001 fwmark 0/0x20000 unreachable") {
		t.Errorf("the scenario did not set up what it should have:\n%s", root)
	}
}

// wantCaps checks that pid runs as uid with CAP_NET_ADMIN alone, in every
// capability set.
func wantCaps(t testing.TB, pid int, uid uint32) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	netAdmin := fmt.Sprintf("%016x", 1<<12)
	want := map[string]string{"CapInh": netAdmin, "CapPrm": netAdmin, "CapEff": netAdmin, "CapBnd": netAdmin, "CapAmb": netAdmin}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		if w, ok := want[k]; ok && v != w {
			t.Errorf("vpnd's %s is %s, want %s (CAP_NET_ADMIN only)", k, v, w)
		}
		if k == "Uid" && strings.Fields(v)[1] != fmt.Sprint(uid) {
			t.Errorf("vpnd's uids are %s, want effective uid %d", v, uid)
		}
	}
}

// A non-root vpnd that lacks what it needs exits 1 at start, names what
// is missing, and touches nothing.
func TestLeastPrivilegeStartChecks(t *testing.T) {
	kernelOnly(t, "vpnd run as uid 4010 with or without CAP_NET_ADMIN, as vpnd.service runs it; a simulated vpnd runs as its own ordinary user and skips the capability check")
	t.Parallel()
	hostTUN := tunNode(t)
	t.Cleanup(func() {
		if now := tunNode(t); now != hostTUN {
			t.Errorf("the host's /dev/net/tun changed: %s, was %s", now, hostTUN)
		}
	})
	for _, tc := range []struct {
		name    string
		capable bool
		setup   func(l *leastPrivilege)
		want    []string
		notWant string
	}{
		{name: "no CAP_NET_ADMIN, TUN usable", capable: false,
			want:    []string{"vpnd: missing capability CAP_NET_ADMIN (run as root or grant it, e.g. AmbientCapabilities=CAP_NET_ADMIN)\n"},
			notWant: "/dev/net/tun"},
		{name: "state directory not writable", capable: true,
			setup: func(l *leastPrivilege) { l.stateDir = newDaemonDir(t) }, // root's, 0755
			want:  []string{"vpnd: state directory ", "is not writable by uid 4010"}},
		{name: "socket directory not writable", capable: true,
			setup: func(l *leastPrivilege) { l.sockDir = newDaemonDir(t) },
			want:  []string{"vpnd: listen: ", "permission denied"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := newNetns(t)
			plantLeftovers(t, ns)
			l := newLeastPrivilege(t, tc.capable)
			if tc.setup != nil {
				tc.setup(l)
			}
			sock := filepath.Join(l.sockDir, "vpnd.sock")
			code, out := runVpndToExitIn(t, ns, l.prefix, sock, "--state-dir", l.stateDir)
			if code != 1 {
				t.Errorf("exit %d, want 1: %s", code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("the message does not say %q:\n%s", w, out)
				}
			}
			if tc.notWant != "" && strings.Contains(out, tc.notWant) {
				t.Errorf("the message names %q, which is not missing:\n%s", tc.notWant, out)
			}
			wantNotSwept(t, ns)
			if _, err := os.Lstat(sock); !os.IsNotExist(err) {
				t.Errorf("socket file %s: %v", sock, err)
			}
		})
	}
}

// tunNode describes the host's /dev/net/tun.
func tunNode(t testing.TB) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/dev/net/tun", &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("inode %d mode %o uid %d", st.Ino, st.Mode, st.Uid)
}

// A state directory on a read-only file system (ProtectSystem=strict
// without StateDirectory=) stops vpnd at start, even as root, instead of
// failing every setLockdown later.
func TestStateDirReadOnly(t *testing.T) {
	kernelOnly(t, "vpnd running as root refused by a read-only state directory (a bind mount in a private mount namespace); a simulated vpnd never runs as root")
	t.Parallel()
	ns := newNetns(t)
	plantLeftovers(t, ns)
	dir := newDaemonDir(t)
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	prefix := append([]string{"unshare", "--mount", "--propagation", "private"},
		execAfter(fmt.Sprintf(`mount --bind '%[1]s' '%[1]s' && mount -o remount,bind,ro '%[1]s'`, state))...)
	code, out := runVpndToExitIn(t, ns, prefix, filepath.Join(dir, "vpnd.sock"), "--state-dir", state)
	want := fmt.Sprintf("vpnd: state directory %s is not writable by uid 0: read-only file system", state)
	if code != 1 || !strings.Contains(out, want) {
		t.Errorf("exit %d, want 1 saying %q:\n%s", code, want, out)
	}
	wantNotSwept(t, ns)
}
