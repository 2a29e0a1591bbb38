package manager

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The reconciler. The manager says what it wants in the kernel (a Want:
// the VPN's link settings, routes and rules, lockdown's rules, the
// firewall, or nothing), and one loop makes the kernel match it: read what
// is not known, compute the difference, apply it in batches, and check
// again. On any error or difference it tries again, with backoff, until
// the kernel matches or the want changes. Bring-up, rollback,
// self-healing, teardown, the start-up sweep and lockdown are all "set a
// want and wait": nobody handles a failure its own way, so no path can
// leave something behind that the others would not see.
//
// What belongs to vpnd. The reconciler never touches anything outside
// vpnd's places (its interface name, table and priorities, and its
// firewall table). Inside them it keeps a set of what it owns: everything
// it ever asked the kernel to add and has not seen gone since, and
// whatever the start-up sweep found that an earlier vpnd could have left.
// What it owns but no longer wants it deletes, whatever the kernel made of
// it (a route deleted by its identity, whatever its protocol or type), and
// keeps deleting until it is gone. So vpnd's own leftovers are never taken
// for someone else's. What it neither wants nor owns it leaves alone: a
// foreign route in vpnd's table is reported (Occupants), never deleted.
//
// What it knows. Reading 10,000 routes takes tens of milliseconds, so the
// loop keeps a view of vpnd's places and reads a part only when it may be
// stale: at start, when the kernel announced a change there that vpnd did
// not make (Kernel.Sync), or when a request failed or its answer was lost.
// The view is exact, not a guess: the kernel announces every change before
// it acknowledges the request that made it, and the loop takes in every
// announcement (Sync) before it trusts the view. A request acknowledged
// without an error did exactly what it asked.

const (
	// settleQuiet and settleMax let a burst of foreign changes (`ip route
	// flush` deletes a table in rounds) end before the kernel is read: the
	// loop waits until no change came for settleQuiet, but no longer than
	// settleMax after the first. A new want ends the wait at once, and
	// calls run during it: a setUp or destroy never waits for the kernel
	// to be quiet.
	settleQuiet = 10 * time.Millisecond
	settleMax   = 250 * time.Millisecond
	// backoffMin and backoffMax bound the wait before a failed pass is
	// tried again: it doubles from the first to the second. The second is
	// also how long vpnd's objects may stay away once a fight with another
	// program stops.
	backoffMin = 5 * time.Millisecond
	backoffMax = 500 * time.Millisecond
	// repairBurst repairs may follow each other at once; then one more
	// every repairRefill. A fight with another daemon that keeps deleting
	// vpnd's rules must not spin.
	repairBurst  = 5
	repairRefill = 500 * time.Millisecond
	// roundsPerPass bounds the read-plan-apply rounds of one pass: each
	// round after the first means that the kernel changed meanwhile.
	roundsPerPass = 4
	// loggedObjects is how many objects one log line names.
	loggedObjects = 5
)

// errLinkGone says that the VPN's link no longer exists: nothing can
// bring it back, so the VPN ends.
var errLinkGone = errors.New("the VPN's link is gone")

// Want is what vpnd wants in its places.
type Want struct {
	// Link is the VPN's TUN link (created by CreateTUN), nil without a
	// VPN.
	Link *Link
	// Routes are the routes vpnd wants in its table.
	Routes []Route
	// Rules are the rules vpnd wants at its priorities.
	Rules []Rule
	// Firewall is what vpnd's firewall table must hold.
	Firewall Firewall
}

// view is the kernel as the reconciler knows it. Only the loop touches it.
type view struct {
	known  Parts
	links  map[int]LinkState
	named  int // the index of the link named IfName; 0 if none
	routes map[RouteKey]Route
	names  map[int]string // of the routes' links, for people
	rules  []Rule
	// fw is what the firewall table holds when PartFirewall is known; nil
	// when it holds something vpnd did not ask for.
	fw *Firewall
}

// owned is what vpnd put (or may have put) into its places and has not
// seen gone since. Only the loop touches it.
type owned struct {
	links  map[int]bool
	routes map[RouteKey]bool
	rules  map[Rule]bool
	// leftovers are what the start-up sweep found: their removal is
	// logged as such.
	leftovers map[any]bool
}

// passResult is what a pass of the loop did, for whoever waits.
type passResult struct {
	gen       uint64 // the want's generation it worked on
	converged bool
	err       error
}

// reconciler is the loop. Its exported behaviour is Set, Wait, Call and
// Stop; everything else runs on the loop's goroutine.
type reconciler struct {
	k      Kernel
	places Places
	log    *zap.Logger
	obs    Observer
	// linkGone is told, on its own goroutine, that the wanted link
	// with this index disappeared.
	linkGone func(index int)
	// now is the clock for backoff and throttling (tests replace it).
	now func() time.Time
	// settleQuiet and settleMax are the constants of the same names
	// (tests replace them before the loop starts).
	settleQuiet, settleMax time.Duration

	mu       sync.Mutex
	want     Want
	gen      uint64        // bumped by Set
	last     passResult    // the last pass
	done     uint64        // the highest generation the kernel matched
	changed  chan struct{} // closed and replaced after every pass
	kick     chan struct{}
	calls    chan func()
	stop     chan struct{}
	stopped  chan struct{}
	stopping bool

	// The loop's own state.
	v        view
	own      owned
	tokens   float64   // repair tokens
	lastTok  time.Time // when tokens were last counted
	throttle bool      // a throttled fight was logged
	swept    []string  // the leftovers removed, for the start-up sweep's summary
	// inUse says that a VPN was wanted since vpnd last read both its
	// table and its priorities: whatever appeared there meanwhile is
	// vpnd's.
	inUse bool
	// configured are the links vpnd has set its link settings on.
	configured map[int]bool
	matched    uint64 // the generation the kernel last matched, for telling repairs from changes
}

func newReconciler(k Kernel, places Places, log *zap.Logger, obs Observer, linkGone func(int)) *reconciler {
	r := &reconciler{
		k: k, places: places, log: log, obs: obs, linkGone: linkGone, now: time.Now,
		settleQuiet: settleQuiet, settleMax: settleMax,
		changed:    make(chan struct{}),
		kick:       make(chan struct{}, 1),
		calls:      make(chan func()),
		stop:       make(chan struct{}),
		stopped:    make(chan struct{}),
		v:          view{links: map[int]LinkState{}, routes: map[RouteKey]Route{}},
		own:        owned{links: map[int]bool{}, routes: map[RouteKey]bool{}, rules: map[Rule]bool{}, leftovers: map[any]bool{}},
		tokens:     repairBurst,
		configured: map[int]bool{},
	}
	return r
}

// start runs the loop until Stop.
func (r *reconciler) start() {
	r.lastTok = r.now()
	go r.run()
}

// Set makes w what the kernel must hold and returns its generation. It
// does not wait.
func (r *reconciler) Set(w Want) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want = w
	r.gen++
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return r.gen
}

