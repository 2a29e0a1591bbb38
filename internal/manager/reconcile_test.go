package manager_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
	"github.com/vpnd/vpnd/internal/uidrange"
	"github.com/vpnd/vpnd/protocol"
)

const richCfg = `{"addresses":["10.8.0.2/24","fd00::2/64"],"mtu":1400,"routes":["198.51.100.0/24","2001:db8::/32",
	{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":28},"isExcludedRoute":true}]}`

// healBed is a manager with a rich VPN up and its log recorded.
type healBed struct {
	m     *manager.Manager
	k     *tuntest.Fake
	logs  *observer.ObservedLogs
	index int
	want  sim.State
}

// newBed returns a started manager on a fresh fake, with its log
// recorded, that checks at the end that nothing is left.
func newBed(t *testing.T) (*manager.Manager, *tuntest.Fake, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	k := tuntest.New()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, Log: zap.New(core)})
	if _, err := m.Start(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Shutdown()
		k.Close()
		if s := k.Snapshot(); !clean(s) {
			t.Errorf("kernel not clean after shutdown: %+v", s)
		}
	})
	return m, k, logs
}

func newHealBed(t *testing.T) *healBed {
	t.Helper()
	m, k, logs := newBed(t)
	_, info := setUp(t, m, root, richCfg)
	b := &healBed{m: m, k: k, logs: logs, index: info.Index, want: k.Snapshot()}
	if len(b.want.Rules) != 4 || len(b.want.Routes) != 5 || len(b.want.Links[0].Addresses) != 2 {
		t.Fatalf("unexpected initial state %+v", b.want)
	}
	return b
}

// intact reports whether the kernel holds what it held after the setUp.
// A restored rule comes after the others of its priority, as in the
// kernel: the rules are compared as a set.
func (b *healBed) intact() bool {
	got := b.k.Snapshot()
	if !sameSet(got.Rules, b.want.Rules) {
		return false
	}
	got.Rules = b.want.Rules
	return got.Equal(b.want)
}

func (b *healBed) waitIntact(t *testing.T, what string) {
	t.Helper()
	waitFor(t, what, b.intact)
}

// warnings returns the self-healing warnings logged so far.
func (b *healBed) warnings() []observer.LoggedEntry {
	return b.logs.FilterMessage("self-healing restored vpn state").All()
}

func route(dst string, kind manager.RouteKind, index int) manager.Route {
	r := manager.Route{Dst: mustPrefix(dst), Kind: kind}
	if kind == manager.Unicast {
		r.LinkIndex = index
	}
	return r
}

