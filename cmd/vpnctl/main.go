// Command vpnctl is the command-line client of vpnd.
//
//	vpnctl [--socket PATH] up [config flags | --config FILE.json] [-- CMD ARGS...]
//	vpnctl [--socket PATH] down
//	vpnctl [--socket PATH] status [--json]
//	vpnctl [--socket PATH] watch
//	vpnctl [--socket PATH] protect --fd N
//	vpnctl [--socket PATH] lockdown on USER... | off | status
//	vpnctl explain CODE
//	vpnctl completion bash|zsh|fish
//
// A failed call prints "vpnctl: CODE MESSAGE (detail)" to stderr and exits
// 1; a usage error exits 2.
//
// The command line is built with cobra, which also generates the shell
// completion scripts and, through the hidden "vpnctl man DIR", the man
// pages from the same definitions.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/version"
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

// globals are the settings every subcommand shares.
type globals struct {
	// socket is --socket, or "" for $VPND_SOCKET or the default.
	socket string
	getenv func(string) string
	io     stdio
}

// socketPath is the socket to dial: --socket, else $VPND_SOCKET, else
// vpnd's default.
func (g *globals) socketPath() string {
	if g.socket != "" {
		return g.socket
	}
	if g.getenv == nil {
		return protocol.DefaultSocket
	}
	if s := g.getenv("VPND_SOCKET"); s != "" {
		return s
	}
	return protocol.DefaultSocket
}

// exitCode is what a command returns once it has reported its outcome
// itself. Any other error out of the command line is a usage error.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run is main without the os.Exit, for tests.
func run(ctx context.Context, args []string, sio stdio, getenv func(string) string) int {
	g := &globals{getenv: getenv, io: sio}
	root := newRootCommand(g)
	root.SetArgs(args)
	c, err := root.ExecuteContextC(ctx)
	var status exitCode
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &status):
		return int(status)
	}
	name := "vpnctl"
	if c != nil && c != root {
		name = c.CommandPath()
	}
	fmt.Fprintf(sio.err, "%s: %v\n", name, err)
	fmt.Fprintf(sio.err, "Run '%s --help' for usage.\n", name)
	return exitUsage
}

const rootLong = `vpnctl talks to vpnd, the VPN manager daemon, over its Unix socket: it sets
a VPN up and holds it, ends it, shows and watches its state, protects
sockets, turns lockdown on and off, and explains vpnd's error codes.`

// helpTemplate lays out every command's --help: the synopsis first, as
// "Usage: vpnctl up ...", then the description, examples and flags.
const helpTemplate = `Usage: {{.UseLine}}
{{with .Long}}
{{. | trimTrailingWhitespaces}}
{{end}}{{if .HasExample}}
Examples:
{{.Example}}
{{end}}{{if .HasAvailableSubCommands}}
Commands:
{{range .Commands}}{{if .IsAvailableCommand}}  {{rpad .Name .NamePadding}} {{.Short}}
{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}
Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}
{{end}}{{if .HasAvailableInheritedFlags}}
Global flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}
{{end}}{{if .HasAvailableSubCommands}}
Run "{{.CommandPath}} COMMAND --help" for a command's flags.
{{end}}`

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:     "vpnctl [--socket PATH] COMMAND [ARGS]",
		Short:   "the command-line client of vpnd, the VPN manager daemon",
		Long:    rootLong,
		Version: version.String(),
		Args:    cobra.NoArgs,
		// vpnctl reports errors itself, in its own format.
		SilenceErrors:         true,
		SilenceUsage:          true,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// No command: the list of commands, on stderr.
			cmd.SetOut(g.io.err)
			cmd.Help()
			return exitCode(exitUsage)
		},
	}
	root.SetIn(g.io.in)
	root.SetOut(g.io.out)
	root.SetErr(g.io.err)
	root.SetHelpTemplate(helpTemplate)
	root.SetUsageTemplate(helpTemplate)
	root.PersistentFlags().StringVar(&g.socket, "socket", "",
		"vpnd's socket `PATH` (default: $VPND_SOCKET, else "+protocol.DefaultSocket+")")
	root.AddCommand(
		newUpCommand(g),
		newDownCommand(g),
		newStatusCommand(g),
		newWatchCommand(g),
		newProtectCommand(g),
		newLockdownCommand(g),
		newExplainCommand(g),
		newManCommand(g),
	)
	completionUsage(root, g)
	return root
}

// completionUsage makes cobra's "completion" command treat a missing or
// unknown shell as the usage error it is (exit 2) rather than print its
// help and succeed: "vpnctl completion tcsh >file" must not leave a help
// text where a script was expected.
func completionUsage(root *cobra.Command, g *globals) {
	root.InitDefaultCompletionCmd()
	c, _, err := root.Find([]string{"completion"})
	if err != nil || c == root {
		return
	}
	var shells []string
	for _, sub := range c.Commands() {
		shells = append(shells, sub.Name())
	}
	c.Args = func(_ *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown shell %q: want one of %s", args[0], strings.Join(shells, ", "))
		}
		return nil
	}
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		// No shell: the usage, on stderr.
		cmd.SetOut(g.io.err)
		cmd.Help()
		return exitCode(exitUsage)
	}
}

// fail reports a failed call and returns exitFailure. A vpnd error is
// printed exactly as "vpnctl: CODE MESSAGE (detail)"; when vpnd cannot be
// reached, the lines after it say what to do.
func fail(g *globals, err error) int {
	fmt.Fprintln(g.io.err, formatError(err))
	fmt.Fprint(g.io.err, unreachableHint(err, g.socketPath()))
	return exitFailure
}

// unreachableHint explains a failed connect: nothing at the socket path
// (ENOENT), or a socket file that nobody serves (ECONNREFUSED), and how to
// point vpnctl elsewhere. It is "" for any other error.
func unreachableHint(err error, socket string) string {
	var why string
	switch {
	case !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOTDIR):
		return ""
	case errors.Is(err, syscall.ENOTDIR):
		why = "There is no socket at " + socket + ": a directory on its path is a file; the socket path is wrong."
	case notSocket(socket) != "":
		why = socket + " is " + notSocket(socket) + ", not a socket: the socket path is wrong."
	case errors.Is(err, syscall.ECONNREFUSED):
		why = socket + " is a stale socket: no vpnd serves it (vpnd was stopped or killed, or serves another socket)."
	default:
		why = "There is no socket at " + socket + ": vpnd is not running, or it serves another socket."
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  %s\n", why)
	b.WriteString("  Start vpnd, or point vpnctl at its socket with --socket PATH or VPND_SOCKET=PATH.\n")
	b.WriteString("  To try vpnd without touching this host, run scripts/try from vpnd's source tree: a throwaway sandbox.\n")
	return b.String()
}

// notSocket names what is at path when it is not a socket ("a regular
// file", "a directory"...), or is "" for a socket or nothing. connect(2)
// answers ECONNREFUSED for a file or a directory as for a stale socket.
func notSocket(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	switch m := fi.Mode(); {
	case m&os.ModeSocket != 0:
		return ""
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeDevice != 0:
		return "a device"
	default:
		return "not a socket (" + m.Type().String() + ")"
	}
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
