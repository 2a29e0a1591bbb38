package test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// vpnctlRun runs vpnctl to completion as uid (0: the test's own) and
// returns stdout, stderr and the exit code.
func vpnctlRun(t testing.TB, uid uint32, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin(t, "vpnctl"), args...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: primaryGID(uid), Groups: []uint32{}}}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(hangGuard):
		cmd.Process.Kill()
		<-done
		t.Fatalf("vpnctl %v did not finish; stdout %q stderr %q", args, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// wantVpnctlError checks the §8 failure format on stderr:
// "vpnctl: CODE MESSAGE (detail)" and a non-zero exit.
func wantVpnctlError(t testing.TB, stderr string, code int, exit int, detailRequired bool) {
	t.Helper()
	if exit == 0 {
		t.Errorf("vpnctl exited 0 on a failed call; stderr %q", stderr)
	}
	msg := regexp.QuoteMeta(contractMessages[code])
	detail := `( \(.+\))?`
	if detailRequired {
		detail = ` \(.+\)`
	}
	re := regexp.MustCompile(`(?m)^vpnctl: ` + regexp.QuoteMeta(itoa(code)) + ` ` + msg + detail + `$`)
	if !re.MatchString(stderr) {
		t.Errorf("vpnctl stderr %q does not match %s", stderr, re)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// §8 vpnctl.
func TestVpnctl(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)

	t.Run("up holds the VPN until SIGINT", func(t *testing.T) {
		cmd := exec.Command(bin(t, "vpnctl"), "--socket", d.sock, "up", "--address", "10.8.0.2/24", "--route", "198.51.100.0/24")
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		defer func() {
			select {
			case <-done:
			default:
				cmd.Process.Kill()
				<-done
			}
		}()
		eventually(t, "vpnctl up brings vpn-tun up", func() (bool, string) {
			select {
			case <-done:
				t.Fatalf("vpnctl up exited: %s", out.String())
			default:
			}
			l := d.link(t, "vpn-tun")
			return l != nil && len(d.routes(t)) > 0, "no vpn-tun or no route yet"
		})
		d.wantTUNLink(t, 1500)
		if got := d.globalAddrs(t); !equalStrings(got, []string{"10.8.0.2/24"}) {
			t.Errorf("addresses %v", got)
		}
		if got := d.routeStrings(t); !equalStrings(got, []string{"ipv4 198.51.100.0/24 dev vpn-tun"}) {
			t.Errorf("routes %v", got)
		}
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(hangGuard):
			t.Fatalf("vpnctl up ignored SIGINT: %s", out.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("vpnctl up exit %d after SIGINT, want 0: %s", code, out.String())
		}
		d.waitClean(t, "vpnctl up interrupted")
	})

	t.Run("up -- CMD gets the TUN as fd 3", func(t *testing.T) {
		stdout, stderr, code := vpnctlRun(t, 0, "--socket", d.sock, "up", "--address", "10.8.0.2/24", "--",
			"sh", "-c", `echo "fd=$VPN_TUN_FD"; readlink /proc/self/fd/3`)
		if code != 0 {
			t.Errorf("exit %d: %s %s", code, stdout, stderr)
		}
		if !strings.Contains(stdout, "fd=3") || !strings.Contains(stdout, "/dev/net/tun") {
			t.Errorf("CMD output %q: want VPN_TUN_FD=3 and fd 3 on /dev/net/tun", stdout)
		}
		d.waitClean(t, "CMD exited")
	})

	t.Run("explain prints the seed", func(t *testing.T) {
		for code, seed := range seedText {
			stdout, stderr, exit := vpnctlRun(t, 0, "explain", itoa(code))
			if exit != 0 {
				t.Errorf("explain %d: exit %d %s", code, exit, stderr)
			}
			text := strings.ReplaceAll(stdout, "**", "")
			for _, want := range []string{seed.name, contractMessages[code], seed.cause, seed.solution} {
				if !strings.Contains(text, want) {
					t.Errorf("explain %d output lacks %q:\n%s", code, want, stdout)
				}
			}
		}
		stdout, _, _ := vpnctlRun(t, 0, "explain", "2203002")
		if !strings.Contains(stdout, "This error code is reported if a VPN already exists.") {
			t.Errorf("explain 2203002 lacks the seed's description:\n%s", stdout)
		}
	})

	t.Run("failed calls", func(t *testing.T) {
		holder := d.dial(t, uidRoot)
		setUpOK(t, holder.call("setUp", setUpParams, ""))
		_, stderr, code := vpnctlRun(t, 0, "--socket", d.sock, "up", "--address", "10.9.0.2/24")
		wantVpnctlError(t, stderr, 2203002, code, false)
		_, stderr, code = vpnctlRun(t, uidNobody, "--socket", d.sock, "down")
		wantVpnctlError(t, stderr, 2203001, code, false)
		_, stderr, code = vpnctlRun(t, uidNormal, "--socket", d.sock, "down")
		wantVpnctlError(t, stderr, 201, code, false)

		stdout, stderr, code := vpnctlRun(t, uidNormal, "--socket", d.sock, "status", "--json")
		var s statusResult
		if code != 0 || json.Unmarshal([]byte(stdout), &s) != nil || s.State != "connected" || s.VPN == nil || s.VPN.Owner.UID != 0 {
			t.Errorf("status --json: exit %d, %q %q", code, stdout, stderr)
		}
		if _, stderr, code := vpnctlRun(t, uidNobody, "--socket", d.sock, "status"); code != 0 {
			t.Errorf("status as a guest: exit %d %s", code, stderr)
		}
		// An ADMIN's down ends another user's VPN.
		if _, stderr, code := vpnctlRun(t, 0, "--socket", d.sock, "down"); code != 0 {
			t.Errorf("down as root: exit %d %s", code, stderr)
		}
		d.waitClean(t, "vpnctl down")
	})

	t.Run("protect --fd", func(t *testing.T) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "udp")
		defer f.Close()
		cmd := exec.Command(bin(t, "vpnctl"), "--socket", d.sock, "protect", "--fd", "3")
		cmd.ExtraFiles = []*os.File{f}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("vpnctl protect: %v: %s", err, out)
		}
		if m := markOf(t, fd); m != 0x20000 {
			t.Errorf("SO_MARK %#x after vpnctl protect, want 0x20000", m)
		}
	})

	t.Run("watch", func(t *testing.T) {
		cmd := exec.Command(bin(t, "vpnctl"), "--socket", d.sock, "watch")
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		defer func() {
			cmd.Process.Kill()
			<-done
		}()
		// Wait for watch to subscribe: poll until vpnd counts its connection.
		eventually(t, "vpnctl watch connects", func() (bool, string) {
			return d.fdCount(t) > len(d.baseFDs), "no new connection"
		})
		c := d.dial(t, uidRoot)
		// The subscription may still be in flight: retry setUp/destroy
		// until watch reports it.
		eventually(t, "vpnctl watch reports setUp and destroy", func() (bool, string) {
			setUpOK(t, c.call("setUp", setUpParams, ""))
			ok(t, c.call("destroy", "{}", ""))
			s := out.String()
			return strings.Contains(s, "setUp") && strings.Contains(s, "destroy"), s
		})
		d.waitClean(t, "destroy")
	})
}

