package test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// One test per row of the error table (docs/protocol.md), through the real
// socket with real peer credentials, plus the check order.

const setUpParams = `{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24"]}`

// wantNoVPN asserts that vpnd left nothing in the kernel.
func (d *daemon) wantNoVPN(t testing.TB, why string) {
	t.Helper()
	if p := d.leftovers(t); len(p) > 0 {
		t.Errorf("%s: %s", why, strings.Join(p, "; "))
	}
}

// wantVPNIndex asserts the VPN's link still exists with this index.
func (d *daemon) wantVPNIndex(t testing.TB, index int, why string) {
	t.Helper()
	if d.sim {
		if s := d.vpnStatus(t); s.VPN == nil || s.VPN.Index != index {
			t.Fatalf("%s: the VPN with index %d should still be up, status %+v", why, index, s)
		}
		return
	}
	l := d.link(t, d.ifname)
	if l == nil || l.Ifindex != index {
		t.Fatalf("%s: link %s should still exist with index %d, got %+v", why, d.ifname, index, l)
	}
}

// Row 2203001: setUp or destroy by a GUEST account.
func TestError2203001GuestDenied(t *testing.T) {
	t.Parallel()
	t.Run("default policy: nobody", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t)
		guest := d.dial(t, uidNobody)

		wantError(t, guest.call("setUp", setUpParams, ""), 2203001)
		d.wantNoVPN(t, "guest setUp")
		wantError(t, guest.call("create", setUpParams, ""), 2203001)
		wantError(t, guest.call("destroy", "{}", ""), 2203001)

		owner := d.dial(t, uidRoot)
		info := setUpOK(t, owner.call("setUp", setUpParams, ""))
		// A GUEST gets 2203001, not 2203002, while a VPN exists.
		wantError(t, guest.call("setUp", setUpParams, ""), 2203001)
		wantError(t, guest.call("destroy", "{}", ""), 2203001)
		d.wantVPNIndex(t, info.Index, "after a guest's setUp and destroy")
		ok(t, owner.call("destroy", "{}", ""))
		d.waitClean(t, "destroy")
	})
	t.Run("policy file: uid 4001 guest", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, withAccounts(`{"default":"normal","users":{"0":"admin","4001":"guest","4002":"admin"}}`))
		guest := d.dial(t, uidNormal2)
		wantError(t, guest.call("setUp", setUpParams, ""), 2203001)
		wantError(t, guest.call("destroy", "{}", ""), 2203001)
		owner := d.dial(t, 4002)
		info := setUpOK(t, owner.call("setUp", setUpParams, ""))
		wantError(t, guest.call("setUp", setUpParams, ""), 2203001)
		d.wantVPNIndex(t, info.Index, "after a guest's setUp")
		ok(t, owner.call("destroy", "{}", ""))
		d.waitClean(t, "destroy")
	})
}

