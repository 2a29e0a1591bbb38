package test

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vpnd stopping (SIGTERM) while `vpnctl up` holds a VPN: vpnd tells its
// subscribers "shutdown" just before it closes their connections, and
// vpnctl up reports that, not the lost connection that follows. Which of
// the two vpnctl sees first is a race, so the test runs it several times,
// each with a new vpnd in the same namespace.
func TestVpnctlUpReportsShutdown(t *testing.T) {
	t.Parallel()
	const runs = 12
	d := startDaemon(t)
	for i := range runs {
		if i > 0 {
			d = startDaemon(t, inNetns(d.ns))
		}
		cmd := exec.Command(bin(t, "vpnctl"), "--socket", d.sock, "up", "--address", "10.8.0.2/24")
		var stdout, stderr syncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		done := startBackground(t, cmd)
		eventually(t, "vpnctl up says it holds the VPN", func() (bool, string) {
			select {
			case <-done:
				t.Fatalf("run %d: vpnctl up exited: %s", i, stderr.String())
			default:
			}
			return strings.Contains(stderr.String(), "VPN is up; interrupt to end it"), stderr.String()
		})
		d.signal(t, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(hangGuard):
			t.Fatalf("run %d: vpnctl up did not exit after vpnd's SIGTERM: %s", i, stderr.String())
		}
		_, after, _ := strings.Cut(stderr.String(), "VPN is up; interrupt to end it\n")
		if code := cmd.ProcessState.ExitCode(); code != 1 || after != "vpnctl: the VPN ended (shutdown)\n" {
			t.Errorf("run %d of %d: exit %d, after the VPN was up: %q, want exit 1 and %q",
				i+1, runs, code, after, "vpnctl: the VPN ended (shutdown)\n")
		}
		if code := d.waitExit(t); code != 0 {
			t.Errorf("run %d: vpnd exited with status %d after SIGTERM", i+1, code)
		}
		d.stop(t) // socket file and namespace clean
	}
}

// The same with `vpnctl up -- CMD`: vpnctl says that vpnd shut down, lets
// CMD finish (it ends when its stdin closes), and exits with its status.
func TestVpnctlUpCommandReportsShutdown(t *testing.T) {
	t.Parallel()
	const runs = 3
	d := startDaemon(t)
	for i := range runs {
		if i > 0 {
			d = startDaemon(t, inNetns(d.ns))
		}
		cmd := exec.Command(bin(t, "vpnctl"), "--socket", d.sock, "up", "--quiet", "--address", "10.8.0.2/24", "--",
			"sh", "-c", "echo running; cat >/dev/null; exit 5")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr syncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		done := startBackground(t, cmd)
		eventually(t, "CMD runs", func() (bool, string) {
			return strings.Contains(stdout.String(), "running"), stderr.String()
		})
		d.signal(t, syscall.SIGTERM)
		const want = "vpnctl: the VPN ended (shutdown); waiting for sh to exit\n"
		eventually(t, "vpnctl says the VPN ended", func() (bool, string) {
			return stderr.String() != "", stderr.String()
		})
		stdin.Close()
		select {
		case <-done:
		case <-time.After(hangGuard):
			t.Fatalf("run %d: vpnctl up did not exit after CMD: %s", i, stderr.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 5 || stderr.String() != want {
			t.Errorf("run %d of %d: exit %d, stderr %q; want CMD's 5 and %q", i+1, runs, code, stderr.String(), want)
		}
		if code := d.waitExit(t); code != 0 {
			t.Errorf("run %d: vpnd exited with status %d after SIGTERM", i+1, code)
		}
		d.stop(t)
	}
}
