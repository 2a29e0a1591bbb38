package vpndtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/testhooks"
)

// noBus is the system bus every vpnd gets unless the test gives one: a
// path where no bus is, so that vpnd's automatic DNS backend never finds
// the host's systemd-resolved.
const noBus = "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent/vpndtest-no-system-bus"

// process is one run of vpnd.
type process struct {
	cmd     *exec.Cmd
	log     *logBuffer
	exited  chan struct{}
	err     error // what Wait returned; set before exited is closed
	stopped bool  // stopped or killed by vpndtest, and checked
}

func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// wait waits for p to exit; after hangGuard it kills it and says so.
func (p *process) wait() error {
	select {
	case <-p.exited:
		return nil
	case <-time.After(hangGuard):
		p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("vpnd did not exit within %v; killed", hangGuard)
	}
}

// launch starts vpnd with e.argv, waits until it serves and records the
// baseline of the end-of-test check.
func (e *Env) launch() error {
	cmd := exec.Command(e.argv[0], e.argv[1:]...)
	cmd.Env = append(vpndEnviron(), noBus)
	cmd.Env = append(cmd.Env, e.s.env...)
	log := &logBuffer{}
	var out io.Writer = log
	if e.s.launch.Output != nil {
		out = io.MultiWriter(log, e.s.launch.Output)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = e.s.launch.ExtraFiles
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start vpnd: %w", err)
	}
	p := &process{cmd: cmd, log: log, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	e.mu.Lock()
	e.proc = p
	e.logs = append(e.logs, log)
	e.mu.Unlock()
	if f := e.s.launch.Started; f != nil {
		f(testhooks.Process{Cmd: cmd, Exited: p.exited, WaitErr: func() error { return p.err }})
	}

	ready := e.waitServing
	if e.s.launch.Ready != nil {
		ready = e.s.launch.Ready
	}
	if err := ready(); err != nil {
		return err
	}
	if e.ns != "" {
		if err := e.checkNamespace(cmd.Process.Pid); err != nil {
			return err
		}
	}
	fds, err := e.stableFDs()
	if err != nil {
		return err
	}
	n, err := e.goroutines()
	if err != nil {
		return err
	}
	var before []Leftover
	if e.ns == "" {
		if before, err = leftoversIn("", e.names, false); err != nil {
			return err
		}
	}
	e.mu.Lock()
	e.base = baseline{fds: fds, goroutines: n, before: before}
	e.mu.Unlock()
	return nil
}

// vpndEnviron is the test's environment without what would make vpnd talk
// to the test's own service manager.
func vpndEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// waitServing waits until vpnd answers a status request. A connect alone
// is not enough: vpnd listens before its start-up sweep and serves after
// it.
func (e *Env) waitServing() error {
	p := e.current()
	deadline := time.Now().Add(hangGuard)
	wait := 5 * time.Millisecond
	for {
		if p.hasExited() {
			return fmt.Errorf("vpnd exited during start-up (%v):\n%s", p.err, p.log.String())
		}
		if answers(e.sock) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vpnd's socket %s does not answer %v after start:\n%s", e.sock, hangGuard, p.log.String())
		}
		time.Sleep(wait)
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// answers reports whether a status request on sock gets an answer.
func answers(sock string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	c, err := client.Dial(ctx, sock)
	if err != nil {
		return false
	}
	defer c.Close()
	_, err = c.Status(ctx)
	return err == nil
}

func (e *Env) current() *process {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.proc
}

// checkNamespace makes sure vpnd runs in e.ns and not in the test's own
// namespace: a guard for the rule that tests never touch the host's
// network. A vpnd found in the test's namespace is killed.
func (e *Env) checkNamespace(pid int) error {
	var vst, own, want unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &vst); err != nil {
		return fmt.Errorf("vpnd's network namespace: %w", err)
	}
	if err := unix.Stat("/proc/self/ns/net", &own); err != nil {
		return err
	}
	if err := unix.Stat(nsPath(e.ns), &want); err != nil {
		return err
	}
	if vst.Ino == own.Ino && vst.Dev == own.Dev {
		e.current().cmd.Process.Kill()
		return errors.New("vpnd runs in the test's own network namespace: killed")
	}
	if vst.Ino != want.Ino || vst.Dev != want.Dev {
		return fmt.Errorf("vpnd does not run in namespace %s", e.ns)
	}
	return nil
}

// fds lists what vpnd's descriptors point at, sorted.
func (e *Env) fds() ([]string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", e.current().cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("vpnd's descriptors: %w", err)
	}
	var out []string
	for _, ent := range ents {
		target, err := os.Readlink(filepath.Join(dir, ent.Name()))
		if err != nil {
			continue // closed while we looked
		}
		out = append(out, target)
	}
	slices.Sort(out)
	return out, nil
}

// stableFDs waits until vpnd's descriptor list stops changing (a client's
// connection is closed asynchronously) and returns it.
func (e *Env) stableFDs() ([]string, error) {
	prev, err := e.fds()
	if err != nil {
		return nil, err
	}
	for i, same := 0, 0; i < 100 && same < 3; i++ {
		time.Sleep(20 * time.Millisecond)
		cur, err := e.fds()
		if err != nil {
			return nil, err
		}
		if slices.Equal(cur, prev) {
			same++
		} else {
			same = 0
		}
		prev = cur
	}
	return prev, nil
}

// goroutines asks vpnd for its goroutine count: SIGUSR1 makes it log a
// "runtime stats" line, and the newest one is read from its log.
func (e *Env) goroutines() (int, error) {
	p := e.current()
	before := p.log.count(`"runtime stats"`)
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return 0, fmt.Errorf("ask vpnd for its runtime stats: %w", err)
	}
	var n int
	var perr error
	ok := poll(settle, func() bool {
		if p.log.count(`"runtime stats"`) <= before {
			return false
		}
		lines := p.log.lines()
		for i := len(lines) - 1; i >= 0; i-- {
			if strings.Contains(lines[i], `"runtime stats"`) {
				var st struct{ Goroutines int }
				perr = json.Unmarshal([]byte(lines[i]), &st)
				n = st.Goroutines
				return true
			}
		}
		return false
	})
	switch {
	case !ok:
		return 0, fmt.Errorf("vpnd logged no runtime stats within %v of SIGUSR1 (exited, or --log-level above info?)", settle)
	case perr != nil:
		return 0, fmt.Errorf("vpnd's runtime stats line: %w", perr)
	}
	return n, nil
}

// checkLog fails on every error-level line of p's log that the test did
// not declare with ExpectLog.
func (e *Env) checkLog(p *process) error {
	e.mu.Lock()
	expected := slices.Clone(e.expLog)
	e.mu.Unlock()
	var bad []string
	for _, line := range p.log.lines() {
		var entry struct{ Level string }
		if json.Unmarshal([]byte(line), &entry) != nil {
			continue
		}
		switch entry.Level {
		case "error", "dpanic", "panic", "fatal":
		default:
			continue
		}
		if !slices.ContainsFunc(expected, func(subs []string) bool { return containsAll(line, subs) }) {
			bad = append(bad, line)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("vpnd logged %d error-level line(s) the test did not declare with ExpectLog:\n%s", len(bad), strings.Join(bad, "\n"))
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// logBuffer collects vpnd's output from the goroutines of exec.Cmd.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) count(sub string) int { return strings.Count(l.String(), sub) }

func (l *logBuffer) lines() []string { return strings.Split(l.String(), "\n") }
