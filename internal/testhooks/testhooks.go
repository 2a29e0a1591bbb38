// Package testhooks gives vpnd's own integration tests (test/) the parts
// of vpndtest that an app's tests have no use for: starting vpnd the way
// systemd does, through a command that drops its privileges, in a
// namespace the test made, and reading the leak check's baseline. vpndtest
// sets the functions below when it is initialised; nothing outside this
// module can import this package, so none of it is vpndtest's public API.
// (google.golang.org/grpc reaches its own internals the same way.)
package testhooks

import (
	"io"
	"os"
	"os/exec"
)

// Launch changes how vpndtest starts vpnd.
type Launch struct {
	// Namespace runs vpnd in this network namespace (a name under
	// /run/netns), which the caller made and deletes, instead of a new
	// one. The leak check still requires it to hold nothing of vpnd's.
	Namespace string
	// Wrapper runs vpnd as Wrapper... VPND ARGS...; the wrapper must exec
	// vpnd (setpriv, unshare, sh -c '... exec "$0" "$@"'), so that the
	// process vpndtest started is vpnd.
	Wrapper []string
	// ExtraFiles become vpnd's descriptors 3, 4, ...
	ExtraFiles []*os.File
	// Output gets a copy of everything vpnd writes.
	Output io.Writer
	// Started is called once vpnd's process runs, before vpndtest waits
	// for it to serve.
	Started func(Process)
	// Ready, if set, replaces vpndtest's wait for vpnd's socket to answer
	// a status request.
	Ready func() error
	// NoIdleCheck turns off the check, at the end of the test, that vpnd
	// has its VPN's objects removed and is back to the descriptors and
	// goroutines it had after start. The checks when vpnd stops stay.
	NoIdleCheck bool
}

// Process is a vpnd that vpndtest started.
type Process struct {
	Cmd *exec.Cmd
	// Exited is closed once vpnd has exited; WaitErr then returns what
	// Cmd.Wait returned.
	Exited  <-chan struct{}
	WaitErr func() error
}

// Set by vpndtest's init. env is a *vpndtest.Env, opt a vpndtest.Option.
var (
	// Option returns a vpndtest.Option that applies l.
	Option func(l Launch) any
	// Goroutines asks vpnd for its goroutine count (SIGUSR1).
	Goroutines func(env any) (int, error)
	// FDs lists what vpnd's descriptors point at, sorted; StableFDs waits
	// until that list stops changing first.
	FDs       func(env any) ([]string, error)
	StableFDs func(env any) ([]string, error)
	// Baseline returns the descriptors and goroutine count that the check
	// at the end of the test expects; SetBaseline changes them.
	Baseline    func(env any) (fds []string, goroutines int)
	SetBaseline func(env any, fds []string, goroutines int)
	// Leftovers describes the objects of a vpnd with these names in
	// namespace ns: its link, rules at priority and priority+1, routes in
	// table, and its nftables table. vpnOnly leaves lockdown's out.
	Leftovers func(ns, ifname string, table, priority int, vpnOnly bool) ([]string, error)
	// BinDir is the directory vpndtest builds programs into.
	BinDir func() (string, error)
)
