// Package resolvedtest runs a private D-Bus bus and a stand-in for
// systemd-resolved on it, for tests: the stand-in owns the name
// org.freedesktop.resolve1 and records every call to its Manager
// interface with its exact arguments. Tests point vpnd at the bus with
// DBUS_SYSTEM_BUS_ADDRESS, so they never touch the host's system bus or
// its resolver.
//
// The stand-in knows nothing of links: it accepts every interface index,
// unless a test tells it to fail a method (FailNext), for example with
// NoSuchLink as resolved answers for a link it has not learnt about yet.
package resolvedtest

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// Names of systemd-resolved's API.
const (
	Service       = "org.freedesktop.resolve1"
	Path          = dbus.ObjectPath("/org/freedesktop/resolve1")
	Interface     = "org.freedesktop.resolve1.Manager"
	ErrNoSuchLink = "org.freedesktop.resolve1.NoSuchLink"
)

// busConfig lets any local user connect and send anything, and lets the
// stand-in own resolved's name.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="` + Service + `"/>
  </policy>
</busconfig>
`

// Bus is a private dbus-daemon.
type Bus struct {
	// Address is the bus's D-Bus address, for DBUS_SYSTEM_BUS_ADDRESS.
	Address string
	cmd     *exec.Cmd
}

// StartBus starts a private dbus-daemon for t, stopped when t ends. It
// fails t if dbus-daemon is not installed (scripts/test installs the
// package dbus).
func StartBus(t testing.TB) *Bus {
	t.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Fatalf("dbus-daemon not found (install the package dbus; scripts/test does): %v", err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "bus")
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(busConfig, sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(daemon, "--config-file="+conf, "--nofork", "--nopidfile", "--nosyslog", "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	b := &Bus{cmd: cmd}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v: %s", err, stderr.String())
	}
	b.Address = strings.TrimSpace(line)
	return b
}

// Connect opens a connection to the bus, closed when t ends.
func (b *Bus) Connect(t testing.TB) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(b.Address)
	if err != nil {
		t.Fatalf("connect to the test bus %s: %v", b.Address, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Resolved is the stand-in for systemd-resolved.
type Resolved struct {
	conn *dbus.Conn

	mu       sync.Mutex
	calls    []string
	failures map[string][]string // method -> D-Bus error names to answer with, in turn
	changed  chan struct{}
}

// StartResolved connects to b, takes resolved's name and serves its
// Manager interface until t ends.
func StartResolved(t testing.TB, b *Bus) *Resolved {
	t.Helper()
	r := &Resolved{conn: b.Connect(t), failures: map[string][]string{}, changed: make(chan struct{}, 1)}
	if err := r.conn.Export(manager{r}, Path, Interface); err != nil {
		t.Fatal(err)
	}
	reply, err := r.conn.RequestName(Service, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s on the test bus: %v (%v)", Service, reply, err)
	}
	return r
}

// Calls returns every call so far, in order, formatted by method:
//
//	SetLinkDefaultRoute(7, true)
//	SetLinkDomains(7, [("corp.example", false) (".", true)])
//	SetLinkDNS(7, [(2, 10.8.0.1) (10, fd00::1)])
//	RevertLink(7)
//
// An address is written from its bytes: an array that is not 4 or 16
// bytes long shows as "bad:HEX". Failed calls are recorded too, followed
// by " -> ERROR".
func (r *Resolved) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// Reset forgets the calls recorded so far.
func (r *Resolved) Reset() {
	r.mu.Lock()
	r.calls = nil
	r.mu.Unlock()
}

// WaitCalls waits until at least n calls were recorded, or d passes, and
// returns the calls. It is a hang guard, not a timing claim.
func (r *Resolved) WaitCalls(n int, d time.Duration) []string {
	deadline := time.After(d)
	for {
		if c := r.Calls(); len(c) >= n {
			return c
		}
		select {
		case <-r.changed:
		case <-deadline:
			return r.Calls()
		}
	}
}

// FailNext makes the next len(names) calls of method answer with these
// D-Bus error names, in turn.
func (r *Resolved) FailNext(method string, names ...string) {
	r.mu.Lock()
	r.failures[method] = append(r.failures[method], names...)
	r.mu.Unlock()
}

// record logs a call and says how to answer it.
func (r *Resolved) record(method, args string) *dbus.Error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := method + "(" + args + ")"
	var err *dbus.Error
	if q := r.failures[method]; len(q) > 0 {
		r.failures[method] = q[1:]
		err = dbus.NewError(q[0], []any{"stand-in failure"})
		c += " -> " + q[0]
	}
	r.calls = append(r.calls, c)
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return err
}

// manager is the exported object: its methods are resolved's, with
// resolved's signatures.
type manager struct{ r *Resolved }

// SetLinkDNS is SetLinkDNS(i ifindex, a(iay) addresses).
func (m manager) SetLinkDNS(ifindex int32, addrs []struct {
	Family  int32
	Address []byte
}) *dbus.Error {
	var parts []string
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.Address)
		s := ip.String()
		if !ok {
			s = fmt.Sprintf("bad:%x", a.Address)
		}
		parts = append(parts, fmt.Sprintf("(%d, %s)", a.Family, s))
	}
	return m.r.record("SetLinkDNS", fmt.Sprintf("%d, [%s]", ifindex, strings.Join(parts, " ")))
}

// SetLinkDomains is SetLinkDomains(i ifindex, a(sb) domains).
func (m manager) SetLinkDomains(ifindex int32, domains []struct {
	Domain      string
	RoutingOnly bool
}) *dbus.Error {
	var parts []string
	for _, d := range domains {
		parts = append(parts, fmt.Sprintf("(%q, %t)", d.Domain, d.RoutingOnly))
	}
	return m.r.record("SetLinkDomains", fmt.Sprintf("%d, [%s]", ifindex, strings.Join(parts, " ")))
}

// SetLinkDefaultRoute is SetLinkDefaultRoute(i ifindex, b enable).
func (m manager) SetLinkDefaultRoute(ifindex int32, enable bool) *dbus.Error {
	return m.r.record("SetLinkDefaultRoute", fmt.Sprintf("%d, %t", ifindex, enable))
}

// RevertLink is RevertLink(i ifindex).
func (m manager) RevertLink(ifindex int32) *dbus.Error {
	return m.r.record("RevertLink", fmt.Sprint(ifindex))
}
