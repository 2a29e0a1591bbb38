package test

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// wantState asserts the next vpnStateChanged a subscriber gets.
func wantState(t testing.TB, sub *client, reason string, connected bool) stateChanged {
	t.Helper()
	sc := sub.stateChange()
	if sc.Reason != reason || sc.IsConnected != connected || sc.Interface != "vpn-tun" {
		t.Errorf("vpnStateChanged %+v, want reason %q isConnected %v interface vpn-tun", sc, reason, connected)
	}
	return sc
}

// Lifetime: every way a VPN ends removes what it added, and
// subscribers hear about it with the right reason.
func TestLifetime(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	sub := d.dial(t, uidNobody) // a GUEST may subscribe
	ok(t, sub.call("subscribe", "{}", ""))

	up := func(t *testing.T, uid uint32) (*client, vpnInfo) {
		t.Helper()
		sub.t = t
		c := d.dial(t, uid)
		info := setUpOK(t, c.call("setUp", setUpParams, ""))
		sc := wantState(t, sub, "setUp", true)
		var v vpnInfo
		if err := json.Unmarshal(sc.VPN, &v); err != nil || v.Owner.UID != uid || v.Index != info.Index {
			t.Errorf("setUp notification's vpn %s, want the owner %d's VpnInfo (index %d)", sc.VPN, uid, info.Index)
		}
		d.wantTUNLink(t, 1500)
		return c, info
	}
	wantGone := func(t *testing.T, c *client, why string) {
		t.Helper()
		d.waitClean(t, why)
		if s := sub.status(); s.State != "disconnected" {
			t.Errorf("%s: status %+v", why, s)
		}
	}

	t.Run("destroy", func(t *testing.T) {
		c, _ := up(t, uidNormal)
		ok(t, c.call("destroy", "{}", ""))
		wantState(t, sub, "destroy", false)
		wantGone(t, c, "destroy")
	})
	t.Run("owner's connection closes, TUN fd still held", func(t *testing.T) {
		c, _ := up(t, uidNormal)
		c.closeConn()
		wantState(t, sub, "ownerGone", false)
		// The owner still holds the TUN fd: vpnd must delete the link itself.
		wantGone(t, c, "owner's connection closed")
	})
	t.Run("TUN fd closed, connection kept", func(t *testing.T) {
		c, _ := up(t, uidNormal)
		c.closeTUN()
		wantState(t, sub, "linkGone", false)
		wantGone(t, c, "TUN fd closed")
		if s := c.status(); s.State != "disconnected" {
			t.Errorf("owner's status after its fd closed: %+v", s)
		}
		// The slot is free again, for the same connection.
		setUpOK(t, c.call("setUp", setUpParams, ""))
		wantState(t, sub, "setUp", true)
		ok(t, c.call("destroy", "{}", ""))
		wantState(t, sub, "destroy", false)
		d.waitClean(t, "destroy")
	})
	t.Run("link deleted by someone else", func(t *testing.T) {
		kernelOnly(t, "`ip link del` of vpnd's link")
		c, _ := up(t, uidRoot)
		d.ip(t, "link", "del", "vpn-tun")
		wantState(t, sub, "linkGone", false)
		wantGone(t, c, "link deleted")
		ok(t, c.call("destroy", "{}", "")) // nothing left to destroy
	})
	t.Run("owner process killed", func(t *testing.T) {
		c, _ := up(t, uidNormal)
		c.cmd.Process.Kill()
		sc := sub.stateChange()
		if sc.IsConnected || (sc.Reason != "ownerGone" && sc.Reason != "linkGone") {
			t.Errorf("after the owner died: %+v, want ownerGone or linkGone", sc)
		}
		wantGone(t, c, "owner killed")
	})
	t.Run("one notification per change", func(t *testing.T) {
		// A duplicate notification from an earlier subtest would show up
		// here instead of this setUp.
		c, _ := up(t, uidRoot)
		ok(t, c.call("destroy", "{}", ""))
		wantState(t, sub, "destroy", false)
		d.waitClean(t, "destroy")
	})
}

// A VPN whose owner connection ends while a second client is
// subscribed on the owner's own connection.
func TestOwnerSubscribed(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.dial(t, uidNormal)
	ok(t, c.call("subscribe", "{}", ""))
	setUpOK(t, c.call("setUp", setUpParams, ""))
	wantState(t, c, "setUp", true)
	ok(t, c.call("destroy", "{}", ""))
	wantState(t, c, "destroy", false)
	d.waitClean(t, "destroy")
}