// Gen is the generation of the want in force.
func (r *reconciler) Gen() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen
}

// Wait waits until the kernel matched the want of generation gen (or a
// later one), and returns nil then. If failFast, it returns earlier, with
// the pass's error, if a pass for gen or later failed with an error that
// retrying will not mend (a refusal of the kernel, a gone link). It
// returns the last error when ctx ends first.
func (r *reconciler) Wait(ctx context.Context, gen uint64, failFast bool) error {
	for {
		r.mu.Lock()
		done, last, ch, stopping := r.done, r.last, r.changed, r.stopping
		r.mu.Unlock()
		if done >= gen {
			return nil
		}
		if failFast && last.gen >= gen && last.err != nil && !errors.Is(last.err, ErrTransient) {
			return last.err
		}
		if stopping {
			return errors.New("vpnd is stopping")
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if last.err != nil {
				return fmt.Errorf("%w (and the kernel has not matched yet: %w)", last.err, ctx.Err())
			}
			return fmt.Errorf("the kernel has not matched yet: %w", ctx.Err())
		}
	}
}

// Call runs f on the loop's goroutine, between passes, and returns when
// it has run: f may read and change the loop's state.
func (r *reconciler) Call(f func()) error {
	done := make(chan struct{})
	select {
	case r.calls <- func() { f(); close(done) }:
		<-done
		return nil
	case <-r.stopped:
		return errors.New("vpnd is stopping")
	}
}

