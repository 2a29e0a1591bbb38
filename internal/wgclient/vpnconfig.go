package wgclient

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vpnd/vpnd/protocol"
)

// DefaultMTU is wg-quick's MTU for a 1500-byte path: 80 bytes of
// WireGuard, UDP and IPv6 headers less.
const DefaultMTU = 1420

// VpnConfig is what vpnd is asked for: the interface's addresses, the
// union of the peers' AllowedIPs as routes, DNS, search domains and the
// MTU. notes says what was left out and why.
//
// A route of an address family that has no address is left out: vpnd
// accepts only routes of the families it carries, and it already makes
// the other family's traffic fail closed (unreachable), which is what a
// route into a tunnel without an address of that family amounts to. The
// common "AllowedIPs = 0.0.0.0/0, ::/0" with only an IPv4 address thus
// works, and IPv6 is blocked rather than leaked.
func (cfg *Config) VpnConfig() (vc protocol.VpnConfig, notes []string, err error) {
	has := map[bool]bool{} // is6 → an address of that family
	for _, a := range cfg.Interface.Addresses {
		la, err := protocol.ParseLinkAddress(a.String())
		if err != nil {
			return vc, nil, fmt.Errorf("address %s: %w", a, err)
		}
		vc.Addresses = append(vc.Addresses, la)
		has[a.Addr().Is6()] = true
	}
	seen := map[netip.Prefix]bool{}
	for _, p := range cfg.Peers {
		for _, r := range p.AllowedIPs {
			if seen[r] {
				continue
			}
			seen[r] = true
			if !has[r.Addr().Is6()] {
				notes = append(notes, fmt.Sprintf("AllowedIPs %s not routed: no %s address in Address= (vpnd blocks that family instead)", r, family(r.Addr())))
				continue
			}
			la, err := protocol.ParseLinkAddress(r.String())
			if err != nil {
				return vc, nil, fmt.Errorf("route %s: %w", r, err)
			}
			vc.Routes = append(vc.Routes, protocol.RouteInfo{Destination: la})
		}
	}
	if len(vc.Routes) == 0 {
		// vpnd reads "no routes" as "route everything": never send that.
		return vc, notes, fmt.Errorf("no AllowedIPs of the families of Address= (%s): nothing to route", joinPrefixes(cfg.Interface.Addresses))
	}
	for _, a := range cfg.Interface.DNS {
		vc.DNSAddresses = append(vc.DNSAddresses, a.String())
	}
	vc.SearchDomains = append(vc.SearchDomains, cfg.Interface.SearchDomains...)
	vc.MTU = cfg.Interface.MTU
	if vc.MTU == 0 {
		vc.MTU = DefaultMTU
	}
	return vc, notes, nil
}

func family(a netip.Addr) string {
	if a.Is6() {
		return "IPv6"
	}
	return "IPv4"
}

// Resolver turns an Endpoint's host into addresses.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// ResolveEndpoints resolves each peer's Endpoint to an address and port.
// It must run before the VPN is up: once the routes are in place, a DNS
// query could itself be routed into the tunnel that is not yet there.
// Like wg(8), it takes the first address the resolver gives.
func (cfg *Config) ResolveEndpoints(ctx context.Context, r Resolver) ([]netip.AddrPort, error) {
	if r == nil {
		r = net.DefaultResolver
	}
	out := make([]netip.AddrPort, len(cfg.Peers))
	for i, p := range cfg.Peers {
		if p.Endpoint == "" {
			continue
		}
		host, port, err := net.SplitHostPort(p.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", p.Endpoint, err)
		}
		var portNum uint16
		if _, err := fmt.Sscan(port, &portNum); err != nil {
			return nil, fmt.Errorf("endpoint %s: port: %w", p.Endpoint, err)
		}
		addr, err := netip.ParseAddr(host)
		if err != nil {
			addrs, lerr := r.LookupNetIP(ctx, "ip", host)
			if lerr != nil {
				return nil, fmt.Errorf("resolve endpoint %s: %w", p.Endpoint, lerr)
			}
			if len(addrs) == 0 {
				return nil, fmt.Errorf("resolve endpoint %s: no address", p.Endpoint)
			}
			addr = addrs[0]
		}
		out[i] = netip.AddrPortFrom(addr.Unmap(), portNum)
	}
	return out, nil
}

// UAPI returns the configuration in wireguard-go's configuration protocol
// ("set" operation), with the endpoints already resolved.
func (cfg *Config) UAPI(endpoints []netip.AddrPort) string {
	var b strings.Builder
	ifc := cfg.Interface
	fmt.Fprintf(&b, "private_key=%s\n", ifc.PrivateKey.hex())
	fmt.Fprintf(&b, "listen_port=%d\n", ifc.ListenPort)
	b.WriteString("replace_peers=true\n")
	for i, p := range cfg.Peers {
		fmt.Fprintf(&b, "public_key=%s\n", p.PublicKey.hex())
		if !p.PresharedKey.IsZero() {
			fmt.Fprintf(&b, "preshared_key=%s\n", p.PresharedKey.hex())
		}
		if i < len(endpoints) && endpoints[i].IsValid() {
			fmt.Fprintf(&b, "endpoint=%s\n", endpoints[i])
		}
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", p.PersistentKeepalive)
		b.WriteString("replace_allowed_ips=true\n")
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	return b.String()
}
