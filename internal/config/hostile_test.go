package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/protocol"
)

// hostileSize is the largest message vpnd reads.
const hostileSize = protocol.MaxMessage - 1

// repeatTo builds prefix + item,item,...,item + suffix, with as many items
// as fit in hostileSize bytes, and returns it with the number of items.
func repeatTo(prefix, item, suffix string) ([]byte, int) {
	n := (hostileSize - len(prefix) - len(suffix) + 1) / (len(item) + 1)
	var b strings.Builder
	b.Grow(hostileSize)
	b.WriteString(prefix)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(item)
	}
	b.WriteString(suffix)
	return []byte(b.String()), n
}

// numbered is like repeatTo for items that differ: item(i) for i = 0, 1, ...
func numbered(prefix string, item func(i int) string, suffix string) ([]byte, int) {
	var b strings.Builder
	b.Grow(hostileSize)
	b.WriteString(prefix)
	n := 0
	for {
		next := item(n)
		if b.Len()+len(next)+1+len(suffix) > hostileSize {
			break
		}
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString(next)
		n++
	}
	b.WriteString(suffix)
	return []byte(b.String()), n
}

// allocated returns the bytes and the number of allocations of one
// Parse(params), averaged over runs.
func allocated(params []byte, runs int) (bytes, allocs float64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		Parse(params, testUsers)
	}
	runtime.ReadMemStats(&after)
	return float64(after.TotalAlloc-before.TotalAlloc) / float64(runs),
		float64(after.Mallocs-before.Mallocs) / float64(runs)
}

// TestParseHostile feeds Parse 4 MiB params made to make a parser amplify
// its input: arrays of a million entries, objects of 340,000 members, deep
// nesting. Each must be refused with a precise detail, and Parse must
// allocate a small fraction of the input while it reads it: it builds no
// entry past a limit, and at most the Config's routes up to the limit.
func TestParseHostile(t *testing.T) {
	if raceEnabled {
		// Parse shares nothing between goroutines, and these cases are
		// about time and memory, which the race detector distorts (it
		// makes them take minutes).
		t.Skip("skipped under the race detector")
	}
	const v4 = `{"addresses":["10.8.0.2/24"],`
	type hostile struct {
		name   string
		params []byte
		detail string
	}
	var cases []hostile
	add := func(name string, params []byte, detail string) {
		cases = append(cases, hostile{name, params, detail})
	}
	b, n := repeatTo(v4+`"routes":[`, `1`, `]}`)
	add("routes: 2M numbers", b, fmt.Sprintf("routes: %d entries, at most 10000 allowed", n))
	b, n = repeatTo(v4+`"routes":[`, `"10.0.0.0/8"`, `]}`)
	add("routes: 300k equal routes", b, fmt.Sprintf("routes: %d entries, at most 10000 allowed", n))
	b, n = numbered(v4+`"routes":[`, func(i int) string {
		return fmt.Sprintf(`"10.%d.%d.0/24"`, i>>8&0xff, i&0xff)
	}, `]}`)
	add("routes: 250k distinct routes", b, fmt.Sprintf("routes: %d entries, at most 10000 allowed", n))
	b, n = repeatTo(v4+`"routes":[`, `{}`, `]}`)
	add("routes: 1.4M empty objects", b, fmt.Sprintf("routes: %d entries, at most 10000 allowed", n))
	b, n = repeatTo(`{"routes":[`, `{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8}}`, `],"addresses":["10.8.0.2/24"]}`)
	add("routes before addresses: 60k objects", b, fmt.Sprintf("routes: %d entries, at most 10000 allowed", n))
	b, n = repeatTo(`{"addresses":[`, `"10.8.0.2/24"`, `]}`)
	add("addresses: 300k strings", b, fmt.Sprintf("addresses: %d entries, at most 2000 allowed", n))
	b, n = repeatTo(v4+`"dnsAddresses":[`, `"1.1.1.1"`, `]}`)
	add("dnsAddresses: 400k strings", b, fmt.Sprintf("dnsAddresses: %d entries, at most 64 allowed", n))
	b, n = repeatTo(v4+`"searchDomains":[`, `"a"`, `]}`)
	add("searchDomains: 1M strings", b, fmt.Sprintf("searchDomains: %d entries, at most 64 allowed", n))
	b, n = repeatTo(v4+`"trustedApplications":[`, `0`, `]}`)
	add("trustedApplications: 2M uids", b, fmt.Sprintf("trustedApplications: %d entries, at most 256 allowed", n))
	b, _ = numbered(v4+`"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},`, func(i int) string {
		return fmt.Sprintf(`"m%d":0`, i)
	}, `}]}`)
	add("RouteInfo: 340k members", b, "routes[0].m0: unknown member")
	b, _ = repeatTo(v4+`"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},`, `"gateway":null`, `}]}`)
	add("RouteInfo: 280k repeated members", b, "routes[0].gateway: duplicate member")
	b, _ = numbered(v4, func(i int) string { return fmt.Sprintf(`"m%d":0`, i) }, `}`)
	add("params: 340k members", b, "m0: unknown member")
	b, _ = repeatTo(v4+`"mtu":1500,`, `"mtu":1500`, `}`)
	add("params: 380k repeated members", b, "mtu: duplicate member")
	add("nested 4M deep", []byte(strings.Repeat("[", hostileSize)), "params: invalid JSON")
	b, _ = repeatTo(v4+`"routes":[`, `[[[]]]`, `]}`)
	add("routes: 600k nested arrays", b, fmt.Sprintf("routes: %d entries, at most 10000 allowed", 599180))
	b, _ = repeatTo(v4+`"routes":[`, `1`, `,]}`)
	add("routes: 2M numbers, then a syntax error", b, "params: invalid JSON")

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.params) > hostileSize {
				t.Fatalf("params of %d bytes, more than a message holds", len(tc.params))
			}
			_, err := Parse(tc.params, testUsers)
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.CodeInvalidParam || e.Detail != tc.detail {
				t.Fatalf("Parse = %v\nwant detail %s", err, tc.detail)
			}
			bytes, allocs := allocated(tc.params, 3)
			t.Logf("%d bytes of params: %.0f bytes in %.0f allocations", len(tc.params), bytes, allocs)
			// The parser's state and the error take a few KB. The
			// routes read in place take their room in the Config (56
			// bytes a route) and in the table that finds duplicates (12
			// bytes a slot), up to 10,000 routes: less than 1 MiB.
			// Nothing grows with the input.
			if limit := float64(len(tc.params)) / 4; bytes > limit {
				t.Errorf("Parse allocated %.0f bytes for %d bytes of params, more than %.0f", bytes, len(tc.params), limit)
			}
		})
	}
}

