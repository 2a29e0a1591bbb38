package test

// scripts/try is the README's first step for newcomers, so it is tested
// like the rest: it must build, serve in a namespace of its own, run
// commands there (as root or as another user), and leave nothing behind,
// Ctrl-C included.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tryRun is one run of scripts/try.
type tryRun struct {
	stdout, stderr string
	code           int
	ns, dir        string // its namespace and temporary directory
	vpndPID        int
}

var tryServesRe = regexp.MustCompile(`try: vpnd \(pid ([0-9]+)\) serves (\S+)/vpnd\.sock in namespace (vpnd-try-\S+);`)

// tryCommand returns the command that runs scripts/try with args.
func tryCommand(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	requireRoot(t)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "try"), args...)
	cmd.Dir = root
	return cmd
}

// runTry runs scripts/try with args to completion.
func runTry(t testing.TB, args ...string) tryRun {
	t.Helper()
	return runTryCmd(t, tryCommand(t, args...))
}

// runTryCmd runs cmd, a tryCommand, to completion.
func runTryCmd(t testing.TB, cmd *exec.Cmd) tryRun {
	t.Helper()
	args := cmd.Args[1:]
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute): // a hang guard; a build may be slow
		cmd.Process.Kill()
		<-done
		t.Fatalf("scripts/try %v hangs:\n%s%s", args, stdout.String(), stderr.String())
	}
	r := tryRun{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
	r.parse(t)
	return r
}

func (r *tryRun) parse(t testing.TB) {
	t.Helper()
	m := tryServesRe.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("scripts/try did not say where vpnd serves (exit %d):\n%s%s", r.code, r.stdout, r.stderr)
	}
	r.vpndPID, _ = strconv.Atoi(m[1])
	r.dir, r.ns = m[2], m[3]
}

// wantGone checks that the run left nothing: no namespace, no vpnd, no
// temporary directory.
func (r *tryRun) wantGone(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/run/netns/" + r.ns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s still exists (stat: %v)", r.ns, err)
		exec.Command("ip", "netns", "del", r.ns).Run()
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), r.ns) {
		t.Errorf("ip netns list still shows %s:\n%s", r.ns, out)
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.vpndPID)); err == nil &&
		strings.Contains(string(cmdline), r.dir) {
		t.Errorf("vpnd (pid %d) still runs", r.vpndPID)
		syscall.Kill(r.vpndPID, syscall.SIGKILL)
	}
	if _, err := os.Stat(r.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory %s still exists (stat: %v)", r.dir, err)
		os.RemoveAll(r.dir)
	}
}

