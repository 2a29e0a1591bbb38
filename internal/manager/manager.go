// Package manager owns vpnd's single VPN slot: it decides who may set up,
// protect and destroy, brings the VPN up through a Kernel with a full
// rollback on failure, tears it down on every way a VPN can end, keeps it
// as it was set up (self-healing), and tells subscribers about each change.
package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/uidrange"
	"github.com/vpnd/vpnd/protocol"
)

// Options are the kernel-facing choices set by vpnd's flags.
type Options struct {
	// IfName is the TUN device's name ("vpn-tun").
	IfName string
	// Table is the routing table that holds the VPN's routes (98, as on
	// OpenHarmony: ROUTE_VPN_NETWORK_TABLE).
	Table int
	// RulePriority is where the uid rules sit (10000, OpenHarmony's
	// RULE_LEVEL_SECURE_VPN): after the local table (0) and before main
	// (32766), so that the VPN wins over the main table's default route.
	RulePriority int
	// ProtectMark is the SO_MARK bit that protect sets and that the
	// owner's rule excludes (0x20000, OpenHarmony's protectedFromVpn bit).
	ProtectMark uint32
	Log         *zap.Logger
	// Store keeps lockdown's state across restarts; nil keeps it in memory.
	Store Store
	// DNS applies a VPN's DNS settings to the host's resolver; nil applies
	// nothing (see applyDNS for which VPNs it is used for).
	DNS DNS
	// Now is the clock for VpnInfo.Since; nil means time.Now.
	Now func() time.Time
	// Simulated says that the Kernel is a simulation (`vpnd --sim`), which
	// every VpnInfo reports, so that an app can tell.
	Simulated bool
	// Observer is told about the VPN's life (metrics); nil observes nothing.
	Observer Observer
	// Offload says who may ask for "offload": true (vpnd --allow-offload).
	Offload OffloadPolicy
}

// OffloadPolicy says which callers may set up a VPN with "offload": true,
// whose TUN hands the app the kernel's virtio_net_hdr handling. An
// administrator who wants that kernel code out of ordinary users' reach
// allows it to admins only, or to nobody.
type OffloadPolicy int

const (
	OffloadAll   OffloadPolicy = iota // NORMAL and ADMIN callers (the default)
	OffloadAdmin                      // ADMIN callers only
	OffloadNone                       // nobody
)

// OffloadPolicies are the names ParseOffloadPolicy takes, in order.
var OffloadPolicies = []string{"all", "admin", "none"}

func (p OffloadPolicy) String() string {
	if p >= 0 && int(p) < len(OffloadPolicies) {
		return OffloadPolicies[p]
	}
	return fmt.Sprintf("OffloadPolicy(%d)", int(p))
}

// ParseOffloadPolicy parses "all", "admin" or "none".
func ParseOffloadPolicy(s string) (OffloadPolicy, error) {
	if i := slices.Index(OffloadPolicies, s); i >= 0 {
		return OffloadPolicy(i), nil
	}
	return 0, fmt.Errorf("want all, admin or none, not %q", s)
}

// Caller is who is calling, as vpnd learnt it from the kernel and the
// account policy in force.
type Caller struct {
	UID  uint32
	PID  int32
	User string // "" if the uid has no passwd entry
	Type auth.Type
	// AddressPools are the prefixes a NORMAL caller's VPN addresses must lie
	// in (the policy's addressPools).
	AddressPools []netip.Prefix
	// Conn identifies the caller's connection; the VPN ends when the
	// owner's connection closes.
	Conn uint64
}

