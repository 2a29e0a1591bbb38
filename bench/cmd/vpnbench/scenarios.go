package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"
)

// typical is the routes value of the typical spec in worker requests.
const typical = -1

// vpndSetUp sets up a VPN from the owner worker and returns its
// client-observed time and the sizes of request and response.
func (b *bench) vpndSetUp(routes int) (workResp, error) {
	return b.owner.call(workReq{Op: "setup", Path: b.sock, Routes: routes})
}

func (b *bench) vpndDestroy() (time.Duration, error) {
	r, err := b.owner.call(workReq{Op: "destroy", Path: b.sock})
	if err != nil {
		return 0, err
	}
	return time.Duration(r.D[0]), nil
}

// baseCall runs a baseline step in the baselines' namespace and returns
// the time it took.
func (b *bench) baseCall(op string, routes int) (time.Duration, error) {
	r, err := b.base.call(workReq{Op: op, Routes: routes, UID: b.opts.ownerUID})
	if err != nil {
		return 0, err
	}
	if len(r.D) == 0 {
		return 0, nil
	}
	return time.Duration(r.D[0]), nil
}

// checkSameWork builds the VPN of routes once with vpnd and once with each
// baseline, reads back what each left in the kernel, and fails unless all
// hold the same link settings, addresses, routes, rules and nftables
// table; then it does the same after vpnd's destroy and each baseline's
// teardown. A baseline is a floor only if it does vpnd's kernel work.
func (b *bench) checkSameWork(routes int) error {
	state := func(w *worker) (string, error) {
		r, err := w.call(workReq{Op: "state", Routes: routes, UID: b.opts.ownerUID})
		return r.Line, err
	}
	if _, err := b.vpndSetUp(routes); err != nil {
		return err
	}
	want, err := state(b.root)
	if _, derr := b.vpndDestroy(); err == nil {
		err = derr
	}
	if err != nil {
		return err
	}
	wantAfter, err := state(b.root)
	if err != nil {
		return err
	}
	for _, op := range []string{"floor-setup", "ip-sequence", "ip-batch"} {
		if op == "ip-sequence" && routes != typical {
			continue
		}
		if _, err := b.baseCall(op, routes); err != nil {
			return err
		}
		got, err := state(b.base)
		if _, terr := b.baseCall("teardown", routes); err == nil {
			err = terr
		}
		if err != nil {
			return err
		}
		if err := sameState(op, "", want, got); err != nil {
			return err
		}
		gotAfter, err := state(b.base)
		if err != nil {
			return err
		}
		if err := sameState(op, " after the ending", wantAfter, gotAfter); err != nil {
			return err
		}
	}
	return nil
}

// sameState compares what vpnd left in the kernel with what a baseline
// left there (kernelState's lines).
func sameState(op, when, vpnd, base string) error {
	if vpnd == base {
		return nil
	}
	return fmt.Errorf("the %s baseline does not leave what vpnd leaves%s:\n--- vpnd\n%s\n--- %s\n%s", op, when, vpnd, op, base)
}

