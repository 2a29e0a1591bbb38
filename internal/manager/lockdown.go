package manager

import (
	"context"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/errs"
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
// The rules cannot stop what never consults them: multicast and broadcast
// that the local table routes, and multicast and limited broadcast from a
// socket with a bound source or device. So the firewall (Want.Firewall)
// drops the listed users' packets too unless they leave by loopback or the
// VPN's link, or from a protected socket.
//
// Lockdown outlives VPNs and vpnd itself: it is stored (Store), applied at
// start before vpnd serves (Start), and left in the kernel when vpnd exits
// or is killed, so that nothing leaks while vpnd restarts.

// Store keeps what must outlive vpnd.
type Store interface {
	// SaveLockdown records lockdown's state durably: it is on disk when
	// SaveLockdown returns.
	SaveLockdown(config.Lockdown) error
}

// LockdownPriority is where lockdown's rules sit: one after the VPN's.
func (m *Manager) LockdownPriority() int { return m.opt.RulePriority + 1 }

// lockdownRules lists lockdown's rules for l (none when it is off).
func (m *Manager) lockdownRules(l config.Lockdown) []Rule {
	if !l.Enabled {
		return nil
	}
	var rules []Rule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		for _, r := range uidrange.FromUIDs(uids(l.Users)) {
			rules = append(rules, Rule{Family: fam, Priority: m.LockdownPriority(), UIDStart: r.Start, UIDEnd: r.End,
				Mask: m.opt.ProtectMark, Action: Refuse})
		}
	}
	return rules
}

// isLockdownRule reports whether r has the shape of a lockdown rule of
// this vpnd's.
func (m *Manager) isLockdownRule(r Rule) bool {
	return r.Priority == m.LockdownPriority() && r.Action == Refuse && r.Mark == 0 && r.Mask == m.opt.ProtectMark &&
		r.Selectors == ""
}

// SetLockdown turns lockdown on for l.Users, changes its list, or turns it
// off: ADMIN only (201), then the kernel (19900002, with the kernel as it
// was). The new rules go in before the old ones go, so a user on both lists
// is never free, and the state is stored before the call returns.
func (m *Manager) SetLockdown(c Caller, l config.Lockdown) error {
	if c.Type != auth.Admin {
		return errs.New(errs.CodePermission, "setLockdown needs an admin account; caller uid %d is %s", c.UID, c.Type)
	}
	m.ldMu.Lock()
	defer m.ldMu.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errClosed()
	}
	old := m.lockdown
	m.lockdown = l
	gen := m.publishLocked()
	m.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), m.waits.end)
	defer cancel()
	err := m.rec.Wait(ctx, gen, true)
	if err == nil && m.opt.Store != nil {
		if err = m.opt.Store.SaveLockdown(l); err != nil {
			err = errs.Wrap(errs.CodeInternal, err, "store lockdown state")
		}
	}
	if err != nil {
		m.mu.Lock()
		m.lockdown = old
		gen := m.publishLocked()
		m.mu.Unlock()
		if werr := m.rec.Wait(ctx, gen, false); werr != nil {
			m.log.Error("lockdown rollback incomplete; vpnd goes on", zap.Error(werr))
		}
		if _, ok := err.(*errs.Error); ok {
			return err
		}
		return errs.Wrap(errs.CodeInternal, err, "apply lockdown")
	}
	m.log.Info("lockdown changed", zap.Bool("enabled", l.Enabled), zap.Strings("users", userStrs(l.Users)),
		zap.Uint32("by_uid", c.UID))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lockInfo.Store(describeLockdown(l))
	ev := protocol.StateChanged{Interface: m.opt.IfName, Reason: protocol.ReasonLockdown, Lockdown: m.lockdownInfo()}
	if v := m.vpn; v != nil && v.phase == up {
		info := v.info
		ev.IsConnected, ev.VPN = true, &info
	}
	for _, fn := range m.subs {
		fn(ev)
	}
	return nil
}

func describeLockdown(l config.Lockdown) *protocol.Lockdown {
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
