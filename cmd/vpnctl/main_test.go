package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/rpc"
	"github.com/vpnd/vpnd/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// vpnctl runs the command line in-process and returns the exit status,
// stdout and stderr.
func vpnctl(t *testing.T, ctx context.Context, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(ctx, args, stdio{strings.NewReader(stdin), &out, &errb}, func(string) string { return "" })
	return code, out.String(), errb.String()
}

// upParams parses "up" flags and returns the setUp params they produce.
func upParams(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	g := &globals{io: stdio{in: strings.NewReader(stdin)}}
	fs, _ := newFlagSet(upCommand, g)
	var o upOptions
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	b, err := o.params(set, g.io.in)
	return string(b), err
}

func TestUpFlagsToVpnConfig(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"minimal", []string{"--address", "10.8.0.2/24"},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24}]}`},
		{"every field", []string{
			"--address", "10.8.0.2/24", "--address", "fd00::2/64",
			"--route", "10.0.0.0/8", "--route", "::/0", "--exclude", "10.1.0.0/16",
			"--dns", "10.8.0.1", "--dns", "fd00::1", "--search-domain", "corp.example",
			"--mtu", "1400", "--ipv4", "--ipv6=false", "--blocking", "--metered",
			"--trusted", "alice", "--trusted", "1001", "--blocked", "bob"},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24},` +
				`{"address":{"address":"fd00::2","family":2},"prefixLength":64}],` +
				`"routes":[{"destination":{"address":{"address":"10.0.0.0","family":1},"prefixLength":8}},` +
				`{"destination":{"address":{"address":"::","family":2},"prefixLength":0}},` +
				`{"destination":{"address":{"address":"10.1.0.0","family":1},"prefixLength":16},"isExcludedRoute":true}],` +
				`"dnsAddresses":["10.8.0.1","fd00::1"],"searchDomains":["corp.example"],"mtu":1400,` +
				`"isIPv4Accepted":true,"isIPv6Accepted":false,"isBlocking":true,"isMetered":true,` +
				`"trustedApplications":["alice","1001"],"blockedApplications":["bob"]}`},
		{"legacy is sent for vpnd to refuse", []string{"--address", "10.8.0.2/24", "--legacy"},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24}],"isLegacy":true}`},
		{"tri-state false only when given", []string{"--address", "10.8.0.2/32", "--ipv4=false"},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":32}],"isIPv4Accepted":false}`},
		{"a route with a gateway", []string{"--address", "10.8.0.2/24", "--route", "10.0.0.0/8,via=10.8.0.1"},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24}],` +
				`"routes":[{"destination":{"address":{"address":"10.0.0.0","family":1},"prefixLength":8},"gateway":{"address":"10.8.0.1"}}]}`},
		{"host bits of a route are vpnd's to mask", []string{"--address", "10.8.0.2/24", "--route", "10.8.0.9/24"},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24}],` +
				`"routes":[{"destination":{"address":{"address":"10.8.0.9","family":1},"prefixLength":24}}]}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := upParams(t, "", tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestUpConfigFile(t *testing.T) {
	raw := "{\n  \"addresses\": [\"10.8.0.2/24\"],\n  \"routes\": [{\"destination\": {\"address\": {\"address\": \"0.0.0.0\"}, \"prefixLength\": 0}}],\n  \"futureField\": 1\n}\n"
	want := `{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"0.0.0.0"},"prefixLength":0}}],"futureField":1}`
	path := filepath.Join(t.TempDir(), "vpn.json")
	os.WriteFile(path, []byte(raw), 0o600)
	if got, err := upParams(t, "", "--config", path); err != nil || got != want {
		t.Fatalf("file: %s %v", got, err)
	}
	if got, err := upParams(t, raw, "--config", "-"); err != nil || got != want {
		t.Fatalf("stdin: %s %v", got, err)
	}
}

func TestUpUsageErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"addresses":`), 0o600)
	cases := [][]string{
		{},
		{"--address", "10.8.0.2"},
		{"--address", "bogus/24"},
		{"--address", "10.8.0.2/24", "--route", "10.0.0.0"},
		{"--address", "10.8.0.2/24", "--exclude", "x"},
		{"--address", "10.8.0.2/24", "--route", "10.0.0.0/8,via=nowhere"},
		{"--address", "10.8.0.2/24", "--exclude", "10.1.0.0/16,via=10.8.0.1"},
		{"--address", "10.8.0.2/24", "--mtu", "0"},
		{"--config", bad},
		{"--config", filepath.Join(t.TempDir(), "missing.json")},
		{"--config", bad, "--metered"},
	}
	for _, args := range cases {
		if got, err := upParams(t, "", args...); err == nil {
			t.Errorf("%v: accepted, sent %s", args, got)
		}
	}
	for _, args := range [][]string{
		{"up", "--address", "10.8.0.2/24", "stray"},
		{"up", "--ipv4=maybe", "--address", "10.8.0.2/24"},
		{"up"},
		{"up", "--config", bad},
	} {
		code, out, stderr := vpnctl(t, context.Background(), "", args...)
		if code != exitUsage || out != "" || !strings.Contains(stderr, "vpnctl up: ") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestExplain(t *testing.T) {
	for _, code := range errs.Codes() {
		e, _ := errs.Lookup(code)
		status, out, stderr := vpnctl(t, context.Background(), "", "explain", fmt.Sprint(int(code)))
		if status != 0 || stderr != "" {
			t.Fatalf("%d: exit %d %s", code, status, stderr)
		}
		for _, want := range []string{fmt.Sprintf("%d %s\n", int(code), e.Name), e.Message, e.Description, e.Cause, e.Solution} {
			if !strings.Contains(out, want) {
				t.Errorf("%d: output lacks %q:\n%s", code, want, out)
			}
		}
	}
	if code, _, stderr := vpnctl(t, context.Background(), "", "explain", "42"); code != exitFailure || stderr != "vpnctl: unknown error code 42\n" {
		t.Errorf("unknown code: %d %q", code, stderr)
	}
	for _, args := range [][]string{{"explain"}, {"explain", "x"}, {"explain", "1", "2"}} {
		if code, _, _ := vpnctl(t, context.Background(), "", args...); code != exitUsage {
			t.Errorf("%v: exit %d", args, code)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}} {
			code, out, stderr := vpnctl(t, context.Background(), "", args...)
			if code != 0 || stderr != "" || !strings.HasPrefix(out, "Usage: vpnctl "+c.name+" ") {
				t.Errorf("%v: exit %d, out %q, err %q", args, code, out, stderr)
			}
		}
	}
	code, out, _ := vpnctl(t, context.Background(), "", "--help")
	if code != 0 || !strings.Contains(out, "explain") {
		t.Errorf("--help: %d %q", code, out)
	}
	if code, _, _ := vpnctl(t, context.Background(), ""); code != exitUsage {
		t.Errorf("no command: exit %d", code)
	}
	if code, _, _ := vpnctl(t, context.Background(), "", "frobnicate"); code != exitUsage {
		t.Errorf("unknown command: exit %d", code)
	}
	if code, _, _ := vpnctl(t, context.Background(), "", "protect"); code != exitUsage {
		t.Errorf("protect without --fd: exit %d", code)
	}
}

