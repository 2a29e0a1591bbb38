package tun

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// requests counts the sendmsg calls n has made so far (dumps included).
func requests(n *Netlink) int64 { return n.c.sends.Load() }

// cached runs f and reports whether it sent no request to the kernel.
func cached(n *Netlink, f func()) bool {
	before := requests(n)
	f()
	return requests(n) == before
}

// TestHostPrefixesCache: HostPrefixes answers from memory until an
// address, a link or an on-link route of another interface changes;
// vpnd's own link never drops it.
func TestHostPrefixesCache(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	ipCmd(t, "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy0p")
	ipCmd(t, "link", "set", "dummy0", "up")
	ipCmd(t, "addr", "add", "192.0.2.1/24", "dev", "dummy0")
	host := func() []string {
		t.Helper()
		ps, err := n.HostPrefixes("vpn-tun")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			if !p.Prefix.Addr().IsLinkLocalUnicast() && p.Prefix.Masked() != netip.MustParsePrefix("fe80::/64") {
				out = append(out, p.Prefix.String()+" "+p.Ifname)
			}
		}
		slices.Sort(out)
		return out
	}
	has := func(what string) bool { return slices.Contains(host(), what) }
	if !has("192.0.2.1/24 dummy0") {
		t.Fatalf("host prefixes %q", host())
	}
	if !cached(n, func() { host() }) {
		t.Error("a second call with nothing changed asked the kernel again")
	}

	for _, tc := range []struct {
		name string
		do   []string
		want string
		gone bool
	}{
		// noprefixroute: only the address's own announcement tells.
		{"an address added", []string{"addr", "add", "198.18.0.1/15", "dev", "dummy0", "noprefixroute"}, "198.18.0.1/15 dummy0", false},
		{"an address deleted", []string{"addr", "del", "198.18.0.1/15", "dev", "dummy0"}, "198.18.0.1/15 dummy0", true},
		{"an on-link route added", []string{"route", "add", "10.77.0.0/16", "dev", "dummy0"}, "10.77.0.0/16 dummy0", false},
		{"an on-link route deleted", []string{"route", "del", "10.77.0.0/16", "dev", "dummy0"}, "10.77.0.0/16 dummy0", true},
		{"a link renamed", []string{"link", "set", "dummy0", "name", "lan0"}, "192.0.2.1/24 lan0", false},
	} {
		if !cached(n, func() { host() }) {
			t.Fatalf("%s: the answer was not cached before the change", tc.name)
		}
		ipCmd(t, tc.do...)
		if got := has(tc.want); got == tc.gone {
			t.Errorf("%s: host prefixes %q", tc.name, host())
		}
	}

	// A gateway route in main changes nothing. (A link going down does:
	// the kernel takes its prefix routes away.)
	host()
	ipCmd(t, "route", "add", "203.0.113.0/24", "via", "192.0.2.254")
	ipCmd(t, "link", "set", "lan0", "mtu", "1400")
	if !cached(n, func() { host() }) {
		t.Error("a gateway route or a link's MTU dropped the answer")
	}

	// vpnd's own link, made after the answer, and its addresses and
	// routes, do not drop it; its addresses are never host prefixes.
	f, index := makeTUN(t, n, "vpn-tun")
	if _, err := n.Install(smallVPN(index)); err != nil {
		t.Fatal(err)
	}
	ipCmd(t, "addr", "add", "10.66.0.1/24", "dev", "vpn-tun")
	f.Close() // the link goes with its only fd
	if !cached(n, func() { host() }) {
		t.Error("vpnd's own link dropped the answer")
	}
	for _, p := range host() {
		if strings.HasSuffix(p, " vpn-tun") {
			t.Errorf("vpnd's own link is a host prefix: %s", p)
		}
	}

	// A new link of someone else's does.
	ipCmd(t, "link", "add", "dummy1", "type", "veth", "peer", "name", "dummy1p")
	ipCmd(t, "addr", "add", "100.64.1.1/24", "dev", "dummy1")
	if !has("100.64.1.1/24 dummy1") {
		t.Errorf("a new link's address is missing: %q", host())
	}
}