func TestSelfHealing(t *testing.T) {
	b := newHealBed(t)
	ext := b.k.External()
	for _, tc := range []struct {
		name   string
		break_ func() error
	}{
		{"rule deleted", func() error { return ext.DeleteRule(b.want.Rules[1]) }},
		{"route deleted", func() error { return ext.DeleteRoute(table, route("198.51.100.0/28", manager.Throw, 0)) }},
		{"prefix route deleted", func() error { return ext.DeleteRoute(table, route("10.8.0.0/24", manager.Unicast, b.index)) }},
		{"route changed", func() error { return ext.ReplaceRoute(table, route("198.51.100.0/24", manager.Throw, 0)) }},
		{"route replaced with another protocol", func() error {
			r := route("198.51.100.0/28", manager.Throw, 0)
			r.Foreign = true
			return ext.ReplaceRoute(table, r)
		}},
		{"route added beside vpnd's at another metric", func() error {
			r := route("198.51.100.0/24", manager.Throw, 0)
			r.Metric = 5
			return ext.AddRoute(table, r)
		}},
		{"table flushed", func() error { ext.FlushTable(table); return nil }},
		{"address deleted", func() error { return ext.DeleteAddress(b.index, mustPrefix("10.8.0.2/24")) }},
		{"ipv6 address deleted", func() error { return ext.DeleteAddress(b.index, mustPrefix("fd00::2/64")) }},
		{"address re-added without vpnd's flags", func() error {
			if err := ext.DeleteAddress(b.index, mustPrefix("10.8.0.2/24")); err != nil {
				return err
			}
			return ext.AddForeignAddress(b.index, mustPrefix("10.8.0.2/24"))
		}},
		// A link set down loses its routes and its IPv6 addresses.
		{"link set down", func() error { return ext.SetDown(b.index) }},
		{"mtu changed", func() error { return ext.SetMTU(b.index, 1280) }},
		{"notifications lost", func() error { ext.FlushTable(table); ext.Lose(); return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(b.warnings())
			if err := tc.break_(); err != nil {
				t.Fatal(err)
			}
			if b.intact() {
				t.Fatal("the change did not change anything: the test cannot fail")
			}
			b.waitIntact(t, "state restored")
			waitFor(t, "a warning", func() bool { return len(b.warnings()) > before })
		})
	}
	// Rules vpnd did not add are left alone by the repair, even at its
	// priority and next to one of its own that it restores, unless they
	// look up its table.
	foreign := manager.Rule{Family: unix.AF_INET, Priority: priority, Table: 99, UIDStart: 7, UIDEnd: 7}
	if err := ext.AddRule(foreign); err != nil {
		t.Fatal(err)
	}
	ext.DeleteRule(b.want.Rules[0])
	waitFor(t, "rule restored next to a foreign one", func() bool { return slices.Contains(b.k.Snapshot().Rules, b.want.Rules[0]) })
	if err := ext.DeleteRule(foreign); err != nil {
		t.Fatalf("foreign rule was removed by vpnd: %v", err)
	}
	// The restored rule now comes after the others of its priority, as
	// in the kernel: compare the rules as a set.
	got := b.k.Snapshot()
	if !slices.Equal(got.Routes, b.want.Routes) || !sameSet(got.Rules, b.want.Rules) {
		t.Fatalf("state after the repairs: %+v, want %+v", got, b.want)
	}
}

// One repair of many objects logs one warning that counts them and names
// the first few, after one read of the table.
func TestSelfHealingLogsOneWarning(t *testing.T) {
	m, k, logs := newBed(t)
	var routes []string
	for i := range 3000 {
		routes = append(routes, fmt.Sprintf(`"10.%d.%d.0/24"`, 100+i/256, i%256))
	}
	setUp(t, m, root, `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":[`+strings.Join(routes, ",")+`]}`)
	want := k.Snapshot()
	reads := k.Calls("read")
	if n := k.External().FlushTable(table); n != 3002 {
		t.Fatalf("flushed %d routes, want 3002", n)
	}
	waitFor(t, "table restored", func() bool { return k.Snapshot().Equal(want) })
	waitFor(t, "the warning", func() bool { return logs.FilterMessage("self-healing restored vpn state").Len() == 1 })
	w := logs.FilterMessage("self-healing restored vpn state").All()[0].ContextMap()
	if w["routes"] != int64(3002) || !strings.Contains(fmt.Sprint(w["first"]), "route 10.100.0.0/24") {
		t.Errorf("warning %v", w)
	}
	if got := k.Calls("read") - reads; got != 1 {
		t.Errorf("%d reads for one repair, want 1", got)
	}
}

// Fault: a read that fails (a dump interrupted again and again, a full
// buffer) must not end self-healing: vpnd retries with backoff until the
// kernel matches. The same for a failed restore.
func TestSelfHealingRetriesFailures(t *testing.T) {
	for _, tc := range []struct {
		step string
		err  error
	}{
		{"read", fmt.Errorf("netlink dump interrupted: %w", manager.ErrTransient)},
		{"read", errors.New("injected refusal")},
		{"add rule", unix.ENOBUFS},
		{"add rule", errors.New("injected refusal")},
	} {
		t.Run(fmt.Sprintf("%s fails with %v", tc.step, tc.err), func(t *testing.T) {
			b := newHealBed(t)
			// Fail the next three such steps: the repair must outlast them.
			for i := range 3 {
				b.k.FailOn(tc.step, b.k.Calls(tc.step)+1+i, tc.err)
			}
			b.k.External().DeleteRule(b.want.Rules[0])
			b.waitIntact(t, "rule restored despite the failures")
		})
	}
}