// Stop ends the loop and waits for it. The kernel keeps what it holds.
func (r *reconciler) Stop() {
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		<-r.stopped
		return
	}
	r.stopping = true
	close(r.stop)
	r.mu.Unlock()
	<-r.stopped
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// run is the loop.
func (r *reconciler) run() {
	defer close(r.stopped)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wake <-chan struct{}
	var retry <-chan time.Time
	var retryTimer *time.Timer
	backoff := time.Duration(0)
	watchBackoff := backoffMin
	var watchRetry <-chan time.Time
	startWatch := func() {
		ch, err := r.k.Watch(ctx, r.places)
		if err != nil {
			r.log.Error("watch vpnd's places failed; retrying", zap.Error(err), zap.Duration("in", watchBackoff))
			watchRetry = time.After(watchBackoff)
			watchBackoff = min(2*watchBackoff, backoffMax)
			return
		}
		wake, watchRetry, watchBackoff = ch, nil, backoffMin
		r.v.known = 0 // changes may have been missed before the watch
	}
	startWatch()
	for {
		select {
		case <-r.stop:
			return
		case f := <-r.calls:
			f()
			continue
		case <-watchRetry:
			startWatch()
			if wake == nil {
				continue
			}
		case <-r.kick:
		case <-retry:
			retry = nil
		case <-wake:
			if !r.settle(wake) {
				return
			}
		}
		if retry != nil {
			// A pass failed and waits out its backoff; a change of the want
			// or of the kernel does not cut the wait short, so that a fight
			// cannot spin.
			select {
			case <-r.kick:
			default:
			}
			r.mu.Lock()
			newWant := r.gen != r.last.gen
			r.mu.Unlock()
			if !newWant {
				continue
			}
			retryTimer.Stop()
			retry = nil
		}
		r.mu.Lock()
		w, gen := r.want, r.gen
		r.mu.Unlock()
		res, wait := r.pass(&w, gen)
		r.mu.Lock()
		r.last = res
		if res.converged && gen > r.done {
			r.done = gen
		}
		close(r.changed)
		r.changed = make(chan struct{})
		r.mu.Unlock()
		switch {
		case res.converged:
			backoff = 0
		case wait > 0:
			// Throttled: a repair waits for a token.
			retryTimer = time.NewTimer(wait)
			retry = retryTimer.C
		case res.err != nil:
			backoff = min(max(2*backoff, backoffMin), backoffMax)
			retryTimer = time.NewTimer(backoff)
			retry = retryTimer.C
			if !errors.Is(res.err, errLinkGone) {
				r.log.Warn("kernel does not match vpnd's state yet; retrying", zap.Error(res.err), zap.Duration("in", backoff))
			}
		default:
			// The kernel kept changing during the pass: go again.
			select {
			case r.kick <- struct{}{}:
			default:
			}
		}
	}
}

// settle waits until wake has been quiet for settleQuiet (or settleMax
// has passed), or until a new want comes (Set); calls run meanwhile. It
// reports false if the loop is stopping.
func (r *reconciler) settle(wake <-chan struct{}) bool {
	limit := time.NewTimer(r.settleMax)
	defer limit.Stop()
	quiet := time.NewTimer(r.settleQuiet)
	defer quiet.Stop()
	for {
		select {
		case <-r.stop:
			return false
		case <-limit.C:
			return true
		case <-quiet.C:
			return true
		case <-r.kick:
			// The pass reads what the churn made stale; what the churn
			// does after it wakes the loop again.
			return true
		case f := <-r.calls:
			f()
		case <-wake:
			quiet.Reset(r.settleQuiet)
		}
	}
}

