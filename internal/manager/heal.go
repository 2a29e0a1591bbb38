package manager

import (
	"context"
	"errors"
	"slices"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/tun"
)

// Self-healing. Other daemons rewrite policy routing: systemd-networkd
// flushes rules it does not know (ManageForeignRoutingPolicyRules), and
// firewall reloads do similar things. A VPN whose rule vanished silently
// stops protecting, so while a VPN is up vpnd watches rtnetlink for any
// change, re-reads its table and priority, and puts back whatever of its
// own is missing or changed. It never touches anything it did not add.
//
// A fight with another daemon must not spin: repairs draw from a token
// bucket (healBurst tokens, one more every healRefill). Without a token
// the repair waits for the next one, so the final state is still repaired.
const (
	healBurst  = 5
	healRefill = 2 * time.Second
	// healSettle lets a burst of netlink events (a flush removes many
	// things) arrive before the kernel is re-read once.
	healSettle = 10 * time.Millisecond
	// rewatchDelay spaces attempts to re-open a failed change watch.
	rewatchDelay = 200 * time.Millisecond
)

// limiter is a token bucket used by one goroutine only.
type limiter struct {
	tokens float64
	last   time.Time
}

func (l *limiter) take(now time.Time) (ok bool, wait time.Duration) {
	l.tokens += float64(now.Sub(l.last)) / float64(healRefill)
	l.tokens = min(l.tokens, healBurst)
	l.last = now
	if l.tokens >= 1 {
		l.tokens--
		return true, 0
	}
	return false, time.Duration((1 - l.tokens) * float64(healRefill))
}

// heal runs while v is up, until ctx is cancelled.
func (m *Manager) heal(ctx context.Context, v *vpn, changes <-chan struct{}) {
	lim := &limiter{tokens: healBurst, last: time.Now()}
	var retry <-chan time.Time
	throttled := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry:
			retry = nil
		case _, ok := <-changes:
			if !ok {
				changes = m.rewatch(ctx, v)
				if changes == nil {
					return
				}
				// Events may have been missed meanwhile: resync.
			}
		}
		if retry != nil {
			continue // a throttled repair is already scheduled
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(healSettle):
		}
		if wait := m.repair(v, lim, &throttled); wait > 0 {
			retry = time.After(wait)
		}
	}
}

// changeFilter selects the kernel changes that can touch a VPN on the link
// with this index: its table, its rule priority, its link.
func (m *Manager) changeFilter(index int) tun.ChangeFilter {
	return tun.ChangeFilter{Table: m.opt.Table, Priority: m.opt.RulePriority, LinkIndex: index}
}

// rewatch re-opens the change watch after it failed, until it works or ctx
// is cancelled (then it returns nil).
func (m *Manager) rewatch(ctx context.Context, v *vpn) <-chan struct{} {
	for {
		if ctx.Err() != nil {
			return nil
		}
		ch, err := m.k.WatchChanges(ctx, m.changeFilter(v.index))
		if err == nil {
			m.log.Info("change watch re-opened")
			return ch
		}
		m.log.Error("re-open change watch failed", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(rewatchDelay):
		}
	}
}

// diff returns v's rules and routes that are not in the kernel as added.
// m.mu must be held.
func (m *Manager) diff(v *vpn) ([]tun.Rule, []tun.Route, error) {
	haveRules, err := m.k.ListRules(m.opt.Table, m.opt.RulePriority)
	if err != nil {
		return nil, nil, err
	}
	haveRoutes, err := m.k.ListRoutes(m.opt.Table)
	if err != nil {
		return nil, nil, err
	}
	var rules []tun.Rule
	for _, r := range v.rules {
		if !slices.Contains(haveRules, r) {
			rules = append(rules, r)
		}
	}
	var routes []tun.Route
	for _, r := range v.routes {
		if !slices.Contains(haveRoutes, r) {
			routes = append(routes, r)
		}
	}
	return rules, routes, nil
}

// repair puts back what of v's is missing or changed in the kernel, and
// logs each restored item. Without a token from lim it repairs nothing and
// returns how long to wait for one; throttled makes it say so only once
// per fight.
func (m *Manager) repair(v *vpn, lim *limiter, throttled *bool) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vpn != v {
		return 0
	}
	rules, routes, err := m.diff(v)
	if err != nil {
		m.log.Error("self-healing: read kernel state failed", zap.Error(err))
		return 0
	}
	if len(rules)+len(routes) == 0 {
		*throttled = false
		return 0
	}
	if ok, wait := lim.take(time.Now()); !ok {
		if !*throttled {
			m.log.Warn("self-healing throttled: vpnd's rules or routes keep being changed",
				zap.Int("missing", len(rules)+len(routes)), zap.Duration("next_repair_in", wait))
			*throttled = true
		}
		return wait
	}
	if len(routes) > 0 {
		// A link set down loses its routes and refuses new ones.
		if err := m.k.SetUp(v.index); err != nil {
			m.log.Error("self-healing: set link up failed", zap.Error(err))
		}
	}
	for _, r := range routes {
		if err := m.k.ReplaceRoute(r); err != nil {
			m.log.Error("self-healing: restore route failed", zap.Stringer("route", r), zap.Error(err))
			continue
		}
		m.log.Warn("restored route", zap.Stringer("route", r))
	}
	for _, r := range rules {
		if err := m.k.AddRule(r); err != nil && !errors.Is(err, unix.EEXIST) {
			m.log.Error("self-healing: restore rule failed", zap.Stringer("rule", r), zap.Error(err))
			continue
		}
		m.log.Warn("restored rule", zap.Stringer("rule", r))
	}
	return 0
}