// TestParseAllocs checks that a valid config costs a fixed number of
// allocations, whatever its number of routes: the Config's slices and the
// parser's own state, nothing per route.
func TestParseAllocs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params func(n int) []byte
	}{
		{"cidr", routesCIDR},
		{"objects", routesObjects},
	} {
		t.Run(tc.name, func(t *testing.T) {
			few, params := tc.params(100), tc.params(MaxRoutes)
			small := testing.AllocsPerRun(5, func() { Parse(few, testUsers) })
			large := testing.AllocsPerRun(5, func() { Parse(params, testUsers) })
			bytes, _ := allocated(params, 3)
			t.Logf("100 routes: %.0f allocations; %d routes: %.0f allocations, %.0f bytes for %d bytes of params",
				small, MaxRoutes, large, bytes, len(params))
			// The excluded routes' slice grows as it is filled (about one
			// route in ten here); everything else is allocated once.
			if large > small+15 || large > 40 {
				t.Errorf("%.0f allocations for %d routes, %.0f for 100", large, MaxRoutes, small)
			}
			// The Config's routes take 56 bytes each, and the table that
			// finds duplicates 12 bytes per slot.
			if limit := float64(MaxRoutes) * 100; bytes > limit {
				t.Errorf("%.0f bytes allocated for %d routes, more than %.0f", bytes, MaxRoutes, limit)
			}
		})
	}
}

