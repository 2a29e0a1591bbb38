package manager_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
	"github.com/vpnd/vpnd/protocol"
)

// fakeDNS records the manager's calls, with whether the VPN's link was
// still in the kernel at each call.
type fakeDNS struct {
	k        *tuntest.Fake
	mu       sync.Mutex
	calls    []string
	failWith error
}

func (d *fakeDNS) Name() string { return "fake" }

func (d *fakeDNS) linkState(l manager.DNSLink) string {
	for _, x := range d.k.Snapshot().Links {
		if x.Index == l.Index {
			return "link up"
		}
	}
	return "link gone"
}

func (d *fakeDNS) Apply(l manager.DNSLink, s manager.DNSSettings) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf("Apply(%s/%d, %v, %q, %t) %s", l.Name, l.Index, s.Servers, s.Domains, s.DefaultRoute, d.linkState(l)))
	return d.failWith
}

func (d *fakeDNS) Revert(l manager.DNSLink) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf("Revert(%s/%d) %s", l.Name, l.Index, d.linkState(l)))
	return d.failWith
}

func (d *fakeDNS) fail(err error) {
	d.mu.Lock()
	d.failWith = err
	d.mu.Unlock()
}

func (d *fakeDNS) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

func (d *fakeDNS) wantCalls(t *testing.T, want ...string) {
	t.Helper()
	if got := d.Calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("DNS calls:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// newDNSManager is newManager with a fake DNS backend.
func newDNSManager(t *testing.T) (*manager.Manager, *tuntest.Fake, *fakeDNS, *events) {
	t.Helper()
	k := tuntest.New()
	d := &fakeDNS{k: k}
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, DNS: d})
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
	return m, k, d, ev
}

// What Apply gets: the link, the servers and domains in order, and
// whether the VPN is a full tunnel; dnsBackend names the backend.
func TestDNSApplied(t *testing.T) {
	for _, tc := range []struct {
		name, cfg    string
		defaultRoute bool
	}{
		{"full tunnel (no routes)", `{"addresses":["10.8.0.2/24"]}`, true},
		{"full tunnel, both families", `{"addresses":["10.8.0.2/24","fd00::2/64"]}`, true},
		{"IPv6 default route only", `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["198.51.100.0/24","::/0"]}`, true},
		{"default route with an excluded route", `{"addresses":["10.8.0.2/24"],"routes":["0.0.0.0/0",
			{"destination":{"address":{"address":"192.168.0.0"},"prefixLength":16},"isExcludedRoute":true}]}`, true},
		{"two halves (def1)", `{"addresses":["10.8.0.2/24"],"routes":["0.0.0.0/1","128.0.0.0/1"]}`, true},
		{"split tunnel", `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24","10.0.0.0/8"]}`, false},
		{"one half", `{"addresses":["10.8.0.2/24"],"routes":["0.0.0.0/1"]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _, d, _ := newDNSManager(t)
			cfg := tc.cfg[:len(tc.cfg)-1] + `,"dnsAddresses":["10.8.0.1","fd00::53"],"searchDomains":["corp.example","lab.example"]}`
			_, info := setUp(t, m, root, cfg)
			d.wantCalls(t, fmt.Sprintf(`Apply(vpn-tun/%d, [10.8.0.1 fd00::53], ["corp.example" "lab.example"], %t) link up`, info.Index, tc.defaultRoute))
			if info.DNSBackend != "fake" || m.Status().VPN.DNSBackend != "fake" {
				t.Errorf("dnsBackend %q (status %q), want fake", info.DNSBackend, m.Status().VPN.DNSBackend)
			}
		})
	}
}

// No DNS servers, or a NORMAL owner: Apply is not called, nor Revert at
// the end, and dnsBackend says "none".
func TestDNSNotApplied(t *testing.T) {
	for _, tc := range []struct {
		name   string
		caller manager.Caller
		cfg    string
	}{
		{"no servers, search domains only", root, `{"addresses":["10.8.0.2/24"],"searchDomains":["corp.example"]}`},
		{"normal owner", alice, `{"addresses":["10.8.0.2/24"],"dnsAddresses":["10.8.0.1"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _, d, ev := newDNSManager(t)
			_, info := setUp(t, m, tc.caller, tc.cfg)
			if info.DNSBackend != "none" {
				t.Errorf("dnsBackend %q, want none", info.DNSBackend)
			}
			if err := m.Destroy(tc.caller); err != nil {
				t.Fatal(err)
			}
			ev.waitReasons(t, protocol.ReasonSetUp, protocol.ReasonDestroy)
			d.wantCalls(t)
		})
	}
}

