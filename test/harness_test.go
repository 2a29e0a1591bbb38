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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/testhooks"
	"github.com/vpnd/vpnd/test/internal/wire"
	"github.com/vpnd/vpnd/vpndtest"
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

// binDir is where the programs the tests run are built (vpndtest's
// directory for them, readable by every uid), once TestMain ran as root.
var binDir string

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	if err := backendFromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Geteuid() != 0 {
		return m.Run() // every test skips
	}
	dir, err := testhooks.BinDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	return code
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

// lazyBins are the programs the tests run besides vpnd, by binary name:
// vpndtest builds each once, on first use, into binDir. A path starting
// with ./ is relative to the module's root.
var lazyBins = map[string]string{
	"vpnctl":    "./cmd/vpnctl",
	"rawclient": "./test/internal/rawclient",
	"simping":   "./examples/simping", // the README's example of simulation mode
	"dialas":    "./test/internal/dialas",
	"netpeer":   "./test/internal/netpeer",
	"slowhttp":  "./test/internal/slowhttp",
	"tunfwd":    "./test/internal/tunfwd",
	"vpnd-wg":   "./cmd/vpnd-wg",
	"wgpeer":    "./test/internal/wgpeer",
}

// bin returns the path of vpnd (vpndtest's, VPNDTEST_VPND if set) or of
// one of lazyBins, building it on first use and failing the test if it
// does not build.
func bin(t testing.TB, name string) string {
	t.Helper()
	requireRoot(t)
	if name == "vpnd" {
		return vpndtest.Binary(t)
	}
	pkg, ok := lazyBins[name]
	if !ok {
		t.Fatalf("no program %q in lazyBins", name)
	}
	if rel, ok := strings.CutPrefix(pkg, "./"); ok {
		pkg = "github.com/vpnd/vpnd/" + rel
	}
	return vpndtest.Build(t, pkg)
}

// lazyBin is bin: every program is built on first use.
func lazyBin(t testing.TB, name string) string {
	t.Helper()
	return bin(t, name)
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
	eventuallyWithin(t, settle, what, cond)
}

// eventuallyWithin is eventually with a guard of its own, for work that
// grows with a count (a thousand connections accepted under the race
// detector, on a loaded machine, can take longer than settle).
func eventuallyWithin(t testing.TB, guard time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if !pollFor(guard, cond) {
		_, state := cond()
		t.Fatalf("%s: still not true after %v: %s", what, guard, state)
	}
}

// poll is eventually without failing: it reports whether cond came true.
func poll(cond func() (bool, string)) bool { return pollFor(settle, cond) }