// TestParseMatchesReference holds Parse to the reference parser on inputs
// that take the reader's rarer paths: escapes, white space, member order,
// non-ASCII bytes, odd numbers and nesting.
func TestParseMatchesReference(t *testing.T) {
	deep := strings.Repeat("[", maxDepth-2) + strings.Repeat("]", maxDepth-2)
	tooDeep := strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth)
	for _, params := range []string{
		`{"addr\u0065sses":["10.8.0.2\/24"]}`,
		`{"addresses":["10.8.0.2/24"],"mt\u0075":1500,"mtu":1400}`,
		` { "addresses" : [ "10.8.0.2/24" , { "address" : { "address" : "10.9.0.2" , "family" : 1 } , "prefixLength" : 24 } ] , "routes" : [ { "destination" : { "prefixLength" : 8 , "address" : { "family" : 1 , "address" : "10.0.0.0" } } , "gateway" : { "address" : "10.8.0.1" } } ] } `,
		"{\"addresses\":[\"10.8.0.2/24\"],\"searchDomains\":[\"caf\xc3\xa9.example\",\"\xff\"]}",
		"{\"addresses\":[\"10.8.0.2/24\"],\"\xff\":1}",
		`{"addresses":["10.8.0.2/24"],"searchDomains":["\u0061.example","A.EXAMPLE."]}`,
		`{"addresses":["10.8.0.2/24"],"trustedApplications":["\u0031000","alice",1000,-0]}`,
		`{"addresses":["10.8.0.2/24"],"mtu":-0}`,
		`{"addresses":["10.8.0.2/24"],"mtu":1E3}`,
		`{"addresses":["10.8.0.2/24"],"mtu":-9223372036854775808}`,
		`{"addresses":["10.8.0.2/24"],"mtu":9223372036854775808}`,
		`{"addresses":["10.8.0.2/24"],"mtu":-9223372036854775809}`,
		`{"addresses":["10.8.0.2/24"],"routes":["10.0.0.0/8"],"isIPv4Accepted":false,"isIPv6Accepted":true}`,
		`{"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}}],"addresses":["10.8.0.2/24"]}`,
		`{"routes":["10.0.0.0/8","10.0.0.0/8",{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"isExcludedRoute":true}],"addresses":["10.8.0.2/24"]}`,
		`{"addresses":["10.8.0.2/24"],"routes":[{"gateway":{"address":"x"},"destination":{"address":{"address":"y"},"prefixLength":8}}]}`,
		`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"y"},"prefixLength":8},"zz":1}]}`,
		`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"prefixLength":99,"address":{"address":"10.0.0.0","family":2,"port":-1}}}]}`,
		`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"10.0.0.0","port":70000,"family":3},"prefixLength":8}}]}`,
		`{"addresses":[{"prefixLength":24,"address":{"address":"10.8.0.2","address":"x"}}]}`,
		`{"addresses":[{"address":null,"prefixLength":24}]}`,
		`{"addresses":[{"address":[],"prefixLength":null}]}`,
		`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}},{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.3"}}]}`,
		`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"1.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}},{"destination":{"address":{"address":"2.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}},{"destination":{"address":{"address":"3.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.2"}}]}`,
		`{"addresses":["10.8.0.2/24"],"x":` + deep + `}`,
		`{"addresses":["10.8.0.2/24"],"x":` + tooDeep + `}`,
		`{"addresses":["10.8.0.2/24"],"routes":[` + deep + `]}`,
		`{"addresses":["10.8.0.2/24"],"routes":[` + tooDeep + `]}`,
		`{"addresses":["10.8.0.2/24"],"routes":[1,` + tooDeep + `]}`,
		`{"addresses":["10.8.0.2/24"],"routes":["\ud800/8"]}`,
		"{\"addresses\":[\"10.8.0.2/24\"]}\n",
		"\t{\"addresses\":[\"10.8.0.2/24\"]}",
		`{"addresses":["10.8.0.2/24"]`,
		`{"addresses":["10.8.0.2/24"]}}`,
		`{"addresses":["10.8.0.2/24"],}`,
		`{"addresses":["10.8.0.2/24",]}`,
		`{"addresses":["10.8.0.2/24"] "mtu":1}`,
		`{"addresses":["10.8.0.2/24"],"mtu":01}`,
		`{"addresses":["10.8.0.2/24"],"mtu":1.}`,
		`{"addresses":["10.8.0.2/24"],"mtu":tru}`,
		`{"addresses":["10.8.0.2/24"],"mtu":"\x"}`,
		"{\"addresses\":[\"10.8.0.2/24\"],\"mtu\":\"\x01\"}",
		`nul`,
		`   null   `,
		``,
		` `,
		`"x"`,
		`{}`,
		`{"":1}`,
		`{"addresses":["10.8.0.2/24"],"blockedApplications":[],"trustedApplications":[1000]}`,
		`{"addresses":["10.8.0.2/24"],"trustedApplications":["nobody-here"]}`,
		`{"addresses":["10.8.0.2/24"],"trustedApplications":["broken"]}`,
	} {
		t.Run("", func(t *testing.T) {
			cfg, err := Parse(json.RawMessage(params), testUsers)
			compareWithReference(t, []byte(params), cfg, err)
			if got, want := valid([]byte(params)), json.Valid([]byte(params)); got != want {
				t.Errorf("valid(%.80q) = %v, json.Valid says %v", params, got, want)
			}
		})
	}
	// A nil params is not an empty one.
	cfg, err := Parse(nil, testUsers)
	compareWithReference(t, nil, cfg, err)
}

