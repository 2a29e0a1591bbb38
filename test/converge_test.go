package test

// The kernel converges: whatever another program does to vpnd's objects,
// vpnd puts back what it wants and removes what it does not, and its own
// leftovers are never taken for someone else's (docs/design.md, "One
// reconciler").

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"
)

// fullRoutes lists the routes of vpnd's table with everything the kernel
// tells two routes apart by, and what vpnd sets: protocol, scope, metric.
func (d *daemon) fullRoutes(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, fam := range []string{"-4", "-6"} {
		raw := nsIP(t, d.ns, "-j", "-d", fam, "route", "show", "table", fmt.Sprint(d.table))
		var rs []struct {
			Type, Dst, Gateway, Dev, Protocol, Scope string
			Metric                                   int
		}
		if err := json.Unmarshal([]byte(raw), &rs); err != nil {
			t.Fatalf("ip -j route: %v: %s", err, raw)
		}
		for _, r := range rs {
			s := fmt.Sprintf("%s %s %s via=%s dev=%s proto=%s scope=%s metric=%d", fam, r.Type, r.Dst, r.Gateway, r.Dev, r.Protocol, r.Scope, r.Metric)
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// fullView is kernelView with the routes' protocols, scopes and metrics.
func (d *daemon) fullView(t testing.TB) string {
	t.Helper()
	return d.kernelView(t) + "\n" + strings.Join(d.fullRoutes(t), "\n")
}

// An excluded route replaced with another protocol (`ip route replace
// ... proto boot`, the same route to the kernel) is put back as vpnd makes
// it; replaced again just before a destroy, it is deleted all the same,
// and the next setUp is not refused.
func TestRouteReplacedWithAnotherProtocol(t *testing.T) {
	kernelOnly(t, "routes replaced behind vpnd's back")
	t.Parallel()
	d := startDaemon(t)
	c := d.dial(t, uidRoot)
	const cfg = `{"addresses":["10.8.0.2/24"],"routes":["0.0.0.0/0",{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16},"isExcludedRoute":true}]}`
	setUpOK(t, c.call("setUp", cfg, ""))
	want := d.fullView(t)
	d.ip(t, "route", "replace", "throw", "10.1.0.0/16", "table", "98", "proto", "boot")
	// The repair's warning proves there was something to put back.
	eventually(t, "route put back as vpnd makes it", func() (bool, string) {
		got := d.fullView(t)
		return got == want && d.logContains("self-healing restored vpn state", "10.1.0.0/16"), got
	})
	d.ip(t, "route", "replace", "throw", "10.1.0.0/16", "table", "98", "proto", "boot")
	ok(t, c.call("destroy", "{}", ""))
	if p := d.leftovers(t); len(p) > 0 {
		t.Errorf("after destroy: %s", strings.Join(p, "; "))
	}
	setUpOK(t, c.call("setUp", cfg, ""))
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}

// TestChaos: while a VPN with excluded routes is up, another program keeps
// deleting, replacing (another protocol, scope or metric) and flushing
// vpnd's rules and routes, and churns a foreign table so that vpnd's dumps
// are interrupted; the owner and another user send packets throughout.
// Once the churn stops, vpnd's objects are back (the time it took is
// logged: BENCHMARKS.md has the figure), the owner's packets enter the VPN
// and none leaves by the uplink, destroy leaves the kernel clean and the
// next setUp succeeds. vpnd is never restarted.
func TestChaos(t *testing.T) {
	kernelOnly(t, "kernel objects changed behind vpnd's back, real packets")
	t.Parallel()
	w := newWorld(t)
	owner := w.dialIn(t, uidNormal)
	other := w.dialIn(t, uidNormal2)
	owner.setUpVPN(twVPN)
	want := w.d.fullView(t)

	churn := `
end=$(( $(date +%s%N) + 2500000000 ))
i=0
while [ $(date +%s%N) -lt $end ]; do
  i=$((i+1))
  ip rule del priority 10000 2>/dev/null
  ip -6 rule del priority 10000 2>/dev/null
  ip route replace throw 198.51.100.2/32 table 98 proto boot 2>/dev/null
  ip route replace 198.51.100.0/24 dev vpn-tun table 98 proto static scope host 2>/dev/null
  ip route add throw 198.51.100.0/24 table 98 metric 5 2>/dev/null
  ip -6 route replace throw 2001:db8:100::2/128 table 98 proto kernel 2>/dev/null
  ip -6 route add 2001:db8:100::/64 dev lo table 98 metric 7 2>/dev/null
  ip route flush table 98 2>/dev/null
  ip link set vpn-tun mtu 1300 2>/dev/null
  for j in 1 2 3 4 5 6 7 8; do echo "route add 10.200.$((i % 200)).$j/32 dev lo table 200"; done | ip -batch - 2>/dev/null
  ip route flush table 200 2>/dev/null
done
echo rounds=$i`
	done := make(chan string, 1)
	go func() {
		out, _ := exec.Command("ip", "netns", "exec", w.a, "sh", "-c", churn).CombinedOutput()
		done <- string(out)
	}()
	// Both users send throughout; where their datagrams go while the
	// rules are being deleted is the churn's business.
	sent := 0
	for churning := true; churning; {
		select {
		case out := <-done:
			t.Logf("churn: %s", strings.TrimSpace(out))
			churning = false
		default:
			for _, c := range []*client{owner, other} {
				tok := w.token("during churn")
				c.newSock(tok, "udp")
				c.udpSend(tok, twRemote4, twSinkPort, tok)
				sent++
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	stopped := time.Now()
	eventually(t, "vpnd's objects back after the churn", func() (bool, string) {
		got := w.d.fullView(t)
		return got == want, got
	})
	t.Logf("vpnd's objects were back %v after the churn stopped (%d datagrams sent during it)", time.Since(stopped).Round(time.Millisecond), sent)
	if n := w.d.repairs(); n == 0 {
		t.Error("no repair logged")
	}
	// From now on the owner's traffic enters the VPN, and never leaves by
	// the uplink; the other user's does not enter it.
	f := twFamilies[0]
	var captured []string
	for i := range 5 {
		captured = append(captured, w.wantCaptured(t, f, owner, owner, "", twRemote4, fmt.Sprint("owner after the churn ", i)))
	}
	w.wantAtB(t, f, other, owner, "", twRemote4, "another user after the churn")
	w.wantNotAtB(t, captured...)
	captured = []string{w.wantCaptured(t, twFamilies[1], owner, owner, "", twRemote6, "owner over IPv6 after the churn")}
	w.wantAtB(t, f, owner, owner, "", twExcluded4, "owner to an excluded address")
	w.wantNotAtB(t, captured...)

	ok(t, owner.call("destroy", "{}", ""))
	if p := w.d.leftovers(t); len(p) > 0 {
		t.Errorf("after destroy: %s", strings.Join(p, "; "))
	}
	owner.setUpVPN(twVPN)
	ok(t, owner.call("destroy", "{}", ""))
	w.d.waitClean(t, "destroy")
}