func TestFormatError(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{errs.New(errs.CodePermission, "uid 1000 does not own the VPN"), "vpnctl: 201 Permission denied. (uid 1000 does not own the VPN)"},
		{&errs.Error{Code: errs.CodeVPNExists}, "vpnctl: 2203002 VPN already exists."},
		{fmt.Errorf("wrapped: %w", errs.New(errs.CodeInvalidParam, "mtu")), "vpnctl: 19900001 Invalid parameter value. (mtu)"},
		{errors.New("connection to vpnd lost: EOF"), "vpnctl: connection to vpnd lost: EOF"},
	}
	for _, tc := range cases {
		if got := formatError(tc.err); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

// fakeDaemon listens on a temporary socket and answers with handle.
type fakeDaemon struct {
	path   string
	l      *net.UnixListener
	wg     sync.WaitGroup
	mu     sync.Mutex
	calls  []string
	closed bool
	conns  []*rpc.Conn
	handle func(c *rpc.Conn, req protocol.Request, files []*os.File) (any, []*os.File, error)
}

func newFakeDaemon(t *testing.T, handle func(c *rpc.Conn, req protocol.Request, files []*os.File) (any, []*os.File, error)) *fakeDaemon {
	d := &fakeDaemon{path: filepath.Join(t.TempDir(), "vpnd.sock"), handle: handle}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: d.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	d.l = l
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			uc, err := l.AcceptUnix()
			if err != nil {
				return
			}
			c := rpc.NewConn(uc)
			d.mu.Lock()
			if d.closed {
				c.Close() // accepted just as close ran
			}
			d.conns = append(d.conns, c)
			d.mu.Unlock()
			d.wg.Add(1)
			go d.serve(c)
		}
	}()
	t.Cleanup(d.close)
	return d
}

