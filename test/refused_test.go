package test

import (
	"testing"

	"github.com/vpnd/vpnd/internal/dns/resolvedtest"
)

// TestRefusedBeforeBuild: a config that the host's resolver or the kernel
// would refuse half way through a bring-up is the caller's invalid config,
// answered with 19900001 before anything is built: no link, rule or route,
// and no call to resolved. systemd-resolved refuses its own stub listeners
// (127.0.0.53, 127.0.0.54) as a link's DNS servers, and no server on the
// host's loopback is reached through the VPN anyway; a multicast address
// is no DNS server; and an excluded default route contradicts the default
// route vpnd adds when no route is included, which the kernel refuses.
// Each of these once came back as 19900002, after the VPN had been built
// and torn down again.
func TestRefusedBeforeBuild(t *testing.T) {
	t.Parallel()
	var standIn *resolvedtest.Resolved
	var opts []daemonOpt
	if !simBackend { // a simulated vpnd applies no DNS
		var env daemonOpt
		standIn, env = withStandIn(t)
		opts = append(opts, env)
	}
	d := startDaemon(t, opts...)
	c := d.dial(t, uidRoot)
	const v4, both = `"addresses":["10.8.0.2/24"]`, `"addresses":["10.8.0.2/24","fd00:8::2/64"]`
	for _, tc := range []struct {
		name, params, detail string
	}{
		{"resolved's stub listener", `{` + v4 + `,"dnsAddresses":["127.0.0.53"]}`,
			"dnsAddresses[0]: 127.0.0.53 is a loopback address; a VPN's DNS server must be reachable through the VPN"},
		{"resolved's proxy stub listener", `{` + v4 + `,"dnsAddresses":["10.8.0.1","127.0.0.54"]}`,
			"dnsAddresses[1]: 127.0.0.54 is a loopback address; a VPN's DNS server must be reachable through the VPN"},
		{"a local resolver", `{` + v4 + `,"dnsAddresses":["127.0.0.1"],"searchDomains":["corp.example"]}`,
			"dnsAddresses[0]: 127.0.0.1 is a loopback address; a VPN's DNS server must be reachable through the VPN"},
		{"IPv6 loopback", `{` + both + `,"dnsAddresses":["fd00:8::1","::1"]}`,
			"dnsAddresses[1]: ::1 is a loopback address; a VPN's DNS server must be reachable through the VPN"},
		{"multicast", `{` + v4 + `,"dnsAddresses":["224.0.0.251"]}`,
			"dnsAddresses[0]: 224.0.0.251 is a multicast address; a DNS server has a unicast address"},
		{"excluded default route", `{` + both + `,"routes":[{"destination":{"address":{"address":"::"},"prefixLength":0},"isExcludedRoute":true}]}`,
			"routes[0]: ::/0 excluded here but included as the default route, since no route is included"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			m := c.call("setUp", tc.params, "")
			if m.Error == nil { // leave the slot free for the next case
				ok(t, c.call("destroy", "{}", ""))
				d.waitClean(t, "destroy")
				if standIn != nil {
					standIn.Reset()
				}
				t.Fatalf("setUp succeeded: %s", m.raw)
			}
			wantError(t, m, 19900001)
			if got, _ := m.Error.Data["detail"].(string); got != tc.detail {
				t.Errorf("detail %q\nwant   %q", got, tc.detail)
			}
			d.wantNoVPN(t, "after a refused setUp")
			if s := c.status(); s.State != "disconnected" || s.VPN != nil {
				t.Errorf("after a refused setUp, status %+v", s)
			}
			if standIn != nil {
				if calls := standIn.Calls(); len(calls) != 0 {
					t.Errorf("resolved was called: %q", calls)
				}
			}
		})
	}
	// The same VPN with a server reached through it goes up, and its DNS
	// lands with resolved: the checks above were not vacuous.
	c.t = t
	info := setUpOK(t, c.call("setUp", `{`+v4+`,"dnsAddresses":["10.8.0.1"]}`, ""))
	if standIn != nil && len(standIn.WaitCalls(1, settle)) == 0 {
		t.Errorf("resolved got no call for VPN %d's DNS server", info.Index)
	}
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}
