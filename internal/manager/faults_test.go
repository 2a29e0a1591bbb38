package manager_test

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
	"github.com/vpnd/vpnd/internal/uidrange"
)

// The fault-injection model test: the reconciler, on the in-memory kernel,
// against seeded schedules of faults. In each schedule, while the kernel
// fails calls at random (refusals, transient errors, lost answers,
// interrupted dumps) and another program changes vpnd's objects (deletes,
// replaces with another protocol or metric, flushes, sets the link down,
// changes the MTU, deletes the firewall, loses notifications), the
// reconciler is driven towards changing wants: a VPN, lockdown, nothing.
// Once the faults stop, the kernel must match the last want within a few
// passes, exactly: nothing missing, nothing of vpnd's left over. Then a
// new VPN must come up on the same kernel. A failing schedule prints its
// seed; -schedules runs more, -seed one.

var (
	schedules = flag.Int("schedules", 10000, "fault-injection schedules to run")
	oneSeed   = flag.Int64("seed", -1, "run only the schedule with this seed")
)

var places = manager.Places{IfName: "vpn-tun", Table: table, Priorities: []int{priority, priority + 1}}

func TestReconcilerConvergesUnderFaults(t *testing.T) {
	n := *schedules
	if raceSchedules > 0 && n > raceSchedules {
		n = raceSchedules
	}
	first, last := int64(0), int64(n)
	if *oneSeed >= 0 {
		first, last = *oneSeed, *oneSeed+1
	}
	for seed := first; seed < last; seed++ {
		if err := runSchedule(seed); err != nil {
			t.Fatalf("seed %d (rerun with -run TestReconcilerConvergesUnderFaults -seed %d): %v", seed, seed, err)
		}
	}
}

// schedule is one run of the model test.
type schedule struct {
	rng  *rand.Rand
	k    *tuntest.Fake
	r    *manager.TestReconciler
	ext  sim.External
	tun  *tunLink
	want manager.Want
}

type tunLink struct {
	index int
	close func() error
}

func runSchedule(seed int64) error {
	s := &schedule{rng: rand.New(rand.NewPCG(uint64(seed), 0x5eed)), k: tuntest.New()}
	defer s.k.Close()
	s.ext = s.k.External()
	s.r = manager.NewTestReconciler(s.k, places, testLog)
	defer func() {
		if s.tun != nil {
			s.tun.close()
		}
	}()
	// Leftovers of an earlier vpnd, adopted as at start.
	if s.rng.IntN(4) == 0 {
		if err := s.leaveLeftovers(); err != nil {
			return err
		}
		if err := s.r.Adopt(func(manager.Rule) bool { return false }); err != nil {
			return fmt.Errorf("adopt: %w", err)
		}
	}
	faultRate := []float64{0.05, 0.2, 0.5}[s.rng.IntN(3)]
	s.k.Chaos(func(string) error {
		if s.rng.Float64() >= faultRate {
			return nil
		}
		return randomFault(s.rng)
	})
	for range 1 + s.rng.IntN(8) {
		if err := s.changeWant(); err != nil {
			return err
		}
		for range 1 + s.rng.IntN(3) {
			s.r.Pass(s.want) // may fail: faults are on
			s.foreignChange()
		}
	}
	s.k.ClearFailures()
	if err := s.converge("after the faults"); err != nil {
		return err
	}
	// The next VPN comes up: the last one's objects, whatever became of
	// them, are no obstacle.
	s.want.Link, s.want.Routes, s.want.Rules = nil, nil, lockdownRules(s.want.Rules)
	s.want.Firewall.FailClosedV4, s.want.Firewall.FailClosedV6 = nil, nil
	if err := s.converge("teardown"); err != nil {
		return err
	}
	if err := s.newVPN(); err != nil {
		return err
	}
	return s.converge("the next VPN")
}

