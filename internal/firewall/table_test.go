package firewall

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go.uber.org/goleak"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// foreignTable is a firewalld-like table of another program: vpnd must
// never touch it.
const foreignTable = `table inet filter {
	set trusted {
		type ipv4_addr
		elements = { 192.0.2.7 }
	}
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @trusted accept
	}
	chain output {
		type filter hook output priority filter; policy accept;
		meta skuid 2101 counter accept
	}
}
`

// foreign is the firewalld-like table of another program, next to vpnd's.
type foreign struct{ before string }

// openTable opens vpnd's table in the test's namespace, next to the
// foreign table.
func openTable(t *testing.T) (*Table, *foreign) {
	t.Helper()
	needNft(t)
	f := &foreign{}
	f.load(t)
	tab, err := Open("vpnd")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { tab.Close() })
	return tab, f
}

// load (re)loads the foreign table and remembers it, handles included.
func (f *foreign) load(t *testing.T) {
	t.Helper()
	nftFile(t, foreignTable)
	f.before = nft(t, "-a", "list", "table", "inet", "filter")
}

// intact checks that the foreign table is exactly as loaded, handles
// included: it was never re-created or flushed.
func (f *foreign) intact(t *testing.T) {
	t.Helper()
	if after := nft(t, "-a", "list", "table", "inet", "filter"); after != f.before {
		t.Errorf("the foreign table changed:\n%s\nwas:\n%s", after, f.before)
	}
}

// nftFile loads a ruleset file with nft -f.
func nftFile(t *testing.T, text string) {
	t.Helper()
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s\n%s", err, out, text)
	}
}

func holds(t *testing.T, tab *Table, s Spec) bool {
	t.Helper()
	ok, err := tab.Holds(s)
	if err != nil {
		t.Fatalf("Holds: %v", err)
	}
	return ok
}

// wantListed checks that `nft list table inet vpnd` prints Render(s), up
// to white space (nft wraps long element lists).
func wantListed(t *testing.T, s Spec) {
	t.Helper()
	out, err := exec.Command("nft", "list", "table", "inet", "vpnd").CombinedOutput()
	if s.Empty() {
		if err == nil || !strings.Contains(string(out), "No such file or directory") {
			t.Errorf("nft list table inet vpnd: %v\n%s\nwant no table", err, out)
		}
		return
	}
	if err != nil {
		t.Fatalf("nft list table inet vpnd: %v\n%s", err, out)
	}
	if got, want := strings.Join(strings.Fields(string(out)), " "), strings.Join(strings.Fields(Render("vpnd", s)), " "); got != want {
		t.Errorf("nft lists:\n%s\nRender says:\n%s", out, Render("vpnd", s))
	}
}

