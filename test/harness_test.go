// Package test holds vpnd's integration tests. They build the real vpnd,
// vpnctl and a raw client, run vpnd as root inside a throwaway network
// namespace created with `ip netns add` (never in the host's namespace),
// talk to it through its real Unix socket from processes running under
// other uids, and read the kernel's state back with `ip -n NS -j`.
// VPND_TEST_BACKEND=sim runs the same tests against `vpnd --sim` run as
// an ordinary user (backend_test.go).
//
// Tests skip when not run as root.
package test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/wire"
)

// vpnd's defaults.
const (
	defaultIfname   = "vpn-tun"
	defaultTable    = 98
	defaultPriority = 10000
	defaultMark     = 0x20000
)

// settle bounds how long the tests wait for asynchronous work (teardown
// after a close, a reload after SIGHUP) to become visible. It is a hang
// guard for eventually(), not a timing assertion: the 100 ms promise
// belongs in a benchmark.
const settle = 5 * time.Second

// hangGuard bounds a single blocking read from vpnd or a helper.
const hangGuard = 20 * time.Second

var (
	binDir    string
	binPath   = map[string]string{}
	buildErrs = map[string]error{}
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	if err := backendFromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Geteuid() != 0 {
		return m.Run() // every test skips
	}
	dir, err := os.MkdirTemp("", "vpndtest-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkdtemp:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Other uids must be able to exec the binaries.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "chmod:", err)
		return 1
	}
	binDir = dir
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// go test puts its own go command first in PATH.
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "find the go command:", err)
		return 1
	}
	for _, b := range []struct{ name, pkg string }{
		{"vpnd", "./cmd/vpnd"},
		{"vpnctl", "./cmd/vpnctl"},
		{"rawclient", "./test/internal/rawclient"},
		{"simping", "./examples/simping"}, // the README's example of simulation mode
	} {
		out := filepath.Join(dir, b.name)
		cmd := exec.Command(goTool, "build", "-o", out, b.pkg)
		cmd.Dir = root
		if o, err := cmd.CombinedOutput(); err != nil {
			buildErrs[b.name] = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, o)
			continue
		}
		if err := os.Chmod(out, 0o755); err != nil {
			buildErrs[b.name] = err
			continue
		}
		binPath[b.name] = out
	}
	return m.Run()
}

func moduleRoot() (string, error) {
	dir, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("module root not found above the test package: %w", err)
	}
	return dir, nil
}

// requireRoot skips the test unless it runs as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("integration tests need root (network namespaces, other uids)")
	}
}

// bin returns the path of a program built by TestMain, failing the test
// if it did not build.
func bin(t testing.TB, name string) string {
	t.Helper()
	requireRoot(t)
	if err := buildErrs[name]; err != nil {
		t.Fatalf("%s did not build:\n%v", name, err)
	}
	p, ok := binPath[name]
	if !ok {
		t.Fatalf("%s was not built", name)
	}
	return p
}

// lazyBins are the programs that only some tests need, built on first use
// into TestMain's bin dir: package path by binary name.
var lazyBins = map[string]string{
	"dialas":   "./test/internal/dialas",
	"netpeer":  "./test/internal/netpeer",
	"slowhttp": "./test/internal/slowhttp",
	"tunfwd":   "./test/internal/tunfwd",
	"vpnd-wg":  "./cmd/vpnd-wg",
	"wgpeer":   "./test/internal/wgpeer",
}

var (
	lazyMu    sync.Mutex
	lazyBuilt = map[string]error{}
)

