// Package tuntest provides Fake, the in-memory kernel of internal/sim with
// fault injection and a call log, for the manager's unit tests. fake_test.go
// runs one scenario table against the model and against the real kernel to
// keep the model honest.
//
// Fake can fail any chosen step: every change it makes on vpnd's behalf
// (creating a TUN, each object of a batch, marking a socket) is a step, so a
// test can walk a bring-up through every failure point and check that the
// rollback restores the Snapshot from before.
package tuntest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun"
)

// State is what Snapshot returns.
type State = sim.State

// Link is a link as Snapshot reports it.
type Link = sim.Link

// Step is one change the fake made or refused.
type Step struct {
	What string // "create tun", "add route", "delete rule"...
	Obj  string
	Err  error
}

func (s Step) String() string {
	if s.Err != nil {
		return fmt.Sprintf("%s %s = %v", s.What, s.Obj, s.Err)
	}
	return s.What + " " + s.Obj
}

// Fake is an in-memory kernel with fault injection. Call New.
type Fake struct {
	*sim.Kernel

	mu     sync.Mutex
	steps  []Step
	failAt map[int]error
	failOn map[string]map[int]error // method or step name → nth call → error
	calls  map[string]int
	hosts  []tun.HostPrefix
	onStep func(what string)
}

// New returns an empty fake kernel. Like a fresh network namespace it has
// a loopback link, index 1, which is not in Snapshot.
func New() *Fake {
	f := &Fake{failAt: map[int]error{}, failOn: map[string]map[int]error{}, calls: map[string]int{}}
	f.Kernel = sim.New(sim.Options{Inject: f.inject, HostPrefixes: f.hostPrefixes})
	return f
}

func (f *Fake) inject(what string, obj any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[what]++
	err := f.failAt[len(f.steps)+1]
	if e := f.failOn[what][f.calls[what]]; e != nil {
		err = e
	}
	f.steps = append(f.steps, Step{What: what, Obj: fmt.Sprint(obj), Err: err})
	if hook := f.onStep; hook != nil {
		f.mu.Unlock()
		hook(what)
		f.mu.Lock()
	}
	return err
}

// OnStep calls fn at every step, before the step is made, with the model
// locked: fn may block to hold a change in flight. nil removes it.
func (f *Fake) OnStep(fn func(what string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onStep = fn
}

// FailAt makes the step-th change (counting from 1 over the fake's whole
// life, see Steps) fail with err, changing nothing.
func (f *Fake) FailAt(step int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt[step] = err
}

// FailOn makes the nth call (from 1) of a method ("Read", "Watch",
// "Occupants", "HostPrefixes", "Install", "Restore") or the nth step of a
// kind ("add route", "restore rule"...) fail with err.
func (f *Fake) FailOn(name string, nth int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failOn[name] == nil {
		f.failOn[name] = map[int]error{}
	}
	f.failOn[name][nth] = err
}

// ClearFailures forgets all injected failures.
func (f *Fake) ClearFailures() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt = map[int]error{}
	f.failOn = map[string]map[int]error{}
}

// Steps returns how many changes have been made or refused so far. A test
// that runs one bring-up on a fresh Fake learns from it how many failure
// points there are to try with FailAt.
func (f *Fake) Steps() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.steps)
}

// Log returns a copy of the steps so far.
func (f *Fake) Log() []Step {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.steps)
}

// Calls reports how many times a method or kind of step was called.
func (f *Fake) Calls(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[name]
}

// SetHostPrefixes sets what HostPrefixes reports: the host's own
// addresses and on-link prefixes.
func (f *Fake) SetHostPrefixes(ps ...tun.HostPrefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts = slices.Clone(ps)
}

func (f *Fake) hostPrefixes(string) ([]tun.HostPrefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.hosts), nil
}

// call counts a call of a method and returns its injected failure.
func (f *Fake) call(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	return f.failOn[method][f.calls[method]]
}

// Install is sim.Kernel.Install, and can be failed as a whole with FailOn("Install", ...).
func (f *Fake) Install(o *tun.Objects) (tun.Objects, error) {
	if err := f.call("Install"); err != nil {
		return tun.Objects{}, err
	}
	return f.Kernel.Install(o)
}

// Read is sim.Kernel.Read, and can be failed.
func (f *Fake) Read(q tun.Query) (*tun.State, error) {
	if err := f.call("Read"); err != nil {
		return nil, err
	}
	return f.Kernel.Read(q)
}

// Restore is sim.Kernel.Restore, and can be failed as a whole.
func (f *Fake) Restore(r *tun.Repair) (tun.Repair, error) {
	if err := f.call("Restore"); err != nil {
		return tun.Repair{LinkIndex: r.LinkIndex}, err
	}
	return f.Kernel.Restore(r)
}

// Watch is sim.Kernel.Watch, and can be failed.
func (f *Fake) Watch(ctx context.Context, cf tun.ChangeFilter) (<-chan struct{}, <-chan struct{}, error) {
	if err := f.call("Watch"); err != nil {
		return nil, nil, err
	}
	return f.Kernel.Watch(ctx, cf)
}

// Occupants is sim.Kernel.Occupants, and can be failed.
func (f *Fake) Occupants(table int, priorities ...int) ([]string, error) {
	if err := f.call("Occupants"); err != nil {
		return nil, err
	}
	return f.Kernel.Occupants(table, priorities...)
}

// HostPrefixes reports what SetHostPrefixes set, and can be failed.
func (f *Fake) HostPrefixes(except string) ([]tun.HostPrefix, error) {
	if err := f.call("HostPrefixes"); err != nil {
		return nil, err
	}
	return f.Kernel.HostPrefixes(except)
}

// CheckSocket is sim.Kernel.CheckSocket, and can be failed.
func (f *Fake) CheckSocket(fd int) error {
	if err := f.call("CheckSocket"); err != nil {
		return err
	}
	return f.Kernel.CheckSocket(fd)
}

// MustPrefix parses a prefix or panics, for test tables.
func MustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// SortRoutes sorts routes in Snapshot's order.
func SortRoutes(rs []tun.Route) { sim.SortRoutes(rs) }