// Fault: destroy after someone replaced vpnd's route with another
// protocol: the route is deleted by its identity, the kernel is clean, and
// the next setUp is not refused.
func TestDestroyAfterForeignReplace(t *testing.T) {
	m, k, _ := newBed(t)
	f, _ := setUp(t, m, alice, `{"addresses":["10.8.0.2/24"],"routes":["0.0.0.0/0",{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16},"isExcludedRoute":true}]}`)
	r := route("10.1.0.0/16", manager.Throw, 0)
	r.Foreign = true
	if err := k.External().ReplaceRoute(table, r); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(alice); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if s := k.Snapshot(); !clean(s) {
		t.Fatalf("after destroy: %+v", s)
	}
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
}

// Fault: a teardown that could not complete frees the slot, and what it
// left is vpnd's: removed before the next setUp, never called someone
// else's.
func TestIncompleteTeardownLeftovers(t *testing.T) {
	m, k, logs := newBed(t)
	manager.SetWaits(m, 200*time.Millisecond, time.Second, 200*time.Millisecond)
	f, _ := setUp(t, m, alice, `{"addresses":["10.8.0.2/24"],"routes":["0.0.0.0/0",{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16},"isExcludedRoute":true}]}`)
	defer f.Close()
	k.FailEvery("delete route", errors.New("injected refusal"))
	if err := m.Destroy(alice); err != nil {
		t.Fatal(err)
	}
	if logs.FilterMessage("vpn teardown incomplete; vpnd goes on removing what is left").Len() != 1 {
		t.Error("incomplete teardown not logged")
	}
	if st := m.Status(); st.State != protocol.StateDisconnected {
		t.Fatalf("status %+v", st)
	}
	if s := k.Snapshot(); len(s.Routes) == 0 {
		t.Fatal("the throw route is gone: the test cannot fail")
	}
	// While the leftover stays, a setUp says so, and does not call it
	// someone else's.
	_, _, _, err := m.SetUp(alice, parse(t, `{"addresses":["10.8.0.2/24"]}`))
	wantCode(t, err, errs.CodeInternal)
	if strings.Contains(err.Error(), "someone else") || !strings.Contains(err.Error(), "earlier VPN") {
		t.Errorf("setUp with vpnd's own leftovers: %v", err)
	}
	k.ClearFailures()
	waitFor(t, "leftover removed", func() bool { return clean(k.Snapshot()) })
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
}

// Fault: a rollback that could not complete leaves nothing for good.
func TestIncompleteRollbackLeftovers(t *testing.T) {
	m, k, _ := newBed(t)
	manager.SetWaits(m, 2*time.Second, time.Second, 200*time.Millisecond)
	k.FailEvery("add rule", errors.New("injected refusal"))
	k.FailOn("delete route", k.Calls("delete route")+1, errors.New("injected refusal"))
	_, _, _, err := m.SetUp(root, parse(t, richCfg))
	wantCode(t, err, errs.CodeInternal)
	k.ClearFailures()
	waitFor(t, "rollback completed", func() bool { return clean(k.Snapshot()) })
	setUp(t, m, root, richCfg)
}

// Fault: once Shutdown has begun, every entry point refuses, and nothing
// runs on: a setUp cannot succeed, lockdown cannot start self-healing.
func TestClosedManagerRefuses(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark})
	if _, err := m.Start(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	m.Shutdown()
	steps := k.Steps()
	_, _, _, err := m.SetUp(root, parse(t, `{"addresses":["10.8.0.2/24"]}`))
	for _, err := range []error{err, m.Destroy(root), m.Protect(root, udpSocket(t)),
		m.SetLockdown(root, config.Lockdown{Enabled: true, Users: []config.User{testUsers["alice"]}})} {
		wantCode(t, err, errs.CodeInternal)
		if e := (*errs.Error)(nil); !errors.As(err, &e) || e.Detail != "vpnd is shutting down" {
			t.Errorf("%v, want the detail %q", err, "vpnd is shutting down")
		}
	}
	m.Shutdown() // a second time: nothing
	if k.Steps() != steps {
		t.Errorf("the kernel was touched after Shutdown: %v", k.Log()[steps:])
	}
	if st := m.Status(); st.State != protocol.StateDisconnected {
		t.Errorf("status %+v", st)
	}
}