func (d *fakeDaemon) serve(c *rpc.Conn) {
	defer d.wg.Done()
	defer c.Close()
	for {
		m, err := c.ReadMessage()
		if err != nil {
			return
		}
		var req protocol.Request
		json.Unmarshal(m.Line, &req)
		d.mu.Lock()
		d.calls = append(d.calls, req.Method)
		d.mu.Unlock()
		res, files, err := d.handle(c, req, m.Files)
		for _, f := range m.Files {
			f.Close()
		}
		resp := protocol.Response{JSONRPC: "2.0", ID: req.ID, FDs: len(files)}
		if err != nil {
			resp.Error = protocol.NewErrorObject(err)
		} else {
			resp.Result, _ = json.Marshal(res)
		}
		b, _ := json.Marshal(resp)
		c.WriteMessage(b, files...)
		for _, f := range files {
			f.Close()
		}
	}
}

func (d *fakeDaemon) close() {
	d.l.Close()
	d.mu.Lock()
	d.closed = true
	for _, c := range d.conns {
		c.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

func (d *fakeDaemon) methods() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

var testInfo = protocol.VpnInfo{
	Interface: "vpn-tun", Index: 9, MTU: 1500, Addresses: []string{"10.8.0.2/24"}, Routes: []string{"0.0.0.0/0"},
	IsIPv4Accepted: true, Owner: protocol.Owner{UID: 1000, PID: 42, User: "alice"}, Since: "2024-01-02T03:04:05Z",
}

func TestStatus(t *testing.T) {
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		return protocol.StatusResult{State: "connected", VPN: &testInfo}, nil, nil
	})
	code, out, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "status")
	if code != 0 || stderr != "" || !strings.Contains(out, "state:           connected\n") ||
		!strings.Contains(out, "owner:           alice (uid 1000, pid 42)") {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, _ = vpnctl(t, context.Background(), "", "status", "--socket", d.path, "--json")
	var st protocol.StatusResult
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.VPN == nil || st.VPN.Index != 9 {
		t.Fatalf("--json: exit %d %s", code, out)
	}
}

func TestFailedCallMessage(t *testing.T) {
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		return nil, nil, errs.New(errs.CodePermission, "uid 1001 does not own the VPN")
	})
	code, out, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "down")
	if code != 1 || out != "" || stderr != "vpnctl: 201 Permission denied. (uid 1001 does not own the VPN)\n" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = vpnctl(t, context.Background(), "", "--socket", filepath.Join(t.TempDir(), "none"), "down")
	if code != 1 || !strings.HasPrefix(stderr, "vpnctl: connect to vpnd: ") {
		t.Fatalf("no daemon: exit %d, stderr %q", code, stderr)
	}
}

