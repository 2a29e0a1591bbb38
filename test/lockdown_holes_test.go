package test

// Holes that policy routing cannot close: with lockdown on, a listed user's
// IPv6 multicast, subnet broadcast, multicast from a socket bound to the
// uplink's address and limited broadcast with a bound source or device
// leave by the uplink, because the local table routes them (priority 0,
// before every rule of vpnd's) or the kernel does not consult the rules for
// them at all. The same holds for the other family of an IPv4-only VPN.
// This test sends the attack's datagrams as uid 2101 from namespace A and
// captures the frames on B's end of the veth.
//
// What it expects of vpnd:
//   - vpnd keeps its own nftables table, `inet vpnd` (internal/firewall),
//     whose output chain drops the packets of lockdown's uids, and of the
//     uids a VPN covers in the family it does not accept, unless they leave
//     by loopback or the VPN's link or carry the protect mark;
//   - such a datagram's sendto fails with EPERM (a netfilter drop);
//   - the table stays when vpnd is SIGKILLed, and a restarted vpnd keeps
//     it; with lockdown off and no VPN, there is no table.
//
// Until vpnd writes the table, this test fails: the frames reach B.

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/firewall/firewalltest"
	"github.com/vpnd/vpnd/vpndtest"
)

func init() { lazyBins["leaksend"] = "./test/internal/leaksend" }

const (
	uidHoles     = 2101 // the attack's uid, locked down
	uidHolesFree = 2102 // not listed
	holesPort    = 9999
	holesLocal   = "7001" // a sink in A, for loopback
)

// The uplink's IPv4 subnet of the attack, added to veth-a.
var (
	holesAddr4  = netip.MustParseAddr("192.168.77.1")
	holesBcast4 = netip.MustParseAddr("192.168.77.255")
)

type holes struct {
	w       *world
	capture *lineProc // B: every frame veth-b receives
	local   *lineProc // A: a sink for loopback
	leaks   []firewalltest.Probe
	n       int
}

func newHoles(t *testing.T, w *world) *holes {
	t.Helper()
	nsIP(t, w.a, "addr", "add", holesAddr4.String()+"/24", "dev", "veth-a")
	h := &holes{w: w, leaks: firewalltest.Leaks("veth-a", holesAddr4, holesBcast4, holesPort)}
	h.capture = startLineProc(t, "netpeer capture", "ip", "netns", "exec", w.b, lazyBin(t, "netpeer"), "capture", "veth-b")
	h.capture.wait(t, "READY")
	h.local = startLineProc(t, "netpeer sink in A", "ip", "netns", "exec", w.a, lazyBin(t, "netpeer"), "sink", holesLocal)
	h.local.wait(t, "READY")
	return h
}

// send runs leaksend in A as uid (keeping CAP_NET_ADMIN to set the mark,
// as vpnd's protect would) and returns each probe's token and answer.
func (h *holes) send(t *testing.T, uid, mark uint32, ps []firewalltest.Probe) (tokens, answers []string) {
	t.Helper()
	argv := []string{"netns", "exec", h.w.a, "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups"}
	if mark != 0 {
		argv = append(argv, "--inh-caps=+net_admin", "--ambient-caps=+net_admin")
	}
	argv = append(argv, lazyBin(t, "leaksend"))
	for _, p := range ps {
		h.n++
		tok := fmt.Sprintf("hole%d-uid%d", h.n, uid)
		p.Mark = mark
		tokens = append(tokens, tok)
		argv = append(argv, p.Arg(tok))
	}
	out, err := exec.Command("ip", argv...).CombinedOutput()
	answers = strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if err != nil || len(answers) != len(ps) {
		t.Fatalf("leaksend as uid %d: %v\n%s", uid, err, out)
	}
	return tokens, answers
}

// wantAtB expects each datagram of uid (mark on its socket if not 0) to be
// sent and to reach B.
func (h *holes) wantAtB(t *testing.T, uid, mark uint32, ps []firewalltest.Probe) {
	t.Helper()
	tokens, answers := h.send(t, uid, mark, ps)
	for i, p := range ps {
		if answers[i] != "OK" {
			t.Errorf("%s, uid %d, mark %#x: sendto: %s; want it sent", p.Name, uid, mark, answers[i])
		} else if !h.sawFrame(tokens[i]) {
			t.Errorf("%s, uid %d, mark %#x: sent, but no frame reached B", p.Name, uid, mark)
		}
	}
}

// sawFrame waits (settle, a hang guard) for B's frame carrying tok.
func (h *holes) sawFrame(tok string) bool {
	return poll(func() (bool, string) { _, ok := h.frame(tok); return ok, "" })
}

// frame returns B's frame whose payload is tok, as netpeer prints it.
func (h *holes) frame(tok string) (string, bool) { return h.capture.find(`"` + tok + `"`) }

// wantBlocked expects each datagram of uid to fail with EPERM and no frame
// of it to reach B, checked after the same datagrams of a user who is not
// listed did reach B. viaVPN allows a datagram to be sent instead, when a
// VPN is up and the kernel may pick its link for an unscoped multicast:
// it still must not reach B.
func (h *holes) wantBlocked(t *testing.T, uid uint32, ps []firewalltest.Probe, viaVPN bool) {
	t.Helper()
	tokens, answers := h.send(t, uid, 0, ps)
	h.wantAtB(t, uidHolesFree, 0, ps)
	for i, p := range ps {
		sent := answers[i] == "OK" && viaVPN && !p.To.Addr().Is4() && p.To.Addr().Zone() == ""
		if !strings.HasPrefix(answers[i], "ERR EPERM ") && !sent {
			t.Errorf("%s, uid %d: sendto: %s; want EPERM", p.Name, uid, answers[i])
		}
		if l, ok := h.frame(tokens[i]); ok {
			t.Errorf("%s, uid %d: reached B: %s", p.Name, uid, l)
		}
	}
	if t.Failed() {
		t.Logf("nftables ruleset in A:\n%s", h.ruleset())
	}
}

