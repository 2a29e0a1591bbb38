package test

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// logEntries returns vpnd's JSON log entries whose msg is msg.
func (d *daemon) logEntries(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(d.stderr.String(), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && e["msg"] == msg {
			out = append(out, e)
		}
	}
	return out
}

// nsState is the whole routing state of a namespace as ip prints it:
// every link, every rule and every route of every table. Two equal states
// mean nothing was added, removed or changed.
func nsState(t testing.TB, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-d", "link", "show"},
		{"addr", "show"},
		{"-4", "rule", "show"},
		{"-6", "rule", "show"},
		{"-4", "route", "show", "table", "all"},
		{"-6", "route", "show", "table", "all"},
	} {
		out, err := nsIPErr(ns, args...)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "## ip %s\n%s", strings.Join(args, " "), out)
	}
	return b.String()
}

// 19900002, and "vpnd never touches rules, routes or links it did not
// create": someone else took vpnd's interface name, or put a route into its
// table, or a rule at its priority, after vpnd started. setUp answers
// 19900002 with a detail naming the conflict, and the namespace is exactly
// as it was: nothing half-built, nothing foreign touched. Once the foreign
// object is gone, setUp works (the failure did not occupy the slot).
//
// TestError19900002Internal covers a bridge and a persistent tun named
// vpn-tun and a route of the VPN's own prefix in table 98, without
// checking the detail; this test adds the rest.
func TestFaultsForeignConflicts(t *testing.T) {
	kernelOnly(t, "foreign kernel objects make the bring-up fail")
	t.Parallel()
	cases := []struct {
		name   string
		add    []string // ip arguments creating the foreign object
		del    []string // and removing it
		detail string   // the detail must mention this
	}{
		{"a veth named vpn-tun", []string{"link", "add", "vpn-tun", "type", "veth", "peer", "name", "vpn-peer"}, []string{"link", "del", "vpn-tun"}, "vpn-tun"},
		{"route of a VPN prefix in table 98",
			[]string{"-6", "route", "add", "2001:db8::/32", "dev", "lo", "table", "98"},
			[]string{"-6", "route", "del", "2001:db8::/32", "table", "98"}, "98"},
		{"throw route of an excluded prefix in table 98",
			[]string{"-4", "route", "add", "throw", "198.51.100.128/25", "table", "98"},
			[]string{"-4", "route", "del", "throw", "198.51.100.128/25", "table", "98"}, "98"},
		{"unrelated route in table 98",
			[]string{"-4", "route", "add", "192.0.2.0/24", "dev", "lo", "table", "98"},
			[]string{"-4", "route", "del", "192.0.2.0/24", "table", "98"}, "98"},
		{"vpnd's own rule, added by someone else, at priority 10000",
			[]string{"-6", "rule", "add", "priority", "10000", "uidrange", "4000-4000", "fwmark", "0/0x20000", "lookup", "98"},
			[]string{"-6", "rule", "del", "priority", "10000", "uidrange", "4000-4000", "fwmark", "0/0x20000", "lookup", "98"}, "10000"},
		{"foreign rule at priority 10000",
			[]string{"-4", "rule", "add", "priority", "10000", "uidrange", "6-6", "lookup", "97"},
			[]string{"-4", "rule", "del", "priority", "10000", "uidrange", "6-6", "lookup", "97"}, "10000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t)
			owner := d.dial(t, uidNormal)
			d.ip(t, tc.add...)
			removed := false
			t.Cleanup(func() { // before the harness's leak check
				if !removed {
					d.ip(t, tc.del...)
				}
			})
			before := nsState(t, d.ns)
			m := owner.call("setUp", richConfig, "")
			if m.Error == nil {
				t.Errorf("setUp succeeded despite the conflict: %s", m.raw)
				ok(t, owner.call("destroy", "{}", ""))
			} else {
				wantError(t, m, 19900002, tc.detail)
				t.Logf("detail: %v", m.Error.Data["detail"])
			}
			if after := nsState(t, d.ns); after != before {
				t.Errorf("the namespace changed across the failed setUp:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if s := owner.status(); s.State != "disconnected" {
				t.Errorf("status after the failed setUp: %+v", s)
			}
			d.ip(t, tc.del...)
			removed = true
			d.richCycle(t, owner)
		})
	}
}

