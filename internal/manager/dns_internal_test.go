package manager

import (
	"net/netip"
	"strings"
	"testing"
)

// coversAll is the whole-address-space test behind "full tunnel".
func TestCoversAll(t *testing.T) {
	v4, v6 := netip.IPv4Unspecified(), netip.IPv6Unspecified()
	for _, tc := range []struct {
		prefixes string
		zero     netip.Addr
		want     bool
	}{
		{"", v4, false},
		{"0.0.0.0/0", v4, true},
		{"0.0.0.0/1 128.0.0.0/1", v4, true},
		{"128.0.0.0/1 0.0.0.0/1", v4, true},
		{"0.0.0.0/1", v4, false},
		{"128.0.0.0/1", v4, false},
		{"0.0.0.0/2 64.0.0.0/2 128.0.0.0/1", v4, true},
		{"0.0.0.0/2 128.0.0.0/1", v4, false},
		{"0.0.0.0/1 0.0.0.0/2 10.0.0.0/8 128.0.0.0/1", v4, true},
		{"0.0.0.0/1 128.0.0.0/2 192.0.0.0/2", v4, true},
		{"0.0.0.0/1 128.0.0.0/2 192.0.0.0/3 224.0.0.0/4 240.0.0.0/5 248.0.0.0/6", v4, false},
		{"0.0.0.0/1 128.0.0.0/2 192.0.0.0/3 224.0.0.0/4 240.0.0.0/4 255.255.255.255/32", v4, true},
		{"0.0.0.0/1 128.0.0.0/2 192.0.0.0/3 224.0.0.0/4 240.0.0.0/5 248.0.0.0/6 252.0.0.0/7 254.0.0.0/8 255.0.0.0/9", v4, false},
		{"::/0", v6, true},
		{"::/1 8000::/1", v6, true},
		{"::/1 8000::/2", v6, false},
		{"2000::/3", v6, false},
	} {
		var ps []netip.Prefix
		for _, s := range strings.Fields(tc.prefixes) {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		if got := coversAll(ps, tc.zero); got != tc.want {
			t.Errorf("coversAll(%s) = %t, want %t", tc.prefixes, got, tc.want)
		}
	}
}