// A failing Apply rolls the whole VPN back: 19900002 naming the backend
// and its error, the kernel as before, the slot free, no notification.
func TestDNSApplyFails(t *testing.T) {
	m, k, d, ev := newDNSManager(t)
	injected := errors.New("injected DNS failure")
	d.fail(injected)
	before := k.Snapshot()
	f, info, _, err := m.SetUp(root, parse(t, `{"addresses":["10.8.0.2/24"],"dnsAddresses":["10.8.0.1"]}`))
	wantCode(t, err, errs.CodeInternal)
	if f != nil || info != nil || !errors.Is(err, injected) {
		t.Fatalf("failed setUp: %v %v %v", f, info, err)
	}
	if e := (*errs.Error)(nil); !errors.As(err, &e) || !strings.Contains(e.Detail, "apply DNS settings through fake: injected DNS failure") {
		t.Errorf("detail of %v does not name the backend and its error", err)
	}
	if after := k.Snapshot(); !after.Equal(before) {
		t.Fatalf("kernel after the failed Apply:\n%+v\nbefore:\n%+v", after, before)
	}
	if st := m.Status(); st.State != protocol.StateDisconnected {
		t.Fatalf("slot not free: %+v", st)
	}
	if rs := ev.reasons(); len(rs) != 0 {
		t.Fatalf("failed setUp notified %v", rs)
	}
	if n := len(d.Calls()); n != 1 {
		t.Fatalf("calls %v: want the one Apply, no Revert", d.Calls())
	}
	d.fail(nil)
	setUp(t, m, root, `{"addresses":["10.8.0.2/24"],"dnsAddresses":["10.8.0.1"]}`)
}

// Every way a VPN ends reverts its DNS settings exactly once, before the
// link is removed (the link is already gone when its deletion ended the
// VPN); a failing Revert is logged and the teardown completes.
func TestDNSRevertedOnEveryEnding(t *testing.T) {
	const cfg = `{"addresses":["10.8.0.2/24"],"dnsAddresses":["10.8.0.1"]}`
	for _, tc := range []struct {
		name   string
		end    func(t *testing.T, m *manager.Manager, k *tuntest.Fake, tunFile interface{ Close() error }, id uint64, index int)
		reason string
		link   string // the link at Revert time
	}{
		{"destroy", func(t *testing.T, m *manager.Manager, _ *tuntest.Fake, _ interface{ Close() error }, _ uint64, _ int) {
			if err := m.Destroy(root); err != nil {
				t.Fatal(err)
			}
		}, protocol.ReasonDestroy, "link up"},
		{"owner's connection closed", func(t *testing.T, m *manager.Manager, _ *tuntest.Fake, _ interface{ Close() error }, _ uint64, _ int) {
			m.ConnClosed(root.Conn)
		}, protocol.ReasonOwnerGone, "link up"},
		{"hand-off failed (Abort)", func(t *testing.T, m *manager.Manager, _ *tuntest.Fake, _ interface{ Close() error }, id uint64, _ int) {
			m.Abort(id)
		}, protocol.ReasonOwnerGone, "link up"},
		{"link deleted", func(t *testing.T, _ *manager.Manager, k *tuntest.Fake, _ interface{ Close() error }, _ uint64, index int) {
			k.External().DeleteLink(index)
		}, protocol.ReasonLinkGone, "link gone"},
		{"TUN fd closed", func(t *testing.T, _ *manager.Manager, _ *tuntest.Fake, f interface{ Close() error }, _ uint64, _ int) {
			f.Close()
		}, protocol.ReasonLinkGone, "link gone"},
		{"shutdown", func(t *testing.T, m *manager.Manager, _ *tuntest.Fake, _ interface{ Close() error }, _ uint64, _ int) {
			m.Shutdown()
		}, protocol.ReasonShutdown, "link up"},
	} {
		for _, revertFails := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/revert fails %t", tc.name, revertFails), func(t *testing.T) {
				m, k, d, ev := newDNSManager(t)
				f, info, id, err := m.SetUp(root, parse(t, cfg))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if revertFails {
					d.fail(errors.New("injected revert failure"))
				}
				tc.end(t, m, k, f, id, info.Index)
				ev.waitReasons(t, protocol.ReasonSetUp, tc.reason)
				d.wantCalls(t,
					fmt.Sprintf(`Apply(vpn-tun/%d, [10.8.0.1], [], true) link up`, info.Index),
					fmt.Sprintf(`Revert(vpn-tun/%d) %s`, info.Index, tc.link))
				if s := k.Snapshot(); len(s.Links)+len(s.Routes)+len(s.Rules) != 0 {
					t.Fatalf("left behind: %+v", s)
				}
			})
		}
	}
}