// Start-up sweep after `kill -9 vpnd` with a two-family VPN up (its
// owner still holding the TUN fd): the new vpnd removes the link, the
// rules and the table's remaining (throw) routes, logs exactly those, and
// nothing foreign; foreign objects at other priorities, in other tables
// and on other links survive; setUp is served at once. TestStartupSweep
// covers removal and a prepared namespace; this adds the log and a real
// kill with foreign objects around.
func TestStartupSweepLogsExactly(t *testing.T) {
	kernelOnly(t, "the start-up sweep of a killed vpnd's kernel objects")
	t.Parallel()
	d1 := startDaemon(t)
	owner := d1.dial(t, uidNormal)
	setUpOK(t, owner.call("setUp", richConfig, ""))
	d1.wantRichVPN(t, uidNormal)
	foreign := [][2][]string{
		{{"-4", "rule", "add", "priority", "10001", "uidrange", "7-7", "lookup", "98"}, {"-4", "rule", "del", "priority", "10001", "lookup", "98"}},
		{{"-6", "rule", "add", "priority", "9999", "lookup", "98"}, {"-6", "rule", "del", "priority", "9999", "lookup", "98"}},
		{{"-4", "rule", "add", "priority", "10000", "uidrange", "6-6", "lookup", "97"}, {"-4", "rule", "del", "priority", "10000", "lookup", "97"}},
		{{"-4", "route", "add", "203.0.113.0/24", "dev", "lo", "table", "97"}, {"-4", "route", "del", "203.0.113.0/24", "table", "97"}},
		{{"link", "add", "foreign0", "type", "bridge"}, {"link", "del", "foreign0"}},
	}
	foreignState := func() string {
		var b strings.Builder
		for _, r := range d1.rules(t) {
			if r.Priority != defaultPriority || r.Table != "98" {
				b.WriteString(r.String() + "\n")
			}
		}
		for _, r := range nsRoutes(t, d1.ns, 97) {
			b.WriteString(r.String() + "\n")
		}
		for _, l := range d1.links(t) {
			if l.Ifname != d1.ifname {
				fmt.Fprintf(&b, "%s %s %v\n", l.Ifname, l.kind(), l.Flags)
			}
		}
		return b.String()
	}
	for _, f := range foreign {
		d1.ip(t, f[0]...)
	}
	removedForeign := false
	removeForeign := func() {
		if !removedForeign {
			for _, f := range foreign {
				d1.ip(t, f[1]...)
			}
			removedForeign = true
		}
	}
	t.Cleanup(removeForeign)
	foreignBefore := foreignState()

	d1.kill(t)
	var throwLeft []string
	for _, r := range d1.routes(t) {
		if r.Type == "throw" {
			throwLeft = append(throwLeft, r.Dst)
		}
	}
	rulesLeft := 0
	for _, r := range d1.vpnRules(t) {
		if r.Table == "98" {
			rulesLeft++
		}
	}
	if d1.link(t, d1.ifname) == nil || rulesLeft != 2 || len(throwLeft) != 2 {
		t.Fatalf("a killed vpnd should leave its link, 2 rules and 2 throw routes: link %v, rules %d, throw routes %v",
			d1.link(t, d1.ifname) != nil, rulesLeft, throwLeft)
	}

	d2 := startDaemon(t, inNetns(d1.ns))
	if p := d2.leftovers(t); len(p) > 1 || (len(p) == 1 && !strings.Contains(p[0], "10000")) {
		t.Errorf("after the sweep: %s", strings.Join(p, "; ")) // the foreign prio-10000 rule is the one allowed
	}
	if after := foreignState(); after != foreignBefore {
		t.Errorf("the sweep touched foreign objects:\nbefore:\n%s\nafter:\n%s", foreignBefore, after)
	}

	// The log names exactly what was removed.
	links := d2.logEntries("removed leftover link")
	if len(links) != 1 || links[0]["ifname"] != d2.ifname {
		t.Errorf("link log entries %v, want one for %s", links, d2.ifname)
	}
	rules := d2.logEntries("removed leftover rule")
	if len(rules) != rulesLeft {
		t.Errorf("%d rule log entries, want %d: %v", len(rules), rulesLeft, rules)
	}
	for _, e := range rules {
		s := fmt.Sprint(e["rule"])
		if strings.Contains(s, "97") || strings.Contains(s, "10001") || strings.Contains(s, "9999") || strings.Contains(s, "6-6") {
			t.Errorf("the sweep logs a foreign rule as removed: %s", s)
		}
	}
	routes := d2.logEntries("removed leftover route")
	if len(routes) != len(throwLeft) {
		t.Errorf("%d route log entries, want %d (the throw routes %v): %v", len(routes), len(throwLeft), throwLeft, routes)
	}
	for _, dst := range throwLeft {
		found := false
		for _, e := range routes {
			found = found || strings.Contains(fmt.Sprint(e["route"]), dst)
		}
		if !found {
			t.Errorf("no log entry names the removed route %s: %v", dst, routes)
		}
	}
	summary := d2.logEntries("start-up sweep removed leftovers")
	if len(summary) != 1 {
		t.Errorf("%d summary entries, want 1", len(summary))
	} else if list, _ := summary[0]["removed"].([]any); len(list) != 1+rulesLeft+len(throwLeft) {
		t.Errorf("summary lists %d objects, want %d: %v", len(list), 1+rulesLeft+len(throwLeft), list)
	}

	// setUp is served at once, not after a retry.
	removeForeign()
	c := d2.dial(t, uidNormal)
	d2.richCycle(t, c)
}

