package manager_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
	"github.com/vpnd/vpnd/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Both kernels satisfy the interface the manager owns.
var (
	_ manager.Kernel = (*tun.Netlink)(nil)
	_ manager.Kernel = (*tuntest.Fake)(nil)
)

const (
	table    = 98
	priority = 10000
	mark     = 0x20000
)

// pools are the default address pools of a NORMAL user.
var pools = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("172.16.0.0/12"), netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fc00::/7")}

var (
	root   = manager.Caller{UID: 0, PID: 100, User: "root", Type: auth.Admin, Conn: 1}
	alice  = manager.Caller{UID: 1000, PID: 200, User: "alice", Type: auth.Normal, Conn: 2, AddressPools: pools}
	bob    = manager.Caller{UID: 1001, PID: 300, User: "bob", Type: auth.Normal, Conn: 3, AddressPools: pools}
	guest  = manager.Caller{UID: 65534, PID: 400, User: "nobody", Type: auth.Guest, Conn: 4}
	admin2 = manager.Caller{UID: 4002, PID: 500, Type: auth.Admin, Conn: 5}
)

type users map[string]config.User

func (u users) ResolveUser(s string) (config.User, error) {
	if x, ok := u[s]; ok {
		return x, nil
	}
	return config.User{}, fmt.Errorf("unknown user %q", s)
}

var testUsers = users{
	"alice": {Name: "alice", UID: 1000}, "bob": {Name: "bob", UID: 1001},
	"carol": {Name: "carol", UID: 1002}, "0": {Name: "root", UID: 0},
}

func parse(t *testing.T, js string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(json.RawMessage(js), testUsers)
	if err != nil {
		t.Fatalf("parse %s: %v", js, err)
	}
	return cfg
}

// newManager returns a manager on a fresh fake kernel, with a recorder of
// its notifications, and checks at the end that nothing is left.
func newManager(t *testing.T) (*manager.Manager, *tuntest.Fake, *events) {
	t.Helper()
	k := tuntest.New()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark})
	if _, err := m.Start(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	cancel := m.Subscribe(ev.add)
	t.Cleanup(func() {
		m.Shutdown()
		cancel()
		k.Close()
		if s := k.Snapshot(); !clean(s) {
			t.Errorf("kernel not clean after shutdown: %+v", s)
		}
	})
	return m, k, ev
}

// clean reports whether the kernel holds nothing of vpnd's.
func clean(s tuntest.State) bool {
	return len(s.Links)+len(s.Routes)+len(s.Rules) == 0 && s.Firewall == nil
}

type events struct {
	mu  sync.Mutex
	got []protocol.StateChanged
}

func (e *events) add(ev protocol.StateChanged) {
	e.mu.Lock()
	e.got = append(e.got, ev)
	e.mu.Unlock()
}

func (e *events) reasons() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var rs []string
	for _, ev := range e.got {
		rs = append(rs, ev.Reason)
	}
	return rs
}

// waitReasons polls until the recorded reasons equal want; teardown on a
// link event is asynchronous. This is settling, not a timing claim.
func (e *events) waitReasons(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := e.reasons()
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reasons = %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func setUp(t *testing.T, m *manager.Manager, c manager.Caller, js string) (*os.File, *protocol.VpnInfo) {
	t.Helper()
	f, info, _, err := m.SetUp(c, parse(t, js))
	if err != nil {
		t.Fatalf("setUp by uid %d: %v", c.UID, err)
	}
	t.Cleanup(func() { f.Close() })
	return f, info
}

func wantCode(t *testing.T, err error, code errs.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("got success, want %d", code)
	}
	if got := errs.CodeOf(err); got != code {
		t.Fatalf("got %v, want code %d", err, code)
	}
}

