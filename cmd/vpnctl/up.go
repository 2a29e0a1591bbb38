package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/protocol"
)

// destroyTimeout bounds the final destroy, so that a wedged vpnd cannot
// keep vpnctl from exiting. Closing the connection ends the VPN anyway.
const destroyTimeout = 10 * time.Second

const upLong = `Sets up a VPN and holds the TUN device open.

Without CMD, vpnctl prints the VPN's VpnInfo as JSON on stdout and holds
the VPN until it gets SIGINT or SIGTERM, then destroys it and exits 0. It
exits 1 with a message if the VPN ends some other way (the interface was
deleted, vpnd shut down) or the connection to vpnd drops.

With "-- CMD ARGS...", vpnctl prints the VpnInfo on stderr instead, so that
stdout is CMD's alone, and runs CMD with the TUN device as fd 3 (and
VPN_TUN_FD=3 in its environment). It forwards SIGINT and SIGTERM to CMD.
When CMD exits, vpnctl destroys the VPN (vpnStateChanged reason "destroy"),
closes its own copy of the fd and exits with CMD's status (128+N if CMD
was killed by signal N). The VPN lasts as long as CMD runs, even if CMD
closes fd 3. If the VPN ends first (vpnd shut down, the interface was
deleted) or the connection to vpnd drops, vpnctl says why on stderr, lets
CMD finish, and exits with CMD's status. At a terminal, whose Ctrl-C reaches CMD directly, a SIGINT is
forwarded only if CMD is still running a second later.

--quiet leaves the VpnInfo and vpnctl's own notices out; errors are still
printed.

The VPN is described either by the flags below or by --config, whose
file is sent to vpnd unchanged (addresses and routes as CIDR strings or in
OpenHarmony's object form). vpnd validates the configuration; see
"vpnctl explain 19900001". A refusal prints vpnd's error, then the
explain command that lists its causes.`

const upExample = `  vpnctl up --address 10.8.0.2/24 --route 198.51.100.0/24   # holds the VPN until Ctrl-C
  vpnctl up --address 10.8.0.2/24 --route 10.0.0.0/8,via=10.8.0.1 --exclude 10.1.0.0/16
  vpnctl up --config vpn.json -- ./my-vpn-app              # the app gets the TUN as fd 3`

func newUpCommand(g *globals) *cobra.Command {
	var o upOptions
	var quiet bool
	c := &cobra.Command{
		Use:                   "up [--socket PATH] (CONFIG FLAGS | --config FILE.json) [--quiet] [-- CMD [ARGS...]]",
		Short:                 "set up a VPN and hold it until interrupted, or while CMD runs",
		Long:                  upLong,
		Example:               upExample,
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			var argv []string
			switch dash := cmd.ArgsLenAtDash(); {
			case dash < 0 && len(args) > 0, dash > 0:
				return fmt.Errorf("unexpected argument %q (put a command after --)", args[0])
			case dash == 0:
				argv = args
			}
			set := map[string]bool{}
			cmd.Flags().Visit(func(f *pflag.Flag) { set[f.Name] = true })
			params, err := o.params(set, g.io.in)
			if err != nil {
				return err
			}
			return exitCode(runUp(cmd.Context(), g, params, argv, quiet))
		},
	}
	o.register(c.Flags())
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print neither the VpnInfo nor vpnctl's notices, only errors")
	c.MarkFlagFilename("config", "json")
	return c
}

