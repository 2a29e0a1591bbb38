package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/firewall"
)

// A worker is this program re-executed inside a namespace, as a chosen
// uid, to do one side of the measurements there: the client of vpnd (as
// a NORMAL user), the baselines' kernel work (as root, in the baselines'
// namespace), the flush and the load generators. It reads one JSON
// request per line on stdin and answers one JSON response per line on
// stdout, so the main process can interleave vpnd and baseline iterations
// across processes. Timing is done inside the worker, around the one
// thing measured.

type workReq struct {
	Op     string        `json:"op"`
	Path   string        `json:"path,omitempty"`   // a server's socket
	Routes int           `json:"routes,omitempty"` // spec: < 0 typical, else routesSpec(Routes)
	UID    int           `json:"uid,omitempty"`    // the owner uid of the baselines' rules
	N      int           `json:"n,omitempty"`      // round trips, connections
	Conc   int           `json:"conc,omitempty"`   // concurrent clients
	Dur    time.Duration `json:"dur,omitempty"`
	File   string        `json:"file,omitempty"`
}

type workResp struct {
	Err     string           `json:"err,omitempty"`
	D       []int64          `json:"d,omitempty"` // durations, ns
	Vals    map[string]int64 `json:"vals,omitempty"`
	Line    string           `json:"line,omitempty"`
	Heal    *healResult      `json:"heal,omitempty"`
	Samples []probeSample    `json:"samples,omitempty"`
}

// probeSample is one round trip of the responsiveness probe, in
// CLOCK_MONOTONIC ns.
type probeSample struct {
	Kind  string `json:"k"`
	Start int64  `json:"s"`
	End   int64  `json:"e"`
	Code  int    `json:"c"`
	Bytes int    `json:"b"` // the response's length
}

type workerState struct {
	conns   map[string]*frameConn // by socket path
	tun     *os.File              // the TUN of the owner's last setUp
	floor   *os.File              // the TUN of the last floor setUp
	configs map[int][]byte        // setUp params by routes
	batches map[int][3]string     // ip -batch files by routes: default family, -6; the nft -f file
	fw      *firewall.Table       // vpnd's nftables table in this namespace, once opened
	udp     int                   // the socket that protect sends
	idle    []*net.UnixConn
	probe   *prober
}

func workerMain() int {
	st := &workerState{conns: map[string]*frameConn{}, configs: map[int][]byte{}, batches: map[int][3]string{}, udp: -1}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req workReq
		var resp workResp
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			resp.Err = err.Error()
		} else if err := st.do(req, &resp); err != nil {
			resp.Err = err.Error()
		}
		if err := out.Encode(&resp); err != nil {
			return 1
		}
	}
	return 0
}

func (st *workerState) conn(path string) (*frameConn, error) {
	if c := st.conns[path]; c != nil {
		return c, nil
	}
	c, err := dialFrame(path)
	if err != nil {
		return nil, err
	}
	st.conns[path] = c
	return c, nil
}

func (st *workerState) config(routes int) []byte {
	if b := st.configs[routes]; b != nil {
		return b
	}
	b := specFor(routes).config()
	st.configs[routes] = b
	return b
}

// firewall opens vpnd's nftables table in the worker's namespace on first
// use (firewall.Open checks that the kernel can hold it, as vpnd does at
// start), so that no measured step pays for the check.
func (st *workerState) firewall() (*firewall.Table, error) {
	if st.fw == nil {
		fw, err := firewall.Open(nftTable)
		if err != nil {
			return nil, err
		}
		st.fw = fw
	}
	return st.fw, nil
}

// batchFiles writes the files of the ip baselines for a spec: the `ip
// -batch` file, the `ip -6 -batch` one and the `nft -f` one.
func (st *workerState) batchFiles(routes, uid int) ([3]string, error) {
	if f, ok := st.batches[routes]; ok {
		return f, nil
	}
	var files [3]string
	s := specFor(routes)
	b, b6 := s.ipBatch(uid)
	for i, content := range [][]byte{b, b6, s.nftScript(uid)} {
		f, err := os.CreateTemp(".", "batch-") // in the run's directory, removed with it
		if err != nil {
			return files, err
		}
		_, err = f.Write(content)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return files, err
		}
		files[i] = f.Name()
	}
	st.batches[routes] = files
	return files, nil
}

// roundTrip sends line (with fd if >= 0) and reads the response line.
func roundTrip(c *frameConn, line []byte, fd int) ([]byte, time.Duration, error) {
	t0 := time.Now()
	if err := c.write(line, fd); err != nil {
		return nil, 0, err
	}
	resp, err := c.readLine()
	d := time.Since(t0)
	return resp, d, err
}

