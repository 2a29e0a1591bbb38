package manager

import (
	"context"
	"slices"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/uidrange"
	"github.com/vpnd/vpnd/protocol"
)

// Lockdown (OpenHarmony's always-on VPN, Android's lockdown): an
// administrator says that some users' traffic may leave only through a VPN.
// vpnd installs, per family and per contiguous range of the listed uids,
//
//	priority P+1: uidrange A-B fwmark 0x0/MARK unreachable
//
// one priority after the VPN's own rules (P). A VPN that carries a listed
// user's traffic matches first; everything else that user sends gets
// ENETUNREACH at once. Protected sockets (MARK set) skip the rule, so a VPN
// app can always (re)connect its tunnel; local delivery (the local table,
// priority 0) still works.
//
// Lockdown outlives VPNs and vpnd itself: it is stored (Store), applied at
// start before vpnd serves, and left in the kernel when vpnd exits or is
// killed, so that nothing leaks while vpnd restarts. The start-up sweep
// keeps the rules the stored state wants (LockdownKeep).

// Store keeps what must outlive vpnd.
type Store interface {
	// SaveLockdown records lockdown's state durably: it is on disk when
	// SaveLockdown returns.
	SaveLockdown(config.Lockdown) error
}

// LockdownPriority is where lockdown's rules sit: one after the VPN's.
func (m *Manager) LockdownPriority() int { return m.opt.RulePriority + 1 }

// lockdownRules lists lockdown's rules for users.
func (m *Manager) lockdownRules(users []config.User) []tun.Rule {
	var rules []tun.Rule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		for _, r := range uidrange.FromUIDs(uids(users)) {
			rules = append(rules, tun.Rule{Family: fam, Priority: m.LockdownPriority(), UIDStart: r.Start, UIDEnd: r.End,
				Mask: m.opt.ProtectMark, Action: tun.Refuse})
		}
	}
	return rules
}

// LockdownKeep reports whether the start-up sweep must keep rule: whether
// the stored lockdown state l wants it.
func (m *Manager) LockdownKeep(l config.Lockdown) func(tun.Rule) bool {
	want := map[tun.Rule]bool{}
	if l.Enabled {
		for _, r := range m.lockdownRules(l.Users) {
			want[r] = true
		}
	}
	return func(r tun.Rule) bool { return want[r] }
}

// StartLockdown applies the stored lockdown state at start, before vpnd
// serves: it adds the rules the sweep did not find, and keeps them in
// place from then on.
func (m *Manager) StartLockdown(l config.Lockdown) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applyLockdownLocked(l, false)
}

// SetLockdown turns lockdown on for l.Users, changes its list, or turns it
// off: ADMIN only (201), then the kernel (19900002, with the kernel as it
// was). The new rules go in before the old ones go, so a user on both lists
// is never free, and the state is stored before the call returns.
func (m *Manager) SetLockdown(c Caller, l config.Lockdown) error {
	if c.Type != auth.Admin {
		return errs.New(errs.CodePermission, "setLockdown needs an admin account; caller uid %d is %s", c.UID, c.Type)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.applyLockdownLocked(l, true); err != nil {
		return err
	}
	m.log.Info("lockdown changed", zap.Bool("enabled", l.Enabled), zap.Strings("users", userStrs(l.Users)),
		zap.Uint32("by_uid", c.UID))
	ev := protocol.StateChanged{Interface: m.opt.IfName, Reason: protocol.ReasonLockdown, Lockdown: m.lockdownInfo()}
	if v := m.vpn; v != nil {
		info := v.info
		ev.IsConnected, ev.VPN = true, &info
	}
	for _, fn := range m.subs {
		fn(ev)
	}
	return nil
}

// applyLockdownLocked makes l lockdown's state in the kernel (and in the
// store if save). m.mu must be held.
func (m *Manager) applyLockdownLocked(l config.Lockdown, save bool) error {
	var want []tun.Rule
	if l.Enabled {
		want = m.lockdownRules(l.Users)
	}
	prio := m.LockdownPriority()
	s, err := m.k.Read(tun.Query{Priorities: []int{prio}})
	if err != nil {
		return errs.Wrap(errs.CodeInternal, err, "read lockdown rules")
	}
	var add []tun.Rule
	for _, r := range want {
		if !slices.Contains(s.Rules, r) {
			add = append(add, r)
		}
	}
	old := m.lockdown
	added, err := m.k.Install(&tun.Objects{Rules: add})
	if err != nil {
		if rerr := m.k.Remove(&added); rerr != nil {
			m.log.Error("lockdown rollback incomplete", zap.Error(rerr))
		}
		return errs.Wrap(errs.CodeInternal, err, "add lockdown rules")
	}
	if save && m.opt.Store != nil {
		if err := m.opt.Store.SaveLockdown(l); err != nil {
			if rerr := m.k.Remove(&added); rerr != nil {
				m.log.Error("lockdown rollback incomplete", zap.Error(rerr))
			}
			return errs.Wrap(errs.CodeInternal, err, "store lockdown state")
		}
	}
	// From here on l is in force: the old guard's rules that l does not
	// want go.
	if old.guard != nil {
		old.guard.stop()
		var gone []tun.Rule
		for _, r := range old.guard.want.Rules {
			if !slices.Contains(want, r) {
				gone = append(gone, r)
			}
		}
		old.guard.kmu.Lock()
		old.guard.ending = true
		old.guard.kmu.Unlock()
		if err := m.k.Remove(&tun.Objects{Rules: gone}); err != nil {
			m.log.Error("remove old lockdown rules failed", zap.Error(err))
		}
	}
	m.lockdown = lockdownState{Lockdown: l}
	m.lockInfo.Store(m.describeLockdown(l))
	if l.Enabled {
		ctx, cancel := context.WithCancel(context.Background())
		g := &guard{name: "lockdown", want: tun.Objects{Rules: want}, query: tun.Query{Priorities: []int{prio}}, stop: cancel}
		_, changed, err := m.k.Watch(ctx, g.filter())
		if err != nil {
			// The rules are in; only their self-healing is missing.
			cancel()
			m.log.Error("watch lockdown rules failed", zap.Error(err))
		} else {
			m.startHealing(ctx, g, changed)
		}
		m.lockdown.guard = g
	}
	return nil
}

// lockdownState is lockdown as the manager holds it.
type lockdownState struct {
	config.Lockdown
	guard *guard // nil when off
}

func (m *Manager) describeLockdown(l config.Lockdown) *protocol.Lockdown {
	return &protocol.Lockdown{Enabled: l.Enabled, Applications: userStrs(l.Users)}
}

// lockdownInfo returns lockdown's state for status and notifications.
func (m *Manager) lockdownInfo() *protocol.Lockdown {
	if l := m.lockInfo.Load(); l != nil {
		cp := *l
		return &cp
	}
	return &protocol.Lockdown{Applications: []string{}}
}

// stopLockdown stops lockdown's self-healing; its rules stay.
func (m *Manager) stopLockdown() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g := m.lockdown.guard; g != nil {
		g.stop()
	}
}
