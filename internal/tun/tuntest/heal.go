package tuntest

import (
	"context"
	"fmt"
	"slices"

	"github.com/vpnd/vpnd/internal/tun"
)

// Occupants lists every route in table and every rule at priority.
func (f *Fake) Occupants(table, priority int) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("Occupants"); err != nil {
		return nil, f.record("Occupants", fmt.Sprint(table, priority), err)
	}
	var out []string
	for _, r := range f.rules {
		if r.Priority == priority {
			out = append(out, "rule "+r.String())
		}
	}
	for _, r := range f.routes {
		if r.Table == table {
			out = append(out, "route "+r.String())
		}
	}
	return out, f.record("Occupants", fmt.Sprint(table, priority), nil)
}

// ListRules returns the rules at priority that look up table.
func (f *Fake) ListRules(table, priority int) ([]tun.Rule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("ListRules"); err != nil {
		return nil, f.record("ListRules", fmt.Sprint(table, priority), err)
	}
	var out []tun.Rule
	for _, r := range f.rules {
		if r.Priority == priority && r.Table == table {
			out = append(out, r)
		}
	}
	return out, f.record("ListRules", fmt.Sprint(table, priority), nil)
}

// ListRoutes returns the routes in table.
func (f *Fake) ListRoutes(table int) ([]tun.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("ListRoutes"); err != nil {
		return nil, f.record("ListRoutes", fmt.Sprint(table), err)
	}
	var out []tun.Route
	for _, r := range f.routes {
		if r.Table == table {
			out = append(out, r)
		}
	}
	return out, f.record("ListRoutes", fmt.Sprint(table), nil)
}

// ReplaceRoute replaces any route to r's destination in r's table.
func (f *Fake) ReplaceRoute(r tun.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	args := r.String()
	if err := f.begin("ReplaceRoute"); err != nil {
		return f.record("ReplaceRoute", args, err)
	}
	r = canonical(r)
	if !r.Throw {
		if _, err := f.linkLocked(r.LinkIndex); err != nil {
			return f.record("ReplaceRoute", args, fmt.Errorf("replace route %s: %w", r, err))
		}
	}
	f.routes = slices.DeleteFunc(f.routes, func(o tun.Route) bool { return o.Table == r.Table && o.Dst == r.Dst })
	f.routes = append(f.routes, r)
	f.changedLocked()
	return f.record("ReplaceRoute", args, nil)
}

// WatchChanges gets a token after every change the fake sees: vpnd's own
// calls and the external edits below, like the kernel's multicast groups.
// It does not filter: a needless token only costs the manager a re-read.
func (f *Fake) WatchChanges(ctx context.Context, _ tun.ChangeFilter) (<-chan struct{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("WatchChanges"); err != nil {
		return nil, f.record("WatchChanges", "", err)
	}
	ch := make(chan struct{}, 1)
	f.changeSubs = append(f.changeSubs, ch)
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if i := slices.Index(f.changeSubs, ch); i >= 0 {
			f.changeSubs = slices.Delete(f.changeSubs, i, i+1)
			close(ch)
		}
	})
	return ch, f.record("WatchChanges", "", nil)
}

// BreakChangeWatches closes every WatchChanges channel, as a watch that
// failed outright does, for testing that the watcher re-opens it.
func (f *Fake) BreakChangeWatches() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.changeSubs {
		close(ch)
	}
	f.changeSubs = nil
}

// changedLocked wakes every WatchChanges channel. f.mu must be held.
func (f *Fake) changedLocked() {
	for _, ch := range f.changeSubs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// DeleteRuleExternally removes a rule behind vpnd's back, as another
// daemon would. It reports whether the rule was there.
func (f *Fake) DeleteRuleExternally(r tun.Rule) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.Index(f.rules, r)
	if i < 0 {
		return false
	}
	f.rules = slices.Delete(f.rules, i, i+1)
	f.changedLocked()
	return true
}

// DeleteRouteExternally removes the route to dst in table behind vpnd's
// back. It reports whether there was one.
func (f *Fake) DeleteRouteExternally(table int, dst string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.routes)
	f.routes = slices.DeleteFunc(f.routes, func(o tun.Route) bool { return o.Table == table && o.Dst.String() == dst })
	if len(f.routes) == n {
		return false
	}
	f.changedLocked()
	return true
}

// AddExternally adds a route or rule behind vpnd's back (a foreign one, or
// a changed copy of vpnd's), without the checks of AddRoute/AddRule.
func (f *Fake) AddExternally(routes []tun.Route, rules []tun.Rule) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range routes {
		r = canonical(r)
		f.routes = slices.DeleteFunc(f.routes, func(o tun.Route) bool { return o.Table == r.Table && o.Dst == r.Dst })
		f.routes = append(f.routes, r)
	}
	f.rules = append(f.rules, rules...)
	f.changedLocked()
}

// AddRoutes adds each route with AddRoute (each one a step for FailAt)
// and, like the kernel with a batch, goes on past a failure.
func (f *Fake) AddRoutes(rs []tun.Route) ([]tun.Route, error) {
	added := make([]tun.Route, 0, len(rs))
	var first error
	for _, r := range rs {
		if err := f.AddRoute(r); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		added = append(added, canonical(r))
	}
	return added, first
}