func TestApplyHolds(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	tab, other := openTable(t)
	if !holds(t, tab, Spec{}) {
		t.Fatalf("a fresh namespace does not hold the empty Spec")
	}
	if holds(t, tab, typical) {
		t.Fatalf("a fresh namespace holds %+v", typical)
	}
	largest := Spec{Lockdown: rangesOf(stride(2001, 256)), FailClosedV4: complementOf(stride(10001, 256)),
		FailClosedV6: complementOf(stride(10001, 256)), AllowIfname: "a-15-byte-name0", ProtectMark: 0xffffffff}
	others := []Spec{
		{Lockdown: typical.Lockdown, AllowIfname: typical.AllowIfname, ProtectMark: typical.ProtectMark},
		{Lockdown: typical.Lockdown, FailClosedV6: typical.FailClosedV6, ProtectMark: typical.ProtectMark},
		{Lockdown: typical.Lockdown, FailClosedV6: typical.FailClosedV6, AllowIfname: typical.AllowIfname},
		{Lockdown: typical.Lockdown, FailClosedV6: typical.FailClosedV6, AllowIfname: "vpn-tun2", ProtectMark: 0x20000},
		{Lockdown: typical.Lockdown, FailClosedV6: typical.FailClosedV6, AllowIfname: "vpn-tun", ProtectMark: 0x10000},
		{Lockdown: []UIDRange{{Start: 2101, End: 2101}}, FailClosedV6: typical.FailClosedV6, AllowIfname: "vpn-tun", ProtectMark: 0x20000},
		{Lockdown: typical.Lockdown, FailClosedV4: typical.FailClosedV6, AllowIfname: "vpn-tun", ProtectMark: 0x20000},
		{FailClosedV6: typical.Lockdown},
		largest,
	}
	for _, s := range append([]Spec{typical}, others...) {
		for range 2 { // idempotent
			if err := tab.Apply(s); err != nil {
				t.Fatalf("Apply(%+v): %v", s, err)
			}
		}
		if !holds(t, tab, s) {
			t.Errorf("after Apply(%+v) Holds says no:\n%s", s, nft(t, "list", "table", "inet", "vpnd"))
		}
		if holds(t, tab, Spec{}) {
			t.Errorf("after Apply(%+v) Holds(empty) says yes", s)
		}
		for _, o := range append([]Spec{typical}, others...) {
			if Render("vpnd", o) != Render("vpnd", s) && holds(t, tab, o) {
				t.Errorf("after Apply(%+v) Holds(%+v) says yes", s, o)
			}
		}
		wantListed(t, s)
		other.intact(t)
	}
	// Bad input changes nothing.
	if err := tab.Apply(Spec{Lockdown: []UIDRange{{Start: 3, End: 2}}}); err == nil {
		t.Errorf("Apply of a backwards range succeeded")
	}
	if !holds(t, tab, largest) {
		t.Errorf("a refused Apply changed the table")
	}
	for range 2 {
		if err := tab.Apply(Spec{}); err != nil {
			t.Fatalf("Apply(empty): %v", err)
		}
	}
	if !holds(t, tab, Spec{}) || holds(t, tab, typical) {
		t.Errorf("after Apply(empty) the table is still there")
	}
	wantListed(t, Spec{})
	other.intact(t)
}

func stride(from uint32, n int) []uint32 {
	var out []uint32
	for i := range uint32(n) {
		out = append(out, from+2*i)
	}
	return out
}

// handleOf returns the handle of the output chain's rule whose line
// contains text.
func handleOf(t *testing.T, text string) string {
	t.Helper()
	out := nft(t, "-a", "list", "chain", "inet", "vpnd", "output")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, text) {
			if m := regexp.MustCompile(`# handle (\d+)$`).FindStringSubmatch(strings.TrimSpace(l)); m != nil {
				return m[1]
			}
		}
	}
	t.Fatalf("no rule %q in:\n%s", text, out)
	return ""
}

