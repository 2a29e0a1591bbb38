package test

import (
	"strconv"
	"strings"
	"testing"
)

// A NORMAL user's VPN carries only that user's traffic. Two things of a VPN
// apply to every uid whatever the rules say: an address's prefix route, if
// the kernel puts it in the main table, and the address itself, which the
// kernel puts in the local table. vpnd adds addresses with noprefixroute
// and puts the prefix routes in its own table; and since nothing can hide a
// local address, a NORMAL owner's addresses must lie in the policy's pools
// and must not overlap the host's own networks.

// ipRouteGet asks the kernel of d's namespace how it routes dst for uid.
func (w *world) ipRouteGet(t testing.TB, dst string, uid uint32) string {
	t.Helper()
	out, err := nsIPErr(w.a, "route", "get", dst, "uid", strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return err.Error() // "Network is unreachable", say
	}
	return strings.TrimSpace(out)
}

// TestConfinedAddressesRefused: the addresses an attacker used to capture
// other users' traffic get 201 from a NORMAL user, and change nothing.
func TestConfinedAddressesRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	owner := w.dialIn(t, uidNormal)
	waitIPv6Settled(t, w.a)
	before := nsState(t, w.a)
	for _, tc := range []struct {
		addrs  string
		detail string
	}{
		// Three quarters of IPv4.
		{`"129.0.0.1/1","64.0.0.1/2"`, "addresses[0]: 129.0.0.1/1 is outside the address pools"},
		// More specific than the host's LAN 192.0.2.0/24: half of it.
		{`"192.0.2.77/25"`, "addresses[0]: 192.0.2.77/25 is outside the address pools"},
		// All global IPv6.
		{`"2000::1/3"`, "addresses[0]: 2000::1/3 is outside the address pools"},
		// Local delivery of 8.8.8.8 for every user.
		{`"8.8.8.8/32"`, "addresses[0]: 8.8.8.8/32 is outside the address pools"},
	} {
		wantError(t, owner.call("setUp", `{"addresses":[`+tc.addrs+`]}`, ""), 201, tc.detail)
	}
	if after := nsState(t, w.a); after != before {
		t.Errorf("a refused setUp changed the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, dst := range []string{"129.0.0.9", "64.0.0.9", "192.0.2.99", "8.8.8.8", "2000::9"} {
		if got := w.ipRouteGet(t, dst, uidNormal2); strings.Contains(got, "vpn-tun") || strings.HasPrefix(got, "local") {
			t.Errorf("ip route get %s uid %d = %q", dst, uidNormal2, got)
		}
	}
}

// waitIPv6Settled waits until every IPv6 address in ns is in use: none is
// tentative, and each has its route in the local table, which the kernel
// adds once duplicate address detection is over. A veth's link-local
// address comes and settles on its own, a second or so after the link is
// up: a snapshot of the namespace taken before then would differ from one
// taken after for no doing of vpnd's.
func waitIPv6Settled(t testing.TB, ns string) {
	t.Helper()
	eventually(t, "the IPv6 addresses of "+ns+" settled", func() (bool, string) {
		var links []struct {
			Ifname   string `json:"ifname"`
			AddrInfo []struct {
				Local     string `json:"local"`
				Tentative bool   `json:"tentative"`
			} `json:"addr_info"`
		}
		nsJSON(t, ns, &links, "-6", "addr", "show")
		local := nsIP(t, ns, "-6", "route", "show", "table", "local")
		for _, l := range links {
			for _, a := range l.AddrInfo {
				if a.Tentative {
					return false, a.Local + " on " + l.Ifname + " is tentative"
				}
				if !strings.Contains(local, "local "+a.Local+" dev "+l.Ifname+" ") {
					return false, "no local route for " + a.Local + " on " + l.Ifname + ":\n" + local
				}
			}
		}
		return true, ""
	})
}

