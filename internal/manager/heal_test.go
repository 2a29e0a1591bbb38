package manager_test

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
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

func newHealBed(t *testing.T) *healBed {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	k := tuntest.New()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, Log: zap.New(core)})
	t.Cleanup(func() {
		m.Shutdown()
		k.Close()
		if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
			t.Errorf("kernel not clean after shutdown: %+v", s)
		}
	})
	_, info := setUp(t, m, root, richCfg)
	b := &healBed{m: m, k: k, logs: logs, index: info.Index, want: k.Snapshot()}
	if len(b.want.Rules) != 4 || len(b.want.Routes) != 5 || len(b.want.Links[0].Addresses) != 2 {
		t.Fatalf("unexpected initial state %+v", b.want)
	}
	return b
}

func (b *healBed) intact() bool { return b.k.Snapshot().Equal(b.want) }

func (b *healBed) waitIntact(t *testing.T, what string) {
	t.Helper()
	waitFor(t, what, b.intact)
}

// warnings returns the self-healing warnings logged so far.
func (b *healBed) warnings() []observer.LoggedEntry {
	return b.logs.FilterMessage("self-healing restored vpn state").All()
}

func TestSelfHealing(t *testing.T) {
	// Each case has a bed of its own: one bed's repairs are throttled (5
	// at once, then one every 2 s), and the cases would wait for it.
	for _, tc := range []struct {
		name   string
		break_ func(b *healBed, ext sim.External) error
	}{
		{"rule deleted", func(b *healBed, ext sim.External) error { return ext.DeleteRule(b.want.Rules[1]) }},
		{"route deleted", func(b *healBed, ext sim.External) error {
			return ext.DeleteRoute(tun.Route{Table: table, Dst: mustPrefix("198.51.100.0/28"), Kind: tun.Throw})
		}},
		{"prefix route deleted", func(b *healBed, ext sim.External) error {
			return ext.DeleteRoute(tun.Route{Table: table, Dst: mustPrefix("10.8.0.0/24"), LinkIndex: b.index})
		}},
		{"route changed", func(b *healBed, ext sim.External) error {
			return ext.ReplaceRoute(tun.Route{Table: table, Dst: mustPrefix("198.51.100.0/24"), Kind: tun.Throw})
		}},
		{"table flushed", func(b *healBed, ext sim.External) error { ext.FlushTable(table); return nil }},
		{"address deleted", func(b *healBed, ext sim.External) error {
			return ext.DeleteAddress(b.index, mustPrefix("10.8.0.2/24"))
		}},
		{"ipv6 address deleted", func(b *healBed, ext sim.External) error {
			return ext.DeleteAddress(b.index, mustPrefix("fd00::2/64"))
		}},
		// A link set down loses its routes and its IPv6 addresses.
		{"link set down", func(b *healBed, ext sim.External) error { return ext.SetDown(b.index) }},
		{"mtu changed", func(b *healBed, ext sim.External) error { return ext.SetMTU(b.index, 1280) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newHealBed(t)
			before := len(b.warnings())
			if err := tc.break_(b, b.k.External()); err != nil {
				t.Fatal(err)
			}
			if b.intact() {
				t.Fatal("the change did not change anything: the test cannot fail")
			}
			b.waitIntact(t, "state restored")
			// One repair, one warning.
			waitFor(t, "one warning", func() bool { return len(b.warnings()) == before+1 })
		})
	}
	// Rules vpnd did not add are left alone by the repair, even at its
	// priority and next to one of its own that it restores.
	b := newHealBed(t)
	ext := b.k.External()
	foreign := tun.Rule{Family: unix.AF_INET, Priority: priority, Table: 99, UIDStart: 7, UIDEnd: 7}
	if err := ext.AddRule(foreign); err != nil {
		t.Fatal(err)
	}
	s, err := b.k.Read(tun.Query{Priorities: []int{priority}})
	if err != nil || !slices.Contains(s.Rules, foreign) {
		t.Fatalf("Read does not see the foreign rule (%v): the test cannot fail", err)
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

func sameSet[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// TestSelfHealingLogsOneWarning: a flushed table of many routes is put back
// by one repair that logs one warning with counts and the first few
// objects; debug lists them all.
func TestSelfHealingLogsOneWarning(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	k := tuntest.New()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, Log: zap.New(core)})
	defer k.Close()
	defer m.Shutdown()
	var routes []string
	for i := range 3000 {
		routes = append(routes, `"10.`+strconv.Itoa(100+i/250)+`.`+strconv.Itoa(i%250)+`.0/24"`)
	}
	setUp(t, m, root, `{"addresses":["10.8.0.2/24"],"routes":[`+strings.Join(routes, ",")+`]}`)
	want := k.Snapshot()
	reads := k.Calls("Read")
	if n := k.External().FlushTable(table); n != 3002 {
		t.Fatalf("flushed %d routes, want 3002 (3,000, the prefix route and IPv6's unreachable default)", n)
	}
	waitFor(t, "table restored", func() bool { return k.Snapshot().Equal(want) })
	waitFor(t, "the repair's warning", func() bool { return logs.FilterMessage("self-healing restored vpn state").Len() > 0 })
	time.Sleep(50 * time.Millisecond) // would a repair run again on its own restores?
	ws := logs.FilterMessage("self-healing restored vpn state").All()
	if len(ws) != 1 {
		t.Fatalf("%d warnings, want 1", len(ws))
	}
	f := ws[0].ContextMap()
	if f["routes"] != int64(3002) || f["rules"] != int64(0) || !strings.Contains(f["first"].(string), "and 2997 more") {
		t.Errorf("warning fields = %v", f)
	}
	if got := k.Calls("Read") - reads; got != 1 {
		t.Errorf("%d reads of the kernel for one flush, want 1 (vpnd's own restores must not trigger repairs)", got)
	}
	dbg := logs.FilterMessage("self-healing restored objects").All()
	if len(dbg) != 1 || len(dbg[0].ContextMap()["objects"].([]any)) != 3002 {
		t.Errorf("debug listing = %v", dbg)
	}
	if k.Calls("restore route") != 3002 {
		t.Errorf("%d routes restored, want 3002", k.Calls("restore route"))
	}
}

// TestSelfHealingThrottled: a daemon that deletes vpnd's rule again and
// again gets a bounded number of repairs, and the last state is repaired.
func TestSelfHealingThrottled(t *testing.T) {
	m, k, _ := newManager(t)
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
	rule := k.Snapshot().Rules[0]
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		k.External().DeleteRule(rule)
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	// The bucket holds 5 repairs and refills one per 2 s.
	if n, max := k.Calls("restore rule"), 5+int(elapsed/(2*time.Second))+1; n > max || n < 1 {
		t.Fatalf("%d repairs in %v, want 1 to %d", n, elapsed, max)
	}
	waitFor(t, "final repair", func() bool { return slices.Contains(k.Snapshot().Rules, rule) })
}

// TestSelfHealingDoesNotBlock: while a repair is restoring, status and
// protect answer at once, and a destroy waits only for the chunk in
// flight; nothing is restored after the teardown.
func TestSelfHealingDoesNotBlock(t *testing.T) {
	release := make(chan struct{})
	var blocked sync.Once
	inRestore := make(chan struct{})
	k := tuntest.New()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark})
	defer k.Close()
	defer m.Shutdown()
	setUp(t, m, root, richCfg)
	// Hold the restores until released.
	k.OnStep(func(what string) {
		if what == "restore route" {
			blocked.Do(func() { close(inRestore) })
			<-release
		}
	})
	k.External().FlushTable(table)
	<-inRestore
	done := make(chan struct{})
	go func() {
		if st := m.Status(); st.State != protocol.StateConnected {
			t.Errorf("status = %+v", st)
		}
		if err := m.Protect(root, udpSocket(t)); err != nil {
			t.Errorf("protect: %v", err)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("status or protect waited for the repair")
	}
	destroyed := make(chan error)
	go func() { destroyed <- m.Destroy(root) }()
	waitFor(t, "status says disconnected as the teardown begins", func() bool {
		return m.Status().State == protocol.StateDisconnected
	})
	k.OnStep(nil)
	close(release)
	if err := <-destroyed; err != nil {
		t.Fatal(err)
	}
	if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
		t.Fatalf("left behind after a teardown during a repair: %+v", s)
	}
}

