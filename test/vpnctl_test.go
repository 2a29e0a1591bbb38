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

// runProgram runs path with args to completion and returns stdout, stderr
// and the exit code.
func runProgram(t testing.TB, path string, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Run()
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

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

// wantVpnctlError checks vpnctl's failure format on stderr:
// "vpnctl: CODE MESSAGE (detail)" and a non-zero exit.
func wantVpnctlError(t testing.TB, stderr string, code int, exit int, detailRequired bool) {
	t.Helper()
	if exit == 0 {
		t.Errorf("vpnctl exited 0 on a failed call; stderr %q", stderr)
	}
	msg := regexp.QuoteMeta(documentedMessages[code])
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

// vpnctl.
func TestVpnctl(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)

	t.Run("up holds the VPN until SIGINT", func(t *testing.T) {
		cmd := exec.Command(bin(t, "vpnctl"), "--socket", d.sock, "up", "--address", "10.8.0.2/24", "--route", "198.51.100.0/24")
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		done := startBackground(t, cmd)
		eventually(t, "vpnctl up brings vpn-tun up", func() (bool, string) {
			select {
			case <-done:
				t.Fatalf("vpnctl up exited: %s", out.String())
			default:
			}
			return d.hasVPN(t), "no vpn-tun or no route yet"
		})
		// vpnd has the VPN before vpnctl has read the answer; a signal
		// in between is one during setUp ("interrupted", exit 1). vpnctl
		// says when it holds the VPN.
		eventually(t, "vpnctl up says it holds the VPN", func() (bool, string) {
			return strings.Contains(out.String(), "VPN is up; interrupt to end it"), out.String()
		})
		d.wantTUNLink(t, 1500)
		if !d.sim {
			if got := d.globalAddrs(t); !equalStrings(got, []string{"10.8.0.2/24"}) {
				t.Errorf("addresses %v", got)
			}
			if got := d.routeStrings(t); !equalStrings(got, sorted("ipv4 10.8.0.0/24 dev vpn-tun", "ipv4 198.51.100.0/24 dev vpn-tun", v6Unreachable)) {
				t.Errorf("routes %v", got)
			}
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
		sub := d.dial(t, uidRoot)
		ok(t, sub.call("subscribe", "{}", ""))
		stdout, stderr, code := vpnctlRun(t, 0, "--socket", d.sock, "up", "--address", "10.8.0.2/24", "--",
			"sh", "-c", `echo "fd=$VPN_TUN_FD"; readlink /proc/self/fd/3; exit 3`)
		if code != 3 {
			t.Errorf("exit %d, want CMD's 3: %s %s", code, stdout, stderr)
		}
		// stdout is CMD's alone; the VpnInfo is on stderr.
		tunPath := "/dev/net/tun"
		if d.sim {
			tunPath = "socket:[" // one end of a socket pair
		}
		if !strings.HasPrefix(stdout, "fd=3\n"+tunPath) || strings.Count(stdout, "\n") != 2 {
			t.Errorf("stdout %q: want CMD's output alone, with VPN_TUN_FD=3 and fd 3 on %s", stdout, tunPath)
		}
		if !strings.Contains(stderr, `"interface": "vpn-tun"`) {
			t.Errorf("stderr %q lacks the VpnInfo", stderr)
		}
		// vpnctl ends the VPN itself once CMD exits.
		for _, want := range []string{"setUp", "destroy"} {
			if ev := sub.stateChange(); ev.Reason != want {
				t.Errorf("vpnStateChanged reason %q, want %q", ev.Reason, want)
			}
		}
		d.waitClean(t, "CMD exited")

		stdout, stderr, code = vpnctlRun(t, 0, "--socket", d.sock, "up", "--quiet", "--address", "10.8.0.2/24", "--", "echo", "hi")
		if code != 0 || stdout != "hi\n" || stderr != "" {
			t.Errorf("--quiet: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		d.waitClean(t, "CMD exited")
	})

	t.Run("status shows gateways and covered uids", func(t *testing.T) {
		// Status runs as CMD, while up holds the VPN.
		stdout, stderr, code := vpnctlRun(t, 0, "--socket", d.sock, "up", "--address", "10.8.0.2/24",
			"--route", "198.51.100.0/24,via=10.8.0.1", "--route", "203.0.113.0/24", "--trusted", "4000", "--trusted", "4001", "--",
			"sh", "-c", `"$0" --socket "$1" status && "$0" --socket "$1" status --json`, bin(t, "vpnctl"), d.sock)
		if code != 0 {
			t.Fatalf("exit %d: %s %s", code, stdout, stderr)
		}
		for _, want := range []string{
			"state:           connected\n",
			"route gateways:  198.51.100.0/24 via 10.8.0.1\n",
			"covered uids:    4000-4001\n",
			`"routeGateways": {` + "\n" + `      "198.51.100.0/24": "10.8.0.1"` + "\n    },",
			`"coveredUids": [` + "\n" + `      "4000-4001"`,
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("status lacks %q:\n%s", want, stdout)
			}
		}
		d.waitClean(t, "CMD exited")
	})

	t.Run("lockdown on, status, off", func(t *testing.T) {
		if _, stderr, code := vpnctlRun(t, 0, "--socket", d.sock, "lockdown", "on", "4000", "4001"); code != 0 {
			t.Fatalf("lockdown on: exit %d %s", code, stderr)
		}
		if !d.sim {
			if got := d.lockdownRules(t); len(got) == 0 {
				t.Errorf("no lockdown rules after lockdown on")
			}
		}
		if stdout, _, code := vpnctlRun(t, uidNormal, "--socket", d.sock, "lockdown", "status"); code != 0 || stdout != "on for 4000 4001\n" {
			t.Errorf("lockdown status: exit %d %q", code, stdout)
		}
		if stdout, _, _ := vpnctlRun(t, uidNormal, "--socket", d.sock, "status"); !strings.Contains(stdout, "lockdown:        on for 4000 4001\n") {
			t.Errorf("status:\n%s", stdout)
		}
		_, stderr, code := vpnctlRun(t, uidNormal, "--socket", d.sock, "lockdown", "off")
		wantVpnctlError(t, stderr, 201, code, true)
		if _, stderr, code := vpnctlRun(t, 0, "--socket", d.sock, "lockdown", "off"); code != 0 {
			t.Fatalf("lockdown off: exit %d %s", code, stderr)
		}
		if !d.sim {
			if got := d.lockdownRules(t); len(got) != 0 {
				t.Errorf("lockdown rules %v after lockdown off", got)
			}
		}
		if stdout, _, code := vpnctlRun(t, 0, "--socket", d.sock, "lockdown", "status"); code != 0 || stdout != "off\n" {
			t.Errorf("lockdown status: exit %d %q", code, stdout)
		}
	})

	t.Run("explain prints OpenHarmony's description", func(t *testing.T) {
		for code, seed := range seedText {
			stdout, stderr, exit := vpnctlRun(t, 0, "explain", itoa(code))
			if exit != 0 {
				t.Errorf("explain %d: exit %d %s", code, exit, stderr)
			}
			text := strings.ReplaceAll(stdout, "**", "")
			for _, want := range []string{seed.name, documentedMessages[code], seed.cause, seed.solution} {
				if !strings.Contains(text, want) {
					t.Errorf("explain %d output lacks %q:\n%s", code, want, stdout)
				}
			}
		}
		stdout, _, _ := vpnctlRun(t, 0, "explain", "2203002")
		if !strings.Contains(stdout, "This error code is reported if a VPN already exists.") {
			t.Errorf("explain 2203002 lacks OpenHarmony's description:\n%s", stdout)
		}
		// And the cases in which vpnd answers it.
		stdout, _, _ = vpnctlRun(t, 0, "explain", "19900002")
		for _, want := range []string{"too many connections", "/dev/net/tun", "in use by someone else", "user database"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("explain 19900002 lacks %q:\n%s", want, stdout)
			}
		}
		if stdout, _, code := vpnctlRun(t, 0, "explain", "-32602"); code != 0 || !strings.Contains(stdout, "vpnd never sends -32602") {
			t.Errorf("explain -32602: exit %d\n%s", code, stdout)
		}
	})

	t.Run("failed calls", func(t *testing.T) {
		holder := d.dial(t, uidRoot)
		setUpOK(t, holder.call("setUp", setUpParams, ""))
		_, stderr, code := vpnctlRun(t, 0, "--socket", d.sock, "up", "--address", "10.9.0.2/24")
		wantVpnctlError(t, stderr, 2203002, code, false)
		if !strings.HasSuffix(stderr, "\n  see: vpnctl explain 2203002\n") {
			t.Errorf("up's refusal does not say which explain to run: %q", stderr)
		}
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

	t.Run("vpnd not there", func(t *testing.T) {
		missing := d.sock + ".missing"
		_, stderr, code := vpnctlRun(t, 0, "--socket", missing, "status")
		if code != 1 || !strings.Contains(stderr, "There is no socket at "+missing) || !strings.Contains(stderr, "VPND_SOCKET") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})

	t.Run("version, completion", func(t *testing.T) {
		for _, b := range []string{"vpnctl", "vpnd"} {
			stdout, stderr, code := runProgram(t, bin(t, b), "--version")
			if code != 0 || !strings.HasPrefix(stdout, b+" version ") {
				t.Errorf("%s --version: exit %d, %q %q", b, code, stdout, stderr)
			}
		}
		if stdout, _, code := vpnctlRun(t, 0, "completion", "bash"); code != 0 || !strings.Contains(stdout, "__start_vpnctl") {
			t.Errorf("completion bash: exit %d", code)
		}
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
		if m := markOf(t, fd); m != d.protectedMark(0) {
			t.Errorf("SO_MARK %#x after vpnctl protect, want %#x", m, d.protectedMark(0))
		}
	})

	t.Run("watch", func(t *testing.T) {
		cmd := exec.Command(bin(t, "vpnctl"), "--socket", d.sock, "watch")
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		startBackground(t, cmd)
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
