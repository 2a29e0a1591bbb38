package tuntest_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
	"github.com/vpnd/vpnd/internal/uidrange"
)

var errInjected = errors.New("injected")

// smallVPN is a bring-up in the reconciler's order: the link's settings,
// addresses, up, routes, rules.
func smallVPN(index int) []manager.Op {
	l := manager.Link{Index: index}
	return []manager.Op{
		{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: 1400}},
		{Kind: manager.AddAddr, Link: l, Addr: pfx("10.8.0.2/24")},
		{Kind: manager.AddAddr, Link: l, Addr: pfx("fd00:8::2/64")},
		{Kind: manager.LinkUp, Link: l},
		{Kind: manager.PutRoute, Table: table, Route: manager.Route{Dst: pfx("10.8.0.0/24"), LinkIndex: index}},
		{Kind: manager.PutRoute, Table: table, Route: manager.Route{Dst: pfx("0.0.0.0/0"), LinkIndex: index}},
		{Kind: manager.PutRoute, Table: table, Route: manager.Route{Dst: pfx("198.51.100.0/24"), Gateway: addr("10.8.0.1"), LinkIndex: index}},
		{Kind: manager.PutRoute, Table: table, Route: manager.Route{Dst: pfx("192.168.0.0/16"), Kind: manager.Throw}},
		{Kind: manager.AddRule, Table: table, Rule: manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark}},
		{Kind: manager.AddRule, Table: table, Rule: manager.Rule{Family: v6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark}},
	}
}

// teardown deletes everything smallVPN adds: rules, the routes that do
// not go with the link, the link.
func teardown(index int) []manager.Op {
	var out []manager.Op
	for _, op := range smallVPN(index) {
		switch op.Kind {
		case manager.AddRule:
			op.Kind = manager.DelRule
		case manager.PutRoute:
			if op.Route.OnLink() {
				continue
			}
			op.Kind = manager.DelRoute
		default:
			continue
		}
		out = append(out, op)
	}
	return append(out, manager.Op{Kind: manager.DelLink, Link: manager.Link{Index: index}})
}

// bringUpFake creates the TUN and applies smallVPN; it returns the file, the
// link's index, and each op's error.
func bringUpFake(k *tuntest.Fake) (f interface{ Close() error }, index int, results []error, err error) {
	file, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{})
	if err != nil {
		return nil, 0, nil, err
	}
	results, err = k.Apply(smallVPN(index))
	return file, index, results, err
}