// preparingDNS is a fakeDNS that also prepares each new link, recording
// what the kernel had of the link at that moment.
type preparingDNS struct{ *fakeDNS }

func (d preparingDNS) PrepareLink(l manager.DNSLink) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	state := "link gone"
	for _, x := range d.k.Snapshot().Links {
		if x.Index == l.Index {
			state = fmt.Sprintf("link up %t with %d addresses", x.Up, len(x.Addresses))
		}
	}
	d.calls = append(d.calls, fmt.Sprintf("PrepareLink(%s/%d) %s", l.Name, l.Index, state))
	return d.failWith
}

// A DNSLinkPreparer gets every VPN's link while it is down and has no
// address (a resolver starts using a link once it is up with one), whoever owns the VPN
// and whether or not it has DNS servers; Revert follows only an Apply. A
// failing PrepareLink rolls the VPN back, naming the backend.
func TestDNSLinkPrepared(t *testing.T) {
	for _, tc := range []struct {
		name, cfg string
		caller    manager.Caller
		apply     string // the Apply call, "" for none
	}{
		{"admin with DNS servers", `{"addresses":["10.8.0.2/24"],"dnsAddresses":["10.8.0.1"]}`, root, `Apply(vpn-tun/%d, [10.8.0.1], [], true) link up`},
		{"admin without DNS servers", `{"addresses":["10.8.0.2/24"]}`, root, ""},
		{"normal user with DNS servers", `{"addresses":["10.8.0.2/24"],"dnsAddresses":["10.8.0.1"]}`, alice, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tuntest.New()
			d := preparingDNS{&fakeDNS{k: k}}
			m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, DNS: d})
			t.Cleanup(func() { m.Shutdown(); k.Close() })
			f, info, _, err := m.SetUp(tc.caller, parse(t, tc.cfg))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := m.Destroy(tc.caller); err != nil {
				t.Fatal(err)
			}
			want := []string{fmt.Sprintf("PrepareLink(vpn-tun/%d) link up false with 0 addresses", info.Index)}
			if tc.apply != "" {
				want = append(want, fmt.Sprintf(tc.apply, info.Index), fmt.Sprintf("Revert(vpn-tun/%d) link up", info.Index))
			}
			d.wantCalls(t, want...)
		})
	}

	t.Run("fails", func(t *testing.T) {
		k := tuntest.New()
		d := preparingDNS{&fakeDNS{k: k}}
		m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, DNS: d})
		t.Cleanup(func() { m.Shutdown(); k.Close() })
		injected := errors.New("injected failure")
		d.fail(injected)
		before := k.Snapshot()
		_, _, _, err := m.SetUp(root, parse(t, `{"addresses":["10.8.0.2/24"],"dnsAddresses":["10.8.0.1"]}`))
		wantCode(t, err, errs.CodeInternal)
		if e := (*errs.Error)(nil); !errors.As(err, &e) || !strings.Contains(e.Detail, "prepare the link through fake: injected failure") {
			t.Errorf("detail of %v does not name the backend and its error", err)
		}
		if after := k.Snapshot(); !after.Equal(before) {
			t.Fatalf("kernel after the failed PrepareLink:\n%+v\nbefore:\n%+v", after, before)
		}
		if calls := d.Calls(); len(calls) != 1 {
			t.Fatalf("calls %q: want the one PrepareLink", calls)
		}
	})
}
