// Command vpnbench measures vpnd against baselines measured in the same
// run, and publishes the figures (BENCHMARKS.md explains each scenario).
// It runs as root from the bench directory of the vpnd checkout, a module
// of its own so that its plotting library stays out of vpnd's go.mod:
//
//	go run ./cmd/vpnbench                                   # full run, table on stdout
//	go run ./cmd/vpnbench -markdown ../BENCHMARKS.md -plot ../docs/bench-routes.png -json bench.json
//	go run ./cmd/vpnbench -quick                            # one short round of each scenario (CI)
//
// It builds the vpnd of the checkout into a temporary directory, creates
// two network namespaces of its own (one for vpnd, one for the baselines'
// kernel work), runs vpnd, an echo server and its workers inside them, and
// deletes them when it ends, also on SIGINT and SIGTERM. The host's
// network namespace is never changed.
//
// Scenarios: setUp and destroy of a typical VPN (client-observed, from a
// NORMAL uid), setUp with 1 to 10,000 routes, self-heal of a flushed
// 10,000-route table, status round trips at 8 clients while 10,000-route
// setUps and destroys run back to back, status round trips at 1, 8 and 64
// clients, protect, and vpnd's resident memory with 1,000 idle
// connections. Each runs
// against its baseline in interleaved rounds; medians, p99s and the ratio
// vpnd/baseline of the medians are printed.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	n, warmup    int
	quick, quiet bool
	jsonPath     string
	markdown     string
	plot         string
	only         string
	vpnd         string
	profileDir   string
	serverTime   bool
	keep         bool
	ownerUID     int
	otherUID     int
}

// scenarioNames are the names -only accepts, in the order they run. rss
// runs first, so that its idle figure is vpnd's fresh from start.
var scenarioNames = []string{"rss", "setup", "routes", "heal", "busy", "status", "protect"}

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "-worker" {
		os.Exit(workerMain())
	}
	if len(os.Args) == 4 && os.Args[1] == "-echo" {
		result, err := os.ReadFile(os.Args[3])
		if err == nil {
			err = serveEcho(os.Args[2], result)
		}
		fmt.Fprintln(os.Stderr, "vpnbench echo:", err)
		os.Exit(1)
	}
	os.Exit(run(os.Args[1:]))
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("vpnbench", flag.ContinueOnError)
	fs.IntVar(&o.n, "n", 20, "measured rounds per scenario (each round runs vpnd and every baseline once)")
	fs.IntVar(&o.warmup, "warmup", 3, "warm-up rounds per scenario, measured and left out")
	fs.BoolVar(&o.quick, "quick", false, "one short round of each scenario, no warm-up (a smoke run: the figures mean little)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress messages on stderr")
	fs.StringVar(&o.jsonPath, "json", "", "write every sample and figure as JSON to `FILE`")
	fs.StringVar(&o.markdown, "markdown", "", "regenerate the generated section of `FILE` (BENCHMARKS.md)")
	fs.StringVar(&o.plot, "plot", "", "draw setUp time against route count (log-log) into `FILE` (.png)")
	fs.StringVar(&o.only, "only", "", "run only these scenarios, comma-separated: "+strings.Join(scenarioNames, ","))
	fs.StringVar(&o.vpnd, "vpnd", "", "measure this vpnd binary instead of building ./cmd/vpnd")
	fs.StringVar(&o.profileDir, "profile", "", "record a perf CPU profile of vpnd per scenario into `DIR`")
	fs.BoolVar(&o.serverTime, "server-time", true, "measure vpnd's server-side setUp time with perf tracepoints (skipped with a note if perf is missing)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (vpnd's log, perf data)")
	fs.IntVar(&o.ownerUID, "owner-uid", 1000, "NORMAL uid of the VPN app")
	fs.IntVar(&o.otherUID, "other-uid", 1001, "another NORMAL uid, for the probes of the self-heal scenario")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: vpnbench [flags]   (as root, from the vpnd checkout; see BENCHMARKS.md)

vpnbench builds this checkout's vpnd, runs it in a network namespace of
its own and measures it against baselines measured in the same run, in
interleaved rounds. It prints a table of medians, p99s and vpnd/baseline
ratios of the medians.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.quick {
		o.n, o.warmup = 1, 0
	}
	if o.n < 1 || o.warmup < 0 {
		return nil, errors.New("-n must be at least 1 and -warmup not negative")
	}
	for _, s := range strings.Split(o.only, ",") {
		if s != "" && !slices.Contains(scenarioNames, s) {
			return nil, fmt.Errorf("-only: unknown scenario %q (want %s)", s, strings.Join(scenarioNames, ","))
		}
	}
	if o.ownerUID == 0 || o.otherUID == 0 || o.ownerUID == o.otherUID {
		return nil, errors.New("-owner-uid and -other-uid must be two different non-root uids")
	}
	return o, nil
}

