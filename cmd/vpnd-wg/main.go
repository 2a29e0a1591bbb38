// Command vpnd-wg is a WireGuard client that runs as a normal user on
// top of vpnd: vpnd creates and routes the TUN device and protects the
// tunnel's socket, vpnd-wg runs WireGuard (wireguard-go) on it.
//
//	vpnd-wg up [flags] FILE.conf    set the VPN up from a wg-quick file; runs until SIGINT/SIGTERM
//	vpnd-wg show [INTERFACE]        handshakes and transfer counters, as `wg show` prints them
//	vpnd-wg genkey                  a new private key
//	vpnd-wg pubkey                  the public key of the private key on stdin
//	vpnd-wg genpsk                  a new preshared key
//	vpnd-wg --version               the version
//
// A refusal from vpnd prints "vpnd-wg: CODE MESSAGE (detail)" and exits 1.
// The work is done by internal/wgclient; this file only reads flags and
// prints.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/version"
	"github.com/vpnd/vpnd/internal/wgclient"
)

const usage = `usage:
  vpnd-wg up [--socket PATH] [--uapi-dir DIR] [--no-offload] [--verbose] FILE.conf
  vpnd-wg show [--uapi-dir DIR] [INTERFACE]
  vpnd-wg genkey
  vpnd-wg pubkey < private.key
  vpnd-wg genpsk
  vpnd-wg --version
`

