package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"go.uber.org/zap"

	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/dns"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/ownership"
	"github.com/vpnd/vpnd/internal/state"
)

// sweepAndExit is vpnd --sweep, run when vpnd is removed (the packages'
// maintainer scripts run it after stopping the service): it removes what
// vpnd leaves in this network namespace's kernel, as the start-up sweep
// does, and lockdown's rules as well, which a stopped vpnd leaves in place
// on purpose (it fails closed), but which would lock the listed users out
// with no vpnd left to lift them, and vpnd's nftables table. A resolv.conf that the file DNS backend
// replaced is put back. The stored lockdown stays in --state-dir, so that
// a vpnd installed again applies it again. Nothing is served, and a vpnd
// that still serves these names is left alone: the sweep fails.
func sweepAndExit(o *options, mark uint32, log *zap.Logger, stderr io.Writer) int {
	if o.sim {
		fmt.Fprintln(stderr, "vpnd: --sweep: a simulation leaves nothing in the kernel to sweep")
		return 2
	}
	if !preflightOK(log, stderr) {
		return 1
	}
	lock, err := ownership.Acquire(ownership.Resources(o.ifname, int(o.table), int(o.priority), o.nftTable))
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: --sweep: %v: stop that vpnd first\n", err)
		return 1
	}
	defer lock.Close()
	kernel := openKernel(false, o.nftTable, log, stderr)
	if kernel == nil {
		return 1
	}
	defer kernel.Close()
	// The start-up sweep with no lockdown wanted: the reconciler removes
	// every leftover, lockdown's rules and firewall table included.
	mgr := manager.New(kernel, manager.Options{IfName: o.ifname, Table: int(o.table), RulePriority: int(o.priority),
		ProtectMark: mark, Log: log.Named("manager")})
	removed, err := mgr.Start(config.Lockdown{})
	mgr.Shutdown()
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
	// The state directory is checked and locked as at start: a vpnd
	// still using it refuses the sweep.
	st, err := state.Open(o.stateDir)
	if err == nil {
		defer st.Close()
		var rec *state.ResolvConf
		if rec, err = st.LoadResolvConf(o.resolvConf); err == nil {
			if err = dns.RestoreLeftover(st, rec, log.Named("dns")); err == nil && rec != nil {
				fmt.Fprintf(stderr, "vpnd: --sweep: put back %s as it was before the VPN\n", rec.Path)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "vpnd: --sweep: resolv.conf: %v\n", err)
		status = 1
	}
	return status
}