// wantLoopback expects uid's datagrams to loopback to be delivered.
func (h *holes) wantLoopback(t *testing.T, uid uint32) {
	t.Helper()
	var ps []firewalltest.Probe
	for _, a := range []string{"127.0.0.1", "::1"} {
		ps = append(ps, firewalltest.Probe{Name: "loopback " + a, To: netip.MustParseAddrPort(bracket(a) + ":" + holesLocal)})
	}
	tokens, answers := h.send(t, uid, 0, ps)
	for i, p := range ps {
		if answers[i] != "OK" {
			t.Errorf("%s, uid %d: sendto: %s", p.Name, uid, answers[i])
			continue
		}
		if !poll(func() (bool, string) { _, ok := h.local.find(" " + tokens[i]); return ok, "" }) {
			t.Errorf("%s, uid %d: not delivered", p.Name, uid)
		}
	}
}

// ruleset is `nft list ruleset` in A, for failure messages and checks.
func (h *holes) ruleset() string {
	out, err := exec.Command("ip", "netns", "exec", h.w.a, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(nft: %v: %s)", err, out)
	}
	return string(out)
}

func ofFamily(ps []firewalltest.Probe, v6 bool) []firewalltest.Probe {
	var out []firewalltest.Probe
	for _, p := range ps {
		if p.To.Addr().Is6() == v6 {
			out = append(out, p)
		}
	}
	return out
}

func TestLockdownHoles(t *testing.T) {
	kernelOnly(t, "real multicast and broadcast frames on a veth, dropped by vpnd's nftables table")
	t.Parallel()
	top := t
	w := newWorld(t)
	h := newHoles(t, w)
	admin := w.dialIn(t, uidRoot)

	t.Run("before lockdown every datagram leaves", func(t *testing.T) {
		h.wantAtB(t, uidHoles, 0, h.leaks)
	})

	ok(t, admin.call("setLockdown", fmt.Sprintf(`{"enabled":true,"applications":["%d"]}`, uidHoles), ""))

	t.Run("lockdown, vpnd running", func(t *testing.T) {
		h.wantBlocked(t, uidHoles, h.leaks, false)
		h.wantAtB(t, uidHoles, defaultMark, h.leaks) // a protected socket
		h.wantLoopback(t, uidHoles)
	})

	t.Run("lockdown, an ADMIN full-tunnel VPN", func(t *testing.T) {
		owner := w.dialIn(t, uidRoot)
		owner.setUpVPN(`"addresses":["10.8.0.2/24","fd00:8::2/64"]`)
		h.wantBlocked(t, uidHoles, h.leaks, true)
		h.wantAtB(t, uidHoles, defaultMark, h.leaks)
		ok(t, owner.call("destroy", "{}", ""))
		w.d.waitClean(t, "destroy")
	})

	t.Run("lockdown, the user's own full tunnel", func(t *testing.T) {
		owner := w.dialIn(t, uidHoles)
		owner.setUpVPN(`"addresses":["10.8.0.2/24","fd00:8::2/64"]`)
		h.wantBlocked(t, uidHoles, h.leaks, true)
		ok(t, owner.call("destroy", "{}", ""))
		w.d.waitClean(t, "destroy")
	})

	t.Run("lockdown off: no table, the datagrams leave", func(t *testing.T) {
		ok(t, admin.call("setLockdown", `{"enabled":false}`, ""))
		if rs := h.ruleset(); strings.Contains(rs, "table inet vpnd") {
			t.Errorf("vpnd's table is still there:\n%s", rs)
		}
		h.wantAtB(t, uidHoles, 0, h.leaks)
	})

	t.Run("fail-closed: an IPv4-only VPN of a NORMAL owner", func(t *testing.T) {
		owner := w.dialIn(t, uidHoles)
		owner.setUpVPN(`"addresses":["10.8.0.2/24"]`)
		h.wantBlocked(t, uidHoles, ofFamily(h.leaks, true), false)
		h.wantAtB(t, uidHoles, defaultMark, ofFamily(h.leaks, true))
		ok(t, owner.call("destroy", "{}", ""))
		w.d.waitClean(t, "destroy")
	})

	t.Run("lockdown, vpnd killed and restarted", func(t *testing.T) {
		ok(t, admin2(t, w).call("setLockdown", fmt.Sprintf(`{"enabled":true,"applications":["%d"]}`, uidHoles), ""))
		w.d.kill(t)
		h.wantBlocked(t, uidHoles, h.leaks, false)
		w.d = startDaemon(top, inNetns(w.a))                          // it outlives this subtest
		w.d.ExpectLeftovers(vpndtest.LockdownRule, vpndtest.Firewall) // lockdown stays on
		h.wantBlocked(t, uidHoles, h.leaks, false)
		h.wantAtB(t, uidHoles, defaultMark, h.leaks)
	})
}