// One global slot, 2203002: 20 clients of mixed uids race setUp.
func TestConcurrentSetUp(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	uids := []uint32{0, 0, 0, 0, 1, 1, 2, 2}
	for u := uint32(4000); len(uids) < 20; u++ {
		uids = append(uids, u)
	}
	cs := parallelClients(t, d, uids)
	for round := 0; round < 3; round++ {
		// Write every request before reading any answer.
		ids := make([]int, len(cs))
		for i, c := range cs {
			ids[i] = c.nextID
			c.nextID++
			if _, err := io.WriteString(c.stdin, "send - "+request(ids[i], "setUp", setUpParams, 0)+"\n"); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range cs {
			if _, err := c.collect(); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
		var winner *client
		for i, c := range cs {
			m := c.response(ids[i])
			if m.Error == nil {
				if winner != nil {
					t.Fatalf("round %d: two setUps succeeded (uids %d and %d)", round, winner.uid, c.uid)
				}
				setUpOK(t, m)
				winner = c
				continue
			}
			wantError(t, m, 2203002)
		}
		if winner == nil {
			t.Fatalf("round %d: no setUp succeeded", round)
		}
		if s := d.vpnStatus(t); s.VPN == nil || s.VPN.Owner.UID != winner.uid {
			t.Errorf("round %d: status %+v, want the winner %d's VPN", round, s.VPN, winner.uid)
		}
		if !d.sim {
			d.wantOneVPNFor(t, round, winner.uid)
		}
		ok(t, winner.call("destroy", "{}", ""))
		d.waitClean(t, fmt.Sprintf("round %d destroy", round))
	}
}

// wantOneVPNFor checks that the kernel holds one VPN, owned by uid.
func (d *daemon) wantOneVPNFor(t testing.TB, round int, uid uint32) {
	t.Helper()
	links := 0
	for _, l := range d.links(t) {
		if l.kind() == "tun" {
			links++
		}
	}
	if links != 1 {
		t.Errorf("round %d: %d tun links, want 1", round, links)
	}
	rs := d.vpnRules(t)
	owners := 0
	for _, r := range rs {
		if r.Fwmask != "" {
			owners++
			if !r.covers(uid) {
				t.Errorf("round %d: owner rule %s is not for the winner %d", round, r, uid)
			}
		}
	}
	if owners != 2 { // one per family: IPv6 fails closed
		t.Errorf("round %d: %d owner rules, want 2: %v", round, owners, rs)
	}
}

// protect: bit 0x20000 in SO_MARK, other bits kept; before and after
// setUp; for NORMAL and ADMIN callers. Under sim the mark stays as it was.
func TestProtect(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	root := d.dial(t, uidRoot)
	protect := func(c *client, kind string, want uint32) {
		t.Helper()
		want = d.protectedMark(want &^ d.mark)
		ok(t, c.call("protect", "{}", kind))
		if got := c.mark(); got != want {
			t.Errorf("uid %d %s: SO_MARK %#x after protect, want %#x", c.uid, kind, got, want)
		}
	}
	// OpenHarmony's sample protects the tunnel socket before setUp.
	protect(root, "udpmark1", 0x20001)
	protect(root, "udp6", 0x20000)
	protect(root, "tcp", 0x20000)
	setUpOK(t, root.call("setUp", setUpParams, ""))
	protect(root, "udp", 0x20000)
	protect(root, "udpmark1", 0x20001)
	protect(root, "tcp6", 0x20000)
	ok(t, root.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")

	normal := d.dial(t, uidNormal)
	protect(normal, "udp", 0x20000)
	setUpOK(t, normal.call("setUp", setUpParams, ""))
	protect(normal, "udp", 0x20000)
	protect(normal, "tcp", 0x20000)
	// An ADMIN may protect while another user's VPN is up.
	protect(root, "udp6", 0x20000)
	ok(t, normal.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}

// SIGTERM or SIGINT with a VPN up: subscribers hear "shutdown",
// vpnd removes everything (even though the owner still holds the TUN fd),
// removes its socket file and exits 0.
func TestShutdownWithVPN(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t)
			sub := d.dial(t, uidRoot)
			ok(t, sub.call("subscribe", "{}", ""))
			owner := d.dial(t, uidNormal)
			setUpOK(t, owner.call("setUp", `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["198.51.100.0/24","2001:db8::/32"]}`, ""))
			wantState(t, sub, "setUp", true)
			d.signal(t, sig)
			wantState(t, sub, "shutdown", false)
			if _, open := sub.recv(); open {
				t.Errorf("vpnd sent more after the shutdown notification")
			}
			if code := d.waitExit(t); code != 0 {
				t.Errorf("exit status %d after %v, want 0", code, sig)
			}
			d.stop(t) // checks the socket file and the namespace
		})
	}
}

