package tun_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/tun"
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

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// newNetlink opens vpnd's kernel in the test's namespace and closes it
// (stopping its monitor) when the test ends.
func newNetlink(t *testing.T) *tun.Netlink {
	t.Helper()
	n, err := tun.New(zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// createTUN creates a TUN link and closes its fd, which removes the link,
// when the test ends (closing it earlier is fine).
func createTUN(t *testing.T, n *tun.Netlink, name string) (*os.File, int) {
	t.Helper()
	f, index, err := n.CreateTUN(name, tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, index
}

// fullVPN is a VPN of every kind of object vpnd installs: two families of
// addresses (one a host address), prefix routes, default routes, routes
// through a gateway, excluded (throw) routes, fail-closed (unreachable)
// routes, owner rules with the protect mask, rules for other uid ranges,
// and lockdown's unreachable rules.
func fullVPN(index int) *tun.Objects {
	return &tun.Objects{
		Link: &tun.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{
			pfx("10.8.0.2/24"), pfx("10.8.1.2/32"), pfx("fd00:8::2/64"), pfx("fd00:9::2/128"),
		}},
		Routes: []tun.Route{
			{Table: table, Dst: pfx("10.8.0.0/24"), LinkIndex: index},
			{Table: table, Dst: pfx("fd00:8::/64"), LinkIndex: index},
			{Table: table, Dst: pfx("0.0.0.0/0"), LinkIndex: index},
			{Table: table, Dst: pfx("::/0"), LinkIndex: index},
			{Table: table, Dst: pfx("198.51.100.0/24"), Gateway: ip("10.8.0.1"), LinkIndex: index},
			{Table: table, Dst: pfx("2001:db8:1::/48"), Gateway: ip("fd00:8::1"), LinkIndex: index},
			{Table: table, Dst: pfx("192.0.2.7/32"), LinkIndex: index},
			{Table: table, Dst: pfx("192.168.0.0/16"), Kind: tun.Throw},
			{Table: table, Dst: pfx("2001:db8:2::/48"), Kind: tun.Throw},
			{Table: table, Dst: pfx("203.0.113.0/24"), Kind: tun.Unreachable},
			{Table: table, Dst: pfx("2001:db8:3::/48"), Kind: tun.Unreachable},
		},
		Rules: []tun.Rule{
			{Family: v4, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
			{Family: v4, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
			{Family: v4, Priority: prio, Table: table, UIDStart: 1001, UIDEnd: 4294967294},
			{Family: v6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
			{Family: v6, Priority: prio, Table: table, UIDStart: 0, UIDEnd: 999},
			{Family: v6, Priority: prio, Table: table, UIDStart: 1001, UIDEnd: 4294967294},
			{Family: v4, Priority: lock, UIDStart: 2000, UIDEnd: 2999, Mask: mark, Action: tun.Refuse},
			{Family: v6, Priority: lock, UIDStart: 2000, UIDEnd: 2999, Mask: mark, Action: tun.Refuse},
		},
	}
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

// linkIndexes maps every link's name to its index, from `ip link`.
func linkIndexes(t *testing.T) map[string]int {
	t.Helper()
	m := map[string]int{}
	for _, l := range netnstest.IPJSON(t, "link", "show") {
		m[l["ifname"].(string)] = int(l["ifindex"].(float64))
	}
	return m
}

// kernelRoutes reads table's routes of both families, in vpnd's terms.
func kernelRoutes(t *testing.T, tbl int) []tun.Route {
	t.Helper()
	return tuntest.KernelRoutes(t, tbl, linkIndexes(t))
}

// kernelRules reads the rules of both families at the priorities with
// `ip -j rule`, in vpnd's terms, in the kernel's order. Rules with
// selectors vpnd never sets are left out.
func kernelRules(t *testing.T, prios ...int) []tun.Rule {
	t.Helper()
	var out []tun.Rule
	for _, fam := range []int{v4, v6} {
		flag := map[int]string{v4: "-4", v6: "-6"}[fam]
	rules:
		for _, j := range netnstest.IPJSON(t, flag, "rule", "show") {
			p := int(j["priority"].(float64))
			if !slices.Contains(prios, p) {
				continue
			}
			r := tun.Rule{Family: fam, Priority: p}
			for k, v := range j {
				switch k {
				case "priority":
				case "src":
					if v != "all" {
						continue rules
					}
				case "fwmark":
					if v != "0" {
						continue rules
					}
				case "fwmask":
					m, err := strconv.ParseUint(v.(string), 0, 32)
					must(t, err)
					r.Mask = uint32(m)
				case "uid_start":
					r.UIDStart = uint32(v.(float64))
				case "uid_end":
					r.UIDEnd = uint32(v.(float64))
				case "table":
					tb, err := strconv.Atoi(v.(string))
					must(t, err)
					r.Table = tb
				case "action":
					if v != "unreachable" {
						continue rules
					}
					r.Action = tun.Refuse
				default:
					continue rules
				}
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
	Tentative     bool
	Scope         string
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
		out = append(out, addrInfo{Prefix: p, NoPrefixRoute: a["noprefixroute"] == true, Tentative: a["tentative"] == true, Scope: a["scope"].(string)})
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
// table and rules at the two priorities, as `ip` reports them.
func kernelHolds(t *testing.T, what string, routes []tun.Route, rules []tun.Rule) {
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
