package config

import (
	"errors"
	"fmt"
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

// TestParseAllocs checks that a valid config's cost grows with its
// routes by a small constant per route: the route itself in the Config,
// its slot in the table that finds duplicates, and the string of its
// address (net/netip parses strings). Nothing grows with the bytes of
// the request beyond that.
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
			// One string per address in the route, and a few for the
			// Config's slices and the parser's own state.
			if perRoute := (large - small) / (MaxRoutes - 100); perRoute > 2 {
				t.Errorf("%.1f allocations per route (%.0f for %d routes, %.0f for 100)", perRoute, large, MaxRoutes, small)
			}
			// The Config's routes take 56 bytes each, the table that
			// finds duplicates about 70 bytes a route, and an address
			// string 16 bytes.
			if limit := float64(MaxRoutes) * 200; bytes > limit {
				t.Errorf("%.0f bytes allocated for %d routes, more than %.0f", bytes, MaxRoutes, limit)
			}
		})
	}
}

// TestParseReaderEdges pins the answers, recorded from the hand-written
// reader that jsontext replaced, for params that take a JSON reader's
// rarer paths: escapes, white space, member order, non-ASCII and invalid
// UTF-8 bytes, odd numbers, nesting at and past the limit of 10,000, and
// syntax errors after other errors. want is 0 for a config that parses.
func TestParseReaderEdges(t *testing.T) {
	const maxDepth = 10000
	deep := strings.Repeat("[", maxDepth-2) + strings.Repeat("]", maxDepth-2)
	tooDeep := strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth)
	for _, tc := range []struct {
		params string
		code   errs.Code
		detail string
	}{
		{`{"addr\u0065sses":["10.8.0.2\/24"]}`, 0, ""},
		{`{"addresses":["10.8.0.2/24"],"mt\u0075":1500,"mtu":1400}`, 19900001, "mtu: duplicate member"},
		{` { "addresses" : [ "10.8.0.2/24" , { "address" : { "address" : "10.9.0.2" , "family" : 1 } , "prefixLength" : 24 } ] , "routes" : [ { "destination" : { "prefixLength" : 8 , "address" : { "family" : 1 , "address" : "10.0.0.0" } } , "gateway" : { "address" : "10.8.0.1" } } ] } `, 0, ""},
		{"{\"addresses\":[\"10.8.0.2/24\"],\"searchDomains\":[\"caf\xc3\xa9.example\",\"\xff\"]}", 19900001, "searchDomains[0]: \"café.example\" has label \"café\" with a character other than a letter, digit or hyphen"},
		{"{\"addresses\":[\"10.8.0.2/24\"],\"\xff\":1}", 19900001, "\"\\xff\": unknown member"},
		{`{"addresses":["10.8.0.2/24"],"searchDomains":["\u0061.example","A.EXAMPLE."]}`, 0, ""},
		{`{"addresses":["10.8.0.2/24"],"trustedApplications":["\u0031000","alice",1000,-0]}`, 0, ""},
		{`{"addresses":["10.8.0.2/24"],"mtu":-0}`, 19900001, "mtu: -0 out of range 576-65535"},
		{`{"addresses":["10.8.0.2/24"],"mtu":1E3}`, 19900001, "mtu: expected integer, got 1E3"},
		{`{"addresses":["10.8.0.2/24"],"mtu":-9223372036854775808}`, 19900001, "mtu: -9223372036854775808 out of range 576-65535"},
		{`{"addresses":["10.8.0.2/24"],"mtu":9223372036854775808}`, 19900001, "mtu: 9223372036854775808 out of range 576-65535"},
		{`{"addresses":["10.8.0.2/24"],"mtu":-9223372036854775809}`, 19900001, "mtu: -9223372036854775809 out of range 576-65535"},
		{`{"addresses":["10.8.0.2/24"],"routes":["10.0.0.0/8"],"isIPv4Accepted":false,"isIPv6Accepted":true}`, 19900001, "isIPv6Accepted: true requires an IPv6 address"},
		{`{"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}}],"addresses":["10.8.0.2/24"]}`, 0, ""},
		{`{"routes":["10.0.0.0/8","10.0.0.0/8",{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"isExcludedRoute":true}],"addresses":["10.8.0.2/24"]}`, 19900001, "routes[2]: 10.0.0.0/8 excluded here but included in routes[0]"},
		{`{"addresses":["10.8.0.2/24"],"routes":[{"gateway":{"address":"x"},"destination":{"address":{"address":"y"},"prefixLength":8}}]}`, 19900001, "routes[0].destination.address.address: \"y\" is not an IP address"},
		{`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"y"},"prefixLength":8},"zz":1}]}`, 19900001, "routes[0].zz: unknown member"},
		{`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"prefixLength":99,"address":{"address":"10.0.0.0","family":2,"port":-1}}}]}`, 19900001, "routes[0].destination.address.family: 2 does not match IPv4 address 10.0.0.0"},
		{`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"10.0.0.0","port":70000,"family":3},"prefixLength":8}}]}`, 19900001, "routes[0].destination.address.family: 3 is not 1 (IPv4) or 2 (IPv6)"},
		{`{"addresses":[{"prefixLength":24,"address":{"address":"10.8.0.2","address":"x"}}]}`, 19900001, "addresses[0].address.address: duplicate member"},
		{`{"addresses":[{"address":null,"prefixLength":24}]}`, 19900001, "addresses[0].address: required"},
		{`{"addresses":[{"address":[],"prefixLength":null}]}`, 19900001, "addresses[0].address: expected NetAddress object, got array"},
		{`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}},{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.3"}}]}`, 19900001, "routes[1]: 10.0.0.0/8 included via 10.8.0.3 here but included via 10.8.0.1 in routes[0]"},
		{`{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"1.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}},{"destination":{"address":{"address":"2.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}},{"destination":{"address":{"address":"3.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.2"}}]}`, 19900001, "routes[2].gateway: 10.8.0.2 is the VPN's own address addresses[0]"},
		{`{"addresses":["10.8.0.2/24"],"x":` + deep + `}`, 19900001, "x: unknown member"},
		{`{"addresses":["10.8.0.2/24"],"x":` + tooDeep + `}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"],"routes":[` + deep + `]}`, 19900001, "routes[0]: expected CIDR string or RouteInfo object, got array"},
		{`{"addresses":["10.8.0.2/24"],"routes":[` + tooDeep + `]}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"],"routes":[1,` + tooDeep + `]}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"],"routes":["\ud800/8"]}`, 19900001, "routes[0]: \"�\" is not an IP address"},
		{"{\"addresses\":[\"10.8.0.2/24\"]}\n", 0, ""},
		{"\t{\"addresses\":[\"10.8.0.2/24\"]}", 0, ""},
		{`{"addresses":["10.8.0.2/24"]`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"]}}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"],}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24",]}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"] "mtu":1}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"],"mtu":01}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"],"mtu":1.}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"],"mtu":tru}`, 19900001, "params: invalid JSON"},
		{`{"addresses":["10.8.0.2/24"],"mtu":"\x"}`, 19900001, "params: invalid JSON"},
		{"{\"addresses\":[\"10.8.0.2/24\"],\"mtu\":\"\x01\"}", 19900001, "params: invalid JSON"},
		{`nul`, 19900001, "params: expected object"},
		{`   null   `, 19900001, "params: expected object"},
		{``, 19900001, "params: invalid JSON"},
		{` `, 19900001, "params: invalid JSON"},
		{`"x"`, 19900001, "params: expected object, got string"},
		{`{}`, 19900001, "addresses: required"},
		{`{"":1}`, 19900001, "\"\": unknown member"},
		{`{"addresses":["10.8.0.2/24"],"blockedApplications":[],"trustedApplications":[1000]}`, 0, ""},
		{`{"addresses":["10.8.0.2/24"],"trustedApplications":["nobody-here"]}`, 19900001, "trustedApplications[0]: unknown user \"nobody-here\""},
		{`{"addresses":["10.8.0.2/24"],"trustedApplications":["broken"]}`, 19900002, "trustedApplications[0]: user database unavailable"},
	} {
		_, err := Parse([]byte(tc.params), testUsers)
		var e *errs.Error
		switch {
		case tc.code == 0 && err != nil:
			t.Errorf("Parse(%.100q) = %v, want success", tc.params, err)
		case tc.code != 0 && (!errors.As(err, &e) || e.Code != tc.code || e.Detail != tc.detail):
			t.Errorf("Parse(%.100q) = %v\nwant %d %s", tc.params, err, tc.code, tc.detail)
		}
	}
	// nil params are absent params, not empty ones.
	if _, err := Parse(nil, testUsers); err == nil || err.(*errs.Error).Detail != "params: expected object" {
		t.Errorf("Parse(nil) = %v", err)
	}
}