func TestProtectCommand(t *testing.T) {
	var got atomic.Uint64
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, files []*os.File) (any, []*os.File, error) {
		if req.Method != "protect" || req.FDs != 1 || len(files) != 1 {
			return nil, nil, errs.New(errs.CodeInvalidFD, "no fd")
		}
		fi, _ := files[0].Stat()
		got.Store(fi.Sys().(*syscall.Stat_t).Ino)
		return struct{}{}, nil, nil
	})
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	rc, _ := w.SyscallConn()
	var fd int
	rc.Control(func(u uintptr) { fd = int(u) })
	code, _, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "protect", "--fd", fmt.Sprint(fd))
	fi, _ := w.Stat()
	if code != 0 || got.Load() != fi.Sys().(*syscall.Stat_t).Ino {
		t.Fatalf("exit %d %s", code, stderr)
	}
}

// up -- CMD: CMD sees the TUN as fd 3 and VPN_TUN_FD=3, vpnctl destroys the
// VPN after CMD exits, exits with CMD's status and keeps no copy of the fd.
func TestUpWithCommand(t *testing.T) {
	readEnds := make(chan *os.File, 3)
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		if req.Method == "setUp" {
			r, w, err := os.Pipe() // stands in for the TUN device
			if err != nil {
				t.Error(err)
			}
			readEnds <- r
			return testInfo, []*os.File{w}, nil // closed once sent
		}
		return struct{}{}, nil, nil
	})
	script := `test "$VPN_TUN_FD" = 3 || exit 90; echo hello >&3 || exit 91; exit 7`
	code, out, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "up", "--address", "10.8.0.2/24", "--", "sh", "-c", script)
	if code != 7 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var info protocol.VpnInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.Interface != "vpn-tun" {
		t.Fatalf("stdout %q", out)
	}
	if m := d.methods(); len(m) != 2 || m[0] != "setUp" || m[1] != "destroy" {
		t.Fatalf("calls %v", m)
	}
	r := <-readEnds
	defer r.Close()
	r.SetReadDeadline(time.Now().Add(2 * time.Second))
	got, err := io.ReadAll(r)
	if string(got) != "hello\n" || err != nil {
		t.Fatalf("TUN stand-in: %q %v (a copy of the fd is still open?)", got, err)
	}

	code, _, _ = vpnctl(t, context.Background(), "", "--socket", d.path, "up", "--address", "10.8.0.2/24", "--", "sh", "-c", "kill -TERM $$")
	if code != 128+int(syscall.SIGTERM) {
		t.Errorf("signalled CMD: exit %d", code)
	}
	code, _, _ = vpnctl(t, context.Background(), "", "--socket", d.path, "up", "--address", "10.8.0.2/24", "--", "/nonexistent/cmd")
	if code != 127 {
		t.Errorf("missing CMD: exit %d", code)
	}
	d.close() // orders the handler's sends before the close below
	close(readEnds)
	for r := range readEnds {
		r.Close()
	}
}

func TestUpSetUpFails(t *testing.T) {
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		return nil, nil, errs.New(errs.CodeVPNExists, "")
	})
	code, _, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "up", "--address", "10.8.0.2/24")
	if code != 1 || stderr != "vpnctl: 2203002 VPN already exists.\n" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// hold ends the VPN on a signal, and fails when the VPN or vpnd goes away.
