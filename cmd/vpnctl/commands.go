package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/protocol"
)

var downCommand = &command{
	name:     "down",
	synopsis: "[--socket PATH]",
	summary:  "destroy the VPN",
	help: `
Destroys the current VPN. Only its owner or an ADMIN account may do so.
Succeeds if there is no VPN.`,
}

func runDown(ctx context.Context, g *globals, args []string) int {
	return oneShot(ctx, g, downCommand, args, nil, nil, func(ctx context.Context, cl *client.Client) error {
		return cl.Destroy(ctx)
	})
}

var statusCommand = &command{
	name:     "status",
	synopsis: "[--socket PATH] [--json]",
	summary:  "show whether a VPN is up, and its configuration",
	help: `
Shows whether a VPN is up and, if so, how vpnd applied it. Anyone may ask.`,
}

func runStatus(ctx context.Context, g *globals, args []string) int {
	var asJSON bool
	{
		return oneShot(ctx, g, statusCommand, args,
			func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print vpnd's status result as JSON") },
			nil,
			func(ctx context.Context, cl *client.Client) error {
				st, err := cl.Status(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					b, _ := json.MarshalIndent(st, "", "  ")
					fmt.Fprintf(g.io.out, "%s\n", b)
					return nil
				}
				printStatus(g.io.out, st)
				return nil
			})
	}
}

func printStatus(w io.Writer, st *protocol.StatusResult) {
	fmt.Fprintf(w, "state:           %s\n", st.State)
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
	fmt.Fprintf(w, "excluded routes: %s\n", list(v.ExcludedRoutes))
	fmt.Fprintf(w, "dns:             %s\n", list(v.DNSAddresses))
	fmt.Fprintf(w, "search domains:  %s\n", list(v.SearchDomains))
	fmt.Fprintf(w, "ipv4 accepted:   %t\n", v.IsIPv4Accepted)
	fmt.Fprintf(w, "ipv6 accepted:   %t\n", v.IsIPv6Accepted)
	fmt.Fprintf(w, "metered:         %t\n", v.IsMetered)
	fmt.Fprintf(w, "trusted users:   %s\n", list(v.TrustedApplications))
	fmt.Fprintf(w, "blocked users:   %s\n", list(v.BlockedApplications))
	fmt.Fprintf(w, "owner:           %s (uid %d, pid %d)\n", v.Owner.User, v.Owner.UID, v.Owner.PID)
	fmt.Fprintf(w, "since:           %s\n", v.Since)
}

var watchCommand = &command{
	name:     "watch",
	synopsis: "[--socket PATH]",
	summary:  "print every VPN state change as a JSON line",
	help: `
Subscribes to vpnd and prints each vpnStateChanged notification's params as
one JSON line, until interrupted (exit 0) or the connection drops (exit 1).`,
}

func runWatch(ctx context.Context, g *globals, args []string) int {
	fs, sock := newFlagSet(watchCommand, g)
	if code, ok := parseFlags(watchCommand, g, fs, sock, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(g, watchCommand, "unexpected argument %q", fs.Arg(0))
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cl, err := client.Dial(ctx, g.socket)
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

var protectCommand = &command{
	name:     "protect",
	synopsis: "[--socket PATH] --fd N",
	summary:  "let an inherited socket's traffic bypass the VPN",
	help: `
Asks vpnd to protect socket N, which vpnctl inherited, e.g.
  vpnctl protect --fd 3 3<>/dev/udp/192.0.2.1/51820
Protection is a mark on the socket itself, so it lasts as long as the
socket. While a VPN exists, only its owner or an ADMIN account may protect.`,
}

func runProtect(ctx context.Context, g *globals, args []string) int {
	var fd int
	{
		return oneShot(ctx, g, protectCommand, args,
			func(fs *flag.FlagSet) { fs.IntVar(&fd, "fd", -1, "the socket's file descriptor `N` (required)") },
			func() error {
				if fd < 0 {
					return errors.New("--fd N is required")
				}
				return nil
			},
			func(ctx context.Context, cl *client.Client) error {
				return cl.ProtectFD(ctx, fd)
			})
	}
}

var explainCommand = &command{
	name:     "explain",
	synopsis: "CODE",
	summary:  "explain an error code",
	help: `
Prints an error code's name, message, description, possible causes and
solution.`,
}

func runExplain(ctx context.Context, g *globals, args []string) int {
	// A lone negative code such as -32700 is a code, not a flag.
	if len(args) == 1 {
		if _, err := strconv.Atoi(args[0]); err == nil {
			args = []string{"--", args[0]}
		}
	}
	fs, sock := newFlagSet(explainCommand, g)
	if code, ok := parseFlags(explainCommand, g, fs, sock, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageError(g, explainCommand, "want exactly one CODE")
	}
	code, err := strconv.Atoi(fs.Arg(0))
	if err != nil {
		return usageError(g, explainCommand, "CODE %q is not a number", fs.Arg(0))
	}
	e, ok := errs.Lookup(errs.Code(code))
	if !ok {
		fmt.Fprintf(g.io.err, "vpnctl: unknown error code %d\n", code)
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
}

// oneShot runs a command that makes calls on one connection: parse flags
// (addFlags may add some; check, if set, vets them), dial, call fn, report.
func oneShot(ctx context.Context, g *globals, c *command, args []string, addFlags func(*flag.FlagSet), check func() error, fn func(context.Context, *client.Client) error) int {
	fs, sock := newFlagSet(c, g)
	if addFlags != nil {
		addFlags(fs)
	}
	if code, ok := parseFlags(c, g, fs, sock, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(g, c, "unexpected argument %q", fs.Arg(0))
	}
	if check != nil {
		if err := check(); err != nil {
			return usageError(g, c, "%v", err)
		}
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cl, err := client.Dial(ctx, g.socket)
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