// TestTryStatus builds vpnd and vpnctl the way a newcomer does, and asks
// the sandboxed vpnd for its status.
func TestTryStatus(t *testing.T) {
	t.Parallel()
	r := runTry(t, "--", "vpnctl", "status")
	defer r.wantGone(t)
	if r.code != 0 {
		t.Errorf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r.stdout != "state:           disconnected\nlockdown:        off\n" {
		t.Errorf("vpnctl status printed %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "try: building vpnd and vpnctl") {
		t.Errorf("scripts/try did not build:\n%s", r.stderr)
	}
}

// TestTryUpDown runs a whole VPN's life in the sandbox as a NORMAL user
// (uid 4000, which has no passwd entry): up, status, the kernel's view,
// down.
func TestTryUpDown(t *testing.T) {
	t.Parallel()
	script := `id -u
vpnctl up --address 10.8.0.2/24 --route 198.51.100.0/24 >/dev/null 2>&1 &
for i in $(seq 200); do vpnctl status | grep -q '^state: *connected' && break; sleep 0.05; done
vpnctl status
ip rule
ip route show table 98
vpnctl down && echo DOWN-OK
wait
vpnctl status`
	r := runTry(t, "--bin", binDirFor(t), "--user", fmt.Sprint(uidNormal), "--", "sh", "-c", script)
	defer r.wantGone(t)
	if r.code != 0 {
		t.Errorf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) < 3 || lines[0] != fmt.Sprint(uidNormal) || lines[len(lines)-2] != "state:           disconnected" ||
		lines[len(lines)-1] != "lockdown:        off" {
		t.Errorf("want the uid first and a disconnected state last, got:\n%s", r.stdout)
	}
	for _, want := range []string{
		"state:           connected",
		"interface:       vpn-tun",
		fmt.Sprintf("(uid %d, pid ", uidNormal),
		fmt.Sprintf("10000:\tfrom all fwmark 0/0x20000 uidrange %d-%d lookup 98", uidNormal, uidNormal),
		"198.51.100.0/24 dev vpn-tun",
		"DOWN-OK",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestTryInterrupt presses Ctrl-C (SIGINT to the whole process group)
// while `vpnctl up` holds a VPN in the sandbox. vpnctl must end the VPN
// cleanly (vpnd, in a session of its own, does not get the Ctrl-C), and
// then everything must go.
func TestTryInterrupt(t *testing.T) {
	t.Parallel()
	cmd := tryCommand(t, "--bin", binDirFor(t), "--", "vpnctl", "up", "--address", "10.8.0.2/24")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var stderr syncBuffer
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderrPipe)
		signalled := false
		for sc.Scan() {
			fmt.Fprintln(&stderr, sc.Text())
			if !signalled && strings.Contains(sc.Text(), "vpnctl: VPN is up") {
				signalled = true
				close(ready)
			}
		}
		cmd.Wait()
		close(done)
	}()
	defer func() {
		select {
		case <-done:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}()
	select {
	case <-ready:
	case <-done:
		t.Fatalf("scripts/try exited early:\n%s", stderr.String())
	case <-time.After(hangGuard):
		t.Fatalf("vpnctl up in scripts/try did not set the VPN up:\n%s", stderr.String())
	}
	if ignoresSIGINT(cmd.Process.Pid) {
		t.Skip("this test was started with SIGINT ignored, so no Ctrl-C can reach scripts/try")
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatalf("scripts/try ignored Ctrl-C:\n%s", stderr.String())
	}
	r := tryRun{stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
	r.parse(t)
	r.wantGone(t)
	if r.code != 130 {
		t.Errorf("exit %d after Ctrl-C, want 130:\n%s", r.code, r.stderr)
	}
	// vpnctl destroyed the VPN and exited 0: it printed nothing after
	// "VPN is up" (not "the VPN ended (shutdown)", nor a failed destroy).
	if _, after, _ := strings.Cut(r.stderr, "vpnctl: VPN is up; interrupt to end it\n"); strings.Contains(after, "vpnctl:") {
		t.Errorf("vpnctl did not end the VPN cleanly on Ctrl-C:\n%s", r.stderr)
	}
}

// ignoresSIGINT reports whether process pid ignores SIGINT, as a process
// started in the background of a non-interactive shell does.
func ignoresSIGINT(pid int) bool {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<(uint(syscall.SIGINT)-1)) != 0
		}
	}
	return false
}

// binDirFor returns the directory of the binaries TestMain built, so that
// scripts/try --bin need not build them again.
func binDirFor(t testing.TB) string {
	t.Helper()
	bin(t, "vpnd")
	bin(t, "vpnctl")
	return binDir
}

// TestTryAccounts: --user without a name (or with an empty one, as
// `--user "$USER"` gives where $USER is unset) is the user who ran sudo,
// a relative --bin works for commands that vpnctl runs, and scripts/try
// says which account type the shell or CMD has, asking vpnd.
func TestTryAccounts(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(root, binDirFor(t)) // scripts/try runs in root
	if err != nil {
		t.Fatal(err)
	}
	t.Run("SUDO_USER, relative --bin", func(t *testing.T) {
		t.Parallel()
		cmd := tryCommand(t, "--bin", rel, "--user", "", "--", "vpnctl", "up", "--quiet", "--address", "10.8.0.2/24",
			"--route", "198.51.100.0/24", "--", "vpnctl", "status")
		cmd.Env = append(withoutSudoUser(), fmt.Sprintf("SUDO_USER=%d", uidNormal))
		r := runTryCmd(t, cmd)
		defer r.wantGone(t)
		if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("(uid %d, pid ", uidNormal)) {
			t.Errorf("exit %d, want the VPN of uid %d:\n%s%s", r.code, uidNormal, r.stdout, r.stderr)
		}
		if want := fmt.Sprintf("try: uid %d is a NORMAL account here\n", uidNormal); !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	})
	t.Run("root is said to be ADMIN", func(t *testing.T) {
		t.Parallel()
		r := runTry(t, "--bin", rel, "--", "true")
		defer r.wantGone(t)
		if r.code != 0 || !strings.Contains(r.stderr, "try: root is an ADMIN account here: its VPN carries every user's traffic") {
			t.Errorf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
	})
	t.Run("--user without SUDO_USER", func(t *testing.T) {
		t.Parallel()
		cmd := tryCommand(t, "--bin", rel, "--user", "--", "true")
		cmd.Env = withoutSudoUser()
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), "SUDO_USER is not set: give --user NAME") ||
			strings.Contains(string(out), "serves") {
			t.Errorf("exit %d, want 2 before anything starts:\n%s", code, out)
		}
	})
}

// withoutSudoUser is the test's environment without SUDO_USER.
func withoutSudoUser() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "SUDO_USER=") })
}