// TestVpnctlConnectionRefused: a connection over vpnd's connection limit,
// global or per-user, gets one error line and is closed; vpnctl shows it
// as any failed call, not as "connection reset by peer".
func TestVpnctlConnectionRefused(t *testing.T) {
	t.Parallel()
	t.Run("per-user limit", func(t *testing.T) {
		d := startDaemon(t, withFlags("--max-connections-per-user", "1"))
		d.dialAs(t, uidNormal, 1) // holds uidNormal's one connection
		_, stderr, code := vpnctlRun(t, uidNormal, "--socket", d.sock, "status")
		wantVpnctlError(t, stderr, 19900002, code, true)
		if !strings.Contains(stderr, "the per-user limit is 1") {
			t.Errorf("stderr %q does not name the per-user limit", stderr)
		}
		// Another user is served.
		if out, stderr, code := vpnctlRun(t, uidNormal2, "--socket", d.sock, "status"); code != 0 {
			t.Errorf("another user: exit %d, %q %q", code, out, stderr)
		}
	})
	t.Run("global limit", func(t *testing.T) {
		d := startDaemon(t, withFlags("--max-connections", "2"))
		d.dialAs(t, uidNormal2, 2) // fill the limit
		_, stderr, code := vpnctlRun(t, uidNormal, "--socket", d.sock, "status")
		wantVpnctlError(t, stderr, 19900002, code, true)
		if !strings.Contains(stderr, "too many connections: the limit is 2") {
			t.Errorf("stderr %q does not name the limit", stderr)
		}
		// root, an ADMIN, gets in through the reserve.
		if out, stderr, code := vpnctlRun(t, uidRoot, "--socket", d.sock, "status"); code != 0 {
			t.Errorf("root: exit %d, %q %q", code, out, stderr)
		}
	})
}