// scenarioSetUp is scenarios 1 and 2: a typical setUp and its destroy,
// against the netlink floor and the ip commands, then vpnd's server-side
// setUp time.
func (b *bench) scenarioSetUp() ([]*Result, error) {
	n, warm := b.opts.n, b.opts.warmup
	vSet := vpndSeries("vpnd, client-observed (uid "+itoa(b.opts.ownerUID)+")", unitMs)
	fSet := baseSeries("netlink floor: vishvananda/netlink, one request at a time", unitMs)
	ipSet := baseSeries("`ip` commands (ip tuntap/link/addr/route/rule)", unitMs)
	vDes := vpndSeries("vpnd, client-observed", unitMs)
	fDes := baseSeries("netlink: rules, route, link deleted one request at a time", unitMs)
	var reqLen int
	if err := b.checkSameWork(typical); err != nil {
		return nil, err
	}
	err := interleave(n, warm,
		func(rec bool) error {
			r, err := b.vpndSetUp(typical)
			if err != nil {
				return err
			}
			reqLen = int(r.Vals["req_bytes"])
			d, err := b.vpndDestroy()
			if err != nil {
				return err
			}
			if rec {
				vSet.add(nsToMs(r.D[0]))
				vDes.add(ms(d))
			}
			return nil
		},
		func(rec bool) error {
			d, err := b.baseCall("floor-setup", typical)
			if err != nil {
				return err
			}
			dt, err := b.baseCall("teardown", typical)
			if err != nil {
				return err
			}
			if rec {
				fSet.add(ms(d))
				fDes.add(ms(dt))
			}
			return nil
		},
		func(rec bool) error {
			d, err := b.baseCall("ip-sequence", typical)
			if err != nil {
				return err
			}
			if _, err := b.baseCall("teardown", typical); err != nil {
				return err
			}
			if rec {
				ipSet.add(ms(d))
			}
			return nil
		},
	)
	if err != nil {
		return nil, err
	}
	setUp := newResult("setup", "setUp, typical", vSet, fSet, ipSet)
	setUp.Notes = append(setUp.Notes, "checked before measuring: vpnd and both baselines leave the same link settings, addresses, routes, rules and nftables table in the kernel, and the same nothing after destroy and teardown")
	destroy := newResult("destroy", "destroy, typical", vDes, fDes)
	destroy.Notes = append(destroy.Notes, "both delete the link while the client still holds the TUN fd; the link deletion (the kernel's netdev unregistration) is most of either")
	if b.opts.serverTime {
		if err := b.serverSide(setUp, reqLen); err != nil {
			setUp.Notes = append(setUp.Notes, "server-side time not measured: "+err.Error())
		}
	}
	return []*Result{setUp, destroy}, nil
}

// serverSide measures vpnd's server-side setUp time with perf tracepoints,
// in a pass of its own after the interleaved one.
func (b *bench) serverSide(res *Result, reqLen int) error {
	file := filepath.Join(b.dir, "setup-syscalls.perf.data")
	p, err := startPerf(b.vpndPid, file, serverTraceEvents...)
	if err != nil {
		return err
	}
	client := vpndSeries("vpnd, client-observed while traced", unitMs)
	k := b.opts.n
	var runErr error
	for i := 0; i < k; i++ {
		r, err := b.vpndSetUp(typical)
		if err != nil {
			runErr = err
			break
		}
		client.add(nsToMs(r.D[0]))
		if _, err := b.vpndDestroy(); err != nil {
			runErr = err
			break
		}
	}
	if err := p.stop(); err != nil {
		return err
	}
	if runErr != nil {
		return runErr
	}
	times, err := serverTimes(file, reqLen)
	if err != nil {
		return err
	}
	if len(times) != k {
		return fmt.Errorf("found %d request/response pairs in the trace, want %d", len(times), k)
	}
	server := vpndSeries("vpnd, server-side: request read → reply sent (perf)", unitMs)
	server.Samples = times
	server.Role = "vpnd-detail"
	client.Role = "vpnd-detail"
	res.Series = append(res.Series, server, client)
	res.Notes = append(res.Notes, "server-side time: perf syscall tracepoints on vpnd's threads, from the recvmsg that returned the request line to the sendmsg of the reply on the same socket, in a separate pass; its client-observed row shows what tracing costs")
	return nil
}

// routeCounts are the sizes of scenario 3.
var routeCounts = []int{1, 100, 1000, 10000}