func (st *workerState) do(req workReq, resp *workResp) error {
	switch req.Op {
	case "setup": // vpnd's setUp, client-observed; keeps the TUN
		c, err := st.conn(req.Path)
		if err != nil {
			return err
		}
		if st.tun != nil {
			return errors.New("setup: a VPN of this worker is still up")
		}
		line := c.request("setUp", st.config(req.Routes), 0)
		reqLen := len(line)
		r, d, err := roundTrip(c, line, -1)
		if err != nil {
			return fmt.Errorf("setUp: %w", err)
		}
		fds := c.takeFDs()
		if err := responseError(r); err != nil {
			closeAll(fds)
			return fmt.Errorf("setUp: %w", err)
		}
		if len(fds) != 1 {
			closeAll(fds)
			return fmt.Errorf("setUp: response carried %d descriptors, want 1", len(fds))
		}
		st.tun = os.NewFile(uintptr(fds[0]), "tun")
		resp.D = []int64{int64(d)}
		resp.Vals = map[string]int64{"req_bytes": int64(reqLen), "resp_bytes": int64(len(r) + 1)}
	case "destroy": // vpnd's destroy, client-observed; then closes the TUN
		c, err := st.conn(req.Path)
		if err != nil {
			return err
		}
		r, d, err := roundTrip(c, c.request("destroy", []byte("{}"), 0), -1)
		if err != nil {
			return fmt.Errorf("destroy: %w", err)
		}
		if err := responseError(r); err != nil {
			return fmt.Errorf("destroy: %w", err)
		}
		if st.tun != nil {
			st.tun.Close()
			st.tun = nil
		}
		resp.D = []int64{int64(d)}
	case "churn": // vpnd's setUp and destroy of req.Routes back to back, starting cycles for req.Dur
		deadline := time.Now().Add(req.Dur)
		var destroys int64
		for time.Now().Before(deadline) {
			var up, down workResp
			if err := st.do(workReq{Op: "setup", Path: req.Path, Routes: req.Routes}, &up); err != nil {
				return err
			}
			if err := st.do(workReq{Op: "destroy", Path: req.Path}, &down); err != nil {
				return err
			}
			resp.D = append(resp.D, up.D[0])
			destroys += down.D[0]
		}
		resp.Vals = map[string]int64{"destroy_ns": destroys}
	case "status": // one status call; the raw response
		c, err := st.conn(req.Path)
		if err != nil {
			return err
		}
		r, _, err := roundTrip(c, c.request("status", []byte("{}"), 0), -1)
		if err != nil {
			return err
		}
		if err := responseError(r); err != nil {
			return err
		}
		resp.Line = string(r)
	case "protect": // N protect round trips of one UDP socket
		c, err := st.conn(req.Path)
		if err != nil {
			return err
		}
		if st.udp < 0 {
			if st.udp, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
				return err
			}
		}
		for i := 0; i < req.N; i++ {
			r, d, err := roundTrip(c, c.request("protect", []byte("{}"), 1), st.udp)
			if err != nil {
				return fmt.Errorf("protect: %w", err)
			}
			if hasError(r) {
				return fmt.Errorf("protect: %w", responseError(r))
			}
			resp.D = append(resp.D, int64(d))
		}
	case "floor-setup":
		if st.floor != nil {
			return errors.New("floor-setup: the last one is still up")
		}
		fw, err := st.firewall()
		if err != nil {
			return err
		}
		s := specFor(req.Routes)
		t0 := time.Now()
		f, err := floorSetUp(fw, s, req.UID)
		d := time.Since(t0)
		if err != nil {
			teardown(fw, req.UID)
			return err
		}
		st.floor = f
		resp.D = []int64{int64(d)}
	case "ip-sequence":
		fw, err := st.firewall()
		if err != nil {
			return err
		}
		files, err := st.batchFiles(req.Routes, req.UID)
		if err != nil {
			return err
		}
		s := specFor(req.Routes)
		t0 := time.Now()
		err = ipSequence(s, req.UID, files[2])
		d := time.Since(t0)
		if err != nil {
			teardown(fw, req.UID)
			return err
		}
		resp.D = []int64{int64(d)}
	case "ip-batch":
		fw, err := st.firewall()
		if err != nil {
			return err
		}
		files, err := st.batchFiles(req.Routes, req.UID)
		if err != nil {
			return err
		}
		t0 := time.Now()
		err = ipBatch(files)
		d := time.Since(t0)
		if err != nil {
			teardown(fw, req.UID)
			return err
		}
		resp.D = []int64{int64(d)}
	case "teardown": // what a baseline built: nftables table, rules, route, link, one request each
		fw, err := st.firewall()
		if err != nil {
			return err
		}
		t0 := time.Now()
		err = teardown(fw, req.UID)
		d := time.Since(t0)
		if st.floor != nil {
			st.floor.Close()
			st.floor = nil
		}
		if err != nil {
			return err
		}
		resp.D = []int64{int64(d)}
	case "state": // what the namespace holds of the VPN of req.Routes and req.UID
		fw, err := st.firewall()
		if err != nil {
			return err
		}
		state, err := kernelState(fw, specFor(req.Routes).nftSpec(req.UID))
		if err != nil {
			return err
		}
		resp.Line = strings.Join(state, "\n")
	case "flush", "flush-readd":
		h, err := flushTable(req.Op == "flush-readd", req.Dur)
		if err != nil {
			return err
		}
		resp.Heal = &h
	case "load":
		return load(req, resp)
	case "open-idle":
		for i := 0; i < req.N; i++ {
			uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: req.Path, Net: "unix"})
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			st.idle = append(st.idle, uc)
		}
	case "close-idle":
		for _, uc := range st.idle {
			uc.Close()
		}
		st.idle = nil
	case "probe-start":
		if st.probe != nil {
			return errors.New("probe already running")
		}
		p, err := startProbe(req.Path, st.config(-1))
		if err != nil {
			return err
		}
		st.probe = p
	case "probe-stop":
		if st.probe == nil {
			return errors.New("no probe running")
		}
		resp.Samples = st.probe.stop()
		st.probe = nil
	case "close":
		for p, c := range st.conns {
			c.Close()
			delete(st.conns, p)
		}
		if st.tun != nil {
			st.tun.Close()
			st.tun = nil
		}
	default:
		return fmt.Errorf("unknown op %q", req.Op)
	}
	return nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// load runs req.Conc clients, each on its own connection doing status