// Start-up sweep: what a killed vpnd left behind is removed at start;
// what is not vpnd's stays.
func TestStartupSweep(t *testing.T) {
	kernelOnly(t, "the start-up sweep of a killed vpnd's kernel objects")
	t.Parallel()
	t.Run("after SIGKILL", func(t *testing.T) {
		t.Parallel()
		d1 := startDaemon(t)
		owner := d1.dial(t, uidNormal)
		setUpOK(t, owner.call("setUp", `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":[`+
			`"198.51.100.0/24","2001:db8::/32",{"destination":{"address":{"address":"198.51.100.128"},"prefixLength":25},"isExcludedRoute":true}]}`, ""))
		d1.kill(t)
		if p := d1.leftovers(t); len(p) == 0 {
			t.Fatal("a killed vpnd left nothing behind; the sweep cannot be tested")
		}
		d2 := startDaemon(t, inNetns(d1.ns))
		if p := d2.leftovers(t); len(p) > 0 {
			t.Errorf("after start-up: %s", strings.Join(p, "; "))
		}
		c := d2.dial(t, uidRoot)
		setUpOK(t, c.call("setUp", setUpParams, ""))
		ok(t, c.call("destroy", "{}", ""))
		d2.waitClean(t, "destroy")
	})
	t.Run("only vpnd's own objects", func(t *testing.T) {
		t.Parallel()
		prepare := func(t testing.TB, ns string) {
			for _, args := range [][]string{
				// vpnd's: its link name, its priority and table, its table's routes.
				{"tuntap", "add", "vpn-tun", "mode", "tun"},
				{"-4", "rule", "add", "priority", "10000", "uidrange", "5-5", "lookup", "98"},
				{"-6", "rule", "add", "priority", "10000", "uidrange", "5-5", "fwmark", "0/0x20000", "lookup", "98"},
				{"-4", "route", "add", "198.51.100.0/24", "dev", "lo", "table", "98"},
				{"-6", "route", "add", "2001:db8::/32", "dev", "lo", "table", "98"},
				// Not vpnd's.
				{"link", "add", "foreign0", "type", "bridge"},
				{"-4", "rule", "add", "priority", "10000", "uidrange", "6-6", "lookup", "97"},
				{"-4", "rule", "add", "priority", "10001", "uidrange", "7-7", "lookup", "98"},
				{"-4", "route", "add", "203.0.113.0/24", "dev", "lo", "table", "97"},
			} {
				nsIP(t, ns, args...)
			}
		}
		d := startDaemon(t, beforeStart(prepare))
		removeForeign := func() {
			d.ip(t, "-4", "rule", "del", "priority", "10000", "lookup", "97")
			d.ip(t, "-4", "rule", "del", "priority", "10001", "lookup", "98")
			d.ip(t, "link", "del", "foreign0")
		}
		removed := false
		t.Cleanup(func() { // before the leak check
			if !removed {
				removeForeign()
			}
		})
		for _, r := range d.rules(t) {
			if r.Priority == 10000 && r.Table == "98" {
				t.Errorf("vpnd's rule survived the sweep: %s", r)
			}
		}
		if rs := d.routes(t); len(rs) > 0 {
			t.Errorf("routes in table 98 survived the sweep: %v", rs)
		}
		if l := d.link(t, "vpn-tun"); l != nil {
			t.Errorf("link vpn-tun survived the sweep: %+v", l)
		}
		if d.link(t, "foreign0") == nil {
			t.Errorf("the sweep deleted link foreign0")
		}
		var kept97, kept10001 bool
		for _, r := range d.rules(t) {
			kept97 = kept97 || r.Priority == 10000 && r.Table == "97"
			kept10001 = kept10001 || r.Priority == 10001 && r.Table == "98"
		}
		if !kept97 || !kept10001 {
			t.Errorf("the sweep deleted foreign rules: prio 10000 table 97 kept %v, prio 10001 table 98 kept %v", kept97, kept10001)
		}
		if rs := nsRoutes(t, d.ns, 97); len(rs) != 1 {
			t.Errorf("the sweep touched table 97: %v", rs)
		}
		removeForeign()
		removed = true
		// And the VPN works afterwards.
		c := d.dial(t, uidRoot)
		setUpOK(t, c.call("setUp", setUpParams, ""))
		ok(t, c.call("destroy", "{}", ""))
		d.waitClean(t, "destroy")
	})
}

// markOf reads SO_MARK of a socket the test holds.
func markOf(t testing.TB, fd int) uint32 {
	t.Helper()
	m, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(m)
}
