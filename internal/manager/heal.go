package manager

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/vpnd/vpnd/internal/tun"
)

// Self-healing. Other daemons rewrite policy routing: systemd-networkd
// flushes rules it does not know (ManageForeignRoutingPolicyRules), and
// firewall reloads do similar things; an administrator may set the link
// down or change its MTU. A VPN whose rule, route or address vanished
// silently stops protecting, so while a VPN is up vpnd watches the kernel
// for changes to its link, table and priority, reads them back, and puts
// back whatever of its own is missing or changed: the link's up state and
// MTU, its addresses (a link set down loses its IPv6 addresses), its routes
// and its rules. It never touches anything it did not add.
//
// Lockdown's rules are kept the same way.
//
// Repairs do not take the manager's lock: status, protect and setUp never
// wait for one, and a teardown waits at most for one chunk of restores
// (healChunk objects) to finish (see guard.kmu).
//
// A fight with another daemon must not spin: repairs draw from a token
// bucket (healBurst tokens, one more every healRefill). Without a token
// the repair waits for the next one, so the final state is still repaired.
const (
	healBurst  = 5
	healRefill = 2 * time.Second
	// healSettle lets a burst of changes (`ip route flush` deletes a
	// table in rounds) end before the kernel is read once: a repair waits
	// until no change came for healSettle, but no longer than
	// healSettleMax after the first.
	healSettle    = 10 * time.Millisecond
	healSettleMax = 250 * time.Millisecond
	// healChunk bounds the objects restored under vpn.kmu at a time.
	healChunk = 2048
	// healLogged is how many restored objects the warning names.
	healLogged = 5
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

// guard is a set of kernel objects that self-healing keeps in place: a
// VPN's, or lockdown's rules.
type guard struct {
	name string // "vpn" or "lockdown", for the log
	// want is what the guard holds in the kernel. It is never changed
	// after the guard is made.
	want tun.Objects
	// query reads back what want is made of.
	query tun.Query
	stop  context.CancelFunc

	// kmu orders self-healing's kernel writes with the removal of want: a
	// repair writes one chunk at a time under it and stops once ending is
	// set, so a removal waits at most one chunk and no repair runs after
	// it.
	kmu    sync.Mutex
	ending bool
}

// filter selects the kernel changes that can touch g.
func (g *guard) filter() tun.ChangeFilter {
	return tun.ChangeFilter{LinkIndex: g.query.LinkIndex, Table: g.query.Table, Priorities: g.query.Priorities}
}

// remove stops g's self-healing and removes g's objects from the kernel.
func (m *Manager) remove(g *guard) error {
	g.stop()
	g.kmu.Lock()
	defer g.kmu.Unlock()
	g.ending = true
	return m.k.Remove(&g.want)
}

// startHealing keeps g in place until g.stop is called.
func (m *Manager) startHealing(ctx context.Context, g *guard, changed <-chan struct{}) {
	m.healing.Add(1)
	go func() {
		defer m.healing.Done()
		m.heal(ctx, g, changed)
	}()
}

// heal runs until ctx is cancelled.
func (m *Manager) heal(ctx context.Context, g *guard, changed <-chan struct{}) {
	lim := &limiter{tokens: healBurst, last: time.Now()}
	var retry <-chan time.Time
	throttled := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry:
			retry = nil
		case <-changed:
			if retry != nil {
				continue // a throttled repair is already scheduled
			}
		}
		if !settle(ctx, changed) {
			return
		}
		if wait := m.repair(g, lim, &throttled); wait > 0 {
			retry = time.After(wait)
		}
	}
}

// settle waits until changed has been quiet for healSettle (or
// healSettleMax has passed). It reports false if ctx ended.
func settle(ctx context.Context, changed <-chan struct{}) bool {
	limit := time.NewTimer(healSettleMax)
	defer limit.Stop()
	quiet := time.NewTimer(healSettle)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-limit.C:
			return true
		case <-quiet.C:
			return true
		case <-changed:
			quiet.Reset(healSettle)
		}
	}
}

