package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Lockdown: chosen users' traffic may leave only through a VPN, whatever
// happens to the VPN and to vpnd. Every transition is checked with real
// datagrams in the two-namespace world, and the kernel's own answer
// (`ip route get ... uid N`) is sampled across the transitions that must
// have no window.

// lockdownRules lists the rules at lockdown's priority.
func (d *daemon) lockdownRules(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, r := range d.rules(t) {
		if r.Priority == d.priority+1 {
			out = append(out, r.String())
		}
	}
	return out
}

// Errors of a refused sendto: a lockdown rule ("unreachable" action)
// answers ENETUNREACH; an unreachable route, EHOSTUNREACH.
const (
	errNetUnreach  = "network is unreachable"
	errHostUnreach = "no route to host"
)

// wantRefused sends a datagram from a fresh unprotected socket of sender
// and expects ENETUNREACH at once (errHostUnreach if given), and nothing at B.
func (w *world) wantRefused(t *testing.T, f twFamily, sender *client, dst, what string, errText ...string) {
	t.Helper()
	want := errNetUnreach
	if len(errText) > 0 {
		want = errText[0]
	}
	tok := w.token(what)
	sender.newSock(tok, f.udp)
	_, err := sender.do(fmt.Sprintf("sendto %s %s %s %s", tok, dst, twSinkPort, tok))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: sendto %s = %v, want %q", what, dst, err, want)
	}
	if l, ok := w.sink.find(tok); ok {
		t.Errorf("%s: refused datagram reached B: %q", what, l)
	}
}

// routeSampler asks the kernel, again and again until stopped, how it
// routes dst for uid, and remembers every distinct answer.
type routeSampler struct {
	mu      sync.Mutex
	answers map[string]int
	stop    chan struct{}
	done    chan struct{}
}

func (w *world) sampleRoutes(t *testing.T, dst string, uid uint32) *routeSampler {
	s := &routeSampler{answers: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			got := w.ipRouteGet(t, dst, uid)
			// Keep what decides the path: unreachable, or the device.
			key := got
			if i := strings.Index(got, " dev "); i >= 0 {
				key = "dev " + strings.Fields(got[i+5:])[0]
			} else if strings.Contains(got, "unreachable") {
				key = "unreachable"
			}
			s.mu.Lock()
			s.answers[key]++
			s.mu.Unlock()
		}
	}()
	return s
}

// waitFor polls until the sampler has had answer, or more answers than
// after (its count of all answers so far), so that a test waits for the
// sampler instead of sleeping while it may not have run.
func (s *routeSampler) waitFor(t *testing.T, answer string, after int) {
	t.Helper()
	eventually(t, "the route sampler's answers", func() (bool, string) {
		s.mu.Lock()
		seen, desc := answer == "" || s.answers[answer] > 0, fmt.Sprint(s.answers)
		s.mu.Unlock()
		return seen && s.count() > after, desc
	})
}

// count is how many answers the sampler has had.
func (s *routeSampler) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.answers {
		n += c
	}
	return n
}

// finish stops the sampler and returns its answers.
func (s *routeSampler) finish() map[string]int {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answers
}