// TestParseDottedQuad holds the fast IPv4 parser to netip.ParseAddr.
func TestParseDottedQuad(t *testing.T) {
	for _, s := range []string{
		"0.0.0.0", "1.2.3.4", "255.255.255.255", "10.8.0.2", "256.0.0.0", "01.2.3.4", "1.2.3.04", "1.2.3",
		"1.2.3.4.5", "1..2.3", ".1.2.3", "1.2.3.", "1.2.3.4 ", "", "::1", "1.2.3.4%x", "1.2.3.0400", "-1.2.3.4",
		"0.0.0.00", "100.200.250.199",
	} {
		got, ok := parseDottedQuad(s)
		want, err := netipParse(s)
		if ok && (err != nil || got != want) {
			t.Errorf("parseDottedQuad(%q) = %v; netip says %v, %v", s, got, want, err)
		}
		if !ok && err == nil && want.Is4() {
			t.Errorf("parseDottedQuad(%q) refused; netip says %v", s, want)
		}
	}
}

func netipParse(s string) (netip.Addr, error) { return netip.ParseAddr(s) }

// TestCompactRouteInfo checks that routes as vpnd's own client marshals
// them take the compact reader, and that what it refuses or fails is left
// to the general reader, which reports the same as the reference parser.
func TestCompactRouteInfo(t *testing.T) {
	p := &parser{cfg: &Config{}}
	if err := p.readAddresses(&dec{b: []byte(`["10.8.0.2/24","fd00::2/64"]`), depth: 1}, 2); err != nil {
		t.Fatal(err)
	}
	gw := &protocol.NetAddress{Address: "10.8.0.1", Family: 1}
	for _, ri := range []protocol.RouteInfo{
		{Destination: protocol.LinkAddress{Address: protocol.NetAddress{Address: "10.1.0.0", Family: 1}, PrefixLength: 16}},
		{Destination: protocol.LinkAddress{Address: protocol.NetAddress{Address: "10.1.0.0"}, PrefixLength: 16}, Gateway: gw},
		{Destination: protocol.LinkAddress{Address: protocol.NetAddress{Address: "10.1.0.0"}, PrefixLength: 16}, IsExcludedRoute: true},
		{Destination: protocol.LinkAddress{Address: protocol.NetAddress{Address: "2001:DB8::", Family: 2}, PrefixLength: 32},
			Gateway: &protocol.NetAddress{Address: "::"}},
	} {
		b, _ := json.Marshal(ri)
		d := &dec{b: b, depth: 2}
		if _, ok := p.compactRouteInfo(d, memberPath(mRoutes).elem(0)); !ok || d.i != len(b) {
			t.Errorf("compact reader refused %s (read %d bytes)", b, d.i)
		}
	}
	for _, route := range []string{
		`{"destination":{"address":{"address":"10.1.0.0","family":2},"prefixLength":16}}`,                       // wrong family
		`{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":33}}`,                                  // out of range
		`{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16},"gateway":{"address":"10.9.0.1"}}`, // outside
		`{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16},"gateway":{"address":"10.8.0.1"},"isExcludedRoute":true}`,
		`{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16},"isExcludedRoute":true,"x":1}`, // unknown member
		`{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16.0}}`,                            // not an integer
		`{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":016}}`,                             // not JSON
		`{"destination":{"address":{"address":"10.1.0.0","family":1,"port":0},"prefixLength":16}}`,          // port: general reader
		`{"destination":{"address":{"address":"fe80::1%eth0"},"prefixLength":64}}`,                          // a zone
		`{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16},"isExcludedRoute":false}`,      // accepted
		`{"destination": {"address":{"address":"10.1.0.0"},"prefixLength":16}}`,                             // space: general reader
	} {
		params := `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":[` + route + `]}`
		cfg, err := Parse(json.RawMessage(params), testUsers)
		compareWithReference(t, []byte(params), cfg, err)
	}
}
