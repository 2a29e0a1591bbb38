package vpndtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vpnd/vpnd/internal/testhooks"
)

// settle bounds how long the end-of-test checks wait for vpnd to become
// idle (teardown after the last client went is asynchronous). It is a
// hang guard, not a timing assertion.
const settle = 10 * time.Second

// idleWait is how long the end-of-test check waits for vpnd to be idle:
// settle, shorter in vpndtest's own tests of a check that must fail.
var idleWait = settle

// hangGuard bounds vpnd's start-up and its exit after SIGTERM. The
// machine may be busy, so it is generous; it only stops a hung test.
const hangGuard = 30 * time.Second

// ErrUnavailable is what Start's error wraps when the backend asked for
// cannot run here (the kernel backend without root, for example). New
// skips the test instead.
var ErrUnavailable = errors.New("vpndtest: backend unavailable")

// An Option changes how New and Start run vpnd.
type Option struct{ apply func(*settings) }

type backend int

const (
	backendAuto backend = iota
	backendKernel
	backendSim
)

type settings struct {
	backend     backend
	accounts    string
	hasAccounts bool
	flags       []string
	env         []string
	peer        bool
	launch      testhooks.Launch
}

// Kernel asks for the kernel backend: vpnd as root in a network namespace
// of the test's own. Where that cannot run, New skips the test and says
// why (Start returns an error wrapping ErrUnavailable).
func Kernel() Option { return Option{func(s *settings) { s.backend = backendKernel }} }

// Sim asks for the sim backend: `vpnd --sim` as the calling user, which
// needs no privilege and changes nothing in the kernel.
func Sim() Option { return Option{func(s *settings) { s.backend = backendSim }} }

// Accounts gives vpnd this account policy, as the file of vpnd's
// --accounts flag would (see docs/security.md). Without it vpnd uses its
// embedded policy: uid 0 ADMIN, nobody and the group guests GUEST,
// everyone else NORMAL.
func Accounts(policyJSON string) Option {
	return Option{func(s *settings) { s.accounts, s.hasAccounts = policyJSON, true }}
}

// Flags passes extra flags to vpnd, after those vpndtest gives it
// (--socket and --state-dir in a temporary directory, --log-format json,
// --log-level debug, and --sim under the sim backend), so that they
// override them. vpndtest reads --socket, --ifname, --table and
// --rule-priority from them to know what to check. Keep --log-format json
// and --log-level at info or below: the checks read vpnd's log.
func Flags(args ...string) Option {
	return Option{func(s *settings) { s.flags = append(s.flags, args...) }}
}

// Environ adds KEY=VALUE entries to vpnd's environment. vpnd otherwise
// gets the test's environment, without systemd's NOTIFY_SOCKET and
// LISTEN_* variables, and with DBUS_SYSTEM_BUS_ADDRESS naming a bus that
// does not exist, so that no test reaches the host's system bus (and its
// systemd-resolved). A test with a D-Bus of its own passes it here.
func Environ(kv ...string) Option {
	return Option{func(s *settings) { s.env = append(s.env, kv...) }}
}

// Peer gives the test a peer host for its app's server side: see the
// package documentation, PeerAddr and PeerCommand.
func Peer() Option { return Option{func(s *settings) { s.peer = true }} }

func init() {
	testhooks.Option = func(l testhooks.Launch) any { return Option{func(s *settings) { s.launch = l }} }
}

// Env is one vpnd started for a test, with its namespace and its peer.
type Env struct {
	s       settings
	sim     bool
	ns      string // vpnd's namespace under /run/netns; "" for the caller's
	ownNS   bool   // made (and deleted) by vpndtest
	peerNS  string // the peer's namespace, kernel backend with Peer
	dir     string // temporary: socket, state, policy
	sock    string
	argv    []string // how vpnd is started, wrapper and vpnd included
	names   names
	cleanup []func() error // run by Close, last first

	mu      sync.Mutex // guards what follows
	proc    *process   // the vpnd now, or the last one
	logs    []*logBuffer
	expLog  [][]string
	expLeft map[Kind]bool
	base    baseline
	closed  bool
}

