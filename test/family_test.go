package test

import (
	"strings"
	"testing"
)

// TestOtherFamilyFailsClosed: a VPN that accepts one family makes the
// covered users' traffic of the other family fail at once with
// ENETUNREACH instead of leaving outside the VPN; other users and protected
// sockets are untouched; allowFamilyBypass turns it off. Both directions:
// an IPv4-only VPN and an IPv6-only one.
func TestOtherFamilyFailsClosed(t *testing.T) {
	kernelOnly(t, "real datagrams of the other family, refused by the kernel")
	t.Parallel()
	w := newWorld(t)
	owner := w.dialIn(t, uidNormal)
	other := w.dialIn(t, uidNormal2)
	ipv4, ipv6 := twFamilies[0], twFamilies[1]
	for _, f := range twFamilies {
		owner.newSock("protected-"+f.name, f.udp)
		owner.protectSock("protected-" + f.name)
	}
	for _, tc := range []struct {
		name     string
		vpn      string
		carried  twFamily
		leaked   twFamily
		bypassed bool
	}{
		{"ipv4-only", `"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]`, ipv4, ipv6, false},
		{"ipv6-only", `"addresses":["fd00:8::2/64"],"routes":["2001:db8:100::/64"]`, ipv6, ipv4, false},
		{"ipv4-only with allowFamilyBypass", `"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"],"allowFamilyBypass":true`, ipv4, ipv6, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			owner.setUpVPN(tc.vpn)
			tok := w.wantCaptured(t, tc.carried, owner, owner, "", tc.carried.remote, "owner, carried family")
			if tc.bypassed {
				w.wantAtB(t, tc.leaked, owner, owner, "", tc.leaked.remote, "owner, other family, bypass allowed")
			} else {
				// The table's unreachable default answers at once;
				// the kernel's word for an unreachable route is
				// EHOSTUNREACH.
				w.wantRefused(t, tc.leaked, owner, tc.leaked.remote, "owner, other family", errHostUnreach)
				if got := w.ipRouteGet(t, tc.leaked.remote, uidNormal); !strings.Contains(got, "No route to host") {
					t.Errorf("ip route get %s uid %d = %q, want no route to host", tc.leaked.remote, uidNormal, got)
				}
			}
			w.wantAtB(t, tc.leaked, other, owner, "", tc.leaked.remote, "another user, other family")
			w.wantAtB(t, tc.leaked, owner, owner, "protected-"+tc.leaked.name, tc.leaked.remote, "owner's protected socket, other family")
			w.wantNotAtB(t, tok)
			ok(t, owner.call("destroy", "{}", ""))
			w.d.waitClean(t, "destroy")
		})
	}
}
