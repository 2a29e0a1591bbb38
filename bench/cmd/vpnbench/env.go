package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// bench is one run: its temporary directory, its two network namespaces
// (vpnd's and the baselines'), vpnd, the echo server and the workers.
// Nothing of it touches the host's network namespace: every process that
// creates links, routes or rules runs inside a namespace made here, and
// close deletes the namespaces with all they hold.
type bench struct {
	opts     options
	dir      string // temporary, 0755 so that the client uids reach the sockets
	self     string // a copy of this executable that every uid may run
	vpndBin  string
	nsVPND   string
	nsBase   string
	sock     string // vpnd's socket
	echoSock string

	vpnd     *exec.Cmd
	vpndPid  int
	vpndDone chan struct{}
	echo     *exec.Cmd
	echoPid  int
	echoDone chan struct{}

	owner *worker // the VPN app: uid ownerUID, in vpnd's namespace
	probe *worker // another NORMAL user: uid otherUID, in vpnd's namespace
	root  *worker // root in vpnd's namespace: the flush, the load, idle connections
	base  *worker // root in the baselines' namespace: the kernel-work baselines

	workers   []*worker
	closeOnce sync.Once
}

func (b *bench) logf(format string, args ...any) {
	if !b.opts.quiet {
		fmt.Fprintf(os.Stderr, "vpnbench: "+format+"\n", args...)
	}
}

// setUp prepares everything but the echo server.
func (b *bench) setUp() error {
	for _, tool := range []string{"ip", "setpriv", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (iproute2, util-linux and nftables are needed): %w", tool, err)
		}
	}
	dir, err := os.MkdirTemp("", "vpnbench-")
	if err != nil {
		return err
	}
	b.dir = dir
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	// Under `go run` the executable sits in a directory only root may
	// enter; the workers that run as other uids need a copy they can run.
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	b.self = filepath.Join(dir, "vpnbench")
	if err := copyFile(exe, b.self, 0o755); err != nil {
		return err
	}
	if b.opts.vpnd != "" {
		b.vpndBin = filepath.Join(dir, "vpnd")
		if err := copyFile(b.opts.vpnd, b.vpndBin, 0o755); err != nil {
			return err
		}
	} else if err := b.buildVPND(); err != nil {
		return err
	}

	suffix := make([]byte, 4)
	rand.Read(suffix)
	name := "vpnbench-" + hex.EncodeToString(suffix)
	for _, ns := range []*string{&b.nsVPND, &b.nsBase} {
		n := name + "-v"
		if ns == &b.nsBase {
			n = name + "-b"
		}
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add %s: %v: %s", n, err, out)
		}
		*ns = n
		if out, err := exec.Command("ip", "-n", n, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			return fmt.Errorf("lo up in %s: %v: %s", n, err, out)
		}
	}
	if err := b.startVPND(); err != nil {
		return err
	}
	uidArgs := func(uid int) []string {
		return []string{"setpriv", "--reuid", itoa(uid), "--regid", itoa(uid), "--clear-groups"}
	}
	for _, w := range []struct {
		dst    **worker
		name   string
		ns     string
		prefix []string
	}{
		{&b.owner, "owner", b.nsVPND, uidArgs(b.opts.ownerUID)},
		{&b.probe, "probe", b.nsVPND, uidArgs(b.opts.otherUID)},
		{&b.root, "root", b.nsVPND, nil},
		{&b.base, "base", b.nsBase, nil},
	} {
		wk, err := b.startWorker(w.name, w.ns, w.prefix)
		if err != nil {
			return err
		}
		*w.dst = wk
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// vpndModule is the module path of the checkout whose vpnd is measured.
const vpndModule = "github.com/vpnd/vpnd"

// moduleRoot is the root of the vpnd checkout that the current directory
// belongs to: vpnbench's own module sits inside it (bench/), so the
// search goes up from module to enclosing module until it finds vpnd's.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		cmd := exec.Command("go", "list", "-m", "-f", "{{.Path}} {{.Dir}}")
		cmd.Dir = dir
		out, err := cmd.Output()
		path, root, ok := strings.Cut(strings.TrimSpace(string(out)), " ")
		if err != nil || !ok || filepath.Dir(root) == root {
			return "", fmt.Errorf("run vpnbench inside the vpnd checkout (no module %s at or above %s: %v)", vpndModule, dir, err)
		}
		if path == vpndModule {
			return root, nil
		}
		dir = filepath.Dir(root)
	}
}