// lazyBin builds the program name of lazyBins once and returns its path,
// failing the test if it does not build.
func lazyBin(t testing.TB, name string) string {
	t.Helper()
	requireRoot(t)
	pkg, ok := lazyBins[name]
	if !ok {
		t.Fatalf("no program %q in lazyBins", name)
	}
	out := filepath.Join(binDir, name)
	lazyMu.Lock()
	defer lazyMu.Unlock()
	err, done := lazyBuilt[name]
	if !done {
		err = buildProgram(pkg, out)
		lazyBuilt[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// buildProgram builds the module's package pkg into out, with the go
// command that go test put first in PATH.
func buildProgram(pkg, out string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, o)
	}
	return os.Chmod(out, 0o755)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// syncBuffer collects a child's output from its own goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond with backoff until it holds or settle passes, then
// fails with cond's last description of the state.
func eventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	if !poll(cond) {
		_, state := cond()
		t.Fatalf("%s: still not true after %v: %s", what, settle, state)
	}
}

// poll is eventually without failing: it reports whether cond came true.
func poll(cond func() (bool, string)) bool {
	deadline := time.Now().Add(settle)
	wait := 5 * time.Millisecond
	for {
		if ok, _ := cond(); ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
		if wait < 200*time.Millisecond {
			wait *= 2
		}
	}
}

// ---------------------------------------------------------------------------
// Network namespaces

// newNetns creates a namespace named vpndtest-<random> with lo up and
// deletes it when the test ends.
func newNetns(t testing.TB) string {
	t.Helper()
	requireRoot(t)
	name := "vpndtest-" + randomHex(6)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	nsIP(t, name, "link", "set", "lo", "up")
	return name
}

// nsIP runs `ip -n NS ARGS...` and fails the test on error. All kernel
// changes the tests make go through here, always with -n.
func nsIP(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := nsIPErr(ns, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

func nsIPErr(ns string, args ...string) (string, error) {
	if ns == "" {
		return "", errors.New("refusing to run ip without a namespace")
	}
	full := append([]string{"-n", ns}, args...)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("ip", full...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ip %s: %v: %s", strings.Join(full, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// nsJSON runs `ip -n NS -j ARGS...` and decodes its output into v. An
// empty routing table makes ip fail with "FIB table does not exist": that
// decodes as an empty list.
func nsJSON(t testing.TB, ns string, v any, args ...string) {
	t.Helper()
	out, err := nsIPErr(ns, append([]string{"-j"}, args...)...)
	if err != nil {
		if strings.Contains(err.Error(), "FIB table does not exist") {
			out = "[]"
		} else {
			t.Fatalf("%v", err)
		}
	}
	out = strings.TrimSpace(out)
	if out == "" {
		out = "[]"
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decode `ip -n %s -j %s`: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
}

// ipLink is one entry of `ip -j -d link`.
type ipLink struct {
	Ifindex   int      `json:"ifindex"`
	Ifname    string   `json:"ifname"`
	Flags     []string `json:"flags"`
	MTU       int      `json:"mtu"`
	Operstate string   `json:"operstate"`
	LinkType  string   `json:"link_type"`
	Linkinfo  *struct {
		InfoKind string         `json:"info_kind"`
		InfoData map[string]any `json:"info_data"`
	} `json:"linkinfo"`
}

func (l ipLink) hasFlag(f string) bool {
	for _, x := range l.Flags {
		if x == f {
			return true
		}
	}
	return false
}

func (l ipLink) kind() string {
	if l.Linkinfo == nil {
		return ""
	}
	return l.Linkinfo.InfoKind
}

// ipRule is one entry of `ip -j rule`. Family is filled in by rules().
type ipRule struct {
	Family   int     `json:"-"`
	Priority int     `json:"priority"`
	Src      string  `json:"src"`
	Fwmark   string  `json:"fwmark"`
	Fwmask   string  `json:"fwmask"`
	UIDStart *uint32 `json:"uid_start"`
	UIDEnd   *uint32 `json:"uid_end"`
	Table    string  `json:"table"`
	Action   string  `json:"action"`
}

func (r ipRule) String() string {
	s := fmt.Sprintf("%s prio %d", famName(r.Family), r.Priority)
	if r.UIDStart != nil && r.UIDEnd != nil {
		s += fmt.Sprintf(" uidrange %d-%d", *r.UIDStart, *r.UIDEnd)
	}
	if r.Fwmark != "" || r.Fwmask != "" {
		s += fmt.Sprintf(" fwmark %s/%s", r.Fwmark, r.Fwmask)
	}
	if r.Action != "" {
		s += " " + r.Action
	}
	if r.Table == "" {
		return s
	}
	return s + " lookup " + r.Table
}

// covers reports whether the rule's uid range contains uid.
func (r ipRule) covers(uid uint32) bool {
	return r.UIDStart != nil && r.UIDEnd != nil && *r.UIDStart <= uid && uid <= *r.UIDEnd
}

// ipRoute is one entry of `ip -j route show table N`.
type ipRoute struct {
	Family  int    `json:"-"`
	Type    string `json:"type"`
	Dst     string `json:"dst"`
	Gateway string `json:"gateway"`
	Dev     string `json:"dev"`
}

func (r ipRoute) String() string {
	s := r.Dst
	if r.Type != "" {
		s = r.Type + " " + s
	}
	if r.Gateway != "" {
		s += " via " + r.Gateway
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	return famName(r.Family) + " " + s
}

// ipAddr is one addr_info entry of `ip -j addr show dev X`.
type ipAddr struct {
	Family    string `json:"family"`
	Local     string `json:"local"`
	Prefixlen int    `json:"prefixlen"`
	Scope     string `json:"scope"`
}

func famName(f int) string {
	if f == unix.AF_INET6 {
		return "ipv6"
	}
	return "ipv4"
}

func nsLinks(t testing.TB, ns string) []ipLink {
	t.Helper()
	var ls []ipLink
	nsJSON(t, ns, &ls, "-d", "link", "show")
	return ls
}

func nsLink(t testing.TB, ns, name string) *ipLink {
	t.Helper()
	for _, l := range nsLinks(t, ns) {
		if l.Ifname == name {
			l := l
			return &l
		}
	}
	return nil
}

func nsRules(t testing.TB, ns string) []ipRule {
	t.Helper()
	var all []ipRule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		var rs []ipRule
		nsJSON(t, ns, &rs, famFlag(fam), "rule", "show")
		for i := range rs {
			rs[i].Family = fam
		}
		all = append(all, rs...)
	}
	return all
}

func nsRoutes(t testing.TB, ns string, table int) []ipRoute {
	t.Helper()
	var all []ipRoute
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		var rs []ipRoute
		nsJSON(t, ns, &rs, famFlag(fam), "route", "show", "table", fmt.Sprint(table))
		for i := range rs {
			rs[i].Family = fam
		}
		all = append(all, rs...)
	}
	return all
}

func nsAddrs(t testing.TB, ns, ifname string) []ipAddr {
	t.Helper()
	var links []struct {
		AddrInfo []ipAddr `json:"addr_info"`
	}
	nsJSON(t, ns, &links, "addr", "show", "dev", ifname)
	var out []ipAddr
	for _, l := range links {
		out = append(out, l.AddrInfo...)
	}
	return out
}

func famFlag(fam int) string {
	if fam == unix.AF_INET6 {
		return "-6"
	}
	return "-4"
}

// ---------------------------------------------------------------------------
// The daemon

// daemon is one vpnd process running in its own network namespace.
type daemon struct {
	t      testing.TB
	ns     string
	dir    string // 0755 temp dir holding the socket and policy file
	sock   string
	prefix []string
	pid    int
	cmd    *exec.Cmd
	stderr *syncBuffer
	sim    bool // `vpnd --sim`, as simUID (backend_test.go)

	// What this vpnd was told to use (the defaults unless a test
	// passes the flags).
	ifname   string
	table    int
	priority int
	mark     uint32

	accountsPath string

	baseFDs        []string // /proc/PID/fd targets right after start
	baseGoroutines int      // goroutines right after start (SIGUSR1 stats)
	exitedCh       chan struct{}
	waitErr        error
	stopped        bool

	launchOpts // how vpnd is started (systemd's way, for one)
}

// launchOpts change how launch starts vpnd and waits for it.
type launchOpts struct {
	extraFiles  []*os.File                     // vpnd's fds 3, 4, ...
	env         []string                       // added to vpnd's environment
	ready       func(tb testing.TB, d *daemon) // replaces waitReady
	socketStays bool                           // the socket file outlives vpnd (systemd owns it)
}

type daemonOpts struct {
	accounts    string // policy JSON; written to DIR/accounts.json
	flags       []string
	ns          string // run in this existing namespace instead of a new one
	socket      string // socket path; default DIR/vpnd.sock
	ifname      string
	table       int
	priority    int
	mark        uint32
	beforeStart func(t testing.TB, ns string)
	noLeakCheck bool
	prefix      []string // command that execs vpnd in the namespace
	launch      launchOpts
}

type daemonOpt func(*daemonOpts)

// withAccounts gives vpnd --accounts FILE with this policy.
func withAccounts(policy string) daemonOpt { return func(o *daemonOpts) { o.accounts = policy } }

// withFlags passes extra flags to vpnd.
func withFlags(f ...string) daemonOpt { return func(o *daemonOpts) { o.flags = append(o.flags, f...) } }

// inNetns runs vpnd in an existing namespace (e.g. after another vpnd died).
func inNetns(ns string) daemonOpt { return func(o *daemonOpts) { o.ns = ns } }

// withSocket sets --socket.
func withSocket(p string) daemonOpt { return func(o *daemonOpts) { o.socket = p } }

// withKernelNames passes --ifname, --table, --rule-priority and
// --protect-mark and makes the leak checks look for them.
func withKernelNames(ifname string, table, priority int, mark uint32) daemonOpt {
	return func(o *daemonOpts) {
		o.ifname, o.table, o.priority, o.mark = ifname, table, priority, mark
		o.flags = append(o.flags, "--ifname", ifname, "--table", fmt.Sprint(table),
			"--rule-priority", fmt.Sprint(priority), "--protect-mark", fmt.Sprintf("%#x", mark))
	}
}

// withEnv adds KEY=VALUE entries to vpnd's environment, e.g. a test bus
// as DBUS_SYSTEM_BUS_ADDRESS.
func withEnv(kv ...string) daemonOpt {
	return func(o *daemonOpts) { o.launch.env = append(o.launch.env, kv...) }
}

// withPrefix runs vpnd through a command that execs it (vpndCommandPrefixed).
func withPrefix(prefix ...string) daemonOpt { return func(o *daemonOpts) { o.prefix = prefix } }

// beforeStart runs f in the namespace's setup phase, before vpnd starts.
func beforeStart(f func(t testing.TB, ns string)) daemonOpt {
	return func(o *daemonOpts) { o.beforeStart = f }
}

// newDaemonDir makes a temp dir other uids can traverse.
func newDaemonDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vpndtest-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if simBackend {
		forSim(t, dir) // the simulated vpnd creates its socket here
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// vpndCommand builds `ip netns exec NS vpnd --socket ... FLAGS`. ip execs
// vpnd without forking, so the child's pid is vpnd's.
func vpndCommand(t testing.TB, ns, sock string, flags ...string) *exec.Cmd {
	return vpndCommandPrefixed(t, ns, nil, sock, flags...)
}

// vpndCommandPrefixed is vpndCommand with a command that runs first in
// the namespace and execs vpnd (e.g. setpriv, unshare), so that the
// child's pid is still vpnd's.
func vpndCommandPrefixed(t testing.TB, ns string, prefix []string, sock string, flags ...string) *exec.Cmd {
	sim := simBackend || slices.Contains(flags, "--sim")
	args := []string{"netns", "exec", ns}
	if sim {
		args = append(args, simPrefix()...)
	}
	args = append(args, prefix...)
	args = append(args, bin(t, "vpnd"), "--socket", sock, "--log-format", "json", "--log-level", "debug")
	if sim && !slices.Contains(flags, "--sim") {
		args = append(args, "--sim")
	}
	if !slices.Contains(flags, "--state-dir") {
		dir := stateDirFor(t, ns)
		if sim {
			forSim(t, dir)
		}
		args = append(args, "--state-dir", dir)
	}
	args = append(args, flags...)
	cmd := exec.Command("ip", args...)
	// vpnd's default DNS backend (auto) asks the system bus for
	// systemd-resolved: point it at a bus that does not exist, never at
	// the host's. Tests that want a bus give one with withEnv.
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent/vpndtest-no-system-bus")
	return cmd
}

var (
	stateDirsMu sync.Mutex
	stateDirs   = map[string]string{}
)

// stateDirFor returns the state directory of the vpnds of namespace ns:
// one per namespace, so that a vpnd restarted there finds what the last
// one stored (lockdown), and never the host's /var/lib/vpnd. It goes away
// when the test that made it ends.
func stateDirFor(t testing.TB, ns string) string {
	stateDirsMu.Lock()
	defer stateDirsMu.Unlock()
	if d, ok := stateDirs[ns]; ok {
		return d
	}
	d, err := os.MkdirTemp("", "vpndtest-state-")
	if err != nil {
		t.Fatal(err)
	}
	stateDirs[ns] = d
	t.Cleanup(func() {
		stateDirsMu.Lock()
		delete(stateDirs, ns)
		stateDirsMu.Unlock()
		os.RemoveAll(d)
	})
	return d
}

// execAfter is a prefix that runs the shell script before it execs vpnd.
func execAfter(script string) []string {
	return []string{"sh", "-c", script + ` && exec "$0" "$@"`}
}

// startDaemon starts vpnd in a fresh namespace (or opts' one) and waits
// until its socket accepts connections. When the test ends it checks for
// leftovers (links, rules, routes, fds) while vpnd still runs, then stops
// it with SIGTERM and checks the exit status, the socket file and the
// namespace once more.
func startDaemon(t *testing.T, opts ...daemonOpt) *daemon {
	t.Helper()
	o := daemonOpts{ifname: defaultIfname, table: defaultTable, priority: defaultPriority, mark: defaultMark}
	for _, f := range opts {
		f(&o)
	}
	ns := o.ns
	if ns == "" {
		ns = newNetns(t)
	}
	if o.beforeStart != nil {
		o.beforeStart(t, ns)
	}
	d := &daemon{
		t: t, ns: ns, dir: newDaemonDir(t), stderr: &syncBuffer{}, exitedCh: make(chan struct{}),
		ifname: o.ifname, table: o.table, priority: o.priority, mark: o.mark, prefix: o.prefix,
		sim:        simBackend || slices.Contains(o.flags, "--sim"),
		launchOpts: o.launch,
	}
	if d.sim {
		forSim(t, d.dir)
	}
	d.sock = o.socket
	if d.sock == "" {
		d.sock = filepath.Join(d.dir, "vpnd.sock")
	}
	flags := append([]string(nil), o.flags...)
	if o.accounts != "" {
		d.accountsPath = filepath.Join(d.dir, "accounts.json")
		if err := os.WriteFile(d.accountsPath, []byte(o.accounts), 0o644); err != nil {
			t.Fatal(err)
		}
		flags = append(flags, "--accounts", d.accountsPath)
	}
	d.launch(t, flags...)
	d.baseFDs = d.stableFDs(t)
	d.baseGoroutines = d.goroutines(t)
	if !o.noLeakCheck {
		t.Cleanup(func() { d.checkNoLeftovers(t) })
	}
	return d
}

// launch starts vpnd in d.ns on d.sock with flags, registers its stop
// (SIGTERM, exit status, socket file, namespace) for the end of the test,
// and waits until it serves.
func (d *daemon) launch(tb testing.TB, flags ...string) {
	tb.Helper()
	d.cmd = vpndCommandPrefixed(tb, d.ns, d.prefix, d.sock, flags...)
	d.cmd.Env = append(d.cmd.Env, d.env...) // after vpndCommand's own
	d.cmd.Stdout, d.cmd.Stderr = d.stderr, d.stderr
	d.cmd.ExtraFiles = d.extraFiles
	if err := d.cmd.Start(); err != nil {
		tb.Fatalf("start vpnd: %v", err)
	}
	d.pid = d.cmd.Process.Pid
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.exitedCh)
	}()
	tb.Cleanup(func() {
		d.stop(tb)
		if tb.Failed() {
			tb.Logf("vpnd (pid %d, netns %s) output:\n%s", d.pid, d.ns, d.stderr.String())
		}
	})
	if d.ready != nil {
		d.ready(tb, d)
	} else {
		d.waitReady(tb)
	}
	d.checkNamespace(tb)
}

// waitReady polls the socket until vpnd answers a status request. A
// connect alone is not enough: vpnd listens before its start-up sweep and
// serves after it. This is readiness, not a timing assertion; hangGuard
// only stops a hung start.
func (d *daemon) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	wait := 5 * time.Millisecond
	for {
		select {
		case <-d.exitedCh:
			t.Fatalf("vpnd exited during start-up (%v):\n%s", d.waitErr, d.stderr.String())
		default:
		}
		if answers(d.sock) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vpnd socket %s not ready after %v:\n%s", d.sock, hangGuard, d.stderr.String())
		}
		time.Sleep(wait)
		if wait < 100*time.Millisecond {
			wait *= 2
		}
	}
}

// answers reports whether a status request on sock gets an answer.
func answers(sock string) bool {
	c, err := wire.Dial(sock)
	if err != nil {
		return false
	}
	defer c.Close()
	tv := unix.NsecToTimeval(hangGuard.Nanoseconds())
	if err := unix.SetsockoptTimeval(c.FD(), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return false
	}
	if err := c.Send([]byte(`{"jsonrpc":"2.0","id":1,"method":"status"}` + "\n")); err != nil {
		return false
	}
	_, err = c.ReadLine()
	return err == nil
}

// checkNamespace makes sure vpnd is not in the host's namespace. It is
// a guard for the rule that tests never touch the host's network.
func (d *daemon) checkNamespace(t testing.TB) {
	t.Helper()
	var vst, hst, nst unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", d.pid), &vst); err != nil {
		t.Fatalf("stat vpnd netns: %v", err)
	}
	if err := unix.Stat("/proc/self/ns/net", &hst); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/run/netns/"+d.ns, &nst); err != nil {
		t.Fatal(err)
	}
	if vst.Ino == hst.Ino && vst.Dev == hst.Dev {
		d.cmd.Process.Kill()
		t.Fatalf("vpnd runs in the host's network namespace: killed")
	}
	if vst.Ino != nst.Ino {
		t.Fatalf("vpnd's netns is not %s", d.ns)
	}
}

