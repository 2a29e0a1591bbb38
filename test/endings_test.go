package test

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/wire"
)

// richConfig has everything a teardown must remove: addresses of both
// families, included routes of both families, and excluded routes of both
// families. Excluded routes are throw routes in vpnd's table, which, unlike
// the routes through the TUN, do not vanish with the link.
const richConfig = `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":[` +
	`"198.51.100.0/24","2001:db8::/32",` +
	`{"destination":{"address":{"address":"198.51.100.128"},"prefixLength":25},"isExcludedRoute":true},` +
	`{"destination":{"address":{"address":"2001:db8:1::"},"prefixLength":48},"isExcludedRoute":true}]}`

// richThrowRoutes are richConfig's excluded routes as the kernel shows them.
var richThrowRoutes = []string{"198.51.100.128/25", "2001:db8:1::/48"}

// richCycle shows that d still serves: c (a NORMAL user) sets the rich VPN
// up, the kernel has all of it, and destroy removes all of it.
func (d *daemon) richCycle(t testing.TB, c *client) {
	t.Helper()
	setUpOK(t, c.call("setUp", richConfig, ""))
	d.wantRichVPN(t, uidNormal)
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}

// wantRichVPN checks, from the kernel, that all of richConfig is in place
// for owner: the link, both addresses, the routes through the link, the
// throw routes, and one owner rule per family.
func (d *daemon) wantRichVPN(t testing.TB, owner uint32) {
	t.Helper()
	if d.sim {
		d.simRichVPN(t, owner)
		return
	}
	d.wantTUNLink(t, 1500)
	if got, want := d.globalAddrs(t), sorted("10.8.0.2/24", "fd00::2/64"); !equalStrings(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
	byDst := map[string]ipRoute{}
	for _, r := range d.routes(t) {
		byDst[r.Dst] = r
	}
	for _, dst := range []string{"198.51.100.0/24", "2001:db8::/32"} {
		if r, ok := byDst[dst]; !ok || r.Dev != d.ifname {
			t.Errorf("route %s dev %s missing from table %d: %v", dst, d.ifname, d.table, d.routeStrings(t))
		}
	}
	for _, dst := range richThrowRoutes {
		if r, ok := byDst[dst]; !ok || r.Type != "throw" {
			t.Errorf("throw route %s missing from table %d: %v", dst, d.table, d.routeStrings(t))
		}
	}
	d.checkRules(t, []ruleCheck{
		{family: unix.AF_INET, owner: owner, ownerCovered: true},
		{family: unix.AF_INET6, owner: owner, ownerCovered: true},
	})
}

// threads reads Threads from /proc/PID/status. vpnd exposes no goroutine
// count; the thread count is the nearest thing the kernel shows, and it is
// logged, not asserted, because the Go runtime keeps idle threads.
func (d *daemon) threads(t testing.TB) int {
	t.Helper()
	return procStatusField(t, d.pid, "Threads")
}

// procStatusField returns a numeric field of /proc/PID/status (the first
// number after the colon, so "VmRSS: 1234 kB" gives 1234).
func procStatusField(t testing.TB, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == field {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, err := strconv.Atoi(f[0])
				if err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}

// setUpKeep sends setUp on a connection of the test process and returns
// the TUN fd, which it keeps open (readMsg would close it, and with it the
// VPN). The caller closes it.
func setUpKeep(t testing.TB, c *wire.Conn, id int, params string) int {
	t.Helper()
	writeLine(t, c, request(id, "setUp", params, 0))
	line, err := c.ReadLine()
	if err != nil {
		t.Fatalf("read setUp response: %v", err)
	}
	m := decodeMsg(t, string(line))
	if m.Error != nil {
		t.Fatalf("setUp: error %d %q: %v", m.Error.Code, m.Error.Message, m.Error.Data)
	}
	fds, err := c.TakeFDs(m.FDs)
	if err != nil || len(fds) != 1 {
		t.Fatalf("setUp response carried %v fds (%v), want 1", fds, err)
	}
	return fds[0]
}

// Lifetime, with both families, included and excluded routes: every way
// a VPN ends removes its link, addresses, routes (throw routes included)
// and rules, and subscribers get exactly one vpnStateChanged with the
// right reason. TestLifetime checks the same endings with a one-route IPv4
// VPN; this one adds the throw routes and the IPv6 half, and checks that
// each ending is reported once.
func TestEndingsRemoveEverything(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	threadsAtStart := d.threads(t)
	sub := d.dial(t, uidNobody)
	ok(t, sub.call("subscribe", "{}", ""))

	// Each ending must be followed by the next setUp's notification and
	// nothing in between: a second disconnect event would be read where
	// "setUp" is expected.
	up := func(t *testing.T) *client {
		t.Helper()
		sub.t = t
		c := d.dial(t, uidNormal)
		info := setUpOK(t, c.call("setUp", richConfig, ""))
		sc := wantState(t, sub, "setUp", true)
		var v vpnInfo
		if err := json.Unmarshal(sc.VPN, &v); err != nil || v.Index != info.Index || len(v.ExcludedRoutes) != 2 {
			t.Errorf("setUp notification's vpn %s, want index %d with 2 excluded routes", sc.VPN, info.Index)
		}
		d.wantRichVPN(t, uidNormal)
		return c
	}
	gone := func(t *testing.T, why string) {
		t.Helper()
		d.waitClean(t, why)
		if a, err := nsIPErr(d.ns, "-j", "addr", "show", "dev", d.ifname); err == nil && strings.Contains(a, "10.8.0.2") {
			t.Errorf("%s: addresses left: %s", why, a)
		}
		if s := sub.status(); s.State != "disconnected" || s.VPN != nil {
			t.Errorf("%s: status %+v", why, s)
		}
	}

	t.Run("destroy", func(t *testing.T) {
		c := up(t)
		ok(t, c.call("destroy", "{}", ""))
		wantState(t, sub, "destroy", false)
		gone(t, "destroy")
	})
	t.Run("owner's connection closes", func(t *testing.T) {
		c := up(t)
		c.closeConn() // the process still holds the TUN fd
		wantState(t, sub, "ownerGone", false)
		gone(t, "owner's connection closed")
	})
	t.Run("owner SIGKILLed holding fd and connection", func(t *testing.T) {
		c := up(t)
		if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		sc := sub.stateChange()
		if sc.IsConnected || sc.Interface != d.ifname || (sc.Reason != "ownerGone" && sc.Reason != "linkGone") {
			t.Errorf("after SIGKILL of the owner: %+v, want ownerGone or linkGone", sc)
		}
		gone(t, "owner killed")
	})
	t.Run("owner closes only the TUN fd", func(t *testing.T) {
		c := up(t)
		c.closeTUN()
		wantState(t, sub, "linkGone", false)
		gone(t, "TUN fd closed")
		ok(t, c.call("destroy", "{}", "")) // idempotent, and the connection still works
	})
	t.Run("ip link del", func(t *testing.T) {
		kernelOnly(t, "`ip link del` of vpnd's link")
		up(t) // the owner keeps its connection and fd
		d.ip(t, "link", "del", d.ifname)
		wantState(t, sub, "linkGone", false)
		gone(t, "link deleted")
	})
	t.Run("no duplicate after the last ending", func(t *testing.T) {
		c := up(t)
		ok(t, c.call("destroy", "{}", ""))
		wantState(t, sub, "destroy", false)
		gone(t, "destroy")
	})
	t.Logf("vpnd threads: %d at start, %d after the endings (vpnd exposes no goroutine count)", threadsAtStart, d.threads(t))
}

// Lifetime on SIGTERM and SIGINT, with both families and throw routes:
// "shutdown" once, then the subscriber's connection closes; vpnd removes
// everything while the owner still holds the TUN fd and its connection,
// removes its socket file and exits 0 (d.stop checks the last three).
func TestEndingsBySignal(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t)
			sub := d.rawConn(t)
			writeLine(t, sub, request(1, "subscribe", "{}", 0))
			ok(t, mustRead(t, sub))
			owner := d.dial(t, uidNormal)
			setUpOK(t, owner.call("setUp", richConfig, ""))
			if m := mustRead(t, sub); m.Method != "vpnStateChanged" {
				t.Fatalf("want the setUp notification, got %s", m.raw)
			}
			d.wantRichVPN(t, uidNormal)
			d.signal(t, sig)
			m := mustRead(t, sub)
			var sc stateChanged
			if err := json.Unmarshal(m.Params, &sc); err != nil || m.Method != "vpnStateChanged" ||
				sc.Reason != "shutdown" || sc.IsConnected || sc.Interface != d.ifname {
				t.Errorf("after %v: %s, want one vpnStateChanged with reason shutdown", sig, m.raw)
			}
			if m, open := readMsg(t, sub); open {
				t.Errorf("after the shutdown notification vpnd sent %s, want the connection closed", m.raw)
			}
			if code := d.waitExit(t); code != 0 {
				t.Errorf("exit status %d after %v, want 0", code, sig)
			}
			d.stop(t) // socket file removed, nothing left in the namespace
			if p := d.leftovers(t); len(p) > 0 {
				t.Errorf("after %v: %s", sig, strings.Join(p, "; "))
			}
		})
	}
}