// pass makes the kernel match w, in at most roundsPerPass rounds of
// read, plan and apply. wait > 0 says that a repair must wait that long
// for a token.
func (r *reconciler) pass(w *Want, gen uint64) (res passResult, wait time.Duration) {
	res.gen = gen
	if w.Link != nil {
		r.own.links[w.Link.Index] = true // vpnd created it
		r.inUse = true
	}
	for round := range roundsPerPass {
		if round > 0 && r.Gen() != gen {
			// The want changed (a teardown during a repair, say): work
			// on the new one at once.
			return res, 0
		}
		r.v.known &^= r.k.Sync()
		for index := range r.own.links {
			if _, ok := r.v.links[index]; !ok {
				// A link of vpnd's that the view has not seen yet (vpnd has
				// just created it): read it before calling it gone.
				r.v.known &^= PartLinks
			}
		}
		if err := r.read(w); err != nil {
			res.err = err
			return res, 0
		}
		if w.Link != nil {
			if _, ok := r.v.links[w.Link.Index]; !ok {
				// The link was deleted, or its last fd closed: nothing can
				// bring it back. The VPN ends; until the manager says so,
				// everything else stays as it is.
				if r.linkGone != nil {
					go r.linkGone(w.Link.Index)
				}
				res.err = fmt.Errorf("%w (interface index %d)", errLinkGone, w.Link.Index)
				return res, 0
			}
		}
		fwSet := r.v.known&PartFirewall == 0 || r.v.fw == nil || !r.v.fw.Equal(&w.Firewall)
		ops := r.plan(w)
		if len(ops) == 0 && !fwSet {
			if pending := r.k.Sync(); pending != 0 {
				r.v.known &^= pending
				continue
			}
			r.matched = gen
			res.converged = true
			return res, 0
		}
		repair := r.matched == gen
		if repair {
			if ok, d := r.takeToken(); !ok {
				if !r.throttle {
					r.log.Warn("self-healing throttled: vpnd's link, rules or routes keep being changed",
						zap.Int("missing", len(ops)), zap.Duration("next_repair_in", d))
					r.throttle = true
				}
				return res, d
			}
		}
		start := r.now()
		var errs []error
		if fwSet {
			if err := r.k.SetFirewall(w.Firewall); err != nil {
				r.v.known &^= PartFirewall
				errs = append(errs, fmt.Errorf("set firewall: %w", err))
			} else {
				fw := w.Firewall
				r.v.fw, r.v.known = &fw, r.v.known|PartFirewall
			}
		}
		for _, op := range ops {
			r.noteOwned(op)
		}
		results, err := r.k.Apply(ops)
		if err != nil {
			r.v.known = 0
			errs = append(errs, err)
		}
		done := r.update(ops, results, err == nil)
		for i, e := range results {
			switch {
			case e == nil:
			case errors.Is(e, unix.EEXIST) && (ops[i].Kind == AddRule || ops[i].Kind == AddAddr):
				// Something the view did not know is there: read again.
				errs = append(errs, fmt.Errorf("%s: %w: %w", ops[i], ErrTransient, e))
			default:
				errs = append(errs, fmt.Errorf("%s: %w", ops[i], e))
			}
		}
		if repair {
			r.logRepair(w, done, fwSet, start)
		}
		if len(errs) > 0 {
			res.err = errors.Join(errs...)
			return res, 0
		}
	}
	return res, 0
}

// takeToken takes a repair token, or says how long until there is one.
func (r *reconciler) takeToken() (bool, time.Duration) {
	now := r.now()
	r.tokens = min(r.tokens+float64(now.Sub(r.lastTok))/float64(repairRefill), repairBurst)
	r.lastTok = now
	if r.tokens == repairBurst {
		r.throttle = false // the last fight is long over
	}
	if r.tokens >= 1 {
		r.tokens--
		return true, 0
	}
	return false, time.Duration((1 - r.tokens) * float64(repairRefill))
}

// read reads the parts of vpnd's places that the view does not know.
func (r *reconciler) read(w *Want) error {
	return r.readParts(w, PartAll)
}

