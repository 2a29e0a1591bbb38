package tuntest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
)

var _ manager.Kernel = (*tuntest.Fake)(nil)

// kernel is what the scenario drives: the manager's Kernel and the single
// steps both implementations have beyond it.
type kernel interface {
	manager.Kernel
	AddRoute(r tun.Route) error
	DeleteAddress(index int, addr netip.Prefix) error
}

var (
	_ kernel = (*tuntest.Fake)(nil)
	_ kernel = (*tun.Netlink)(nil)
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	table = 98
	prio  = 10000
	mark  = 0x20000
)

// world is one kernel under test plus what the scenario created in it,
// by name, so that steps and observations do not depend on ifindexes.
type world struct {
	k       kernel
	observe func() observation
	files   map[string]*os.File
	index   map[string]int
	watches map[string]<-chan struct{}
	cancel  []context.CancelFunc
}

func (w *world) nameOf(index int) string {
	for n, i := range w.index {
		if i == index {
			return n
		}
	}
	return fmt.Sprintf("#%d", index)
}

// observation is what the scenario compares between the fake and the
// kernel: links (without lo) with their addresses, the routes in the table
// and the rules at the priority, rendered with link names.
type observation struct {
	Links  []string
	Routes []string
	Rules  []string
}

func (o observation) String() string {
	return fmt.Sprintf("links:\n  %s\nroutes:\n  %s\nrules:\n  %s",
		strings.Join(o.Links, "\n  "), strings.Join(o.Routes, "\n  "), strings.Join(o.Rules, "\n  "))
}

func renderLink(name string, mtu int, up bool, addrs []netip.Prefix) string {
	as := make([]string, len(addrs))
	for i, a := range addrs {
		as[i] = a.String()
	}
	slices.Sort(as)
	return fmt.Sprintf("%s mtu %d up %t addrs [%s]", name, mtu, up, strings.Join(as, " "))
}

func renderRoutes(w *world, rs []tun.Route) []string {
	tuntest.SortRoutes(rs)
	out := make([]string, len(rs))
	for i, r := range rs {
		s := r.Dst.String()
		if r.Throw {
			s = "throw " + s
		}
		if r.Gateway.IsValid() {
			s += " via " + r.Gateway.String()
		}
		if r.LinkIndex != 0 {
			s += " dev " + w.nameOf(r.LinkIndex)
		}
		out[i] = fmt.Sprintf("%s table %d", s, r.Table)
	}
	return out
}

func renderRules(rs []tun.Rule) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.String()
	}
	return out
}

func observeFake(w *world, f *tuntest.Fake) observation {
	s := f.Snapshot()
	var o observation
	for _, l := range s.Links {
		o.Links = append(o.Links, renderLink(l.Name, l.MTU, l.Up, l.Addresses))
	}
	o.Routes = renderRoutes(w, s.Routes)
	o.Rules = renderRules(s.Rules)
	return o
}

func observeKernel(t *testing.T, w *world) observation {
	t.Helper()
	var o observation
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	slices.SortFunc(links, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatalf("list addresses: %v", err)
		}
		var ps []netip.Prefix
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			ip = ip.Unmap()
			if ip.IsLinkLocalUnicast() {
				continue // the kernel's own IPv6 link-local address
			}
			ones, _ := a.Mask.Size()
			ps = append(ps, netip.PrefixFrom(ip, ones))
		}
		o.Links = append(o.Links, renderLink(l.Attrs().Name, l.Attrs().MTU, l.Attrs().Flags&net.FlagUp != 0, ps))
	}
	routes, err := tun.ListRoutes(table)
	if err != nil {
		t.Fatal(err)
	}
	o.Routes = renderRoutes(w, routes)
	rules, err := tun.ListRules(table, prio)
	if err != nil {
		t.Fatal(err)
	}
	o.Rules = renderRules(rules)
	return o
}

// outcome classifies an error the way the manager can tell errors apart.
func outcome(err error) string {
	var errno unix.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, tun.ErrLinkExists):
		return "ErrLinkExists"
	case errors.Is(err, tun.ErrAmbiguousRule):
		return "ErrAmbiguousRule"
	case errors.As(err, &errno):
		return unix.ErrnoName(errno)
	}
	return "error"
}

