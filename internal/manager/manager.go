// Package manager owns vpnd's single VPN slot: it decides who may set up,
// protect and destroy, brings the VPN up through a Kernel with a full
// rollback on failure, tears it down on every way a VPN can end, keeps it
// as it was set up (self-healing), and tells subscribers about each change.
package manager

import (
	"context"
	"encoding/json"
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
	"github.com/vpnd/vpnd/internal/tun"
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
type Manager struct {
	k   Kernel
	opt Options
	log *zap.Logger

	// mu serialises every change of the slot, including the kernel work of
	// bring-up and teardown, so that a second setUp sees 2203002 and never
	// races with a teardown that still holds the rule priority.
	// Self-healing does not take it.
	mu  sync.Mutex
	vpn *vpn
	// current is the VpnInfo of m.vpn (nil when there is none), set with
	// m.vpn under mu, and cleared as soon as a teardown begins. Status and
	// protect read it without the lock, so they never wait for a bring-up
	// or a teardown.
	current atomic.Pointer[protocol.VpnInfo]
	nextID  uint64
	subs    map[uint64]func(protocol.StateChanged)
	nextSub uint64
	healing sync.WaitGroup

	// lockdown is lockdown's state, under mu; lockInfo its description for
	// status, read without the lock.
	lockdown lockdownState
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

// vpn is the live VPN and everything vpnd added to the kernel for it.
type vpn struct {
	id        uint64
	info      protocol.VpnInfo
	ownerUID  uint32
	ownerConn uint64
	index     int
	// guard holds what the VPN put in the kernel (what Install added) and
	// keeps it in place.
	guard *guard
	// dns is the backend that applied the VPN's DNS settings, nil if none.
	dns DNS
}

// New returns a Manager with an empty slot.
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
	return &Manager{k: k, opt: opt, log: opt.Log, subs: make(map[uint64]func(protocol.StateChanged))}
}

// SetUp creates the VPN for c. It checks, in this order, what is left
// after parameter validation: account type (2203001), application lists
// naming other users without ADMIN (201), a NORMAL caller's addresses
// outside its pools or overlapping the host's (201), an existing VPN
// (2203002), then brings it up (19900002 after a full rollback). On success
// the caller must hand the returned file to the client and close it; if
// the hand-off fails it calls Abort with the returned id.
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
	defer m.mu.Unlock()
	if v := m.vpn; v != nil {
		return nil, nil, 0, errs.New(errs.CodeVPNExists, "%s is up, owned by uid %d (pid %d)", v.info.Interface, v.ownerUID, v.info.Owner.PID)
	}
	// vpnd shares neither its table nor its rule priority: a foreign route
	// in the table would steer VPN traffic, and a foreign rule at the
	// priority could shadow vpnd's. The start-up sweep emptied both, so
	// anything there now is someone else's.
	occupants, err := m.k.Occupants(m.opt.Table, m.opt.RulePriority)
	if err != nil {
		return nil, nil, 0, errs.Wrap(errs.CodeInternal, err, "check routing table and rule priority")
	}
	if len(occupants) > 0 {
		m.log.Warn("vpn table or rule priority in use by someone else", zap.Strings("occupants", occupants))
		return nil, nil, 0, errs.New(errs.CodeInternal, "routing table %d or rule priority %d is in use by someone else: %s",
			m.opt.Table, m.opt.RulePriority, firstFew(occupants, 5))
	}
	m.nextID++
	v := &vpn{id: m.nextID, ownerUID: c.UID, ownerConn: c.Conn}
	f, err := m.bringUp(v, c, cfg)
	if err != nil {
		m.log.Warn("vpn bring-up failed, rolled back", zap.Uint32("uid", c.UID), zap.Error(err))
		return nil, nil, 0, errs.Wrap(errs.CodeInternal, err, "bring-up")
	}
	m.vpn = v
	m.current.Store(&v.info)
	m.opt.Observer.VPNUp(len(v.guard.want.Routes), len(v.guard.want.Rules))
	m.log.Info("vpn up", zap.String("ifname", v.info.Interface), zap.Int("index", v.index),
		zap.Uint32("uid", c.UID), zap.Int32("pid", c.PID), zap.Int("addresses", len(v.guard.want.Addrs())),
		zap.Int("routes", len(v.guard.want.Routes)), zap.Int("rules", len(v.guard.want.Rules)))
	m.notify(protocol.ReasonSetUp, v)
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

// bringUp does the kernel work of SetUp, recording in v what it added. On
// failure it removes what was added and closes the TUN, so the kernel ends
// as it was. Kernel errors already name the step and its object ("add route
// 198.51.100.0/24 ...: file exists"), so they are returned as they are.
func (m *Manager) bringUp(v *vpn, c Caller, cfg *config.Config) (_ *os.File, err error) {
	f, index, err := m.k.CreateTUN(m.opt.IfName, tun.TUNOptions{Blocking: cfg.Blocking, VnetHdr: cfg.Offload})
	if err != nil {
		return nil, err
	}
	v.index = index
	ctx, cancel := context.WithCancel(context.Background())
	g := &guard{
		name: "vpn",
		// Until Install says more, the link is all there is to remove.
		want:  tun.Objects{Link: &tun.Link{Index: index}},
		query: tun.Query{LinkIndex: index, Table: m.opt.Table, Priorities: []int{m.opt.RulePriority}},
		stop:  cancel,
	}
	v.guard = g
	defer func() {
		if err != nil {
			m.revertDNS(v) // nothing unless a step after applyDNS failed
			if rerr := m.remove(g); rerr != nil {
				m.log.Error("rollback incomplete", zap.Error(rerr))
			}
			f.Close()
		}
	}()
	// Watch before configuring: a configuration that succeeds proves the
	// link outlived the registration, so no deletion can be missed.
	gone, changed, err := m.k.Watch(ctx, g.filter())
	if err != nil {
		return nil, fmt.Errorf("watch link %d: %w", index, err)
	}
	// Before the link has an address, on which a resolver starts using it.
	if err := m.prepareDNS(v); err != nil {
		return nil, err
	}
	plan := m.plan(index, c, cfg)
	added, err := m.k.Install(&plan)
	if added.Link != nil {
		g.want = added
	}
	if err != nil {
		return nil, err
	}
	if err := m.applyDNS(v, c, cfg); err != nil {
		return nil, err
	}
	go func() {
		select {
		case <-gone:
			m.end(v.id, protocol.ReasonLinkGone)
		case <-ctx.Done():
		}
	}()
	m.startHealing(ctx, g, changed)
	v.info = m.describe(v, c, cfg)
	return f, nil
}

// plan lists what a VPN puts in the kernel: the link's MTU and addresses,
// then its routes and rules.
func (m *Manager) plan(index int, c Caller, cfg *config.Config) tun.Objects {
	return tun.Objects{
		Link:   &tun.Link{Index: index, MTU: cfg.MTU, Addrs: cfg.Addresses},
		Routes: m.routesFor(index, cfg),
		Rules:  m.rulesFor(c, cfg),
	}
}

// routesFor lists the table routes of cfg: each address's prefix route
// (the kernel was told not to put it into main, where it would serve every
// uid), included routes on the TUN, and excluded routes as throw routes so
// that their traffic leaves the table. A route the config gives for an
// address's prefix, included or excluded, takes the place of the prefix
// route; host addresses (/32, /128) and addresses of a family the VPN does
// not accept get none.
func (m *Manager) routesFor(index int, cfg *config.Config) []tun.Route {
	rs := make([]tun.Route, 0, len(cfg.Addresses)+len(cfg.Routes)+len(cfg.ExcludedRoutes))
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
		rs = append(rs, tun.Route{Table: m.opt.Table, Dst: p, LinkIndex: index})
	}
	for _, r := range cfg.Routes {
		rs = append(rs, tun.Route{Table: m.opt.Table, Dst: r.Dst, Gateway: r.Gateway, LinkIndex: index})
	}
	for _, p := range cfg.ExcludedRoutes {
		rs = append(rs, tun.Route{Table: m.opt.Table, Dst: p, Kind: tun.Throw})
	}
	// The other family fails closed: its default in the table is
	// unreachable, so the covered uids' traffic of a family the VPN does
	// not carry gets ENETUNREACH at once instead of leaving outside the
	// VPN (the classic IPv6 leak of an IPv4-only VPN).
	if !cfg.AllowFamilyBypass {
		if !cfg.IPv4 {
			rs = append(rs, tun.Route{Table: m.opt.Table, Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Kind: tun.Unreachable})
		}
		if !cfg.IPv6 {
			rs = append(rs, tun.Route{Table: m.opt.Table, Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0), Kind: tun.Unreachable})
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
func (m *Manager) rulesFor(c Caller, cfg *config.Config) []tun.Rule {
	covered := coveredUIDs(c, cfg)
	var fams []int
	if cfg.IPv4 || !cfg.AllowFamilyBypass {
		fams = append(fams, unix.AF_INET)
	}
	if cfg.IPv6 || !cfg.AllowFamilyBypass {
		fams = append(fams, unix.AF_INET6)
	}
	var rules []tun.Rule
	for _, fam := range fams {
		base := tun.Rule{Family: fam, Priority: m.opt.RulePriority, Table: m.opt.Table}
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
func (m *Manager) Abort(id uint64) { m.end(id, protocol.ReasonOwnerGone) }

// Destroy ends the VPN for c: account type (2203001), no VPN (success,
// destroy is idempotent), not owner and not ADMIN (201), teardown.
func (m *Manager) Destroy(c Caller) error {
	if c.Type == auth.Guest {
		return errs.New(errs.CodeGuestDenied, "user %s (uid %d) is a guest account", userName(c), c.UID)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.vpn
	if v == nil {
		return nil
	}
	if v.ownerUID != c.UID && c.Type != auth.Admin {
		return errs.New(errs.CodePermission, "the VPN is owned by uid %d; caller uid %d is neither its owner nor admin", v.ownerUID, c.UID)
	}
	m.teardownLocked(v, protocol.ReasonDestroy)
	return nil
}

// Protect marks the socket fd so that its traffic bypasses the VPN:
// descriptor (2203004), GUEST or not owner/ADMIN while a VPN exists (201),
// then the mark. The fd is the caller's to close.
func (m *Manager) Protect(c Caller, fd int) error {
	if err := m.k.CheckSocket(fd); err != nil {
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

// Status reports the slot and lockdown.
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

// ConnClosed ends the VPN if conn was its owner's connection.
func (m *Manager) ConnClosed(conn uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.vpn; v != nil && v.ownerConn == conn {
		m.teardownLocked(v, protocol.ReasonOwnerGone)
	}
}

// Shutdown ends the VPN, if any, because vpnd is stopping, and waits for
// self-healing to stop. Lockdown's rules stay in the kernel: lockdown
// fails closed while vpnd is away.
func (m *Manager) Shutdown() {
	m.mu.Lock()
	if v := m.vpn; v != nil {
		m.teardownLocked(v, protocol.ReasonShutdown)
	}
	m.mu.Unlock()
	m.stopLockdown()
	m.healing.Wait()
}

// end tears down the VPN with this id, if it is still the current one.
func (m *Manager) end(id uint64, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.vpn; v != nil && v.id == id {
		m.teardownLocked(v, reason)
	}
}

// teardownLocked empties the slot, removes everything v added and tells
// the subscribers why. Status says "disconnected" from the first moment.
func (m *Manager) teardownLocked(v *vpn, reason string) {
	m.vpn = nil
	m.current.Store(nil)
	start := time.Now()
	// DNS first, while the link still exists for a per-link resolver, and
	// so that no query goes to the VPN's servers once the VPN is going.
	m.revertDNS(v)
	err := m.remove(v.guard)
	if err != nil {
		m.log.Error("vpn teardown incomplete", zap.String("ifname", v.info.Interface), zap.Error(err))
	}
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