// baseline is what vpnd had right after start, which the end-of-test
// check expects again, and what the caller's namespace held before vpnd
// started (sim backend without a namespace of its own).
type baseline struct {
	fds        []string
	goroutines int
	before     []Leftover
}

// names are the kernel names vpnd was told to use.
type names struct {
	ifname   string
	table    int
	priority int
}

// New starts a vpnd of its own for this test and stops it in t.Cleanup,
// with the checks described in the package documentation. The kernel
// backend runs vpnd in a fresh network namespace (root and /dev/net/tun
// needed, else the test is skipped); the sim backend runs `vpnd --sim` as
// the calling user. Without an option: kernel when possible, sim
// otherwise (or as VPNDTEST_BACKEND says).
func New(t testing.TB, opts ...Option) *Env {
	t.Helper()
	e, err := Start(opts...)
	if errors.Is(err, ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("vpnd's output:\n%s", e.allLogs())
		}
	})
	return e
}

// Start is New without a test: it starts vpnd and returns once vpnd
// serves. The caller must call Close.
func Start(opts ...Option) (*Env, error) {
	var s settings
	for _, o := range opts {
		o.apply(&s)
	}
	sim, err := s.pickBackend()
	if err != nil {
		return nil, err
	}
	e := &Env{s: s, sim: sim, expLeft: map[Kind]bool{}}
	if err := e.prepare(); err != nil {
		return nil, errors.Join(err, e.runCleanup())
	}
	if err := e.launch(); err != nil {
		e.abort()
		return nil, errors.Join(err, e.runCleanup())
	}
	return e, nil
}