// missing compares what the kernel holds with what g wants, in linear time
// (maps keyed by each object's identity), and returns what to put back.
func (g *guard) missing(s *tun.State) tun.Repair {
	var rep tun.Repair
	if want := g.want.Link; want != nil {
		rep.LinkIndex = want.Index
		if s.Link == nil {
			return tun.Repair{} // gone: the link watch ends the VPN
		}
		if s.Link.MTU != want.MTU {
			rep.MTU = want.MTU
		}
		rep.Up = !s.Link.Up
		haveAddrs := make(map[netip.Prefix]struct{}, len(s.Link.Addrs))
		for _, a := range s.Link.Addrs {
			haveAddrs[a] = struct{}{}
		}
		for _, a := range want.Addrs {
			if _, ok := haveAddrs[a]; !ok {
				rep.Addrs = append(rep.Addrs, a)
			}
		}
	}
	haveRoutes := make(map[tun.Route]struct{}, len(s.Routes))
	for _, r := range s.Routes {
		haveRoutes[r] = struct{}{}
	}
	for _, r := range g.want.Routes {
		if _, ok := haveRoutes[r]; !ok {
			rep.Routes = append(rep.Routes, r)
		}
	}
	haveRules := make(map[tun.Rule]struct{}, len(s.Rules))
	for _, r := range s.Rules {
		haveRules[r] = struct{}{}
	}
	for _, r := range g.want.Rules {
		if _, ok := haveRules[r]; !ok {
			rep.Rules = append(rep.Rules, r)
		}
	}
	return rep
}

// repair puts back what of g's is missing or changed in the kernel and logs
// one warning that counts what it restored and names the first few (debug
// names them all). Without a token from lim it repairs nothing and returns
// how long to wait for one; throttled makes it say so only once per fight.
func (m *Manager) repair(g *guard, lim *limiter, throttled *bool) time.Duration {
	s, err := m.k.Read(g.query)
	if err != nil {
		m.log.Error("self-healing: read kernel state failed", zap.String("of", g.name), zap.Error(err))
		return 0
	}
	rep := g.missing(s)
	if rep.Empty() {
		*throttled = false
		return 0
	}
	if ok, wait := lim.take(time.Now()); !ok {
		if !*throttled {
			m.log.Warn("self-healing throttled: vpnd's link, rules or routes keep being changed", zap.String("of", g.name),
				zap.Int("missing", len(rep.Addrs)+len(rep.Routes)+len(rep.Rules)), zap.Duration("next_repair_in", wait))
			*throttled = true
		}
		return wait
	}
	start := time.Now()
	var done tun.Repair
	var failed error
	for _, chunk := range chunks(rep, healChunk) {
		g.kmu.Lock()
		if g.ending {
			g.kmu.Unlock()
			return 0
		}
		got, err := m.k.Restore(&chunk)
		g.kmu.Unlock()
		done.MTU = max(done.MTU, got.MTU)
		done.Up = done.Up || got.Up
		done.Addrs = append(done.Addrs, got.Addrs...)
		done.Routes = append(done.Routes, got.Routes...)
		done.Rules = append(done.Rules, got.Rules...)
		if err != nil && failed == nil {
			failed = err
		}
	}
	if failed != nil {
		m.log.Error("self-healing: restore failed", zap.String("of", g.name), zap.Error(failed))
	}
	if done.Empty() {
		return 0
	}
	m.opt.Observer.Repaired(g.name)
	var names []string
	for _, a := range done.Addrs {
		names = append(names, "address "+a.String())
	}
	for _, r := range done.Routes {
		names = append(names, "route "+r.String())
	}
	for _, r := range done.Rules {
		names = append(names, "rule "+r.String())
	}
	fields := []zap.Field{
		zap.String("of", g.name), zap.Bool("link_up", done.Up), zap.Int("mtu", done.MTU),
		zap.Int("addresses", len(done.Addrs)), zap.Int("routes", len(done.Routes)), zap.Int("rules", len(done.Rules)),
		zap.String("first", firstFew(names, healLogged)), zap.Duration("took", time.Since(start)),
	}
	m.log.Warn("self-healing restored vpn state", fields...)
	if ce := m.log.Check(zap.DebugLevel, "self-healing restored objects"); ce != nil {
		ce.Write(zap.Strings("objects", names))
	}
	return 0
}

// chunks splits rep into repairs of at most n objects; the first carries
// the link's state.
func chunks(rep tun.Repair, n int) []tun.Repair {
	out := []tun.Repair{{LinkIndex: rep.LinkIndex, MTU: rep.MTU, Up: rep.Up}}
	cur := &out[0]
	room := func() int { return n - len(cur.Addrs) - len(cur.Routes) - len(cur.Rules) }
	next := func() {
		if room() <= 0 {
			out = append(out, tun.Repair{LinkIndex: rep.LinkIndex})
			cur = &out[len(out)-1]
		}
	}
	for _, a := range rep.Addrs {
		next()
		cur.Addrs = append(cur.Addrs, a)
	}
	for len(rep.Routes) > 0 {
		next()
		k := min(room(), len(rep.Routes))
		cur.Routes = append(cur.Routes, rep.Routes[:k]...)
		rep.Routes = rep.Routes[k:]
	}
	for _, r := range rep.Rules {
		next()
		cur.Rules = append(cur.Rules, r)
	}
	return out
}
