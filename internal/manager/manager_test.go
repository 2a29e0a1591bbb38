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
	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
	"github.com/vpnd/vpnd/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The real kernel satisfies the interface the manager owns.
var _ manager.Kernel = (*tun.Netlink)(nil)

const (
	table    = 98
	priority = 10000
	mark     = 0x20000
)

var (
	root   = manager.Caller{UID: 0, PID: 100, User: "root", Type: auth.Admin, Conn: 1}
	alice  = manager.Caller{UID: 1000, PID: 200, User: "alice", Type: auth.Normal, Conn: 2}
	bob    = manager.Caller{UID: 1001, PID: 300, User: "bob", Type: auth.Normal, Conn: 3}
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
	ev := &events{}
	cancel := m.Subscribe(ev.add)
	t.Cleanup(func() {
		m.Shutdown()
		cancel()
		k.Close()
		if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
			t.Errorf("kernel not clean after shutdown: %+v", s)
		}
	})
	return m, k, ev
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
	wantRoutes := []tun.Route{
		{Table: table, Dst: mustPrefix("198.51.100.0/24"), LinkIndex: idx},
		{Table: table, Dst: mustPrefix("198.51.100.128/25"), Throw: true},
		{Table: table, Dst: mustPrefix("2001:db8::/32"), LinkIndex: idx},
	}
	tuntest.SortRoutes(wantRoutes)
	if fmt.Sprint(s.Routes) != fmt.Sprint(wantRoutes) {
		t.Errorf("routes = %v\nwant %v", s.Routes, wantRoutes)
	}
	wantRules := []tun.Rule{
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
	if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
		t.Fatalf("after destroy: %+v", s)
	}
	ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonDestroy)
	if st := m.Status(); st.State != protocol.StateDisconnected || st.VPN != nil {
		t.Errorf("status = %+v", st)
	}
}

