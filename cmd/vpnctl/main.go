// Command vpnctl is the command-line client of vpnd (contract §8).
//
//	vpnctl [--socket PATH] up [config flags | --config FILE.json] [-- CMD ARGS...]
//	vpnctl [--socket PATH] down
//	vpnctl [--socket PATH] status [--json]
//	vpnctl [--socket PATH] watch
//	vpnctl [--socket PATH] protect --fd N
//	vpnctl explain CODE
//
// A failed call prints "vpnctl: CODE MESSAGE (detail)" to stderr and exits
// 1; a usage error exits 2.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/protocol"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], stdio{os.Stdin, os.Stdout, os.Stderr}, os.Getenv))
}

// stdio is where a command reads and writes, so tests can capture it.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// command is one subcommand.
type command struct {
	name     string
	synopsis string // the arguments after "vpnctl NAME"
	summary  string // one line for the command list
	help     string // paragraphs after the synopsis in --help
	run      func(ctx context.Context, g *globals, args []string) int
}

// globals are the settings every subcommand shares.
type globals struct {
	socket string
	io     stdio
}

var commands []*command

func init() {
	// Set here rather than in the literals: the run functions refer
	// back to their command for its help.
	upCommand.run = runUp
	downCommand.run = runDown
	statusCommand.run = runStatus
	watchCommand.run = runWatch
	protectCommand.run = runProtect
	explainCommand.run = runExplain
	commands = []*command{upCommand, downCommand, statusCommand, watchCommand, protectCommand, explainCommand}
}

const globalUsage = `Usage: vpnctl [--socket PATH] COMMAND [ARGS]

vpnctl talks to vpnd, the VPN manager daemon, over its Unix socket.

Commands:
%s
Global flags:
  --socket PATH   vpnd's socket (default $VPND_SOCKET, else %s)

Run "vpnctl COMMAND --help" for a command's flags.
`

func printGlobalUsage(w io.Writer) {
	var b strings.Builder
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, globalUsage, b.String(), protocol.DefaultSocket)
}

// run is main without the os.Exit, for tests.
func run(ctx context.Context, args []string, sio stdio, getenv func(string) string) int {
	g := &globals{socket: protocol.DefaultSocket, io: sio}
	if s := getenv("VPND_SOCKET"); s != "" {
		g.socket = s
	}
	fs := flag.NewFlagSet("vpnctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&g.socket, "socket", g.socket, "vpnd's socket")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printGlobalUsage(sio.out)
			return exitOK
		}
		fmt.Fprintf(sio.err, "vpnctl: %v\n", err)
		printGlobalUsage(sio.err)
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		printGlobalUsage(sio.err)
		return exitUsage
	}
	if rest[0] == "help" {
		if len(rest) > 1 {
			if c := lookupCommand(rest[1]); c != nil {
				fs, _ := newFlagSet(c, g)
				printHelp(sio.out, c, fs)
				return exitOK
			}
		}
		printGlobalUsage(sio.out)
		return exitOK
	}
	c := lookupCommand(rest[0])
	if c == nil {
		fmt.Fprintf(sio.err, "vpnctl: unknown command %q\n", rest[0])
		printGlobalUsage(sio.err)
		return exitUsage
	}
	return c.run(ctx, g, rest[1:])
}

func lookupCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// newFlagSet returns a flag set for c that already knows --socket, so the
// flag works after the command name too.
func newFlagSet(c *command, g *globals) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("vpnctl "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	sock := fs.String("socket", g.socket, "vpnd's socket `PATH` ($VPND_SOCKET overrides the built-in default)")
	return fs, sock
}

// parseFlags parses args. On --help it prints the command's help to
// stdout; on a bad flag it prints the error to stderr. ok is false when
// the command must return code.
func parseFlags(c *command, g *globals, fs *flag.FlagSet, sock *string, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(g.io.out, c, fs)
			return exitOK, false
		}
		return usageError(g, c, "%v", err), false
	}
	g.socket = *sock
	return 0, true
}

func printHelp(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: vpnctl %s %s\n\n%s\n", c.name, c.synopsis, strings.TrimSpace(c.help))
	var b bytes.Buffer
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if arg != "" {
			fmt.Fprintf(&b, " %s", arg)
		}
		fmt.Fprintf(&b, "\n        %s", usage)
		switch f.DefValue {
		case "", "0", "-1", "false":
		default:
			fmt.Fprintf(&b, " (default %q)", f.DefValue)
		}
		b.WriteByte('\n')
	})
	if b.Len() > 0 {
		fmt.Fprintf(w, "\nFlags:\n%s", b.String())
	}
}

// usageError reports a usage error and returns exitUsage.
func usageError(g *globals, c *command, format string, args ...any) int {
	fmt.Fprintf(g.io.err, "vpnctl %s: %s\n", c.name, fmt.Sprintf(format, args...))
	fmt.Fprintf(g.io.err, "Run 'vpnctl %s --help' for usage.\n", c.name)
	return exitUsage
}

// fail reports a failed call and returns exitFailure. A vpnd error is
// printed exactly as "vpnctl: CODE MESSAGE (detail)".
func fail(g *globals, err error) int {
	fmt.Fprintln(g.io.err, formatError(err))
	return exitFailure
}

func formatError(err error) string {
	if err == nil {
		return "vpnctl: unexpected end of connection"
	}
	var e *errs.Error
	if errors.As(err, &e) {
		s := fmt.Sprintf("vpnctl: %d %s", int(e.Code), e.Code.Message())
		if e.Detail != "" {
			s += " (" + e.Detail + ")"
		}
		return s
	}
	return "vpnctl: " + err.Error()
}
