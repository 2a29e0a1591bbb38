package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/protocol"
)

// destroyTimeout bounds the final destroy, so that a wedged vpnd cannot
// keep vpnctl from exiting. Closing the connection ends the VPN anyway.
const destroyTimeout = 10 * time.Second

var upCommand = &command{
	name:     "up",
	synopsis: "[--socket PATH] (CONFIG FLAGS | --config FILE.json) [-- CMD [ARGS...]]",
	summary:  "set up a VPN and hold it until interrupted, or while CMD runs",
	help: `
Sets up a VPN, prints its VpnInfo as JSON and holds the TUN device open.

Without CMD, vpnctl holds the VPN until it gets SIGINT or SIGTERM, then
destroys it and exits 0. It exits 1 with a message if the VPN ends some
other way (the interface was deleted, vpnd shut down) or the connection to
vpnd drops.

With "-- CMD ARGS...", vpnctl runs CMD with the TUN device as fd 3 (and
VPN_TUN_FD=3 in its environment), closes its own copy of the fd, forwards
SIGINT and SIGTERM to CMD, destroys the VPN when CMD exits and exits with
CMD's status (128+N if CMD was killed by signal N). At a terminal, whose
Ctrl-C reaches CMD directly, a SIGINT is forwarded only if CMD is still
running a second later.

The VPN is described either by the flags below or by --config, whose
file is sent to vpnd unchanged (addresses and routes as CIDR strings or in
OpenHarmony's object form). vpnd validates the configuration; see
"vpnctl explain 19900001".`,
}

func runUp(ctx context.Context, g *globals, args []string) int {
	c := upCommand
	fs, sock := newFlagSet(c, g)
	var o upOptions
	o.register(fs)
	if code, ok := parseFlags(c, g, fs, sock, args); !ok {
		return code
	}
	argv := fs.Args()
	if n := len(args) - len(argv); len(argv) > 0 && (n == 0 || args[n-1] != "--") {
		return usageError(g, c, "unexpected argument %q (put a command after --)", argv[0])
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	params, err := o.params(set, g.io.in)
	if err != nil {
		return usageError(g, c, "%v", err)
	}

	// Listen before anything exists to clean up, and keep listening: a
	// signal during setUp cancels it, a signal later ends the VPN.
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigc)

	setupCtx, cancel := context.WithCancel(ctx)
	interrupted, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-sigc:
			close(interrupted)
			cancel()
		case <-setupCtx.Done():
		}
	}()
	var tun *os.File
	var info *protocol.VpnInfo
	cl, err := client.Dial(setupCtx, g.socket)
	if err == nil {
		defer cl.Close()
		tun, info, err = cl.SetUpRaw(setupCtx, params)
	}
	cancel()
	<-watched // from here on, signals stay in sigc
	select {
	case <-interrupted:
		// If setUp won the race, closing the TUN and the deferred
		// Close end the VPN.
		if tun != nil {
			tun.Close()
		}
		fmt.Fprintln(g.io.err, "vpnctl: interrupted")
		return exitFailure
	default:
	}
	if err != nil {
		return fail(g, err)
	}
	b, _ := json.MarshalIndent(info, "", "  ")
	fmt.Fprintf(g.io.out, "%s\n", b)
	if len(info.DNSAddresses) > 0 && (info.DNSBackend == "" || info.DNSBackend == "none") {
		fmt.Fprintln(g.io.err, "vpnctl: warning: vpnd applies none of the VPN's DNS servers (dnsBackend \"none\"): this host's resolver still answers every query")
	}

	if len(argv) > 0 {
		return runWithTUN(g, cl, tun, argv, sigc)
	}
	defer tun.Close()
	// Subscribe to notice a VPN that ends without us (linkGone,
	// shutdown). Without it we would still notice vpnd going away.
	events, err := cl.Subscribe(ctx)
	if err != nil {
		fmt.Fprintf(g.io.err, "vpnctl: warning: cannot watch the VPN's state: %v\n", err)
	}
	fmt.Fprintln(g.io.err, "vpnctl: VPN is up; interrupt to end it")
	return hold(g, cl, events, sigc)
}

// hold keeps the VPN until a signal arrives (destroy, exit 0), the VPN
// ends on its own, or vpnd goes away (exit 1).
func hold(g *globals, cl *client.Client, events <-chan protocol.StateChanged, sigc <-chan os.Signal) int {
	for {
		select {
		case <-sigc:
			return destroy(g, cl)
		case ev, ok := <-events:
			if !ok {
				events = nil // Done tells why
				continue
			}
			if !ev.IsConnected {
				fmt.Fprintf(g.io.err, "vpnctl: the VPN ended (%s)\n", ev.Reason)
				return exitFailure
			}
		case <-cl.Done():
			return fail(g, cl.Err())
		}
	}
}

func destroy(g *globals, cl *client.Client) int {
	ctx, cancel := context.WithTimeout(context.Background(), destroyTimeout)
	defer cancel()
	if err := cl.Destroy(ctx); err != nil {
		return fail(g, err)
	}
	return exitOK
}

// runWithTUN runs argv with tun as fd 3 and ends the VPN when it exits.
func runWithTUN(g *globals, cl *client.Client, tun *os.File, argv []string, sigc <-chan os.Signal) int {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = g.io.in, g.io.out, g.io.err
	cmd.ExtraFiles = []*os.File{tun} // fd 3
	cmd.Env = append(os.Environ(), "VPN_TUN_FD=3")
	err := cmd.Start()
	// CMD holds the TUN now: once it exits, the interface is gone even
	// if the destroy below fails.
	tun.Close()
	if err != nil {
		fmt.Fprintf(g.io.err, "vpnctl: %v\n", err)
		destroy(g, cl)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return 127
		}
		return 126
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	// At a terminal, Ctrl-C sends SIGINT to the whole foreground process
	// group, CMD included; forwarding it at once would make CMD see two,
	// which many programs take as "quit now, skip the clean-up". So there
	// a SIGINT is forwarded only if CMD is still running after
	// interruptGrace: that covers a SIGINT sent to vpnctl alone.
	interactive := isTerminal(g.io.in)
	var late <-chan time.Time
	lost := cl.Done()
	for {
		select {
		case s := <-sigc:
			if s == syscall.SIGINT && interactive {
				late = time.After(interruptGrace)
				continue
			}
			cmd.Process.Signal(s)
		case <-late:
			late = nil
			cmd.Process.Signal(syscall.SIGINT)
		case <-lost:
			// vpnd went away: the VPN is over as far as vpnd is
			// concerned, but CMD is the user's; let it finish.
			fmt.Fprintf(g.io.err, "%s; waiting for %s to exit\n", formatError(cl.Err()), argv[0])
			lost = nil
		case <-waited:
			status := exitStatus(cmd.ProcessState)
			if lost != nil {
				if code := destroy(g, cl); code != exitOK && status == 0 {
					status = code
				}
			}
			return status
		}
	}
}

// interruptGrace is how long CMD has to exit on a terminal's SIGINT before
// vpnctl forwards its own.
const interruptGrace = time.Second

// isTerminal reports whether r is a terminal.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var terr error = errors.New("no control")
	rc.Control(func(fd uintptr) { _, terr = unix.IoctlGetTermios(int(fd), unix.TCGETS) })
	return terr == nil
}

// exitStatus maps how CMD ended to vpnctl's exit status, as a shell does.
func exitStatus(ps *os.ProcessState) int {
	if ps == nil {
		return exitFailure
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if code := ps.ExitCode(); code >= 0 {
		return code
	}
	return exitFailure
}