// converge runs passes until the kernel matches, at most a few, and then
// checks that it really does.
func (s *schedule) converge(when string) error {
	var last error
	for range 3 {
		ok, err := s.r.Pass(s.want)
		if ok {
			return s.matches(when)
		}
		last = err
		if s.want.Link != nil && errors.Is(err, unix.ENODEV) {
			break
		}
	}
	return fmt.Errorf("%s: the kernel does not match after 3 passes: %v\nkernel: %+v\nwant: %+v", when, last, s.k.Snapshot(), s.want)
}

// matches checks the kernel against the want: in vpnd's places, exactly
// what it wants.
func (s *schedule) matches(when string) error {
	got := s.k.Snapshot()
	var problems []string
	if l := s.want.Link; l != nil {
		if len(got.Links) != 1 || got.Links[0].Index != l.Index {
			problems = append(problems, fmt.Sprintf("links %+v, want only #%d", got.Links, l.Index))
		} else if gl := got.Links[0]; gl.MTU != l.MTU || !gl.Up || !slices.Equal(gl.Addresses, sorted(l.Addrs)) || len(gl.ForeignAddrs) > 0 {
			problems = append(problems, fmt.Sprintf("link %+v, want mtu %d up with %v", gl, l.MTU, sorted(l.Addrs)))
		}
	} else if len(got.Links) > 0 {
		problems = append(problems, fmt.Sprintf("links %+v, want none", got.Links))
	}
	var routes []manager.Route
	for _, r := range got.Routes {
		if r.Table == table {
			routes = append(routes, r.Route)
		}
	}
	if !sameSet(routes, s.want.Routes) {
		problems = append(problems, fmt.Sprintf("routes %v, want %v", routes, s.want.Routes))
	}
	var rules []manager.Rule
	for _, r := range got.Rules {
		if slices.Contains(places.Priorities, r.Priority) {
			rules = append(rules, r)
		}
	}
	if !sameSet(rules, s.want.Rules) {
		problems = append(problems, fmt.Sprintf("rules %v, want %v", rules, s.want.Rules))
	}
	if fw := s.want.Firewall; fw.Empty() != (got.Firewall == nil) || (got.Firewall != nil && !got.Firewall.Equal(&fw)) {
		problems = append(problems, fmt.Sprintf("firewall %+v, want %+v", got.Firewall, fw))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %s", when, strings.Join(problems, "; "))
	}
	return nil
}