// TestRulesByOwner checks §5 "Whose traffic enters the VPN" and the rule
// shapes of §7 for each kind of owner.
func TestRulesByOwner(t *testing.T) {
	const max = 4294967294
	for _, tc := range []struct {
		name   string
		caller manager.Caller
		cfg    string
		want   []tun.Rule
	}{
		{"normal owner: own uid with fwmark", alice, `{"addresses":["10.8.0.2/24"]}`,
			[]tun.Rule{{UIDStart: 1000, UIDEnd: 1000, Mask: mark}}},
		{"normal owner trusting itself", alice, `{"addresses":["10.8.0.2/24"],"trustedApplications":["alice"]}`,
			[]tun.Rule{{UIDStart: 1000, UIDEnd: 1000, Mask: mark}}},
		{"normal owner blocking itself covers nothing", alice, `{"addresses":["10.8.0.2/24"],"blockedApplications":["alice"]}`,
			nil},
		{"admin root: itself with fwmark, everyone else without", root, `{"addresses":["10.8.0.2/24"]}`,
			[]tun.Rule{{UIDStart: 0, UIDEnd: 0, Mask: mark}, {UIDStart: 1, UIDEnd: max}}},
		{"admin in the middle of the uid space", admin2, `{"addresses":["10.8.0.2/24"]}`,
			[]tun.Rule{{UIDStart: 4002, UIDEnd: 4002, Mask: mark}, {UIDStart: 0, UIDEnd: 4001}, {UIDStart: 4003, UIDEnd: max}}},
		{"admin trusting others only", root, `{"addresses":["10.8.0.2/24"],"trustedApplications":["alice","bob","carol"]}`,
			[]tun.Rule{{UIDStart: 1000, UIDEnd: 1002}}},
		{"admin blocking others", root, `{"addresses":["10.8.0.2/24"],"blockedApplications":["bob"]}`,
			[]tun.Rule{{UIDStart: 0, UIDEnd: 0, Mask: mark}, {UIDStart: 1, UIDEnd: 1000}, {UIDStart: 1002, UIDEnd: max}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, _ := newManager(t)
			setUp(t, m, tc.caller, tc.cfg)
			var want []tun.Rule
			for _, r := range tc.want {
				r.Family, r.Priority, r.Table = unix.AF_INET, priority, table
				want = append(want, r)
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
	f, _, _, err := m.SetUp(root, parse(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	steps := probe.Steps()
	f.Close()
	m.Shutdown()
	probe.Close()
	if steps < 10 {
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
				t.Fatalf("kernel after failed step %d:\n%+v\nbefore:\n%+v\ncalls: %v", k, after, before, fake.Calls())
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
	t.Run("watch", func(t *testing.T) {
		m, fake, _ := newManager(t)
		fake.FailOn("WatchLink", 1, injected)
		_, _, _, err := m.SetUp(root, parse(t, cfg))
		wantCode(t, err, errs.CodeInternal)
		fake.ClearFailures()
		if s := fake.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
			t.Fatalf("left behind: %+v", s)
		}
	})
}

func TestOwnerConnectionCloses(t *testing.T) {
	m, k, ev := newManager(t)
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`)
	m.ConnClosed(bob.Conn) // someone else's connection: nothing happens
	if len(k.Snapshot().Links) != 1 {
		t.Fatal("another connection's close ended the VPN")
	}
	m.ConnClosed(alice.Conn)
	if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
		t.Fatalf("left behind: %+v", s)
	}
	ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonOwnerGone)
}

func TestLinkGone(t *testing.T) {
	t.Run("deleted", func(t *testing.T) {
		m, k, ev := newManager(t)
		_, info := setUp(t, m, alice, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`)
		k.DeleteLinkExternally(info.Index)
		ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonLinkGone)
		if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
			t.Fatalf("left behind: %+v", s)
		}
	})
	t.Run("fd closed", func(t *testing.T) {
		m, k, ev := newManager(t)
		f, _ := setUp(t, m, alice, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],"blockedApplications":["alice"]}`)
		f.Close()
		ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonLinkGone)
		if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
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
	if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
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
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(c manager.Caller) {
			defer wg.Done()
			f, _, _, err := m.SetUp(c, parse(t, `{"addresses":["10.8.0.2/24"]}`))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins++
				files = append(files, f)
			} else if errs.CodeOf(err) != errs.CodeVPNExists {
				t.Errorf("uid %d: %v", c.UID, err)
			}
		}(callers[i%len(callers)])
	}
	wg.Wait()
	for _, f := range files {
		f.Close()
	}
	if wins != 1 {
		t.Fatalf("%d setUps succeeded, want 1", wins)
	}
	// Only the winner touched the kernel: one TUN was created.
	creates := 0
	for _, c := range k.Calls() {
		if c.Method == "CreateTUN" {
			creates++
		}
	}
	if creates != 1 || k.Steps() == before {
		t.Fatalf("%d TUNs created, want 1", creates)
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

func TestSelfHealing(t *testing.T) {
	m, k, _ := newManager(t)
	_, info := setUp(t, m, root, `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["198.51.100.0/24","2001:db8::/32",
		{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":28},"isExcludedRoute":true}]}`)
	want := k.Snapshot()
	if len(want.Rules) != 4 || len(want.Routes) != 3 {
		t.Fatalf("unexpected initial state %+v", want)
	}
	intact := func() bool { return k.Snapshot().Equal(want) }

	t.Run("rule deleted", func(t *testing.T) {
		if !k.DeleteRuleExternally(want.Rules[1]) {
			t.Fatal("rule not found")
		}
		waitFor(t, "rule restored", func() bool { return len(k.Snapshot().Rules) == 4 })
	})
	t.Run("route deleted", func(t *testing.T) {
		if !k.DeleteRouteExternally(table, "198.51.100.0/28") {
			t.Fatal("route not found")
		}
		waitFor(t, "route restored", func() bool { return len(k.Snapshot().Routes) == 3 })
	})
	t.Run("route changed", func(t *testing.T) {
		changed := tun.Route{Table: table, Dst: mustPrefix("198.51.100.0/24"), Throw: true}
		k.AddExternally([]tun.Route{changed}, nil)
		waitFor(t, "route replaced", func() bool {
			return slices.Contains(k.Snapshot().Routes, tun.Route{Table: table, Dst: mustPrefix("198.51.100.0/24"), LinkIndex: info.Index})
		})
	})
	waitFor(t, "state intact", intact)
	// Rules vpnd did not add are left alone by the repair.
	foreign := tun.Rule{Family: unix.AF_INET, Priority: priority, Table: 99, UIDStart: 7, UIDEnd: 7}
	k.AddExternally(nil, []tun.Rule{foreign})
	k.DeleteRuleExternally(want.Rules[0])
	waitFor(t, "rule restored next to a foreign one", func() bool { return len(k.Snapshot().Rules) == 5 })
	if !k.DeleteRuleExternally(foreign) {
		t.Fatal("foreign rule was removed by vpnd")
	}
}

// TestSelfHealingThrottled: a daemon that deletes vpnd's rule again and
// again gets a bounded number of repairs, and the last state is repaired.
func TestSelfHealingThrottled(t *testing.T) {
	m, k, _ := newManager(t)
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
	rule := k.Snapshot().Rules[0]
	restores := func() int {
		n := 0
		for _, c := range k.Calls() {
			if c.Method == "AddRule" && c.Err == nil {
				n++
			}
		}
		return n - 1 // the bring-up's own
	}
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		k.DeleteRuleExternally(rule)
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	// The bucket holds 5 repairs and refills one per 2 s.
	if n, max := restores(), 5+int(elapsed/(2*time.Second))+1; n > max {
		t.Fatalf("%d repairs in %v, want at most %d", n, elapsed, max)
	}
	waitFor(t, "final repair", func() bool { return slices.Contains(k.Snapshot().Rules, rule) })
}

func TestTableOrPriorityInUse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes []tun.Route
		rules  []tun.Rule
		detail string
	}{
		{"foreign route in the table", []tun.Route{{Table: table, Dst: mustPrefix("203.0.113.0/24"), Throw: true}}, nil,
			"route throw 203.0.113.0/24 table 98"},
		{"foreign rule at the priority", nil, []tun.Rule{{Family: unix.AF_INET6, Priority: priority, Table: 200, UIDStart: 5, UIDEnd: 9}},
			"rule ipv6 10000: uidrange 5-9 lookup 200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, _ := newManager(t)
			k.AddExternally(tc.routes, tc.rules)
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
				k.DeleteRuleExternally(r)
			}
			for _, r := range tc.routes {
				k.DeleteRouteExternally(r.Table, r.Dst.String())
			}
		})
	}
}

// TestSelfHealingAfterWatchFailure: when the change watch fails outright,
// the manager re-opens it and goes on repairing.
func TestSelfHealingAfterWatchFailure(t *testing.T) {
	m, k, _ := newManager(t)
	setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
	rule := k.Snapshot().Rules[0]
	watches := func() int {
		n := 0
		for _, c := range k.Calls() {
			if c.Method == "WatchChanges" && c.Err == nil {
				n++
			}
		}
		return n
	}
	k.BreakChangeWatches()
	waitFor(t, "change watch re-opened", func() bool { return watches() == 2 })
	k.DeleteRuleExternally(rule)
	waitFor(t, "rule restored after the re-open", func() bool { return slices.Contains(k.Snapshot().Rules, rule) })
}