// readParts reads the parts among need that the view does not know.
func (r *reconciler) readParts(w *Want, need Parts) error {
	what := need &^ PartFirewall &^ r.v.known
	if need&PartFirewall != 0 && r.v.known&PartFirewall == 0 {
		holds, err := r.k.FirewallHolds(w.Firewall)
		if err != nil {
			return fmt.Errorf("read firewall: %w", err)
		}
		r.v.fw = nil // something else is there: SetFirewall will make it w's
		if holds {
			fw := w.Firewall
			r.v.fw = &fw
		}
		r.v.known |= PartFirewall
	}
	if what == 0 {
		return nil
	}
	x := indexWant(w)
	q := Query{Places: r.places, What: what}
	if what&PartLinks != 0 {
		for index := range r.own.links {
			q.Links = append(q.Links, index)
		}
		if w.Link != nil && !r.own.links[w.Link.Index] {
			q.Links = append(q.Links, w.Link.Index)
		}
	}
	have, err := r.k.Read(q)
	if err != nil {
		return fmt.Errorf("read kernel state: %w", err)
	}
	if what&PartLinks != 0 {
		old := r.v.links
		r.v.links = make(map[int]LinkState, len(have.Links))
		r.v.named = 0
		for _, l := range have.Links {
			r.v.links[l.Index] = l
			if l.Name == r.places.IfName {
				r.v.named = l.Index
			}
			// A link that went down or changed its MTU or addresses may
			// have lost routes without the kernel announcing it (IPv4
			// routes through a link go silently).
			if o, ok := old[l.Index]; ok && (o.Up != l.Up || o.MTU != l.MTU || !slices.Equal(o.Addrs, l.Addrs)) {
				what &^= PartRoutes
				r.v.known &^= PartRoutes
			}
		}
		r.v.known |= PartLinks
		for index := range r.own.links {
			if _, ok := r.v.links[index]; !ok && (w.Link == nil || w.Link.Index != index) {
				delete(r.own.links, index)
			}
		}
	}
	if what&PartRoutes != 0 {
		clear(r.v.routes)
		r.v.names = have.LinkNames
		for _, rt := range have.Routes {
			r.v.routes[rt.Key()] = rt
			if r.inUse {
				// While a VPN uses the table it is vpnd's: whatever someone
				// else puts there would steer the VPN's traffic, and goes.
				r.own.routes[rt.Key()] = true
			}
		}
		r.v.known |= PartRoutes
		for key := range r.own.routes {
			if _, ok := r.v.routes[key]; !ok && !x.wantsRoute(key) {
				delete(r.own.routes, key)
			}
		}
	}
	if what&PartRules != 0 {
		r.v.rules = have.Rules
		r.v.known |= PartRules
		if r.inUse {
			// Likewise every rule at the VPN's priority that looks the
			// table up.
			for _, rule := range r.v.rules {
				if r.isVPNRule(rule) {
					r.own.rules[rule] = true
				}
			}
		}
		have := make(map[Rule]bool, len(r.v.rules))
		for _, rule := range r.v.rules {
			have[rule] = true
		}
		for rule := range r.own.rules {
			if !have[rule] && !x.rules[rule] {
				delete(r.own.rules, rule)
			}
		}
	}
	if w.Link == nil && what&(PartRoutes|PartRules) == PartRoutes|PartRules {
		// Both were read since the last VPN was wanted: from now on what
		// appears there is someone else's.
		r.inUse = false
	}
	// Whatever is still unknown (routes, after a link change) is read
	// now too.
	if what := need & (PartLinks | PartRoutes | PartRules); r.v.known&what != what {
		return r.readParts(w, need)
	}
	return nil
}

// wantIndex is a want's routes and rules by identity, so that comparing a
// want of 10,000 routes with the kernel stays linear.
type wantIndex struct {
	routes map[RouteKey]Route
	rules  map[Rule]bool
}

func indexWant(w *Want) *wantIndex {
	x := &wantIndex{routes: make(map[RouteKey]Route, len(w.Routes)), rules: make(map[Rule]bool, len(w.Rules))}
	for _, rt := range w.Routes {
		x.routes[rt.Key()] = rt
	}
	for _, rule := range w.Rules {
		x.rules[rule] = true
	}
	return x
}

func (x *wantIndex) wantsRoute(key RouteKey) bool {
	_, ok := x.routes[key]
	return ok
}

