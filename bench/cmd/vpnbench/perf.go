package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// vpnd has no profiling endpoint and must not be changed to measure it, so
// what happens inside it is seen from outside with perf:
//
//   - its server-side setUp time, from the syscall tracepoints of its
//     threads: the recvmsg that returned the request line (the client
//     sends it in one sendmsg) to the sendmsg of the response on the same
//     socket (the one that carries the TUN fd). Tracepoints cost no
//     ptrace stop, unlike strace, so vpnd runs at nearly full speed;
//   - with -profile DIR, a CPU profile (perf record -g) of vpnd for each
//     scenario, to read with `perf report -i DIR/SCENARIO.perf.data`.

// perfRun is a perf record attached to a process.
type perfRun struct {
	cmd  *exec.Cmd
	file string
	out  bytes.Buffer
	done chan struct{}
}

// startPerf attaches perf record to pid with args (events, -g, ...). The
// events start disabled and are enabled through perf's control fifo, and
// startPerf returns once perf has acknowledged that: on a loaded machine
// perf may take long to attach, and a fixed sleep would lose events.
func startPerf(pid int, file string, args ...string) (*perfRun, error) {
	path, err := exec.LookPath("perf")
	if err != nil {
		return nil, fmt.Errorf("perf not found (linux-perf): %w", err)
	}
	ctlPath, ackPath := file+".ctl", file+".ack"
	for _, f := range []string{ctlPath, ackPath} {
		os.Remove(f)
		if err := unix.Mkfifo(f, 0o600); err != nil {
			return nil, fmt.Errorf("mkfifo %s: %w", f, err)
		}
	}
	all := append([]string{"record", "-q", "-o", file, "-p", strconv.Itoa(pid), "-D", "-1",
		"--control", "fifo:" + ctlPath + "," + ackPath}, args...)
	p := &perfRun{cmd: exec.Command(path, all...), file: file, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	// O_RDWR: opening either end does not wait for perf to open its own.
	ctl, err := os.OpenFile(ctlPath, os.O_RDWR, 0)
	if err != nil {
		p.kill()
		return nil, err
	}
	defer ctl.Close()
	ack, err := os.OpenFile(ackPath, os.O_RDWR, 0)
	if err != nil {
		p.kill()
		return nil, err
	}
	defer ack.Close()
	if _, err := ctl.WriteString("enable\n"); err != nil {
		p.kill()
		return nil, err
	}
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 16)
		n, err := ack.Read(buf)
		if err == nil && !strings.HasPrefix(string(buf[:n]), "ack") {
			err = fmt.Errorf("perf control answered %q", buf[:n])
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			p.kill()
			return nil, err
		}
	case <-p.done:
		return nil, fmt.Errorf("perf record exited at start: %s", strings.TrimSpace(p.out.String()))
	case <-time.After(30 * time.Second):
		p.kill()
		return nil, fmt.Errorf("perf record did not enable its events within 30 s: %s", strings.TrimSpace(p.out.String()))
	}
	return p, nil
}

func (p *perfRun) kill() {
	p.cmd.Process.Kill()
	<-p.done
	os.Remove(p.file + ".ctl")
	os.Remove(p.file + ".ack")
}

// stop ends the recording and waits until the file is written.
func (p *perfRun) stop() error {
	defer os.Remove(p.file + ".ctl")
	defer os.Remove(p.file + ".ack")
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("perf record did not stop on SIGINT: %s", p.out.String())
	}
	return nil
}

// serverTraceEvents are the tracepoints serverTimes needs.
var serverTraceEvents = []string{"-k", "CLOCK_MONOTONIC",
	"-e", "syscalls:sys_enter_recvmsg,syscalls:sys_exit_recvmsg,syscalls:sys_enter_sendmsg,syscalls:sys_exit_sendmsg"}

// serverTimes reads a recording made with serverTraceEvents and returns
// the server-side time (ms) of every request reqLen bytes long.
func serverTimes(file string, reqLen int) ([]float64, error) {
	out, err := exec.Command("perf", "script", "--ns", "-i", file, "-F", "tid,time,event,trace").Output()
	if err != nil {
		return nil, fmt.Errorf("perf script: %w", err)
	}
	return matchServerTimes(out, reqLen)
}

// A perf script line: "  3102 2602.391422123: syscalls:sys_enter_recvmsg: fd: 0x0000000d, msg: ..."
var perfLine = regexp.MustCompile(`^\s*(\d+)\s+(\d+)\.(\d+):\s+syscalls:(sys_(?:enter|exit)_(?:recvmsg|sendmsg)):\s*(.*)$`)

// matchServerTimes pairs, per socket, a recvmsg that returned reqLen bytes
// with the next sendmsg on that socket that sent something.
func matchServerTimes(script []byte, reqLen int) ([]float64, error) {
	type pending struct{ recvFD, sendFD int64 }
	byTid := map[string]*pending{}
	open := map[int64]int64{} // fd -> time the request was read (ns)
	var times []float64
	sc := bufio.NewScanner(bytes.NewReader(script))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	lines := 0
	for sc.Scan() {
		m := perfLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		lines++
		tid := m[1]
		sec, _ := strconv.ParseInt(m[2], 10, 64)
		frac := m[3]
		for len(frac) < 9 {
			frac += "0"
		}
		nsec, _ := strconv.ParseInt(frac[:9], 10, 64)
		t := sec*1e9 + nsec
		p := byTid[tid]
		if p == nil {
			p = &pending{-1, -1}
			byTid[tid] = p
		}
		switch m[4] {
		case "sys_enter_recvmsg":
			p.recvFD = parseFD(m[5])
		case "sys_enter_sendmsg":
			p.sendFD = parseFD(m[5])
		case "sys_exit_recvmsg":
			if ret := parseRet(m[5]); ret == int64(reqLen) && p.recvFD >= 0 {
				open[p.recvFD] = t
			}
			p.recvFD = -1
		case "sys_exit_sendmsg":
			if ret := parseRet(m[5]); ret > 0 && p.sendFD >= 0 {
				if t0, ok := open[p.sendFD]; ok {
					times = append(times, nsToMs(t-t0))
					delete(open, p.sendFD)
				}
			}
			p.sendFD = -1
		}
	}
	if lines == 0 {
		return nil, fmt.Errorf("perf script printed no syscall events")
	}
	return times, nil
}

// parseFD reads "fd: 0x0000000d, ..." of an enter tracepoint.
func parseFD(s string) int64 {
	f, _, _ := strings.Cut(strings.TrimPrefix(s, "fd: "), ",")
	v, err := strconv.ParseInt(strings.TrimPrefix(f, "0x"), 16, 64)
	if err != nil {
		return -1
	}
	return v
}

// parseRet reads the "0x37" of an exit tracepoint (negative errnos are
// printed as 64-bit two's complement).
func parseRet(s string) int64 {
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(s), "0x"), 16, 64)
	if err != nil {
		return -1
	}
	return int64(v)
}