func TestSetUpAppliesConfig(t *testing.T) {
	m, k, ev := newManager(t)
	_, info := setUp(t, m, alice, `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["198.51.100.7/24",
		{"destination":{"address":{"address":"198.51.100.128"},"prefixLength":25},"isExcludedRoute":true},"2001:db8::/32"],"mtu":1400}`)
	s := k.Snapshot()
	if len(s.Links) != 1 || s.Links[0].Name != "vpn-tun" || !s.Links[0].Up || s.Links[0].MTU != 1400 || len(s.Links[0].Addresses) != 2 {
		t.Fatalf("links = %+v", s.Links)
	}
	idx := s.Links[0].Index
	// Each address's prefix route is in vpnd's table, where only the
	// covered uids see it.
	wantRoutes := []sim.Route{
		{Table: table, Route: manager.Route{Dst: mustPrefix("10.8.0.0/24"), LinkIndex: idx}},
		{Table: table, Route: manager.Route{Dst: mustPrefix("198.51.100.0/24"), LinkIndex: idx}},
		{Table: table, Route: manager.Route{Dst: mustPrefix("198.51.100.128/25"), Kind: manager.Throw}},
		{Table: table, Route: manager.Route{Dst: mustPrefix("2001:db8::/32"), LinkIndex: idx}},
		{Table: table, Route: manager.Route{Dst: mustPrefix("fd00::/64"), LinkIndex: idx}},
	}
	tuntest.SortRoutes(wantRoutes)
	if fmt.Sprint(s.Routes) != fmt.Sprint(wantRoutes) {
		t.Errorf("routes = %v\nwant %v", s.Routes, wantRoutes)
	}
	wantRules := []manager.Rule{
		{Family: unix.AF_INET, Priority: priority, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
		{Family: unix.AF_INET6, Priority: priority, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
	}
	if fmt.Sprint(s.Rules) != fmt.Sprint(wantRules) {
		t.Errorf("rules = %v\nwant %v", s.Rules, wantRules)
	}
	if info.Index != idx || info.Owner.UID != 1000 || info.Owner.User != "alice" ||
		fmt.Sprint(info.Routes) != "[198.51.100.0/24 2001:db8::/32]" || fmt.Sprint(info.ExcludedRoutes) != "[198.51.100.128/25]" {
		t.Errorf("info = %+v", info)
	}
	if st := m.Status(); st.State != protocol.StateConnected || st.VPN == nil || st.VPN.Index != idx {
		t.Errorf("status = %+v", st)
	}
	if err := m.Destroy(alice); err != nil {
		t.Fatal(err)
	}
	if s := k.Snapshot(); !clean(s) {
		t.Fatalf("after destroy: %+v", s)
	}
	ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonDestroy)
	if st := m.Status(); st.State != protocol.StateDisconnected || st.VPN != nil {
		t.Errorf("status = %+v", st)
	}
}

// offload creates the TUN with a virtio_net_hdr (the kernel's
// IFF_VNET_HDR) and nothing else: the same link, routes and rules as
// without, and VpnInfo reports it either way.
func TestOffload(t *testing.T) {
	const cfg = `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]`
	var plain tuntest.State
	for _, offload := range []bool{false, true} {
		t.Run(fmt.Sprint("offload ", offload), func(t *testing.T) {
			m, k, _ := newManager(t)
			js := cfg + "}"
			if offload {
				js = cfg + `,"offload":true}`
			}
			f, info := setUp(t, m, alice, js)
			s := k.Snapshot()
			if len(s.Links) != 1 || s.Links[0].VnetHdr != offload {
				t.Fatalf("links %+v, want one with VnetHdr %v", s.Links, offload)
			}
			if info.Offload != offload || m.Status().VPN.Offload != offload {
				t.Errorf("VpnInfo offload %v, status %v; want %v", info.Offload, m.Status().VPN.Offload, offload)
			}
			s.Links[0].VnetHdr = false
			if offload && !s.Equal(plain) {
				t.Errorf("with offload the kernel holds\n%+v\nwithout\n%+v", s, plain)
			}
			plain = s
			f.Close()
			if err := m.Destroy(alice); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPrefixRoutes: which prefix routes an address brings into the table.
func TestPrefixRoutes(t *testing.T) {
	for _, tc := range []struct {
		name, cfg string
		want      []string // routes in the table, sorted
	}{
		{"host addresses bring none", `{"addresses":["10.8.0.2/32","fd00::2/128"],"routes":["198.51.100.0/24","2001:db8::/32"]}`,
			[]string{"198.51.100.0/24 dev #2 table 98", "2001:db8::/32 dev #2 table 98"}},
		{"two addresses in one subnet bring one", `{"addresses":["10.8.0.2/24","10.8.0.3/24"],"routes":["198.51.100.0/24"],"allowFamilyBypass":true}`,
			[]string{"10.8.0.0/24 dev #2 table 98", "198.51.100.0/24 dev #2 table 98"}},
		{"a route for the prefix takes its place", `{"addresses":["10.8.0.2/24"],"allowFamilyBypass":true,"routes":[{"destination":{"address":{"address":"10.8.0.0"},"prefixLength":24},"gateway":{"address":"10.8.0.1"}},"198.51.100.0/24"]}`,
			[]string{"10.8.0.0/24 via 10.8.0.1 dev #2 table 98", "198.51.100.0/24 dev #2 table 98"}},
		{"an excluded prefix takes its place", `{"addresses":["10.8.0.2/24"],"allowFamilyBypass":true,"routes":["0.0.0.0/0",{"destination":{"address":{"address":"10.8.0.0"},"prefixLength":24},"isExcludedRoute":true}]}`,
			[]string{"throw 10.8.0.0/24 table 98", "0.0.0.0/0 dev #2 table 98"}},
		{"a family not accepted brings none", `{"addresses":["10.8.0.2/24","fd00::2/64"],"isIPv6Accepted":false,"routes":["198.51.100.0/24"],"allowFamilyBypass":true}`,
			[]string{"10.8.0.0/24 dev #2 table 98", "198.51.100.0/24 dev #2 table 98"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, _ := newManager(t)
			_, info := setUp(t, m, root, tc.cfg)
			var got []string
			for _, r := range k.Snapshot().Routes {
				got = append(got, r.String())
			}
			// VpnInfo names the gateway of each route that has one.
			wantGateways := "map[]"
			if strings.Contains(tc.cfg, "gateway") {
				wantGateways = "map[10.8.0.0/24:10.8.0.1]"
			}
			if got := fmt.Sprint(info.RouteGateways); got != wantGateways {
				t.Errorf("routeGateways = %s, want %s", got, wantGateways)
			}
			slices.Sort(got)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("routes = %q\nwant %q", got, want)
			}
		})
	}
}

// TestRulesByOwner checks who a VPN covers (docs/routing.md) and the rule
// shapes for each kind of owner.
func TestRulesByOwner(t *testing.T) {
	const max = 4294967294
	for _, tc := range []struct {
		name   string
		caller manager.Caller
		cfg    string
		want   []manager.Rule
		// covered is VpnInfo's coveredUids.
		covered string
	}{
		{"normal owner: own uid with fwmark", alice, `{"addresses":["10.8.0.2/24"]}`,
			[]manager.Rule{{UIDStart: 1000, UIDEnd: 1000, Mask: mark}}, "[1000-1000]"},
		{"normal owner trusting itself", alice, `{"addresses":["10.8.0.2/24"],"trustedApplications":["alice"]}`,
			[]manager.Rule{{UIDStart: 1000, UIDEnd: 1000, Mask: mark}}, "[1000-1000]"},
		{"normal owner blocking itself covers nothing", alice, `{"addresses":["10.8.0.2/24"],"blockedApplications":["alice"]}`,
			nil, "[]"},
		{"admin root: itself with fwmark, everyone else without", root, `{"addresses":["10.8.0.2/24"]}`,
			[]manager.Rule{{UIDStart: 0, UIDEnd: 0, Mask: mark}, {UIDStart: 1, UIDEnd: max}}, "[0-4294967294]"},
		{"admin in the middle of the uid space", admin2, `{"addresses":["10.8.0.2/24"]}`,
			[]manager.Rule{{UIDStart: 4002, UIDEnd: 4002, Mask: mark}, {UIDStart: 0, UIDEnd: 4001}, {UIDStart: 4003, UIDEnd: max}}, "[0-4294967294]"},
		{"admin trusting others only", root, `{"addresses":["10.8.0.2/24"],"trustedApplications":["alice","bob","carol"]}`,
			[]manager.Rule{{UIDStart: 1000, UIDEnd: 1002}}, "[1000-1002]"},
		{"admin blocking others", root, `{"addresses":["10.8.0.2/24"],"blockedApplications":["bob"]}`,
			[]manager.Rule{{UIDStart: 0, UIDEnd: 0, Mask: mark}, {UIDStart: 1, UIDEnd: 1000}, {UIDStart: 1002, UIDEnd: max}}, "[0-1000 1002-4294967294]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, _ := newManager(t)
			_, info := setUp(t, m, tc.caller, tc.cfg)
			if got := fmt.Sprint(info.CoveredUIDs); got != tc.covered || info.CoveredUIDs == nil {
				t.Errorf("coveredUids = %s, want %s", got, tc.covered)
			}
			// An IPv4-only VPN has the same rules for IPv6, where the
			// table's default is unreachable: the other family fails closed.
			var want []manager.Rule
			for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
				for _, r := range tc.want {
					r.Family, r.Priority, r.Table = fam, priority, table
					want = append(want, r)
				}
			}
			if got := k.Snapshot().Rules; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("rules = %v\nwant  %v", got, want)
			}
		})
	}
}

func TestSetUpCheckOrder(t *testing.T) {
	m, k, _ := newManager(t)
	cfg := `{"addresses":["10.8.0.2/24"]}`
	_, _, _, err := m.SetUp(guest, parse(t, cfg))
	wantCode(t, err, errs.CodeGuestDenied)
	_, _, _, err = m.SetUp(alice, parse(t, `{"addresses":["10.8.0.2/24"],"trustedApplications":["bob"]}`))
	wantCode(t, err, errs.CodePermission)
	if s := k.Snapshot(); len(s.Links) != 0 {
		t.Fatalf("refused setUp touched the kernel: %+v", s)
	}
	setUp(t, m, alice, cfg)
	before := k.Snapshot()
	// With a VPN up: a guest still gets 2203001, a NORMAL caller naming
	// another user still gets 201, everyone else 2203002.
	_, _, _, err = m.SetUp(guest, parse(t, cfg))
	wantCode(t, err, errs.CodeGuestDenied)
	_, _, _, err = m.SetUp(bob, parse(t, `{"addresses":["10.8.0.2/24"],"blockedApplications":["alice"]}`))
	wantCode(t, err, errs.CodePermission)
	for _, c := range []manager.Caller{alice, bob, root} {
		_, _, _, err = m.SetUp(c, parse(t, cfg))
		wantCode(t, err, errs.CodeVPNExists)
	}
	if !k.Snapshot().Equal(before) {
		t.Fatal("refused setUp changed the kernel")
	}
}

// TestOtherFamilyFailsClosed: for a family the VPN does not accept, the
// covered uids get rules too and the table an unreachable default, unless
// allowFamilyBypass.
func TestOtherFamilyFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name, cfg    string
		routes       []string
		ruleFamilies []int
	}{
		{"ipv4 only", `{"addresses":["10.8.0.2/24"]}`,
			[]string{"0.0.0.0/0 dev #2 table 98", "10.8.0.0/24 dev #2 table 98", "unreachable ::/0 table 98"},
			[]int{unix.AF_INET, unix.AF_INET6}},
		{"ipv6 only", `{"addresses":["fd00::2/64"],"mtu":1280}`,
			[]string{"::/0 dev #2 table 98", "fd00::/64 dev #2 table 98", "unreachable 0.0.0.0/0 table 98"},
			[]int{unix.AF_INET, unix.AF_INET6}},
		{"ipv6 address, not accepted", `{"addresses":["10.8.0.2/24","fd00::2/64"],"isIPv6Accepted":false}`,
			[]string{"0.0.0.0/0 dev #2 table 98", "10.8.0.0/24 dev #2 table 98", "unreachable ::/0 table 98"},
			[]int{unix.AF_INET, unix.AF_INET6}},
		{"ipv4 only, bypass allowed", `{"addresses":["10.8.0.2/24"],"allowFamilyBypass":true}`,
			[]string{"0.0.0.0/0 dev #2 table 98", "10.8.0.0/24 dev #2 table 98"},
			[]int{unix.AF_INET}},
		{"dual stack: nothing to fail", `{"addresses":["10.8.0.2/24","fd00::2/64"]}`,
			[]string{"0.0.0.0/0 dev #2 table 98", "10.8.0.0/24 dev #2 table 98", "::/0 dev #2 table 98", "fd00::/64 dev #2 table 98"},
			[]int{unix.AF_INET, unix.AF_INET6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, _ := newManager(t)
			_, info := setUp(t, m, alice, tc.cfg)
			var got []string
			for _, r := range k.Snapshot().Routes {
				got = append(got, r.String())
			}
			slices.Sort(got)
			want := slices.Clone(tc.routes)
			slices.Sort(want)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("routes = %q\nwant %q", got, want)
			}
			var fams []int
			for _, r := range k.Snapshot().Rules {
				fams = append(fams, r.Family)
				if r.UIDStart != alice.UID || r.Mask != mark {
					t.Errorf("rule %v is not the owner's", r)
				}
			}
			if fmt.Sprint(fams) != fmt.Sprint(tc.ruleFamilies) {
				t.Errorf("rule families %v, want %v", fams, tc.ruleFamilies)
			}
			if want := strings.Contains(tc.cfg, "allowFamilyBypass"); info.AllowFamilyBypass != want {
				t.Errorf("VpnInfo allowFamilyBypass %v", info.AllowFamilyBypass)
			}
		})
	}
}

