package test

// Golden tests of the exact policy rules and routes each config produces
// (docs/routing.md), in the manner of tailscale's router tests, but against
// the real kernel: set the VPN up in a throwaway namespace, dump
// `ip -j rule` (priority 10000 only) and `ip -j route show table 98` for
// both families, render them as stable text and compare with
// testdata/golden/<case>.txt. `go test ./test -run TestGolden -update`
// rewrites the files; review every change against docs/routing.md before
// committing it.

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite test/testdata/golden/*.txt from the kernel's state")

type goldenCase struct {
	name   string
	owner  uint32 // uidNormal (NORMAL), uidRoot or uidAdmin (ADMIN)
	config string // VpnConfig JSON
}

var goldenCases = []goldenCase{
	// Owner kinds, IPv4 split tunnel.
	{"normal-owner", uidNormal, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`},
	{"admin-root", uidRoot, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`},
	{"admin-policy", uidAdmin, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`},
	{"admin-trusted", uidAdmin, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],` +
		`"trustedApplications":["bin","daemon","4000","4001","4005"]}`},
	{"admin-trusted-with-owner", uidAdmin, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],` +
		`"trustedApplications":["4001","4002","4003"]}`},
	{"admin-blocked", uidRoot, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],` +
		`"blockedApplications":["bin","4000"]}`},
	{"admin-blocked-owner", uidAdmin, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],` +
		`"blockedApplications":["4002"]}`},
	{"normal-trusted-self", uidNormal, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],` +
		`"trustedApplications":["4000"]}`},
	// Families.
	{"ipv4-only", uidNormal, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`},
	{"ipv6-only", uidNormal, `{"addresses":["fd00:8::2/64"],"routes":["2001:db8:100::/64"]}`},
	{"ipv4-only-family-bypass", uidNormal, `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],"allowFamilyBypass":true}`},
	{"ipv6-only-family-bypass", uidNormal, `{"addresses":["fd00:8::2/64"],"routes":["2001:db8:100::/64"],"allowFamilyBypass":true}`},
	{"ipv4-only-admin", uidRoot, `{"addresses":["10.8.0.2/24"]}`},
	{"dual-stack", uidNormal, `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"routes":["198.51.100.0/24","2001:db8:100::/64"]}`},
	{"dual-stack-ipv6-refused", uidNormal, `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"isIPv6Accepted":false,` +
		`"routes":["198.51.100.0/24"]}`},
	{"dual-stack-admin", uidRoot, `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"routes":["198.51.100.0/24","2001:db8:100::/64"]}`},
	// Routes.
	{"excluded-routes", uidNormal, `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"routes":["198.51.100.0/24","2001:db8:100::/64",` +
		`{"destination":{"address":{"address":"198.51.100.128"},"prefixLength":25},"isExcludedRoute":true},` +
		`{"destination":{"address":{"address":"2001:db8:100::2","family":2},"prefixLength":128},"isExcludedRoute":true}]}`},
	{"excluded-from-default", uidNormal, `{"addresses":["10.8.0.2/24"],` +
		`"routes":[{"destination":{"address":{"address":"192.0.2.0"},"prefixLength":24},"isExcludedRoute":true}]}`},
	{"gateways", uidNormal, `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"routes":[` +
		`{"destination":{"address":{"address":"198.51.100.0"},"prefixLength":24},"gateway":{"address":"10.8.0.1"}},` +
		`{"destination":{"address":{"address":"2001:db8:100::"},"prefixLength":64},"gateway":{"address":"fd00:8::1"}}]}`},
	{"default-routes", uidNormal, `{"addresses":["10.8.0.2/24","fd00:8::2/64"]}`},
	{"explicit-default-routes", uidNormal, `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"routes":["0.0.0.0/0","::/0"]}`},
	{"host-bits-and-duplicates", uidNormal, `{"addresses":["10.8.0.2/24"],` +
		`"routes":["198.51.100.7/24","198.51.100.0/24",{"destination":{"address":{"address":"198.51.100.9"},"prefixLength":24}}]}`},
}

// TestGolden checks the rule and route set of each case against its golden file.
func TestGolden(t *testing.T) {
	kernelOnly(t, "the kernel's rules and routes against golden files")
	t.Parallel()
	d := startDaemon(t, withAccounts(twAccounts))
	for _, gc := range goldenCases {
		t.Run(gc.name, func(t *testing.T) {
			// The client only talks to vpnd's Unix socket, so d.dial's
			// namespace does not matter here.
			c := d.dial(t, gc.owner)
			setUpOK(t, c.call("setUp", gc.config, ""))
			got := goldenHeader(gc) + strings.Join(d.goldenState(t), "\n") + "\n"
			ok(t, c.call("destroy", "{}", ""))
			c.closeTUN()
			d.waitClean(t, "destroy")

			path := filepath.Join("testdata", "golden", gc.name+".txt")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if string(want) != got {
				t.Errorf("kernel state differs from %s\n--- want\n%s--- got\n%s", path, want, got)
			}
		})
	}
}

func goldenHeader(gc goldenCase) string {
	kind := "NORMAL"
	if gc.owner == uidRoot || gc.owner == uidAdmin {
		kind = "ADMIN"
	}
	return fmt.Sprintf("# owner: uid %d (%s)\n# config: %s\n", gc.owner, kind, gc.config)
}

// goldenState renders vpnd's rules (at its priority) and the routes of its
// table, IPv4 first, in `ip rule` / `ip route` word order.
func (d *daemon) goldenState(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, fam := range []string{"-4", "-6"} {
		name := map[string]string{"-4": "ipv4", "-6": "ipv6"}[fam]
		var rules []map[string]any
		nsJSON(t, d.ns, &rules, fam, "rule", "show")
		for _, r := range rules {
			if num(r["priority"]) == fmt.Sprint(d.priority) {
				out = append(out, name+" "+renderRule(r))
			}
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		name := map[string]string{"-4": "ipv4", "-6": "ipv6"}[fam]
		var routes []map[string]any
		nsJSON(t, d.ns, &routes, fam, "route", "show", "table", fmt.Sprint(d.table))
		for _, r := range routes {
			out = append(out, name+" table "+fmt.Sprint(d.table)+": "+renderRoute(r))
		}
	}
	return out
}

// renderRule writes `ip -j rule` as `ip rule` would: known members in
// ip's order, then any other member as key=value so that nothing the
// kernel reports is silently dropped.
func renderRule(r map[string]any) string {
	r = copyMap(r)
	var w []string
	w = append(w, num(take(r, "priority"))+":")
	if src := take(r, "src"); src != nil {
		s := str(src)
		if l := take(r, "srclen"); l != nil {
			s += "/" + num(l)
		}
		w = append(w, "from", s)
	}
	if dst := take(r, "dst"); dst != nil {
		s := str(dst)
		if l := take(r, "dstlen"); l != nil {
			s += "/" + num(l)
		}
		w = append(w, "to", s)
	}
	if s, e := take(r, "uid_start"), take(r, "uid_end"); s != nil || e != nil {
		w = append(w, "uidrange", num(s)+"-"+num(e))
	}
	if m := take(r, "fwmark"); m != nil {
		s := str(m)
		if k := take(r, "fwmask"); k != nil {
			s += "/" + str(k)
		}
		w = append(w, "fwmark", s)
	}
	if a := take(r, "action"); a != nil {
		w = append(w, str(a))
	}
	if tb := take(r, "table"); tb != nil {
		w = append(w, "lookup", str(tb))
	}
	return strings.Join(append(w, rest(r)...), " ")
}

// renderRoute writes `ip -j route` as `ip route` would, without volatile
// members.
func renderRoute(r map[string]any) string {
	r = copyMap(r)
	for _, k := range []string{"ifindex", "expires", "cache"} {
		delete(r, k)
	}
	var w []string
	if ty := take(r, "type"); ty != nil && str(ty) != "unicast" {
		w = append(w, str(ty))
	}
	w = append(w, str(take(r, "dst")))
	for _, k := range []struct{ key, word string }{
		{"gateway", "via"}, {"dev", "dev"}, {"protocol", "proto"}, {"scope", "scope"},
		{"prefsrc", "src"}, {"metric", "metric"}, {"pref", "pref"},
	} {
		if v := take(r, k.key); v != nil {
			w = append(w, k.word, str(v))
		}
	}
	if f, ok := take(r, "flags").([]any); ok {
		for _, x := range f {
			w = append(w, str(x))
		}
	}
	return strings.Join(append(w, rest(r)...), " ")
}

func copyMap(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func take(m map[string]any, k string) any {
	v, ok := m[k]
	if !ok {
		return nil
	}
	delete(m, k)
	return v
}

func rest(m map[string]any) []string {
	var out []string
	for k, v := range m {
		b, _ := json.Marshal(v)
		out = append(out, k+"="+string(b))
	}
	sort.Strings(out)
	return out
}

func str(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return num(v)
}

// num prints a JSON number without a float's exponent.
func num(v any) string {
	if f, ok := v.(float64); ok {
		return fmt.Sprintf("%.0f", f)
	}
	return fmt.Sprint(v)
}
