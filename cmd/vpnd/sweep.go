package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"go.uber.org/zap"

	"github.com/vpnd/vpnd/internal/dns"
	"github.com/vpnd/vpnd/internal/ownership"
	"github.com/vpnd/vpnd/internal/state"
	"github.com/vpnd/vpnd/internal/tun"
)

// sweepAndExit is vpnd --sweep, run when vpnd is removed (the packages'
// maintainer scripts run it after stopping the service): it removes what
// vpnd leaves in this network namespace's kernel, as the start-up sweep
// does, and lockdown's rules as well, which a stopped vpnd leaves in place
// on purpose (it fails closed), but which would lock the listed users out
// with no vpnd left to lift them. A resolv.conf that the file DNS backend
// replaced is put back. The stored lockdown stays in --state-dir, so that
// a vpnd installed again applies it again. Nothing is served, and a vpnd
// that still serves these names is left alone: the sweep fails.
func sweepAndExit(o *options, log *zap.Logger, stderr io.Writer) int {
	if o.sim {
		fmt.Fprintln(stderr, "vpnd: --sweep: a simulation leaves nothing in the kernel to sweep")
		return 2
	}
	kernel := openKernel(false, log, stderr)
	if kernel == nil {
		return 1
	}
	defer kernel.Close()
	lock, err := ownership.Acquire(ownership.Resources(o.ifname, int(o.table), int(o.priority)))
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: --sweep: %v: stop that vpnd first\n", err)
		return 1
	}
	defer lock.Close()
	// Lockdown's rules are at the priority after the VPN's (as the
	// manager's LockdownPriority); Keep nil keeps none of them.
	removed, err := kernel.Sweep(log.Named("sweep"), tun.SweepSpec{IfName: o.ifname, Table: int(o.table), Priority: int(o.priority),
		LockdownPriority: int(o.priority) + 1})
	status := 0
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: --sweep: %v\n", err)
		status = 1
	}
	for _, r := range removed {
		fmt.Fprintf(stderr, "vpnd: --sweep: removed %s\n", r)
	}
	// No state directory: nothing was stored, and none is made now.
	if _, err := os.Stat(o.stateDir); errors.Is(err, fs.ErrNotExist) {
		return status
	}
	st, err := state.Open(o.stateDir)
	if err == nil {
		var path string
		if path, err = dns.RestoreLeftover(st, log.Named("dns")); err == nil && path != "" {
			fmt.Fprintf(stderr, "vpnd: --sweep: put back %s as it was before the VPN\n", path)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: --sweep: resolv.conf: %v\n", err)
		status = 1
	}
	return status
}