// TestConfinedOverlap: inside pools that an administrator opened wide, a
// NORMAL user's address still may not overlap the host's own networks.
func TestConfinedOverlap(t *testing.T) {
	t.Parallel()
	w := newWorld(t, withAccounts(`{"default":"normal","users":{"root":"admin"},`+
		`"addressPools":["10.0.0.0/8","192.0.2.0/24","128.0.0.0/1","2000::/3","fd00::/8"]}`))
	owner := w.dialIn(t, uidNormal)
	for _, tc := range []struct {
		addrs, detail string
	}{
		{`"192.0.2.77/25"`, "addresses[0]: 192.0.2.77/25 overlaps 192.0.2.1/24 on veth-a"},
		{`"129.0.0.1/1"`, "overlaps 192.0.2.1/24 on veth-a"},
		{`"2001:db8:1::9/64"`, "overlaps 2001:db8:1::1/64 on veth-a"},
	} {
		wantError(t, owner.call("setUp", `{"addresses":[`+tc.addrs+`]}`, ""), 201, tc.detail)
	}
	// On-link routes of the main table count too.
	nsIP(t, w.a, "route", "add", "10.77.0.0/16", "dev", "veth-a")
	wantError(t, owner.call("setUp", `{"addresses":["10.77.1.2/24"]}`, ""), 201, "overlaps 10.77.0.0/16 on veth-a")
	// An ADMIN is not confined.
	admin := w.dialIn(t, uidRoot)
	admin.setUpVPN(`"addresses":["192.0.2.77/25"]`)
	ok(t, admin.call("destroy", "{}", ""))
	w.d.waitClean(t, "destroy")
}

// TestPrefixRouteCarriesOnlyTheOwner: with real datagrams, the prefix route
// of a NORMAL owner's address serves the owner only. The host routes the
// VPN's whole /16 through B: the owner's traffic to its /24 enters the VPN,
// another user's goes to B as before. With the prefix route in the main
// table, as the kernel adds it by default, the second would be captured.
func TestPrefixRouteCarriesOnlyTheOwner(t *testing.T) {
	kernelOnly(t, "real datagrams through the VPN's prefix routes")
	t.Parallel()
	w := newWorld(t)
	nsIP(t, w.a, "route", "add", "10.8.0.0/16", "via", twAddrB4)
	nsIP(t, w.a, "-6", "route", "add", "fd00:8::/48", "via", twAddrB6)
	nsIP(t, w.b, "addr", "add", "10.8.0.9/32", "dev", "lo")
	nsIP(t, w.b, "addr", "add", "fd00:8::9/128", "dev", "lo")
	nsIP(t, w.b, "route", "add", "10.8.0.0/16", "via", twAddrA4)
	nsIP(t, w.b, "-6", "route", "add", "fd00:8::/48", "via", twAddrA6)
	owner := w.dialIn(t, uidNormal)
	other := w.dialIn(t, uidNormal2)
	owner.setUpVPN(`"addresses":["10.8.0.2/24","fd00:8::2/64"],"routes":["198.51.100.0/24","2001:db8:100::/64"]`)

	for _, tc := range []struct {
		f   twFamily
		dst string
	}{{twFamilies[0], "10.8.0.9"}, {twFamilies[1], "fd00:8::9"}} {
		t.Run(tc.f.name, func(t *testing.T) {
			if got := w.ipRouteGet(t, tc.dst, uidNormal); !strings.Contains(got, "dev vpn-tun") {
				t.Errorf("ip route get %s uid %d = %q, want it through vpn-tun", tc.dst, uidNormal, got)
			}
			if got := w.ipRouteGet(t, tc.dst, uidNormal2); strings.Contains(got, "vpn-tun") || !strings.Contains(got, "dev veth-a") {
				t.Errorf("ip route get %s uid %d = %q, want it through veth-a", tc.dst, uidNormal2, got)
			}
			captured := w.wantCaptured(t, tc.f, owner, owner, "", tc.dst, "owner to its VPN subnet")
			w.wantAtB(t, tc.f, other, owner, "", tc.dst, "another user to the VPN's subnet")
			w.wantNotAtB(t, captured)
		})
	}
}