// scenarioRoutes is scenario 3: setUp with 1 to 10,000 routes against one
// `ip -batch` and against one netlink request per route.
func (b *bench) scenarioRoutes() ([]*Result, []PerRoute, error) {
	var results []*Result
	var rows []PerRoute
	const (
		nameV     = "vpnd"
		nameLoop  = "netlink, one request per route"
		nameBatch = "ip -batch"
	)
	first := map[string]float64{}
	if err := b.checkSameWork(100); err != nil {
		return nil, nil, err
	}
	for _, nr := range routeCounts {
		v := vpndSeries(nameV+", client-observed", unitMs)
		loop := baseSeries(nameLoop+" (vishvananda RouteAdd loop)", unitMs)
		batch := baseSeries(nameBatch+" (one ip process)", unitMs)
		vDes := vpndSeries("vpnd destroy, client-observed", unitMs)
		err := interleave(b.opts.n, b.opts.warmup,
			func(rec bool) error {
				r, err := b.vpndSetUp(nr)
				if err != nil {
					return err
				}
				d, err := b.vpndDestroy()
				if err != nil {
					return err
				}
				if rec {
					v.add(nsToMs(r.D[0]))
					vDes.add(ms(d))
				}
				return nil
			},
			func(rec bool) error {
				d, err := b.baseCall("floor-setup", nr)
				if err != nil {
					return err
				}
				if _, err := b.baseCall("teardown", nr); err != nil {
					return err
				}
				if rec {
					loop.add(ms(d))
				}
				return nil
			},
			func(rec bool) error {
				d, err := b.baseCall("ip-batch", nr)
				if err != nil {
					return err
				}
				if _, err := b.baseCall("teardown", nr); err != nil {
					return err
				}
				if rec {
					batch.add(ms(d))
				}
				return nil
			},
		)
		if err != nil {
			return nil, nil, err
		}
		res := newResult(fmt.Sprintf("routes-%d", nr), fmt.Sprintf("setUp, %d route%s", nr, plural(nr)), v, loop, batch)
		res.finish()
		vDes.Median = median(vDes.Samples)
		res.Extra = map[string]any{"vpnd_destroy_ms": vDes.Samples, "vpnd_destroy_median_ms": vDes.Median}
		results = append(results, res)
		for _, s := range []struct {
			name string
			ser  *Series
		}{{nameV, v}, {nameLoop, loop}, {nameBatch, batch}} {
			row := PerRoute{Series: s.name, Routes: nr, MedianMs: s.ser.Median, PerRouteUs: s.ser.Median * 1000 / float64(nr)}
			if nr == routeCounts[0] {
				first[s.name] = s.ser.Median
			} else if f, ok := first[s.name]; ok && nr > 1 {
				row.MarginalUs = (s.ser.Median - f) * 1000 / float64(nr-1)
			}
			rows = append(rows, row)
		}
	}
	return results, rows, nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// healRoutes is the size of the table that scenario 4 flushes.
const healRoutes = 10000

// scenarioHeal is scenario 4: the flush of a 10,000-route table 98 and
// its repair by vpnd, against the floor of a repair (the same flush, then
// every route re-added at once with batched netlink), with probes of
// status, setUp and destroy before and during the repair.
func (b *bench) scenarioHeal() ([]*Result, error) {
	v := vpndSeries("vpnd: flush → table complete again", unitMs)
	floor := baseSeries("flush, then every route re-added at once (batched netlink)", unitMs)
	afterFlush := vpndSeries("vpnd: last deletion answered → table complete", unitMs)
	readd := baseSeries("the re-add alone (batched netlink)", unitMs)
	kinds := []string{"status", "setUp", "destroy"}
	during := map[string]*Series{}
	idle := map[string]*Series{}
	polled := 0
	statusBytes := 0
	idleWindow := 150 * time.Millisecond
	if b.opts.quick {
		idleWindow = 30 * time.Millisecond
	}
	err := interleave(b.opts.n, b.opts.warmup,
		func(rec bool) error {
			if _, err := b.vpndSetUp(healRoutes); err != nil {
				return err
			}
			if _, err := b.probe.call(workReq{Op: "probe-start", Path: b.sock}); err != nil {
				return err
			}
			time.Sleep(idleWindow)
			r, err := b.root.call(workReq{Op: "flush", Dur: time.Minute})
			time.Sleep(20 * time.Millisecond)
			pr, perr := b.probe.call(workReq{Op: "probe-stop"})
			if err != nil {
				return err
			}
			if perr != nil {
				return perr
			}
			if _, err := b.vpndDestroy(); err != nil {
				return err
			}
			h := r.Heal
			if !rec {
				return nil
			}
			v.add(nsToMs(h.Complete - h.Start))
			afterFlush.add(nsToMs(h.Complete - h.Flushed))
			if h.Polled {
				polled++
			}
			// Each probe must have got the answer it stands for: status
			// a result, setUp "VPN already exists", destroy "permission
			// denied" (uid otherUID does not own the VPN).
			wantCode := map[string]int{"status": 0, "setUp": 2203002, "destroy": 201}
			for _, s := range pr.Samples {
				if s.Code != wantCode[s.Kind] {
					return fmt.Errorf("probe %s answered code %d, want %d", s.Kind, s.Code, wantCode[s.Kind])
				}
				if s.Kind == "status" {
					statusBytes = max(statusBytes, s.Bytes)
				}
				lat := nsToMs(s.End - s.Start)
				switch {
				case s.End < h.Start:
					addTo(idle, s.Kind, lat)
				case s.Start >= h.Start && s.Start < h.Complete:
					addTo(during, s.Kind, lat)
				}
			}
			return nil
		},
		func(rec bool) error {
			if _, err := b.baseCall("ip-batch", healRoutes); err != nil {
				return err
			}
			r, err := b.base.call(workReq{Op: "flush-readd", Dur: time.Minute})
			if err != nil {
				return err
			}
			if _, err := b.baseCall("teardown", healRoutes); err != nil {
				return err
			}
			if rec {
				floor.add(nsToMs(r.Heal.Complete - r.Heal.Start))
				readd.add(nsToMs(r.Heal.Complete - r.Heal.Flushed))
			}
			return nil
		},
	)
	if err != nil {
		return nil, err
	}
	repair := newResult("heal", fmt.Sprintf("self-heal, %d-route table flushed", healRoutes), v, floor)
	tail := newResult("heal-tail", "self-heal, after the flush", afterFlush, readd)
	tail.Notes = append(tail.Notes, "vpnd may start repairing before the flush ends, so its part after the flush can be shorter than its whole repair")
	repair.Notes = append(repair.Notes, "flush: one dump of table 98 (both families), then every route deleted, 256 requests per sendmsg, as `ip route flush table 98` does in its first round; completion: vpnd's re-adds seen through route notifications, counted only once the deletion of every flushed route has been read too, then checked with a dump")
	if polled > 0 {
		repair.Notes = append(repair.Notes, fmt.Sprintf("%d of %d repairs were timed by polling dumps every 2 ms (the notification queue overflowed)", polled, len(v.Samples)))
	}
	results := []*Result{repair, tail}
	for _, k := range kinds {
		d, i := during[k], idle[k]
		if d == nil {
			d = vpndSeries("", unitMs)
		}
		if i == nil {
			i = baseSeries("", unitMs)
		}
		d.Name = "during the repair"
		i.Name = "idle, just before the flush"
		d.Role, i.Role = "vpnd", "baseline"
		what := map[string]string{
			"status":  "status round trip",
			"setUp":   "setUp round trip (refused: VPN exists)",
			"destroy": "destroy round trip (refused: not the owner)",
		}[k]
		r := newResult("heal-"+k, what+" during self-heal", d, i)
		results = append(results, r)
	}
	results[2].Notes = append(results[2].Notes, fmt.Sprintf("probes from uid %d, one client per kind, %v between round trips; \"during\" counts those sent between the flush's start and the table's completion; a status answer for this VPN is %d bytes",
		b.opts.otherUID, probePause, statusBytes))
	return results, nil
}

func addTo(m map[string]*Series, k string, v float64) {
	if m[k] == nil {
		m[k] = vpndSeries(k, unitMs)
	}
	m[k].add(v)
}

// busyClients and busyRoutes are the load and the VPN of the busy
// scenario: status must never wait for a setUp.
const (
	busyClients = 8
	busyRoutes  = 10000
	busyKeep    = 1000 // latencies kept per round and series
)

// scenarioBusy measures status round trips at 8 clients while the owner
// sets up and destroys a 10,000-route VPN back to back: a status must
// never wait for a setUp or a destroy. The same load with no setUp
// running, with that VPN up and with no VPN, are its baselines (the
// status answer is 190 KB with the VPN up, a few hundred bytes without).
func (b *bench) scenarioBusy() ([]*Result, error) {
	dur, lead := time.Second, 200*time.Millisecond
	if b.opts.quick {
		dur = 300 * time.Millisecond
	}
	busy := vpndSeries(fmt.Sprintf("status round trip, %d clients, while setUps and destroys run back to back", busyClients), unitMs)
	idleUp := baseSeries("the same, no setUp running, the VPN up", unitMs)
	idleNone := baseSeries("the same, no setUp running, no VPN", unitMs)
	var setUps []float64
	var destroys time.Duration
	var busyRate, upRate, noneRate []float64
	load := func(s *Series, rate *[]float64, rec bool) error {
		r, err := b.root.call(workReq{Op: "load", Path: b.sock, Conc: busyClients, Dur: dur, N: busyKeep})
		if err != nil || !rec {
			return err
		}
		for _, d := range r.D {
			s.add(nsToMs(d))
		}
		*rate = append(*rate, float64(r.Vals["count"])/(float64(r.Vals["elapsed_ns"])/1e9))
		return nil
	}
	err := interleave(b.opts.n, b.opts.warmup,
		func(rec bool) error {
			type result struct {
				r   workResp
				err error
			}
			churn := make(chan result, 1)
			go func() {
				r, err := b.owner.call(workReq{Op: "churn", Path: b.sock, Routes: busyRoutes, Dur: lead + dur})
				churn <- result{r, err}
			}()
			time.Sleep(lead) // the first setUp is under way
			err := load(busy, &busyRate, rec)
			c := <-churn
			if err == nil {
				err = c.err
			}
			if err != nil || !rec {
				return err
			}
			for _, d := range c.r.D {
				setUps = append(setUps, nsToMs(d))
			}
			destroys += time.Duration(c.r.Vals["destroy_ns"])
			return nil
		},
		func(rec bool) error {
			if _, err := b.vpndSetUp(busyRoutes); err != nil {
				return err
			}
			err := load(idleUp, &upRate, rec)
			if _, derr := b.vpndDestroy(); err == nil {
				err = derr
			}
			return err
		},
		func(rec bool) error { return load(idleNone, &noneRate, rec) },
	)
	if err != nil {
		return nil, err
	}
	r := newResult("busy", fmt.Sprintf("status while %d-route setUps and destroys run", busyRoutes), busy, idleUp, idleNone)
	destroyMean := 0.0
	if len(setUps) > 0 {
		destroyMean = ms(destroys) / float64(len(setUps))
	}
	r.Notes = append(r.Notes,
		fmt.Sprintf("%d clients (root), one connection each, status back to back for %v per round; meanwhile the owner (uid %d) set up and destroyed a %d-route VPN back to back: %d cycles in the measured rounds, setUp median %s, destroy mean %s; samples are round-trip latencies, %d per round and series (a uniform sample)",
			busyClients, dur, b.opts.ownerUID, busyRoutes, len(setUps), fmtValue(median(setUps), unitMs), fmtValue(destroyMean, unitMs), busyKeep),
		fmt.Sprintf("status round trips per second (medians of the rounds): %s while setUps ran, %s with the VPN up, %s without",
			fmtValue(median(busyRate), unitRate), fmtValue(median(upRate), unitRate), fmtValue(median(noneRate), unitRate)))
	r.Extra = map[string]any{"setup_ms": setUps, "rate_busy": busyRate, "rate_vpn_up": upRate, "rate_no_vpn": noneRate}
	return []*Result{r}, nil
}

// concurrency levels of scenario 5.
var concurrency = []int{1, 8, 64}

// ensureEcho starts the echo server with the status result vpnd gives for
// a typical VPN (which is up while status and protect are measured).
func (b *bench) statusResult() ([]byte, error) {
	r, err := b.owner.call(workReq{Op: "status", Path: b.sock})
	if err != nil {
		return nil, err
	}
	var env struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal([]byte(r.Line), &env); err != nil || env.Result == nil {
		return nil, fmt.Errorf("status response: %v: %.200q", err, r.Line)
	}
	var compact bytes.Buffer
	json.Compact(&compact, env.Result)
	return compact.Bytes(), nil
}

// scenarioStatus is scenario 5: status round trips per second at 1, 8 and
// 64 concurrent clients, against the echo server. A typical VPN is up.
func (b *bench) scenarioStatus() ([]*Result, error) {
	dur := 500 * time.Millisecond
	if b.opts.quick {
		dur = 100 * time.Millisecond
	}
	var results []*Result
	for _, c := range concurrency {
		v := vpndSeries("vpnd", unitRate)
		e := baseSeries("echo server, same framing and sizes", unitRate)
		v.P99Unit, e.P99Unit = unitMs, unitMs
		run := func(s *Series, path string) func(bool) error {
			return func(rec bool) error {
				r, err := b.root.call(workReq{Op: "load", Path: path, Conc: c, Dur: dur})
				if err != nil {
					return err
				}
				if rec {
					s.add(float64(r.Vals["count"]) / (float64(r.Vals["elapsed_ns"]) / 1e9))
					for _, d := range r.D {
						s.p99Of = append(s.p99Of, nsToMs(d))
					}
				}
				return nil
			}
		}
		if err := interleave(b.opts.n, b.opts.warmup, run(v, b.sock), run(e, b.echoSock)); err != nil {
			return nil, err
		}
		results = append(results, newResult(fmt.Sprintf("status-%d", c), fmt.Sprintf("status, %d client%s", c, plural(c)), v, e))
	}
	results[0].Notes = append(results[0].Notes, fmt.Sprintf("each sample is the rate of one %v run; the p99 column is the round-trip latency", dur))
	return results, nil
}

// scenarioProtect is scenario 6: protect round trips against the echo
// server (which receives the fd by SCM_RIGHTS, closes it and answers).
func (b *bench) scenarioProtect() ([]*Result, error) {
	k := 100
	if b.opts.quick {
		k = 10
	}
	v := vpndSeries("vpnd, client-observed (owner)", unitMs)
	e := baseSeries("fd-passing echo server", unitMs)
	run := func(s *Series, path string) func(bool) error {
		return func(rec bool) error {
			r, err := b.owner.call(workReq{Op: "protect", Path: path, N: k})
			if err != nil {
				return err
			}
			if rec {
				for _, d := range r.D {
					s.add(nsToMs(d))
				}
			}
			return nil
		}
	}
	if err := interleave(b.opts.n, b.opts.warmup, run(v, b.sock), run(e, b.echoSock)); err != nil {
		return nil, err
	}
	r := newResult("protect", "protect (UDP socket)", v, e)
	r.Notes = append(r.Notes, fmt.Sprintf("%d round trips per round; every round trip is a sample", k))
	return []*Result{r}, nil
}

// idleConns is the connection count of scenario 7.
const idleConns = 1000

// scenarioRSS is scenario 7: vpnd's resident memory idle, with 1,000 idle
// connections, and after they closed, against the echo server (a minimal
// Go server with one goroutine per connection). Both go through the
// phases together. RSS is a state, not a timing: one round, on a vpnd
// fresh from start (this scenario runs first).
//
// Nothing is done to the servers but the connections: no GC is forced
// (vpnd has no endpoint for it) and no traffic is sent to provoke one,
// since the garbage of that traffic would itself grow the heap. Before the
// "after they closed" figure, vpnbench waits for the runtime's own next
// GC cycle (it forces one two minutes after the last), so that the
// figure is taken after the closed connections were collected; -quick
// does not wait.
func (b *bench) scenarioRSS() ([]*Result, error) {
	phases := []string{"idle", fmt.Sprintf("%d idle connections", idleConns), "after they closed"}
	type server struct {
		name, path, log string
		pid, baseFDs    int
		series          []*Series
		anon, live      []float64
	}
	servers := []*server{
		{name: "vpnd", path: b.sock, log: filepath.Join(b.dir, "vpnd.log"), pid: b.vpndPid},
		{name: "echo server", path: b.echoSock, log: filepath.Join(b.dir, "echo.log"), pid: b.echoPid},
	}
	var notes []string
	settled := true
	for ph, phase := range phases {
		switch ph {
		case 1:
			for _, sv := range servers {
				sv.baseFDs = fdCount(sv.pid)
				if _, err := b.root.call(workReq{Op: "open-idle", Path: sv.path, N: idleConns}); err != nil {
					return nil, err
				}
			}
			for _, sv := range servers {
				if err := waitFDs(sv.pid, func(n int) bool { return n >= sv.baseFDs+idleConns }); err != nil {
					return nil, fmt.Errorf("%s: %w", sv.name, err)
				}
			}
		case 2:
			gcBefore := make([]int, len(servers))
			for i, sv := range servers {
				gcBefore[i], _ = lastGC(sv.log)
			}
			if _, err := b.root.call(workReq{Op: "close-idle"}); err != nil {
				return nil, err
			}
			for _, sv := range servers {
				if err := waitFDs(sv.pid, func(n int) bool { return n <= sv.baseFDs }); err != nil {
					return nil, fmt.Errorf("%s: %w", sv.name, err)
				}
			}
			wait := 130 * time.Second
			if b.opts.quick {
				wait = 0
			}
			for i, sv := range servers {
				if !waitGC(sv.log, gcBefore[i], wait) {
					notes = append(notes, sv.name+": no GC cycle since the connections closed (the figure includes their garbage)")
				}
			}
		}
		for _, sv := range servers {
			rss, anon, ok := b.settledRSS(sv.pid)
			settled = settled && ok
			s := vpndSeries(sv.name+", "+phase, unitMiB)
			if sv.name != "vpnd" {
				s.Role = "baseline"
			}
			s.add(rss)
			sv.series = append(sv.series, s)
			_, live := lastGC(sv.log)
			sv.anon, sv.live = append(sv.anon, anon), append(sv.live, live)
		}
	}
	var results []*Result
	for i, ph := range phases {
		r := newResult("rss-"+itoa(i), "VmRSS, "+ph, servers[0].series[i], servers[1].series[i])
		r.Extra = map[string]any{
			"rss_anon_mib_vpnd": servers[0].anon[i], "rss_anon_mib_echo": servers[1].anon[i],
			"heap_live_mib_vpnd": servers[0].live[i], "heap_live_mib_echo": servers[1].live[i],
		}
		r.Notes = append(r.Notes, fmt.Sprintf("RssAnon vpnd %.1f MiB, echo %.1f MiB; live heap after the last GC (gctrace): vpnd %.0f MiB, echo %.0f MiB",
			servers[0].anon[i], servers[1].anon[i], servers[0].live[i], servers[1].live[i]))
		results = append(results, r)
	}
	results[0].Notes = append(results[0].Notes, "method: one round on a fresh vpnd; VmRSS from /proc/PID/status every 100 ms until ten samples in a row are within 1% (or 128 KiB), their median; no GC forced and no traffic sent; before the last phase, a wait for the runtime's own next GC cycle (at most two minutes), seen in its gctrace (GODEBUG=gctrace=1, which only logs); freed memory counts until the Go scavenger returns it")
	results[0].Notes = append(results[0].Notes, notes...)
	if !settled {
		results[0].Notes = append(results[0].Notes, "some RSS figures did not settle within the time limit; their last ten samples' median is shown")
	}
	return results, nil
}

// gcLine is a gctrace line: "gc 12 @3.4s 0%: ... 4->4->1 MB, 5 MB goal, ...".
var gcLine = regexp.MustCompile(`(?m)^gc (\d+) @.* (\d+)->(\d+)->(\d+) MB`)

// lastGC returns the number of the last GC cycle in a gctrace log and the
// live heap it left (MiB: gctrace's "MB" are MiB), or zeros.
func lastGC(log string) (int, float64) {
	b, _ := os.ReadFile(log)
	m := gcLine.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return 0, 0
	}
	last := m[len(m)-1]
	n, _ := strconv.Atoi(string(last[1]))
	live, _ := strconv.ParseFloat(string(last[4]), 64)
	return n, live
}

