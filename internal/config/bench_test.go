package config

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/protocol"
)

// routesCIDR returns params with one address and n distinct routes given
// as CIDR strings.
func routesCIDR(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if i%4 == 3 {
			fmt.Fprintf(&b, `"2001:db8:%x::/48"`, i)
		} else {
			fmt.Fprintf(&b, `"10.%d.%d.0/24"`, i>>8&0xff, i&0xff)
		}
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// routesObjects returns the same config in the object form that
// protocol.VpnConfig marshals: LinkAddress and RouteInfo objects, every
// other IPv4 route through a gateway and every tenth one excluded.
func routesObjects(n int) []byte {
	vc := protocol.VpnConfig{Addresses: []protocol.LinkAddress{
		{Address: protocol.NetAddress{Address: "10.8.0.2", Family: 1}, PrefixLength: 24},
		{Address: protocol.NetAddress{Address: "fd00::2", Family: 2}, PrefixLength: 64},
	}}
	for i := range n {
		var r protocol.RouteInfo
		switch {
		case i%4 == 3:
			r.Destination = protocol.LinkAddress{Address: protocol.NetAddress{Address: fmt.Sprintf("2001:db8:%x::", i), Family: 2}, PrefixLength: 48}
		default:
			r.Destination = protocol.LinkAddress{Address: protocol.NetAddress{Address: fmt.Sprintf("10.%d.%d.0", i>>8&0xff, i&0xff), Family: 1}, PrefixLength: 24}
			switch {
			case i%10 == 0:
				r.IsExcludedRoute = true
			case i%2 == 0:
				r.Gateway = &protocol.NetAddress{Address: "10.8.0.1", Family: 1}
			}
		}
		vc.Routes = append(vc.Routes, r)
	}
	b, err := json.Marshal(vc)
	if err != nil {
		panic(err)
	}
	return b
}

func benchmarkParse(b *testing.B, params []byte) {
	if _, err := Parse(params, testUsers); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(params)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(params, testUsers); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParse10kRoutes measures Parse at the route limit, in both
// forms a client may use.
func BenchmarkParse10kRoutes(b *testing.B) {
	b.Run("cidr", func(b *testing.B) { benchmarkParse(b, routesCIDR(MaxRoutes)) })
	b.Run("objects", func(b *testing.B) { benchmarkParse(b, routesObjects(MaxRoutes)) })
}