func (d *daemon) exited() bool {
	select {
	case <-d.exitedCh:
		return true
	default:
		return false
	}
}

// fdTargets lists what vpnd's descriptors point at, sorted.
func (d *daemon) fdTargets(t testing.TB) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", d.pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed while we looked
		}
		out = append(out, target)
	}
	sort.Strings(out)
	return out
}

// fdCount is len(/proc/PID/fd).
func (d *daemon) fdCount(t testing.TB) int { return len(d.fdTargets(t)) }

// goroutines asks vpnd for its goroutine count: SIGUSR1 makes it log a
// "runtime stats" line, and the newest one is read from its log.
func (d *daemon) goroutines(t testing.TB) int {
	t.Helper()
	before := strings.Count(d.stderr.String(), `"runtime stats"`)
	d.signal(t, syscall.SIGUSR1)
	var n int
	eventually(t, "runtime stats logged", func() (bool, string) {
		lines := strings.Split(d.stderr.String(), "\n")
		if strings.Count(d.stderr.String(), `"runtime stats"`) <= before {
			return false, "no new runtime stats line"
		}
		for i := len(lines) - 1; i >= 0; i-- {
			if strings.Contains(lines[i], `"runtime stats"`) {
				var st struct{ Goroutines int }
				if err := json.Unmarshal([]byte(lines[i]), &st); err != nil {
					return false, err.Error()
				}
				n = st.Goroutines
				return true, ""
			}
		}
		return false, "unreachable"
	})
	return n
}