// Shutdown during a bring-up waits for it, then ends the VPN.
func TestShutdownDuringBringUp(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark})
	if _, err := m.Start(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	hold, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	k.OnStep(func(what string) {
		if what == "add rule" {
			once.Do(func() { close(hold); <-release })
		}
	})
	done := make(chan error, 1)
	cfg := parse(t, `{"addresses":["10.8.0.2/24"]}`)
	go func() {
		f, _, _, err := m.SetUp(root, cfg)
		if f != nil {
			f.Close()
		}
		done <- err
	}()
	<-hold
	shut := make(chan struct{})
	go func() { m.Shutdown(); close(shut) }()
	time.Sleep(20 * time.Millisecond) // let Shutdown begin: it must wait
	select {
	case <-shut:
		t.Fatal("Shutdown did not wait for the bring-up")
	default:
	}
	close(release)
	<-shut
	if err := <-done; err != nil {
		t.Logf("setUp during Shutdown: %v", err)
	}
	k.OnStep(nil)
	if s := k.Snapshot(); !clean(s) {
		t.Fatalf("after Shutdown: %+v", s)
	}
}

// blockingDNS is a DNS backend whose Apply blocks until released, like a
// systemd-resolved that does not answer.
type blockingDNS struct {
	started, release chan struct{}
}

func (d *blockingDNS) Name() string { return "resolved" }
func (d *blockingDNS) Apply(manager.DNSLink, manager.DNSSettings) error {
	close(d.started)
	<-d.release
	return nil
}
func (d *blockingDNS) Revert(manager.DNSLink) error { return nil }