func run(args []string) int {
	o, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vpnbench:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "vpnbench: must run as root (it creates network namespaces and runs clients as other uids)")
		return 2
	}
	b := &bench{opts: *o}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "vpnbench: %v: cleaning up\n", s)
		b.close()
		os.Exit(130)
	}()
	defer b.close()

	rep := &Report{Command: "vpnbench " + strings.Join(args, " "), Date: time.Now(), N: o.n, Warmup: o.warmup, Quick: o.quick}
	rep.Command = strings.TrimSpace(rep.Command)
	rep.Machine = collectMachine()
	rep.Machine.VPND = describeVPND(o.vpnd)
	start := time.Now()
	if err := b.setUp(); err != nil {
		fmt.Fprintln(os.Stderr, "vpnbench:", err)
		return 1
	}
	b.logf("vpnd pid %d in netns %s; baselines in netns %s; %d rounds after %d warm-up", b.vpndPid, b.nsVPND, b.nsBase, o.n, o.warmup)
	failed := false
	if err := b.runAll(rep); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		fmt.Fprintln(os.Stderr, "vpnbench:", err)
		failed = true
	}
	rep.Duration = time.Since(start).Round(time.Second).String()
	for _, r := range rep.Results {
		r.finish()
	}
	if o.quick {
		rep.Notes = append(rep.Notes, "-quick: one round, no warm-up; the figures are a smoke test, not a measurement")
	}
	rep.writeText(os.Stdout)
	if o.plot != "" && len(rep.PerRoute) > 0 {
		err := os.MkdirAll(filepath.Dir(o.plot), 0o755)
		if err == nil {
			err = writePlot(o.plot, rep.PerRoute)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "vpnbench: plot:", err)
			failed = true
		} else {
			rep.plot = o.plot
		}
	}
	if o.markdown != "" {
		if err := rep.writeMarkdown(o.markdown); err != nil {
			fmt.Fprintln(os.Stderr, "vpnbench: markdown:", err)
			failed = true
		}
	}
	if o.jsonPath != "" {
		if err := rep.writeJSON(o.jsonPath); err != nil {
			fmt.Fprintln(os.Stderr, "vpnbench: json:", err)
			failed = true
		}
	}
	if failed {
		return 1
	}
	return 0
}

// runAll runs the chosen scenarios in order. A failing scenario stops the
// run: what was measured so far is still reported.
func (b *bench) runAll(rep *Report) error {
	want := func(name string) bool {
		return b.opts.only == "" || slices.Contains(strings.Split(b.opts.only, ","), name)
	}
	steps := []struct {
		name string
		run  func() error
	}{
		{"rss", func() error {
			if err := b.startEcho([]byte("{}")); err != nil {
				return err
			}
			res, err := b.scenarioRSS()
			rep.Results = append(rep.Results, res...)
			return err
		}},
		{"setup", func() error {
			res, err := b.scenarioSetUp()
			rep.Results = append(rep.Results, res...)
			return err
		}},
		{"routes", func() error {
			res, rows, err := b.scenarioRoutes()
			rep.Results = append(rep.Results, res...)
			rep.PerRoute = rows
			return err
		}},
		{"heal", func() error {
			res, err := b.scenarioHeal()
			rep.Results = append(rep.Results, res...)
			return err
		}},
		{"busy", func() error {
			res, err := b.scenarioBusy()
			rep.Results = append(rep.Results, res...)
			return err
		}},
		// status and protect run with a typical VPN up, owned by the
		// owner worker; the echo server answers status with vpnd's own
		// status result for it, so that both answers are the same size.
		{"status", func() error {
			return b.withVPN(func() error {
				res, err := b.scenarioStatus()
				rep.Results = append(rep.Results, res...)
				return err
			})
		}},
		{"protect", func() error {
			return b.withVPN(func() error {
				res, err := b.scenarioProtect()
				rep.Results = append(rep.Results, res...)
				return err
			})
		}},
	}
	for _, s := range steps {
		if !want(s.name) {
			continue
		}
		b.logf("scenario %s", s.name)
		t0 := time.Now()
		stopProfile, err := b.startProfile(s.name)
		if err != nil {
			return err
		}
		err = s.run()
		if perr := stopProfile(); err == nil {
			err = perr
		}
		if err != nil {
			return fmt.Errorf("scenario %s: %w", s.name, err)
		}
		b.logf("scenario %s done in %v", s.name, time.Since(t0).Round(time.Millisecond))
	}
	return nil
}

// withVPN runs f with a typical VPN up and the echo server answering like
// vpnd's status.
func (b *bench) withVPN(f func() error) error {
	if _, err := b.vpndSetUp(typical); err != nil {
		return err
	}
	result, err := b.statusResult()
	if err == nil {
		err = b.startEcho(result)
	}
	if err == nil {
		err = f()
	}
	if _, derr := b.vpndDestroy(); err == nil {
		err = derr
	}
	return err
}

// startProfile records a CPU profile of vpnd during a scenario when
// -profile is set.
func (b *bench) startProfile(name string) (func() error, error) {
	if b.opts.profileDir == "" {
		return func() error { return nil }, nil
	}
	if err := os.MkdirAll(b.opts.profileDir, 0o755); err != nil {
		return nil, err
	}
	file := filepath.Join(b.opts.profileDir, name+".perf.data")
	p, err := startPerf(b.vpndPid, file, "-g", "-F", "999")
	if err != nil {
		return nil, err
	}
	return func() error {
		err := p.stop()
		b.logf("profile of vpnd during %s: perf report -i %s", name, file)
		return err
	}, nil
}
