package tuntest_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
)

var (
	_ manager.Kernel = (*tuntest.Fake)(nil)
	_ manager.Kernel = (*sim.Kernel)(nil)
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	table = 98
	prio  = 10000
	lock  = prio + 1
	mark  = 0x20000
	v4    = unix.AF_INET
	v6    = unix.AF_INET6
)

// hangGuard only keeps a broken kernel from hanging the test; it is not a
// timing claim.
const hangGuard = 10 * time.Second

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// outside changes the kernel behind vpnd's back, as another program
// would: sim.External for the model, `ip` for the kernel.
type outside interface {
	setDown(index int) error
	setMTU(index, mtu int) error
	deleteAddress(index int, p netip.Prefix) error
	flushTable(table int) error
	addRoute(r tun.Route) error
	deleteRoute(r tun.Route) error
	addRule(r tun.Rule) error
	deleteRule(r tun.Rule) error
	deleteLink(index int) error
}

// world is one kernel under test and what the scenario made in it, by
// name, so that steps and results do not depend on interface indexes.
type world struct {
	k     manager.Kernel
	out   outside
	files map[string]*os.File
	index map[string]int
	added map[string]tun.Objects // what Install reported, by step tag
	// The scenario's watch, of vpn-tun's link, table and priorities, as
	// the manager has one.
	gone, changed <-chan struct{}
	stopWatch     context.CancelFunc
	// settle returns once every change made so far has reached the watch.
	settle  func()
	observe func() observation
}

func newWorld(k manager.Kernel, out outside) *world {
	return &world{k: k, out: out, files: map[string]*os.File{}, index: map[string]int{}, added: map[string]tun.Objects{}, stopWatch: func() {}}
}

// names replaces interface indexes in s ("#3", "(index 3)") with the
// scenario's names for them.
func (w *world) names(s string) string {
	for name, i := range w.index {
		s = strings.ReplaceAll(s, fmt.Sprintf("#%d ", i), name+" ")
		s = strings.ReplaceAll(s, fmt.Sprintf("#%d:", i), name+":")
		s = strings.ReplaceAll(s, fmt.Sprintf("#%d\n", i), name+"\n")
		if strings.HasSuffix(s, fmt.Sprintf("#%d", i)) {
			s = strings.TrimSuffix(s, fmt.Sprintf("#%d", i)) + name
		}
		s = strings.ReplaceAll(s, fmt.Sprintf("(index %d)", i), "("+name+")")
	}
	return s
}

// observation is what the scenario compares between model and kernel
// after a step: the links but lo with their MTU, up state and addresses,
// the routes in vpnd's table, and the rules at vpnd's priorities.
type observation struct {
	Links, Routes, Rules []string
}

func (o observation) String() string {
	return fmt.Sprintf("links:\n  %s\nroutes:\n  %s\nrules:\n  %s",
		strings.Join(o.Links, "\n  "), strings.Join(o.Routes, "\n  "), strings.Join(o.Rules, "\n  "))
}

func renderLink(name string, mtu int, up bool, addrs []netip.Prefix) string {
	return fmt.Sprintf("%s mtu %d up %t addrs [%s]", name, mtu, up, sorted(addrs))
}

// sorted renders things sorted: the kernel's order of addresses and
// routes is its own business.
func sorted[T fmt.Stringer](xs []T) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// inOrder renders things in their order: rules are evaluated in it.
func inOrder[T fmt.Stringer](xs []T) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return strings.Join(out, " ")
}

func (w *world) renderRoutes(rs []tun.Route) []string {
	var out []string
	for _, r := range rs {
		if r.Table == table {
			out = append(out, w.names(r.String()))
		}
	}
	slices.Sort(out)
	return out
}

func renderRules(rs []tun.Rule) []string {
	var out []string
	for _, r := range rs {
		if r.Priority == prio || r.Priority == lock {
			out = append(out, r.String())
		}
	}
	return out
}

func (w *world) renderObjects(o tun.Objects) string {
	var b strings.Builder
	if l := o.Link; l != nil {
		fmt.Fprintf(&b, "link #%d mtu %d addrs [%s]; ", l.Index, l.MTU, inOrder(l.Addrs))
	}
	fmt.Fprintf(&b, "routes [%s]; rules [%s]", inOrder(o.Routes), inOrder(o.Rules))
	return w.names(b.String())
}

func (w *world) renderState(s *tun.State) string {
	var b strings.Builder
	if l := s.Link; l != nil {
		fmt.Fprintf(&b, "link %s #%d %s; ", l.Name, l.Index, renderLink(l.Name, l.MTU, l.Up, l.Addrs))
	} else {
		b.WriteString("no link; ")
	}
	fmt.Fprintf(&b, "routes [%s]; rules [%s]", sorted(s.Routes), inOrder(s.Rules))
	return w.names(b.String())
}