// Manager is the single VPN slot. Its methods are safe for concurrent use.
//
// Locking. mu guards the slot, lockdown's state, the subscribers and the
// closed flag, and is never held across a call to the kernel, the DNS
// backend or the store: status and protect read atomics, a second setUp
// gets 2203002 at once, and a ConnClosed of a connection that owns no VPN
// returns at once, whatever a bring-up or a teardown is waiting for. The
// kernel work itself is serialised by the reconciler, which has one
// goroutine. ldMu serialises the lockdown changes with each other (each
// waits for the kernel); it is taken before mu, never after.
type Manager struct {
	k   Kernel
	opt Options
	log *zap.Logger
	rec *reconciler
	// waits bound the waits for the kernel (tests shorten them).
	waits waits

	ldMu sync.Mutex

	mu       sync.Mutex
	vpn      *vpn
	closed   bool
	lockdown config.Lockdown
	nextID   uint64
	subs     map[uint64]func(protocol.StateChanged)
	nextSub  uint64

	// isClosed mirrors closed for the entry points that take no lock.
	isClosed atomic.Bool
	// current is the VpnInfo of an up VPN (nil when there is none), set
	// when its bring-up ends and cleared as soon as its teardown begins.
	// Status and protect read it without the lock.
	current atomic.Pointer[protocol.VpnInfo]
	// lockInfo describes lockdown's state for status.
	lockInfo atomic.Pointer[protocol.Lockdown]

	// statusJSON is the last status answer, encoded, with the current
	// and lockInfo it was made of: both are replaced, never changed, so
	// the answer holds as long as they are the same pointers.
	statusJSON atomic.Pointer[encodedStatus]
}

// encodedStatus is a status answer encoded as JSON, and what it says.
type encodedStatus struct {
	info *protocol.VpnInfo
	lock *protocol.Lockdown
	body []byte
}

// vpnPhase is where a VPN is in its life.
type vpnPhase int

const (
	settingUp vpnPhase = iota // the slot is taken; the kernel is being set up
	up                        // serving
	ending                    // the kernel is being cleared
)

// vpn is the VPN in the slot.
type vpn struct {
	id        uint64
	phase     vpnPhase
	info      protocol.VpnInfo
	ownerUID  uint32
	ownerPID  int32
	ownerConn uint64
	index     int
	// objs is what the VPN wants in the kernel; nil before its TUN exists
	// and once its teardown begins.
	objs *vpnObjects
	// dns is the backend that applied the VPN's DNS settings, nil if none.
	dns DNS
	// endReason is an ending that came while the VPN was being set up:
	// it ends as soon as it is up.
	endReason string
	// ready is closed when the bring-up has ended, well or not; gone when
	// the slot is free again.
	ready, gone chan struct{}
}

// vpnObjects is what a VPN puts in the kernel.
type vpnObjects struct {
	link   Link
	routes []Route
	rules  []Rule
	// failClosed4 and failClosed6 are the covered users of a family the
	// VPN does not carry, for the firewall.
	failClosed4, failClosed6 []uidrange.Range
}

// waits bound the waits for the kernel: what a client waits for. The
// reconciler goes on regardless.
type waits struct{ leftover, bringUp, end time.Duration }

// Timeouts of the waits for the kernel.
const (
	// leftoverWait bounds the wait for an earlier VPN's leftovers to go
	// before a setUp.
	leftoverWait = 2 * time.Second
	// bringUpWait bounds a bring-up that keeps failing for reasons that
	// may pass (lost answers, a kernel that kept changing).
	bringUpWait = 5 * time.Second
	// endWait bounds how long a teardown, a rollback or a lockdown change
	// waits for the kernel before answering; what is left is removed in
	// the background.
	endWait = 5 * time.Second
)

// New returns a Manager with an empty slot, and starts its reconciler:
// call Shutdown to stop it. Start sweeps and applies the stored lockdown.
func New(k Kernel, opt Options) *Manager {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Log == nil {
		opt.Log = zap.NewNop()
	}
	if opt.Observer == nil {
		opt.Observer = noObserver{}
	}
	m := &Manager{k: k, opt: opt, log: opt.Log, subs: make(map[uint64]func(protocol.StateChanged)),
		waits: waits{leftover: leftoverWait, bringUp: bringUpWait, end: endWait}}
	places := Places{IfName: opt.IfName, Table: opt.Table, Priorities: []int{opt.RulePriority, opt.RulePriority + 1}}
	m.rec = newReconciler(k, places, opt.Log.Named("reconcile"), opt.Observer, m.linkGone)
	m.rec.Set(m.wantLocked())
	m.rec.start()
	return m
}