// runUp sets the VPN up with params, then holds it, or runs argv with it.
func runUp(ctx context.Context, g *globals, params json.RawMessage, argv []string, quiet bool) int {
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
	cl, err := client.Dial(setupCtx, g.socketPath())
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
		code := fail(g, err)
		var e *errs.Error
		if errors.As(err, &e) {
			fmt.Fprintf(g.io.err, "  see: vpnctl explain %d\n", int(e.Code))
		}
		return code
	}
	// With CMD, stdout is CMD's.
	infoOut := g.io.out
	if len(argv) > 0 {
		infoOut = g.io.err
	}
	if !quiet {
		b, _ := json.MarshalIndent(info, "", "  ")
		fmt.Fprintf(infoOut, "%s\n", b)
	}
	if len(info.DNSAddresses) > 0 && (info.DNSBackend == "" || info.DNSBackend == "none") {
		fmt.Fprintln(g.io.err, "vpnctl: warning: vpnd applies none of the VPN's DNS servers (dnsBackend \"none\"): this host's resolver still answers every query")
	}

	// Subscribe to notice a VPN that ends without us (linkGone,
	// shutdown), and say why. Without it we would still notice vpnd
	// going away.
	events, err := cl.Subscribe(ctx)
	if err != nil {
		fmt.Fprintf(g.io.err, "vpnctl: warning: cannot watch the VPN's state: %v\n", err)
	}
	if len(argv) > 0 {
		return runWithTUN(g, cl, tun, argv, sigc, events)
	}
	defer tun.Close()
	if !quiet {
		fmt.Fprintln(g.io.err, "vpnctl: VPN is up; interrupt to end it")
	}
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
			if ended(g, ev) {
				return exitFailure
			}
		case <-cl.Done():
			// vpnd says why the VPN ended just before it closes the
			// connection (vpnStateChanged "shutdown"): that notification,
			// which the channel still holds, says more than the end of
			// the connection. The channel closes after it.
			if events != nil {
				for ev := range events {
					if ended(g, ev) {
						return exitFailure
					}
				}
			}
			return fail(g, cl.Err())
		}
	}
}

// ended reports whether ev says the VPN ended, and if so says why.
func ended(g *globals, ev protocol.StateChanged) bool {
	if ev.IsConnected {
		return false
	}
	fmt.Fprintf(g.io.err, "vpnctl: the VPN ended (%s)\n", ev.Reason)
	return true
}

func destroy(g *globals, cl *client.Client) int {
	ctx, cancel := context.WithTimeout(context.Background(), destroyTimeout)
	defer cancel()
	if err := cl.Destroy(ctx); err != nil {
		return fail(g, err)
	}
	return exitOK
}

// runWithTUN runs argv with tun as fd 3 and, when it exits, destroys the
// VPN and closes tun. vpnctl keeps its copy of tun until then: were CMD's
// the last, its exit would delete the interface, and vpnd would end the VPN
// as linkGone before the destroy arrived. If the VPN ends first (events
// says why, or vpnd goes away), vpnctl says so and lets CMD finish.
func runWithTUN(g *globals, cl *client.Client, tun *os.File, argv []string, sigc <-chan os.Signal, events <-chan protocol.StateChanged) int {
	defer tun.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = g.io.in, g.io.out, g.io.err
	cmd.ExtraFiles = []*os.File{tun} // fd 3
	cmd.Env = append(os.Environ(), "VPN_TUN_FD=3")
	if err := cmd.Start(); err != nil {
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
	over := false // the VPN ended without us: no destroy
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
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if !ev.IsConnected {
				// The VPN is over, but CMD is the user's; let it
				// finish. vpnd may close the connection next.
				fmt.Fprintf(g.io.err, "vpnctl: the VPN ended (%s); waiting for %s to exit\n", ev.Reason, argv[0])
				events, over = nil, true
			}
		case <-lost:
			// vpnd went away: the VPN is over as far as vpnd is
			// concerned, but CMD is the user's; let it finish. vpnd
			// says why just before it closes the connection
			// (shutdown): that notification, which the channel still
			// holds, says more than the end of the connection.
			lost = nil
			if !over {
				if reason, ok := endReason(events); ok {
					fmt.Fprintf(g.io.err, "vpnctl: the VPN ended (%s); waiting for %s to exit\n", reason, argv[0])
				} else {
					fmt.Fprintf(g.io.err, "%s; waiting for %s to exit\n", formatError(cl.Err()), argv[0])
				}
			}
			events, over = nil, true
		case <-waited:
			status := exitStatus(cmd.ProcessState)
			if !over {
				if code := destroy(g, cl); code != exitOK && status == 0 {
					status = code
				}
			}
			return status
		}
	}
}

// endReason reads what is left of events, which the client closes once
// the connection has ended, for the notification that the VPN ended, and
// returns its reason.
func endReason(events <-chan protocol.StateChanged) (string, bool) {
	if events == nil {
		return "", false
	}
	for ev := range events {
		if !ev.IsConnected {
			return ev.Reason, true
		}
	}
	return "", false
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
