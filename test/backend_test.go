package test

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"testing"

	"github.com/vpnd/vpnd/test/internal/wire"
)

// The suite runs against either of vpnd's kernels, so that the two cannot
// drift apart: VPND_TEST_BACKEND=kernel (the default) runs vpnd as root on
// the real kernel; VPND_TEST_BACKEND=sim runs `vpnd --sim` as an ordinary
// user (simUID, no capability), whose VPNs exist in vpnd's memory only.
//
// Under sim what an app sees is checked as it is on the kernel,
// through the same socket, with the same clients. What differs:
//   - Tests about the kernel itself (its rules and routes, real packets,
//     the start-up checks, the sweep, self-healing), about vpnd's
//     privileges, or about the host's DNS call kernelOnly and are
//     skipped, with the reason.
//   - The kernel views of a daemon (d.link, d.routes, d.vpnRules...) fail
//     the test under sim (kns): there is nothing of the VPN to see there.
//     Tests that run on both keep such checks in an `if !d.sim` block.
//   - A few helpers check vpnd's own word where, on the kernel, they read
//     the kernel: wantTUNLink, wantRichVPN, wantVPNIndex and snapshot ask
//     status; waitClean waits for status to say disconnected too.
//   - The namespace must stay as it was: d.leftovers and the harness's
//     leak checks read the kernel under both, and under sim find nothing.

// simBackend is VPND_TEST_BACKEND=sim.
var simBackend bool

// simUID is the user a simulated vpnd runs as: no passwd entry, no
// capability, and no uid any test's clients use.
const simUID = 4321

// backendFromEnv reads VPND_TEST_BACKEND.
func backendFromEnv() error {
	switch v := os.Getenv("VPND_TEST_BACKEND"); v {
	case "", "kernel":
		simBackend = false
	case "sim":
		simBackend = true
	default:
		return fmt.Errorf("VPND_TEST_BACKEND=%q: want kernel or sim", v)
	}
	return nil
}

// kernelOnly skips t under the simulated backend: the test checks the
// kernel, or moves real packets, and why says how.
func kernelOnly(t testing.TB, why string) {
	t.Helper()
	if simBackend {
		t.Skipf("kernel only: %s", why)
	}
}

// simPrefix makes `ip netns exec` run vpnd as simUID, with no capability
// and no way to gain one.
func simPrefix() []string {
	id := fmt.Sprint(simUID)
	return []string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups", "--inh-caps=-all", "--no-new-privs"}
}

// forSim hands a directory vpnd must write in to the simulated vpnd's user.
func forSim(t testing.TB, dir string) {
	t.Helper()
	if err := os.Chown(dir, simUID, simUID); err != nil {
		t.Fatal(err)
	}
}

// kns is the daemon's namespace, for reading vpnd's objects from the
// kernel. It fails the test while vpnd is simulated: none are there, and an
// assertion about them would fail, or pass for the wrong reason.
func (d *daemon) kns(t testing.TB) string {
	t.Helper()
	if d.sim {
		t.Fatalf("this reads vpnd's objects from the kernel, where a simulated vpnd puts nothing: mark the test kernelOnly, or check this under `if !d.sim`")
	}
	return d.ns
}

// vpnStatus asks vpnd for status on a connection of its own (as root).
func (d *daemon) vpnStatus(t testing.TB) statusResult {
	t.Helper()
	c, err := wire.Dial(d.sock)
	if err != nil {
		t.Fatalf("dial %s: %v", d.sock, err)
	}
	defer c.Close()
	writeLine(t, c, request(1, "status", "{}", 0))
	var s statusResult
	if err := json.Unmarshal(ok(t, mustRead(t, c)), &s); err != nil {
		t.Fatalf("status result: %v", err)
	}
	return s
}

// simVPN returns the VPN a simulated vpnd reports, failing if there is
// none, or if it is not marked simulated.
func (d *daemon) simVPN(t testing.TB) *vpnInfo {
	t.Helper()
	s := d.vpnStatus(t)
	if s.State != "connected" || s.VPN == nil {
		t.Fatalf("status %+v, want a VPN", s)
	}
	if !s.VPN.Simulated || s.VPN.Interface != d.ifname {
		t.Errorf("VpnInfo interface %q simulated %v, want %s and simulated", s.VPN.Interface, s.VPN.Simulated, d.ifname)
	}
	return s.VPN
}

// simTUNLink is wantTUNLink under sim: status shows the VPN with this MTU.
// The ipLink it returns holds vpnd's index and MTU.
func (d *daemon) simTUNLink(t testing.TB, mtu int) ipLink {
	t.Helper()
	v := d.simVPN(t)
	if v.MTU != mtu {
		t.Errorf("VpnInfo mtu %d, want %d", v.MTU, mtu)
	}
	return ipLink{Ifindex: v.Index, Ifname: v.Interface, MTU: v.MTU, Flags: []string{"UP"}}
}

// simRichVPN is wantRichVPN under sim: status shows all of richConfig for
// owner.
func (d *daemon) simRichVPN(t testing.TB, owner uint32) {
	t.Helper()
	v := d.simVPN(t)
	if v.Owner.UID != owner || v.MTU != 1500 {
		t.Errorf("VpnInfo owner %d mtu %d, want %d and 1500", v.Owner.UID, v.MTU, owner)
	}
	if got, want := sorted(v.Addresses...), sorted("10.8.0.2/24", "fd00::2/64"); !equalStrings(got, want) {
		t.Errorf("VpnInfo addresses %v, want %v", got, want)
	}
	if got, want := sorted(v.Routes...), sorted("198.51.100.0/24", "2001:db8::/32"); !equalStrings(got, want) {
		t.Errorf("VpnInfo routes %v, want %v", got, want)
	}
	if got := sorted(v.ExcludedRoutes...); !equalStrings(got, richThrowRoutes) {
		t.Errorf("VpnInfo excludedRoutes %v, want %v", got, richThrowRoutes)
	}
}

// simSnapshot is snapshot under sim: the VPN as status describes it.
func (d *daemon) simSnapshot(t testing.TB) kernelSnapshot {
	t.Helper()
	v := d.simVPN(t)
	routes := slices.Clone(v.Routes)
	for _, r := range v.ExcludedRoutes {
		routes = append(routes, "throw "+r)
	}
	sort.Strings(routes)
	return kernelSnapshot{mtu: v.MTU, up: true, addrs: sorted(v.Addresses...), routes: routes,
		rules: []string{fmt.Sprintf("owner %d since %s", v.Owner.UID, v.Since)}}
}

// hasVPN reports whether the VPN is up: on the kernel, its link with
// routes in the table; under sim, in status.
func (d *daemon) hasVPN(t testing.TB) bool {
	t.Helper()
	if d.sim {
		return d.vpnStatus(t).State == "connected"
	}
	return d.link(t, d.ifname) != nil && len(d.routes(t)) > 0
}

// protectedMark is the SO_MARK a socket with mark base has after protect:
// base with vpnd's bit on the kernel; base under sim, which sets no mark.
func (d *daemon) protectedMark(base uint32) uint32 {
	if d.sim {
		return base
	}
	return base | d.mark
}
