package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vpnd/vpnd/internal/firewall"
)

// The names vpnd uses by default; the baselines use the same ones in their
// own namespace, so that the kernel does the same work for both.
const (
	ifname      = "vpn-tun"
	table       = 98
	priority    = 10000
	protectMark = 0x20000
	nftTable    = "vpnd" // family inet
)

// spec is one VPN as the kernel sees it. vpnd gets it as a setUp config;
// the baselines build the same link, address, routes, rules and nftables
// table themselves. Every spec of the benchmark is IPv4-only, so IPv6
// fails closed: an unreachable IPv6 default in the table, and the owner's
// IPv6 packets dropped by vpnd's nftables table.
type spec struct {
	Addr   netip.Prefix
	MTU    int
	Routes []netip.Prefix
	DNS    []string
}

// typicalSpec is the typical setUp of scenario 1: one address, two routes,
// two DNS servers and an MTU.
func typicalSpec() spec {
	return spec{
		Addr:   netip.MustParsePrefix("10.8.0.2/24"),
		MTU:    1400,
		Routes: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.0/24")},
		DNS:    []string{"10.8.0.1", "10.8.0.53"},
	}
}

// routesSpec is the typical setUp with n generated routes instead of two:
// distinct /29s of the benchmarking range 198.18.0.0/15, which holds
// 16,384 of them.
func routesSpec(n int) spec {
	s := typicalSpec()
	s.Routes = make([]netip.Prefix, n)
	base := binary.BigEndian.Uint32([]byte{198, 18, 0, 0})
	for i := range s.Routes {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], base+uint32(i)*8)
		s.Routes[i] = netip.PrefixFrom(netip.AddrFrom4(a), 29)
	}
	return s
}

// specFor returns the spec a worker is asked for: routes < 0 is the typical
// one, otherwise routesSpec(routes).
func specFor(routes int) spec {
	if routes < 0 {
		return typicalSpec()
	}
	return routesSpec(routes)
}

// prefixRoute is the address's own prefix route, which vpnd puts into its
// table (the address is added with noprefixroute).
func (s spec) prefixRoute() netip.Prefix { return s.Addr.Masked() }

// nftSpec is the nftables table vpnd keeps while s is up for an owner uid:
// the owner's IPv6 packets fail closed (set failclosed_v6), except on the
// VPN's link, on loopback and from sockets vpnd protected.
func (s spec) nftSpec(uid int) firewall.Spec {
	return firewall.Spec{
		FailClosedV6: []firewall.UIDRange{{Start: uint32(uid), End: uint32(uid)}},
		AllowIfname:  ifname,
		ProtectMark:  protectMark,
	}
}

// nftScript is s's nftables table as an `nft -f` script: what Apply
// writes, as nft prints it.
func (s spec) nftScript(uid int) []byte {
	return []byte(firewall.Render(nftTable, s.nftSpec(uid)))
}

// config is the setUp params that make vpnd build s.
func (s spec) config() []byte {
	routes := make([]string, len(s.Routes))
	for i, r := range s.Routes {
		routes[i] = r.String()
	}
	b, err := json.Marshal(map[string]any{
		"addresses":    []string{s.Addr.String()},
		"routes":       routes,
		"dnsAddresses": s.DNS,
		"mtu":          s.MTU,
	})
	if err != nil {
		panic(err) // only strings and ints
	}
	return b
}

// ipCommands is s as a sequence of `ip` invocations (one argv each, "-6"
// first for the other family), for an owner uid. The TUN made by `ip
// tuntap` is persistent: ip cannot make any other kind. rp_filter is not
// an ip setting, nor is the nftables table: the caller writes the one and
// loads the other with `nft -f` (nftScript).
func (s spec) ipCommands(uid int) [][]string {
	cmds := [][]string{
		{"tuntap", "add", "dev", ifname, "mode", "tun"},
		{"link", "set", "dev", ifname, "mtu", fmt.Sprint(s.MTU), "addrgenmode", "none"},
		{"addr", "add", s.Addr.String(), "dev", ifname, "noprefixroute"},
		{"link", "set", "dev", ifname, "up"},
		{"route", "add", s.prefixRoute().String(), "dev", ifname, "table", fmt.Sprint(table), "proto", "static"},
	}
	for _, r := range s.Routes {
		cmds = append(cmds, []string{"route", "add", r.String(), "dev", ifname, "table", fmt.Sprint(table), "proto", "static"})
	}
	// The other family fails closed, as vpnd does it: an unreachable
	// default in the table, and the owner's rule for both families.
	rule := []string{"priority", fmt.Sprint(priority), "uidrange", fmt.Sprintf("%d-%d", uid, uid),
		"fwmark", fmt.Sprintf("0/%#x", protectMark), "lookup", fmt.Sprint(table)}
	cmds = append(cmds,
		append([]string{"rule", "add"}, rule...),
		[]string{"-6", "route", "add", "unreachable", "default", "table", fmt.Sprint(table), "proto", "static"},
		append([]string{"-6", "rule", "add"}, rule...),
	)
	return cmds
}

// ipBatch is ipCommands as `ip -batch` files: one for the commands of the
// default family, one for those that need `ip -6` (a batch line cannot
// choose its family).
func (s spec) ipBatch(uid int) (batch, batch6 []byte) {
	var b, b6 strings.Builder
	for _, c := range s.ipCommands(uid) {
		dst := &b
		if c[0] == "-6" {
			dst, c = &b6, c[1:]
		}
		dst.WriteString(strings.Join(c, " "))
		dst.WriteByte('\n')
	}
	return []byte(b.String()), []byte(b6.String())
}