type step struct {
	name string
	do   func(w *world) error
	want string // outcome
	// check compares the observations of fake and kernel after the step.
	check bool
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func create(name string, blocking bool) func(w *world) error {
	return func(w *world) error {
		f, index, err := w.k.CreateTUN(name, blocking)
		if err != nil {
			return err
		}
		w.files[name], w.index[name] = f, index
		var nonblock bool
		rc, err := f.SyscallConn()
		if err != nil {
			return err
		}
		if err := rc.Control(func(fd uintptr) {
			fl, _ := unix.FcntlInt(fd, unix.F_GETFL, 0)
			nonblock = fl&unix.O_NONBLOCK != 0
		}); err != nil {
			return err
		}
		if nonblock == blocking {
			return fmt.Errorf("O_NONBLOCK is %t, want %t", nonblock, !blocking)
		}
		return nil
	}
}

func addAddr(link, p string) func(w *world) error {
	return func(w *world) error { return w.k.AddAddress(w.index[link], pfx(p)) }
}

func delAddr(link, p string) func(w *world) error {
	return func(w *world) error { return w.k.DeleteAddress(w.index[link], pfx(p)) }
}

func route(link, dst, gw string) func(w *world) tun.Route {
	return func(w *world) tun.Route {
		r := tun.Route{Table: table, Dst: pfx(dst)}
		if link == "" {
			r.Throw = true
		} else {
			r.LinkIndex = w.index[link]
		}
		if gw != "" {
			r.Gateway = netip.MustParseAddr(gw)
		}
		return r
	}
}

func addRoute(r func(*world) tun.Route) func(w *world) error {
	return func(w *world) error { return w.k.AddRoute(r(w)) }
}

func delRoute(r func(*world) tun.Route) func(w *world) error {
	return func(w *world) error { return w.k.DeleteRoute(r(w)) }
}

func rule(family int, uid0, uid1, mask uint32) tun.Rule {
	return tun.Rule{Family: family, Priority: prio, Table: table, UIDStart: uid0, UIDEnd: uid1, Mask: mask}
}

func addRule(r tun.Rule) func(w *world) error { return func(w *world) error { return w.k.AddRule(r) } }
func delRule(r tun.Rule) func(w *world) error {
	return func(w *world) error { return w.k.DeleteRule(r) }
}

func watch(link string) func(w *world) error {
	return func(w *world) error {
		ctx, cancel := context.WithCancel(context.Background())
		w.cancel = append(w.cancel, cancel)
		ch, err := w.k.WatchLink(ctx, w.index[link])
		w.watches[link] = ch
		return err
	}
}

// waitGone waits for the watch to fire. The long limit only keeps a broken
// watcher from hanging the test; it is not a timing claim.
func waitGone(link string) func(w *world) error {
	return func(w *world) error {
		select {
		case <-w.watches[link]:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("watch did not fire")
		}
	}
}

func closeTUN(link string) func(w *world) error {
	return func(w *world) error { return w.files[link].Close() }
}

var (
	v4 = unix.AF_INET
	v6 = unix.AF_INET6
)

// scenario is the table run against both kernels. Each row names what it
// shows about the kernel; want is the outcome both must produce.
var scenario = []step{
	{name: "create tun, non-blocking", do: create("vpn-tun", false), want: "ok", check: true},
	{name: "IFF_TUN_EXCL: the name is taken", do: create("vpn-tun", false), want: "ErrLinkExists"},
	{name: "invalid name", do: create("bad/name", false), want: "error"},
	{name: "add IPv4 address", do: addAddr("vpn-tun", "10.8.0.2/24"), want: "ok"},
	{name: "duplicate address", do: addAddr("vpn-tun", "10.8.0.2/24"), want: "EEXIST"},
	{name: "add IPv6 address", do: addAddr("vpn-tun", "fd00::2/64"), want: "ok"},
	{name: "duplicate IPv6 address, other length", do: addAddr("vpn-tun", "fd00::2/96"), want: "EEXIST"},
	{name: "set mtu", do: func(w *world) error { return w.k.SetMTU(w.index["vpn-tun"], 1400) }, want: "ok"},
	{name: "mtu below the minimum", do: func(w *world) error { return w.k.SetMTU(w.index["vpn-tun"], 67) }, want: "EINVAL"},
	{name: "route on a down link", do: addRoute(route("vpn-tun", "0.0.0.0/0", "")), want: "ENETDOWN"},
	{name: "IPv6 route on a down link", do: addRoute(route("vpn-tun", "::/0", "")), want: "ENETDOWN"},
	{name: "set up", do: func(w *world) error { return w.k.SetUp(w.index["vpn-tun"]) }, want: "ok", check: true},
	{name: "route via on-link gateway", do: addRoute(route("vpn-tun", "10.9.0.0/16", "10.8.0.1")), want: "ok"},
	{name: "route via off-link gateway", do: addRoute(route("vpn-tun", "10.10.0.0/16", "10.7.0.1")), want: "ENETUNREACH"},
	{name: "default route", do: addRoute(route("vpn-tun", "0.0.0.0/0", "")), want: "ok"},
	{name: "IPv6 default route", do: addRoute(route("vpn-tun", "::/0", "")), want: "ok"},
	{name: "gateway reachable through the table's own route", do: addRoute(route("vpn-tun", "10.10.0.0/16", "10.7.0.1")), want: "ok"},
	{name: "throw route", do: addRoute(route("", "192.168.0.0/16", "")), want: "ok"},
	{name: "IPv6 throw route", do: addRoute(route("", "fd00:1::/48", "")), want: "ok"},
	{name: "duplicate route", do: addRoute(route("vpn-tun", "0.0.0.0/0", "")), want: "EEXIST"},
	{name: "route to a throw route's destination", do: addRoute(route("vpn-tun", "192.168.0.0/16", "")), want: "EEXIST"},
	{name: "duplicate throw route", do: addRoute(route("", "fd00:1::/48", "")), want: "EEXIST"},
	{name: "host bits are masked", do: addRoute(route("", "172.16.1.1/12", "")), want: "ok", check: true},
	{name: "owner rule with fwmark", do: addRule(rule(v4, 1000, 1000, mark)), want: "ok"},
	{name: "IPv6 owner rule", do: addRule(rule(v6, 1000, 1000, mark)), want: "ok"},
	{name: "uid range rule", do: addRule(rule(v4, 0, 999, 0)), want: "ok"},
	{name: "duplicate rule", do: addRule(rule(v4, 1000, 1000, mark)), want: "EEXIST"},
	{name: "same selector, other mask is another rule", do: addRule(rule(v6, 1000, 1000, 0x1)), want: "ok", check: true},
	{name: "delete a missing rule", do: delRule(rule(v4, 5, 5, 0)), want: "ENOENT"},
	{name: "delete a missing route", do: delRoute(route("vpn-tun", "10.99.0.0/16", "")), want: "ESRCH"},
	{name: "delete a missing IPv6 route", do: delRoute(route("", "fd00:99::/48", "")), want: "ESRCH"},
	{name: "delete a missing address", do: delAddr("vpn-tun", "10.8.0.3/24"), want: "EADDRNOTAVAIL"},
	{name: "delete an address with the wrong length", do: delAddr("vpn-tun", "10.8.0.2/16"), want: "EADDRNOTAVAIL"},
	{name: "delete a route of the wrong type", do: delRoute(route("", "0.0.0.0/0", "")), want: "ESRCH", check: true},
	{name: "rule with fwmark first", do: addRule(rule(v4, 2000, 2000, mark)), want: "ok"},
	{name: "then the same rule without", do: addRule(rule(v4, 2000, 2000, 0)), want: "ok"},
	{name: "delete would hit the fwmark rule", do: delRule(rule(v4, 2000, 2000, 0)), want: "ErrAmbiguousRule", check: true},
	{name: "delete the fwmark rule", do: delRule(rule(v4, 2000, 2000, mark)), want: "ok"},
	{name: "now the plain one", do: delRule(rule(v4, 2000, 2000, 0)), want: "ok", check: true},
	{name: "delete IPv6 rule with other mask", do: delRule(rule(v6, 1000, 1000, 0x1)), want: "ok"},
	{name: "delete gateway route", do: delRoute(route("vpn-tun", "10.9.0.0/16", "10.8.0.1")), want: "ok"},
	{name: "delete IPv6 address", do: delAddr("vpn-tun", "fd00::2/64"), want: "ok", check: true},
	{name: "last IPv4 address gone flushes IPv4 routes", do: delAddr("vpn-tun", "10.8.0.2/24"), want: "ok", check: true},
	{name: "watch the link", do: watch("vpn-tun"), want: "ok"},
	{name: "delete the link", do: func(w *world) error { return w.k.DeleteLink(w.index["vpn-tun"]) }, want: "ok"},
	{name: "watch fires on delete; link routes go, throw routes and rules stay", do: waitGone("vpn-tun"), want: "ok", check: true},
	{name: "delete a gone link", do: func(w *world) error { return w.k.DeleteLink(w.index["vpn-tun"]) }, want: "ok"},
	{name: "address on a gone link", do: addAddr("vpn-tun", "10.8.0.2/24"), want: "ENODEV"},
	{name: "mtu on a gone link", do: func(w *world) error { return w.k.SetMTU(w.index["vpn-tun"], 1400) }, want: "ENODEV"},
	{name: "up on a gone link", do: func(w *world) error { return w.k.SetUp(w.index["vpn-tun"]) }, want: "ENODEV"},
	{name: "route on a gone link", do: addRoute(route("vpn-tun", "10.1.0.0/16", "")), want: "ENODEV"},
	{name: "watch a gone link", do: watch("vpn-tun"), want: "ok"},
	{name: "it fires at once", do: waitGone("vpn-tun"), want: "ok"},
	{name: "create a blocking tun", do: create("tun2", true), want: "ok"},
	{name: "the name is free again", do: create("vpn-tun", false), want: "ok", check: true},
	{name: "watch tun2", do: watch("tun2"), want: "ok"},
	{name: "close tun2's only fd", do: closeTUN("tun2"), want: "ok"},
	{name: "watch fires on close", do: waitGone("tun2"), want: "ok", check: true},
	{name: "clean up: throw route", do: delRoute(route("", "192.168.0.0/16", "")), want: "ok"},
	{name: "clean up: IPv6 throw route", do: delRoute(route("", "fd00:1::/48", "")), want: "ok"},
	{name: "clean up: masked route", do: delRoute(route("", "172.16.0.0/12", "")), want: "ok"},
	{name: "clean up: rule", do: delRule(rule(v4, 1000, 1000, mark)), want: "ok"},
	{name: "clean up: IPv6 rule", do: delRule(rule(v6, 1000, 1000, mark)), want: "ok"},
	{name: "clean up: uid range rule", do: delRule(rule(v4, 0, 999, 0)), want: "ok"},
	{name: "clean up: close vpn-tun", do: closeTUN("vpn-tun"), want: "ok"},
	{name: "watch vpn-tun", do: watch("vpn-tun"), want: "ok"},
	{name: "everything is gone", do: waitGone("vpn-tun"), want: "ok", check: true},
}

type result struct {
	outcome string
	err     error
	obs     observation
}

func run(t *testing.T, w *world) []result {
	t.Helper()
	defer func() {
		for _, c := range w.cancel {
			c()
		}
		for _, f := range w.files {
			f.Close()
		}
	}()
	var out []result
	for _, s := range scenario {
		err := s.do(w)
		r := result{outcome: outcome(err), err: err}
		if s.check {
			r.obs = w.observe()
		}
		out = append(out, r)
	}
	return out
}

func newFakeWorld() (*world, *tuntest.Fake) {
	f := tuntest.New()
	w := &world{k: f, files: map[string]*os.File{}, index: map[string]int{}, watches: map[string]<-chan struct{}{}}
	w.observe = func() observation { return observeFake(w, f) }
	return w, f
}

// TestScenarioFake runs the scenario against the fake alone, without root.
func TestScenarioFake(t *testing.T) {
	w, f := newFakeWorld()
	defer f.Close()
	for i, r := range run(t, w) {
		if r.outcome != scenario[i].want {
			t.Errorf("step %d %q: got %s (%v), want %s", i, scenario[i].name, r.outcome, r.err, scenario[i].want)
		}
	}
}

// TestScenarioHonest runs the scenario against the fake and against the
// real kernel in a fresh network namespace, and requires the same outcome
// from both at every step and the same state wherever the row says check.
func TestScenarioHonest(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	fw, f := newFakeWorld()
	defer f.Close()
	fake := run(t, fw)

	kw := &world{k: tun.New(zaptest.NewLogger(t)), files: map[string]*os.File{}, index: map[string]int{}, watches: map[string]<-chan struct{}{}}
	kw.observe = func() observation { return observeKernel(t, kw) }
	real := run(t, kw)

	for i, s := range scenario {
		k, fk := real[i], fake[i]
		if k.outcome != s.want {
			t.Errorf("step %d %q: kernel gave %s (%v), want %s", i, s.name, k.outcome, k.err, s.want)
		}
		if fk.outcome != k.outcome {
			t.Errorf("step %d %q: fake gave %s (%v), kernel %s (%v)", i, s.name, fk.outcome, fk.err, k.outcome, k.err)
		}
		if s.check && fk.obs.String() != k.obs.String() {
			t.Errorf("step %d %q: state differs\nfake:\n%s\nkernel:\n%s", i, s.name, fk.obs, k.obs)
		}
	}
}