// Start sweeps what an earlier vpnd may have left in vpnd's places (its
// interface if it is a TUN device, its rules at its priority that look up
// its table, the routes in its table, its firewall table, and lockdown's
// rules that l does not want), and applies lockdown's stored state l. It
// returns once the kernel holds exactly that, with the descriptions of
// what it removed. A link of another kind with vpnd's interface name is
// left alone: the error then wraps ErrLinkExists, and setUp fails until it
// is gone. Start must be called before any other method, before vpnd
// serves.
func (m *Manager) Start(l config.Lockdown) ([]string, error) {
	m.ldMu.Lock()
	defer m.ldMu.Unlock()
	m.mu.Lock()
	m.lockdown = l
	m.lockInfo.Store(describeLockdown(l))
	m.rec.Set(m.wantLocked())
	m.mu.Unlock()
	var foreign error
	if err := m.rec.Call(func() { foreign = m.rec.adopt(m.isLockdownRule) }); err != nil {
		return nil, err
	}
	// A pass after the adoption removes what it found.
	m.mu.Lock()
	gen := m.publishLocked()
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), m.waits.end)
	defer cancel()
	if err := m.rec.Wait(ctx, gen, false); err != nil {
		return nil, fmt.Errorf("sweep and lockdown: %w", err)
	}
	var removed []string
	m.rec.Call(func() { removed, m.rec.swept = m.rec.swept, nil })
	return removed, foreign
}

// wantLocked is what vpnd wants in the kernel now: the VPN's objects,
// lockdown's rules and the firewall. m.mu must be held.
func (m *Manager) wantLocked() Want {
	var w Want
	w.Firewall = Firewall{Ifname: m.opt.IfName, ProtectMark: m.opt.ProtectMark}
	if v := m.vpn; v != nil && v.objs != nil {
		o := v.objs
		link := o.link
		w.Link = &link
		w.Routes = o.routes
		w.Rules = slices.Clone(o.rules)
		w.Firewall.FailClosedV4, w.Firewall.FailClosedV6 = o.failClosed4, o.failClosed6
	}
	if m.lockdown.Enabled {
		w.Rules = append(w.Rules, m.lockdownRules(m.lockdown)...)
		w.Firewall.Lockdown = uidrange.FromUIDs(uids(m.lockdown.Users))
	}
	return w
}

// publishLocked hands the reconciler what vpnd wants now and returns its
// generation. m.mu must be held.
func (m *Manager) publishLocked() uint64 { return m.rec.Set(m.wantLocked()) }

// errClosed answers every call once Shutdown has begun.
func errClosed() error { return errs.New(errs.CodeInternal, "vpnd is shutting down") }

// SetUp creates the VPN for c. It checks, in this order, what is left
// after parameter validation: account type (2203001), application lists
// naming other users without ADMIN (201), a NORMAL caller's addresses
// outside its pools or overlapping the host's (201), offload (201), an
// existing VPN (2203002), then brings it up (19900002 after a full
// rollback). On success the caller must hand the returned file to the
// client and close it; if the hand-off fails it calls Abort with the
// returned id.
func (m *Manager) SetUp(c Caller, cfg *config.Config) (*os.File, *protocol.VpnInfo, uint64, error) {
	if c.Type == auth.Guest {
		return nil, nil, 0, errs.New(errs.CodeGuestDenied, "user %s (uid %d) is a guest account", userName(c), c.UID)
	}
	if c.Type != auth.Admin {
		if err := checkLists(c, cfg); err != nil {
			return nil, nil, 0, err
		}
		if err := m.checkAddresses(c, cfg); err != nil {
			return nil, nil, 0, err
		}
	}
	if err := m.checkOffload(c, cfg); err != nil {
		return nil, nil, 0, err
	}

	m.mu.Lock()
	for {
		if m.closed {
			m.mu.Unlock()
			return nil, nil, 0, errClosed()
		}
		v := m.vpn
		if v == nil {
			break
		}
		if v.phase != ending {
			m.mu.Unlock()
			return nil, nil, 0, errs.New(errs.CodeVPNExists, "%s is up, owned by uid %d (pid %d)", m.opt.IfName, v.ownerUID, v.ownerPID)
		}
		// The last VPN is being torn down: once it is gone, the slot is
		// free.
		m.mu.Unlock()
		<-v.gone
		m.mu.Lock()
	}
	m.nextID++
	v := &vpn{id: m.nextID, phase: settingUp, ownerUID: c.UID, ownerPID: c.PID, ownerConn: c.Conn,
		ready: make(chan struct{}), gone: make(chan struct{})}
	m.vpn = v
	m.mu.Unlock()

	f, err := m.bringUp(v, c, cfg)

	m.mu.Lock()
	defer m.mu.Unlock()
	close(v.ready)
	if err != nil {
		m.vpn = nil
		close(v.gone)
		m.log.Warn("vpn bring-up failed, rolled back", zap.Uint32("uid", c.UID), zap.Error(err))
		var e *errs.Error
		if errors.As(err, &e) {
			return nil, nil, 0, err
		}
		return nil, nil, 0, errs.Wrap(errs.CodeInternal, err, "bring-up")
	}
	v.phase = up
	m.current.Store(&v.info)
	m.opt.Observer.VPNUp(len(v.objs.routes), len(v.objs.rules))
	m.log.Info("vpn up", zap.String("ifname", v.info.Interface), zap.Int("index", v.index),
		zap.Uint32("uid", c.UID), zap.Int32("pid", c.PID), zap.Int("addresses", len(v.objs.link.Addrs)),
		zap.Int("routes", len(v.objs.routes)), zap.Int("rules", len(v.objs.rules)))
	m.notify(protocol.ReasonSetUp, v)
	switch {
	case v.endReason != "":
		go m.end(v, v.endReason)
	case m.closed:
		// Shutdown waits for v.ready, then ends it.
	}
	info := v.info
	return f, &info, v.id, nil
}

