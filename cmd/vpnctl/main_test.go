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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/rpc"
	"github.com/vpnd/vpnd/internal/rpc/rpctest"
	"github.com/vpnd/vpnd/internal/version"
	"github.com/vpnd/vpnd/protocol"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" {
		code = everyCommandRan()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: leaked goroutines: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// ran holds the commands the tests ran for real (not for --help).
var ran sync.Map

// noteRun records which command args run.
func noteRun(args []string) {
	for _, a := range args {
		if a == "--help" || a == "-h" || a == "__complete" {
			return
		}
	}
	if len(args) > 0 && args[0] == "help" {
		return
	}
	root := newRootCommand(&globals{io: stdio{in: strings.NewReader(""), out: io.Discard, err: io.Discard}})
	root.InitDefaultCompletionCmd()
	if c, _, err := root.Find(args); err == nil {
		ran.Store(c.CommandPath(), true)
	}
}

// everyCommandRan fails the run unless each command of --help was run by
// some test.
func everyCommandRan() int {
	code := 0
	for _, c := range commandTree() {
		if _, ok := ran.Load(c.CommandPath()); !ok && c.Runnable() {
			fmt.Fprintf(os.Stderr, "FAIL: no test runs %q\n", c.CommandPath())
			code = 1
		}
	}
	return code
}

// vpnctl runs the command line in-process and returns the exit status,
// stdout and stderr.
func vpnctl(t *testing.T, ctx context.Context, stdin string, args ...string) (int, string, string) {
	t.Helper()
	noteRun(args)
	var out, errb bytes.Buffer
	code := run(ctx, args, stdio{strings.NewReader(stdin), &out, &errb}, func(string) string { return "" })
	return code, out.String(), errb.String()
}