// Row 2203002: setUp while a VPN exists, whoever owns it.
func TestError2203002VPNExists(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	owner := d.dial(t, uidRoot)
	info := setUpOK(t, owner.call("setUp", setUpParams, ""))
	statusBefore := d.vpnStatus(t)
	var rulesBefore []ipRule
	if !d.sim {
		rulesBefore = d.vpnRules(t)
	}

	other := `{"addresses":["10.9.0.2/24"],"routes":["203.0.113.0/24"]}`
	wantError(t, owner.call("setUp", setUpParams, ""), 2203002)
	wantError(t, owner.call("create", other, ""), 2203002)
	wantError(t, d.dial(t, uidRoot).call("setUp", other, ""), 2203002)
	wantError(t, d.dial(t, uidNormal).call("setUp", other, ""), 2203002)
	wantError(t, d.dial(t, uidDaemon).call("create", setUpParams, ""), 2203002)

	d.wantVPNIndex(t, info.Index, "after refused setUps")
	if s := d.vpnStatus(t); !reflect.DeepEqual(s, statusBefore) {
		t.Errorf("refused setUps changed the VPN: %+v, was %+v", s.VPN, statusBefore.VPN)
	}
	if !d.sim {
		if got := d.vpnRules(t); fmt.Sprint(got) != fmt.Sprint(rulesBefore) {
			t.Errorf("refused setUps changed the rules: %v, was %v", got, rulesBefore)
		}
		for _, r := range d.routes(t) {
			if strings.Contains(r.Dst, "203.0.113") {
				t.Errorf("a refused setUp added route %s", r)
			}
		}
		for _, a := range d.addrs(t, d.ifname) {
			if a.Local == "10.9.0.2" {
				t.Errorf("a refused setUp added address %s", a.Local)
			}
		}
	}

	// The slot is global: a NORMAL owner's VPN blocks an ADMIN too.
	ok(t, owner.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
	normal := d.dial(t, uidNormal)
	setUpOK(t, normal.call("setUp", setUpParams, ""))
	wantError(t, owner.call("setUp", other, ""), 2203002)
	wantError(t, normal.call("setUp", other, ""), 2203002)
	ok(t, normal.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}

// Row 2203004: protect with no fd, an fd that is not a socket, a socket
// that is not AF_INET/AF_INET6 stream or datagram, or one with a pending
// error (a failed TCP connect).
func TestError2203004InvalidFD(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	for _, uid := range []uint32{uidRoot, uidNormal} {
		c := d.dial(t, uid)
		kinds := []string{"", "pipe", "unix", "unixdgram", "tcpfail"}
		if uid == uidRoot {
			kinds = append(kinds, "raw") // creating it needs root
		}
		for _, kind := range kinds {
			name := kind
			if name == "" {
				name = "no fd"
			}
			t.Run(fmt.Sprintf("uid %d %s", uid, name), func(t *testing.T) {
				c.t = t
				wantError(t, c.call("protect", "{}", kind), 2203004)
			})
		}
		c.t = t
		// The connection is still usable, and a proper socket passes.
		ok(t, c.call("protect", "{}", "udp"))
	}
}

// Row 19900001: params of the wrong type or shape, a missing or unknown
// member, a value out of range (the VpnConfig rules of docs/protocol.md).
func TestError19900001InvalidParam(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.dial(t, uidRoot)

	addr := func(a string, prefix int) string {
		return fmt.Sprintf(`{"address":{"address":%q},"prefixLength":%d}`, a, prefix)
	}
	many := func(n int, f func(i int) string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = f(i)
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	v4 := `"addresses":["10.8.0.2/24"]`
	cases := []struct {
		name      string
		params    string // raw JSON, "" for no params member
		detailHas []string
	}{
		{"params is an array", `[]`, nil},
		{"params is a string", `"10.8.0.2/24"`, nil},
		{"params is a number", `42`, nil},
		{"no params", "", nil},
		{"addresses missing", `{"routes":["198.51.100.0/24"]}`, []string{"addresses"}},
		{"addresses not an array", `{"addresses":"10.8.0.2/24"}`, []string{"addresses"}},
		{"addresses empty", `{"addresses":[]}`, []string{"addresses"}},
		{"address element a number", `{"addresses":[42]}`, []string{"addresses[0]"}},
		{"unknown member", `{` + v4 + `,"mtuu":1400}`, []string{"mtuu"}},
		{"unknown member in LinkAddress", `{"addresses":[{"address":{"address":"10.8.0.2"},"prefixLength":24,"prefix":1}]}`, []string{"prefix"}},
		{"mtu wrong type", `{` + v4 + `,"mtu":"1500"}`, []string{"mtu"}},
		{"isBlocking wrong type", `{` + v4 + `,"isBlocking":"yes"}`, []string{"isBlocking"}},
		{"prefixLength wrong type", `{"addresses":[{"address":{"address":"10.8.0.2"},"prefixLength":"24"}]}`, []string{"addresses[0]"}},
		{"route prefix 33 (CIDR)", `{` + v4 + `,"routes":["198.51.100.0/24","198.51.100.0/33"]}`, []string{"routes[1]", "33"}},
		{"route prefix 33 (object)", `{` + v4 + `,"routes":[{"destination":` + addr("198.51.100.0", 33) + `}]}`, []string{"routes[0]", "33"}},
		{"route prefix 129", `{"addresses":["fd00::2/64"],"routes":["2001:db8::/129"]}`, []string{"routes[0]", "129"}},
		{"route not a CIDR", `{` + v4 + `,"routes":["198.51.100.0"]}`, []string{"routes[0]"}},
		{"address prefix 33", `{"addresses":["10.8.0.2/33"]}`, []string{"addresses[0]", "33"}},
		{"address prefix 0", `{"addresses":[` + addr("10.8.0.2", 0) + `]}`, []string{"addresses[0]"}},
		{"address IPv6 prefix 129", `{"addresses":["fd00::2/129"]}`, []string{"addresses[0]"}},
		{"address loopback", `{"addresses":["10.8.0.2/24","127.0.0.2/8"]}`, []string{"addresses[1]"}},
		{"address IPv6 loopback", `{"addresses":["::1/128"]}`, []string{"addresses[0]"}},
		{"address unspecified", `{"addresses":[` + addr("0.0.0.0", 32) + `]}`, []string{"addresses[0]"}},
		{"address multicast", `{"addresses":["224.0.0.5/24"]}`, []string{"addresses[0]"}},
		{"address IPv6 multicast", `{"addresses":["ff02::1/64"]}`, []string{"addresses[0]"}},
		{"address is the network address", `{"addresses":["10.8.0.0/24"]}`, []string{"addresses[0]"}},
		{"address is the broadcast address", `{"addresses":["10.8.0.255/24"]}`, []string{"addresses[0]"}},
		{"address broadcast at /30", `{"addresses":["10.8.0.3/30"]}`, []string{"addresses[0]"}},
		{"address not an IP", `{"addresses":[` + addr("vpn.example", 24) + `]}`, []string{"addresses[0]"}},
		{"duplicate address", `{"addresses":["10.8.0.2/24","10.8.0.2/24"]}`, []string{"addresses[1]"}},
		{"family mismatch", `{"addresses":[{"address":{"address":"10.8.0.2","family":2},"prefixLength":24}]}`, []string{"addresses[0]"}},
		{"family out of range", `{"addresses":[{"address":{"address":"10.8.0.2","family":3},"prefixLength":24}]}`, []string{"addresses[0]"}},
		{"2001 addresses", `{"addresses":` + many(2001, func(i int) string { return fmt.Sprintf(`"10.%d.%d.1/24"`, 8+i/256, i%256) }) + `}`, []string{"addresses"}},
		{"10001 routes", `{` + v4 + `,"routes":` + many(10001, func(i int) string { return fmt.Sprintf(`"10.%d.%d.0/24"`, 100+i/256, i%256) }) + `}`, []string{"routes"}},
		{"gateway outside the VPN's prefixes", `{` + v4 + `,"routes":[{"destination":` + addr("198.51.100.0", 24) + `,"gateway":{"address":"192.0.2.1"}}]}`, []string{"routes[0]"}},
		{"route family not accepted", `{` + v4 + `,"routes":["198.51.100.0/24","2001:db8::/32"]}`, []string{"routes[1]"}},
		{"mtu 575", `{` + v4 + `,"mtu":575}`, []string{"mtu"}},
		{"mtu 65536", `{` + v4 + `,"mtu":65536}`, []string{"mtu"}},
		{"mtu 1279 with IPv6", `{"addresses":["10.8.0.2/24","fd00::2/64"],"mtu":1279}`, []string{"mtu"}},
		{"isIPv4Accepted without an IPv4 address", `{"addresses":["fd00::2/64"],"isIPv4Accepted":true}`, []string{"isIPv4Accepted"}},
		{"isIPv6Accepted without an IPv6 address", `{` + v4 + `,"isIPv6Accepted":true}`, []string{"isIPv6Accepted"}},
		{"isLegacy", `{` + v4 + `,"isLegacy":true}`, []string{"isLegacy"}},
		{"dns not an IP", `{` + v4 + `,"dnsAddresses":["999.1.1.1"]}`, []string{"dnsAddresses[0]"}},
		{"65 dns addresses", `{` + v4 + `,"dnsAddresses":` + many(65, func(i int) string { return fmt.Sprintf(`"10.9.0.%d"`, i+1) }) + `}`, []string{"dnsAddresses"}},
		{"search domain not a DNS name", `{` + v4 + `,"searchDomains":["example.com","-bad-.example"]}`, []string{"searchDomains[1]"}},
		{"search domain label of 64", `{` + v4 + `,"searchDomains":["` + strings.Repeat("a", 64) + `.example"]}`, []string{"searchDomains[0]"}},
		{"65 search domains", `{` + v4 + `,"searchDomains":` + many(65, func(i int) string { return fmt.Sprintf(`"d%d.example"`, i) }) + `}`, []string{"searchDomains"}},
		{"trusted and blocked both set", `{` + v4 + `,"trustedApplications":["root"],"blockedApplications":["daemon"]}`, []string{"Applications"}},
		{"unknown user", `{` + v4 + `,"trustedApplications":["no-such-user-vpnd"]}`, []string{"no-such-user-vpnd"}},
		{"257 trusted applications", `{` + v4 + `,"trustedApplications":` + many(257, func(i int) string { return `"root"` }) + `}`, []string{"trustedApplications"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			var params any
			if tc.params != "" {
				params = tc.params
			}
			wantError(t, c.call("setUp", params, ""), 19900001, tc.detailHas...)
			d.wantNoVPN(t, "after a rejected setUp")
		})
	}
	c.t = t
	// Nothing above took the slot.
	setUpOK(t, c.call("setUp", setUpParams, ""))
	ok(t, c.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}

// Row 19900002: the kernel refused what a valid request needed; whatever
// was half built is rolled back first, and foreign objects stay untouched.
func TestError19900002Internal(t *testing.T) {
	kernelOnly(t, "foreign links and routes in the kernel make the bring-up fail")
	t.Parallel()
	cases := []struct {
		name   string
		create func(t testing.TB, d *daemon)
		check  func(t testing.TB, d *daemon) // the foreign object is intact
		remove func(t testing.TB, d *daemon)
	}{
		{
			name:   "a bridge named vpn-tun exists",
			create: func(t testing.TB, d *daemon) { d.ip(t, "link", "add", d.ifname, "type", "bridge") },
			check: func(t testing.TB, d *daemon) {
				if l := d.link(t, d.ifname); l == nil || l.kind() != "bridge" {
					t.Errorf("the foreign bridge %s was touched: %+v", d.ifname, l)
				}
			},
			remove: func(t testing.TB, d *daemon) { d.ip(t, "link", "del", d.ifname) },
		},
		{
			// Without IFF_TUN_EXCL vpnd would attach to someone else's device.
			name:   "a persistent tun named vpn-tun exists",
			create: func(t testing.TB, d *daemon) { d.ip(t, "tuntap", "add", d.ifname, "mode", "tun") },
			check: func(t testing.TB, d *daemon) {
				l := d.link(t, d.ifname)
				if l == nil || l.kind() != "tun" || l.Linkinfo.InfoData["persist"] != true {
					t.Errorf("the foreign persistent tun %s was touched: %+v", d.ifname, l)
				}
				if l != nil && (l.hasFlag("UP") || len(d.addrs(t, d.ifname)) > 0) {
					t.Errorf("vpnd configured the foreign tun: flags=%v addrs=%v", l.Flags, d.addrs(t, d.ifname))
				}
			},
			remove: func(t testing.TB, d *daemon) { d.ip(t, "tuntap", "del", d.ifname, "mode", "tun") },
		},
		{
			// The TUN is created, then adding the route fails (EEXIST):
			// the link and any rule must be rolled back.
			name: "table 98 already has the route",
			create: func(t testing.TB, d *daemon) {
				d.ip(t, "route", "add", "198.51.100.0/24", "dev", "lo", "table", fmt.Sprint(d.table))
			},
			check: func(t testing.TB, d *daemon) {
				rs := d.routes(t)
				if len(rs) != 1 || rs[0].Dst != "198.51.100.0/24" || rs[0].Dev != "lo" {
					t.Errorf("table %d should hold exactly the foreign route via lo, has %v", d.table, rs)
				}
			},
			remove: func(t testing.TB, d *daemon) {
				d.ip(t, "route", "del", "198.51.100.0/24", "table", fmt.Sprint(d.table))
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t)
			c := d.dial(t, uidRoot)
			tc.create(t, d)
			removed := false
			t.Cleanup(func() {
				if !removed {
					tc.remove(t, d)
				}
			})
			wantError(t, c.call("setUp", setUpParams, ""), 19900002)
			m := c.call("setUp", setUpParams, "")
			wantError(t, m, 19900002)
			if detail, _ := m.Error.Data["detail"].(string); detail == "" {
				t.Errorf("19900002 without a detail: %s", m.raw)
			}
			tc.check(t, d)
			if rs := d.vpnRules(t); len(rs) > 0 {
				t.Errorf("rules left after a failed setUp: %v", rs)
			}
			if s := c.status(); s.State != "disconnected" {
				t.Errorf("status after a failed setUp: %+v", s)
			}
			tc.remove(t, d)
			removed = true
			// The failure did not occupy the slot.
			setUpOK(t, c.call("setUp", setUpParams, ""))
			ok(t, c.call("destroy", "{}", ""))
			d.waitClean(t, "destroy")
		})
	}
}

// Row 201: destroy or protect by a caller that neither owns the VPN nor is
// ADMIN; protect by a GUEST; a NORMAL caller naming other users.
func TestError201Permission(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	guest := d.dial(t, uidNobody)
	normal := d.dial(t, uidDaemon)

	// Without a VPN.
	wantError(t, guest.call("protect", "{}", "udp"), 201)
	for _, p := range []string{
		`{"addresses":["10.8.0.2/24"],"trustedApplications":["bin"]}`,
		`{"addresses":["10.8.0.2/24"],"trustedApplications":["daemon","root"]}`,
		`{"addresses":["10.8.0.2/24"],"blockedApplications":["root"]}`,
		`{"addresses":["10.8.0.2/24"],"trustedApplications":["2"]}`,
	} {
		wantError(t, normal.call("setUp", p, ""), 201)
		d.wantNoVPN(t, "after a refused setUp")
	}
	// Naming only oneself is allowed.
	setUpOK(t, normal.call("setUp", `{"addresses":["10.8.0.2/24"],"trustedApplications":["daemon"]}`, ""))
	ok(t, normal.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")

	// With a NORMAL user's VPN.
	owner := d.dial(t, uidNormal)
	info := setUpOK(t, owner.call("setUp", setUpParams, ""))
	for _, uid := range []uint32{uidNormal2, uidDaemon} {
		other := d.dial(t, uid)
		wantError(t, other.call("destroy", "{}", ""), 201)
		wantError(t, other.call("protect", "{}", "udp"), 201)
	}
	wantError(t, guest.call("protect", "{}", "udp"), 201)
	d.wantVPNIndex(t, info.Index, "after refused destroys")
	ok(t, owner.call("protect", "{}", "udp"))
	ok(t, owner.call("destroy", "{}", ""))
	d.waitClean(t, "destroy")
}

// Row -32700: the line is not JSON; the connection stays open.
func TestErrorParse(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.rawConn(t)
	for i, line := range []string{
		`not json`,
		`{"jsonrpc":"2.0",`,
		`{"jsonrpc":"2.0","id":1,"method":"status"`,
		`{"jsonrpc":"2.0","id":1,"method":"status"} trailing`,
		"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"st\xffatus\"}",
		`{'jsonrpc':'2.0'}`,
	} {
		writeLine(t, c, line)
		m := mustRead(t, c)
		wantError(t, m, -32700)
		if id, has := m.members["id"]; !has || string(id) != "null" {
			t.Errorf("parse error for %q: id must be present and null (JSON-RPC 2.0), got %s", line, m.raw)
		}
		// The connection stays open and serves the next request.
		writeLine(t, c, request(100+i, "status", "{}", 0))
		m = mustRead(t, c)
		ok(t, m)
		if !m.idIs(100 + i) {
			t.Errorf("response %s, want id %d", m.raw, 100+i)
		}
	}
}

// Row -32600: JSON, but not a JSON-RPC 2.0 request object.
func TestErrorInvalidRequest(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.rawConn(t)
	for i, line := range []string{
		`[]`,
		`[{"jsonrpc":"2.0","id":1,"method":"status"}]`,
		`"status"`,
		`42`,
		`null`,
		`{}`,
		`{"jsonrpc":"1.0","id":1,"method":"status"}`,
		`{"id":1,"method":"status"}`,
		`{"jsonrpc":2,"id":1,"method":"status"}`,
		`{"jsonrpc":"2.0","id":1}`,
		`{"jsonrpc":"2.0","id":1,"method":7}`,
		`{"jsonrpc":"2.0","id":{"a":1},"method":"status"}`,
		`{"jsonrpc":"2.0","id":[1],"method":"status"}`,
		`{"jsonrpc":"2.0","id":1,"method":"status","fds":-1}`,
	} {
		writeLine(t, c, line)
		wantError(t, mustRead(t, c), -32600)
		writeLine(t, c, request(100+i, "status", "{}", 0))
		m := mustRead(t, c)
		ok(t, m)
		if !m.idIs(100 + i) {
			t.Errorf("after %s: response %s, want id %d", line, m.raw, 100+i)
		}
	}
}

// Row -32601: unknown method.
func TestErrorMethodNotFound(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	for _, uid := range []uint32{uidRoot, uidNobody} {
		c := d.dial(t, uid)
		for _, method := range []string{"setup", "SetUp", "frobnicate", "rpc.discover", "vpnStateChanged"} {
			m := c.call(method, "{}", "")
			wantError(t, m, -32601, method)
		}
	}
	// The id is echoed whatever its type.
	c := d.rawConn(t)
	writeLine(t, c, `{"jsonrpc":"2.0","id":"abc","method":"nope"}`)
	m := mustRead(t, c)
	wantError(t, m, -32601, "nope")
	if string(m.ID) != `"abc"` {
		t.Errorf("id %s, want \"abc\"", m.ID)
	}
}

// Check order: which error wins when several conditions hold.
func TestCheckOrder(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	guest := d.dial(t, uidNobody)
	normal := d.dial(t, uidDaemon)
	normal2 := d.dial(t, uidNormal)
	admin := d.dial(t, uidRoot)
	bad := `{"addresses":["10.8.0.2/33"]}`
	naming := `{"addresses":["10.8.0.2/24"],"trustedApplications":["bin"]}`

	t.Run("no VPN", func(t *testing.T) {
		for _, c := range []*client{guest, normal, normal2, admin} {
			c.t = t
		}
		// setUp: parameters before account type.
		wantError(t, guest.call("setUp", bad, ""), 19900001)
		// account type before application lists.
		wantError(t, guest.call("setUp", naming, ""), 2203001)
		// application lists with invalid params: params first.
		wantError(t, normal.call("setUp", `{"addresses":["10.8.0.2/33"],"trustedApplications":["bin"]}`, ""), 19900001)
		// destroy: account type before "no VPN: success".
		wantError(t, guest.call("destroy", "{}", ""), 2203001)
		// destroy with no VPN is idempotent for anyone else.
		ok(t, normal.call("destroy", "{}", ""))
		ok(t, admin.call("destroy", "{}", ""))
		// protect: descriptor before account type.
		wantError(t, guest.call("protect", "{}", "pipe"), 2203004)
		wantError(t, guest.call("protect", "{}", ""), 2203004)
		wantError(t, guest.call("protect", "{}", "udp"), 201)
		// With no VPN, NORMAL and ADMIN may protect.
		ok(t, normal.call("protect", "{}", "udp"))
		ok(t, admin.call("protect", "{}", "udp"))
		// status and subscribe: anyone, GUEST included.
		if s := guest.status(); s.State != "disconnected" || s.VPN != nil {
			t.Errorf("guest status: %+v", s)
		}
		ok(t, guest.call("subscribe", "{}", ""))
	})

	t.Run("NORMAL user's VPN", func(t *testing.T) {
		for _, c := range []*client{guest, normal, normal2, admin} {
			c.t = t
		}
		info := setUpOK(t, normal.call("setUp", setUpParams, ""))
		if sc := guest.stateChange(); sc.Reason != "setUp" || !sc.IsConnected {
			t.Errorf("subscribed guest got %+v, want setUp", sc)
		}
		// setUp: parameters → account → lists → existing VPN.
		wantError(t, normal2.call("setUp", bad, ""), 19900001)
		wantError(t, guest.call("setUp", setUpParams, ""), 2203001)
		wantError(t, normal2.call("setUp", naming, ""), 201)
		wantError(t, normal2.call("setUp", setUpParams, ""), 2203002)
		wantError(t, admin.call("setUp", naming, ""), 2203002)
		// destroy: account → not owner → teardown.
		wantError(t, guest.call("destroy", "{}", ""), 2203001)
		wantError(t, normal2.call("destroy", "{}", ""), 201)
		// protect: descriptor → GUEST / not owner → mark.
		wantError(t, normal2.call("protect", "{}", "pipe"), 2203004)
		wantError(t, normal2.call("protect", "{}", "udp"), 201)
		wantError(t, guest.call("protect", "{}", "tcpfail"), 2203004)
		wantError(t, guest.call("protect", "{}", "udp"), 201)
		ok(t, normal.call("protect", "{}", "udp"))
		ok(t, admin.call("protect", "{}", "udp"))
		if s := guest.status(); s.State != "connected" || s.VPN == nil || s.VPN.Index != info.Index {
			t.Errorf("guest status: %+v", s)
		}
		// An ADMIN may destroy another user's VPN.
		ok(t, admin.call("destroy", "{}", ""))
		if sc := guest.stateChange(); sc.Reason != "destroy" || sc.IsConnected {
			t.Errorf("subscribed guest got %+v, want destroy", sc)
		}
		d.waitClean(t, "admin destroy")
		ok(t, normal.call("destroy", "{}", "")) // idempotent
	})
}