func sorted(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
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

// randomFault is a failure the kernel may give: a refusal, an error that
// may pass, or a lost answer (the change happens, its answer is lost).
func randomFault(rng *rand.Rand) error {
	switch rng.IntN(4) {
	case 0:
		return unix.EINVAL
	case 1:
		return fmt.Errorf("injected: %w: %w", manager.ErrTransient, unix.ENOBUFS)
	case 2:
		return fmt.Errorf("netlink dump interrupted: %w", manager.ErrTransient)
	}
	return sim.ErrLostAnswer
}

var (
	addrPool = []string{"10.8.0.2/24", "10.9.0.2/24", "10.8.0.3/32", "fd00::2/64", "fd00:1::2/64"}
	dstPool  = []string{"0.0.0.0/0", "198.51.100.0/24", "198.51.100.128/25", "203.0.113.0/24", "10.0.0.0/8",
		"::/0", "2001:db8::/32", "2001:db8:1::/48", "fd00::/64"}
)

// changeWant picks the next want: a VPN (new or changed), lockdown on or
// off, or nothing.
func (s *schedule) changeWant() error {
	switch s.rng.IntN(5) {
	case 0: // the VPN ends
		s.want.Link, s.want.Routes = nil, nil
		s.want.Rules = lockdownRules(s.want.Rules)
		s.want.Firewall.FailClosedV4, s.want.Firewall.FailClosedV6 = nil, nil
	case 1: // lockdown changes
		var users []uint32
		for range s.rng.IntN(4) {
			users = append(users, uint32(2000+s.rng.IntN(10)))
		}
		vpnRules := slices.DeleteFunc(slices.Clone(s.want.Rules), func(r manager.Rule) bool { return r.Priority == priority+1 })
		s.want.Rules = append(vpnRules, lockdownRulesFor(users)...)
		s.want.Firewall.Lockdown = uidrange.FromUIDs(users)
		s.want.Firewall.Ifname, s.want.Firewall.ProtectMark = places.IfName, mark
	default:
		if s.want.Link == nil || s.rng.IntN(3) == 0 {
			return s.newVPN()
		}
		s.randomVPN(s.want.Link.Index) // the same link, other objects
	}
	return nil
}

// newVPN ends the VPN, if any, as vpnd does (the reconciler deletes its
// link), then creates a TUN, as a setUp does, and wants a VPN on it.
// Until the last link is gone its name is taken.
func (s *schedule) newVPN() error {
	if s.want.Link != nil {
		s.want.Link, s.want.Routes = nil, nil
		s.want.Rules = lockdownRules(s.want.Rules)
		s.want.Firewall.FailClosedV4, s.want.Firewall.FailClosedV6 = nil, nil
	}
	for i := 0; ; i++ {
		f, index, err := s.k.CreateTUN("vpn-tun", manager.TUNOptions{})
		if err == nil {
			if s.tun != nil {
				s.tun.close() // the app's fd of the last VPN
			}
			s.tun = &tunLink{index: index, close: f.Close}
			break
		}
		if i == 200 {
			return fmt.Errorf("create tun: %w", err)
		}
		s.r.Pass(s.want)
	}
	s.randomVPN(s.tun.index)
	return nil
}

// randomVPN makes the want a random VPN on link index.
func (s *schedule) randomVPN(index int) {
	var addrs []netip.Prefix
	for _, a := range addrPool {
		if s.rng.IntN(2) == 0 {
			addrs = append(addrs, netip.MustParsePrefix(a))
		}
	}
	if len(addrs) == 0 {
		addrs = append(addrs, netip.MustParsePrefix(addrPool[0]))
	}
	mtu := []int{1280, 1400, 1500}[s.rng.IntN(3)]
	var routes []manager.Route
	seen := map[manager.RouteKey]bool{}
	for _, d := range dstPool {
		if s.rng.IntN(2) == 0 {
			continue
		}
		r := manager.Route{Dst: netip.MustParsePrefix(d), LinkIndex: index}
		switch s.rng.IntN(4) {
		case 0:
			r = manager.Route{Dst: r.Dst, Kind: manager.Throw}
		case 1:
			r = manager.Route{Dst: r.Dst, Kind: manager.Unreachable}
		}
		if !seen[r.Key()] {
			seen[r.Key()] = true
			routes = append(routes, r)
		}
	}
	owner := uint32(1000 + s.rng.IntN(3))
	var rules []manager.Rule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules = append(rules, manager.Rule{Family: fam, Priority: priority, Table: table, UIDStart: owner, UIDEnd: owner, Mask: mark})
		if s.rng.IntN(2) == 0 {
			rules = append(rules, manager.Rule{Family: fam, Priority: priority, Table: table, UIDStart: 3000, UIDEnd: 3999})
		}
	}
	s.want.Link = &manager.Link{Index: index, MTU: mtu, Addrs: addrs}
	s.want.Routes = routes
	s.want.Rules = append(rules, lockdownRules(s.want.Rules)...)
	s.want.Firewall.Ifname, s.want.Firewall.ProtectMark = places.IfName, mark
	s.want.Firewall.FailClosedV4, s.want.Firewall.FailClosedV6 = nil, nil
	switch s.rng.IntN(3) {
	case 0:
		s.want.Firewall.FailClosedV6 = []uidrange.Range{{Start: owner, End: owner}}
	case 1:
		s.want.Firewall.FailClosedV4 = []uidrange.Range{{Start: owner, End: owner}}
	}
}