// plan lists the ops that make the view w: first what w adds (the link's
// settings, addresses, up state, then routes, then rules, so that no
// traffic enters the table before its routes are there), then what vpnd
// owns but w does not want (rules first, so that no traffic looks the
// table up any more, then routes, then links, which take their addresses
// and the routes through them along).
func (r *reconciler) plan(w *Want) []Op {
	var ops []Op
	x := indexWant(w)
	haveRules := make(map[Rule]bool, len(r.v.rules))
	for _, rule := range r.v.rules {
		haveRules[rule] = true
	}
	table := r.places.Table
	if l := w.Link; l != nil {
		have := r.v.links[l.Index]
		if have.MTU != l.MTU || !r.configured[l.Index] {
			// The settings that come with the MTU (reverse path filtering,
			// IPv6 address generation) are not read back: they are set once,
			// and again with every MTU.
			ops = append(ops, Op{Kind: SetLink, Link: Link{Index: l.Index, MTU: l.MTU}})
		}
		wantAddr := make(map[netip.Prefix]bool, len(l.Addrs))
		for _, a := range l.Addrs {
			wantAddr[a] = true
		}
		haveAddr := make(map[netip.Prefix]bool, len(have.Addrs))
		for _, a := range have.Addrs {
			if !wantAddr[a.Prefix] || a.Foreign {
				// Not vpnd's, or not as vpnd makes it: the link is vpnd's, and
				// anything on it serves the VPN's users' traffic.
				ops = append(ops, Op{Kind: DelAddr, Link: Link{Index: l.Index}, Addr: a.Prefix})
				continue
			}
			haveAddr[a.Prefix] = true
		}
		for _, a := range l.Addrs {
			if !haveAddr[a] {
				ops = append(ops, Op{Kind: AddAddr, Link: Link{Index: l.Index}, Addr: a})
			}
		}
		if !have.Up {
			ops = append(ops, Op{Kind: LinkUp, Link: Link{Index: l.Index}})
		}
	}
	for _, rt := range w.Routes {
		if have, ok := r.v.routes[rt.Key()]; !ok || have != rt {
			ops = append(ops, Op{Kind: PutRoute, Table: table, Route: rt})
		}
	}
	for _, rule := range w.Rules {
		if !haveRules[rule] {
			ops = append(ops, Op{Kind: AddRule, Table: table, Rule: rule})
		}
	}
	// What vpnd owns and no longer wants: in the kernel's order for rules,
	// so that the last of several rules a delete could match goes last.
	for _, rule := range r.v.rules {
		if r.own.rules[rule] && !x.rules[rule] {
			ops = append(ops, Op{Kind: DelRule, Table: table, Rule: rule})
		}
	}
	gone := map[int]bool{}
	for index := range r.own.links {
		if _, ok := r.v.links[index]; ok && (w.Link == nil || w.Link.Index != index) {
			gone[index] = true
		}
	}
	var keys []RouteKey
	for key := range r.own.routes {
		have, ok := r.v.routes[key]
		if !ok || x.wantsRoute(key) || (have.OnLink() && gone[have.LinkIndex]) {
			continue // gone, wanted, or going with its link
		}
		keys = append(keys, key)
	}
	slices.SortFunc(keys, compareKeys)
	for _, key := range keys {
		ops = append(ops, Op{Kind: DelRoute, Table: table, Route: r.v.routes[key]})
	}
	indexes := make([]int, 0, len(gone))
	for index := range gone {
		indexes = append(indexes, index)
	}
	slices.Sort(indexes)
	for _, index := range indexes {
		ops = append(ops, Op{Kind: DelLink, Link: Link{Index: index}})
	}
	return ops
}

func compareKeys(a, b RouteKey) int {
	if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
		return c
	}
	if a.Dst.Bits() != b.Dst.Bits() {
		return a.Dst.Bits() - b.Dst.Bits()
	}
	if a.Tos != b.Tos {
		return int(a.Tos) - int(b.Tos)
	}
	return int(int64(a.Metric) - int64(b.Metric))
}

// noteOwned records that op may put its object into the kernel: from
// the moment it is sent, vpnd owns it, whatever the answer.
func (r *reconciler) noteOwned(op Op) {
	switch op.Kind {
	case PutRoute:
		r.own.routes[op.Route.Key()] = true
	case AddRule:
		r.own.rules[op.Rule] = true
	}
}

