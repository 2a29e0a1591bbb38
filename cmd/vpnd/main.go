// Command vpnd is the VPN manager daemon. See README.md and docs/.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"
	flag "github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/dns"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/metrics"
	"github.com/vpnd/vpnd/internal/ownership"
	"github.com/vpnd/vpnd/internal/server"
	"github.com/vpnd/vpnd/internal/state"
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/version"
	"github.com/vpnd/vpnd/protocol"
)

// options are vpnd's flags (README.md, "Running vpnd").
type options struct {
	socket      string
	accounts    string
	ifname      string
	nftTable    string
	table       uint
	priority    uint
	protectMark string
	logLevel    string
	// allowOffload is --allow-offload as given; offload is what it says.
	allowOffload string
	offload      manager.OffloadPolicy
	logFormat    string
	maxConns     int
	maxPerUser   int
	stateDir     string
	dnsBackend   string
	resolvConf   string
	version      bool
	manDir       string
	sweep        bool
	sim          bool
	metrics      string
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func parseFlags(args []string, stderr io.Writer) (*options, uint32, error) {
	o := &options{}
	fs := flag.NewFlagSet("vpnd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.socket, "socket", protocol.DefaultSocket, "the Unix socket `PATH` to serve")
	fs.StringVar(&o.accounts, "accounts", "", "account policy JSON file `PATH` (default: the embedded policy: uid 0 admin, nobody and groups guest/guests guest, others normal)")
	fs.StringVar(&o.ifname, "ifname", "vpn-tun", "`NAME` of the TUN interface (1-15 bytes, no '/', ':', '%' or white space)")
	fs.StringVar(&o.nftTable, "nft-table", "vpnd", "`NAME` of vpnd's nftables table (family inet), the firewall of lockdown and fail-closed")
	fs.UintVar(&o.table, "table", 98, "routing table `N` for the VPN's routes (not 0, 253, 254 or 255)")
	fs.UintVar(&o.priority, "rule-priority", 10000, "priority `N` of the VPN's policy rules (1-32764); lockdown's rules use the next one")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/vpnd", "`DIR` for what must outlive vpnd (lockdown's state); vpnd's alone, and one vpnd's only")
	fs.StringVar(&o.dnsBackend, "dns-backend", dns.Auto, "what applies an admin's VPN's DNS settings, `B`: auto (resolved if systemd-resolved answers on the system bus, else none), resolved, file or none")
	fs.StringVar(&o.resolvConf, "resolv-conf", dns.DefaultResolvConf, "the file `PATH` that --dns-backend file rewrites while a VPN is up (a regular file, not a symbolic link)")
	fs.StringVar(&o.protectMark, "protect-mark", "0x20000", "SO_MARK bit(s) `MASK` that protect sets and the owner's rule excludes")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level `L`: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "console", "log format `F`: json or console")
	fs.IntVar(&o.maxConns, "max-connections", server.DefaultMaxConns, "at most `N` clients served at once, and admin accounts 16 more; one more gets an error line and is closed")
	fs.IntVar(&o.maxPerUser, "max-connections-per-user", server.DefaultMaxPerUser, "at most `N` connections one uid may hold at once, admin accounts excepted (0: no per-user limit)")
	fs.BoolVarP(&o.version, "version", "v", false, "print vpnd's version and exit")
	fs.StringVar(&o.manDir, "man", "", "write vpnd's man page into `DIR` and exit")
	fs.MarkHidden("man") // for packagers and CI
	fs.BoolVar(&o.sweep, "sweep", false, "remove what vpnd left in this network namespace (a VPN's interface, rules and routes, lockdown's rules; a resolv.conf --dns-backend file replaced) and exit, without serving; for package removal")
	fs.BoolVar(&o.sim, "sim", false, "simulation mode: run as any user and change nothing in the kernel (see above)")
	fs.StringVar(&o.metrics, "metrics-listen", "", "serve Prometheus metrics at http://`ADDR`/metrics, e.g. 127.0.0.1:9477 (off when empty)")
	fs.StringVar(&o.allowOffload, "allow-offload", "all", "who may set up a VPN with \"offload\": true (a TUN with the kernel's virtio_net_hdr), `WHO`: all, admin or none; others get 201")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: vpnd [flags]

vpnd is the VPN manager daemon. It serves setUp, protect, destroy,
status, subscribe and setLockdown on a Unix socket.

Start-up, in this order; any failure exits 1 with a message and touches
nothing further:
  1. vpnd needs CAP_NET_ADMIN (run it as root, or grant it, e.g.
     AmbientCapabilities=CAP_NET_ADMIN) and a /dev/net/tun it can open.
     --state-dir is checked as the socket's directory is (step 3), and
     must be vpnd's alone: not writable by group or others, sticky or
     not. One vpnd at a time uses it; a second one names the first and
     exits. Each state file must be a regular file of vpnd's, at most
     1 MiB, one JSON value within the limits of the methods.
     The DNS backend must be usable (below).
  2. At most one vpnd serves a network namespace's --ifname, --table,
     --rule-priority (and --rule-priority+1, for lockdown rules) and
     --nft-table. vpnd claims each with an abstract socket, e.g.
     @vpnd/table/98; a second vpnd, whatever its --socket, names the
     running one (pid and command line) and exits. Then vpnd checks that
     the kernel can hold its nftables table (nf_tables, the inet family),
     the firewall of lockdown and of the other family's fail-closed.
  3. The socket's directory, and each directory on the way to it, must
     not be a symbolic link, must be owned by root or vpnd's own user, and
     must not be writable by group or others unless it is sticky. Missing
     directories are created 0755, the socket 0666, whatever the umask. A
     socket another process serves on (a vpnd in another namespace, too)
     is refused; a stale one is replaced.
     Under systemd socket activation (LISTEN_PID, LISTEN_FDS: one
     listening Unix stream socket, e.g. dist/systemd/vpnd.socket) vpnd
     serves that socket instead, and never creates, chmods or removes it.
  4. Only then does vpnd remove what a killed vpnd left behind (its
     interface, its rules at its priority, the routes in its table,
     lockdown's rules and its nftables table that the stored lockdown does
     not want; a resolv.conf that --dns-backend file had replaced is
     restored, if its record is for this --resolv-conf), applies the
     stored lockdown, and serves. With NOTIFY_SOCKET set (systemd's
     Type=notify) it then sends READY=1. From then on it keeps the kernel
     as it wants it: what something else deletes or changes of its link,
     rules, routes or nftables table it puts back, retrying until the
     kernel matches.

DNS: with --dns-backend resolved (or auto, when systemd-resolved answers
on the system bus), the VPN link gets the VPN's DNS servers and search
domains in systemd-resolved, and every query when the VPN is a full
tunnel. With file, vpnd rewrites --resolv-conf while the VPN is up and
puts the previous file back, byte for byte, when it ends (at the next
start after a SIGKILL); if someone else edited it meanwhile, vpnd removes
only its own lines and keeps the rest. A resolv.conf over 64 KiB is
refused.
Only an admin's VPN changes the host's resolver; a VPN without DNS servers
changes nothing.

Simulation mode (--sim), for testing VPN apps without root: vpnd runs as
any user, needs no privilege, and changes nothing in the kernel's network
configuration. The socket, peer credentials, account types, check order,
errors, config rules and lifetime events are the same; the VPN lives in
vpnd's memory only (VpnInfo says "simulated": true), and setUp hands out
one end of a SOCK_SEQPACKET socket pair instead of a TUN fd: one IP packet
per message. vpnd answers ICMP and ICMPv6 echo requests sent to the VPN's
own addresses, drops every other packet, and ends the VPN (linkGone) when
the app closes its end. protect checks the socket and sets no mark; DNS
settings are checked and reported only. Steps 1, 2 and 4 above are
skipped, so any number may run, each with its own --state-dir; lockdown
is stored there and applies to the simulation only. Defaults change to --socket
$XDG_RUNTIME_DIR/vpnd-sim.sock and --state-dir $XDG_STATE_HOME/vpnd-sim
(or ~/.local/state/vpnd-sim). Without XDG_RUNTIME_DIR (su, sudo,
containers, ssh without a session) the socket goes in /run/user/UID if
that is yours alone, else in $TMPDIR/vpnd-runtime-UID (made 0700), and
vpnd says which.

vpnd needs no privilege but CAP_NET_ADMIN: it runs as any user that holds
it (e.g. setpriv --ambient-caps=+net_admin, or systemd's
AmbientCapabilities=CAP_NET_ADMIN), given a /dev/net/tun it may open, a
--state-dir it may write and a socket directory it owns.

--metrics-listen ADDR serves Prometheus metrics at http://ADDR/metrics
(requests by method and code, setUp latency, the VPN's state, teardowns
by reason, self-healing repairs, connections).

Signals: SIGTERM or SIGINT sends STOPPING=1 to systemd (if NOTIFY_SOCKET
is set), ends the VPN, removes the socket (not a socket-activated one) and
exits 0; SIGHUP reloads the --accounts policy (a bad file keeps the old
policy); SIGUSR1 logs the goroutine, fd and connection counts ("runtime
stats").

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, 0, err
	}
	switch {
	case o.version:
		return o, 0, nil
	case o.manDir != "":
		return o, 0, writeManPage(fs, o.manDir)
	}
	if fs.NArg() > 0 {
		return nil, 0, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.sim {
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		if err := simDefaults(o, given, os.Getenv, stderr); err != nil {
			return nil, 0, err
		}
	}
	// The kernel would expand a '%' into a number, so vpnd could not
	// find its own link again; tun.ValidateName refuses it with the rest.
	if err := tun.ValidateName(o.ifname); err != nil {
		return nil, 0, fmt.Errorf("--ifname: %w", err)
	}
	switch o.table {
	case 0, 253, 254, 255:
		return nil, 0, fmt.Errorf("--table %d: reserved table", o.table)
	}
	if o.table > 1<<32-1 {
		return nil, 0, fmt.Errorf("--table %d: out of range", o.table)
	}
	// Priority+1 holds lockdown's rules, and must stay before main's 32766.
	if o.priority < 1 || o.priority > 32764 {
		return nil, 0, fmt.Errorf("--rule-priority %d: out of range 1-32764", o.priority)
	}
	if !slices.Contains(dns.Backends, o.dnsBackend) {
		return nil, 0, fmt.Errorf("--dns-backend %q: want auto, resolved, file or none", o.dnsBackend)
	}
	mark, err := strconv.ParseUint(o.protectMark, 0, 32)
	if err != nil || mark == 0 {
		return nil, 0, fmt.Errorf("--protect-mark %q: must be a non-zero 32-bit number", o.protectMark)
	}
	if o.maxConns < 1 {
		return nil, 0, fmt.Errorf("--max-connections %d: must be at least 1", o.maxConns)
	}
	if o.maxPerUser < 0 {
		return nil, 0, fmt.Errorf("--max-connections-per-user %d: must not be negative", o.maxPerUser)
	}
	if o.offload, err = manager.ParseOffloadPolicy(o.allowOffload); err != nil {
		return nil, 0, fmt.Errorf("--allow-offload: %w", err)
	}
	return o, uint32(mark), nil
}

func newLogger(level, format string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.Set(level); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "console":
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		return nil, fmt.Errorf("--log-format %q: want json or console", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl)), nil
}

func run(args []string, stderr io.Writer) int {
	o, mark, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: %v\n", err)
		return 2
	}
	if o.version {
		fmt.Fprintf(os.Stdout, "vpnd version %s\n", version.String())
		return 0
	}
	if o.manDir != "" {
		return 0
	}
	log, err := newLogger(o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: %v\n", err)
		return 2
	}
	defer log.Sync()
	if o.sweep {
		return sweepAndExit(o, mark, log, stderr)
	}

	policy, err := auth.LoadPolicy(o.accounts)
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: accounts policy: %v\n", err)
		return 1
	}
	var holder auth.Holder
	holder.Store(policy)

	// Start-up order: nothing in the kernel or the file system is touched
	// before vpnd knows that it can work, that no other vpnd owns its
	// names here, and that its socket path is its own. Only then does it
	// sweep what a killed vpnd left behind.
	if !o.sim && !preflightOK(log, stderr) {
		return 1
	}
	// The state directory is checked as the socket's is, and locked: what
	// vpnd reads there decides which users are locked down and which file
	// it rewrites.
	state, err := state.Open(o.stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: %v\n", err)
		return 1
	}
	defer state.Close()
	lockdown, err := state.LoadLockdown()
	if err != nil {
		// Refusing to start keeps whatever lockdown rules are in the
		// kernel: it fails closed.
		fmt.Fprintf(stderr, "vpnd: %v\n", err)
		return 1
	}
	// The record of a resolv.conf that a killed vpnd had replaced is
	// checked now, and applied by the sweep.
	leftoverResolvConf, err := state.LoadResolvConf(o.resolvConf)
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: %v\n", err)
		return 1
	}
	// The DNS backend checks what it needs now (systemd-resolved answers,
	// the resolv.conf is a regular file), so that a backend that cannot
	// work stops vpnd here rather than failing every setUp. A simulation
	// applies no DNS.
	if o.sim && o.dnsBackend != dns.NameNone {
		if o.dnsBackend != dns.Auto {
			fmt.Fprintf(stderr, "vpnd: --dns-backend %s: a simulation applies no DNS settings; use none\n", o.dnsBackend)
			return 2
		}
		o.dnsBackend = dns.NameNone
	}
	resolver, err := dns.Open(dns.Config{Backend: o.dnsBackend, ResolvConf: o.resolvConf, State: state, Log: log.Named("dns")})
	if err != nil {
		log.Error("dns backend unusable", zap.String("backend", o.dnsBackend), zap.Error(err))
		fmt.Fprintf(stderr, "vpnd: %v\n", err)
		return 1
	}
	// A simulation owns nothing in the kernel: any number may run.
	if !o.sim {
		lock, err := ownership.Acquire(ownership.Resources(o.ifname, int(o.table), int(o.priority), o.nftTable))
		if err != nil {
			log.Error("names taken in this network namespace", zap.Error(err))
			fmt.Fprintf(stderr, "vpnd: %v: one vpnd at a time may serve a network namespace's interface, table and rule priorities; stop that one, or give this vpnd other --ifname, --table and --rule-priority\n", err)
			return 1
		}
		defer lock.Close() // last: after the VPN is torn down
	}
	kernel := openKernel(o.sim, o.nftTable, log, stderr)
	if kernel == nil {
		return 1
	}
	defer kernel.Close()
	// Metrics (off by default) bind now, so that a taken address fails at
	// start; they are served from when vpnd serves.
	var met *metrics.Metrics
	var metricsSrv *metrics.Server
	var mgrObserver manager.Observer
	var srvObserver server.Observer
	if o.metrics != "" {
		met = metrics.New()
		mgrObserver, srvObserver = met, met
		if metricsSrv, err = met.Listen(o.metrics); err != nil {
			fmt.Fprintf(stderr, "vpnd: %v\n", err)
			return 1
		}
		defer metricsSrv.Close()
	}
	// Under socket activation systemd owns the socket file: vpnd serves on
	// the socket it was given and never creates, chmods or removes it.
	ln, err := server.Activated()
	activated := ln != nil
	if err == nil && !activated {
		ln, err = server.Listen(o.socket)
	}
	if err != nil {
		log.Error("socket refused", zap.String("socket", o.socket), zap.Error(err))
		fmt.Fprintf(stderr, "vpnd: listen: %v\n", err)
		return 1
	}
	removeSocket := func() {
		if activated {
			return
		}
		if err := os.Remove(o.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("remove socket failed", zap.Error(err))
		}
	}

	mgr := manager.New(kernel, manager.Options{
		IfName:       o.ifname,
		Table:        int(o.table),
		RulePriority: int(o.priority),
		ProtectMark:  mark,
		Log:          log.Named("manager"),
		Store:        state,
		DNS:          resolver,
		Simulated:    o.sim,
		Observer:     mgrObserver,
		Offload:      o.offload,
	})
	// The start-up sweep, and lockdown: vpnd removes what a killed vpnd
	// left in its places and applies the stored lockdown, so that it is
	// in force before vpnd serves and a listed user is never free while
	// vpnd (re)starts.
	removed, err := mgr.Start(lockdown)
	if errors.Is(err, manager.ErrLinkExists) {
		// Not ours to remove: setUp answers 19900002 until it is gone.
		log.Warn("interface name taken by a foreign link", zap.String("ifname", o.ifname), zap.Error(err))
	} else if err != nil {
		mgr.Shutdown()
		ln.Close()
		removeSocket()
		fmt.Fprintf(stderr, "vpnd: start-up sweep: %v\n", err)
		return 1
	}
	if len(removed) > 0 {
		log.Info("start-up sweep removed leftovers", zap.Strings("removed", removed))
	}
	// A vpnd killed while its file backend had replaced a resolv.conf
	// left a record of the previous file: put it back before serving.
	if err := dns.RestoreLeftover(state, leftoverResolvConf, log.Named("dns")); err != nil {
		mgr.Shutdown()
		ln.Close()
		removeSocket()
		fmt.Fprintf(stderr, "vpnd: start-up sweep: %v\n", err)
		return 1
	} else if leftoverResolvConf != nil {
		log.Info("start-up sweep dealt with a resolv.conf left by a killed vpnd", zap.String("path", leftoverResolvConf.Path))
	}
	srv := server.New(server.Config{
		Manager:         mgr,
		Policy:          &holder,
		Users:           config.SystemUsers(),
		Log:             log.Named("server"),
		MaxConns:        o.maxConns,
		MaxConnsPerUser: o.maxPerUser,
		Observer:        srvObserver,
	})
	if met != nil {
		met.CountConnections(srv.Conns)
		go metricsSrv.Serve(log.Named("metrics"))
		log.Info("metrics served", zap.String("url", "http://"+metricsSrv.Addr().String()+metrics.Path))
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	sdNotify(log, daemon.SdNotifyReady)
	log.Info("vpnd serving", zap.Stringer("socket", ln.Addr()), zap.Bool("socket_activated", activated), zap.String("ifname", o.ifname),
		zap.Uint("table", o.table), zap.Uint("rule_priority", o.priority), zap.String("protect_mark", fmt.Sprintf("%#x", mark)),
		zap.String("dns_backend", resolver.Name()), zap.Bool("simulated", o.sim))

wait:
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				reload(log, o.accounts, &holder)
				continue
			case syscall.SIGUSR1:
				logStats(log, srv)
				continue
			}
			log.Info("shutting down", zap.Stringer("signal", sig))
		case err := <-served:
			log.Error("serve failed", zap.Error(err))
		}
		break wait
	}
	sdNotify(log, daemon.SdNotifyStopping)
	ln.Close()
	mgr.Shutdown()
	srv.Close()
	removeSocket()
	log.Info("vpnd stopped")
	return 0
}

// sdNotify tells systemd (Type=notify, NOTIFY_SOCKET) how vpnd's start or
// stop is going; without NOTIFY_SOCKET it does nothing.
func sdNotify(log *zap.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("systemd notification failed", zap.String("state", state), zap.Error(err))
	}
}

// logStats logs vpnd's goroutines, open fds and connections on SIGUSR1,
// so that leak checks (the integration tests, the soak command, an
// operator) can compare them over time.
func logStats(log *zap.Logger, srv *server.Server) {
	fds := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(ents) - 1 // ReadDir's own fd
	}
	log.Info("runtime stats", zap.Int("goroutines", runtime.NumGoroutine()), zap.Int("fds", fds), zap.Int("connections", srv.Conns()))
}

// reload re-reads the account policy on SIGHUP. A bad file keeps the
// policy in force, so a typo cannot lock everyone out or let guests in.
func reload(log *zap.Logger, path string, holder *auth.Holder) {
	p, err := auth.LoadPolicy(path)
	if err != nil {
		log.Error("policy reload failed, keeping the old policy", zap.String("path", path), zap.Error(err))
		return
	}
	holder.Store(p)
	log.Info("policy reloaded", zap.String("path", path))
}