func pollFor(guard time.Duration, cond func() (bool, string)) bool {
	deadline := time.Now().Add(guard)
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

// daemon is one vpnd process running in its own network namespace,
// started, checked when the test ends, and stopped by vpndtest: the
// embedded Env is that of the vpnd now running (nil before launch), so
// that its methods (Dial, ExpectLog, ExpectLeftovers, Leftovers...) are
// the daemon's. The fields are the test suite's own view of it.
type daemon struct {
	*vpndtest.Env

	t      testing.TB
	ns     string
	dir    string // 0755 temp dir holding the socket and policy file
	sock   string
	prefix []string
	pid    int
	cmd    *exec.Cmd
	stderr *syncBuffer // a copy of vpnd's output
	sim    bool        // `vpnd --sim`, as simUID (backend_test.go)

	// What this vpnd was told to use (the defaults unless a test
	// passes the flags).
	ifname   string
	table    int
	priority int
	mark     uint32

	accountsPath string

	// What the check when the test ends expects of vpnd (vpndtest's
	// baseline, which a test may change before it ends): its /proc/PID/fd
	// targets and goroutines (SIGUSR1 stats) right after start.
	baseFDs        []string
	baseGoroutines int
	leakCheck      bool // check, when the test ends, that vpnd is idle again
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
// --protect-mark, and --nft-table vpnd_IFNAME, and makes the leak checks
// look for them.
func withKernelNames(ifname string, table, priority int, mark uint32) daemonOpt {
	return func(o *daemonOpts) {
		o.ifname, o.table, o.priority, o.mark = ifname, table, priority, mark
		o.flags = append(o.flags, "--ifname", ifname, "--table", fmt.Sprint(table),
			"--rule-priority", fmt.Sprint(priority), "--protect-mark", fmt.Sprintf("%#x", mark),
			"--nft-table", "vpnd_"+strings.ReplaceAll(ifname, "-", "_"))
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
// until its socket accepts connections. When the test ends vpndtest checks
// for leftovers (links, rules, routes, fds, goroutines) while vpnd still
// runs, then stops it with SIGTERM and checks the exit status, the log, the
// namespace once more, and the socket file.
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
		leakCheck:  !o.noLeakCheck,
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
	return d
}

// launch starts vpnd in d.ns on d.sock with flags through vpndtest, which
// stops and checks it when the test ends (see startDaemon; the check that
// vpnd is idle again only with d.leakCheck), and waits until it serves.
func (d *daemon) launch(tb testing.TB, flags ...string) {
	tb.Helper()
	backend := vpndtest.Kernel()
	var wrapper []string
	if d.sim {
		backend, wrapper = vpndtest.Sim(), simPrefix()
	}
	args := []string{"--socket", d.sock}
	if !slices.Contains(flags, "--state-dir") {
		dir := stateDirFor(tb, d.ns)
		if d.sim {
			forSim(tb, dir)
		}
		args = append(args, "--state-dir", dir)
	}
	launch := testhooks.Launch{
		Namespace:  d.ns,
		Wrapper:    append(wrapper, d.prefix...),
		ExtraFiles: d.extraFiles,
		Output:     d.stderr,
		Started: func(p testhooks.Process) {
			d.cmd, d.pid = p.Cmd, p.Cmd.Process.Pid
			go func() {
				<-p.Exited
				d.waitErr = p.WaitErr()
				close(d.exitedCh)
			}()
		},
		NoIdleCheck: !d.leakCheck,
	}
	if d.ready != nil {
		launch.Ready = func() error { d.ready(tb, d); return nil }
	}
	// After vpndtest's own end-of-test checks: the socket file.
	tb.Cleanup(func() { d.stop(tb) })
	d.Env = vpndtest.New(tb, backend, vpndtest.Flags(append(args, flags...)...), vpndtest.Environ(d.env...),
		testhooks.Option(launch).(vpndtest.Option))
	d.baseFDs, _ = testhooks.Baseline(d.Env)
	d.baseGoroutines = d.goroutines(tb)
	// Before vpndtest's checks: the baseline as the test left it.
	tb.Cleanup(func() { testhooks.SetBaseline(d.Env, d.baseFDs, d.baseGoroutines) })
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
	fds, err := testhooks.FDs(d.Env)
	if err != nil {
		t.Fatal(err)
	}
	return fds
}

// fdCount is len(/proc/PID/fd).
func (d *daemon) fdCount(t testing.TB) int { return len(d.fdTargets(t)) }

// goroutines asks vpnd for its goroutine count: SIGUSR1 makes it log a
// "runtime stats" line, and the newest one is read from its log.
func (d *daemon) goroutines(t testing.TB) int {
	t.Helper()
	n, err := testhooks.Goroutines(d.Env)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// stableFDs waits until vpnd's descriptor list stops changing (the
// readiness probe's connection is closed asynchronously) and returns it.
func (d *daemon) stableFDs(t testing.TB) []string {
	t.Helper()
	fds, err := testhooks.StableFDs(d.Env)
	if err != nil {
		t.Fatal(err)
	}
	return fds
}

// leftovers describes what vpnd's VPN left in its namespace: its link,
// rules at its priority, routes in its table (lockdown's rules and
// firewall are not the VPN's).
func (d *daemon) leftovers(t testing.TB) []string {
	t.Helper()
	return nsLeftovers(t, d.ns, d.ifname, d.table, d.priority)
}

func nsLeftovers(t testing.TB, ns, ifname string, table, priority int) []string {
	t.Helper()
	probs, err := testhooks.Leftovers(ns, ifname, table, priority, true)
	if err != nil {
		t.Fatal(err)
	}
	return probs
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
// exit status 0, socket file removed, nothing left in the namespace, no
// unexpected error in the log. It is idempotent; tests that stop vpnd
// themselves call it directly.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	if d.stopped || d.Env == nil {
		return
	}
	d.stopped = true
	d.Env.Stop(t)
	if _, err := os.Lstat(d.sock); !d.socketStays && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file %s still exists after vpnd exited (lstat: %v)", d.sock, err)
	}
}

// kill ends vpnd with SIGKILL, leaving whatever it had set up, and turns
// the end-of-test checks off.
func (d *daemon) kill(t testing.TB) {
	t.Helper()
	d.stopped = true
	d.Env.Kill(t)
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