// SIGHUP with a bad policy file, while a VPN is up: the old policy
// stays, the log says which file and why, and the VPN is untouched.
// TestAccountsPolicy checks that an error is logged for one bad file; this
// checks the message's content for each kind of bad file.
func TestSIGHUPBadPolicyLogsWhy(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, withAccounts(`{"default":"normal","users":{"4001":"guest"}}`))
	d.ExpectLog("policy reload failed") // each bad reload below
	owner := d.dial(t, uidNormal)
	setUpOK(t, owner.call("setUp", richConfig, ""))
	before := d.snapshot(t)
	guest := d.dial(t, uidNormal2)
	wantError(t, guest.call("destroy", "{}", ""), 2203001)

	for i, tc := range []struct {
		name, content string // content "" removes the file
		why           string // the logged error mentions this
	}{
		{"not JSON", `{"default":`, ""},
		{"unknown account type", `{"default":"superuser"}`, "superuser"},
		{"unknown member", `{"default":"normal","userz":{}}`, "userz"},
		{"missing file", "", "no such file"},
	} {
		if tc.content == "" {
			os.Remove(d.accountsPath)
		} else if err := os.WriteFile(d.accountsPath, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		d.signal(t, syscall.SIGHUP)
		var e map[string]any
		eventually(t, tc.name+": reload failure logged", func() (bool, string) {
			es := d.logEntries("policy reload failed, keeping the old policy")
			if len(es) > i {
				e = es[i]
				return true, ""
			}
			return false, fmt.Sprintf("%d failure entries", len(es))
		})
		if e["level"] != "error" || e["path"] != d.accountsPath || !strings.Contains(fmt.Sprint(e["error"]), tc.why) {
			t.Errorf("%s: log entry %v, want level error, path %s and an error mentioning %q", tc.name, e, d.accountsPath, tc.why)
		}
		wantError(t, guest.call("destroy", "{}", ""), 2203001) // still a guest
		if after := d.snapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("%s: the VPN changed: %+v, was %+v", tc.name, after, before)
		}
	}
	if s := owner.status(); s.State != "connected" || s.VPN == nil || s.VPN.Owner.UID != uidNormal {
		t.Errorf("after the bad reloads: %+v", s)
	}
	// A good file is taken: 4001 becomes normal, and may not destroy
	// another user's VPN.
	if err := os.WriteFile(d.accountsPath, []byte(`{"default":"normal"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(t, syscall.SIGHUP)
	eventually(t, "a good reload is taken", func() (bool, string) {
		m := guest.call("destroy", "{}", "")
		return m.Error != nil && m.Error.Code == 201, m.raw
	})
	ok(t, owner.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}
