// Package resolvedtest runs a private D-Bus bus and a stand-in for
// systemd-resolved on it, for tests: the stand-in owns the name
// org.freedesktop.resolve1 and records every call to its Manager
// interface with its exact arguments. Tests point vpnd at the bus with
// DBUS_SYSTEM_BUS_ADDRESS, so they never touch the host's system bus or
// its resolver.
//
// The stand-in refuses what systemd-resolved itself refuses (checked
// against resolved 252's source and the real daemon, see Refusals), with
// resolved's D-Bus error names and messages. It knows nothing else of
// links: it accepts every interface index above 1 (lo's), unless a test
// tells it to fail a method (FailNext), for example with NoSuchLink as
// resolved answers for a link it has not learnt about yet.
package resolvedtest

import (
	"bufio"
	"errors"
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
	Service        = "org.freedesktop.resolve1"
	Path           = dbus.ObjectPath("/org/freedesktop/resolve1")
	Interface      = "org.freedesktop.resolve1.Manager"
	ErrNoSuchLink  = "org.freedesktop.resolve1.NoSuchLink"
	ErrLinkBusy    = "org.freedesktop.resolve1.LinkBusy"
	ErrInvalidArgs = "org.freedesktop.DBus.Error.InvalidArgs"
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

// StartBus starts a private dbus-daemon for t, stopped when t ends. Any
// local user with a passwd entry may connect to it (dbus-daemon refuses
// uids it cannot look up). It fails t if dbus-daemon is not installed
// (scripts/test installs the package dbus).
func StartBus(t testing.TB) *Bus {
	t.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Fatalf("dbus-daemon not found (install the package dbus; scripts/test does): %v", err)
	}
	// Not t.TempDir, whose root only its owner may enter: the bus lets
	// any user connect (a real resolved runs as one), so its socket is
	// reachable too.
	dir, err := os.MkdirTemp("", "vpndtest-bus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
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
//	SetLinkLLMNR(7, "no")
//	SetLinkMulticastDNS(7, "no")
//	SetLinkDefaultRoute(7, true)
//	SetLinkDomains(7, [("corp.example", false) (".", true)])
//	SetLinkDNS(7, [(2, 10.8.0.1) (10, fd00::1)])
//	RevertLink(7)
//
// An address is written from its bytes: an array that is not 4 or 16
// bytes long shows as "bad:HEX". Failed and refused calls are recorded
// too, followed by " -> ERROR-NAME".
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

// record logs a call and says how to answer it: with a failure a test
// asked for (FailNext), else with refusal (nil: success).
func (r *Resolved) record(method, args string, refusal *dbus.Error) *dbus.Error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := method + "(" + args + ")"
	err := refusal
	if q := r.failures[method]; len(q) > 0 {
		r.failures[method] = q[1:]
		err = dbus.NewError(q[0], []any{"stand-in failure"})
	}
	if err != nil {
		c += " -> " + err.Name
	}
	r.calls = append(r.calls, c)
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return err
}

// refuse is resolved's error reply.
func refuse(name, format string, args ...any) *dbus.Error {
	return dbus.NewError(name, []any{fmt.Sprintf(format, args...)})
}

// checkLink is what resolved checks of the interface index before
// anything else: that it is one (above 0), and not the loopback device,
// whose index Linux makes 1 in every namespace.
func checkLink(ifindex int32) *dbus.Error {
	switch {
	case ifindex <= 0:
		return refuse(ErrInvalidArgs, "Invalid interface index")
	case ifindex == 1:
		return refuse(ErrLinkBusy, "Link lo is loopback device.")
	}
	return nil
}

// Address families as resolved takes them.
const (
	afInet  = 2
	afInet6 = 10
)

// checkDNSServer refuses what resolved refuses of a DNS server: an unknown
// family, an address of the wrong size, the unspecified address of either
// family, and resolved's own stub listeners (127.0.0.53, and 127.0.0.54
// in proxy mode). Other loopback addresses (127.0.0.1, ::1) and IPv4-mapped
// IPv6 addresses are accepted, as resolved accepts them.
func checkDNSServer(family int32, addr []byte) *dbus.Error {
	switch {
	case family != afInet && family != afInet6:
		return refuse(ErrInvalidArgs, "Unknown address family %d", family)
	case (family == afInet && len(addr) != 4) || (family == afInet6 && len(addr) != 16):
		return refuse(ErrInvalidArgs, "Invalid address size")
	}
	a, _ := netip.AddrFromSlice(addr)
	if a.IsUnspecified() || a == netip.AddrFrom4([4]byte{127, 0, 0, 53}) || a == netip.AddrFrom4([4]byte{127, 0, 0, 54}) {
		return refuse(ErrInvalidArgs, "Invalid DNS server address")
	}
	return nil
}

// validDomain is a simplified form of resolved's domain name check: the
// root ("."), or labels of 1 to 63 bytes, 253 bytes in all, with or
// without the final dot.
func validDomain(d string) bool {
	if d == "." {
		return true
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > 253 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
	}
	return true
}

// resolveSupport is what resolved takes for LLMNR and MulticastDNS: yes,
// no, resolve, a boolean in any of the spellings systemd parses, or ""
// (yes).
func resolveSupport(mode string) bool {
	switch mode {
	case "", "yes", "no", "resolve", "1", "0", "y", "n", "true", "false", "t", "f", "on", "off":
		return true
	}
	return false
}

// manager is the exported object: its methods are resolved's, with
// resolved's signatures.
type manager struct{ r *Resolved }

// SetLinkDNS is SetLinkDNS(i ifindex, a(iay) addresses).
func (m manager) SetLinkDNS(ifindex int32, addrs []struct {
	Family  int32
	Address []byte
}) *dbus.Error {
	refusal := checkLink(ifindex)
	var parts []string
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.Address)
		s := ip.String()
		if !ok {
			s = fmt.Sprintf("bad:%x", a.Address)
		}
		parts = append(parts, fmt.Sprintf("(%d, %s)", a.Family, s))
		if refusal == nil {
			refusal = checkDNSServer(a.Family, a.Address)
		}
	}
	return m.r.record("SetLinkDNS", fmt.Sprintf("%d, [%s]", ifindex, strings.Join(parts, " ")), refusal)
}