func TestTableOrPriorityInUse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes []tun.Route
		rules  []tun.Rule
		detail string
	}{
		{"foreign route in the table", []tun.Route{{Table: table, Dst: mustPrefix("203.0.113.0/24"), Kind: tun.Throw}}, nil,
			"route throw 203.0.113.0/24 table 98"},
		{"foreign rule at the priority", nil, []tun.Rule{{Family: unix.AF_INET6, Priority: priority, Table: 200, UIDStart: 5, UIDEnd: 9}},
			"rule ipv6 10000: uidrange 5-9 lookup 200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, _ := newManager(t)
			for _, r := range tc.routes {
				k.External().AddRoute(r)
			}
			for _, r := range tc.rules {
				k.External().AddRule(r)
			}
			before := k.Snapshot()
			_, _, _, err := m.SetUp(root, parse(t, `{"addresses":["10.8.0.2/24","fd00::2/64"]}`))
			wantCode(t, err, errs.CodeInternal)
			var e *errs.Error
			if !errors.As(err, &e) || !strings.Contains(e.Detail, tc.detail) || !strings.Contains(e.Detail, "in use by someone else") {
				t.Fatalf("detail = %q, want it to name %q", e.Detail, tc.detail)
			}
			if !k.Snapshot().Equal(before) {
				t.Fatal("refused setUp changed the kernel")
			}
			// Clean up the foreign objects for the leak check.
			for _, r := range tc.rules {
				k.External().DeleteRule(r)
			}
			for _, r := range tc.routes {
				k.External().DeleteRoute(r)
			}
		})
	}
}

// TestSelfHealingReadFails: a failed read of the kernel is logged, and the
// next change repairs.
func TestSelfHealingReadFails(t *testing.T) {
	b := newHealBed(t)
	b.k.FailOn("Read", b.k.Calls("Read")+1, errors.New("injected"))
	b.k.External().DeleteRule(b.want.Rules[0])
	waitFor(t, "read failure logged", func() bool {
		return b.logs.FilterMessage("self-healing: read kernel state failed").Len() == 1
	})
	if b.intact() {
		t.Fatal("repaired despite the failed read")
	}
	b.k.External().DeleteRule(b.want.Rules[1])
	b.waitIntact(t, "repaired on the next change")
}