// Fault: slow I/O of a bring-up (a DNS backend that does not answer) does
// not hold the manager: status, a second setUp's 2203002, another
// connection's close, protect and subscribe answer at once.
func TestSlowDNSBlocksNobody(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	dns := &blockingDNS{started: make(chan struct{}), release: make(chan struct{})}
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, DNS: dns})
	if _, err := m.Start(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown()
	cfg := parse(t, `{"addresses":["10.8.0.2/24"],"dnsAddresses":["10.8.0.1"]}`)
	done := make(chan error, 1)
	go func() {
		f, _, _, err := m.SetUp(root, cfg)
		if f != nil {
			defer f.Close()
		}
		done <- err
	}()
	<-dns.started
	answered := make(chan string, 8)
	go func() {
		answered <- "status " + m.Status().State
		_, _, _, err := m.SetUp(alice, parse(t, `{"addresses":["10.8.0.2/24"]}`))
		answered <- fmt.Sprint("setUp ", errs.CodeOf(err))
		m.ConnClosed(bob.Conn)
		answered <- "connClosed"
		answered <- fmt.Sprint("protect ", m.Protect(alice, udpSocket(t)))
		cancel := m.Subscribe(func(protocol.StateChanged) {})
		cancel()
		answered <- "subscribe"
	}()
	for _, want := range []string{"status disconnected", "setUp 2203002", "connClosed", "protect <nil>", "subscribe"} {
		select {
		case got := <-answered:
			if got != want {
				t.Errorf("got %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s waited for the DNS backend", want)
		}
	}
	close(dns.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(root); err != nil {
		t.Fatal(err)
	}
}

// TestSelfHealingThrottled fights vpnd from a loop that deletes its rule
// again as soon as vpnd has put it back: repairs are bounded by the token
// bucket (5 at once, then one every 500 ms), it says so once in the log,
// and the rule is back once the fight stops.
func TestSelfHealingThrottled(t *testing.T) {
	b := newHealBed(t)
	rule := b.want.Rules[0]
	back := func() bool { return slices.Contains(b.k.Snapshot().Rules, rule) }
	start := time.Now()
	for time.Since(start) < 2*time.Second {
		b.k.External().DeleteRule(rule)
		for deadline := time.Now().Add(time.Second); !back() && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	elapsed := time.Since(start)
	n := len(b.warnings())
	t.Logf("%d repairs in %v", n, elapsed)
	if max := 5 + int(elapsed/(500*time.Millisecond)) + 1; n > max || n < 6 {
		t.Errorf("%d repairs in %v, want 6 to %d", n, elapsed, max)
	}
	if b.logs.FilterMessage("self-healing throttled: vpnd's link, rules or routes keep being changed").Len() != 1 {
		t.Errorf("throttling not logged once")
	}
	b.waitIntact(t, "rule restored after the fight")
}

// A repair does not hold status, nor a destroy for longer than its batch.
func TestSelfHealingDoesNotBlock(t *testing.T) {
	b := newHealBed(t)
	hold, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	b.k.OnStep(func(what string) {
		if what == "add route" {
			once.Do(func() { close(hold); <-release })
		}
	})
	b.k.External().FlushTable(table)
	<-hold
	st := make(chan string, 1)
	go func() { st <- b.m.Status().State }()
	select {
	case got := <-st:
		if got != protocol.StateConnected {
			t.Errorf("status during a repair: %s", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("status waited for a repair")
	}
	close(release)
	b.k.OnStep(nil)
	b.waitIntact(t, "repaired")
}

// A foreign route in vpnd's table, or a foreign rule at its priority, with
// no VPN up: setUp refuses to share them (19900002) and touches nothing.
func TestTableOrPriorityInUse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes []manager.Route
		rules  []manager.Rule
		detail string
	}{
		{"foreign route in the table", []manager.Route{route("203.0.113.0/24", manager.Throw, 0)}, nil,
			"routing table 98 or rule priority 10000 is in use by someone else: route throw 203.0.113.0/24"},
		{"foreign rule at the priority", nil, []manager.Rule{{Family: unix.AF_INET6, Priority: priority, Table: 200, UIDStart: 5, UIDEnd: 9}},
			"routing table 98 or rule priority 10000 is in use by someone else: rule ipv6 10000: uidrange 5-9 lookup 200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, _ := newBed(t)
			for _, r := range tc.routes {
				k.External().AddRoute(table, r)
			}
			for _, r := range tc.rules {
				k.External().AddRule(r)
			}
			before := k.Snapshot()
			_, _, _, err := m.SetUp(alice, parse(t, `{"addresses":["10.8.0.2/24"]}`))
			wantCode(t, err, errs.CodeInternal)
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %v, want detail %q", err, tc.detail)
			}
			if after := k.Snapshot(); !after.Equal(before) {
				t.Errorf("kernel changed: %+v, before %+v", after, before)
			}
			for _, r := range tc.rules {
				k.External().DeleteRule(r)
			}
			for _, r := range tc.routes {
				k.External().DeleteRoute(table, r)
			}
			setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
		})
	}
}

// The start-up sweep removes what an earlier vpnd left in vpnd's places,
// logs each object, keeps what the stored lockdown wants, and leaves
// foreign objects alone.
func TestStartSweeps(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	ext := k.External()
	f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ext.SetMTU(index, 1400)
	if err := ext.SetDown(index); err != nil {
		t.Fatal(err)
	}
	keep := manager.Rule{Family: unix.AF_INET, Priority: priority + 1, UIDStart: 1000, UIDEnd: 1000, Mask: mark, Action: manager.Refuse}
	drop := manager.Rule{Family: unix.AF_INET, Priority: priority + 1, UIDStart: 1001, UIDEnd: 1001, Mask: mark, Action: manager.Refuse}
	vpnRule := manager.Rule{Family: unix.AF_INET6, Priority: priority, Table: table, UIDStart: 5, UIDEnd: 5, Mask: mark}
	foreignRule := manager.Rule{Family: unix.AF_INET, Priority: priority, Table: 97, UIDStart: 6, UIDEnd: 6}
	for _, r := range []manager.Rule{keep, drop, vpnRule, foreignRule} {
		if err := ext.AddRule(r); err != nil {
			t.Fatal(err)
		}
	}
	ext.AddRoute(table, route("203.0.113.0/24", manager.Throw, 0))
	ext.AddRoute(97, route("198.51.100.0/24", manager.Throw, 0))
	ext.ChangeFirewall(manager.Firewall{Lockdown: []uidrange.Range{{Start: 1001, End: 1001}}, Ifname: "vpn-tun", ProtectMark: mark})

	core, logs := observer.New(zapcore.InfoLevel)
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, Log: zap.New(core)})
	defer m.Shutdown()
	removed, err := m.Start(config.Lockdown{Enabled: true, Users: []config.User{testUsers["alice"]}})
	if err != nil {
		t.Fatal(err)
	}
	s := k.Snapshot()
	if len(s.Links) != 0 {
		t.Errorf("links %+v", s.Links)
	}
	wantRules := []manager.Rule{foreignRule, keep, {Family: unix.AF_INET6, Priority: priority + 1, UIDStart: 1000, UIDEnd: 1000, Mask: mark, Action: manager.Refuse}}
	if !sameSet(s.Rules, wantRules) {
		t.Errorf("rules %v, want %v", s.Rules, wantRules)
	}
	if len(s.Routes) != 1 || s.Routes[0].Table != 97 {
		t.Errorf("routes %v, want the one in table 97", s.Routes)
	}
	if s.Firewall == nil || fmt.Sprint(s.Firewall.Lockdown) != "[1000-1000]" {
		t.Errorf("firewall %+v, want lockdown of 1000", s.Firewall)
	}
	if len(removed) != 4 { // the link, two rules, the route
		t.Errorf("removed %q", removed)
	}
	for msg, n := range map[string]int{"removed leftover link": 1, "removed leftover rule": 2, "removed leftover route": 1} {
		if got := logs.FilterMessage(msg).Len(); got != n {
			t.Errorf("%d %q, want %d", got, msg, n)
		}
	}
	for _, e := range logs.FilterMessage("removed leftover rule").All() {
		if r := fmt.Sprint(e.ContextMap()["rule"]); strings.Contains(r, "1000-1000") || strings.Contains(r, "97") {
			t.Errorf("the sweep removed %s", r)
		}
	}
}