func TestLockdown(t *testing.T) {
	kernelOnly(t, "real datagrams refused by lockdown's kernel rules (sim_test.go covers lockdown under sim)")
	t.Parallel()
	top := t
	w := newWorld(t)
	admin := w.dialIn(t, uidRoot)
	app := w.dialIn(t, uidNormal)    // the listed user's VPN app
	listed := w.dialIn(t, uidNormal) // another process of the listed user
	free := w.dialIn(t, uidNormal2)  // a user who is not listed
	ipv4, ipv6 := twFamilies[0], twFamilies[1]

	t.Run("only an admin may set lockdown", func(t *testing.T) {
		wantError(t, app.call("setLockdown", `{"enabled":true,"applications":["4000"]}`, ""), 201, "needs an admin account")
		wantError(t, admin.call("setLockdown", `{"enabled":true}`, ""), 19900001, "applications: at least 1 entry required")
		wantError(t, admin.call("setLockdown", `{"enabled":true,"applications":["no-such-user-xyz"]}`, ""), 19900001, "applications[0]")
		if r := w.d.lockdownRules(t); len(r) != 0 {
			t.Fatalf("refused setLockdown left rules: %v", r)
		}
	})

	// The app protects its tunnel socket before anything else, as a VPN
	// app does; it must pass whatever lockdown says.
	app.newSock("tunnel", ipv4.udp)
	app.protectSock("tunnel")

	ok(t, admin.call("setLockdown", `{"enabled":true,"applications":["4000"]}`, ""))
	wantRules := sorted(
		fmt.Sprintf("ipv4 prio %d uidrange %d-%d fwmark 0/0x20000 unreachable", w.d.priority+1, uidNormal, uidNormal),
		fmt.Sprintf("ipv6 prio %d uidrange %d-%d fwmark 0/0x20000 unreachable", w.d.priority+1, uidNormal, uidNormal))
	if got := sorted(w.d.lockdownRules(t)...); !equalStrings(got, wantRules) {
		t.Fatalf("lockdown rules %q, want %q", got, wantRules)
	}

	t.Run("no VPN: blocked", func(t *testing.T) {
		for _, f := range twFamilies {
			w.wantRefused(t, f, listed, f.remote, "listed user, no VPN")
			w.wantAtB(t, f, free, nil, "", f.remote, "a user who is not listed")
		}
		w.wantAtB(t, ipv4, app, nil, "tunnel", ipv4.remote, "the listed user's protected socket")
		if got := w.ipRouteGet(t, ipv4.remote, uidNormal); !strings.Contains(got, "unreachable") {
			t.Errorf("ip route get %s uid %d = %q, want unreachable", ipv4.remote, uidNormal, got)
		}
	})

	info := app.setUpVPN(twVPN)
	t.Run("VPN up: carried", func(t *testing.T) {
		for _, f := range twFamilies {
			tok := w.wantCaptured(t, f, listed, app, "", f.remote, "listed user, VPN up")
			// Outside the VPN's routes (an excluded route) nothing carries
			// the listed user's traffic: still refused.
			w.wantRefused(t, f, listed, f.excluded, "listed user, excluded route")
			w.wantAtB(t, f, free, app, "", f.remote, "a user who is not listed")
			w.wantNotAtB(t, tok)
		}
		w.wantAtB(t, ipv4, app, app, "tunnel", ipv4.remote, "the listed user's protected socket")
	})

	t.Run("owner killed: blocked at once", func(t *testing.T) {
		s := w.sampleRoutes(t, ipv4.remote, uidNormal)
		s.waitFor(t, "dev vpn-tun", 0)
		app.cmd.Process.Signal(syscall.SIGKILL)
		w.d.waitClean(t, "owner killed")
		s.waitFor(t, "unreachable", 0)
		answers := s.finish()
		for k := range answers {
			// "dev ifN": the TUN, unregistering after its fd was closed by
			// the kill, no longer has a name; what is sent there is dropped.
			if k != "dev vpn-tun" && k != "unreachable" && k != fmt.Sprintf("dev if%d", info.Index) {
				t.Errorf("while the VPN went away the kernel answered %q (%d times): a window", k, answers[k])
			}
		}
		if answers["unreachable"] == 0 || answers["dev vpn-tun"] == 0 {
			t.Errorf("samples %v: the sampler did not see both sides of the transition", answers)
		}
		w.wantRefused(t, ipv4, listed, ipv4.remote, "listed user after the owner died")
	})

	t.Run("vpnd killed and restarted: blocked throughout", func(t *testing.T) {
		rulesBefore := w.d.lockdownRules(t)
		s := w.sampleRoutes(t, ipv4.remote, uidNormal)
		s6 := w.sampleRoutes(t, ipv6.remote, uidNormal)
		s.waitFor(t, "", 0)
		s6.waitFor(t, "", 0)
		w.d.kill(t)
		w.wantRefused(t, ipv4, listed, ipv4.remote, "listed user while vpnd is down")
		n, n6 := s.count(), s6.count()
		w.d = startDaemon(top, inNetns(w.a)) // it outlives this subtest
		s.waitFor(t, "", n)
		s6.waitFor(t, "", n6)
		for _, answers := range []map[string]int{s.finish(), s6.finish()} {
			if len(answers) != 1 || answers["unreachable"] == 0 {
				t.Errorf("while vpnd restarted the kernel answered %v, want only unreachable", answers)
			}
		}
		if got := w.d.lockdownRules(t); !equalStrings(sorted(got...), sorted(rulesBefore...)) {
			t.Errorf("lockdown rules after the restart %q, want %q", got, rulesBefore)
		}
		if w.d.logContains("removed leftover rule", "unreachable") {
			t.Errorf("the sweep removed a wanted lockdown rule")
		}
		var st statusResult
		if err := json.Unmarshal(ok(t, admin2(t, w).call("status", "{}", "")), &st); err != nil {
			t.Fatal(err)
		}
		if !st.Lockdown.Enabled || !equalStrings(st.Lockdown.Applications, []string{"4000"}) {
			t.Errorf("status after the restart: lockdown %+v", st.Lockdown)
		}
	})

	t.Run("lockdown off: free", func(t *testing.T) {
		ok(t, admin2(t, w).call("setLockdown", `{"enabled":false}`, ""))
		if r := w.d.lockdownRules(t); len(r) != 0 {
			t.Fatalf("rules left after lockdown off: %v", r)
		}
		for _, f := range twFamilies {
			w.wantAtB(t, f, listed, nil, "", f.remote, "the user, lockdown off")
		}
		// This vpnd started with lockdown on, whose rules a goroutine keeps
		// in place; with lockdown off it has one goroutine less.
		w.d.baseGoroutines--
	})
}

