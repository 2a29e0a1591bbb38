package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/version"
	"github.com/vpnd/vpnd/protocol"
)

func init() {
	// List the commands in the order they are defined: the common ones
	// first.
	cobra.EnableCommandSorting = false
}

func newDownCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "down [--socket PATH]",
		Short: "destroy the VPN",
		Long: `Destroys the current VPN. Only its owner or an ADMIN account may do so
(201 otherwise). Succeeds if there is no VPN, except for a GUEST account:
a guest gets 2203001 from destroy whether or not a VPN exists.`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitCode(call(cmd.Context(), g, func(ctx context.Context, cl *client.Client) error {
				return cl.Destroy(ctx)
			}))
		},
	}
}

func newStatusCommand(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status [--socket PATH] [--json]",
		Short: "show whether a VPN is up, its configuration, and lockdown",
		Long: `Shows whether a VPN is up and, if so, how vpnd applied it: its routes and
their gateways, and which users' traffic it carries (covered uids). Also
shows whether lockdown is on. Anyone may ask.`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitCode(call(cmd.Context(), g, func(ctx context.Context, cl *client.Client) error {
				if asJSON {
					// As vpnd sent it, members this vpnctl does not
					// know included.
					raw, files, err := cl.Call(ctx, protocol.MethodStatus, struct{}{})
					closeFiles(files)
					if err != nil {
						return err
					}
					var b bytes.Buffer
					if err := json.Indent(&b, raw, "", "  "); err != nil {
						return fmt.Errorf("status: %w", err)
					}
					fmt.Fprintf(g.io.out, "%s\n", b.Bytes())
					return nil
				}
				st, err := cl.Status(ctx)
				if err != nil {
					return err
				}
				printStatus(g.io.out, st)
				return nil
			}))
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print vpnd's status result as JSON")
	return c
}

func printStatus(w io.Writer, st *protocol.StatusResult) {
	fmt.Fprintf(w, "state:           %s\n", st.State)
	fmt.Fprintf(w, "lockdown:        %s\n", lockdownString(st.Lockdown))
	v := st.VPN
	if v == nil {
		return
	}
	list := func(xs []string) string {
		if len(xs) == 0 {
			return "-"
		}
		return strings.Join(xs, " ")
	}
	fmt.Fprintf(w, "interface:       %s (index %d)\n", v.Interface, v.Index)
	if v.Simulated {
		fmt.Fprintf(w, "simulated:       yes (vpnd --sim: nothing in the kernel, echo replies only)\n")
	}
	fmt.Fprintf(w, "mtu:             %d\n", v.MTU)
	fmt.Fprintf(w, "addresses:       %s\n", list(v.Addresses))
	fmt.Fprintf(w, "routes:          %s\n", list(v.Routes))
	fmt.Fprintf(w, "route gateways:  %s\n", list(gateways(v)))
	fmt.Fprintf(w, "excluded routes: %s\n", list(v.ExcludedRoutes))
	fmt.Fprintf(w, "dns:             %s\n", list(v.DNSAddresses))
	fmt.Fprintf(w, "search domains:  %s\n", list(v.SearchDomains))
	fmt.Fprintf(w, "dns backend:     %s\n", v.DNSBackend)
	fmt.Fprintf(w, "ipv4 accepted:   %t\n", v.IsIPv4Accepted)
	fmt.Fprintf(w, "ipv6 accepted:   %t\n", v.IsIPv6Accepted)
	fmt.Fprintf(w, "metered:         %t\n", v.IsMetered)
	fmt.Fprintf(w, "offload:         %t\n", v.Offload)
	fmt.Fprintf(w, "trusted users:   %s\n", list(v.TrustedApplications))
	fmt.Fprintf(w, "blocked users:   %s\n", list(v.BlockedApplications))
	fmt.Fprintf(w, "covered uids:    %s\n", list(v.CoveredUIDs))
	fmt.Fprintf(w, "owner:           %s (uid %d, pid %d)\n", v.Owner.User, v.Owner.UID, v.Owner.PID)
	fmt.Fprintf(w, "since:           %s\n", v.Since)
}

// gateways lists "CIDR via GATEWAY" in the order of the VPN's routes.
func gateways(v *protocol.VpnInfo) []string {
	var out []string
	for _, r := range v.Routes {
		if gw, ok := v.RouteGateways[r]; ok {
			out = append(out, r+" via "+gw)
		}
	}
	return out
}

func lockdownString(l protocol.Lockdown) string {
	if !l.Enabled {
		return "off"
	}
	return "on for " + strings.Join(l.Applications, " ")
}

func newWatchCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "watch [--socket PATH]",
		Short: "print every VPN state change as a JSON line",
		Long: `Subscribes to vpnd and prints each vpnStateChanged notification's params as
one JSON line, until interrupted (exit 0) or the connection drops (exit 1).`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitCode(runWatch(cmd.Context(), g))
		},
	}
}

func runWatch(ctx context.Context, g *globals) int {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cl, err := client.Dial(ctx, g.socketPath())
	if err != nil {
		return interruptedOr(g, ctx, err)
	}
	defer cl.Close()
	events, err := cl.Subscribe(ctx)
	if err != nil {
		return interruptedOr(g, ctx, err)
	}
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return fail(g, cl.Err())
			}
			b, _ := json.Marshal(ev)
			fmt.Fprintf(g.io.out, "%s\n", b)
		case <-ctx.Done():
			return exitOK
		}
	}
}

func newProtectCommand(g *globals) *cobra.Command {
	var fd int
	c := &cobra.Command{
		Use:   "protect [--socket PATH] --fd N",
		Short: "let an inherited socket's traffic bypass the VPN",
		Long: `Asks vpnd to protect socket N, which vpnctl inherited, so that its traffic
bypasses the VPN: a VPN app's tunnel socket. Protection is a mark on the
socket itself, so it lasts as long as the socket, and works before a VPN
exists. While a VPN exists, only its owner or an ADMIN account may protect.

Protect the socket first, then connect it: a UDP connect, or the first
send, picks the route and the source address, and a socket connected
while the VPN's routes are in place keeps the VPN's source address after
protect.`,
		Example: `  # A tunnel socket, protected before it is connected:
  python3 -c '
  import socket, subprocess
  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
  subprocess.run(["vpnctl", "protect", "--fd", str(s.fileno())], pass_fds=[s.fileno()], check=True)
  s.connect(("192.0.2.1", 51820))'`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if fd < 0 {
				return fmt.Errorf("--fd %d: must not be negative", fd)
			}
			return exitCode(call(cmd.Context(), g, func(ctx context.Context, cl *client.Client) error {
				return cl.ProtectFD(ctx, fd)
			}))
		},
	}
	c.Flags().IntVar(&fd, "fd", -1, "the socket's file descriptor `N` (required)")
	c.MarkFlagRequired("fd")
	return c
}

func newLockdownCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "lockdown (on USER... | off | status)",
		Short: "let chosen users' traffic leave only through a VPN",
		Long: `Lockdown: while it is on, the listed users' traffic that no VPN carries is
refused (ENETUNREACH), with no VPN, between VPNs, and while vpnd restarts.
Their protected sockets still pass, so a VPN app can always (re)connect its
tunnel. It outlives VPNs and vpnd itself. Only an ADMIN account may turn it
on or off (201 otherwise); anyone may ask its status.`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// No subcommand: its usage, on stderr.
			cmd.SetOut(g.io.err)
			cmd.Help()
			return exitCode(exitUsage)
		},
	}
	setLockdown := func(ctx context.Context, l protocol.Lockdown) int {
		return call(ctx, g, func(ctx context.Context, cl *client.Client) error {
			return cl.SetLockdown(ctx, l)
		})
	}
	c.AddCommand(&cobra.Command{
		Use:                   "on [--socket PATH] USER...",
		Short:                 "turn lockdown on for these users (names or uids), replacing the list",
		Example:               "  sudo vpnctl lockdown on alice bob     # alice's and bob's traffic: through a VPN or not at all",
		Args:                  cobra.MinimumNArgs(1),
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitCode(setLockdown(cmd.Context(), protocol.Lockdown{Enabled: true, Applications: args}))
		},
	}, &cobra.Command{
		Use:                   "off [--socket PATH]",
		Short:                 "turn lockdown off",
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitCode(setLockdown(cmd.Context(), protocol.Lockdown{}))
		},
	}, &cobra.Command{
		Use:                   "status [--socket PATH]",
		Short:                 `print "on for USER..." or "off"`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitCode(call(cmd.Context(), g, func(ctx context.Context, cl *client.Client) error {
				st, err := cl.Status(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintln(g.io.out, lockdownString(st.Lockdown))
				return nil
			}))
		},
	})
	return c
}

func newExplainCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "explain CODE",
		Short: "explain an error code, and when vpnd answers it",
		Long: `Prints an error code's name, message, description, OpenHarmony's possible
causes and solution, then each case in which this vpnd answers it: how the
error's detail reads then, and what to do.`,
		Example:               "  vpnctl explain 19900002\n  vpnctl explain -32700",
		DisableFlagsInUseLine: true,
		// Parsed below, so that a negative code such as -32700 is a
		// code, not a flag.
		DisableFlagParsing: true,
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			var codes []string
			for _, c := range errs.Codes() {
				codes = append(codes, fmt.Sprintf("%d\t%s", int(c), c.Message()))
			}
			return codes, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if _, err := strconv.Atoi(args[0]); err == nil {
					args = []string{"--", args[0]}
				}
			}
			fs := pflag.NewFlagSet("explain", pflag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fs.AddFlagSet(cmd.Flags())
			fs.AddFlagSet(cmd.InheritedFlags()) // --socket: accepted, unused
			if err := fs.Parse(args); err != nil {
				return err
			}
			if help, _ := fs.GetBool("help"); help {
				return cmd.Help()
			}
			args = fs.Args()
			if len(args) != 1 {
				return fmt.Errorf("want exactly one CODE")
			}
			code, err := strconv.Atoi(args[0])
			if err != nil {
				return fmt.Errorf("CODE %q is not a number", args[0])
			}
			return exitCode(explain(g, errs.Code(code)))
		},
	}
}

func explain(g *globals, code errs.Code) int {
	if u, ok := errs.LookupUnsent(code); ok {
		fmt.Fprintf(g.io.out, "%d %s\n\n%s\n", int(u.Code), u.Name, u.Instead)
		return exitOK
	}
	e, ok := errs.Lookup(code)
	if !ok {
		fmt.Fprintf(g.io.err, "vpnctl: unknown error code %d; the codes vpnd answers are:\n", int(code))
		for _, c := range errs.Codes() {
			fmt.Fprintf(g.io.err, "  %-9d %s\n", int(c), c.Message())
		}
		for _, c := range []errs.Code{-32602, -32603} {
			u, _ := errs.LookupUnsent(c)
			fmt.Fprintf(g.io.err, "  %-9d %s: never sent by vpnd\n", int(c), u.Name)
		}
		return exitFailure
	}
	printExplanation(g.io.out, e)
	return exitOK
}

func printExplanation(w io.Writer, e errs.Entry) {
	fmt.Fprintf(w, "%d %s\n\n", int(e.Code), e.Name)
	fmt.Fprintf(w, "Message:     %s\n", e.Message)
	fmt.Fprintf(w, "Description: %s\n", e.Description)
	fmt.Fprintf(w, "Causes:      %s\n", e.Cause)
	fmt.Fprintf(w, "Solution:    %s\n", e.Solution)
	fmt.Fprintf(w, "\nWhen vpnd answers %d:\n", int(e.Code))
	for _, c := range errs.Causes(e.Code) {
		fmt.Fprintf(w, "  - %s\n", c.Text)
		for _, k := range c.Cases {
			fmt.Fprintf(w, "      %s\n", k)
		}
		if c.Detail != "" {
			fmt.Fprintf(w, "    detail: %s\n", c.Detail)
		}
		if c.Fix != "" {
			fmt.Fprintf(w, "    what to do: %s\n", c.Fix)
		}
	}
}

// newManCommand writes the man pages, generated from the commands' own
// definitions (synopsis, description, examples, flags), so that they
// cannot drift from --help. Hidden: it is for packagers and for CI.
func newManCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                   "man DIR",
		Short:                 "write vpnctl's man pages (section 1) into DIR",
		Hidden:                true,
		Args:                  cobra.ExactArgs(1),
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := writeManPages(cmd.Root(), args[0]); err != nil {
				fmt.Fprintf(g.io.err, "vpnctl: man: %v\n", err)
				return exitCode(exitFailure)
			}
			return nil
		},
	}
}

func writeManPages(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root.DisableAutoGenTag = true
	header := &doc.GenManHeader{Section: "1", Source: "vpnd " + version.String(), Manual: "vpnd manual"}
	return doc.GenManTree(root, header, dir)
}

// call dials vpnd, runs fn, and reports a failure; it returns the exit
// status.
func call(ctx context.Context, g *globals, fn func(context.Context, *client.Client) error) int {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cl, err := client.Dial(ctx, g.socketPath())
	if err != nil {
		return interruptedOr(g, ctx, err)
	}
	defer cl.Close()
	if err := fn(ctx, cl); err != nil {
		return interruptedOr(g, ctx, err)
	}
	return exitOK
}

// interruptedOr reports err, or a plain "interrupted" if a signal caused it.
func interruptedOr(g *globals, ctx context.Context, err error) int {
	if ctx.Err() != nil {
		fmt.Fprintln(g.io.err, "vpnctl: interrupted")
		return exitFailure
	}
	return fail(g, err)
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
