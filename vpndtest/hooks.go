package vpndtest

import (
	"slices"

	"github.com/vpnd/vpnd/internal/testhooks"
)

// The hooks of vpnd's own integration tests (see internal/testhooks).
func init() {
	testhooks.Goroutines = func(env any) (int, error) { return env.(*Env).goroutines() }
	testhooks.FDs = func(env any) ([]string, error) { return env.(*Env).fds() }
	testhooks.StableFDs = func(env any) ([]string, error) { return env.(*Env).stableFDs() }
	testhooks.Baseline = func(env any) ([]string, int) {
		e := env.(*Env)
		e.mu.Lock()
		defer e.mu.Unlock()
		return slices.Clone(e.base.fds), e.base.goroutines
	}
	testhooks.SetBaseline = func(env any, fds []string, goroutines int) {
		e := env.(*Env)
		e.mu.Lock()
		defer e.mu.Unlock()
		e.base.fds, e.base.goroutines = slices.Clone(fds), goroutines
	}
}