// stableFDs waits until vpnd's descriptor list stops changing (the
// readiness probe's connection is closed asynchronously) and returns it.
func (d *daemon) stableFDs(t testing.TB) []string {
	t.Helper()
	prev := d.fdTargets(t)
	same := 0
	for i := 0; i < 100 && same < 3; i++ {
		time.Sleep(20 * time.Millisecond)
		cur := d.fdTargets(t)
		if strings.Join(cur, "\n") == strings.Join(prev, "\n") {
			same++
		} else {
			same = 0
		}
		prev = cur
	}
	return prev
}

// leftovers describes what vpnd's VPN left in its namespace: its link,
// rules at its priority, routes in its table.
func (d *daemon) leftovers(t testing.TB) []string {
	t.Helper()
	return nsLeftovers(t, d.ns, d.ifname, d.table, d.priority)
}

func nsLeftovers(t testing.TB, ns, ifname string, table, priority int) []string {
	t.Helper()
	var probs []string
	if l := nsLink(t, ns, ifname); l != nil {
		probs = append(probs, fmt.Sprintf("link %s (index %d, kind %q) still exists", ifname, l.Ifindex, l.kind()))
	}
	for _, r := range nsRules(t, ns) {
		if r.Priority == priority {
			probs = append(probs, "rule left: "+r.String())
		}
	}
	for _, r := range nsRoutes(t, ns, table) {
		probs = append(probs, fmt.Sprintf("route left in table %d: %s", table, r))
	}
	return probs
}

