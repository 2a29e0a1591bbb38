package tun

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
)

// Every test binary run checks that nothing leaked a goroutine: in the
// parent, and in each child that runs one test in its own namespace.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	table = 98
	prio  = 10000
	lock  = prio + 1 // where lockdown's unreachable rules sit
	mark  = 0x20000
	v4    = unix.AF_INET
	v6    = unix.AF_INET6
)

// hangGuard only keeps a broken kernel layer from hanging a test; it is
// not a timing claim.
const hangGuard = 10 * time.Second

var places = manager.Places{IfName: "vpn-tun", Table: table, Priorities: []int{prio, lock}}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// openNetlink opens vpnd's kernel in the test's namespace, with log (a
// test logger if nil) and no firewall, and closes it (stopping its
// monitor) when the test ends.
func openNetlink(t *testing.T, log *zap.Logger) *Netlink {
	t.Helper()
	if log == nil {
		log = zaptest.NewLogger(t)
	}
	n, err := New(log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// makeTUN creates a TUN link whose fd is closed, removing the link, when
// the test ends (closing it earlier is fine).
func makeTUN(t *testing.T, n *Netlink, name string) (*os.File, int) {
	t.Helper()
	f, index, err := n.CreateTUN(name, manager.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, index
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	netnstest.IP(t, args...)
}

// vpnObjects is what a VPN holds in the kernel: its link's settings and
// addresses, its routes and its rules.
type vpnObjects struct {
	link   manager.Link
	routes []manager.Route
	rules  []manager.Rule
}

// fullVPN is a VPN of every kind of object vpnd makes: two families of
// addresses (one a host address), prefix routes, default routes, routes
// through a gateway, excluded (throw) routes, fail-closed (unreachable)
// routes, owner rules with the protect mask, rules for other uid ranges,
// and lockdown's unreachable rules.
func fullVPN(index int) vpnObjects {
	return vpnObjects{
		link: manager.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{
			pfx("10.8.0.2/24"), pfx("10.8.1.2/32"), pfx("fd00:8::2/64"), pfx("fd00:9::2/128"),
		}},
		routes: []manager.Route{
			{Dst: pfx("10.8.0.0/24"), LinkIndex: index},
			{Dst: pfx("fd00:8::/64"), LinkIndex: index},
			{Dst: pfx("0.0.0.0/0"), LinkIndex: index},
			{Dst: pfx("::/0"), LinkIndex: index},
			{Dst: pfx("198.51.100.0/24"), Gateway: ip("10.8.0.1"), LinkIndex: index},
			{Dst: pfx("2001:db8:1::/48"), Gateway: ip("fd00:8::1"), LinkIndex: index},
			{Dst: pfx("192.0.2.7/32"), LinkIndex: index},
			{Dst: pfx("192.168.0.0/16"), Kind: manager.Throw},
			{Dst: pfx("2001:db8:2::/48"), Kind: manager.Throw},
			{Dst: pfx("203.0.113.0/24"), Kind: manager.Unreachable},
			{Dst: pfx("2001:db8:3::/48"), Kind: manager.Unreachable},
		},
		rules: []manager.Rule{
			{Family: v4, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
			{Family: v4, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
			{Family: v4, Priority: prio, Table: table, UIDStart: 1001, UIDEnd: 4294967294},
			{Family: v6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
			{Family: v6, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
			{Family: v6, Priority: prio, Table: table, UIDStart: 1001, UIDEnd: 4294967294},
			{Family: v4, Priority: lock, UIDStart: 2000, UIDEnd: 2999, Mask: mark, Action: manager.Refuse},
			{Family: v6, Priority: lock, UIDStart: 2000, UIDEnd: 2999, Mask: mark, Action: manager.Refuse},
		},
	}
}

// upOps are the ops of a bring-up, in the reconciler's order: the link's
// settings and addresses, up, then routes, then rules.
func (o vpnObjects) upOps() []manager.Op {
	var ops []manager.Op
	if o.link.Index != 0 {
		ops = append(ops, manager.Op{Kind: manager.SetLink, Link: manager.Link{Index: o.link.Index, MTU: o.link.MTU}})
		for _, a := range o.link.Addrs {
			ops = append(ops, manager.Op{Kind: manager.AddAddr, Link: manager.Link{Index: o.link.Index}, Addr: a})
		}
		ops = append(ops, manager.Op{Kind: manager.LinkUp, Link: manager.Link{Index: o.link.Index}})
	}
	for _, r := range o.routes {
		ops = append(ops, manager.Op{Kind: manager.PutRoute, Table: table, Route: r})
	}
	for _, r := range o.rules {
		ops = append(ops, manager.Op{Kind: manager.AddRule, Table: table, Rule: r})
	}
	return ops
}

// downOps are the ops of a teardown, in the reconciler's order: rules,
// the routes that do not go with the link, the link.
func (o vpnObjects) downOps() []manager.Op {
	var ops []manager.Op
	for _, r := range o.rules {
		ops = append(ops, manager.Op{Kind: manager.DelRule, Table: table, Rule: r})
	}
	for _, r := range o.routes {
		if !r.OnLink() || o.link.Index == 0 {
			ops = append(ops, manager.Op{Kind: manager.DelRoute, Table: table, Route: r})
		}
	}
	if o.link.Index != 0 {
		ops = append(ops, manager.Op{Kind: manager.DelLink, Link: manager.Link{Index: o.link.Index}})
	}
	return ops
}

// applyAll applies ops in one Apply and fails the test unless every op
// took.
func applyAll(t *testing.T, n *Netlink, ops ...manager.Op) {
	t.Helper()
	failed := false
	for i, e := range applyResults(t, n, ops...) {
		if e != nil {
			t.Errorf("%s: %v", ops[i], e)
			failed = true
		}
	}
	if failed {
		t.FailNow()
	}
}

// applyResults applies ops in one Apply and returns each op's result; a
// lost answer fails the test.
func applyResults(t *testing.T, n *Netlink, ops ...manager.Op) []error {
	t.Helper()
	results, err := n.Apply(ops)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(results) != len(ops) {
		t.Fatalf("Apply gave %d results for %d ops", len(results), len(ops))
	}
	return results
}

// outcome names an op's result: "ok", or the errno's name.
func outcome(err error) string {
	var errno unix.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &errno):
		return unix.ErrnoName(errno)
	}
	return "error: " + err.Error()
}

func readAll(t *testing.T, n *Netlink, links ...int) *manager.Have {
	t.Helper()
	h, err := n.Read(manager.Query{Places: places, Links: links, What: manager.PartAll})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// strs renders things sorted, so that sets compare as text and a
// difference reads well.
func strs[T fmt.Stringer](xs []T) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// addrStrs renders addresses sorted, those without vpnd's flags marked.
func addrStrs(as []manager.Addr) string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.Prefix.String()
		if a.Foreign {
			out[i] += " (foreign)"
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// linkIndexes maps every link's name to its index, from `ip link`.
func linkIndexes(t *testing.T) map[string]int {
	t.Helper()
	m := map[string]int{}
	for _, l := range netnstest.IPJSON(t, "link", "show") {
		m[l["ifname"].(string)] = int(l["ifindex"].(float64))
	}
	return m
}

// kernelRoutes reads table's routes of both families with `ip`, in
// vpnd's terms.
func kernelRoutes(t *testing.T, tbl int) []manager.Route {
	t.Helper()
	var out []manager.Route
	for _, r := range tuntest.KernelRoutes(t, tbl, linkIndexes(t)) {
		out = append(out, r.Route)
	}
	return out
}

// kernelRules reads the rules of both families at the priorities with
// `ip -j rule`, in vpnd's terms, in the kernel's order. A rule with
// selectors vpnd never sets has Selectors "other".
func kernelRules(t *testing.T, prios ...int) []manager.Rule {
	t.Helper()
	var out []manager.Rule
	for _, fam := range []int{v4, v6} {
		flag := map[int]string{v4: "-4", v6: "-6"}[fam]
		for _, j := range netnstest.IPJSON(t, flag, "rule", "show") {
			p := int(j["priority"].(float64))
			if !slices.Contains(prios, p) {
				continue
			}
			r := manager.Rule{Family: fam, Priority: p}
			uid := false
			for k, v := range j {
				switch k {
				case "priority":
				case "src":
					if v != "all" {
						r.Selectors = "other"
					}
				case "fwmark":
					m, err := strconv.ParseUint(v.(string), 0, 32)
					must(t, err)
					r.Mark = uint32(m)
				case "fwmask":
					m, err := strconv.ParseUint(v.(string), 0, 32)
					must(t, err)
					r.Mask = uint32(m)
				case "uid_start":
					r.UIDStart, uid = uint32(v.(float64)), true
				case "uid_end":
					r.UIDEnd = uint32(v.(float64))
				case "table":
					tb, err := strconv.Atoi(v.(string))
					must(t, err)
					r.Table = tb
				case "protocol":
					// Not a selector: vpnd reads it as its own shape.
				case "goto":
					r.Action, r.Selectors = manager.OtherAction, "other"
				case "action":
					if v == "unreachable" {
						r.Action = manager.Refuse
					} else {
						r.Action, r.Selectors = manager.OtherAction, "other"
					}
				default:
					r.Selectors = "other"
				}
			}
			if !uid {
				r.Selectors = "other"
			}
			out = append(out, r)
		}
	}
	return out
}

// linkJSON is `ip -j addr show dev NAME`, or nil if the link is gone.
func linkJSON(t *testing.T, name string) map[string]any {
	t.Helper()
	out, err := exec.Command("ip", "-j", "addr", "show", "dev", name).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "does not exist") {
			return nil
		}
		t.Fatalf("ip addr show dev %s: %v\n%s", name, err, out)
	}
	var v []map[string]any
	must(t, json.Unmarshal(out, &v))
	if len(v) != 1 {
		t.Fatalf("ip addr show dev %s: %s", name, out)
	}
	return v[0]
}

func linkExists(t *testing.T, name string) bool {
	t.Helper()
	return linkJSON(t, name) != nil
}

// addrInfo is one address of `ip -j addr`.
type addrInfo struct {
	Prefix        netip.Prefix
	NoPrefixRoute bool
	NoDAD         bool
	Tentative     bool
}

func (a addrInfo) String() string { return a.Prefix.String() }

func linkAddrs(t *testing.T, name string) []addrInfo {
	t.Helper()
	l := linkJSON(t, name)
	if l == nil {
		return nil
	}
	var out []addrInfo
	for _, a := range l["addr_info"].([]any) {
		a := a.(map[string]any)
		p := netip.PrefixFrom(ip(a["local"].(string)), int(a["prefixlen"].(float64)))
		out = append(out, addrInfo{Prefix: p, NoPrefixRoute: a["noprefixroute"] == true, NoDAD: a["nodad"] == true, Tentative: a["tentative"] == true})
	}
	return out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	return strings.TrimSpace(string(b))
}

// kernelHolds fails the test unless the kernel holds exactly routes in
// vpnd's table and rules at its two priorities, as `ip` reports them.
func kernelHolds(t *testing.T, what string, routes []manager.Route, rules []manager.Rule) {
	t.Helper()
	masked := slices.Clone(routes)
	for i := range masked {
		masked[i].Dst = masked[i].Dst.Masked()
	}
	if got, want := strs(kernelRoutes(t, table)), strs(masked); got != want {
		t.Errorf("%s: table %d holds\n%s\nwant\n%s", what, table, got, want)
	}
	if got, want := strs(kernelRules(t, prio, lock)), strs(rules); got != want {
		t.Errorf("%s: rules at %d and %d are\n%s\nwant\n%s", what, prio, lock, got, want)
	}
}
