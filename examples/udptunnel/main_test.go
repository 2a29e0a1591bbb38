package main

// The app's own tests, written with vpndtest only: the same test runs on
// the kernel (as root: vpnd in a namespace of its own, the echo server on
// the peer behind a veth) and on a simulated vpnd (as any user: the echo
// server on the loopback address). VPNDTEST_BACKEND=sim picks the
// simulation where the kernel could run.

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnd/vpnd/vpndtest"
)

// waitFor bounds each wait for a line of the app's; it only stops a hung
// test.
const waitFor = 30 * time.Second

// TestTunnelCarriesTraffic: the app sets its VPN up and an echo request
// makes the round trip through its TUN and the server, twice; when the app
// is stopped, it destroys the VPN and exits 0.
func TestTunnelCarriesTraffic(t *testing.T) {
	t.Parallel()
	e := vpndtest.New(t, vpndtest.Peer())
	app := startTunnel(t, e, "-check")

	// vpnd has the app's VPN.
	c := e.Dial(t, app.uid)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.VPN == nil || st.VPN.Owner.UID != app.uid || st.VPN.Simulated != e.Simulated() {
		t.Fatalf("status %+v, want the app's VPN", st)
	}

	line := app.waitFor(t, "CHECK ")
	if !strings.HasPrefix(line, "CHECK ok: echo reply from 10.77.0.2 ") {
		t.Fatalf("the app's check: %q", line)
	}

	app.cmd.Process.Signal(syscall.SIGTERM)
	if code := app.wait(t); code != 0 {
		t.Errorf("the app exited %d on SIGTERM, want 0; stderr:\n%s", code, app.stderr.String())
	}
	st, err = c.Status(ctx)
	if err != nil || st.State != "disconnected" {
		t.Errorf("status after the app stopped: %+v, %v; want disconnected", st, err)
	}
}

// TestTunnelEndsWithVPND: when vpnd goes away, the app says so and exits
// 1, and vpnd has ended the VPN cleanly (Stop checks the namespace).
func TestTunnelEndsWithVPND(t *testing.T) {
	t.Parallel()
	e := vpndtest.New(t, vpndtest.Peer())
	app := startTunnel(t, e)
	e.Stop(t)
	if code := app.wait(t); code != 1 {
		t.Errorf("the app exited %d when vpnd stopped, want 1", code)
	}
	if s := app.stderr.String(); !strings.Contains(s, "vpnd closed the connection") && !strings.Contains(s, "the VPN ended") {
		t.Errorf("the app does not say why it stopped: %q", s)
	}
}

// startTunnel starts the echo server on the peer and the app, as the test's
// own user, against it, and waits until the app's VPN is up.
func startTunnel(t *testing.T, e *vpndtest.Env, args ...string) *proc {
	t.Helper()
	bin := vpndtest.Build(t, ".")
	echo := start(t, e.PeerCommand(bin, "-echo", netip.AddrPortFrom(e.PeerAddr(), 0).String()))
	server := strings.TrimPrefix(echo.waitFor(t, "ECHO "), "ECHO ")
	uid := uint32(os.Getuid())
	app := start(t, e.Command(uid, bin, append([]string{"-socket", e.Socket(), "-server", server}, args...)...))
	app.uid = uid
	if up := app.waitFor(t, "UP "); !strings.HasSuffix(up, " 10.77.0.2/24") {
		t.Fatalf("the app says %q", up)
	}
	return app
}

// proc is a program the test runs, with its output lines.
type proc struct {
	cmd    *exec.Cmd
	uid    uint32
	lines  chan string
	stderr strings.Builder
	done   chan struct{}
}

// start starts cmd and ends it, if it still runs, when the test ends:
// before vpndtest's checks, since this cleanup comes after New's.
func start(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, lines: make(chan string, 16), done: make(chan struct{})}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		p.wait(t)
	})
	return p
}

// waitFor returns the next line that starts with prefix.
func (p *proc) waitFor(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.done
				t.Fatalf("%s exited before printing %q...: %v\n%s", p.cmd.Args, prefix, p.cmd.ProcessState, p.stderr.String())
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("%s printed no %q... within %v", p.cmd.Args, prefix, waitFor)
		}
	}
}

// wait waits for the program to exit and returns its exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	go func() {
		for range p.lines {
		}
	}()
	select {
	case <-p.done:
	case <-time.After(waitFor):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not exit within %v; killed", p.cmd.Args, waitFor)
	}
	return p.cmd.ProcessState.ExitCode()
}