// Lockdown's firewall holds the listed users; a VPN that does not carry a
// family adds its covered users for that family; both go with their
// reasons.
func TestFirewall(t *testing.T) {
	m, k, _ := newBed(t)
	fw := func() string {
		f := k.Snapshot().Firewall
		if f == nil {
			return "none"
		}
		return fmt.Sprintf("lockdown %v v4 %v v6 %v", f.Lockdown, f.FailClosedV4, f.FailClosedV6)
	}
	if got := fw(); got != "none" {
		t.Fatalf("firewall %s with nothing up", got)
	}
	f, _ := setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
	if got := fw(); got != "lockdown [] v4 [] v6 [1000-1000]" {
		t.Errorf("IPv4-only VPN: firewall %s", got)
	}
	if err := m.SetLockdown(root, config.Lockdown{Enabled: true, Users: []config.User{testUsers["bob"], testUsers["carol"]}}); err != nil {
		t.Fatal(err)
	}
	if got := fw(); got != "lockdown [1001-1002] v4 [] v6 [1000-1000]" {
		t.Errorf("lockdown on: firewall %s", got)
	}
	m.Destroy(alice)
	f.Close()
	if got := fw(); got != "lockdown [1001-1002] v4 [] v6 []" {
		t.Errorf("VPN gone: firewall %s", got)
	}
	f, _ = setUp(t, m, alice, `{"addresses":["10.8.0.2/24","fd00::2/64"]}`)
	if got := fw(); got != "lockdown [1001-1002] v4 [] v6 []" {
		t.Errorf("dual-stack VPN: firewall %s", got)
	}
	m.Destroy(alice)
	f.Close()
	if err := m.SetLockdown(root, config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	if got := fw(); got != "none" {
		t.Errorf("lockdown off: firewall %s", got)
	}
	// A firewall someone deleted comes back.
	if err := m.SetLockdown(root, config.Lockdown{Enabled: true, Users: []config.User{testUsers["bob"]}}); err != nil {
		t.Fatal(err)
	}
	k.External().DeleteFirewall()
	waitFor(t, "firewall restored", func() bool { return fw() == "lockdown [1001-1001] v4 [] v6 []" })
	m.SetLockdown(root, config.Lockdown{})
}

// The manager under faults: setUps, destroys and lockdown changes from
// several callers while the kernel fails at random and another program
// changes vpnd's objects. Once the faults stop the kernel converges, a
// new VPN comes up, and Shutdown leaves nothing but lockdown.
func TestManagerUnderFaults(t *testing.T) {
	seeds := 60
	if raceSchedules > 0 {
		seeds = 15
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { managerSchedule(t, int64(seed)) })
	}
}