// abort kills a vpnd that failed to start, without the end checks.
func (e *Env) abort() {
	e.mu.Lock()
	p := e.proc
	e.closed = true
	e.mu.Unlock()
	if p == nil {
		return
	}
	p.stopped = true
	if !p.hasExited() {
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// pickBackend says whether vpnd is simulated, or why the kernel backend
// the caller asked for cannot run.
func (s *settings) pickBackend() (sim bool, err error) {
	if hasFlag(s.flags, "--sim") {
		return true, nil
	}
	b := s.backend
	if b == backendAuto {
		switch v := os.Getenv("VPNDTEST_BACKEND"); v {
		case "":
		case "kernel":
			b = backendKernel
		case "sim":
			b = backendSim
		default:
			return false, fmt.Errorf("vpndtest: VPNDTEST_BACKEND=%q: want kernel or sim", v)
		}
	}
	switch b {
	case backendSim:
		return true, nil
	case backendKernel:
		if why := kernelUnavailable(); why != "" {
			return false, fmt.Errorf("%w: the kernel backend needs %s", ErrUnavailable, why)
		}
		return false, nil
	}
	return kernelUnavailable() != "", nil
}

// kernelUnavailable says what the kernel backend lacks here, "" if nothing.
func kernelUnavailable() string {
	if os.Geteuid() != 0 {
		return "root (network namespaces, other uids)"
	}
	if st, err := os.Stat("/dev/net/tun"); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return "/dev/net/tun"
	}
	for _, prog := range []string{"ip", "setpriv"} {
		if _, err := exec.LookPath(prog); err != nil {
			return prog + " in PATH"
		}
	}
	return ""
}

// prepare makes the temporary directory, the namespaces and the peer, and
// works out vpnd's command line.
func (e *Env) prepare() error {
	dir, err := os.MkdirTemp("", "vpndtest-")
	if err != nil {
		return err
	}
	e.dir = dir
	e.cleanup = append(e.cleanup, func() error { return os.RemoveAll(dir) })
	// Other uids must reach the socket (Dial, Command).
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	switch {
	case e.s.launch.Namespace != "":
		e.ns = e.s.launch.Namespace
	case !e.sim || (os.Geteuid() == 0 && haveIP()):
		// A simulated vpnd changes nothing in the kernel, but as root it
		// gets a namespace all the same: the host's is never at stake.
		if e.ns, err = e.newNamespace("vpndtest-" + randomHex(6)); err != nil {
			return err
		}
		e.ownNS = true
	}
	if e.s.peer && !e.sim {
		if err := e.addPeer(); err != nil {
			return err
		}
	}

	bin, err := binary()
	if err != nil {
		return err
	}
	flags := e.s.flags
	e.sock = flagValue(flags, "--socket", filepath.Join(dir, "vpnd.sock"))
	e.names = names{
		ifname:   flagValue(flags, "--ifname", "vpn-tun"),
		table:    atoiOr(flagValue(flags, "--table", ""), 98),
		priority: atoiOr(flagValue(flags, "--rule-priority", ""), 10000),
	}
	args := []string{bin, "--socket", e.sock, "--log-format", "json", "--log-level", "debug"}
	if !hasFlag(flags, "--state-dir") {
		state := filepath.Join(dir, "state")
		if err := os.Mkdir(state, 0o700); err != nil {
			return err
		}
		args = append(args, "--state-dir", state)
	}
	if e.sim && !hasFlag(flags, "--sim") {
		args = append(args, "--sim")
	}
	if e.s.hasAccounts {
		p := filepath.Join(dir, "accounts.json")
		if err := os.WriteFile(p, []byte(e.s.accounts), 0o644); err != nil {
			return err
		}
		args = append(args, "--accounts", p)
	}
	args = append(args, flags...)
	if e.ns != "" {
		e.argv = append(e.argv, "ip", "netns", "exec", e.ns)
	}
	e.argv = append(e.argv, e.s.launch.Wrapper...)
	e.argv = append(e.argv, args...)
	return nil
}

// Close stops vpnd if it still runs, with the checks of the package
// documentation, removes the namespaces and the temporary directory, and
// returns what the checks found. New calls it when the test ends; after
// Start, the caller does. Calls after the first return nil.
func (e *Env) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	p := e.proc
	e.mu.Unlock()
	var errs []error
	if p != nil && !p.stopped {
		if !p.hasExited() && !e.s.launch.NoIdleCheck {
			errs = append(errs, e.checkIdle())
		}
		errs = append(errs, e.stop(p, false))
	}
	errs = append(errs, e.runCleanup())
	return errors.Join(errs...)
}

func (e *Env) runCleanup() error {
	var errs []error
	for i := len(e.cleanup) - 1; i >= 0; i-- {
		errs = append(errs, e.cleanup[i]())
	}
	e.cleanup = nil
	return errors.Join(errs...)
}

// Simulated reports whether vpnd runs with --sim.
func (e *Env) Simulated() bool { return e.sim }

// Socket returns vpnd's socket path.
func (e *Env) Socket() string { return e.sock }

// Namespace returns the name of vpnd's network namespace (for `ip -n`,
// `ip netns exec`), or "" where vpnd runs in the caller's (the sim
// backend without root).
func (e *Env) Namespace() string { return e.ns }

// PID returns the process id of the vpnd now running (the last one, once
// it has exited), for signals: SIGHUP makes vpnd reload its account
// policy.
func (e *Env) PID() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.proc.cmd.Process.Pid
}

// Log returns what the vpnd now running has written so far: one JSON
// object a line.
func (e *Env) Log() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.proc.log.String()
}

func (e *Env) allLogs() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for i, l := range e.logs {
		if i > 0 {
			fmt.Fprintf(&b, "--- vpnd restarted ---\n")
		}
		b.WriteString(l.String())
	}
	return b.String()
}