// TestAddressConfinement: a NORMAL owner's addresses must lie in the
// policy's pools and must not overlap the host's networks (201); an ADMIN
// is not confined. The check comes after the lists and before 2203002.
func TestAddressConfinement(t *testing.T) {
	normal := alice
	normal.AddressPools = []netip.Prefix{mustPrefix("10.0.0.0/8"), mustPrefix("fc00::/7")}
	m, k, _ := newManager(t)
	k.SetHostPrefixes(manager.HostPrefix{Prefix: mustPrefix("10.1.2.3/16"), Ifname: "eth0"},
		manager.HostPrefix{Prefix: mustPrefix("fd00:1::/64"), Ifname: "eth1"})
	for _, tc := range []struct {
		cfg, detail string
	}{
		{`{"addresses":["8.8.8.8/32"]}`, "addresses[0]: 8.8.8.8/32 is outside the address pools allowed to non-admin users (10.0.0.0/8, fc00::/7)"},
		{`{"addresses":["10.8.0.2/24","129.0.0.1/1"]}`, "addresses[1]: 129.0.0.1/1 is outside"},
		{`{"addresses":["10.8.0.2/7"]}`, "addresses[0]: 10.8.0.2/7 is outside"},
		{`{"addresses":["2000::1/3"]}`, "addresses[0]: 2000::1/3 is outside"},
		{`{"addresses":["10.1.200.1/24"]}`, "addresses[0]: 10.1.200.1/24 overlaps 10.1.2.3/16 on eth0"},
		{`{"addresses":["10.0.0.1/8"]}`, "overlaps 10.1.2.3/16 on eth0"},
		{`{"addresses":["fd00:1::5/120"]}`, "overlaps fd00:1::/64 on eth1"},
	} {
		_, _, _, err := m.SetUp(normal, parse(t, tc.cfg))
		wantCode(t, err, errs.CodePermission)
		if !strings.Contains(err.Error(), tc.detail) {
			t.Errorf("%s: %v, want detail containing %q", tc.cfg, err, tc.detail)
		}
	}
	if s := k.Snapshot(); len(s.Links) != 0 {
		t.Fatalf("refused setUp touched the kernel: %+v", s)
	}
	// Outside the pools but ADMIN: fine.
	f, _ := setUp(t, m, root, `{"addresses":["8.8.8.8/32","10.1.200.1/24"]}`)
	// With a VPN up, a confined address still gets 201 before 2203002;
	// the VPN's own addresses do not count as the host's.
	_, _, _, err := m.SetUp(normal, parse(t, `{"addresses":["192.0.2.77/25"]}`))
	wantCode(t, err, errs.CodePermission)
	_, _, _, err = m.SetUp(normal, parse(t, `{"addresses":["10.8.0.2/24"]}`))
	wantCode(t, err, errs.CodeVPNExists)
	f.Close()
	m.Destroy(root)
	// A host-prefix read failure refuses with 19900002 rather than guess.
	k.FailOn("host prefixes", k.Calls("host prefixes")+1, errors.New("injected"))
	_, _, _, err = m.SetUp(normal, parse(t, `{"addresses":["10.8.0.2/24"]}`))
	wantCode(t, err, errs.CodeInternal)
	setUp(t, m, normal, `{"addresses":["10.8.0.2/24","fd00:2::2/64"]}`)
}