func (w *world) renderRepair(r tun.Repair) string {
	return w.names(fmt.Sprintf("link #%d mtu %d up %t addrs [%s] routes [%s] rules [%s]",
		r.LinkIndex, r.MTU, r.Up, inOrder(r.Addrs), inOrder(r.Routes), inOrder(r.Rules)))
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

// errnoText matches what follows an object in an error: the errno's text
// and the kernel's extended acknowledgement, which only the kernel has.
var errnoText = regexp.MustCompile(`: [a-z][a-z ]*( \(.*\))?$`)

// errorText is err as the manager would show it, cut to what both kernels
// say alike: which step failed on which object.
func (w *world) errorText(err error) string {
	if err == nil {
		return ""
	}
	var lines []string
	for line := range strings.SplitSeq(err.Error(), "\n") {
		var errno unix.Errno
		if errors.As(err, &errno) {
			line = errnoText.ReplaceAllString(line, "")
		}
		lines = append(lines, w.names(line))
	}
	slices.Sort(lines)
	return strings.Join(lines, " | ")
}

type step struct {
	name string
	do   func(w *world) (detail string, err error)
	want string // the outcome both must produce
	// check compares the observations after the step.
	check bool
}

// result is what a step produced in one world.
type result struct {
	outcome, errText, detail string
	watch                    string
	obs                      observation
	err                      error
}

func create(name string, blocking bool) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		f, index, err := w.k.CreateTUN(name, tun.TUNOptions{Blocking: blocking})
		if err != nil {
			return "", err
		}
		w.files[name], w.index[name] = f, index
		rc, err := f.SyscallConn()
		if err != nil {
			return "", err
		}
		var fl, fdfl int
		if err := rc.Control(func(fd uintptr) {
			fl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
			fdfl, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
		}); err != nil {
			return "", err
		}
		return fmt.Sprintf("nonblocking %t cloexec %t", fl&unix.O_NONBLOCK != 0, fdfl&unix.FD_CLOEXEC != 0), nil
	}
}

// closeFile closes the client's only fd of a TUN and waits until the
// link is gone: at once in the kernel, a moment later in the model.
func closeFile(name string) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		if err := w.files[name].Close(); err != nil {
			return "", err
		}
		deadline := time.Now().Add(hangGuard)
		for {
			s, err := w.k.Read(tun.Query{LinkIndex: w.index[name]})
			if err != nil {
				return "", err
			}
			if s.Link == nil {
				return "", nil
			}
			if time.Now().After(deadline) {
				return "", errors.New("the link outlived its file")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func watch(name string) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		w.stopWatch()
		ctx, cancel := context.WithCancel(context.Background())
		w.stopWatch = cancel
		var err error
		w.gone, w.changed, err = w.k.Watch(ctx, tun.ChangeFilter{LinkIndex: w.index[name], Table: table, Priorities: []int{prio, lock}})
		return "", err
	}
}

func install(tag string, objects func(w *world) *tun.Objects) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		added, err := w.k.Install(objects(w))
		w.added[tag] = added
		return w.renderObjects(added), err
	}
}

// remove removes what the Install with tag reported, as a rollback does.
func remove(tag string) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		o := w.added[tag]
		return "", w.k.Remove(&o)
	}
}

// removeAll removes the whole of objects, as a teardown does.
func removeAll(objects func(w *world) *tun.Objects) func(w *world) (string, error) {
	return func(w *world) (string, error) { return "", w.k.Remove(objects(w)) }
}

func read(link string) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		s, err := w.k.Read(tun.Query{LinkIndex: w.index[link], Table: table, Priorities: []int{prio, lock}})
		if err != nil {
			return "", err
		}
		return w.renderState(s), nil
	}
}

func restore(link string, rep func(w *world) tun.Repair) func(w *world) (string, error) {
	return func(w *world) (string, error) {
		r := rep(w)
		r.LinkIndex = w.index[link]
		done, err := w.k.Restore(&r)
		return w.renderRepair(done), err
	}
}

// occupants lists what Occupants reports, as it reports it: the words
// end up in an error's detail.
func occupants(w *world) (string, error) {
	o, err := w.k.Occupants(table, prio, lock)
	slices.Sort(o)
	return strings.Join(o, "; "), err
}

func outsideDo(f func(w *world) error) func(w *world) (string, error) {
	return func(w *world) (string, error) { return "", f(w) }
}