// buildVPND builds the vpnd of this checkout into the temporary directory.
func (b *bench) buildVPND() error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	b.vpndBin = filepath.Join(b.dir, "vpnd")
	b.logf("building vpnd from %s", root)
	cmd := exec.Command("go", "build", "-o", b.vpndBin, "./cmd/vpnd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/vpnd: %v: %s", err, out)
	}
	return nil
}

// startVPND runs vpnd in its namespace with its defaults, but for the
// socket, the state directory and an explicit account policy (root is
// ADMIN, everyone else NORMAL, whatever groups the host gives the uids).
func (b *bench) startVPND() error {
	b.sock = filepath.Join(b.dir, "vpnd.sock")
	b.echoSock = filepath.Join(b.dir, "echo.sock")
	accounts := filepath.Join(b.dir, "accounts.json")
	if err := os.WriteFile(accounts, []byte(`{"default":"normal","users":{"root":"admin"}}`), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(b.dir, "vpnd.log"))
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", b.nsVPND, b.vpndBin, "--socket", b.sock,
		"--state-dir", filepath.Join(b.dir, "state"), "--accounts", accounts, "--log-format", "json"}
	// A vpnd with DNS backends would look for systemd-resolved on the
	// host's system bus: the benchmark leaves the host's D-Bus alone.
	if help, _ := exec.Command(b.vpndBin, "--help").CombinedOutput(); bytes.Contains(help, []byte("dns-backend")) {
		args = append(args, "--dns-backend", "none")
	}
	// `ip netns exec` execs vpnd, so the child's pid is vpnd's.
	b.vpnd = exec.Command("ip", args...)
	b.vpnd.Stdout, b.vpnd.Stderr = logf, logf
	// gctrace makes the Go runtime log one line per GC cycle to stderr
	// and changes nothing else: the RSS scenario reads it to measure at
	// the same point of the GC cycle every time (see gcCount).
	b.vpnd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	if err := b.vpnd.Start(); err != nil {
		logf.Close()
		return err
	}
	logf.Close()
	b.vpndPid = b.vpnd.Process.Pid
	b.vpndDone = make(chan struct{})
	go func() { b.vpnd.Wait(); close(b.vpndDone) }()
	if err := waitSocket(b.sock, b.vpndDone, 20*time.Second); err != nil {
		return fmt.Errorf("vpnd: %w\n%s", err, b.vpndLog())
	}
	return nil
}

func (b *bench) vpndLog() string {
	out, _ := os.ReadFile(filepath.Join(b.dir, "vpnd.log"))
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return string(out)
}

// waitSocket waits until path accepts a connection.
func waitSocket(path string, exited <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited at start")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v", path, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startEcho starts the echo baseline server in vpnd's namespace, answering
// status with statusResult.
func (b *bench) startEcho(statusResult []byte) error {
	b.stopEcho()
	file := filepath.Join(b.dir, "status-result.json")
	if err := os.WriteFile(file, statusResult, 0o644); err != nil {
		return err
	}
	b.echo = exec.Command("ip", "netns", "exec", b.nsVPND, b.self, "-echo", b.echoSock, file)
	logf, err := os.Create(filepath.Join(b.dir, "echo.log"))
	if err != nil {
		return err
	}
	b.echo.Stdout, b.echo.Stderr = logf, logf
	b.echo.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	err = b.echo.Start()
	logf.Close()
	if err != nil {
		return err
	}
	b.echoPid = b.echo.Process.Pid
	b.echoDone = make(chan struct{})
	cmd, done := b.echo, b.echoDone
	go func() { cmd.Wait(); close(done) }()
	return waitSocket(b.echoSock, b.echoDone, 10*time.Second)
}

func (b *bench) stopEcho() {
	if b.echo == nil {
		return
	}
	b.echo.Process.Kill()
	<-b.echoDone
	b.echo = nil
	os.Remove(b.echoSock)
}

// close stops every process and deletes the namespaces and the directory.
func (b *bench) close() {
	b.closeOnce.Do(func() {
		for _, w := range b.workers {
			w.stop()
		}
		b.stopEcho()
		if b.vpnd != nil {
			b.vpnd.Process.Signal(syscall.SIGTERM)
			select {
			case <-b.vpndDone:
			case <-time.After(10 * time.Second):
				b.vpnd.Process.Kill()
				<-b.vpndDone
			}
		}
		for _, ns := range []string{b.nsVPND, b.nsBase} {
			if ns != "" {
				if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
					fmt.Fprintf(os.Stderr, "vpnbench: ip netns del %s: %v: %s\n", ns, err, out)
				}
			}
		}
		if b.dir != "" && !b.opts.keep {
			os.RemoveAll(b.dir)
		}
	})
}