func lockdownRules(rules []manager.Rule) []manager.Rule {
	var out []manager.Rule
	for _, r := range rules {
		if r.Priority == priority+1 {
			out = append(out, r)
		}
	}
	return out
}

func lockdownRulesFor(users []uint32) []manager.Rule {
	var out []manager.Rule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		for _, ur := range uidrange.FromUIDs(users) {
			out = append(out, manager.Rule{Family: fam, Priority: priority + 1, UIDStart: ur.Start, UIDEnd: ur.End, Mask: mark, Action: manager.Refuse})
		}
	}
	return out
}

// foreignChange makes a change behind vpnd's back, as another program
// would, to vpnd's objects.
func (s *schedule) foreignChange() {
	w := s.want
	ext := s.ext
	switch s.rng.IntN(12) {
	case 0:
		if len(w.Rules) > 0 {
			ext.DeleteRule(w.Rules[s.rng.IntN(len(w.Rules))])
		}
	case 1:
		if len(w.Routes) > 0 {
			ext.DeleteRoute(table, w.Routes[s.rng.IntN(len(w.Routes))])
		}
	case 2: // replaced with another protocol or scope
		if len(w.Routes) > 0 {
			r := w.Routes[s.rng.IntN(len(w.Routes))]
			r.Foreign = true
			ext.ReplaceRoute(table, r)
		}
	case 3: // another route next to it, at another metric: in vpnd's table while a VPN uses it
		if len(w.Routes) > 0 && w.Link != nil {
			r := w.Routes[s.rng.IntN(len(w.Routes))]
			r.Metric, r.Kind, r.LinkIndex, r.Gateway = 7, manager.Throw, 0, netip.Addr{}
			ext.AddRoute(table, r)
		}
	case 4:
		ext.FlushTable(table)
	case 5:
		if w.Link != nil {
			ext.SetDown(w.Link.Index)
		}
	case 6:
		if w.Link != nil {
			ext.SetMTU(w.Link.Index, []int{1000, 1300, 9000}[s.rng.IntN(3)])
		}
	case 7:
		if w.Link != nil && len(w.Link.Addrs) > 0 {
			ext.DeleteAddress(w.Link.Index, w.Link.Addrs[s.rng.IntN(len(w.Link.Addrs))])
		}
	case 8:
		if w.Link != nil {
			ext.AddForeignAddress(w.Link.Index, netip.MustParsePrefix("192.0.2.9/24"))
		}
	case 9:
		ext.DeleteFirewall()
	case 10:
		ext.Lose()
	case 11: // a rule of vpnd's shape at its priority, added by someone else while a VPN uses it
		if w.Link != nil {
			ext.AddRule(manager.Rule{Family: unix.AF_INET, Priority: priority, Table: table, UIDStart: 7, UIDEnd: 7})
		}
	}
}

// leaveLeftovers puts what a killed vpnd may leave into vpnd's places: a
// TUN link (whose fd the test keeps, as a killed client might), routes
// and rules.
func (s *schedule) leaveLeftovers() error {
	f, index, err := s.k.CreateTUN("vpn-tun", manager.TUNOptions{})
	if err != nil {
		return err
	}
	s.tun = &tunLink{index: index, close: f.Close}
	if err := s.ext.SetMTU(index, 1400); err != nil {
		return err
	}
	s.ext.AddRoute(table, manager.Route{Dst: netip.MustParsePrefix("203.0.113.0/24"), Kind: manager.Throw})
	s.ext.AddRule(manager.Rule{Family: unix.AF_INET6, Priority: priority, Table: table, UIDStart: 5, UIDEnd: 5, Mask: mark})
	s.ext.ChangeFirewall(manager.Firewall{Lockdown: []uidrange.Range{{Start: 9, End: 9}}, Ifname: "vpn-tun", ProtectMark: mark})
	return nil
}

var testLog *zap.Logger