// checkLists refuses a non-ADMIN caller whose application lists name
// another user (201).
func checkLists(c Caller, cfg *config.Config) error {
	for _, l := range []struct {
		name  string
		users []config.User
	}{{"trustedApplications", cfg.Trusted}, {"blockedApplications", cfg.Blocked}} {
		for i, u := range l.users {
			if u.UID != c.UID {
				return errs.New(errs.CodePermission,
					"%s[%d]: naming another user (uid %d) needs an admin account; caller uid %d is %s",
					l.name, i, u.UID, c.UID, c.Type)
			}
		}
	}
	return nil
}

// checkAddresses confines a NORMAL caller's addresses (201). An address
// also becomes a local address for every user of the host (the kernel's
// local table, which no rule can hide from other uids), so a NORMAL user
// must not claim one outside the policy's pools, nor one that overlaps an
// address or on-link prefix of another interface: that would capture, or
// impersonate, other users' destinations.
func (m *Manager) checkAddresses(c Caller, cfg *config.Config) error {
	for i, a := range cfg.Addresses {
		if !auth.InPools(c.AddressPools, a) {
			return errs.New(errs.CodePermission, "addresses[%d]: %s is outside the address pools allowed to non-admin users (%s); caller uid %d is %s",
				i, a, prefixList(c.AddressPools), c.UID, c.Type)
		}
	}
	host, err := m.k.HostPrefixes(m.opt.IfName)
	if err != nil {
		return errs.Wrap(errs.CodeInternal, err, "read the host's addresses")
	}
	for i, a := range cfg.Addresses {
		for _, h := range host {
			if a.Overlaps(h.Prefix) {
				return errs.New(errs.CodePermission, "addresses[%d]: %s overlaps %s on %s, and a non-admin user's VPN address must not overlap the host's own networks; caller uid %d is %s",
					i, a, h.Prefix, h.Ifname, c.UID, c.Type)
			}
		}
	}
	return nil
}

// checkOffload refuses "offload": true to a caller that --allow-offload
// leaves out (201).
func (m *Manager) checkOffload(c Caller, cfg *config.Config) error {
	switch {
	case !cfg.Offload || m.opt.Offload == OffloadAll:
		return nil
	case m.opt.Offload == OffloadAdmin && c.Type == auth.Admin:
		return nil
	case m.opt.Offload == OffloadAdmin:
		return errs.New(errs.CodePermission, "offload: this vpnd allows it to admin accounts only (--allow-offload admin); caller uid %d is %s", c.UID, c.Type)
	}
	return errs.New(errs.CodePermission, "offload: this vpnd allows it to nobody (--allow-offload none)")
}

func prefixList(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	return strings.Join(strs(ps), ", ")
}