// round trips back to back, for req.Dur. The connections are made before
// the clock starts and closed after it stops. It reports the round trips
// done, the time they took, and a uniform sample of their latencies
// (req.N of them, 4000 if 0).
func load(req workReq, resp *workResp) error {
	conns := make([]*frameConn, req.Conc)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := dialFrame(req.Path)
		if err != nil {
			return err
		}
		conns[i] = c
		// One round trip before the clock starts, so that the server has
		// accepted every connection.
		if r, _, err := roundTrip(c, c.request("status", []byte("{}"), 0), -1); err != nil || hasError(r) {
			return fmt.Errorf("status on connection %d: %v %s", i, err, r)
		}
	}
	var (
		wg      sync.WaitGroup
		stop    atomic.Bool
		total   atomic.Int64
		mu      sync.Mutex
		lats    []int64
		firstEr error
	)
	start := make(chan struct{})
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line := append([]byte(nil), c.request("status", []byte("{}"), 0)...)
			var mine []int64
			<-start
			for !stop.Load() {
				r, d, err := roundTrip(c, line, -1)
				if err == nil && hasError(r) {
					err = responseError(r)
				}
				if err != nil {
					mu.Lock()
					firstEr = cmpOr(firstEr, err)
					mu.Unlock()
					return
				}
				mine = append(mine, int64(d))
			}
			total.Add(int64(len(mine)))
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	t0 := time.Now()
	close(start)
	time.Sleep(req.Dur)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(t0)
	if firstEr != nil {
		return firstEr
	}
	resp.Vals = map[string]int64{"count": total.Load(), "elapsed_ns": int64(elapsed)}
	keep := 4000
	if req.N > 0 {
		keep = req.N
	}
	if len(lats) > keep {
		rand.Shuffle(len(lats), func(i, j int) { lats[i], lats[j] = lats[j], lats[i] })
		lats = lats[:keep]
	}
	resp.D = lats
	return nil
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// probePause is the pause between two round trips of one probe client.
// It keeps the probes light: a status of a 10,000-route VPN is a quarter
// of a megabyte of JSON, and back-to-back probes would load vpnd enough
// to slow the repair they watch.
const probePause = 10 * time.Millisecond

// prober checks that vpnd stays responsive: three clients (status, a setUp
// that must be refused because a VPN exists, a destroy that must be
// refused because the caller does not own it), each doing one round trip
// every probePause until stopped.
type prober struct {
	stopFlag atomic.Bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	samples  []probeSample
}

func startProbe(path string, setUpConfig []byte) (*prober, error) {
	p := &prober{}
	kinds := []struct {
		kind, method string
		params       []byte
	}{
		{"status", "status", []byte("{}")},
		{"setUp", "setUp", setUpConfig},
		{"destroy", "destroy", []byte("{}")},
	}
	var conns []*frameConn
	for range kinds {
		c, err := dialFrame(path)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	for i, k := range kinds {
		c := conns[i]
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			for !p.stopFlag.Load() {
				line := c.request(k.method, k.params, 0)
				s := mono()
				r, _, err := roundTrip(c, line, -1)
				e := mono()
				code := -1
				if err == nil {
					code = errorCode(r)
				}
				closeAll(c.takeFDs())
				p.mu.Lock()
				p.samples = append(p.samples, probeSample{Kind: k.kind, Start: s, End: e, Code: code, Bytes: len(r) + 1})
				p.mu.Unlock()
				if err != nil {
					return
				}
				time.Sleep(probePause)
			}
		}()
	}
	return p, nil
}

func (p *prober) stop() []probeSample {
	p.stopFlag.Store(true)
	p.wg.Wait()
	return p.samples
}

// itoa is strconv.Itoa, for the flag and argument lists.
func itoa(i int) string { return strconv.Itoa(i) }