// update brings the view up to date with what ops did: an op that
// succeeded did exactly what it asked; the part of one that failed is
// read again. answered is false when the answers were lost. It returns
// the ops that took effect.
func (r *reconciler) update(ops []Op, results []error, answered bool) []Op {
	var done []Op
	for i, op := range ops {
		if !answered || i >= len(results) {
			break
		}
		if err := results[i]; err != nil {
			r.v.known &^= opPart(op)
			continue
		}
		done = append(done, op)
		switch op.Kind {
		case SetLink:
			l := r.v.links[op.Link.Index]
			l.MTU = op.Link.MTU
			r.v.links[op.Link.Index] = l
			r.configured[op.Link.Index] = true
		case LinkUp:
			l := r.v.links[op.Link.Index]
			l.Up = true
			r.v.links[op.Link.Index] = l
		case AddAddr:
			l := r.v.links[op.Link.Index]
			l.Addrs = append(slices.Clone(l.Addrs), Addr{Prefix: op.Addr})
			sortAddrs(l.Addrs)
			r.v.links[op.Link.Index] = l
		case DelAddr:
			l := r.v.links[op.Link.Index]
			l.Addrs = slices.DeleteFunc(slices.Clone(l.Addrs), func(a Addr) bool { return a.Prefix == op.Addr })
			r.v.links[op.Link.Index] = l
			// The last IPv4 address takes the IPv4 routes through the link
			// along, unannounced.
			r.v.known &^= PartRoutes
		case PutRoute:
			r.v.routes[op.Route.Key()] = op.Route
		case DelRoute:
			delete(r.v.routes, op.Route.Key())
			delete(r.own.routes, op.Route.Key())
			r.logLeftover(op.Route.Key(), "removed leftover route", "route "+op.Route.String(), zap.String("route", op.Route.String()))
		case AddRule:
			r.v.rules = append(r.v.rules, op.Rule)
		case DelRule:
			if i := slices.Index(r.v.rules, op.Rule); i >= 0 {
				r.v.rules = slices.Delete(r.v.rules, i, i+1)
			}
			// The kernel deletes the first rule that has every selector
			// a delete gives, which may be another one: read them again.
			r.v.known &^= PartRules
			delete(r.own.rules, op.Rule)
			r.logLeftover(op.Rule, "removed leftover rule", "rule "+op.Rule.String(), zap.String("rule", op.Rule.String()))
		case DelLink:
			delete(r.v.links, op.Link.Index)
			delete(r.configured, op.Link.Index)
			if r.v.named == op.Link.Index {
				r.v.named = 0
			}
			delete(r.own.links, op.Link.Index)
			// The link took its addresses and the routes through it along.
			for key, rt := range r.v.routes {
				if rt.OnLink() && rt.LinkIndex == op.Link.Index {
					delete(r.v.routes, key)
					delete(r.own.routes, key)
					delete(r.own.leftovers, key)
				}
			}
			r.logLeftover(linkKey(op.Link.Index), "removed leftover link",
				fmt.Sprintf("link %s (index %d)", r.places.IfName, op.Link.Index),
				zap.String("ifname", r.places.IfName), zap.Int("index", op.Link.Index))
		}
	}
	return done
}

type linkKey int

// logLeftover logs the removal of something the start-up sweep found,
// and lists it in swept.
func (r *reconciler) logLeftover(key any, msg, desc string, fields ...zap.Field) {
	if !r.own.leftovers[key] {
		return
	}
	delete(r.own.leftovers, key)
	r.swept = append(r.swept, desc)
	r.log.Info(msg, fields...)
}

// opPart is the part of vpnd's places that op changes.
func opPart(op Op) Parts {
	switch op.Kind {
	case PutRoute, DelRoute:
		return PartRoutes
	case AddRule, DelRule:
		return PartRules
	case DelLink:
		return PartLinks | PartRoutes
	}
	return PartLinks | PartRoutes
}

// logRepair logs one warning for a pass that put back what someone else
// changed, or removed what someone else added to vpnd's places: what it
// did, counted, and the first few objects by name.
func (r *reconciler) logRepair(w *Want, done []Op, fw bool, start time.Time) {
	of := "lockdown"
	var names []string
	var addrs, routes, rules, removed int
	up, mtu := false, 0
	for _, op := range done {
		switch op.Kind {
		case SetLink:
			mtu = op.Link.MTU
		case LinkUp:
			up = true
		case AddAddr:
			addrs++
			names = append(names, "address "+op.Addr.String())
		case PutRoute:
			routes++
			names = append(names, "route "+op.Route.String())
		case AddRule:
			rules++
			names = append(names, "rule "+op.Rule.String())
		case DelAddr, DelRoute, DelRule, DelLink:
			removed++
			names = append(names, "removed "+strings.TrimPrefix(op.String(), "delete "))
		}
		if w.Link != nil && (op.Kind != AddRule || op.Rule.Priority == r.places.Priorities[0]) {
			of = "vpn"
		}
	}
	if fw {
		names = append(names, "firewall table")
	}
	if len(names) == 0 && !up && mtu == 0 {
		return
	}
	r.obs.Repaired(of)
	r.log.Warn("self-healing restored vpn state", zap.String("of", of), zap.Bool("link_up", up), zap.Int("mtu", mtu),
		zap.Int("addresses", addrs), zap.Int("routes", routes), zap.Int("rules", rules), zap.Bool("firewall", fw),
		zap.Int("removed", removed), zap.String("first", firstFew(names, loggedObjects)), zap.Duration("took", r.now().Sub(start)))
	if ce := r.log.Check(zap.DebugLevel, "self-healing restored objects"); ce != nil {
		ce.Write(zap.Strings("objects", names))
	}
}