// firstFew joins up to n of ss, saying how many more there are.
func firstFew[T any](ss []T, n int) string {
	var b strings.Builder
	for i, s := range ss {
		if i == n {
			fmt.Fprintf(&b, "; and %d more", len(ss)-n)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprint(&b, s)
	}
	return b.String()
}

// bringUp does the kernel work of SetUp for the VPN in the slot: it waits
// until an earlier VPN's leftovers are gone, refuses to share vpnd's table
// or priority with someone else, creates the TUN, has the reconciler put
// the VPN's objects in, and applies its DNS settings. On failure
// everything is rolled back and the TUN closed.
func (m *Manager) bringUp(v *vpn, c Caller, cfg *config.Config) (_ *os.File, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), m.waits.leftover)
	err = m.rec.Wait(ctx, m.rec.Gen(), false)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("vpnd is still removing an earlier VPN's objects: %w", err)
	}
	// vpnd shares neither its table nor its rule priority: a foreign route
	// in the table would steer VPN traffic, and a foreign rule at the
	// priority could shadow vpnd's.
	var occupants []string
	var readErr error
	if err := m.rec.Call(func() { occupants, readErr = m.rec.freshOccupants() }); err != nil {
		return nil, err
	}
	if readErr != nil {
		return nil, fmt.Errorf("check routing table and rule priority: %w", readErr)
	}
	if len(occupants) > 0 {
		m.log.Warn("vpn table or rule priority in use by someone else", zap.Strings("occupants", occupants))
		return nil, errs.New(errs.CodeInternal, "routing table %d or rule priority %d is in use by someone else: %s",
			m.opt.Table, m.opt.RulePriority, firstFew(occupants, 5))
	}
	f, index, err := m.k.CreateTUN(m.opt.IfName, TUNOptions{Blocking: cfg.Blocking, VnetHdr: cfg.Offload})
	if err != nil {
		return nil, err
	}
	v.index = index
	defer func() {
		if err != nil {
			m.revertDNS(v) // nothing unless applyDNS succeeded
			m.rollBack(v)
			f.Close()
		}
	}()
	// Before the link has an address, on which a resolver starts using it.
	if err := m.prepareDNS(v); err != nil {
		return nil, err
	}
	objs := m.plan(index, c, cfg)
	m.mu.Lock()
	v.objs = &objs
	gen := m.publishLocked()
	m.mu.Unlock()
	ctx, cancel = context.WithTimeout(context.Background(), m.waits.bringUp)
	err = m.rec.Wait(ctx, gen, true)
	cancel()
	if err != nil {
		return nil, err
	}
	if err := m.applyDNS(v, c, cfg); err != nil {
		return nil, err
	}
	v.info = m.describe(v, c, cfg)
	return f, nil
}

// rollBack has the reconciler remove v's objects, and waits a while for
// it. What it could not remove yet it goes on removing.
func (m *Manager) rollBack(v *vpn) {
	// The link is vpnd's from its creation, even if the bring-up failed
	// before the reconciler was told about it.
	m.rec.Call(func() { m.rec.own.links[v.index] = true })
	m.mu.Lock()
	v.objs = nil
	gen := m.publishLocked()
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), m.waits.end)
	defer cancel()
	if err := m.rec.Wait(ctx, gen, false); err != nil {
		m.log.Error("rollback incomplete; vpnd goes on removing what is left", zap.Error(err))
	}
}

// plan lists what a VPN puts in the kernel: the link's MTU and addresses,
// its routes and rules, and the users the firewall fails closed for.
func (m *Manager) plan(index int, c Caller, cfg *config.Config) vpnObjects {
	o := vpnObjects{
		link:   Link{Index: index, MTU: cfg.MTU, Addrs: cfg.Addresses},
		routes: m.routesFor(index, cfg),
		rules:  m.rulesFor(c, cfg),
	}
	if !cfg.AllowFamilyBypass {
		covered := coveredUIDs(c, cfg)
		if !cfg.IPv4 {
			o.failClosed4 = covered
		}
		if !cfg.IPv6 {
			o.failClosed6 = covered
		}
	}
	return o
}