// FailAt fails each step of a bring-up in turn: that step, and only it,
// fails (the log says so), changing nothing; applying the bring-up again
// once the fault is gone makes the model exactly what a bring-up without
// a fault makes; a teardown leaves it exactly as before.
func TestFailAtEveryStep(t *testing.T) {
	probe := tuntest.New()
	pf, _, results, err := bringUpFake(probe)
	if err != nil || slices.ContainsFunc(results, func(e error) bool { return e != nil }) {
		t.Fatalf("a bring-up without faults: %v, %v", results, err)
	}
	steps := probe.Steps()
	full := probe.Snapshot()
	pf.Close()
	probe.Close()
	// Create the TUN, then one step per op.
	if want := 1 + len(smallVPN(0)); steps != want {
		t.Fatalf("a bring-up made %d steps, want %d:\n%v", steps, want, probe.Log())
	}
	for step := 1; step <= steps; step++ {
		k := tuntest.New()
		before := k.Snapshot()
		k.FailAt(step, errInjected)
		f, index, results, err := bringUpFake(k)
		switch {
		case step == 1 && !errors.Is(err, errInjected):
			t.Errorf("step 1: CreateTUN = %v, want the injected error", err)
		case step > 1 && (err != nil || !errors.Is(results[step-2], errInjected)):
			t.Errorf("step %d: Apply = %v, %v; want op %d to fail", step, results, err, step-2)
		}
		log := k.Log()
		if !errors.Is(log[step-1].Err, errInjected) || !strings.HasSuffix(log[step-1].String(), "= injected") {
			t.Errorf("step %d: log line %q, want it failed", step, log[step-1])
		}
		for i, s := range log {
			if i != step-1 && s.Err != nil {
				t.Errorf("step %d: %v failed too", step, s)
			}
		}
		if step == 1 {
			if after := k.Snapshot(); !after.Equal(before) {
				t.Errorf("step 1: a failed CreateTUN left %+v", after)
			}
			k.Close()
			continue
		}
		// The failed op changed nothing: the model is what the bring-up
		// without it makes.
		without := tuntest.New()
		wf, wi, err := without.CreateTUN("vpn-tun", manager.TUNOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ops := smallVPN(wi)
		without.Apply(slices.Delete(ops, step-2, step-1))
		if got, want := k.Snapshot(), without.Snapshot(); !got.Equal(want) {
			t.Errorf("step %d: after a failed op the model is\n%+v\nwant\n%+v", step, got, want)
		}
		wf.Close()
		without.Close()
		// Once the fault is gone, the same bring-up again converges:
		// what is there is EEXIST (addresses, rules) or put again.
		results, err = k.Apply(smallVPN(index))
		for i, e := range results {
			if e != nil && !errors.Is(e, unix.EEXIST) {
				t.Errorf("step %d: again: %s: %v", step, smallVPN(index)[i], e)
			}
		}
		if err != nil {
			t.Errorf("step %d: again: %v", step, err)
		}
		if got := k.Snapshot(); !got.Equal(full) {
			t.Errorf("step %d: after the bring-up again the model is\n%+v\nwant\n%+v", step, got, full)
		}
		if results, err := k.Apply(teardown(index)); err != nil || slices.ContainsFunc(results, func(e error) bool { return e != nil }) {
			t.Errorf("step %d: teardown: %v, %v", step, results, err)
		}
		if after := k.Snapshot(); !after.Equal(before) {
			t.Errorf("step %d: state %+v after the teardown, want %+v", step, after, before)
		}
		f.Close()
		k.Close()
	}
}

// FailOn fails the nth step of a kind; Calls counts the steps of a kind;
// FailEvery fails every step of a kind until ClearFailures, which forgets
// what was not reached yet.
func TestFailOn(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{Blocking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ops := smallVPN(index)

	k.FailOn("add route", 2, errInjected)
	results, err := k.Apply(ops)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range results {
		if want := i == 5; errors.Is(e, errInjected) != want || !want && e != nil {
			t.Errorf("%s: %v", ops[i], e)
		}
	}
	if got := k.Calls("add route"); got != 4 {
		t.Errorf("%d add route steps, want 4", got)
	}
	if s := k.Snapshot(); len(s.Routes) != 3 || len(s.Rules) != 2 || len(s.Links[0].Addresses) != 2 {
		t.Errorf("after a failed route: %+v", s)
	}

	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	ctx := t.Context()
	uid := uint32(5000)
	apply := func(kind manager.OpKind) func() error {
		return func() error {
			uid++
			op := manager.Op{Kind: kind, Table: table, Rule: manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: uid, UIDEnd: uid}}
			results, err := k.Apply([]manager.Op{op})
			if err != nil {
				return err
			}
			return results[0]
		}
	}
	for _, tc := range []struct {
		what string
		call func() error
	}{
		{"add rule", apply(manager.AddRule)},
		{"delete rule", apply(manager.DelRule)},
		{"read", func() error { _, err := k.Read(manager.Query{Places: places, What: manager.PartAll}); return err }},
		{"watch", func() error { _, err := k.Watch(ctx, places); return err }},
		{"host prefixes", func() error { _, err := k.HostPrefixes(""); return err }},
		{"mark socket", func() error { return k.MarkSocket(sock, mark) }},
		{"read firewall", func() error { _, err := k.FirewallHolds(manager.Firewall{}); return err }},
		{"set firewall", func() error { return k.SetFirewall(manager.Firewall{}) }},
		{"create tun", func() error {
			f, _, err := k.CreateTUN(fmt.Sprintf("tun%d", k.Steps()), manager.TUNOptions{})
			if err == nil {
				f.Close()
			}
			return err
		}},
	} {
		before := k.Calls(tc.what)
		k.FailOn(tc.what, before+2, errInjected)
		if err := tc.call(); err != nil {
			t.Errorf("%s: the first call = %v", tc.what, err)
		}
		if err := tc.call(); !errors.Is(err, errInjected) {
			t.Errorf("%s: the second call = %v, want the injected error", tc.what, err)
		}
		if got := k.Calls(tc.what) - before; got != 2 {
			t.Errorf("%s: %d calls counted, want 2", tc.what, got)
		}
	}

	k.FailEvery("read", errInjected)
	for range 3 {
		if _, err := k.Read(manager.Query{Places: places, What: manager.PartAll}); !errors.Is(err, errInjected) {
			t.Errorf("Read under FailEvery = %v", err)
		}
	}
	if err := apply(manager.AddRule)(); err != nil {
		t.Errorf("an add under FailEvery(read) = %v", err)
	}
	// ClearFailures forgets them all, and what was not reached yet.
	k.FailOn("read", k.Calls("read")+3, errInjected)
	k.FailAt(k.Steps()+1, errInjected)
	k.ClearFailures()
	for range 10 {
		if _, err := k.Read(manager.Query{Places: places, What: manager.PartAll}); err != nil {
			t.Errorf("Read after ClearFailures: %v", err)
		}
	}
}

// A lost answer (sim.ErrLostAnswer) lets the change happen and makes
// Apply report an error wrapping ErrTransient: the caller must read
// again. SetFirewall the same.
func TestLostAnswer(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k.FailOn("add rule", 1, sim.ErrLostAnswer)
	k.FailOn("configure link", 1, errInjected)
	ops := smallVPN(index)
	results, err := k.Apply(ops)
	if !errors.Is(err, manager.ErrTransient) || !errors.Is(err, sim.ErrLostAnswer) {
		t.Errorf("Apply with a lost answer: %v, want an error wrapping ErrTransient", err)
	}
	if !errors.Is(results[0], errInjected) || slices.ContainsFunc(results[1:], func(e error) bool { return e != nil }) {
		t.Errorf("results %v: want the injected failure of the first op, and the others done", results)
	}
	if s := k.Snapshot(); len(s.Rules) != 2 || s.Links[0].MTU != sim.DefaultMTU {
		t.Errorf("after the lost answer: %+v; want both rules (the lost one too) and the MTU untouched", s)
	}
	fw := manager.Firewall{FailClosedV6: []uidrange.Range{{Start: 1000, End: 1000}}, Ifname: "vpn-tun", ProtectMark: mark}
	k.FailOn("set firewall", 1, sim.ErrLostAnswer)
	if err := k.SetFirewall(fw); !errors.Is(err, manager.ErrTransient) {
		t.Errorf("SetFirewall with a lost answer = %v", err)
	}
	if holds, err := k.FirewallHolds(fw); err != nil || !holds {
		t.Errorf("after a lost answer the firewall holds it: %t, %v; want true", holds, err)
	}
}

// Chaos asks at every step whether to fail it: with a seeded schedule of
// failures and lost answers, a bring-up applied again and again (as the
// reconciler does until the kernel matches) gets there once the chaos
// stops, and only the failed steps failed.
func TestChaos(t *testing.T) {
	for seed := range uint64(200) {
		k := tuntest.New()
		r := rand.New(rand.NewPCG(seed, 0))
		failed := 0
		k.Chaos(func(what string) error {
			switch r.IntN(4) {
			case 0:
				failed++
				return errInjected
			case 1:
				return sim.ErrLostAnswer
			}
			return nil
		})
		var f interface{ Close() error }
		var index int
		for f == nil {
			file, i, err := k.CreateTUN("vpn-tun", manager.TUNOptions{})
			if err == nil {
				f, index = file, i
			} else if !errors.Is(err, errInjected) && !errors.Is(err, sim.ErrLostAnswer) {
				t.Fatalf("seed %d: CreateTUN: %v", seed, err)
			}
		}
		for range 3 {
			k.Apply(smallVPN(index))
		}
		k.Chaos(nil)
		results, err := k.Apply(smallVPN(index))
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		for i, e := range results {
			if e != nil && !errors.Is(e, unix.EEXIST) {
				t.Errorf("seed %d: %s: %v", seed, smallVPN(index)[i], e)
			}
		}
		s := k.Snapshot()
		if len(s.Links) != 1 || !s.Links[0].Up || len(s.Links[0].Addresses) != 2 || len(s.Routes) != 4 || len(s.Rules) != 2 {
			t.Errorf("seed %d: after the chaos stopped: %+v", seed, s)
		}
		injected := 0
		for _, st := range k.Log() {
			if errors.Is(st.Err, errInjected) {
				injected++
			}
		}
		if injected != failed {
			t.Errorf("seed %d: %d steps failed in the log, %d were failed", seed, injected, failed)
		}
		f.Close()
		k.Close()
	}
}

// OnStep is called at every step, before it is made, with the step's
// name.
func TestOnStep(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	var seen []string
	k.OnStep(func(what string) { seen = append(seen, what) })
	f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k.Apply(smallVPN(index)[:4])
	k.Read(manager.Query{Places: places, What: manager.PartAll})
	k.OnStep(nil)
	k.Read(manager.Query{Places: places, What: manager.PartAll})
	want := []string{"create tun", "configure link", "add address", "add address", "set up link", "read"}
	if !slices.Equal(seen, want) {
		t.Errorf("OnStep saw %q, want %q", seen, want)
	}
	if log := k.Log(); len(log) != len(want)+1 || log[1].String() != fmt.Sprintf("configure link %s", smallVPN(index)[0]) {
		t.Errorf("log %v", log)
	}
}

// The fake marks sockets in memory, keeping the bits the socket had; a
// mark can be failed like any step.
func TestMarks(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, ok := k.Mark(fd); ok {
		t.Error("an unmarked socket has a mark")
	}
	if err := k.MarkSocket(fd, 0x20000); err != nil {
		t.Fatal(err)
	}
	if err := k.MarkSocket(fd, 0x1); err != nil {
		t.Fatal(err)
	}
	if m, ok := k.Mark(fd); !ok || m != 0x20001 {
		t.Errorf("mark %#x, %t; want 0x20001", m, ok)
	}
	// The mark follows the socket, not the fd number.
	dup, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dup)
	if m, ok := k.Mark(dup); !ok || m != 0x20001 {
		t.Errorf("mark of a dup %#x, %t; want 0x20001", m, ok)
	}
	k.FailOn("mark socket", 3, errInjected)
	if err := k.MarkSocket(fd, 0x4); !errors.Is(err, errInjected) {
		t.Errorf("third mark = %v, want the injected error", err)
	}
	if m, _ := k.Mark(fd); m != 0x20001 {
		t.Errorf("a failed mark changed the mark to %#x", m)
	}
	if err := k.MarkSocket(1<<20, 0x20000); err == nil {
		t.Error("marking a closed fd succeeded")
	}
}