// SetAccounts replaces vpnd's account policy with policyJSON and waits
// until vpnd has reloaded it (SIGHUP), as an administrator editing the
// --accounts file would. vpnd keeps the policy in force if the new one is
// bad, and logs an error-level line: a test that means to do that declares
// it with ExpectLog("policy reload failed"). Only a vpnd started with the
// Accounts option reads a policy file.
func (e *Env) SetAccounts(t testing.TB, policyJSON string) {
	t.Helper()
	if !e.s.hasAccounts {
		t.Fatal("vpndtest: SetAccounts needs the Accounts option")
	}
	if err := os.WriteFile(filepath.Join(e.dir, "accounts.json"), []byte(policyJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	p := e.current()
	done := func() int { return p.log.count(`"policy reloaded"`) + p.log.count(`"policy reload failed`) }
	before := done()
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("vpndtest: SIGHUP to vpnd: %v", err)
	}
	if !poll(settle, func() bool { return done() > before }) {
		t.Fatalf("vpndtest: vpnd did not reload its policy within %v of SIGHUP", settle)
	}
}

// ExpectLog declares that vpnd may log an error-level line that contains
// every one of subs, as many times as it likes: the check when vpnd stops
// fails on every other error-level line.
func (e *Env) ExpectLog(subs ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.expLog = append(e.expLog, subs)
}

// ExpectLeftovers declares objects of these kinds that vpnd may leave in
// its namespace when it stops. A test that leaves lockdown on, on purpose,
// declares LockdownRule and Firewall: vpnd keeps lockdown's rules and
// firewall in force after it exits, as it should.
func (e *Env) ExpectLeftovers(kinds ...Kind) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range kinds {
		e.expLeft[k] = true
	}
}

// Rebase records vpnd's descriptors and goroutine count now as what the
// end-of-test check expects. Call it once vpnd is idle after a change that
// the test keeps on purpose and that makes vpnd hold more (lockdown left
// on keeps a goroutine busy on the kernel backend, for one).
func (e *Env) Rebase(t testing.TB) {
	t.Helper()
	fds, err := e.stableFDs()
	if err != nil {
		t.Fatal(err)
	}
	n, err := e.goroutines()
	if err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.base.fds, e.base.goroutines = fds, n
	e.mu.Unlock()
}

// Stop stops vpnd now with SIGTERM and fails the test if it does not exit
// with status 0, if it leaves anything in its namespace, or if its log
// has an error-level line the test did not declare. Use it to test what an
// app does when vpnd goes away; the end of the test then checks nothing
// more of this vpnd. A vpnd that already exited (a signal the test sent)
// is checked all the same.
func (e *Env) Stop(t testing.TB) {
	t.Helper()
	e.mu.Lock()
	p := e.proc
	e.mu.Unlock()
	if p.stopped {
		return
	}
	if err := e.stop(p, false); err != nil {
		t.Error(err)
	}
}

// Kill ends vpnd with SIGKILL, leaving whatever it had set up in the
// kernel, as a crash would; the next vpnd (Restart) removes it when it
// starts.
func (e *Env) Kill(t testing.TB) {
	t.Helper()
	e.mu.Lock()
	p := e.proc
	e.mu.Unlock()
	if p.stopped {
		return
	}
	p.stopped = true
	if !p.hasExited() {
		p.cmd.Process.Kill()
	}
	if err := p.wait(); err != nil {
		t.Error(err)
	}
	if err := e.checkLog(p); err != nil {
		t.Error(err)
	}
}

// Restart stops vpnd as Stop does (unless it was killed or stopped) and
// starts a new one in the same namespace, with the same socket, state
// directory, policy and flags: lockdown, for one, outlives the restart.
func (e *Env) Restart(t testing.TB) {
	t.Helper()
	if p := e.current(); !p.stopped {
		// Lockdown's rules and firewall stay for the next vpnd.
		if err := e.stop(p, true); err != nil {
			t.Error(err)
		}
	}
	if err := e.launch(); err != nil {
		e.abort()
		t.Fatal(err)
	}
}