func TestHold(t *testing.T) {
	newClient := func(d *fakeDaemon) *client.Client {
		cl, err := client.Dial(context.Background(), d.path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	ok := func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		return struct{}{}, nil, nil
	}
	g := &globals{io: stdio{out: io.Discard, err: &bytes.Buffer{}}}

	d := newFakeDaemon(t, ok)
	sigc := make(chan os.Signal, 1)
	sigc <- syscall.SIGINT
	if code := hold(g, newClient(d), nil, sigc); code != 0 || len(d.methods()) != 1 || d.methods()[0] != "destroy" {
		t.Errorf("signal: exit %d, calls %v", code, d.methods())
	}

	events := make(chan protocol.StateChanged, 1)
	events <- protocol.StateChanged{IsConnected: false, Reason: "linkGone"}
	if code := hold(g, newClient(d), events, nil); code != 1 {
		t.Errorf("VPN ended: exit %d", code)
	}

	cl := newClient(d)
	d.close()
	if code := hold(g, cl, nil, nil); code != 1 {
		t.Errorf("vpnd gone: exit %d", code)
	}
}

func TestWatch(t *testing.T) {
	d := newFakeDaemon(t, func(c *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		go func() {
			time.Sleep(10 * time.Millisecond) // after the response
			b, _ := json.Marshal(protocol.Response{JSONRPC: "2.0", Method: protocol.MethodStateChanged,
				Params: json.RawMessage(`{"isConnected":true,"interface":"vpn-tun","reason":"setUp","vpn":null}`)})
			c.WriteMessage(b)
		}()
		return struct{}{}, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan int)
	pr, pw := io.Pipe()
	go func() {
		done <- run(ctx, []string{"--socket", d.path, "watch"}, stdio{strings.NewReader(""), pw, &out}, func(string) string { return "" })
		pw.Close()
	}()
	line, _ := readLine(pr)
	cancel()
	go io.Copy(io.Discard, pr)
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	if line != `{"isConnected":true,"interface":"vpn-tun","reason":"setUp","vpn":null}` {
		t.Fatalf("line %q", line)
	}
}

func readLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := r.Read(one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
}

// openPTY returns the terminal end of a new pseudo-terminal.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	var n uint32
	var ioErr error
	rc, _ := ptmx.SyscallConn()
	rc.Control(func(fd uintptr) {
		if ioErr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ioErr == nil {
			n, ioErr = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN)
		}
	})
	if ioErr != nil {
		t.Fatal(ioErr)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	return pts
}

// TestForwardInterrupt: a SIGINT to vpnctl reaches CMD once. At a
// terminal, whose Ctrl-C reaches CMD directly, vpnctl waits
// interruptGrace before forwarding it; otherwise it forwards at once.
func TestForwardInterrupt(t *testing.T) {
	if isTerminal(strings.NewReader("")) {
		t.Fatal("a strings.Reader is a terminal?")
	}
	pts := openPTY(t)
	if !isTerminal(pts) {
		t.Fatal("a pty is not a terminal")
	}
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		return struct{}{}, nil, nil
	})
	for _, tc := range []struct {
		name    string
		in      io.Reader
		minWait time.Duration
	}{{"not a terminal", strings.NewReader(""), 0}, {"terminal", pts, interruptGrace}} {
		t.Run(tc.name, func(t *testing.T) {
			cl, err := client.Dial(context.Background(), d.path)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			tun, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			mark := filepath.Join(t.TempDir(), "ints")
			ready := filepath.Join(t.TempDir(), "ready")
			// CMD counts the SIGINTs it gets and exits on the first.
			script := fmt.Sprintf(`trap 'echo int >> %s; exit 3' INT; touch %s; while :; do sleep 0.01; done`, mark, ready)
			sigc := make(chan os.Signal, 1)
			var sent time.Time
			go func() {
				for {
					if _, err := os.Stat(ready); err == nil {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				sent = time.Now()
				sigc <- syscall.SIGINT
			}()
			g := &globals{io: stdio{in: tc.in, out: io.Discard, err: io.Discard}}
			code := runWithTUN(g, cl, tun, []string{"sh", "-c", script}, sigc)
			waited := time.Since(sent)
			got, _ := os.ReadFile(mark)
			if code != 3 || string(got) != "int\n" {
				t.Fatalf("exit %d, CMD saw %q; want exit 3 after exactly one SIGINT", code, got)
			}
			if waited < tc.minWait {
				t.Fatalf("SIGINT forwarded after %v, want at least %v", waited, tc.minWait)
			}
		})
	}
}