// upParams parses "up" flags and returns the setUp params they produce.
func upParams(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	fs := pflag.NewFlagSet("up", pflag.ContinueOnError)
	var o upOptions
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { set[f.Name] = true })
	b, err := o.params(set, strings.NewReader(stdin))
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
			"--mtu", "1400", "--ipv4", "--ipv6=false", "--blocking", "--metered", "--allow-family-bypass", "--offload",
			"--trusted", "alice", "--trusted", "1001", "--blocked", "bob"},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24},` +
				`{"address":{"address":"fd00::2","family":2},"prefixLength":64}],` +
				`"routes":[{"destination":{"address":{"address":"10.0.0.0","family":1},"prefixLength":8}},` +
				`{"destination":{"address":{"address":"::","family":2},"prefixLength":0}},` +
				`{"destination":{"address":{"address":"10.1.0.0","family":1},"prefixLength":16},"isExcludedRoute":true}],` +
				`"dnsAddresses":["10.8.0.1","fd00::1"],"searchDomains":["corp.example"],"mtu":1400,` +
				`"isIPv4Accepted":true,"isIPv6Accepted":false,"isBlocking":true,"isMetered":true,"allowFamilyBypass":true,"offload":true,` +
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
		want := []string{fmt.Sprintf("%d %s\n", int(code), e.Name), e.Message, e.Description, e.Cause, e.Solution}
		// Then each case in which vpnd answers the code.
		for _, c := range errs.Causes(code) {
			want = append(want, c.Text, c.Detail, c.Fix)
			want = append(want, c.Cases...)
		}
		for _, want := range want {
			if !strings.Contains(out, want) {
				t.Errorf("%d: output lacks %q:\n%s", code, want, out)
			}
		}
	}
	// An unknown code: the known ones, those vpnd never sends included.
	code, _, stderr := vpnctl(t, context.Background(), "", "explain", "42")
	if code != exitFailure || !strings.HasPrefix(stderr, "vpnctl: unknown error code 42; the codes vpnd answers are:\n") {
		t.Errorf("unknown code: %d %q", code, stderr)
	}
	for _, c := range append(errs.Codes(), -32602, -32603) {
		if !strings.Contains(stderr, fmt.Sprintf("\n  %-9d ", int(c))) {
			t.Errorf("unknown code: the list lacks %d:\n%s", c, stderr)
		}
	}
	// JSON-RPC's codes that vpnd never sends: what it sends instead.
	for _, c := range []string{"-32602", "-32603"} {
		code, out, _ := vpnctl(t, context.Background(), "", "explain", c)
		if code != 0 || !strings.Contains(out, "vpnd never sends "+c) {
			t.Errorf("explain %s: exit %d\n%s", c, code, out)
		}
	}
	if code, out, _ := vpnctl(t, context.Background(), "", "explain", "--", "-32700"); code != 0 || !strings.HasPrefix(out, "-32700 Parse Error\n") {
		t.Errorf("explain -- -32700: exit %d %q", code, out)
	}
	for _, args := range [][]string{{"explain"}, {"explain", "x"}, {"explain", "1", "2"}, {"explain", "-x"}} {
		if code, _, _ := vpnctl(t, context.Background(), "", args...); code != exitUsage {
			t.Errorf("%v: exit %d", args, code)
		}
	}
}

// commandTree lists every command a user can run or ask help for.
func commandTree() []*cobra.Command {
	root := newRootCommand(&globals{io: stdio{in: strings.NewReader(""), out: io.Discard, err: io.Discard}})
	root.InitDefaultCompletionCmd()
	var all []*cobra.Command
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		all = append(all, c)
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				walk(sub)
			}
		}
	}
	walk(root)
	return all
}

// args returns the command line that names c, without "vpnctl".
func args(c *cobra.Command) []string { return strings.Fields(c.CommandPath())[1:] }

func TestHelp(t *testing.T) {
	tree := commandTree()
	if len(tree) < 13 {
		t.Fatalf("only %d commands", len(tree))
	}
	for _, c := range tree {
		path := c.CommandPath()
		for _, a := range [][]string{append(args(c), "--help"), append(args(c), "-h"), append([]string{"help"}, args(c)...)} {
			code, out, stderr := vpnctl(t, context.Background(), "", a...)
			if code != 0 || stderr != "" || !strings.HasPrefix(out, "Usage: "+path+" ") && !strings.HasPrefix(out, "Usage: "+path+"\n") {
				t.Errorf("%v: exit %d, out %q, err %q", a, code, out, stderr)
			}
			// Flags with two dashes, and their placeholders.
			if strings.Contains(out, "  -socket") || c.Name() == "up" && !strings.Contains(out, "--route CIDR[,via=GATEWAY]") {
				t.Errorf("%v: flags not shown as --name ARG:\n%s", a, out)
			}
		}
	}
	code, out, _ := vpnctl(t, context.Background(), "", "--help")
	for _, want := range []string{"\n  up ", "\n  down ", "\n  status ", "\n  watch ", "\n  protect ", "\n  lockdown ", "\n  explain ", "\n  completion ", "--socket PATH", "--version"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("--help: exit %d, lacks %q:\n%s", code, want, out)
		}
	}
	if strings.Contains(out, " man ") {
		t.Errorf("--help shows the hidden man command:\n%s", out)
	}
	for _, a := range [][]string{{}, {"lockdown"}} {
		if code, out, stderr := vpnctl(t, context.Background(), "", a...); code != exitUsage || out != "" || !strings.HasPrefix(stderr, "Usage: ") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", a, code, out, stderr)
		}
	}
	// A shell cobra cannot write a script for is a usage error, and so is
	// none at all; nothing goes to stdout, where a script was expected.
	if code, out, stderr := vpnctl(t, context.Background(), "", "completion", "tcsh"); code != exitUsage || out != "" ||
		!strings.HasPrefix(stderr, `vpnctl completion: unknown shell "tcsh": want one of bash, zsh, fish, powershell`) {
		t.Errorf("completion tcsh: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, out, stderr := vpnctl(t, context.Background(), "", "completion"); code != exitUsage || out != "" || !strings.HasPrefix(stderr, "Usage: vpnctl completion") {
		t.Errorf("completion: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	for _, a := range [][]string{{"frobnicate"}, {"protect"}, {"protect", "--fd", "-1"}, {"lockdown", "on"}, {"lockdown", "frob"}, {"down", "x"}, {"status", "--bogus"}, {"man"}} {
		if code, out, stderr := vpnctl(t, context.Background(), "", a...); code != exitUsage || out != "" || !strings.Contains(stderr, "Run 'vpnctl") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", a, code, out, stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, flag := range []string{"--version", "-v"} {
		code, out, _ := vpnctl(t, context.Background(), "", flag)
		if code != 0 || out != "vpnctl version "+version.String()+"\n" {
			t.Errorf("%s: exit %d, %q", flag, code, out)
		}
	}
}

// TestCompletionAndManPages: the shell completion scripts and the man
// pages come from the same definitions as --help.
func TestCompletionAndManPages(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, stderr := vpnctl(t, context.Background(), "", "completion", shell)
		if code != 0 || stderr != "" || !strings.Contains(out, "vpnctl") || len(out) < 1000 {
			t.Errorf("completion %s: exit %d, %d bytes, stderr %q", shell, code, len(out), stderr)
		}
	}
	// Completion knows the commands, the flags and explain's codes.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"__complete", "st"}, "status"},
		{[]string{"__complete", "up", "--all"}, "--allow-family-bypass"},
		{[]string{"__complete", "lockdown", ""}, "off"},
		{[]string{"__complete", "explain", ""}, "19900002\tSystem internal error."},
	} {
		if code, out, _ := vpnctl(t, context.Background(), "", tc.args...); code != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, %q lacks %q", tc.args, code, out, tc.want)
		}
	}
	dir := filepath.Join(t.TempDir(), "man1")
	if code, _, stderr := vpnctl(t, context.Background(), "", "man", dir); code != 0 {
		t.Fatalf("man: exit %d %s", code, stderr)
	}
	for _, c := range commandTree() {
		page := strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1"
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil {
			t.Errorf("no man page for %s: %v", c.CommandPath(), err)
			continue
		}
		if !strings.Contains(string(b), ".TH ") || !strings.Contains(string(b), c.Short) {
			t.Errorf("%s: no .TH or description:\n%s", page, b)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "vpnctl-up.1"))
	if !strings.Contains(string(b), "allow-family-bypass") || !strings.Contains(string(b), "--route") {
		t.Errorf("vpnctl-up.1 lacks flags:\n%s", b)
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
	info := testInfo
	info.Routes = []string{"10.0.0.0/8", "198.51.100.0/24", "2001:db8::/32"}
	info.RouteGateways = map[string]string{"10.0.0.0/8": "10.8.0.1", "2001:db8::/32": "fd00::1"}
	info.CoveredUIDs = []string{"0-999", "1001-4294967294"}
	info.Offload = true
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		if req.Method != "status" {
			return nil, nil, errs.New(errs.CodeMethodNotFound, "")
		}
		// What a newer vpnd might add: status --json keeps it.
		return map[string]any{"state": "connected", "vpn": info, "futureMember": 7,
			"lockdown": protocol.Lockdown{Enabled: true, Applications: []string{"alice", "1001"}}}, nil, nil
	})
	code, out, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "status")
	for _, want := range []string{
		"state:           connected\n",
		"lockdown:        on for alice 1001\n",
		"routes:          10.0.0.0/8 198.51.100.0/24 2001:db8::/32\n",
		"route gateways:  10.0.0.0/8 via 10.8.0.1 2001:db8::/32 via fd00::1\n",
		"covered uids:    0-999 1001-4294967294\n",
		"offload:         true\n",
		"owner:           alice (uid 1000, pid 42)\n",
	} {
		if code != 0 || stderr != "" || !strings.Contains(out, want) {
			t.Errorf("status: exit %d, lacks %q:\n%s%s", code, want, out, stderr)
		}
	}
	code, out, _ = vpnctl(t, context.Background(), "", "status", "--socket", d.path, "--json")
	var st protocol.StatusResult
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.VPN == nil || st.VPN.Index != 9 ||
		st.VPN.RouteGateways["10.0.0.0/8"] != "10.8.0.1" || !strings.Contains(out, `"futureMember": 7`) {
		t.Fatalf("--json: exit %d %s", code, out)
	}
	if code, out, _ := vpnctl(t, context.Background(), "", "--socket", d.path, "lockdown", "status"); code != 0 || out != "on for alice 1001\n" {
		t.Errorf("lockdown status: exit %d %q", code, out)
	}
}

func TestStatusDisconnected(t *testing.T) {
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		return protocol.StatusResult{State: "disconnected"}, nil, nil
	})
	code, out, _ := vpnctl(t, context.Background(), "", "--socket", d.path, "status")
	if code != 0 || out != "state:           disconnected\nlockdown:        off\n" {
		t.Errorf("exit %d %q", code, out)
	}
	if code, out, _ := vpnctl(t, context.Background(), "", "--socket", d.path, "lockdown", "status"); code != 0 || out != "off\n" {
		t.Errorf("lockdown status: exit %d %q", code, out)
	}
}

// lockdown on/off send setLockdown; a refusal prints vpnd's error.
func TestLockdownCommand(t *testing.T) {
	var mu sync.Mutex
	var got []string
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		mu.Lock()
		got = append(got, req.Method+" "+string(req.Params))
		mu.Unlock()
		if strings.Contains(string(req.Params), "mallory") {
			return nil, nil, errs.New(errs.CodePermission, "setLockdown needs an admin account; caller uid 1000 is normal")
		}
		return struct{}{}, nil, nil
	})
	for _, a := range [][]string{{"lockdown", "on", "alice", "1001"}, {"lockdown", "off"}} {
		if code, out, stderr := vpnctl(t, context.Background(), "", append([]string{"--socket", d.path}, a...)...); code != 0 || out != "" || stderr != "" {
			t.Errorf("%v: exit %d %q %q", a, code, out, stderr)
		}
	}
	want := []string{`setLockdown {"enabled":true,"applications":["alice","1001"]}`, `setLockdown {"enabled":false,"applications":null}`}
	mu.Lock()
	sent := slices.Clone(got)
	mu.Unlock()
	if !slices.Equal(sent, want) {
		t.Errorf("sent %q\nwant %q", sent, want)
	}
	code, _, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "lockdown", "on", "mallory")
	if code != exitFailure || stderr != "vpnctl: 201 Permission denied. (setLockdown needs an admin account; caller uid 1000 is normal)\n" {
		t.Errorf("refused: exit %d %q", code, stderr)
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
}

// When vpnd cannot be reached, vpnctl names the socket and says how to
// point at another one.
func TestUnreachable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	stale := filepath.Join(t.TempDir(), "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // the file stays, nobody listens: a killed vpnd's socket
	// connect(2) answers ECONNREFUSED for these as for a stale socket.
	file := filepath.Join(t.TempDir(), "vpnd.sock")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"no socket, --socket", []string{"--socket", missing, "status"}, "", "There is no socket at " + missing + ": vpnd is not running"},
		{"no socket, VPND_SOCKET", []string{"down"}, missing, "There is no socket at " + missing + ": vpnd is not running"},
		{"stale socket", []string{"--socket", stale, "watch"}, "", stale + " is a stale socket: no vpnd serves it"},
		{"stale socket, up", []string{"--socket", stale, "up", "--address", "10.8.0.2/24"}, "", stale + " is a stale socket"},
		{"a regular file", []string{"status"}, file, file + " is a regular file, not a socket: the socket path is wrong."},
		{"a directory", []string{"--socket", dir, "status"}, "", dir + " is a directory, not a socket: the socket path is wrong."},
		{"under a file", []string{"--socket", file + "/vpnd.sock", "status"}, "",
			"There is no socket at " + file + "/vpnd.sock: a directory on its path is a file; the socket path is wrong."},
	} {
		noteRun(tc.args)
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, stdio{strings.NewReader(""), &out, &errb}, func(k string) string {
			if k == "VPND_SOCKET" {
				return tc.env
			}
			return ""
		})
		stderr := errb.String()
		if code != exitFailure || out.Len() != 0 || !strings.HasPrefix(stderr, "vpnctl: connect to vpnd: ") {
			t.Errorf("%s: exit %d, stderr %q", tc.name, code, stderr)
		}
		for _, want := range []string{tc.want, "--socket PATH or VPND_SOCKET=PATH", "scripts/try"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("%s: stderr lacks %q:\n%s", tc.name, want, stderr)
			}
		}
		if strings.Contains(stderr, "see: vpnctl explain") {
			t.Errorf("%s: an unreachable vpnd has no code to explain:\n%s", tc.name, stderr)
		}
	}
	// Other errors get no such hint.
	if h := unreachableHint(errs.New(errs.CodeInternal, "x"), "/s"); h != "" {
		t.Errorf("hint for a vpnd error: %q", h)
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

// tunStandIn is a fake daemon whose setUp hands out the write end of a
// pipe as the TUN. At destroy it notes whether vpnctl still held its copy
// (the read end sees no EOF yet): only then does vpnd end the VPN as
// "destroy", not "linkGone".
type tunStandIn struct {
	*fakeDaemon
	mu        sync.Mutex
	readEnds  []*os.File
	data      bytes.Buffer // what the TUN's users wrote
	heldAtEnd []bool       // per destroy: was the TUN still open?
}

func newTUNStandIn(t *testing.T) *tunStandIn {
	d := &tunStandIn{}
	d.fakeDaemon = newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		switch req.Method {
		case "setUp":
			r, w, err := os.Pipe()
			if err != nil {
				t.Error(err)
			}
			d.readEnds = append(d.readEnds, r)
			return testInfo, []*os.File{w}, nil // closed once sent
		case "destroy":
			d.heldAtEnd = append(d.heldAtEnd, !d.drain(100*time.Millisecond))
		}
		return struct{}{}, nil, nil
	})
	t.Cleanup(func() {
		d.close() // orders the handler's sends before the closes below
		for _, r := range d.readEnds {
			r.Close()
		}
	})
	return d
}

// drain reads the last TUN stand-in for up to wait and reports whether it
// saw EOF: every copy of the TUN closed. d.mu is held.
func (d *tunStandIn) drain(wait time.Duration) bool {
	r := d.readEnds[len(d.readEnds)-1]
	r.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(&d.data, r)
	return err == nil
}

// up -- CMD: CMD sees the TUN as fd 3 and VPN_TUN_FD=3, and stdout is its
// alone (the VpnInfo goes to stderr). When CMD exits, vpnctl destroys the
// VPN while it still holds the TUN, then closes it, and exits with CMD's
// status.
func TestUpWithCommand(t *testing.T) {
	d := newTUNStandIn(t)
	script := `test "$VPN_TUN_FD" = 3 || exit 90; echo hello >&3 || exit 91; echo out; exit 7`
	code, out, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "up", "--address", "10.8.0.2/24", "--", "sh", "-c", script)
	if code != 7 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if out != "out\n" {
		t.Errorf("stdout %q, want CMD's alone", out)
	}
	var info protocol.VpnInfo
	if err := json.Unmarshal([]byte(stderr), &info); err != nil || info.Interface != "vpn-tun" {
		t.Errorf("stderr %q, want the VpnInfo", stderr)
	}
	if m := d.methods(); !slices.Equal(m, []string{"setUp", "subscribe", "destroy"}) {
		t.Fatalf("calls %v", m)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.heldAtEnd) != 1 || !d.heldAtEnd[0] {
		t.Errorf("at destroy, the TUN held: %v; want true (else vpnd ends the VPN as linkGone)", d.heldAtEnd)
	}
	if !d.drain(2*time.Second) || d.data.String() != "hello\n" {
		t.Fatalf("TUN stand-in: %q, EOF %v (a copy of the fd is still open?)", d.data.String(), d.drain(0))
	}
}

func TestUpWithCommandQuiet(t *testing.T) {
	d := newTUNStandIn(t)
	for _, q := range []string{"--quiet", "-q"} {
		code, out, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "up", q, "--address", "10.8.0.2/24", "--", "echo", "out")
		if code != 0 || out != "out\n" || stderr != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", q, code, out, stderr)
		}
	}
}

func TestUpWithCommandFails(t *testing.T) {
	d := newTUNStandIn(t)
	code, _, _ := vpnctl(t, context.Background(), "", "--socket", d.path, "up", "--address", "10.8.0.2/24", "--", "sh", "-c", "kill -TERM $$")
	if code != 128+int(syscall.SIGTERM) {
		t.Errorf("signalled CMD: exit %d", code)
	}
	code, _, _ = vpnctl(t, context.Background(), "", "--socket", d.path, "up", "--address", "10.8.0.2/24", "--", "/nonexistent/cmd")
	if code != 127 {
		t.Errorf("missing CMD: exit %d", code)
	}
	if m := d.methods(); !slices.Equal(m, []string{"setUp", "subscribe", "destroy", "setUp", "subscribe", "destroy"}) {
		t.Errorf("calls %v, want setUp, subscribe and destroy twice", m)
	}
}

func TestUpSetUpFails(t *testing.T) {
	d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
		return nil, nil, errs.New(errs.CodeVPNExists, "")
	})
	code, _, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "up", "--address", "10.8.0.2/24")
	if code != 1 || stderr != "vpnctl: 2203002 VPN already exists.\n  see: vpnctl explain 2203002\n" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// The parse errors of --address, --route and --exclude name the part
// that is wrong.
func TestRouteParseErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--address", "10.8.0.2/24", "--route", "10.0.0.0/8,via=10.8.0.x"}, `--route 10.0.0.0/8,via=10.8.0.x: via: "10.8.0.x" is not an IP address`},
		{[]string{"--address", "10.8.0.2/24", "--route", "10.0.0.0/8,via=10.8.0.1,via=10.8.0.2"}, `--route 10.0.0.0/8,via=10.8.0.1,via=10.8.0.2: via: given twice`},
		{[]string{"--address", "10.8.0.2/24", "--route", "10.0.0.0/8,gw=10.8.0.1"}, `--route 10.0.0.0/8,gw=10.8.0.1: "gw=10.8.0.1": unknown option (the only one is via=GATEWAY)`},
		{[]string{"--address", "10.8.0.2/24", "--route", "10.0.0.0"}, `--route 10.0.0.0: "10.0.0.0" has no prefix length`},
		{[]string{"--address", "10.8.0.2/24", "--route", "10.0.0.300/8"}, `--route 10.0.0.300/8: "10.0.0.300" is not an IP address`},
		{[]string{"--address", "10.8.0.2/24", "--route", "10.0.0.0/33"}, `--route 10.0.0.0/33: prefix length "33": want 0-32`},
		{[]string{"--address", "10.8.0.2/24", "--route", "::/129"}, `--route ::/129: prefix length "129": want 0-128`},
		{[]string{"--address", "10.8.0.2/24", "--exclude", "10.1.0.0/16,via=10.8.0.1"}, `--exclude 10.1.0.0/16,via=10.8.0.1: via: an excluded route takes no gateway`},
		{[]string{"--address", "10.8.0.2"}, `--address 10.8.0.2: "10.8.0.2" has no prefix length`},
		{[]string{"--address", "bogus/24"}, `--address bogus/24: "bogus" is not an IP address`},
	} {
		_, err := upParams(t, "", tc.args...)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%v: got %v\nwant %s", tc.args, err, tc.want)
		}
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

// vpnd's shutdown notification, written just before vpnd closes the
// connection, is what hold reports, not the lost connection that follows
// it. Repeated, as which of the two hold sees first is a race.
func TestHoldReportsShutdown(t *testing.T) {
	for i := range 50 {
		cl, events := shuttingDown(t)
		var stderr bytes.Buffer
		g := &globals{io: stdio{out: io.Discard, err: &stderr}}
		code := hold(g, cl, events, nil)
		cl.Close()
		if code != 1 || stderr.String() != "vpnctl: the VPN ended (shutdown)\n" {
			t.Fatalf("run %d: exit %d: %q, want the shutdown", i, code, stderr.String())
		}
	}
}

// shuttingDown returns a client subscribed to a daemon that answers the
// subscription, says the VPN ended (shutdown), and closes the connection,
// as vpnd does when it stops.
func shuttingDown(t *testing.T) (*client.Client, <-chan protocol.StateChanged) {
	a, b := rpctest.SocketPair(t)
	cl := client.New(a)
	daemon := rpc.NewConn(b)
	go func() {
		defer daemon.Close()
		m, err := daemon.ReadMessage()
		if err != nil {
			return
		}
		var req protocol.Request
		json.Unmarshal(m.Line, &req)
		for _, line := range []protocol.Response{
			{JSONRPC: "2.0", ID: req.ID, Result: json.RawMessage(`{}`)},
			{JSONRPC: "2.0", Method: protocol.MethodStateChanged, Params: json.RawMessage(`{"isConnected":false,"interface":"vpn-tun","reason":"shutdown","vpn":null}`)},
		} {
			l, _ := json.Marshal(line)
			daemon.WriteMessage(l)
		}
	}()
	events, err := cl.Subscribe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cl, events
}

// up -- CMD says that vpnd shut down, not that the connection was lost,
// lets CMD finish (it ends when its stdin closes, after the line), and
// exits with CMD's status, with no destroy to a vpnd that is gone.
// Repeated, as which of the notification and the end of the connection
// vpnctl sees first is a race.
func TestUpWithCommandReportsShutdown(t *testing.T) {
	tun, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	for i := range 20 {
		cl, events := shuttingDown(t)
		in, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 8)
		g := &globals{io: stdio{in: in, out: io.Discard, err: chanWriter(lines)}}
		code := make(chan int, 1)
		go func() { code <- runWithTUN(g, cl, tun, []string{"sh", "-c", "cat >/dev/null"}, nil, events) }()
		first := <-lines
		w.Close()
		if c := <-code; c != 0 || first != "vpnctl: the VPN ended (shutdown); waiting for sh to exit\n" {
			t.Fatalf("run %d: exit %d: %q, want the shutdown", i, c, first)
		}
		in.Close()
		cl.Close()
		close(lines)
		for l := range lines {
			t.Errorf("run %d: then %q", i, l)
		}
	}
}

// chanWriter sends each write on the channel, as a string.
type chanWriter chan string

func (c chanWriter) Write(p []byte) (int, error) {
	c <- string(p)
	return len(p), nil
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
	noteRun([]string{"watch"})
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
			code := runWithTUN(g, cl, tun, []string{"sh", "-c", script}, sigc, nil)
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

// TestDocsCommandLines: each vpnctl command line in the code blocks of
// README and docs/ names a command that exists, with flags and arguments
// that it takes, so the docs stay true to the command line.
func TestDocsCommandLines(t *testing.T) {
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md")
	lines := 0
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		inCode := false
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "```") {
				inCode = !inCode
				continue
			}
			_, cmdline, ok := strings.Cut(line, "vpnctl ")
			if !inCode || !ok {
				continue
			}
			cmdline, _, _ = strings.Cut(cmdline, "#")    // a comment
			cmdline, _, _ = strings.Cut(cmdline, " -- ") // CMD's own
			fields := strings.Fields(strings.NewReplacer("[", "", "]", "").Replace(cmdline))
			if slices.Contains(fields, "...") {
				continue // a placeholder
			}
			lines++
			where := fmt.Sprintf("%s:%d: vpnctl %s", filepath.Base(file), i+1, strings.TrimSpace(cmdline))
			root := newRootCommand(&globals{io: stdio{in: strings.NewReader(""), out: io.Discard, err: io.Discard}})
			root.InitDefaultCompletionCmd()
			c, rest, err := root.Find(fields)
			if err != nil || c == root {
				t.Errorf("%s: no such command (%v)", where, err)
				continue
			}
			if c.DisableFlagParsing {
				continue
			}
			if err := c.ParseFlags(rest); err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			if err := c.ValidateArgs(c.Flags().Args()); err != nil {
				t.Errorf("%s: %v", where, err)
			}
			if err := c.ValidateRequiredFlags(); err != nil {
				t.Errorf("%s: %v", where, err)
			}
		}
	}
	if lines < 10 {
		t.Errorf("found only %d vpnctl command lines in %v", lines, files)
	}
}