// stop ends p with SIGTERM and checks how it went. Before a restart,
// only the VPN's objects must be gone.
func (e *Env) stop(p *process, restart bool) error {
	p.stopped = true
	if !p.hasExited() {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	errs := []error{p.wait()}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		errs = append(errs, fmt.Errorf("vpnd exited with status %d (%v), want 0", code, p.err))
	}
	if left, err := e.unexpectedLeftovers(restart); err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		errs = append(errs, fmt.Errorf("vpnd left in its namespace after it exited: %s%s", joinLeftovers(left), e.lockdownHint(left)))
	}
	errs = append(errs, e.checkLog(p))
	return errors.Join(errs...)
}

// lockdownHint explains lockdown leftovers.
func (e *Env) lockdownHint(left []Leftover) string {
	for _, l := range left {
		if l.Kind == LockdownRule || l.Kind == Firewall {
			return " (lockdown was left on? Turn it off before the test ends, or declare it with ExpectLeftovers(vpndtest.LockdownRule, vpndtest.Firewall))"
		}
	}
	return ""
}

// checkIdle is the leak check at the end of the test, while vpnd still
// runs: once the test's clients are gone, the VPN's link, rules and routes
// must go, and vpnd must be back to its descriptors and goroutines after
// start.
func (e *Env) checkIdle() error {
	var state []string
	ok := poll(idleWait, func() bool {
		state = nil
		left, err := e.unexpectedLeftovers(true)
		if err != nil {
			state = append(state, err.Error())
		} else if len(left) > 0 {
			state = append(state, "still in the namespace: "+joinLeftovers(left))
		}
		e.mu.Lock()
		base := e.base
		e.mu.Unlock()
		if n, err := e.goroutines(); err != nil {
			state = append(state, err.Error())
		} else if n != base.goroutines {
			state = append(state, fmt.Sprintf("vpnd has %d goroutines, had %d after start", n, base.goroutines))
		}
		if fds, err := e.fds(); err != nil {
			state = append(state, err.Error())
		} else if !slices.Equal(fds, base.fds) {
			state = append(state, fmt.Sprintf("vpnd has %d descriptors, had %d after start; now %q, then %q",
				len(fds), len(base.fds), fds, base.fds))
		}
		return len(state) == 0
	})
	if ok {
		return nil
	}
	return fmt.Errorf("vpnd not idle %v after the test ended (a client or VPN still open?): %s", idleWait, strings.Join(state, "; "))
}

// unexpectedLeftovers lists what of vpnd's is in its namespace and may not
// be: the VPN's objects only (vpnOnly, while vpnd runs), or everything
// that the test did not declare with ExpectLeftovers. In the caller's own
// namespace, what was there before vpnd started does not count.
func (e *Env) unexpectedLeftovers(vpnOnly bool) ([]Leftover, error) {
	left, err := leftoversIn(e.ns, e.names, vpnOnly)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Leftover
	for _, l := range left {
		if e.expLeft[l.Kind] || slices.Contains(e.base.before, l) {
			continue
		}
		out = append(out, l)
	}
	return out, nil
}

func joinLeftovers(ls []Leftover) string {
	s := make([]string, len(ls))
	for i, l := range ls {
		s[i] = l.String()
	}
	return strings.Join(s, "; ")
}

// poll calls cond with backoff until it holds or limit passes, and
// reports whether it held.
func poll(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	wait := 5 * time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// hasFlag reports whether vpnd's flags include name, as "--name",
// "--name=..." or "--name value".
func hasFlag(flags []string, name string) bool {
	for _, f := range flags {
		if f == name || strings.HasPrefix(f, name+"=") {
			return true
		}
	}
	return false
}

// flagValue returns the last value given to flag name, or def.
func flagValue(flags []string, name, def string) string {
	v := def
	for i, f := range flags {
		switch {
		case f == name && i+1 < len(flags):
			v = flags[i+1]
		case strings.HasPrefix(f, name+"="):
			v = strings.TrimPrefix(f, name+"=")
		}
	}
	return v
}

func atoiOr(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}