// SetLinkDomains is SetLinkDomains(i ifindex, a(sb) domains).
func (m manager) SetLinkDomains(ifindex int32, domains []struct {
	Domain      string
	RoutingOnly bool
}) *dbus.Error {
	refusal := checkLink(ifindex)
	var parts []string
	for _, d := range domains {
		parts = append(parts, fmt.Sprintf("(%q, %t)", d.Domain, d.RoutingOnly))
		switch {
		case refusal != nil:
		case !validDomain(d.Domain):
			refusal = refuse(ErrInvalidArgs, "Invalid search domain %s", d.Domain)
		case d.Domain == "." && !d.RoutingOnly:
			refusal = refuse(ErrInvalidArgs, "Root domain is not suitable as search domain")
		}
	}
	return m.r.record("SetLinkDomains", fmt.Sprintf("%d, [%s]", ifindex, strings.Join(parts, " ")), refusal)
}

// SetLinkDefaultRoute is SetLinkDefaultRoute(i ifindex, b enable).
func (m manager) SetLinkDefaultRoute(ifindex int32, enable bool) *dbus.Error {
	return m.r.record("SetLinkDefaultRoute", fmt.Sprintf("%d, %t", ifindex, enable), checkLink(ifindex))
}

// SetLinkLLMNR is SetLinkLLMNR(i ifindex, s mode).
func (m manager) SetLinkLLMNR(ifindex int32, mode string) *dbus.Error {
	refusal := checkLink(ifindex)
	if refusal == nil && !resolveSupport(mode) {
		refusal = refuse(ErrInvalidArgs, "Invalid LLMNR setting: %s", mode)
	}
	return m.r.record("SetLinkLLMNR", fmt.Sprintf("%d, %q", ifindex, mode), refusal)
}

// SetLinkMulticastDNS is SetLinkMulticastDNS(i ifindex, s mode).
func (m manager) SetLinkMulticastDNS(ifindex int32, mode string) *dbus.Error {
	refusal := checkLink(ifindex)
	if refusal == nil && !resolveSupport(mode) {
		refusal = refuse(ErrInvalidArgs, "Invalid MulticastDNS setting: %s", mode)
	}
	return m.r.record("SetLinkMulticastDNS", fmt.Sprintf("%d, %q", ifindex, mode), refusal)
}

// RevertLink is RevertLink(i ifindex).
func (m manager) RevertLink(ifindex int32) *dbus.Error {
	return m.r.record("RevertLink", fmt.Sprint(ifindex), checkLink(ifindex))
}

// LinkDNS is an element of SetLinkDNS's a(iay).
type LinkDNS struct {
	Family  int32
	Address []byte
}

// LinkDomain is an element of SetLinkDomains's a(sb).
type LinkDomain struct {
	Domain      string
	RoutingOnly bool
}

// Answer is a call to resolved's Manager interface and resolved's answer:
// the D-Bus error name and message, or "" for success.
type Answer struct {
	Method  string
	Args    []any
	Name    string
	Message string
}

