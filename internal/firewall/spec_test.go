package firewall

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
)

// typical is lockdown of three users (two adjacent), an IPv4-only VPN of
// uid 1000 whose IPv6 fails closed, the VPN's link and the protect mark.
var typical = Spec{
	Lockdown:     []UIDRange{{Start: 4001, End: 4001}, {Start: 2101, End: 2101}, {Start: 4000, End: 4000}},
	FailClosedV6: []UIDRange{{Start: 1000, End: 1000}},
	AllowIfname:  "vpn-tun",
	ProtectMark:  0x20000,
}

const typicalText = `table inet vpnd {
	set lockdown {
		type uid
		flags constant,interval
		elements = { 2101, 4000-4001 }
	}

	set failclosed_v6 {
		type uid
		flags constant,interval
		elements = { 1000 }
	}

	chain output {
		type filter hook output priority filter; policy accept;
		meta oiftype loopback accept
		oifname "vpn-tun" accept
		meta mark & 0x00020000 != 0x00000000 accept
		meta skuid @lockdown drop
		meta nfproto ipv6 meta skuid @failclosed_v6 drop
	}
}
`

func TestRender(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		want string
	}{
		{"typical", typical, typicalText},
		{"empty: no table", Spec{AllowIfname: "vpn-tun", ProtectMark: 0x20000}, ""},
		{"fail-closed IPv4 only, no link, no mark", Spec{FailClosedV4: []UIDRange{{Start: 0, End: 4294967295}}}, `table inet vpnd {
	set failclosed_v4 {
		type uid
		flags constant,interval
		elements = { 0-4294967294 }
	}

	chain output {
		type filter hook output priority filter; policy accept;
		meta oiftype loopback accept
		meta nfproto ipv4 meta skuid @failclosed_v4 drop
	}
}
`},
		{"backwards range", Spec{Lockdown: []UIDRange{{Start: 5, End: 4}}}, "# invalid: Lockdown: uid range 5-4 ends before it starts\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Render("vpnd", tc.spec); got != tc.want {
				t.Errorf("Render:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestSpecChecks(t *testing.T) {
	many := make([]UIDRange, maxRanges+1)
	for i := range many {
		many[i] = UIDRange{Start: uint32(2 * i), End: uint32(2 * i)}
	}
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Lockdown: []UIDRange{{Start: 10, End: 9}}}, "Lockdown: uid range 10-9 ends before it starts"},
		{Spec{FailClosedV4: []UIDRange{{Start: 4294967295, End: 4294967295}}}, "FailClosedV4: uid range 4294967295-4294967295: 4294967295 is not a uid"},
		{Spec{FailClosedV6: many}, "FailClosedV6: 1025 uid ranges, at most 1024"},
		{Spec{Lockdown: typical.Lockdown, AllowIfname: "a-very-long-name0"}, `AllowIfname: link name "a-very-long-name0": want 1 to 15 bytes`},
		{Spec{Lockdown: typical.Lockdown, AllowIfname: "vpn tun"}, `AllowIfname: link name "vpn tun": character ' ' not allowed`},
		{Spec{Lockdown: typical.Lockdown, AllowIfname: `vpn"`}, `AllowIfname: link name "vpn\"": character '"' not allowed`},
	} {
		_, err := tc.spec.normalize()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("normalize(%+v) = %v, want %q", tc.spec, err, tc.want)
		}
	}
	for _, name := range []string{"", "1vpnd", "vpn-d", "vpnd table", strings.Repeat("x", 250)} {
		if err := checkTableName(name); err == nil {
			t.Errorf("table name %q accepted", name)
		}
	}
	for _, name := range []string{"vpnd", "_x", "vpnd.2", strings.Repeat("x", 249)} {
		if err := checkTableName(name); err != nil {
			t.Errorf("table name %q: %v", name, err)
		}
	}
}

// TestRanges: interval elements decode back to the ranges they encode,
// whatever the order the kernel dumps them in, with nft's marker below
// the first range, and up to the largest uid.
func TestRanges(t *testing.T) {
	for _, rs := range [][]UIDRange{
		{{Start: 0, End: 0}},
		{{Start: 2101, End: 2101}, {Start: 4000, End: 4005}},
		{{Start: 0, End: 999}, {Start: 1001, End: 4294967294}},
	} {
		els := elements(rs)
		slices.Reverse(els) // the kernel dumps the tree from the top
		got, ok := ranges(els)
		if !ok || !slices.Equal(got, rs) {
			t.Errorf("ranges(elements(%v)) = %v, %v", rs, got, ok)
		}
		marker := append([]nftables.SetElement{{Key: []byte{0, 0, 0, 0}, IntervalEnd: true}}, els...)
		if rs[0].Start != 0 {
			if got, ok := ranges(marker); !ok || !slices.Equal(got, rs) {
				t.Errorf("with nft's marker: %v, %v", got, ok)
			}
		}
	}
	// A start without an end runs to the largest key: more than any uid.
	got, ok := ranges([]nftables.SetElement{{Key: []byte{0, 0, 0, 5}}})
	if !ok || !slices.Equal(got, []UIDRange{{Start: 5, End: 4294967295}}) {
		t.Errorf("open range: %v, %v", got, ok)
	}
	// Two starts in a row are not a list of intervals.
	if _, ok := ranges([]nftables.SetElement{{Key: []byte{0, 0, 0, 5}}, {Key: []byte{0, 0, 0, 7}}}); ok {
		t.Errorf("two starts accepted")
	}
}