// description follows the usage in --help and in the man page.
const description = `vpnd-wg is a WireGuard client that runs as a normal user, with no
capability at all, on top of vpnd: vpnd creates, addresses and routes the
TUN device and protects the tunnel's sockets, vpnd-wg runs WireGuard
(wireguard-go) on the TUN that vpnd hands back. It reads a wg-quick
configuration file, and refuses what it does not support (PreUp, Table,
FwMark...) naming the line.

up sets the VPN up and runs until SIGINT or SIGTERM, which end it. show
prints the handshakes and transfer counters of the tunnels running as
you, as wg show does; each tunnel serves them on a socket in --uapi-dir:
$XDG_RUNTIME_DIR/vpnd-wg, or, when XDG_RUNTIME_DIR is not set (su, sudo,
containers, ssh without a session), vpnd-wg in /run/user/UID if that is
yours alone, else in $TMPDIR/vpnd-runtime-UID (made 0700); up and show
name the directory they use then. genkey, pubkey and genpsk make keys as
wg does.

A refusal from vpnd prints "vpnd-wg: CODE MESSAGE (detail)" and exits 1;
any other failure exits 1 with a message, a usage error exits 2.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "up":
		return up(ctx, args[1:], stdout, stderr)
	case "show":
		return show(args[1:], stdout, stderr)
	case "genkey", "genpsk":
		gen := wgclient.GeneratePrivateKey
		if args[0] == "genpsk" {
			gen = wgclient.GeneratePresharedKey
		}
		k, err := gen()
		if err != nil {
			return fail(stderr, err)
		}
		fmt.Fprintln(stdout, k)
		return 0
	case "pubkey":
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fail(stderr, err)
		}
		k, err := wgclient.ParseKey(strings.TrimSpace(line))
		if err != nil {
			return fail(stderr, fmt.Errorf("private key on stdin: %w", err))
		}
		fmt.Fprintln(stdout, k.PublicKey())
		return 0
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage+"\n"+description)
		return 0
	case "-v", "--version", "version":
		fmt.Fprintf(stdout, "vpnd-wg version %s\n", version.String())
		return 0
	case "man": // for packagers and CI: vpnd-wg man DIR writes vpnd-wg.1
		if len(args) != 2 {
			fmt.Fprintf(stderr, "vpnd-wg man: want a directory\n")
			return 2
		}
		if err := writeManPage(ctx, args[1]); err != nil {
			return fail(stderr, err)
		}
		return 0
	default:
		fmt.Fprintf(stderr, "vpnd-wg: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

func up(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vpnd-wg up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", os.Getenv("VPND_SOCKET"), "vpnd's socket (default $VPND_SOCKET, else /run/vpnd/vpnd.sock)")
	uapiDir := fs.String("uapi-dir", wgclient.DefaultUAPIDir(), "`DIR` where to serve the state for vpnd-wg show (default $XDG_RUNTIME_DIR/vpnd-wg, or a fallback: see --help)")
	verbose := fs.Bool("verbose", false, "log wireguard-go's debug messages")
	noOffload := fs.Bool("no-offload", false, "set the VPN up without vpnd's offload member: a TUN without IFF_VNET_HDR, so no TSO/USO or GRO on the TUN, one packet per read and write (slower downloads)")
	noProtect := fs.Bool("test-no-protect", false, "FOR TESTS ONLY: do not protect the tunnel sockets; with AllowedIPs covering the endpoint the tunnel then routes itself into itself and never works")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "vpnd-wg up: want one configuration file, got %d arguments\n%s", fs.NArg(), usage)
		return 2
	}
	cfg, err := wgclient.ParseFile(fs.Arg(0))
	if err != nil {
		return fail(stderr, err)
	}
	if fi, err := os.Stat(fs.Arg(0)); err == nil && fi.Mode().Perm()&0o077 != 0 {
		// As wg-quick warns: the file holds the private key.
		fmt.Fprintf(stderr, "vpnd-wg: note: %s is accessible to other users (mode %#o); it holds the private key: chmod 600 it\n",
			fs.Arg(0), fi.Mode().Perm())
	}
	if *uapiDir, err = uapiDirOrFallback(*uapiDir, stderr); err != nil {
		fmt.Fprintf(stderr, "vpnd-wg: note: %v: `vpnd-wg show` will not see this tunnel\n", err)
	}
	if *noProtect {
		fmt.Fprintln(stderr, "vpnd-wg: --test-no-protect: the tunnel sockets are NOT protected (tests only)")
	}
	t, err := wgclient.Up(ctx, cfg, wgclient.Options{
		Socket: *socket, UAPIDir: *uapiDir, Log: stderr, Verbose: *verbose, TestNoProtect: *noProtect, NoOffload: *noOffload,
	})
	if err != nil {
		return fail(stderr, err)
	}
	for _, n := range t.Notes {
		fmt.Fprintln(stderr, "vpnd-wg: note:", n)
	}
	offload := "off"
	if t.Offload {
		offload = "on"
	}
	fmt.Fprintf(stdout, "vpnd-wg: %s is up: addresses %s; routes %s; mtu %d; offload %s\n", t.Info.Interface,
		strings.Join(t.Info.Addresses, ", "), strings.Join(t.Info.Routes, ", "), t.Info.MTU, offload)
	if t.UAPIPath != "" {
		fmt.Fprintf(stdout, "vpnd-wg: state on %s\n", t.UAPIPath)
	}
	select {
	case <-ctx.Done():
		err := t.Close()
		fmt.Fprintf(stdout, "vpnd-wg: %s is down\n", t.Info.Interface)
		if err != nil {
			return fail(stderr, err)
		}
		return 0
	case <-t.Done():
		if err := t.Err(); err != nil {
			return fail(stderr, fmt.Errorf("the tunnel ended: %w", err))
		}
		return 0
	}
}

func show(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vpnd-wg show", flag.ContinueOnError)
	fs.SetOutput(stderr)
	uapiDir := fs.String("uapi-dir", wgclient.DefaultUAPIDir(), "`DIR` where running tunnels serve their state (default $XDG_RUNTIME_DIR/vpnd-wg, or a fallback: see --help)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 1 {
		fmt.Fprintf(stderr, "vpnd-wg show: want at most one interface name\n%s", usage)
		return 2
	}
	var err error
	if *uapiDir, err = uapiDirOrFallback(*uapiDir, stderr); err != nil {
		return fail(stderr, fmt.Errorf("%w; or give --uapi-dir", err))
	}
	// A directory that another user could write may hold their sockets.
	if err := wgclient.CheckUAPIDir(*uapiDir); err != nil {
		return fail(stderr, err)
	}
	var paths []string
	if fs.NArg() == 1 {
		paths = []string{wgclient.UAPIPath(*uapiDir, fs.Arg(0))}
	} else {
		paths, _ = filepath.Glob(filepath.Join(*uapiDir, "*.sock"))
		sort.Strings(paths)
	}
	shown := 0
	for _, p := range paths {
		st, err := wgclient.QueryUAPI(p)
		if errors.Is(err, wgclient.ErrNotRunning) && fs.NArg() == 0 {
			continue // a stale socket left by a killed vpnd-wg
		}
		if err != nil {
			return fail(stderr, err)
		}
		if shown > 0 {
			fmt.Fprintln(stdout)
		}
		wgclient.WriteShow(stdout, st, time.Now())
		shown++
	}
	if shown == 0 {
		return fail(stderr, fmt.Errorf("no running tunnel serves its state in %s", *uapiDir))
	}
	return 0
}

// fail prints err and returns the exit status. A refusal from vpnd is
// printed exactly as "vpnd-wg: CODE MESSAGE (detail)".
func fail(stderr io.Writer, err error) int {
	var ve *client.Error
	if errors.As(err, &ve) {
		fmt.Fprintf(stderr, "vpnd-wg: %v\n", ve)
	} else {
		fmt.Fprintf(stderr, "vpnd-wg: %v\n", err)
	}
	return 1
}