// Refusals lists what resolved refuses, and next to it what it accepts,
// for a link ifindex that it knows and does not manage. Tests make these
// calls to the stand-in and to a real systemd-resolved, and compare the
// answers, so that the stand-in stays honest.
func Refusals(ifindex int32) []Answer {
	v4 := func(a, b, c, d byte) LinkDNS { return LinkDNS{afInet, []byte{a, b, c, d}} }
	v6 := func(s string) LinkDNS { return LinkDNS{afInet6, netip.MustParseAddr(s).AsSlice()} }
	dns := func(servers ...LinkDNS) []any { return []any{ifindex, servers} }
	const invalidServer = "Invalid DNS server address"
	return []Answer{
		{"SetLinkDNS", dns(v4(10, 8, 0, 1), v6("fd00::53")), "", ""},
		{"SetLinkDNS", dns(v4(127, 0, 0, 53)), ErrInvalidArgs, invalidServer},
		{"SetLinkDNS", dns(v4(127, 0, 0, 54)), ErrInvalidArgs, invalidServer},
		{"SetLinkDNS", dns(v4(10, 8, 0, 1), v4(127, 0, 0, 53)), ErrInvalidArgs, invalidServer},
		{"SetLinkDNS", dns(v4(0, 0, 0, 0)), ErrInvalidArgs, invalidServer},
		{"SetLinkDNS", dns(v6("::")), ErrInvalidArgs, invalidServer},
		{"SetLinkDNS", dns(v4(127, 0, 0, 1)), "", ""},
		{"SetLinkDNS", dns(v6("::1")), "", ""},
		{"SetLinkDNS", dns(v6("::ffff:127.0.0.53")), "", ""},
		{"SetLinkDNS", dns(LinkDNS{afInet, []byte{10, 8, 0}}), ErrInvalidArgs, "Invalid address size"},
		{"SetLinkDNS", dns(LinkDNS{afInet6, []byte{10, 8, 0, 1}}), ErrInvalidArgs, "Invalid address size"},
		{"SetLinkDNS", dns(LinkDNS{7, []byte{10, 8, 0, 1}}), ErrInvalidArgs, "Unknown address family 7"},
		{"SetLinkDNS", []any{int32(0), []LinkDNS{v4(10, 8, 0, 1)}}, ErrInvalidArgs, "Invalid interface index"},
		{"SetLinkDNS", []any{int32(1), []LinkDNS{v4(10, 8, 0, 1)}}, ErrLinkBusy, "Link lo is loopback device."},
		{"SetLinkDomains", []any{ifindex, []LinkDomain{{"corp.example", false}, {".", true}}}, "", ""},
		{"SetLinkDomains", []any{ifindex, []LinkDomain{{".", false}}}, ErrInvalidArgs, "Root domain is not suitable as search domain"},
		{"SetLinkDomains", []any{ifindex, []LinkDomain{{"a..b", false}}}, ErrInvalidArgs, "Invalid search domain a..b"},
		{"SetLinkDefaultRoute", []any{ifindex, true}, "", ""},
		{"SetLinkDefaultRoute", []any{int32(-1), true}, ErrInvalidArgs, "Invalid interface index"},
		{"SetLinkLLMNR", []any{ifindex, "no"}, "", ""},
		{"SetLinkLLMNR", []any{ifindex, "resolve"}, "", ""},
		{"SetLinkLLMNR", []any{ifindex, ""}, "", ""},
		{"SetLinkLLMNR", []any{ifindex, "bogus"}, ErrInvalidArgs, "Invalid LLMNR setting: bogus"},
		{"SetLinkLLMNR", []any{int32(1), "no"}, ErrLinkBusy, "Link lo is loopback device."},
		{"SetLinkMulticastDNS", []any{ifindex, "no"}, "", ""},
		{"SetLinkMulticastDNS", []any{ifindex, "off"}, "", ""},
		{"SetLinkMulticastDNS", []any{ifindex, "bogus"}, ErrInvalidArgs, "Invalid MulticastDNS setting: bogus"},
		{"RevertLink", []any{ifindex}, "", ""},
		{"RevertLink", []any{int32(0)}, ErrInvalidArgs, "Invalid interface index"},
	}
}

// Ask makes a's call to the resolved that owns Service on conn and returns
// its answer, in Answer's terms.
func Ask(conn *dbus.Conn, a Answer) (name, message string) {
	err := conn.Object(Service, Path).Call(Interface+"."+a.Method, 0, a.Args...).Err
	if err == nil {
		return "", ""
	}
	var de dbus.Error
	if errors.As(err, &de) {
		if len(de.Body) > 0 {
			message, _ = de.Body[0].(string)
		}
		return de.Name, message
	}
	return "transport", err.Error()
}