// checkNoLeftovers is the per-test leak check: once the test's clients are
// gone, vpnd must have no link, rule or route left and exactly the
// descriptors it had right after start.
func (d *daemon) checkNoLeftovers(t testing.TB) {
	t.Helper()
	if d.exited() {
		return // stop() checks the namespace after exit
	}
	var state string
	ok := poll(func() (bool, string) {
		probs := d.leftovers(t)
		if n := d.goroutines(t); n != d.baseGoroutines {
			probs = append(probs, fmt.Sprintf("vpnd has %d goroutines, had %d after start", n, d.baseGoroutines))
		}
		if fds := d.fdTargets(t); strings.Join(fds, "\n") != strings.Join(d.baseFDs, "\n") {
			probs = append(probs, fmt.Sprintf("vpnd has %d fds, had %d after start; now %q, then %q",
				len(fds), len(d.baseFDs), fds, d.baseFDs))
		}
		state = strings.Join(probs, "; ")
		return len(probs) == 0, state
	})
	if !ok {
		t.Errorf("leak check after the test: %s", state)
	}
}

// signal sends sig to vpnd.
func (d *daemon) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to vpnd: %v", sig, err)
	}
}

// waitExit waits for vpnd to exit (hangGuard, then SIGKILL) and returns its
// exit code.
func (d *daemon) waitExit(t testing.TB) int {
	t.Helper()
	select {
	case <-d.exitedCh:
	case <-time.After(hangGuard):
		d.cmd.Process.Kill()
		<-d.exitedCh
		t.Errorf("vpnd did not exit within %v; killed", hangGuard)
	}
	return d.cmd.ProcessState.ExitCode()
}

