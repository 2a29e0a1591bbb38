package dns

import (
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vpnd/vpnd/internal/dns/resolvedtest"
	"github.com/vpnd/vpnd/internal/manager"
)

var vpnLink = manager.DNSLink{Name: "vpn-tun", Index: 7}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// withStandIn points the system bus at a private bus with the stand-in
// resolved on it.
func withStandIn(t *testing.T) *resolvedtest.Resolved {
	t.Helper()
	bus := resolvedtest.StartBus(t)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.Address)
	return resolvedtest.StartResolved(t, bus)
}

func wantCalls(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("resolved got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// prepareCalls are PrepareLink's calls on vpnLink.
var prepareCalls = []string{`SetLinkLLMNR(7, "no")`, `SetLinkMulticastDNS(7, "no")`}

// undoCalls are Revert's calls on vpnLink, also Apply's undoing.
var undoCalls = []string{`SetLinkDNS(7, [])`, `SetLinkDomains(7, [])`, `SetLinkDefaultRoute(7, false)`}

// The exact calls and arguments: multicast name resolution off, then a
// full tunnel (a default route: "~." and DefaultRoute true) or a split
// tunnel (search domains only), and their undoing at the end, which leaves
// multicast name resolution off.
func TestResolvedCalls(t *testing.T) {
	for _, tc := range []struct {
		name  string
		s     manager.DNSSettings
		calls []string
	}{
		{
			name: "full tunnel",
			s:    manager.DNSSettings{Servers: addrs("10.8.0.1", "fd00::1"), Domains: []string{"corp.example", "Lab.Example."}, DefaultRoute: true},
			calls: []string{
				`SetLinkDefaultRoute(7, true)`,
				`SetLinkDomains(7, [("corp.example", false) ("Lab.Example.", false) (".", true)])`,
				`SetLinkDNS(7, [(2, 10.8.0.1) (10, fd00::1)])`,
			},
		},
		{
			name: "full tunnel without search domains",
			s:    manager.DNSSettings{Servers: addrs("10.8.0.1"), DefaultRoute: true},
			calls: []string{
				`SetLinkDefaultRoute(7, true)`,
				`SetLinkDomains(7, [(".", true)])`,
				`SetLinkDNS(7, [(2, 10.8.0.1)])`,
			},
		},
		{
			name: "split tunnel",
			s:    manager.DNSSettings{Servers: addrs("fd00::53", "10.8.0.1"), Domains: []string{"corp.example"}},
			calls: []string{
				`SetLinkDefaultRoute(7, false)`,
				`SetLinkDomains(7, [("corp.example", false)])`,
				`SetLinkDNS(7, [(10, fd00::53) (2, 10.8.0.1)])`,
			},
		},
		{
			name: "split tunnel without search domains",
			s:    manager.DNSSettings{Servers: addrs("10.8.0.1")},
			calls: []string{
				`SetLinkDefaultRoute(7, false)`,
				`SetLinkDomains(7, [])`,
				`SetLinkDNS(7, [(2, 10.8.0.1)])`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			standIn := withStandIn(t)
			r := NewResolved(nil)
			if err := r.PrepareLink(vpnLink); err != nil {
				t.Fatal(err)
			}
			if err := r.Apply(vpnLink, tc.s); err != nil {
				t.Fatal(err)
			}
			want := append(slices.Clone(prepareCalls), tc.calls...)
			wantCalls(t, standIn.Calls(), want...)
			if err := r.Revert(vpnLink); err != nil {
				t.Fatal(err)
			}
			wantCalls(t, standIn.Calls(), append(want, undoCalls...)...)
		})
	}
}

// resolved learns about a new link on its own schedule and answers
// NoSuchLink until then: PrepareLink, the first to call, waits for it, and
// so does Apply.
func TestResolvedWaitsForTheLink(t *testing.T) {
	standIn := withStandIn(t)
	standIn.FailNext("SetLinkLLMNR", resolvedtest.ErrNoSuchLink, resolvedtest.ErrNoSuchLink)
	standIn.FailNext("SetLinkDefaultRoute", resolvedtest.ErrNoSuchLink)
	r := NewResolved(nil)
	if err := r.PrepareLink(vpnLink); err != nil {
		t.Fatal(err)
	}
	if err := r.Apply(vpnLink, manager.DNSSettings{Servers: addrs("10.8.0.1")}); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, standIn.Calls(),
		`SetLinkLLMNR(7, "no") -> `+resolvedtest.ErrNoSuchLink,
		`SetLinkLLMNR(7, "no") -> `+resolvedtest.ErrNoSuchLink,
		`SetLinkLLMNR(7, "no")`,
		`SetLinkMulticastDNS(7, "no")`,
		`SetLinkDefaultRoute(7, false) -> `+resolvedtest.ErrNoSuchLink,
		`SetLinkDefaultRoute(7, false)`,
		`SetLinkDomains(7, [])`,
		`SetLinkDNS(7, [(2, 10.8.0.1)])`)
}

// A link resolved never learns about fails PrepareLink (and Apply) after
// linkWait, naming the method and resolved's error, and needs no undoing.
func TestResolvedLinkNeverKnown(t *testing.T) {
	nosuch := make([]string, 100)
	for i := range nosuch {
		nosuch[i] = resolvedtest.ErrNoSuchLink
	}
	for _, tc := range []struct {
		method string
		do     func(r *Resolved) error
	}{
		{"SetLinkLLMNR", func(r *Resolved) error { return r.PrepareLink(vpnLink) }},
		{"SetLinkDefaultRoute", func(r *Resolved) error { return r.Apply(vpnLink, manager.DNSSettings{Servers: addrs("10.8.0.1")}) }},
	} {
		t.Run(tc.method, func(t *testing.T) {
			standIn := withStandIn(t)
			standIn.FailNext(tc.method, nosuch...)
			r := NewResolved(nil)
			r.linkWait = 50 * time.Millisecond
			err := tc.do(r)
			if err == nil || !strings.Contains(err.Error(), tc.method+" on vpn-tun (index 7): "+resolvedtest.ErrNoSuchLink+": stand-in failure") {
				t.Fatalf("%v, want the method, the link and NoSuchLink", err)
			}
			for _, c := range standIn.Calls() {
				if !strings.HasPrefix(c, tc.method) {
					t.Errorf("unexpected call %s", c)
				}
			}
		})
	}
}

// A failure after the first call is undone as Revert does: Apply is all
// or nothing.
func TestResolvedApplyUndoesOnFailure(t *testing.T) {
	for _, method := range []string{"SetLinkDomains", "SetLinkDNS"} {
		t.Run(method, func(t *testing.T) {
			standIn := withStandIn(t)
			standIn.FailNext(method, "org.freedesktop.DBus.Error.AccessDenied")
			r := NewResolved(nil)
			err := r.Apply(vpnLink, manager.DNSSettings{Servers: addrs("10.8.0.1"), DefaultRoute: true})
			if err == nil || !strings.Contains(err.Error(), method+" on vpn-tun (index 7): org.freedesktop.DBus.Error.AccessDenied") {
				t.Fatalf("Apply: %v", err)
			}
			calls := standIn.Calls()
			if len(calls) < len(undoCalls) || !slices.Equal(calls[len(calls)-len(undoCalls):], undoCalls) {
				t.Fatalf("calls %q: want the undoing last", calls)
			}
		})
	}
}

// A DNS server resolved refuses (its own stub listener) fails Apply with
// resolved's answer, naming the method and the link, and the settings
// made before it are undone.
func TestResolvedRefusesStubServer(t *testing.T) {
	for _, server := range []string{"127.0.0.53", "127.0.0.54"} {
		t.Run(server, func(t *testing.T) {
			standIn := withStandIn(t)
			r := NewResolved(nil)
			err := r.Apply(vpnLink, manager.DNSSettings{Servers: addrs("10.8.0.1", server), DefaultRoute: true})
			want := "SetLinkDNS on vpn-tun (index 7): " + resolvedtest.ErrInvalidArgs + ": Invalid DNS server address"
			if err == nil || err.Error() != want {
				t.Fatalf("Apply: %v, want %q", err, want)
			}
			wantCalls(t, standIn.Calls(), append([]string{
				`SetLinkDefaultRoute(7, true)`,
				`SetLinkDomains(7, [(".", true)])`,
				`SetLinkDNS(7, [(2, 10.8.0.1) (2, ` + server + `)]) -> ` + resolvedtest.ErrInvalidArgs,
			}, undoCalls...)...)
		})
	}
}

// Revert of a link resolved no longer knows (deleted, its settings gone
// with it) succeeds and stops there; other errors are reported.
func TestResolvedRevert(t *testing.T) {
	standIn := withStandIn(t)
	r := NewResolved(nil)
	standIn.FailNext("SetLinkDNS", resolvedtest.ErrNoSuchLink, "org.freedesktop.DBus.Error.AccessDenied")
	if err := r.Revert(vpnLink); err != nil {
		t.Errorf("Revert of a gone link: %v", err)
	}
	wantCalls(t, standIn.Calls(), `SetLinkDNS(7, []) -> `+resolvedtest.ErrNoSuchLink)
	if err := r.Revert(vpnLink); err == nil || !strings.Contains(err.Error(), "SetLinkDNS on vpn-tun (index 7): org.freedesktop.DBus.Error.AccessDenied") {
		t.Errorf("Revert: %v, want AccessDenied", err)
	}
}

// Open's auto picks resolved when resolve1 answers, none when the bus has
// no resolve1 or there is no bus; resolved explicitly fails instead.
func TestOpenAuto(t *testing.T) {
	t.Run("resolve1 answers", func(t *testing.T) {
		withStandIn(t)
		for _, b := range []string{Auto, NameResolve} {
			d, err := Open(Config{Backend: b})
			if err != nil || d.Name() != NameResolve {
				t.Errorf("%s: %v %v, want resolved", b, d, err)
			}
		}
	})
	noResolved := func(t *testing.T) {
		d, err := Open(Config{Backend: Auto})
		if err != nil || d.Name() != NameNone {
			t.Errorf("auto: %v %v, want none", d, err)
		}
		if _, err := Open(Config{Backend: NameResolve}); err == nil || !strings.Contains(err.Error(), "systemd-resolved does not answer") {
			t.Errorf("resolved: %v, want an error", err)
		}
	}
	t.Run("bus without resolve1", func(t *testing.T) {
		bus := resolvedtest.StartBus(t)
		t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.Address)
		noResolved(t)
	})
	t.Run("no bus", func(t *testing.T) {
		t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "none"))
		noResolved(t)
	})
}

// A bus that accepts the connection and never answers cannot hold vpnd:
// the timeout closes the connection. (The 100 ms is a bound under test,
// not a timing claim: without it the test would hang.)
func TestResolvedTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "mute")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+sock)
	r := NewResolved(nil)
	r.timeout = 100 * time.Millisecond
	if err := r.Probe(); err == nil {
		t.Fatal("Probe of a mute bus succeeded")
	}
	if err := r.PrepareLink(vpnLink); err == nil {
		t.Fatal("PrepareLink on a mute bus succeeded")
	}
	if err := r.Apply(vpnLink, manager.DNSSettings{Servers: addrs("10.8.0.1")}); err == nil {
		t.Fatal("Apply on a mute bus succeeded")
	}
}