// routesFor lists the table routes of cfg: each address's prefix route
// (the kernel was told not to put it into main, where it would serve every
// uid), included routes on the TUN, and excluded routes as throw routes so
// that their traffic leaves the table. A route the config gives for an
// address's prefix, included or excluded, takes the place of the prefix
// route; host addresses (/32, /128) and addresses of a family the VPN does
// not accept get none.
func (m *Manager) routesFor(index int, cfg *config.Config) []Route {
	rs := make([]Route, 0, len(cfg.Addresses)+len(cfg.Routes)+len(cfg.ExcludedRoutes))
	given := make(map[netip.Prefix]bool, len(cfg.Routes)+len(cfg.ExcludedRoutes))
	for _, r := range cfg.Routes {
		given[r.Dst] = true
	}
	for _, p := range cfg.ExcludedRoutes {
		given[p] = true
	}
	for _, a := range cfg.Addresses {
		p := a.Masked()
		accepted := (a.Addr().Is4() && cfg.IPv4) || (a.Addr().Is6() && cfg.IPv6)
		if !accepted || p.Bits() == a.Addr().BitLen() || given[p] {
			continue
		}
		given[p] = true
		rs = append(rs, Route{Dst: p, LinkIndex: index})
	}
	for _, r := range cfg.Routes {
		rs = append(rs, Route{Dst: r.Dst, Gateway: r.Gateway, LinkIndex: index})
	}
	for _, p := range cfg.ExcludedRoutes {
		rs = append(rs, Route{Dst: p, Kind: Throw})
	}
	// The other family fails closed: its default in the table is
	// unreachable, so the covered uids' traffic of a family the VPN does
	// not carry gets ENETUNREACH at once instead of leaving outside the
	// VPN (the classic IPv6 leak of an IPv4-only VPN).
	if !cfg.AllowFamilyBypass {
		if !cfg.IPv4 {
			rs = append(rs, Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Kind: Unreachable})
		}
		if !cfg.IPv6 {
			rs = append(rs, Route{Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0), Kind: Unreachable})
		}
	}
	return rs
}

// rulesFor lists the policy rules, one set per family: the accepted ones,
// and the others too unless allowFamilyBypass, so that their traffic meets
// the table's unreachable default (see routesFor). The owner's own uid gets
// the fwmark match so that its protected sockets bypass the VPN; the other
// covered uids (ADMIN owners only) get none, so that a socket some other
// user protected cannot escape an ADMIN's VPN.
func (m *Manager) rulesFor(c Caller, cfg *config.Config) []Rule {
	covered := coveredUIDs(c, cfg)
	var fams []int
	if cfg.IPv4 || !cfg.AllowFamilyBypass {
		fams = append(fams, unix.AF_INET)
	}
	if cfg.IPv6 || !cfg.AllowFamilyBypass {
		fams = append(fams, unix.AF_INET6)
	}
	var rules []Rule
	for _, fam := range fams {
		base := Rule{Family: fam, Priority: m.opt.RulePriority, Table: m.opt.Table}
		if uidrange.Contains(covered, c.UID) {
			r := base
			r.UIDStart, r.UIDEnd, r.Mask = c.UID, c.UID, m.opt.ProtectMark
			rules = append(rules, r)
		}
		for _, ur := range uidrange.Subtract(covered, c.UID) {
			r := base
			r.UIDStart, r.UIDEnd = ur.Start, ur.End
			rules = append(rules, r)
		}
	}
	return rules
}

// coveredUIDs is the set of uids whose traffic enters c's VPN.
func coveredUIDs(c Caller, cfg *config.Config) []uidrange.Range {
	return uidrange.Covered(c.UID, c.Type == auth.Admin, uids(cfg.Trusted), uids(cfg.Blocked))
}

func (m *Manager) describe(v *vpn, c Caller, cfg *config.Config) protocol.VpnInfo {
	info := protocol.VpnInfo{
		Interface:           m.opt.IfName,
		Index:               v.index,
		MTU:                 cfg.MTU,
		Addresses:           strs(cfg.Addresses),
		Routes:              make([]string, 0, len(cfg.Routes)),
		ExcludedRoutes:      strs(cfg.ExcludedRoutes),
		DNSAddresses:        strs(cfg.DNSAddresses),
		SearchDomains:       append([]string{}, cfg.SearchDomains...),
		DNSBackend:          dnsBackend(v),
		IsIPv4Accepted:      cfg.IPv4,
		IsIPv6Accepted:      cfg.IPv6,
		IsMetered:           cfg.Metered,
		AllowFamilyBypass:   cfg.AllowFamilyBypass,
		Offload:             cfg.Offload,
		TrustedApplications: userStrs(cfg.Trusted),
		BlockedApplications: userStrs(cfg.Blocked),
		Owner:               protocol.Owner{UID: c.UID, PID: c.PID, User: c.User},
		Since:               m.opt.Now().UTC().Format(time.RFC3339),
		Simulated:           m.opt.Simulated,
	}
	info.RouteGateways = map[string]string{}
	for _, r := range cfg.Routes {
		info.Routes = append(info.Routes, r.Dst.String())
		if r.Gateway.IsValid() {
			info.RouteGateways[r.Dst.String()] = r.Gateway.String()
		}
	}
	info.CoveredUIDs = strs(coveredUIDs(c, cfg))
	return info
}