// stop ends vpnd with SIGTERM and checks the shutdown promises:
// exit status 0, socket file removed, nothing left in the namespace. It is
// idempotent; tests that stop vpnd themselves call it directly.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	if d.stopped {
		return
	}
	d.stopped = true
	if !d.exited() {
		d.signal(t, syscall.SIGTERM)
	}
	if code := d.waitExit(t); code != 0 {
		t.Errorf("vpnd exited with status %d (%v), want 0", code, d.waitErr)
	}
	if _, err := os.Lstat(d.sock); !d.socketStays && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file %s still exists after vpnd exited (lstat: %v)", d.sock, err)
	}
	if probs := d.leftovers(t); len(probs) > 0 {
		t.Errorf("after vpnd exited: %s", strings.Join(probs, "; "))
	}
}

// kill ends vpnd with SIGKILL, leaving whatever it had set up, and turns
// the end-of-test checks off.
func (d *daemon) kill(t testing.TB) {
	t.Helper()
	d.stopped = true
	d.cmd.Process.Kill()
	d.waitExit(t)
}

// Kernel views of the daemon's namespace (not under sim: see kns).
func (d *daemon) links(t testing.TB) []ipLink           { t.Helper(); return nsLinks(t, d.kns(t)) }
func (d *daemon) link(t testing.TB, n string) *ipLink   { t.Helper(); return nsLink(t, d.kns(t), n) }
func (d *daemon) rules(t testing.TB) []ipRule           { t.Helper(); return nsRules(t, d.kns(t)) }
func (d *daemon) routes(t testing.TB) []ipRoute         { t.Helper(); return nsRoutes(t, d.kns(t), d.table) }
func (d *daemon) addrs(t testing.TB, n string) []ipAddr { t.Helper(); return nsAddrs(t, d.kns(t), n) }
func (d *daemon) ip(t testing.TB, args ...string) string {
	t.Helper()
	return nsIP(t, d.ns, args...)
}