// foreignChanges are what another program may do to vpnd's table; after
// each, Holds must say no, and Apply must restore the table.
//
// Those named "... with the library" run in the test's own process, whose
// transactions Watch does not report.
var foreignChanges = []struct {
	name   string
	change func(t *testing.T)
}{
	{"delete the table", func(t *testing.T) { nft(t, "delete", "table", "inet", "vpnd") }},
	{"delete the table with the library", func(t *testing.T) {
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		c.DelTable(&nftables.Table{Name: "vpnd", Family: nftables.TableFamilyINet})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}},
	{"flush the ruleset", func(t *testing.T) { nft(t, "flush", "ruleset") }},
	{"delete one rule", func(t *testing.T) {
		nft(t, "delete", "rule", "inet", "vpnd", "output", "handle", handleOf(t, "meta mark"))
	}},
	{"flush the chain", func(t *testing.T) { nft(t, "flush", "chain", "inet", "vpnd", "output") }},
	{"append a rule", func(t *testing.T) { nft(t, "add", "rule", "inet", "vpnd", "output", "counter") }},
	{"insert a rule", func(t *testing.T) { nft(t, "insert", "rule", "inet", "vpnd", "output", "accept") }},
	{"add a rule with the library", func(t *testing.T) {
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tab := &nftables.Table{Name: "vpnd", Family: nftables.TableFamilyINet}
		c.InsertRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Name: "output", Table: tab}, Exprs: lockdownAccept()})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}},
	{"replace drop with accept", func(t *testing.T) {
		nft(t, "replace", "rule", "inet", "vpnd", "output", "handle", handleOf(t, "@lockdown drop"), "meta", "skuid", "@lockdown", "accept")
	}},
	{"add a counter to a rule", func(t *testing.T) {
		nft(t, "replace", "rule", "inet", "vpnd", "output", "handle", handleOf(t, "@lockdown drop"), "meta", "skuid", "@lockdown", "counter", "drop")
	}},
	{"change the chain's policy", func(t *testing.T) { nft(t, "chain", "inet", "vpnd", "output", "{ policy drop; }") }},
	{"make the table dormant", func(t *testing.T) { nft(t, "add", "table", "inet", "vpnd", "{ flags dormant; }") }},
	{"add a chain", func(t *testing.T) { nft(t, "add", "chain", "inet", "vpnd", "extra") }},
	{"add a base chain", func(t *testing.T) {
		nft(t, "add", "chain", "inet", "vpnd", "input", "{ type filter hook input priority 0; policy accept; }")
	}},
	{"add a set", func(t *testing.T) { nft(t, "add", "set", "inet", "vpnd", "extra", "{ type uid; }") }},
	{"add a stateful object", func(t *testing.T) { nft(t, "add", "counter", "inet", "vpnd", "extra") }},
	{"replace the chain with another hook", func(t *testing.T) {
		nftFile(t, "delete table inet vpnd\n"+strings.Replace(Render("vpnd", typical), "hook output", "hook postrouting", 1))
	}},
	{"replace a set's uids", func(t *testing.T) {
		nftFile(t, "delete table inet vpnd\n"+strings.Replace(Render("vpnd", typical), "2101, ", "2102, ", 1))
	}},
}

// lockdownAccept is `meta skuid @lockdown accept`.
func lockdownAccept() []expr.Any {
	n, _ := typical.normalize()
	for _, r := range n.rules() {
		if strings.Contains(r.text, "@lockdown") {
			return append(r.exprs[:len(r.exprs)-1:len(r.exprs)-1], &expr.Verdict{Kind: expr.VerdictAccept})
		}
	}
	panic("no lockdown rule")
}

func TestHoldsSeesForeignChanges(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	tab, other := openTable(t)
	for _, fc := range foreignChanges {
		t.Run(fc.name, func(t *testing.T) {
			if err := tab.Apply(typical); err != nil {
				t.Fatal(err)
			}
			if !holds(t, tab, typical) {
				t.Fatalf("Holds says no before the change")
			}
			fc.change(t)
			if holds(t, tab, typical) {
				t.Errorf("Holds says yes after the change:\n%s", nft(t, "list", "ruleset"))
			}
			if err := tab.Apply(typical); err != nil {
				t.Fatalf("Apply after the change: %v", err)
			}
			if !holds(t, tab, typical) {
				t.Errorf("Apply did not restore the table:\n%s", nft(t, "list", "ruleset"))
			}
			wantListed(t, typical)
			if fc.name == "flush the ruleset" {
				other.load(t) // another program's loss; put it back for the next
				return
			}
			other.intact(t)
		})
	}
	t.Run("the sets are constant", func(t *testing.T) {
		if out, err := exec.Command("nft", "add", "element", "inet", "vpnd", "lockdown", "{ 7000 }").CombinedOutput(); err == nil {
			t.Errorf("nft add element succeeded: %s", out)
		}
		if !holds(t, tab, typical) {
			t.Errorf("Holds says no")
		}
	})
}

// waitToken waits for a token on ch (hang guard settled).
func waitToken(t *testing.T, ch <-chan struct{}, why string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("%s: the watch channel closed", why)
		}
	case <-time.After(settled):
		t.Fatalf("%s: no token within %v", why, settled)
	}
}

func (t *Table) signalCount() int {
	t.watchMu.Lock()
	defer t.watchMu.Unlock()
	return t.signals
}