// Closing every copy of the TUN file removes the link with the routes
// through it, as in the kernel, and the watch hears of it.
func TestFakeLinkGoesWithItsFile(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wake, err := k.Watch(t.Context(), places)
	if err != nil {
		t.Fatal(err)
	}
	if results, err := k.Apply(smallVPN(index)); err != nil || slices.ContainsFunc(results, func(e error) bool { return e != nil }) {
		t.Fatal(results, err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dup int
	rc.Control(func(fd uintptr) { dup, err = unix.Dup(int(fd)) })
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if s := k.Snapshot(); len(s.Links) != 1 {
		t.Fatalf("links %+v while a dup of the file is open", s.Links)
	}
	unix.Close(dup)
	<-wake // the test's own timeout guards a hang
	if p := k.Sync(); p != manager.PartLinks|manager.PartRoutes {
		t.Errorf("Sync %s after the link went", p)
	}
	s := k.Snapshot()
	if len(s.Links) != 0 {
		t.Errorf("links %+v after close", s.Links)
	}
	want := []sim.Route{{Table: table, Route: manager.Route{Dst: pfx("192.168.0.0/16"), Kind: manager.Throw}}}
	if !slices.Equal(s.Routes, want) || len(s.Rules) != 2 {
		t.Errorf("after the link went: routes %v, rules %v", s.Routes, s.Rules)
	}
	// The name is free again.
	f2, _, err := k.CreateTUN("vpn-tun", manager.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f2.Close()
}

func TestHostPrefixes(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	if ps, err := k.HostPrefixes(""); err != nil || len(ps) != 0 {
		t.Errorf("HostPrefixes of a new fake = %v, %v", ps, err)
	}
	want := []manager.HostPrefix{{Prefix: pfx("192.0.2.1/24"), Ifname: "eth0"}, {Prefix: netip.MustParsePrefix("192.0.2.0/24"), Ifname: "eth0"}}
	k.SetHostPrefixes(want...)
	if ps, err := k.HostPrefixes("vpn-tun"); err != nil || !slices.Equal(ps, want) {
		t.Errorf("HostPrefixes = %v, %v; want %v", ps, err, want)
	}
}