// vpnRules returns the rules at vpnd's priority.
func (d *daemon) vpnRules(t testing.TB) []ipRule {
	t.Helper()
	var out []ipRule
	for _, r := range d.rules(t) {
		if r.Priority == d.priority {
			out = append(out, r)
		}
	}
	return out
}

// waitClean waits until vpnd's VPN is gone from the kernel; under sim,
// until status says so (and the kernel still has nothing).
func (d *daemon) waitClean(t testing.TB, why string) {
	t.Helper()
	eventually(t, why+": link, rules and routes removed", func() (bool, string) {
		p := d.leftovers(t)
		return len(p) == 0, strings.Join(p, "; ")
	})
	if d.sim {
		eventually(t, why+": status disconnected", func() (bool, string) {
			s := d.vpnStatus(t)
			return s.State == "disconnected" && s.VPN == nil, fmt.Sprintf("%+v", s)
		})
	}
}

// logContains reports whether vpnd's output has a line containing all of
// the given substrings.
func (d *daemon) logContains(subs ...string) bool {
	for _, line := range strings.Split(d.stderr.String(), "\n") {
		all := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// startBackground starts cmd and returns a channel that is closed once it
// has exited. If it still runs when the test ends, it is killed.
func startBackground(t testing.TB, cmd *exec.Cmd) <-chan struct{} {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	return done
}