// TestOffloadPolicy: --allow-offload decides who may ask for offload (201
// for the others); a VPN without offload is not affected. The check comes
// after GUEST's 2203001 and before 2203002.
func TestOffloadPolicy(t *testing.T) {
	const plain, offload = `{"addresses":["10.8.0.2/24"]}`, `{"addresses":["10.8.0.2/24"],"offload":true}`
	for _, tc := range []struct {
		policy        manager.OffloadPolicy
		normal, admin string // "" allowed, else the refusal's detail
	}{
		{manager.OffloadAll, "", ""},
		{manager.OffloadAdmin, "offload: this vpnd allows it to admin accounts only (--allow-offload admin); caller uid 1000 is normal", ""},
		{manager.OffloadNone, "offload: this vpnd allows it to nobody (--allow-offload none)", "offload: this vpnd allows it to nobody (--allow-offload none)"},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			k := tuntest.New()
			m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, Offload: tc.policy})
			t.Cleanup(func() { m.Shutdown(); k.Close() })
			_, _, _, err := m.SetUp(guest, parse(t, offload))
			wantCode(t, err, errs.CodeGuestDenied)
			for _, c := range []struct {
				who    manager.Caller
				detail string
			}{{alice, tc.normal}, {root, tc.admin}} {
				f, _ := setUp(t, m, c.who, plain)
				f.Close()
				m.Destroy(c.who)
				f, info, _, err := m.SetUp(c.who, parse(t, offload))
				if c.detail == "" {
					if err != nil || !info.Offload {
						t.Fatalf("%s: offload refused: %v", c.who.User, err)
					}
					// With a VPN up, the refusal still comes before 2203002.
					if tc.normal != "" {
						_, _, _, err = m.SetUp(alice, parse(t, offload))
						wantCode(t, err, errs.CodePermission)
					}
					f.Close()
					m.Destroy(c.who)
					continue
				}
				wantCode(t, err, errs.CodePermission)
				var e *errs.Error
				if !errors.As(err, &e) || e.Detail != c.detail {
					t.Errorf("%s: %v, want detail %q", c.who.User, err, c.detail)
				}
				if s := k.Snapshot(); len(s.Links) != 0 {
					t.Fatalf("refused setUp touched the kernel: %+v", s)
				}
			}
		})
	}
	for _, name := range manager.OffloadPolicies {
		if p, err := manager.ParseOffloadPolicy(name); err != nil || p.String() != name {
			t.Errorf("ParseOffloadPolicy(%q) = %v, %v", name, p, err)
		}
	}
	if _, err := manager.ParseOffloadPolicy("admins"); err == nil {
		t.Error("ParseOffloadPolicy took admins")
	}
}