// waitGC waits up to limit for a GC cycle after cycle number after.
func waitGC(log string, after int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		if n, _ := lastGC(log); n > after {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitFDs waits until ok(fd count of pid), for accepted or closed
// connections.
func waitFDs(pid int, ok func(int) bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for !ok(fdCount(pid)) {
		if time.Now().After(deadline) {
			return fmt.Errorf("fd count %d did not reach the expected value in 30 s", fdCount(pid))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// settledRSS samples VmRSS and RssAnon (MiB) until they settle; see the
// note in scenarioRSS.
func (b *bench) settledRSS(pid int) (rss, anon float64, settled bool) {
	limit := 15 * time.Second
	if b.opts.quick {
		limit = 2 * time.Second
	}
	const window = 10
	var rs, as []float64
	deadline := time.Now().Add(limit)
	for {
		v, err := procStatus(pid, "VmRSS", "RssAnon")
		if err == nil {
			rs = append(rs, float64(v["VmRSS"])/1024)
			as = append(as, float64(v["RssAnon"])/1024)
		}
		if len(rs) >= window {
			last := rs[len(rs)-window:]
			lo, hi := slices.Min(last), slices.Max(last)
			if hi-lo <= math.Max(0.01*hi, 0.125) {
				return median(last), median(as[len(as)-window:]), true
			}
		}
		if time.Now().After(deadline) && len(rs) > 0 {
			k := min(window, len(rs))
			return median(rs[len(rs)-k:]), median(as[len(as)-k:]), false
		}
		time.Sleep(100 * time.Millisecond)
	}
}
