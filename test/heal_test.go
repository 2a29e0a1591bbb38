package test

import (
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"
)

const healParams = `{"addresses":["10.8.0.2/24","fd00::2/64"],"mtu":1400,"routes":["198.51.100.0/24","2001:db8::/32",
	{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":28},"isExcludedRoute":true}]}`

// kernelView renders, read from the kernel, everything self-healing keeps:
// vpnd's link (up state, MTU, addresses), its rules and its table's routes.
func (d *daemon) kernelView(t testing.TB) string {
	t.Helper()
	var lines []string
	if l := d.link(t, d.ifname); l != nil {
		lines = append(lines, fmt.Sprintf("link %s up=%t mtu=%d", d.ifname, l.hasFlag("UP"), l.MTU))
		for _, a := range d.globalAddrs(t) {
			lines = append(lines, "address "+a)
		}
	}
	for _, r := range d.vpnRules(t) {
		lines = append(lines, r.String())
	}
	lines = append(lines, d.routeStrings(t)...)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// repairs counts the self-healing warnings in vpnd's log.
func (d *daemon) repairs() int { return len(d.logEntries("self-healing restored vpn state")) }

// TestSelfHealing changes vpnd's link, rules and routes behind its back, as
// systemd-networkd, a firewall reload or an administrator would, and
// checks that vpnd puts everything back, with one warning per repair that
// counts and names what it restored, and leaves foreign objects alone.
func TestSelfHealing(t *testing.T) {
	kernelOnly(t, "kernel objects changed behind vpnd's back")
	t.Parallel()
	var d *daemon
	var c *client
	var want string
	// fresh starts a vpnd with the VPN up. Each vpnd's repairs are
	// throttled (5 at once, then one every 2 s): rather than wait for its
	// bucket to refill, the cases share one vpnd 4 at a time.
	fresh := func(t *testing.T) {
		d = startDaemon(t)
		c = d.dial(t, uidRoot)
		setUpOK(t, c.call("setUp", healParams, ""))
		want = d.kernelView(t)
		// 1 link + 2 addresses + 4 rules + 5 routes (two of them the addresses' prefix routes)
		if n := strings.Count(want, "\n") + 1; n != 12 {
			t.Fatalf("unexpected initial state:\n%s", want)
		}
	}
	for i, tc := range []struct {
		name   string
		change []string
		logs   []string // substrings of the repair's warning
	}{
		{"ipv4 owner rule deleted", []string{"-4", "rule", "del", "priority", "10000", "uidrange", "0-0"}, []string{`"rules":1`, "uidrange 0-0"}},
		{"ipv6 rule deleted", []string{"-6", "rule", "del", "priority", "10000", "uidrange", "1-4294967294"}, []string{`"rules":1`}},
		{"throw route deleted", []string{"route", "del", "throw", "198.51.100.0/28", "table", "98"}, []string{`"routes":1`, "throw 198.51.100.0/28"}},
		{"route changed to a blackhole", []string{"route", "replace", "blackhole", "2001:db8::/32", "table", "98"}, []string{`"routes":1`, "2001:db8::/32"}},
		{"prefix route deleted", []string{"route", "del", "10.8.0.0/24", "table", "98"}, []string{`"routes":1`, "10.8.0.0/24"}},
		{"ipv4 table flushed", []string{"-4", "route", "flush", "table", "98"}, []string{`"routes":3`}},
		{"ipv6 table flushed", []string{"-6", "route", "flush", "table", "98"}, []string{`"routes":2`}},
		{"ipv4 address deleted", []string{"addr", "del", "10.8.0.2/24", "dev", "vpn-tun"}, []string{`"addresses":1`, "address 10.8.0.2/24"}},
		{"ipv6 address deleted", []string{"addr", "del", "fd00::2/64", "dev", "vpn-tun"}, []string{`"addresses":1`, "address fd00::2/64"}},
		// A link set down loses its routes and its IPv6 addresses.
		{"link set down", []string{"link", "set", "vpn-tun", "down"}, []string{`"link_up":true`, "address fd00::2/64"}},
		{"mtu changed", []string{"link", "set", "vpn-tun", "mtu", "1280"}, []string{`"mtu":1400`}},
	} {
		if i%4 == 0 {
			fresh(t)
		}
		t.Run(tc.name, func(t *testing.T) {
			before := d.repairs()
			d.ip(t, tc.change...)
			eventually(t, "restored", func() (bool, string) {
				got := d.kernelView(t)
				return got == want, got
			})
			eventually(t, "one warning", func() (bool, string) {
				return d.repairs() == before+1, fmt.Sprintf("%d warnings since the change", d.repairs()-before)
			})
			time.Sleep(50 * time.Millisecond) // would vpnd repair its own repair?
			if n := d.repairs() - before; n != 1 {
				t.Errorf("%d repairs for one change, want 1", n)
			}
			entries := d.logEntries("self-healing restored vpn state")
			last := fmt.Sprint(entries[len(entries)-1])
			line := ""
			for _, l := range strings.Split(d.stderr.String(), "\n") {
				if strings.Contains(l, "self-healing restored vpn state") {
					line = l
				}
			}
			for _, s := range tc.logs {
				if !strings.Contains(line, s) {
					t.Errorf("warning %s does not say %q", last, s)
				}
			}
		})
	}

	// Foreign rules at other priorities and routes in other tables are
	// neither touched nor a reason to repair.
	before := d.repairs()
	d.ip(t, "rule", "add", "priority", "10001", "uidrange", "5-5", "lookup", "99")
	d.ip(t, "route", "add", "throw", "203.0.113.0/24", "table", "99")
	time.Sleep(100 * time.Millisecond)
	if got := d.ip(t, "rule", "show", "priority", "10001"); !strings.Contains(got, "uidrange 5-5") {
		t.Errorf("foreign rule gone: %q", got)
	}
	if d.repairs() != before {
		t.Errorf("a foreign change caused a repair")
	}
	d.ip(t, "rule", "del", "priority", "10001")
	d.ip(t, "route", "flush", "table", "99")

	ok(t, c.call("destroy", nil, ""))
	d.waitClean(t, "destroy after healing")
}

// TestSelfHealingThrottled fights vpnd from a loop that deletes its rule as
// fast as it can for a while: vpnd's repairs are bounded by its token
// bucket (5, then one every 500 ms), it says so once in the log, and the
// rule is back once the fight stops.
func TestSelfHealingThrottled(t *testing.T) {
	kernelOnly(t, "kernel objects changed behind vpnd's back")
	t.Parallel()
	d := startDaemon(t)
	c := d.dial(t, uidRoot)
	setUpOK(t, c.call("setUp", `{"addresses":["10.8.0.2/24"]}`, ""))
	want := d.kernelView(t)
	start := time.Now()
	deletes := 0
	for time.Since(start) < 2*time.Second {
		if exec.Command("ip", "-n", d.ns, "rule", "del", "priority", "10000", "uidrange", "0-0").Run() == nil {
			deletes++
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d deletions in %v", deletes, elapsed)
	n := d.repairs()
	if max := 5 + int(elapsed/(500*time.Millisecond)) + 2; n > max {
		t.Errorf("%d repairs in %v, want at most %d", n, elapsed, max)
	}
	if n == 0 {
		t.Errorf("no repair at all")
	}
	if !d.logContains("self-healing throttled") {
		t.Errorf("throttling not logged")
	}
	eventually(t, "rule restored after the fight", func() (bool, string) {
		got := d.kernelView(t)
		return got == want, fmt.Sprintf("%s (repairs so far: %d)", got, d.repairs())
	})
}