func TestDestroyCheckOrder(t *testing.T) {
	m, k, _ := newManager(t)
	wantCode(t, m.Destroy(guest), errs.CodeGuestDenied)
	if err := m.Destroy(alice); err != nil {
		t.Fatalf("destroy with no VPN: %v", err)
	}
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
	wantCode(t, m.Destroy(guest), errs.CodeGuestDenied)
	wantCode(t, m.Destroy(bob), errs.CodePermission)
	if len(k.Snapshot().Links) != 1 {
		t.Fatal("refused destroy removed the VPN")
	}
	// An ADMIN may destroy anyone's VPN.
	if err := m.Destroy(root); err != nil {
		t.Fatal(err)
	}
	if len(k.Snapshot().Links) != 0 {
		t.Fatal("VPN still there")
	}
}

func udpSocket(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestProtectCheckOrder(t *testing.T) {
	m, k, _ := newManager(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	// The descriptor comes first, even for a guest.
	wantCode(t, m.Protect(guest, int(r.Fd())), errs.CodeInvalidFD)
	wantCode(t, m.Protect(alice, int(r.Fd())), errs.CodeInvalidFD)
	fd := udpSocket(t)
	wantCode(t, m.Protect(guest, fd), errs.CodePermission)
	// With no VPN, NORMAL and ADMIN callers may protect (OpenHarmony's
	// sample protects the tunnel socket before setUp).
	if err := m.Protect(alice, fd); err != nil {
		t.Fatal(err)
	}
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
	fd2 := udpSocket(t)
	wantCode(t, m.Protect(bob, fd2), errs.CodePermission)
	if _, ok := k.Mark(fd2); ok {
		t.Fatal("refused protect marked the socket")
	}
	for _, c := range []manager.Caller{alice, root} {
		if err := m.Protect(c, fd2); err != nil {
			t.Fatalf("protect by uid %d: %v", c.UID, err)
		}
	}
	if got, _ := k.Mark(fd2); got != mark {
		t.Fatalf("mark = %#x, want %#x", got, mark)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tcp, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	// A TCP listener is a stream socket of AF_INET: protect accepts it.
	if err := m.Protect(alice, int(tcp.Fd())); err != nil {
		t.Fatal(err)
	}
}

// TestRollbackAtEveryStep fails each kernel step of a bring-up in turn and
// checks the answer is 19900002 and the kernel is as it was before.
func TestRollbackAtEveryStep(t *testing.T) {
	cfg := `{"addresses":["10.8.0.2/24","10.9.0.2/24","fd00::2/64"],"routes":["198.51.100.0/24","2001:db8::/32",
		{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":28},"isExcludedRoute":true}]}`
	// Count the steps of a successful bring-up.
	probe := tuntest.New()
	m := manager.New(probe, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark})
	if _, err := m.Start(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	started := probe.Steps()
	f, _, _, err := m.SetUp(root, parse(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	steps := probe.Steps() - started
	f.Close()
	m.Shutdown()
	probe.Close()
	if steps < 15 {
		t.Fatalf("only %d steps; the config should need more", steps)
	}
	injected := errors.New("injected failure")
	for k := 1; k <= steps; k++ {
		t.Run(fmt.Sprintf("step%d", k), func(t *testing.T) {
			m, fake, ev := newManager(t)
			before := fake.Snapshot()
			fake.FailAt(fake.Steps()+k, injected)
			f, info, _, err := m.SetUp(root, parse(t, cfg))
			wantCode(t, err, errs.CodeInternal)
			if f != nil || info != nil {
				t.Fatal("failed setUp returned a file or info")
			}
			if !errors.Is(err, injected) {
				t.Errorf("error %v does not wrap the kernel's", err)
			}
			fake.ClearFailures()
			if after := fake.Snapshot(); !after.Equal(before) {
				t.Fatalf("kernel after failed step %d:\n%+v\nbefore:\n%+v\nsteps: %v", k, after, before, fake.Log())
			}
			if st := m.Status(); st.State != protocol.StateDisconnected {
				t.Fatalf("slot not free: %+v", st)
			}
			if rs := ev.reasons(); len(rs) != 0 {
				t.Fatalf("failed setUp notified %v", rs)
			}
			// The slot is usable again.
			setUp(t, m, root, cfg)
		})
	}
}

func TestOwnerConnectionCloses(t *testing.T) {
	m, k, ev := newManager(t)
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`)
	m.ConnClosed(bob.Conn) // someone else's connection: nothing happens
	if len(k.Snapshot().Links) != 1 {
		t.Fatal("another connection's close ended the VPN")
	}
	m.ConnClosed(alice.Conn)
	if s := k.Snapshot(); !clean(s) {
		t.Fatalf("left behind: %+v", s)
	}
	ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonOwnerGone)
}

func TestLinkGone(t *testing.T) {
	t.Run("deleted", func(t *testing.T) {
		m, k, ev := newManager(t)
		_, info := setUp(t, m, alice, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`)
		k.External().DeleteLink(info.Index)
		ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonLinkGone)
		if s := k.Snapshot(); !clean(s) {
			t.Fatalf("left behind: %+v", s)
		}
	})
	t.Run("fd closed", func(t *testing.T) {
		m, k, ev := newManager(t)
		f, _ := setUp(t, m, alice, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],"blockedApplications":["alice"]}`)
		f.Close()
		ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonLinkGone)
		if s := k.Snapshot(); !clean(s) {
			t.Fatalf("left behind: %+v", s)
		}
	})
}

func TestAbortAndShutdown(t *testing.T) {
	m, k, ev := newManager(t)
	_, _, id, err := m.SetUp(alice, parse(t, `{"addresses":["10.8.0.2/24"]}`))
	if err != nil {
		t.Fatal(err)
	}
	m.Abort(id + 1) // a stale id does nothing
	if len(k.Snapshot().Links) != 1 {
		t.Fatal("stale Abort ended the VPN")
	}
	m.Abort(id)
	ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonOwnerGone)
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
	m.Shutdown()
	ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonOwnerGone, protocol.ReasonSetUp, protocol.ReasonShutdown)
	if s := k.Snapshot(); !clean(s) {
		t.Fatalf("left behind: %+v", s)
	}
}

// TestConcurrentSetUp: one slot, whoever asks; exactly one wins.
func TestConcurrentSetUp(t *testing.T) {
	m, k, _ := newManager(t)
	before := k.Steps()
	callers := []manager.Caller{root, alice, bob, admin2}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var wins int
	var files []*os.File
	// Parse before starting goroutines: parse calls t.Fatalf, which must
	// run on the test's own goroutine.
	cfgs := make([]*config.Config, 40)
	for i := range cfgs {
		cfgs[i] = parse(t, `{"addresses":["10.8.0.2/24"]}`)
	}
	for i := range cfgs {
		wg.Add(1)
		go func(c manager.Caller, cfg *config.Config) {
			defer wg.Done()
			f, _, _, err := m.SetUp(c, cfg)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins++
				files = append(files, f)
			} else if errs.CodeOf(err) != errs.CodeVPNExists {
				t.Errorf("uid %d: %v", c.UID, err)
			}
		}(callers[i%len(callers)], cfgs[i])
	}
	wg.Wait()
	for _, f := range files {
		f.Close()
	}
	if wins != 1 {
		t.Fatalf("%d setUps succeeded, want 1", wins)
	}
	// Only the winner touched the kernel: one TUN was created.
	if creates := k.Calls("create tun"); creates != 1 || k.Steps() == before {
		t.Fatalf("%d TUNs created, want 1", k.Calls("create tun"))
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// waitFor polls cond; self-healing is asynchronous. Settling, not timing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestStatusJSON: the encoded status, made once per state and shared, is
// always the encoding of Status: it changes with the VPN and with
// lockdown, and stays the same bytes while nothing changes.
func TestStatusJSON(t *testing.T) {
	m, _, _ := newManager(t)
	check := func(step string) []byte {
		t.Helper()
		got, err := m.StatusJSON()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		want, err := json.Marshal(m.Status())
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("%s: StatusJSON\n%s\nwant\n%s", step, got, want)
		}
		return got
	}
	check("no VPN")
	f, _, _, err := m.SetUp(alice, parse(t, `{"addresses":["10.8.0.2/24"]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	up := check("VPN up")
	if again := check("VPN up, again"); &again[0] != &up[0] {
		t.Error("StatusJSON encoded an unchanged status again")
	}
	if err := m.SetLockdown(root, config.Lockdown{Enabled: true, Users: []config.User{testUsers["bob"]}}); err != nil {
		t.Fatal(err)
	}
	check("lockdown on")
	if err := m.Destroy(alice); err != nil {
		t.Fatal(err)
	}
	check("VPN destroyed, lockdown on")
	if err := m.SetLockdown(root, config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	check("lockdown off")
}