func TestWatch(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	defer goleak.VerifyNone(t)
	tab, other := openTable(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := tab.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Our own transactions send no token; a foreign change after them
	// sends exactly one: the count shows what was skipped, since the
	// monitor reports transactions in order.
	if err := tab.Apply(typical); err != nil {
		t.Fatal(err)
	}
	if err := tab.Apply(Spec{Lockdown: typical.Lockdown}); err != nil {
		t.Fatal(err)
	}
	nft(t, "add", "rule", "inet", "filter", "output", "counter") // another table: no token
	nft(t, "add", "chain", "inet", "vpnd", "extra")
	waitToken(t, ch, "foreign chain added")
	if n := tab.signalCount(); n != 1 {
		t.Errorf("%d tokens sent for two own transactions, one to another table and one foreign change; want 1", n)
	}

	for _, fc := range foreignChanges {
		if strings.HasSuffix(fc.name, "with the library") {
			continue // this process: no token, as for Apply above
		}
		if err := tab.Apply(typical); err != nil {
			t.Fatal(err)
		}
		before := tab.signalCount()
		fc.change(t)
		waitToken(t, ch, fc.name)
		if n := tab.signalCount() - before; n != 1 {
			t.Errorf("%s: %d tokens, want 1", fc.name, n)
		}
		if fc.name == "flush the ruleset" {
			other.load(t)
		}
	}

	t.Run("lost events signal", func(t *testing.T) {
		// A watcher with the smallest receive buffer loses events when
		// another table gets many rules in one transaction.
		small, err := Open("vpnd")
		if err != nil {
			t.Fatal(err)
		}
		defer small.Close()
		small.watchReadBuffer = 1
		sch, err := small.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for range 2000 {
			b.WriteString("add rule inet filter output counter\n")
		}
		nftFile(t, b.String())
		waitToken(t, sch, "ENOBUFS")
		// And it still sees what comes next.
		nft(t, "add", "chain", "inet", "vpnd", "after_enobufs")
		waitToken(t, sch, "a change after ENOBUFS")
	})

	t.Run("the channel closes with ctx and with Close", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(context.Background())
		c1, err := tab.Watch(cctx)
		if err != nil {
			t.Fatal(err)
		}
		ccancel()
		for range c1 {
		}
		other, err := Open("vpnd")
		if err != nil {
			t.Fatal(err)
		}
		c2, err := other.Watch(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		other.Close()
		for range c2 {
		}
		if _, err := other.Watch(context.Background()); err != errClosed {
			t.Errorf("Watch of a closed table: %v", err)
		}
		if err := other.Apply(typical); err != errClosed {
			t.Errorf("Apply of a closed table: %v", err)
		}
		if _, err := other.Holds(typical); err != errClosed {
			t.Errorf("Holds of a closed table: %v", err)
		}
	})
	cancel()
	for range ch {
	}
}

// TestOpen: Open by a user without CAP_NET_ADMIN fails and says what is
// missing; a table of the probe's name is left alone; bad names fail.
func TestOpen(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	needNft(t)
	out := runAs(t, selfForOthers(t), uidListed, false, envOpen+"=vpnd")
	if got := strings.Join(out, "\n"); !strings.Contains(got, "operation not permitted; needs CAP_NET_ADMIN") {
		t.Errorf("Open as uid %d: %s", uidListed, got)
	}
	out = runAs(t, selfForOthers(t), uidListed, true, envOpen+"=vpnd")
	if got := strings.Join(out, "\n"); got != "<nil>" {
		t.Errorf("Open as uid %d with CAP_NET_ADMIN: %s", uidListed, got)
	}
	if _, err := Open("vpn d"); err == nil || !strings.Contains(err.Error(), `character ' ' at 3`) {
		t.Errorf("Open(\"vpn d\") = %v", err)
	}
	nft(t, "add", "table", "inet", "vpnd_probe")
	if _, err := Open("vpnd"); err == nil || !strings.Contains(err.Error(), "table inet vpnd_probe exists") {
		t.Errorf("Open with a table inet vpnd_probe there: %v", err)
	}
	nft(t, "list", "table", "inet", "vpnd_probe") // still there
}