// adopt takes whatever an earlier vpnd may have left in vpnd's places as
// vpnd's own, so that the next passes remove what the want does not
// hold: a TUN link with vpnd's name, every route in its table, every rule
// at its priority that looks up the table, and lockdown-shaped rules at
// lockdown's priority (keep says which of those the stored lockdown
// wants). A link of another kind with vpnd's name is someone else's: it
// stays, and adopt returns an error wrapping ErrLinkExists. Runs on the
// loop.
func (r *reconciler) adopt(isLockdownRule func(Rule) bool) error {
	r.v.known &^= r.k.Sync()
	r.v.known &^= PartLinks | PartRoutes | PartRules
	var w Want
	r.mu.Lock()
	w = r.want
	r.mu.Unlock()
	if err := r.read(&w); err != nil {
		return err
	}
	var foreign error
	if index := r.v.named; index != 0 {
		if l := r.v.links[index]; l.TUN {
			r.own.links[index] = true
			r.own.leftovers[linkKey(index)] = true
		} else {
			foreign = fmt.Errorf("%w: %s is a link (index %d) that is not a TUN device; not removing it", ErrLinkExists, l.Name, index)
		}
	}
	for key := range r.v.routes {
		r.own.routes[key] = true
		r.own.leftovers[key] = true
	}
	for _, rule := range r.v.rules {
		switch {
		case r.isVPNRule(rule):
			r.own.rules[rule] = true
			r.own.leftovers[rule] = true
		case isLockdownRule(rule):
			// vpnd's, whether the stored lockdown still wants it or not:
			// only one it does not want is a leftover to remove now.
			r.own.rules[rule] = true
			if !slices.Contains(w.Rules, rule) {
				r.own.leftovers[rule] = true
			}
		}
	}
	return foreign
}

// isVPNRule reports whether rule sits at the VPN's priority and looks up
// vpnd's table: a rule of vpnd's, whatever else it selects.
func (r *reconciler) isVPNRule(rule Rule) bool {
	return rule.Priority == r.places.Priorities[0] && rule.Action == Lookup && rule.Table == r.places.Table
}

// freshOccupants is occupants, after taking in what changed since the
// last pass. Runs on the loop.
func (r *reconciler) freshOccupants() ([]string, error) {
	r.mu.Lock()
	w := r.want
	r.mu.Unlock()
	r.v.known &^= r.k.Sync()
	// The occupants are routes and rules; the links the pass reads when
	// it needs them.
	if err := r.readParts(&w, PartRoutes|PartRules); err != nil {
		return nil, err
	}
	return r.occupants(), nil
}

// occupants describes what sits in vpnd's table and at the VPN's rule
// priority that vpnd does not own: someone else's, which a new VPN would
// share. Runs on the loop, with every part of the view known.
func (r *reconciler) occupants() []string {
	var out []string
	for _, rule := range r.v.rules {
		if rule.Priority == r.places.Priorities[0] && !r.own.rules[rule] {
			out = append(out, "rule "+rule.String())
		}
	}
	var keys []RouteKey
	for key := range r.v.routes {
		if !r.own.routes[key] {
			keys = append(keys, key)
		}
	}
	slices.SortFunc(keys, compareKeys)
	for _, key := range keys {
		out = append(out, "route "+r.describeRoute(r.v.routes[key]))
	}
	return out
}

// describeRoute renders a route of the table the way `ip route` would,
// with its link's name: "192.0.2.0/24 dev lo table 98".
func (r *reconciler) describeRoute(rt Route) string {
	var b strings.Builder
	if rt.Kind != Unicast {
		b.WriteString(rt.Kind.String() + " ")
	}
	b.WriteString(rt.Dst.String())
	if rt.Gateway.IsValid() {
		fmt.Fprintf(&b, " via %s", rt.Gateway)
	}
	if rt.LinkIndex != 0 {
		name := r.v.names[rt.LinkIndex]
		if name == "" {
			name = fmt.Sprintf("#%d", rt.LinkIndex)
		}
		fmt.Fprintf(&b, " dev %s", name)
	}
	if rt.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", rt.Metric)
	}
	fmt.Fprintf(&b, " table %d", r.places.Table)
	return b.String()
}

func sortAddrs(as []Addr) {
	slices.SortFunc(as, func(a, b Addr) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
}
