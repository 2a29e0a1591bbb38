// Package tuntest provides Fake, the in-memory kernel of internal/sim with
// fault injection and a call log, for the manager's unit tests. fake_test.go
// runs one scenario table against the model and against the real kernel to
// keep the model honest.
//
// Fake can fail any chosen step: every call and change it makes on vpnd's
// behalf (creating a TUN, a read, each op of an Apply, the firewall,
// marking a socket) is a step, so a test can fail a bring-up at every
// point, or at random (Chaos), and check that the kernel converges.
package tuntest

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/sim"
)

// State is what Snapshot returns.
type State = sim.State

// Link is a link as Snapshot reports it.
type Link = sim.Link

// Step is one change the fake made or refused.
type Step struct {
	What string // "create tun", "add route", "delete rule", "read"...
	Obj  any
	Err  error
}

func (s Step) String() string {
	if s.Err != nil {
		return fmt.Sprintf("%s %v = %v", s.What, s.Obj, s.Err)
	}
	return fmt.Sprintf("%s %v", s.What, s.Obj)
}

// Fake is an in-memory kernel with fault injection. Call New.
type Fake struct {
	*sim.Kernel

	mu     sync.Mutex
	steps  []Step
	failAt map[int]error
	failOn map[string]map[int]error // step name → nth call → error
	calls  map[string]int
	hosts  []manager.HostPrefix
	onStep func(what string)
	chaos  func(what string) error
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
	if err == nil && f.chaos != nil {
		err = f.chaos(what)
	}
	f.steps = append(f.steps, Step{What: what, Obj: obj, Err: err})
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

// FailAt makes the step-th step (counting from 1 over the fake's whole
// life, see Steps) fail with err, changing nothing (or, for
// sim.ErrLostAnswer, losing its answer).
func (f *Fake) FailAt(step int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt[step] = err
}

// FailOn makes the nth step (from 1) of a kind ("add route", "read",
// "set firewall", "create tun"...) fail with err.
func (f *Fake) FailOn(what string, nth int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failOn[what] == nil {
		f.failOn[what] = map[int]error{}
	}
	f.failOn[what][nth] = err
}

// FailEvery makes every step of a kind fail with err from now on, until
// ClearFailures.
func (f *Fake) FailEvery(what string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	prev := f.chaos
	f.chaos = func(w string) error {
		if w == what {
			return err
		}
		if prev != nil {
			return prev(w)
		}
		return nil
	}
}

// Chaos asks fn at every step whether to fail it (nil: no). fn runs with
// the fake locked. nil removes it.
func (f *Fake) Chaos(fn func(what string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chaos = fn
}

// ClearFailures forgets all injected failures.
func (f *Fake) ClearFailures() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt = map[int]error{}
	f.failOn = map[string]map[int]error{}
	f.chaos = nil
}

// Steps returns how many steps have been made or refused so far.
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

// Calls reports how many times a kind of step was made.
func (f *Fake) Calls(what string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[what]
}

// SetHostPrefixes sets what HostPrefixes reports: the host's own
// addresses and on-link prefixes.
func (f *Fake) SetHostPrefixes(ps ...manager.HostPrefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts = slices.Clone(ps)
}

func (f *Fake) hostPrefixes(string) ([]manager.HostPrefix, error) {
	if err := f.inject("host prefixes", nil); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.hosts), nil
}

// MustPrefix parses a prefix or panics, for test tables.
func MustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// SortRoutes sorts routes in Snapshot's order.
func SortRoutes(rs []sim.Route) { sim.SortRoutes(rs) }
