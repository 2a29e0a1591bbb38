package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/preflight"
	"github.com/vpnd/vpnd/internal/rundir"
	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun"
)

// backend is the kernel vpnd works on: the host's, through netlink
// (tun.Netlink), or with --sim a model of it (sim.Host). Everything above
// it, from the socket to the manager, is the same for both.
type backend interface {
	manager.Kernel
	Close() error
}

var (
	_ backend = (*tun.Netlink)(nil)
	_ backend = (*sim.Host)(nil)
)

// preflightOK checks that vpnd can do its work on a host (CAP_NET_ADMIN,
// /dev/net/tun) before it touches anything; what is missing is logged and
// printed.
func preflightOK(log *zap.Logger, stderr io.Writer) bool {
	missing := preflight.Check(preflight.TUNPath)
	for _, err := range missing {
		log.Error("start-up check failed", zap.Error(err))
		fmt.Fprintf(stderr, "vpnd: %v\n", err)
	}
	return len(missing) == 0
}

// openKernel opens vpnd's kernel: on a host, its netlink sockets and its
// nftables table (nftTable), after checking that the kernel can hold the
// table; a simulation needs neither. nil means that vpnd must exit 1:
// what is missing has been logged and printed.
func openKernel(simulate bool, nftTable string, log *zap.Logger, stderr io.Writer) backend {
	if simulate {
		// The overlap check of a NORMAL user's addresses reads the real
		// host's addresses, which needs no privilege.
		r, err := tun.NewHostReader()
		if err != nil {
			fmt.Fprintf(stderr, "vpnd: netlink: %v\n", err)
			return nil
		}
		return simHost{sim.NewHost(r.HostPrefixes), r}
	}
	fw, err := tun.OpenFirewall(nftTable)
	if err != nil {
		log.Error("firewall unusable", zap.String("table", "inet "+nftTable), zap.Error(err))
		fmt.Fprintf(stderr, "vpnd: --nft-table %s: %v\n", nftTable, err)
		return nil
	}
	k, err := tun.New(log, fw)
	if err != nil {
		fw.Close()
		fmt.Fprintf(stderr, "vpnd: netlink: %v\n", err)
		return nil
	}
	return k
}

// simHost is the simulated kernel with the host reader it answers the
// overlap check from.
type simHost struct {
	*sim.Host
	r *tun.HostReader
}

func (h simHost) Close() error {
	h.Host.Close()
	return h.r.Close()
}

// simDefaults sets what --sim changes in the defaults of the flags that
// were not given. A simulated vpnd runs as an ordinary user, who can
// create neither /run/vpnd nor /var/lib/vpnd, and its socket and its
// stored lockdown must never be taken for a real vpnd's: so the socket is
// vpnd-sim.sock in the user's runtime directory ($XDG_RUNTIME_DIR, or
// without it a private fallback that note names: see rundir.Find), and
// the state directory $XDG_STATE_HOME/vpnd-sim, or
// ~/.local/state/vpnd-sim. Without $XDG_STATE_HOME and $HOME the flag
// must be given.
func simDefaults(o *options, given map[string]bool, getenv func(string) string, note io.Writer) error {
	if !given["socket"] {
		dir, err := rundir.Find(getenv)
		if err != nil {
			return fmt.Errorf("--sim: %w; or give --socket PATH", err)
		}
		o.socket = filepath.Join(dir.Path, "vpnd-sim.sock")
		if !dir.FromEnv {
			fmt.Fprintf(note, "vpnd: --sim: XDG_RUNTIME_DIR is not set: the socket is %s, in your runtime directory %s\n", o.socket, dir.Path)
		}
	}
	if !given["state-dir"] {
		dir := absEnv(getenv, "XDG_STATE_HOME")
		if dir == "" {
			if home := absEnv(getenv, "HOME"); home != "" {
				dir = filepath.Join(home, ".local", "state")
			}
		}
		if dir == "" {
			return errors.New("--sim: neither $XDG_STATE_HOME nor $HOME is set, so there is no default state directory: give --state-dir DIR")
		}
		o.stateDir = filepath.Join(dir, "vpnd-sim")
	}
	return nil
}

// absEnv is an environment variable that names an absolute path, or "":
// the XDG base directory rules say to ignore a relative one.
func absEnv(getenv func(string) string, name string) string {
	if v := getenv(name); filepath.IsAbs(v) {
		return v
	}
	return ""
}