func managerSchedule(t *testing.T, seed int64) {
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	var mu sync.Mutex
	k := tuntest.New()
	defer k.Close()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark})
	manager.SetWaits(m, 300*time.Millisecond, 300*time.Millisecond, 300*time.Millisecond)
	if _, err := m.Start(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown()
	k.Chaos(func(string) error {
		mu.Lock()
		defer mu.Unlock()
		if rng.Float64() < 0.1 {
			return randomFault(rng)
		}
		return nil
	})
	cfgs := []string{`{"addresses":["10.8.0.2/24"]}`, richCfg, `{"addresses":["fd00::2/64"],"routes":["::/0"]}`}
	callers := []manager.Caller{root, alice, bob}
	var files []*os.File
	for range 12 {
		mu.Lock()
		op, c, cfg := rng.IntN(5), callers[rng.IntN(len(callers))], cfgs[rng.IntN(len(cfgs))]
		mu.Unlock()
		switch op {
		case 0, 1:
			f, _, _, _ := m.SetUp(c, parse(t, cfg))
			if f != nil {
				files = append(files, f)
			}
		case 2:
			m.Destroy(root)
		case 3:
			m.SetLockdown(root, config.Lockdown{Enabled: true, Users: []config.User{testUsers["carol"]}})
		case 4:
			if st := m.Status(); st.VPN != nil {
				k.External().FlushTable(table)
				k.External().SetDown(st.VPN.Index)
			}
		}
	}
	k.ClearFailures()
	if err := m.Destroy(root); err != nil {
		t.Fatalf("destroy after the faults: %v", err)
	}
	for _, f := range files {
		f.Close()
	}
	// Once the faults stop, vpnd's objects of earlier VPNs go and a new
	// VPN comes up.
	f, _, _, err := m.SetUp(alice, parse(t, richCfg))
	if err != nil {
		t.Fatalf("setUp after the faults: %v\nkernel: %+v", err, k.Snapshot())
	}
	defer f.Close()
	if err := m.Destroy(alice); err != nil {
		t.Fatal(err)
	}
	m.SetLockdown(root, config.Lockdown{})
	if s := k.Snapshot(); !clean(s) {
		t.Fatalf("kernel after the last destroy: %+v", s)
	}
}

// A destroy is not held back by foreign changes that keep coming: the
// loop lets a burst settle before it reads, but a new want ends that wait.
// Here the settling could last an hour, so a destroy that waited for it
// would fail with vpnd's own end wait.
func TestRequestsDoNotWaitForChurnToSettle(t *testing.T) {
	core, _ := observer.New(zapcore.DebugLevel)
	k := tuntest.New()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, Log: zap.New(core)})
	manager.SetSettle(m, time.Hour, time.Hour)
	manager.SetWaits(m, 2*time.Second, 5*time.Second, 2*time.Second)
	if _, err := m.Start(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		m.Shutdown()
		k.Close()
	}()
	_, info := setUp(t, m, alice, richCfg)

	// Another program keeps setting the link's MTU to what it is.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var changes atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				k.External().SetMTU(info.Index, 1400) // fails once the link is gone
				changes.Add(1)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	waitFor(t, "the churn to start", func() bool { return changes.Load() >= 5 })
	if err := m.Destroy(alice); err != nil {
		t.Fatalf("destroy while the kernel keeps announcing changes: %v", err)
	}
	if s := k.Snapshot(); !clean(s) {
		t.Fatalf("after destroy: %+v", s)
	}
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
}