// worker is the main process's handle on a worker process.
type worker struct {
	name   string
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	stderr *lockedWriter
	done   chan struct{}
	mu     sync.Mutex
}

// startWorker runs this program as a worker in namespace ns, through
// prefix (setpriv for another uid), which execs it.
func (b *bench) startWorker(name, ns string, prefix []string) (*worker, error) {
	args := append([]string{"netns", "exec", ns}, prefix...)
	args = append(args, b.self, "-worker")
	w := &worker{name: name, cmd: exec.Command("ip", args...), stderr: &lockedWriter{w: &bytes.Buffer{}}, done: make(chan struct{})}
	w.cmd.Dir = b.dir
	w.cmd.Stderr = w.stderr
	in, err := w.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := w.cmd.Start(); err != nil {
		return nil, fmt.Errorf("worker %s: %w", name, err)
	}
	w.in, w.out = in, bufio.NewReaderSize(out, 1<<20)
	go func() { w.cmd.Wait(); close(w.done) }()
	b.workers = append(b.workers, w)
	return w, nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// callTimeout bounds one worker request; it is a hang guard, far above
// anything a request takes.
const callTimeout = 5 * time.Minute

// call sends req and returns the worker's answer.
func (w *worker) call(req workReq) (workResp, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var resp workResp
	line, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	timer := time.AfterFunc(callTimeout, func() { w.cmd.Process.Kill() })
	defer timer.Stop()
	if _, err := w.in.Write(append(line, '\n')); err != nil {
		return resp, fmt.Errorf("worker %s: %s: %w%s", w.name, req.Op, err, w.tail())
	}
	out, err := w.out.ReadBytes('\n')
	if err != nil {
		return resp, fmt.Errorf("worker %s: %s: %w (killed after %v?)%s", w.name, req.Op, err, callTimeout, w.tail())
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		return resp, fmt.Errorf("worker %s: %s: %w", w.name, req.Op, err)
	}
	if resp.Err != "" {
		return resp, fmt.Errorf("worker %s: %s: %s", w.name, req.Op, resp.Err)
	}
	return resp, nil
}

func (w *worker) tail() string {
	w.stderr.mu.Lock()
	s := w.stderr.w.(*bytes.Buffer).String()
	w.stderr.mu.Unlock()
	if s != "" {
		return "\n" + s
	}
	return ""
}

// stop ends the worker: EOF on its stdin, then a kill.
func (w *worker) stop() {
	w.in.Close()
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		w.cmd.Process.Kill()
		<-w.done
	}
}

// procStatus reads fields (in kB) of /proc/PID/status.
func procStatus(pid int, fields ...string) (map[string]int64, error) {
	out, err := os.ReadFile("/proc/" + itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	vals := map[string]int64{}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, f := range fields {
			if k == f {
				n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err == nil {
					vals[k] = n
				}
			}
		}
	}
	return vals, nil
}

// fdCount is the number of open fds of pid.
func fdCount(pid int) int {
	ents, err := os.ReadDir("/proc/" + itoa(pid) + "/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}