// Abort ends the VPN with this id because its TUN fd could not be handed
// to the client. The client never saw the VPN, so this counts as the
// owner being gone.
func (m *Manager) Abort(id uint64) {
	m.mu.Lock()
	v := m.vpn
	m.mu.Unlock()
	if v != nil && v.id == id {
		m.end(v, protocol.ReasonOwnerGone)
	}
}

// Destroy ends the VPN for c: account type (2203001), no VPN (success,
// destroy is idempotent), not owner and not ADMIN (201), teardown. It
// returns once the kernel no longer holds the VPN (or, if the kernel keeps
// refusing, after endWait, with vpnd going on in the background).
func (m *Manager) Destroy(c Caller) error {
	if c.Type == auth.Guest {
		return errs.New(errs.CodeGuestDenied, "user %s (uid %d) is a guest account", userName(c), c.UID)
	}
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return errClosed()
		}
		v := m.vpn
		m.mu.Unlock()
		if v == nil {
			return nil
		}
		if v.ownerUID != c.UID && c.Type != auth.Admin {
			return errs.New(errs.CodePermission, "the VPN is owned by uid %d; caller uid %d is neither its owner nor admin", v.ownerUID, c.UID)
		}
		switch v.phase {
		case settingUp:
			<-v.ready // then it is up, or gone
			continue
		case ending:
			<-v.gone
			return nil
		}
		m.end(v, protocol.ReasonDestroy)
		return nil
	}
}

// Protect marks the socket fd so that its traffic bypasses the VPN:
// descriptor (2203004), GUEST or not owner/ADMIN while a VPN exists (201),
// then the mark. The fd is the caller's to close.
func (m *Manager) Protect(c Caller, fd int) error {
	if m.isClosed.Load() {
		return errClosed()
	}
	if err := checkSocket(fd); err != nil {
		return err
	}
	if c.Type == auth.Guest {
		return errs.New(errs.CodePermission, "user %s (uid %d) is a guest account", userName(c), c.UID)
	}
	if info := m.current.Load(); info != nil && info.Owner.UID != c.UID && c.Type != auth.Admin {
		return errs.New(errs.CodePermission, "the VPN is owned by uid %d; caller uid %d is neither its owner nor admin", info.Owner.UID, c.UID)
	}
	if err := m.k.MarkSocket(fd, m.opt.ProtectMark); err != nil {
		return errs.Wrap(errs.CodeInternal, err, "set SO_MARK")
	}
	return nil
}

// Status reports the slot and lockdown. It never waits.
func (m *Manager) Status() protocol.StatusResult {
	return statusOf(m.current.Load(), m.lockInfo.Load())
}

func statusOf(info *protocol.VpnInfo, lock *protocol.Lockdown) protocol.StatusResult {
	l := protocol.Lockdown{Applications: []string{}}
	if lock != nil {
		l = *lock
	}
	if info == nil {
		return protocol.StatusResult{State: protocol.StateDisconnected, Lockdown: l}
	}
	cp := *info // the slices are never changed after set-up
	return protocol.StatusResult{State: protocol.StateConnected, VPN: &cp, Lockdown: l}
}

// StatusJSON is Status encoded as JSON. The encoding is made once per
// state, not per call: a status answer for a VPN of 10,000 routes is
// about 200 KB, and every client may ask for it in a loop. The bytes are
// shared; callers must not change them.
func (m *Manager) StatusJSON() (json.RawMessage, error) {
	info, lock := m.current.Load(), m.lockInfo.Load()
	if c := m.statusJSON.Load(); c != nil && c.info == info && c.lock == lock {
		return c.body, nil
	}
	body, err := json.Marshal(statusOf(info, lock))
	if err != nil {
		return nil, fmt.Errorf("encode status: %w", err)
	}
	m.statusJSON.Store(&encodedStatus{info: info, lock: lock, body: body})
	return body, nil
}