// admin2 dials the world's (current) vpnd as root.
func admin2(t *testing.T, w *world) *client { return w.dialIn(t, uidRoot) }

// TestLockdownSweep: at start, the sweep removes lockdown rules that the
// stored state does not want, and leaves the wanted ones alone.
func TestLockdownSweep(t *testing.T) {
	kernelOnly(t, "the start-up sweep of lockdown's kernel rules")
	t.Parallel()
	d := startDaemon(t)
	admin := d.dial(t, uidRoot)
	ok(t, admin.call("setLockdown", `{"enabled":true,"applications":["4000","4001","4005"]}`, ""))
	want := sorted(d.lockdownRules(t)...)
	if len(want) != 4 { // 4000-4001 and 4005, per family
		t.Fatalf("lockdown rules %q", want)
	}
	d.kill(t)
	// A rule of a lockdown the state no longer wants, left by a killed vpnd.
	d.ip(t, "rule", "add", "priority", fmt.Sprint(d.priority+1), "uidrange", "4100-4100", "fwmark", "0/0x20000", "unreachable")
	// And a foreign rule at that priority, which is not vpnd's shape.
	d.ip(t, "rule", "add", "priority", fmt.Sprint(d.priority+1), "from", "203.0.113.0/24", "lookup", "main")
	d2 := startDaemon(t, inNetns(d.ns))
	got := sorted(d2.lockdownRules(t)...)
	wantAfter := sorted(append(append([]string{}, want...),
		fmt.Sprintf("ipv4 prio %d lookup main", d.priority+1))...)
	if !equalStrings(got, wantAfter) {
		t.Errorf("after the sweep %q, want %q", got, wantAfter)
	}
	if !d2.logContains("removed leftover rule", "uidrange 4100-4100") {
		t.Errorf("the sweep did not log the unwanted lockdown rule")
	}
	d2.ip(t, "rule", "del", "priority", fmt.Sprint(d.priority+1), "from", "203.0.113.0/24", "lookup", "main")
}
