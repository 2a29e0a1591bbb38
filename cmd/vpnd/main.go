// Command vpnd is the VPN manager daemon. See README.md and the contract.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/server"
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/protocol"
)

// options are vpnd's flags (contract §8).
type options struct {
	socket      string
	accounts    string
	ifname      string
	table       uint
	priority    uint
	protectMark string
	logLevel    string
	logFormat   string
	maxConns    int
	maxPerUser  int
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func parseFlags(args []string, stderr io.Writer) (*options, uint32, error) {
	o := &options{}
	fs := flag.NewFlagSet("vpnd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.socket, "socket", protocol.DefaultSocket, "path of the Unix socket to serve")
	fs.StringVar(&o.accounts, "accounts", "", "account policy JSON file (default: the embedded policy: uid 0 admin, nobody and groups guest/guests guest, others normal)")
	fs.StringVar(&o.ifname, "ifname", "vpn-tun", "name of the TUN interface (1-15 bytes)")
	fs.UintVar(&o.table, "table", 98, "routing table for the VPN's routes (not 0, 253, 254 or 255)")
	fs.UintVar(&o.priority, "rule-priority", 10000, "priority of the VPN's policy rules (1-32765)")
	fs.StringVar(&o.protectMark, "protect-mark", "0x20000", "SO_MARK bit(s) that protect sets and the owner's rule excludes")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "console", "log format: json or console")
	fs.IntVar(&o.maxConns, "max-connections", server.DefaultMaxConns, "most clients served at once; more are refused with an error (admin accounts may hold 16 more)")
	fs.IntVar(&o.maxPerUser, "max-connections-per-user", server.DefaultMaxPerUser, "most connections one uid may hold at once, admin accounts excepted (0: no per-user limit)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: vpnd [flags]

vpnd is the VPN manager daemon. It serves setUp, protect, destroy, status
and subscribe on a Unix socket and must run as root (CAP_NET_ADMIN). At
start it removes what a killed vpnd left behind (its interface, its rules
at its priority, the routes in its table). While a VPN is up it restores
its rules and routes if something else deletes or changes them.

Signals: SIGTERM or SIGINT ends the VPN, removes the socket and exits 0;
SIGHUP reloads the --accounts policy (a bad file keeps the old policy);
SIGUSR1 logs the goroutine, fd and connection counts ("runtime stats").

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, 0, err
	}
	if fs.NArg() > 0 {
		return nil, 0, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if n := len(o.ifname); n == 0 || n > 15 || strings.ContainsAny(o.ifname, "/ \t\n:") || o.ifname == "." || o.ifname == ".." {
		return nil, 0, fmt.Errorf("--ifname %q: must be 1-15 bytes without '/', ':' or white space", o.ifname)
	}
	switch o.table {
	case 0, 253, 254, 255:
		return nil, 0, fmt.Errorf("--table %d: reserved table", o.table)
	}
	if o.table > 1<<32-1 {
		return nil, 0, fmt.Errorf("--table %d: out of range", o.table)
	}
	if o.priority < 1 || o.priority > 32765 {
		return nil, 0, fmt.Errorf("--rule-priority %d: out of range 1-32765", o.priority)
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
	log, err := newLogger(o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: %v\n", err)
		return 2
	}
	defer log.Sync()

	policy, err := auth.LoadPolicy(o.accounts)
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: accounts policy: %v\n", err)
		return 1
	}
	var holder auth.Holder
	holder.Store(policy)

	removed, err := tun.Sweep(log.Named("sweep"), o.ifname, int(o.table), int(o.priority))
	if errors.Is(err, tun.ErrLinkExists) {
		// Not ours to remove: setUp answers 19900002 until it is gone.
		log.Warn("interface name taken by a foreign link", zap.String("ifname", o.ifname), zap.Error(err))
	} else if err != nil {
		fmt.Fprintf(stderr, "vpnd: start-up sweep: %v\n", err)
		return 1
	}
	if len(removed) > 0 {
		log.Info("start-up sweep removed leftovers", zap.Strings("removed", removed))
	}

	ln, err := server.Listen(o.socket)
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: listen: %v\n", err)
		return 1
	}
	mgr := manager.New(tun.New(log.Named("tun")), manager.Options{
		IfName:       o.ifname,
		Table:        int(o.table),
		RulePriority: int(o.priority),
		ProtectMark:  mark,
		Log:          log.Named("manager"),
	})
	srv := server.New(server.Config{
		Manager:         mgr,
		Policy:          &holder,
		Users:           config.SystemUsers(),
		Log:             log.Named("server"),
		MaxConns:        o.maxConns,
		MaxConnsPerUser: o.maxPerUser,
	})

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("vpnd serving", zap.String("socket", o.socket), zap.String("ifname", o.ifname),
		zap.Uint("table", o.table), zap.Uint("rule_priority", o.priority), zap.String("protect_mark", fmt.Sprintf("%#x", mark)))

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
	ln.Close()
	mgr.Shutdown()
	srv.Close()
	if err := os.Remove(o.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("remove socket failed", zap.Error(err))
	}
	log.Info("vpnd stopped")
	return 0
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