// Subscribe calls fn with every state change until cancel is called. fn
// runs with the manager locked, in the order of the changes, and must not
// block: hand the event to a queue.
func (m *Manager) Subscribe(fn func(protocol.StateChanged)) (cancel func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextSub++
	id := m.nextSub
	m.subs[id] = fn
	return func() {
		m.mu.Lock()
		delete(m.subs, id)
		m.mu.Unlock()
	}
}

// ConnClosed ends the VPN if conn was its owner's connection. For any
// other connection it returns at once.
func (m *Manager) ConnClosed(conn uint64) {
	m.mu.Lock()
	v := m.vpn
	if v == nil || v.ownerConn != conn {
		m.mu.Unlock()
		return
	}
	if v.phase == settingUp {
		v.endReason = protocol.ReasonOwnerGone // ends once it is up
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	m.end(v, protocol.ReasonOwnerGone)
}

// linkGone ends the VPN whose link, with this index, disappeared. The
// reconciler calls it; a bring-up notices on its own.
func (m *Manager) linkGone(index int) {
	m.mu.Lock()
	v := m.vpn
	m.mu.Unlock()
	if v != nil && v.index == index {
		m.end(v, protocol.ReasonLinkGone)
	}
}

// Shutdown ends the VPN, if any, because vpnd is stopping, and stops the
// reconciler once the kernel holds lockdown's state alone: lockdown's
// rules and firewall stay, so that it fails closed while vpnd is away.
// From its start, every method refuses (19900002), and nothing touches the
// kernel after it returns.
func (m *Manager) Shutdown() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	m.isClosed.Store(true)
	m.mu.Unlock()
	for {
		m.mu.Lock()
		v := m.vpn
		var phase vpnPhase
		if v != nil {
			phase = v.phase
		}
		m.mu.Unlock()
		if v == nil {
			break
		}
		switch phase {
		case settingUp:
			<-v.ready
		case up:
			m.end(v, protocol.ReasonShutdown)
		case ending:
			<-v.gone
		}
	}
	m.rec.Stop()
}

// end tears v down, if it is still up, and tells the subscribers why.
// Status says "disconnected" from the first moment; the slot is free once
// the kernel no longer holds v (or endWait passed, with the reconciler
// going on alone).
func (m *Manager) end(v *vpn, reason string) {
	m.mu.Lock()
	if m.vpn != v || v.phase != up {
		m.mu.Unlock()
		return
	}
	v.phase = ending
	m.current.Store(nil)
	m.mu.Unlock()
	start := time.Now()
	// DNS first, while the link still exists for a per-link resolver, and
	// so that no query goes to the VPN's servers once the VPN is going.
	m.revertDNS(v)
	m.mu.Lock()
	v.objs = nil
	gen := m.publishLocked()
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), m.waits.end)
	err := m.rec.Wait(ctx, gen, false)
	cancel()
	if err != nil {
		m.log.Error("vpn teardown incomplete; vpnd goes on removing what is left", zap.String("ifname", v.info.Interface), zap.Error(err))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vpn = nil
	close(v.gone)
	m.log.Info("vpn down", zap.String("ifname", v.info.Interface), zap.String("reason", reason),
		zap.Uint32("uid", v.ownerUID), zap.Bool("complete", err == nil), zap.Duration("took", time.Since(start)))
	m.opt.Observer.VPNDown(reason)
	m.notify(reason, nil)
}

// notify tells every subscriber; the caller holds m.mu.
func (m *Manager) notify(reason string, v *vpn) {
	ev := protocol.StateChanged{IsConnected: v != nil, Interface: m.opt.IfName, Reason: reason}
	if v != nil {
		info := v.info
		ev.VPN = &info
	}
	for _, fn := range m.subs {
		fn(ev)
	}
}

func userName(c Caller) string {
	if c.User != "" {
		return c.User
	}
	return fmt.Sprint(c.UID)
}

func uids(us []config.User) []uint32 {
	out := make([]uint32, len(us))
	for i, u := range us {
		out[i] = u.UID
	}
	return out
}

func strs[T fmt.Stringer](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return out
}

func userStrs(us []config.User) []string {
	out := make([]string, len(us))
	for i, u := range us {
		if u.Name != "" {
			out[i] = u.Name
		} else {
			out[i] = fmt.Sprint(u.UID)
		}
	}
	return out
}
