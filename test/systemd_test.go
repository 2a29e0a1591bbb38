package test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnd/vpnd/vpndtest"
)

// sdStart starts vpnd the way systemd starts vpnd.service behind
// vpnd.socket: the listening socket that systemd made is fd 3, LISTEN_FDS=1
// and LISTEN_PID is vpnd's own pid (the shell sets it to its pid, then
// execs vpnd, which keeps the pid), and NOTIFY_SOCKET names a datagram
// socket that the test reads as systemd would.
type sdStart struct {
	sock     string        // the socket file, made by the test as systemd does
	listener *os.File      // its listening socket, passed as fd 3
	inode    uint64        // the socket file's inode, to see it never replaced
	notify   chan string   // datagrams vpnd sent to NOTIFY_SOCKET
	atReady  func(*daemon) // runs as soon as READY=1 arrives
}

// newSdStart makes the socket at dir/vpnd.sock with mode 0666 and the
// notification socket.
func newSdStart(t *testing.T, dir string) *sdStart {
	t.Helper()
	s := &sdStart{sock: filepath.Join(dir, "vpnd.sock"), notify: make(chan string, 16)}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(s.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if s.listener, err = ln.File(); err != nil {
		t.Fatal(err)
	}
	ln.Close() // the file holds the socket
	t.Cleanup(func() { s.listener.Close() })
	var st syscall.Stat_t
	if err := syscall.Lstat(s.sock, &st); err != nil {
		t.Fatal(err)
	}
	s.inode = st.Ino

	notifyPath := filepath.Join(dir, "notify")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				close(s.notify)
				return
			}
			s.notify <- string(buf[:n])
		}
	}()
	return s
}

// opt makes startDaemon start vpnd through s.
func (s *sdStart) opt() daemonOpt {
	return func(o *daemonOpts) {
		o.socket = s.sock
		o.prefix = []string{"sh", "-c", `export LISTEN_PID=$$; exec "$0" "$@"`}
		o.launch = launchOpts{
			extraFiles:  []*os.File{s.listener},
			env:         []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=vpnd.socket", "NOTIFY_SOCKET=" + filepath.Join(filepath.Dir(s.sock), "notify")},
			ready:       s.waitReady,
			socketStays: true,
		}
	}
}

// waitReady waits for READY=1 and runs atReady at once, then makes sure
// the socket serves.
func (s *sdStart) waitReady(tb testing.TB, d *daemon) {
	tb.Helper()
	select {
	case msg := <-s.notify:
		if msg != "READY=1" {
			tb.Fatalf("first notification %q, want READY=1", msg)
		}
	case <-d.exitedCh:
		tb.Fatalf("vpnd exited during start-up (%v):\n%s", d.waitErr, d.stderr.String())
	case <-time.After(hangGuard):
		tb.Fatalf("no READY=1 within %v:\n%s", hangGuard, d.stderr.String())
	}
	if s.atReady != nil {
		s.atReady(d)
	}
	if !answers(d.sock) {
		tb.Fatalf("READY=1 came, but %s does not answer a status request", d.sock)
	}
}

// systemd: socket activation and readiness. vpnd serves the socket it is
// given (a vpnd that ignored it would find the path served and exit 1),
// says READY=1 only once it serves, after the start-up sweep and with
// lockdown in force, says STOPPING=1 on SIGTERM, and leaves the socket file,
// which is systemd's, in place when it exits.
func TestSystemdSocketActivation(t *testing.T) {
	kernelOnly(t, "READY=1 only after the start-up sweep of kernel leftovers and with lockdown's rules in the kernel, neither of which a simulated vpnd has")
	t.Parallel()
	dir := newDaemonDir(t)
	s := newSdStart(t, dir)
	// Many leftovers, so that a READY=1 sent before the sweep would
	// arrive while they are still there.
	const planted = 3000
	var lockdownRules []string
	s.atReady = func(d *daemon) {
		if p := d.leftovers(t); len(p) > 0 {
			t.Errorf("at READY=1 the start-up sweep had not finished: %d leftovers, e.g. %s", len(p), p[0])
		}
		for _, r := range d.rules(t) {
			if r.Priority == d.priority+1 {
				lockdownRules = append(lockdownRules, r.String())
			}
		}
		if !answers(d.sock) {
			t.Errorf("at READY=1 the socket does not answer")
		}
	}
	d := startDaemon(t, s.opt(), beforeStart(func(t testing.TB, ns string) {
		plantLeftovers(t, ns)
		var batch strings.Builder
		for i := range planted {
			fmt.Fprintf(&batch, "route add blackhole 10.%d.%d.0/24 table %d\n", 100+i/256, i%256, defaultTable)
		}
		f := filepath.Join(dir, "batch")
		if err := os.WriteFile(f, []byte(batch.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		nsIP(t, ns, "-batch", f)
		lock := `{"enabled":true,"users":[{"uid":4001}]}`
		if err := os.WriteFile(filepath.Join(stateDirFor(t, ns), "lockdown.json"), []byte(lock), 0o600); err != nil {
			t.Fatal(err)
		}
	}))
	d.ExpectLeftovers(vpndtest.LockdownRule, vpndtest.Firewall) // lockdown stays on
	if len(lockdownRules) != 2 {
		t.Errorf("at READY=1 lockdown's rules were %q, want one per family", lockdownRules)
	}
	if !d.logContains(`"socket_activated":true`, `"socket":"`+s.sock+`"`) {
		t.Errorf("vpnd does not say that it serves the activated socket:\n%s", d.stderr.String())
	}

	// setUp, protect and destroy through the activated socket, from a
	// NORMAL user.
	c := d.dial(t, uidNormal)
	setUpOK(t, c.call("setUp", setUpParams, ""))
	ok(t, c.call("protect", "{}", "udp"))
	if d.link(t, defaultIfname) == nil {
		t.Errorf("no %s after setUp", defaultIfname)
	}
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
	c.closeConn()

	select {
	case msg := <-s.notify:
		t.Errorf("notification %q while vpnd serves", msg)
	default:
	}
	d.stop(t) // SIGTERM; exit 0
	var after []string
	for msg := range collectFor(s.notify, 200*time.Millisecond) {
		after = append(after, msg)
	}
	if len(after) != 1 || after[0] != "STOPPING=1" {
		t.Errorf("notifications on SIGTERM: %q, want [STOPPING=1]", after)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(s.sock, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK || st.Ino != s.inode {
		t.Errorf("the socket file after vpnd exited: %v (inode %d, was %d), want systemd's socket untouched", err, st.Ino, s.inode)
	}
	if st.Mode&0o777 != 0o666 {
		t.Errorf("the socket file's mode became %04o", st.Mode&0o777)
	}
}

// collectFor yields what ch delivers until it has been quiet for d.
func collectFor(ch <-chan string, d time.Duration) <-chan string {
	out := make(chan string)
	go func() {
		defer close(out)
		for {
			select {
			case msg, ok := <-ch:
				if !ok {
					return
				}
				out <- msg
			case <-time.After(d):
				return
			}
		}
	}()
	return out
}
