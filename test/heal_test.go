package test

import (
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"
)

const healParams = `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["198.51.100.0/24","2001:db8::/32",
	{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":28},"isExcludedRoute":true}]}`

// kernelView renders vpnd's rules and table routes as sorted text, read
// from the kernel.
func (d *daemon) kernelView(t testing.TB) string {
	t.Helper()
	var lines []string
	for _, r := range d.vpnRules(t) {
		lines = append(lines, r.String())
	}
	lines = append(lines, d.routeStrings(t)...)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestSelfHealing deletes and changes vpnd's rules and routes behind its
// back, as systemd-networkd or a firewall reload would, and checks that
// vpnd puts them back, logs what it restored, and leaves foreign objects.
func TestSelfHealing(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.dial(t, uidRoot)
	setUpOK(t, c.call("setUp", healParams, ""))
	want := d.kernelView(t)
	if n := strings.Count(want, "\n") + 1; n != 7 {
		t.Fatalf("expected 4 rules and 3 routes, got:\n%s", want)
	}
	restored := func(what string) {
		t.Helper()
		eventually(t, what+" restored", func() (bool, string) {
			got := d.kernelView(t)
			return got == want, got
		})
	}

	d.ip(t, "-4", "rule", "del", "priority", "10000", "uidrange", "0-0")
	restored("ipv4 owner rule")
	if !d.logContains("restored rule", "uidrange 0-0") {
		t.Errorf("no warning naming the restored rule in the log:\n%s", d.stderr.String())
	}
	d.ip(t, "-6", "rule", "del", "priority", "10000", "uidrange", "1-4294967294")
	restored("ipv6 rule")
	d.ip(t, "route", "del", "throw", "198.51.100.0/28", "table", "98")
	restored("throw route")
	if !d.logContains("restored route", "throw 198.51.100.0/28") {
		t.Errorf("no warning naming the restored route in the log")
	}
	// A changed route: same destination, now a blackhole.
	d.ip(t, "route", "replace", "blackhole", "2001:db8::/32", "table", "98")
	restored("replaced route")
	// A flush of the whole table (several events at once).
	d.ip(t, "route", "flush", "table", "98")
	restored("flushed table")
	// The link set down loses its IPv4 routes; vpnd brings it back.
	d.ip(t, "link", "set", "vpn-tun", "down")
	restored("routes after link down")

	// Foreign rules at other priorities and routes in other tables are
	// neither touched nor a reason to repair.
	d.ip(t, "rule", "add", "priority", "10001", "uidrange", "5-5", "lookup", "99")
	d.ip(t, "route", "add", "throw", "203.0.113.0/24", "table", "99")
	time.Sleep(100 * time.Millisecond)
	if got := d.ip(t, "rule", "show", "priority", "10001"); !strings.Contains(got, "uidrange 5-5") {
		t.Errorf("foreign rule gone: %q", got)
	}
	d.ip(t, "rule", "del", "priority", "10001")
	d.ip(t, "route", "flush", "table", "99")

	ok(t, c.call("destroy", nil, ""))
	d.waitClean(t, "destroy after healing")
}

// TestSelfHealingThrottled fights vpnd from a shell loop that deletes its
// rule as fast as it can for a while: vpnd's repairs are bounded by its
// token bucket (5, then one per 2 s), it says so once in the log, and the
// rule is back once the fight stops.
func TestSelfHealingThrottled(t *testing.T) {
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
	n := strings.Count(d.stderr.String(), "restored rule")
	if max := 5 + int(elapsed/(2*time.Second)) + 2; n > max {
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
		return got == want, fmt.Sprintf("%s (repairs so far: %d)", got, strings.Count(d.stderr.String(), "restored rule"))
	})
}