// vpn is a VPN of every kind of object, on link: both families of
// addresses (host addresses too), prefix routes, default routes, routes
// through a gateway, excluded (throw) and fail-closed (unreachable)
// routes, the owner's rules with the protect mask, other uids' rules, and
// lockdown's rules.
func vpn(link string) func(w *world) *tun.Objects {
	return func(w *world) *tun.Objects {
		index := w.index[link]
		return &tun.Objects{
			Link: &tun.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{
				pfx("10.8.0.2/24"), pfx("10.8.1.2/32"), pfx("fd00:8::2/64"), pfx("fd00:9::2/128"),
			}},
			Routes: []tun.Route{
				{Table: table, Dst: pfx("10.8.0.0/24"), LinkIndex: index},
				{Table: table, Dst: pfx("fd00:8::/64"), LinkIndex: index},
				{Table: table, Dst: pfx("0.0.0.0/0"), LinkIndex: index},
				{Table: table, Dst: pfx("::/0"), LinkIndex: index},
				{Table: table, Dst: pfx("198.51.100.0/24"), Gateway: addr("10.8.0.1"), LinkIndex: index},
				{Table: table, Dst: pfx("2001:db8:1::/48"), Gateway: addr("fd00:8::1"), LinkIndex: index},
				{Table: table, Dst: pfx("192.0.2.7/32"), LinkIndex: index},
				{Table: table, Dst: pfx("192.168.0.0/16"), Kind: tun.Throw},
				{Table: table, Dst: pfx("2001:db8:2::/48"), Kind: tun.Throw},
				{Table: table, Dst: pfx("203.0.113.0/24"), Kind: tun.Unreachable},
				{Table: table, Dst: pfx("2001:db8:3::/48"), Kind: tun.Unreachable},
			},
			Rules: []tun.Rule{
				{Family: v4, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
				{Family: v6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
				{Family: v4, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
				{Family: v6, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
				{Family: v4, Priority: lock, UIDStart: 2000, UIDEnd: 2999, Mask: mark, Action: tun.Refuse},
				{Family: v6, Priority: lock, UIDStart: 2000, UIDEnd: 2999, Mask: mark, Action: tun.Refuse},
			},
		}
	}
}

// only picks parts of a VPN.
func only(objects func(w *world) *tun.Objects, pick func(o *tun.Objects)) func(w *world) *tun.Objects {
	return func(w *world) *tun.Objects {
		o := objects(w)
		pick(o)
		return o
	}
}

func unicast(rs []tun.Route) []tun.Route {
	return slices.DeleteFunc(slices.Clone(rs), func(r tun.Route) bool { return r.Kind != tun.Unicast })
}

func ofFamily(xs []netip.Prefix, six bool) []netip.Prefix {
	return slices.DeleteFunc(slices.Clone(xs), func(p netip.Prefix) bool { return p.Addr().Is6() != six })
}

func routesOf(rs []tun.Route, six bool) []tun.Route {
	return slices.DeleteFunc(slices.Clone(rs), func(r tun.Route) bool { return r.Dst.Addr().Is6() != six })
}

var (
	plain5  = tun.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5}
	masked5 = tun.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 5, UIDEnd: 5, Mask: mark}
)

// scenario is the table run against the model and the kernel. Each row
// says what it shows; want is the outcome both must produce. After every
// row both must also agree on the row's detail (what Install, Read,
// Restore... reported), on the error's words, and on what the watch
// reported; rows with check compare the kernels' whole state too.
var scenario = []step{
	{name: "create vpn-tun, non-blocking", do: create("vpn-tun", false), want: "ok", check: true},
	{name: "IFF_TUN_EXCL: the name is taken", do: create("vpn-tun", false), want: "ErrLinkExists"},
	{name: "an invalid name", do: create("bad/name", false), want: "error"},
	{name: "lo is taken", do: create("lo", false), want: "ErrLinkExists"},
	{name: "watch vpn-tun", do: watch("vpn-tun"), want: "ok"},
	{name: "occupants of empty slots", do: occupants, want: "ok"},
	{name: "install a whole VPN", do: install("vpn", vpn("vpn-tun")), want: "ok", check: true},
	{name: "read it", do: read("vpn-tun"), want: "ok"},
	{name: "occupants: the VPN", do: occupants, want: "ok"},
	{name: "install it again: every address, route and rule exists", do: install("again", vpn("vpn-tun")), want: "EEXIST", check: true},

	{name: "someone adds a route to another table", do: outsideDo(func(w *world) error {
		return w.out.addRoute(tun.Route{Table: 97, Dst: pfx("10.97.0.0/16"), Kind: tun.Throw})
	}), want: "ok"},
	{name: "someone adds a rule at another priority", do: outsideDo(func(w *world) error {
		return w.out.addRule(tun.Rule{Family: v4, Priority: 9999, Table: 97, UIDStart: 1, UIDEnd: 1})
	}), want: "ok"},
	{name: "someone sets the link down: its routes and IPv6 addresses go", do: outsideDo(func(w *world) error {
		return w.out.setDown(w.index["vpn-tun"])
	}), want: "ok", check: true},
	{name: "read a link that is down", do: read("vpn-tun"), want: "ok"},
	{name: "a route through a gateway on a link that is down: onlink, so the link's state counts", do: restore("vpn-tun", func(w *world) tun.Repair {
		return tun.Repair{Routes: vpn("vpn-tun")(w).Routes[4:5]}
	}), want: "ENETDOWN"},
	{name: "an IPv6 one", do: restore("vpn-tun", func(w *world) tun.Repair {
		return tun.Repair{Routes: vpn("vpn-tun")(w).Routes[5:6]}
	}), want: "ENETDOWN"},
	{name: "a route without a gateway on a link that is down", do: restore("vpn-tun", func(w *world) tun.Repair {
		return tun.Repair{Routes: vpn("vpn-tun")(w).Routes[3:4]}
	}), want: "ENETDOWN"},
	{name: "restore up state, IPv6 addresses and routes", do: restore("vpn-tun", func(w *world) tun.Repair {
		o := vpn("vpn-tun")(w)
		return tun.Repair{Up: true, Addrs: ofFamily(o.Link.Addrs, true), Routes: unicast(o.Routes)}
	}), want: "ok", check: true},
	{name: "someone changes the MTU", do: outsideDo(func(w *world) error { return w.out.setMTU(w.index["vpn-tun"], 1300) }), want: "ok", check: true},
	{name: "restore the MTU", do: restore("vpn-tun", func(w *world) tun.Repair { return tun.Repair{MTU: 1400} }), want: "ok", check: true},
	{name: "someone deletes an address", do: outsideDo(func(w *world) error {
		return w.out.deleteAddress(w.index["vpn-tun"], pfx("10.8.1.2/32"))
	}), want: "ok", check: true},
	{name: "someone deletes an address that is not there", do: outsideDo(func(w *world) error {
		return w.out.deleteAddress(w.index["vpn-tun"], pfx("10.8.1.2/32"))
	}), want: "failed"},
	{name: "restore the address", do: restore("vpn-tun", func(w *world) tun.Repair {
		return tun.Repair{Addrs: []netip.Prefix{pfx("10.8.1.2/32")}}
	}), want: "ok", check: true},
	{name: "someone deletes an IPv6 address: its route in vpnd's table stays", do: outsideDo(func(w *world) error {
		return w.out.deleteAddress(w.index["vpn-tun"], pfx("fd00:8::2/64"))
	}), want: "ok", check: true},
	{name: "restore the IPv6 address", do: restore("vpn-tun", func(w *world) tun.Repair {
		return tun.Repair{Addrs: []netip.Prefix{pfx("fd00:8::2/64")}}
	}), want: "ok", check: true},
	{name: "someone deletes a route", do: outsideDo(func(w *world) error { return w.out.deleteRoute(vpn("vpn-tun")(w).Routes[5]) }), want: "ok", check: true},
	{name: "restore it", do: restore("vpn-tun", func(w *world) tun.Repair { return tun.Repair{Routes: vpn("vpn-tun")(w).Routes[5:6]} }), want: "ok", check: true},
	{name: "someone deletes the IPv4 addresses: the IPv4 routes through the link go", do: outsideDo(func(w *world) error {
		return errors.Join(w.out.deleteAddress(w.index["vpn-tun"], pfx("10.8.1.2/32")), w.out.deleteAddress(w.index["vpn-tun"], pfx("10.8.0.2/24")))
	}), want: "ok", check: true},
	{name: "read a link without IPv4 addresses", do: read("vpn-tun"), want: "ok"},
	{name: "restore the IPv4 addresses and routes", do: restore("vpn-tun", func(w *world) tun.Repair {
		o := vpn("vpn-tun")(w)
		return tun.Repair{Addrs: ofFamily(o.Link.Addrs, false), Routes: routesOf(unicast(o.Routes), false)}
	}), want: "ok", check: true},
	{name: "someone flushes the table", do: outsideDo(func(w *world) error { return w.out.flushTable(table) }), want: "ok", check: true},
	{name: "restore every route", do: restore("vpn-tun", func(w *world) tun.Repair { return tun.Repair{Routes: vpn("vpn-tun")(w).Routes} }), want: "ok", check: true},
	{name: "someone deletes a rule", do: outsideDo(func(w *world) error { return w.out.deleteRule(vpn("vpn-tun")(w).Rules[3]) }), want: "ok", check: true},
	{name: "restore every rule: only the deleted one is restored", do: restore("vpn-tun", func(w *world) tun.Repair {
		return tun.Repair{Rules: vpn("vpn-tun")(w).Rules}
	}), want: "ok", check: true},
	{name: "restore every address: none is restored", do: restore("vpn-tun", func(w *world) tun.Repair {
		return tun.Repair{Addrs: vpn("vpn-tun")(w).Link.Addrs}
	}), want: "ok"},
	{name: "someone replaces a route", do: outsideDo(func(w *world) error {
		return w.out.addRoute(tun.Route{Table: table, Dst: pfx("10.66.0.0/16"), LinkIndex: w.index["vpn-tun"]})
	}), want: "ok", check: true},
	{name: "someone sets the MTU below IPv6's minimum: IPv6 leaves the link", do: outsideDo(func(w *world) error { return w.out.setMTU(w.index["vpn-tun"], 1200) }), want: "ok", check: true},
	{name: "read a link without IPv6", do: read("vpn-tun"), want: "ok"},
	{name: "restore the MTU, the IPv6 addresses and routes", do: restore("vpn-tun", func(w *world) tun.Repair {
		o := vpn("vpn-tun")(w)
		return tun.Repair{MTU: 1400, Addrs: ofFamily(o.Link.Addrs, true), Routes: routesOf(unicast(o.Routes), true)}
	}), want: "ok", check: true},
	{name: "read it back", do: read("vpn-tun"), want: "ok"},
	{name: "an MTU outside the link's range", do: restore("vpn-tun", func(w *world) tun.Repair { return tun.Repair{MTU: 65536} }), want: "EINVAL"},

	{name: "create a blocking tun2", do: create("tun2", true), want: "ok", check: true},
	{name: "install on tun2: a gateway that is a local address, an IPv6 one, a rule that exists", do: install("partial", func(w *world) *tun.Objects {
		index := w.index["tun2"]
		return &tun.Objects{
			Link: &tun.Link{Index: index, MTU: 1280, Addrs: []netip.Prefix{pfx("10.9.0.2/24"), pfx("fd00:19::2/64")}},
			Routes: []tun.Route{
				{Table: table, Dst: pfx("10.9.0.0/24"), LinkIndex: index},
				{Table: table, Dst: pfx("10.10.0.0/16"), Gateway: addr("10.9.0.2"), LinkIndex: index},
				{Table: table, Dst: pfx("2001:db8:9::/48"), Gateway: addr("fd00:19::2"), LinkIndex: index},
				{Table: table, Dst: pfx("10.11.0.0/16"), Gateway: addr("10.9.0.1"), LinkIndex: index},
				{Table: table, Dst: pfx("172.16.1.1/12"), Kind: tun.Throw},
			},
			Rules: []tun.Rule{
				{Family: v4, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
				{Family: v4, Priority: prio, Table: table, UIDStart: 3000, UIDEnd: 3999},
			},
		}
	}), want: "EINVAL", check: true},
	{name: "remove what it added, the link too", do: remove("partial"), want: "ok", check: true},
	{name: "create tun3", do: create("tun3", false), want: "ok"},
	{name: "install on tun3: a gateway that is tun3's own IPv6 address", do: install("own-gw", func(w *world) *tun.Objects {
		index := w.index["tun3"]
		return &tun.Objects{
			Link: &tun.Link{Index: index, MTU: 1280, Addrs: []netip.Prefix{pfx("fd00:19::2/64")}},
			Routes: []tun.Route{
				{Table: 97, Dst: pfx("fd00:19::/64"), LinkIndex: index},
				{Table: 97, Dst: pfx("2001:db8:19::/48"), Gateway: addr("fd00:19::2"), LinkIndex: index},
			},
		}
	}), want: "EINVAL", check: true},
	{name: "install on tun3: an IPv6 gateway off the link: onlink, so accepted", do: install("v6-gw", func(w *world) *tun.Objects {
		index := w.index["tun3"]
		return &tun.Objects{Routes: []tun.Route{{Table: 97, Dst: pfx("2001:db8:20::/48"), Gateway: addr("fd00:20::1"), LinkIndex: index}}}
	}), want: "ok"},
	{name: "install on tun3: a duplicate address, an MTU too small", do: install("dup", func(w *world) *tun.Objects {
		index := w.index["tun3"]
		return &tun.Objects{Link: &tun.Link{Index: index, MTU: 67, Addrs: []netip.Prefix{pfx("10.9.0.2/24"), pfx("10.9.0.2/24"), pfx("10.9.0.2/16")}}}
	}), want: "EINVAL", check: true},
	{name: "an invalid object: nothing is sent", do: install("invalid", func(w *world) *tun.Objects {
		return &tun.Objects{Routes: []tun.Route{{Table: 0, Dst: pfx("10.1.0.0/16"), Kind: tun.Throw}}}
	}), want: "error", check: true},
	{name: "someone deletes tun3", do: outsideDo(func(w *world) error { return w.out.deleteLink(w.index["tun3"]) }), want: "ok", check: true},
	{name: "install on a gone link", do: install("gone", func(w *world) *tun.Objects {
		index := w.index["tun3"]
		return &tun.Objects{
			Link:   &tun.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{pfx("10.9.0.2/24")}},
			Routes: []tun.Route{{Table: table, Dst: pfx("10.9.0.0/24"), LinkIndex: index}},
		}
	}), want: "ENODEV", check: true},
	{name: "remove objects that are all gone", do: remove("partial"), want: "ok"},

	{name: "someone's wider rule first", do: outsideDo(func(w *world) error { return w.out.addRule(masked5) }), want: "ok"},
	{name: "then vpnd's", do: install("plain5", func(*world) *tun.Objects { return &tun.Objects{Rules: []tun.Rule{plain5}} }), want: "ok", check: true},
	{name: "its delete would hit the wider rule: refused", do: remove("plain5"), want: "ErrAmbiguousRule", check: true},
	{name: "someone deletes their rule: ip's delete hits the first match", do: outsideDo(func(w *world) error { return w.out.deleteRule(plain5) }), want: "ok", check: true},
	{name: "now vpnd's goes", do: remove("plain5"), want: "ok", check: true},
	{name: "removing it again is fine", do: remove("plain5"), want: "ok"},
	{name: "someone's wider rule again", do: outsideDo(func(w *world) error { return w.out.addRule(masked5) }), want: "ok"},
	{name: "someone's delete of a rule that is not there hits the wider one", do: outsideDo(func(w *world) error { return w.out.deleteRule(plain5) }), want: "ok", check: true},
	{name: "someone's delete of a rule that nothing matches", do: outsideDo(func(w *world) error { return w.out.deleteRule(masked5) }), want: "failed"},

	{name: "close vpn-tun's file: the link goes with its routes and addresses", do: closeFile("vpn-tun"), want: "ok", check: true},
	{name: "read: no link; rules and routes without it stay", do: read("vpn-tun"), want: "ok"},
	{name: "restore on the gone link", do: restore("vpn-tun", func(w *world) tun.Repair {
		return tun.Repair{MTU: 1400, Up: true, Addrs: vpn("vpn-tun")(w).Link.Addrs[:1]}
	}), want: "ENODEV"},
	{name: "watch the gone link: gone at once", do: watch("vpn-tun"), want: "ok"},
	{name: "remove the VPN: what is left goes", do: removeAll(vpn("vpn-tun")), want: "ok", check: true},
	{name: "someone adds a route to vpnd's table", do: outsideDo(func(w *world) error {
		return w.out.addRoute(tun.Route{Table: table, Dst: pfx("10.67.0.0/16"), Kind: tun.Throw})
	}), want: "ok", check: true},
	{name: "occupants: someone's route", do: occupants, want: "ok"},
	{name: "the name is free again", do: create("vpn-tun", false), want: "ok", check: true},
	{name: "lockdown's rules alone", do: install("lockdown", only(vpn("vpn-tun"), func(o *tun.Objects) {
		o.Link, o.Routes, o.Rules = nil, nil, o.Rules[4:]
	})), want: "ok", check: true},
	{name: "remove them", do: remove("lockdown"), want: "ok", check: true},
	{name: "close vpn-tun", do: closeFile("vpn-tun"), want: "ok", check: true},
}

// run plays the scenario in w and returns each step's result.
func run(t *testing.T, w *world) []result {
	t.Helper()
	defer func() {
		w.stopWatch()
		for _, f := range w.files {
			f.Close()
		}
	}()
	var out []result
	for _, s := range scenario {
		detail, err := s.do(w)
		r := result{outcome: outcome(err), errText: w.errorText(err), detail: detail, err: err}
		if strings.HasPrefix(s.name, "someone") && err != nil {
			r.outcome = "failed" // `ip` says no errno
			r.errText = ""
		}
		w.settle()
		if w.gone != nil {
			select {
			case <-w.gone:
				r.watch = "gone"
				w.stopWatch()
				w.gone, w.changed = nil, nil
			default:
				select {
				case <-w.changed:
					r.watch = "changed"
				default:
				}
			}
		}
		if s.check {
			r.obs = w.observe()
		}
		out = append(out, r)
	}
	return out
}

// simOutside is sim.External by index.
type simOutside struct{ e sim.External }

func (s simOutside) setDown(index int) error     { return s.e.SetDown(index) }
func (s simOutside) setMTU(index, mtu int) error { return s.e.SetMTU(index, mtu) }
func (s simOutside) deleteAddress(index int, p netip.Prefix) error {
	return s.e.DeleteAddress(index, p)
}
func (s simOutside) flushTable(table int) error    { s.e.FlushTable(table); return nil }
func (s simOutside) addRoute(r tun.Route) error    { return s.e.ReplaceRoute(r) }
func (s simOutside) deleteRoute(r tun.Route) error { return s.e.DeleteRoute(r) }
func (s simOutside) addRule(r tun.Rule) error      { return s.e.AddRule(r) }
func (s simOutside) deleteRule(r tun.Rule) error   { return s.e.DeleteRule(r) }
func (s simOutside) deleteLink(index int) error {
	if !s.e.DeleteLink(index) {
		return unix.ENODEV
	}
	return nil
}

func newFakeWorld(f *tuntest.Fake) *world {
	w := newWorld(f, simOutside{f.External()})
	w.settle = func() {}
	w.observe = func() observation {
		s := f.Snapshot()
		var o observation
		for _, l := range s.Links {
			o.Links = append(o.Links, renderLink(l.Name, l.MTU, l.Up, l.Addresses))
		}
		o.Routes = w.renderRoutes(s.Routes)
		o.Rules = renderRules(s.Rules)
		return o
	}
	return w
}

// TestScenarioFake runs the scenario against the model alone, without
// root: every step gives the outcome the table wants.
func TestScenarioFake(t *testing.T) {
	f := tuntest.New()
	defer f.Close()
	for i, r := range run(t, newFakeWorld(f)) {
		if r.outcome != scenario[i].want {
			t.Errorf("step %d %q: got %s (%v), want %s", i, scenario[i].name, r.outcome, r.err, scenario[i].want)
		}
	}
}

// TestScenarioHonest runs the scenario against the model and against the
// real kernel in a fresh network namespace, and requires the same from
// both at every step: outcome, error words, detail, what the watch said,
// and the whole state wherever the row says check.
func TestScenarioHonest(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	f := tuntest.New()
	defer f.Close()
	fake := run(t, newFakeWorld(f))

	n, err := tun.New(zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	kw := newKernelWorld(t, n)
	real := run(t, kw)

	for i, s := range scenario {
		k, fk := real[i], fake[i]
		if k.outcome != s.want {
			t.Errorf("step %d %q: kernel gave %s (%v), want %s", i, s.name, k.outcome, k.err, s.want)
		}
		if fk.outcome != k.outcome || fk.errText != k.errText {
			t.Errorf("step %d %q: model gave %s (%v), kernel %s (%v)\nmodel:  %s\nkernel: %s", i, s.name, fk.outcome, fk.err, k.outcome, k.err, fk.errText, k.errText)
		}
		if fk.detail != k.detail {
			t.Errorf("step %d %q: reports differ\nmodel:  %s\nkernel: %s", i, s.name, fk.detail, k.detail)
		}
		if fk.watch != k.watch {
			t.Errorf("step %d %q: the watch said %q in the model, %q in the kernel", i, s.name, fk.watch, k.watch)
		}
		if s.check && fk.obs.String() != k.obs.String() {
			t.Errorf("step %d %q: state differs\nmodel:\n%s\nkernel:\n%s", i, s.name, fk.obs, k.obs)
		}
	}
}

// ipOutside changes the kernel with `ip`, as an administrator would.
type ipOutside struct {
	t *testing.T
	w *world
}

func (o ipOutside) ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (o ipOutside) name(index int) string {
	for n, i := range o.w.index {
		if i == index {
			return n
		}
	}
	o.t.Fatalf("no link has index %d", index)
	return ""
}

func famFlag(six bool) string {
	if six {
		return "-6"
	}
	return "-4"
}

func (o ipOutside) setDown(index int) error { return o.ip("link", "set", "dev", o.name(index), "down") }
func (o ipOutside) setMTU(index, mtu int) error {
	return o.ip("link", "set", "dev", o.name(index), "mtu", strconv.Itoa(mtu))
}
func (o ipOutside) deleteAddress(index int, p netip.Prefix) error {
	return o.ip("addr", "del", p.String(), "dev", o.name(index))
}
func (o ipOutside) deleteLink(index int) error { return o.ip("link", "del", "dev", o.name(index)) }

func (o ipOutside) flushTable(table int) error {
	for _, fam := range []string{"-4", "-6"} {
		out, err := exec.Command("ip", fam, "route", "flush", "table", strconv.Itoa(table)).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "FIB table does not exist") {
			return fmt.Errorf("ip route flush: %v: %s", err, out)
		}
	}
	return nil
}

// addRoute replaces the route to r's destination, as `ip route replace`.
func (o ipOutside) addRoute(r tun.Route) error { return o.route("replace", r) }

func (o ipOutside) deleteRoute(r tun.Route) error { return o.route("del", r) }

// route runs `ip route VERB` with r's description.
func (o ipOutside) route(verb string, r tun.Route) error {
	args := []string{famFlag(r.Dst.Addr().Is6()), "route", verb}
	switch r.Kind {
	case tun.Throw:
		args = append(args, "throw")
	case tun.Unreachable:
		args = append(args, "unreachable")
	}
	args = append(args, r.Dst.String())
	if r.Gateway.IsValid() {
		args = append(args, "via", r.Gateway.String())
	}
	if r.LinkIndex != 0 {
		args = append(args, "dev", o.name(r.LinkIndex))
	}
	return o.ip(append(args, "table", strconv.Itoa(r.Table))...)
}

func ruleArgs(verb string, r tun.Rule) []string {
	args := []string{famFlag(r.Family == v6), "rule", verb, "priority", strconv.Itoa(r.Priority),
		"uidrange", fmt.Sprintf("%d-%d", r.UIDStart, r.UIDEnd)}
	if r.Mask != 0 {
		args = append(args, "fwmark", fmt.Sprintf("0/%#x", r.Mask))
	}
	if r.Action == tun.Refuse {
		return append(args, "unreachable")
	}
	return append(args, "lookup", strconv.Itoa(r.Table))
}

func (o ipOutside) addRule(r tun.Rule) error    { return o.ip(ruleArgs("add", r)...) }
func (o ipOutside) deleteRule(r tun.Rule) error { return o.ip(ruleArgs("del", r)...) }

// newKernelWorld is the scenario's world in the test's namespace, driven
// by n. Its settle makes a change that only a second watch selects and
// waits for that watch's token: the monitor reads the kernel's
// announcements in order, so everything before is then processed.
func newKernelWorld(t *testing.T, n *tun.Netlink) *world {
	w := newWorld(n, nil)
	w.out = ipOutside{t: t, w: w}
	_, marker, err := n.Watch(t.Context(), tun.ChangeFilter{Table: 200})
	if err != nil {
		t.Fatal(err)
	}
	marks := 0
	w.settle = func() {
		marks++
		if err := (ipOutside{t: t, w: w}).ip("route", "add", "throw", netip.AddrFrom4([4]byte{10, 200, byte(marks >> 8), byte(marks)}).String(), "table", "200"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-marker:
		case <-time.After(hangGuard):
			t.Fatal("the marker change never reached the watch")
		}
	}
	w.observe = func() observation { return observeKernel(t, w) }
	return w
}

// observeKernel reads the kernel's state with `ip -j`, independently of
// vpnd's own reading of it.
func observeKernel(t *testing.T, w *world) observation {
	t.Helper()
	var o observation
	byName := map[string]int{}
	links := netnstest.IPJSON(t, "addr", "show")
	slices.SortFunc(links, func(a, b map[string]any) int { return int(a["ifindex"].(float64) - b["ifindex"].(float64)) })
	for _, l := range links {
		name := l["ifname"].(string)
		byName[name] = int(l["ifindex"].(float64))
		if name == "lo" {
			continue
		}
		var addrs []netip.Prefix
		for _, a := range l["addr_info"].([]any) {
			a := a.(map[string]any)
			addrs = append(addrs, netip.PrefixFrom(addr(a["local"].(string)), int(a["prefixlen"].(float64))))
		}
		o.Links = append(o.Links, renderLink(name, int(l["mtu"].(float64)), slices.Contains(l["flags"].([]any), any("UP")), addrs))
	}
	routes := tuntest.KernelRoutes(t, table, byName)
	o.Routes = w.renderRoutes(routes)
	var rules []tun.Rule
	for _, fam := range []int{v4, v6} {
		for _, j := range netnstest.IPJSON(t, famFlag(fam == v6), "rule", "show") {
			r := tun.Rule{Family: fam, Priority: int(j["priority"].(float64))}
			if r.Priority != prio && r.Priority != lock {
				continue
			}
			for k, v := range j {
				switch k {
				case "priority", "src":
				case "fwmask":
					m, err := strconv.ParseUint(v.(string), 0, 32)
					if err != nil {
						t.Fatal(err)
					}
					r.Mask = uint32(m)
				case "fwmark":
					if v != "0" {
						t.Errorf("rule with fwmark %v: %v", v, j)
					}
				case "uid_start":
					r.UIDStart = uint32(v.(float64))
				case "uid_end":
					r.UIDEnd = uint32(v.(float64))
				case "table":
					r.Table, _ = strconv.Atoi(v.(string))
				case "action":
					r.Action = tun.Refuse
				default:
					t.Errorf("rule with %s: %v", k, j)
				}
			}
			rules = append(rules, r)
		}
	}
	o.Rules = renderRules(rules)
	return o
}
