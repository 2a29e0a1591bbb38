package manager

import (
	"fmt"
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
)

// DNS points the host's resolver at a VPN's DNS servers while the VPN is
// up, and back when it ends. internal/dns implements it with
// systemd-resolved over D-Bus, with a rewritten resolv.conf, or not at all.
//
// The manager calls Apply once the kernel holds the whole VPN, and Revert
// exactly once for every Apply that succeeded, whichever way the VPN ends,
// before it removes the link (the link may already be gone). They are
// called one at a time, outside the manager's lock (a backend that hangs
// holds up that VPN's setUp or ending, nothing else), and a backend
// bounds its own waits.
type DNS interface {
	// Name is the backend's name, as VpnInfo's dnsBackend reports it:
	// "resolved", "file" or "none".
	Name() string
	// Apply gives the resolver link's DNS settings. It is all or nothing:
	// on error it leaves the resolver as it found it, and the manager
	// rolls the VPN back.
	Apply(l DNSLink, s DNSSettings) error
	// Revert undoes the Apply for l.
	Revert(l DNSLink) error
}

// DNSLinkPreparer is a DNS backend that also configures every VPN's link
// before the link carries traffic, whoever owns the VPN and whatever its
// DNS settings: the manager calls PrepareLink right after it creates the
// link, before the link has an address or is up, and rolls the VPN back if
// it fails. Deleting the link undoes it, so it has no revert. The resolved
// backend turns multicast name resolution (LLMNR, mDNS) off there, which
// would otherwise send the host's name and every user's short-name lookups
// into the TUN.
type DNSLinkPreparer interface {
	PrepareLink(l DNSLink) error
}

// DNSLink is the VPN's interface, which per-link resolvers key on.
type DNSLink struct {
	Name  string
	Index int
}

// DNSSettings are what a VPN asks of the resolver.
type DNSSettings struct {
	// Servers are the VPN's DNS servers, in the order given (never empty).
	Servers []netip.Addr
	// Domains are its search domains, in the order given.
	Domains []string
	// DefaultRoute is set when the VPN carries all traffic of a family it
	// accepts (a full tunnel): every query should then go to Servers, so
	// that none leaks to the host's resolvers. Otherwise (a split tunnel)
	// only queries for Domains need to.
	DefaultRoute bool
}

// dnsNone is what VpnInfo's dnsBackend says when no backend applied the
// VPN's DNS settings.
const dnsNone = "none"

// prepareDNS lets the DNS backend configure the new link, if it is a
// DNSLinkPreparer.
func (m *Manager) prepareDNS(v *vpn) error {
	p, ok := m.opt.DNS.(DNSLinkPreparer)
	if !ok {
		return nil
	}
	if err := p.PrepareLink(DNSLink{Name: m.opt.IfName, Index: v.index}); err != nil {
		return fmt.Errorf("prepare the link through %s: %w", m.opt.DNS.Name(), err)
	}
	return nil
}

// applyDNS hands the VPN's DNS settings to the DNS backend, if there is
// something to apply and someone allowed to apply it:
//
//   - A VPN without DNS servers changes nothing: search domains alone
//     would send queries nowhere new, so Apply is not called and the
//     domains are only reported.
//   - Only an ADMIN's VPN changes the host's resolver. A resolver is one
//     for the whole host, while a NORMAL user's VPN carries only that
//     user's traffic: if its DNS settings were applied, every other user's
//     queries (root's included) would go to servers that user chose, and
//     with a full tunnel into the TUN that user reads. A NORMAL owner's
//     settings are reported only (dnsBackend "none"), as on a host without
//     a backend.
func (m *Manager) applyDNS(v *vpn, c Caller, cfg *config.Config) error {
	if m.opt.DNS == nil || len(cfg.DNSAddresses) == 0 {
		return nil
	}
	if c.Type != auth.Admin {
		m.log.Info("vpn dns settings not applied: only an admin's vpn may change the host's resolver",
			zap.Uint32("uid", c.UID), zap.String("backend", m.opt.DNS.Name()))
		return nil
	}
	l := DNSLink{Name: m.opt.IfName, Index: v.index}
	s := DNSSettings{Servers: cfg.DNSAddresses, Domains: cfg.SearchDomains, DefaultRoute: fullTunnel(cfg)}
	if err := m.opt.DNS.Apply(l, s); err != nil {
		return fmt.Errorf("apply DNS settings through %s: %w", m.opt.DNS.Name(), err)
	}
	v.dns = m.opt.DNS
	return nil
}

// revertDNS undoes applyDNS. A failure is logged: the VPN ends anyway.
func (m *Manager) revertDNS(v *vpn) {
	if v.dns == nil {
		return
	}
	if err := v.dns.Revert(DNSLink{Name: m.opt.IfName, Index: v.index}); err != nil {
		m.log.Error("vpn dns settings not reverted", zap.String("backend", v.dns.Name()), zap.Error(err))
	}
	v.dns = nil
}

// dnsBackend is VpnInfo's dnsBackend for v.
func dnsBackend(v *vpn) string {
	if v.dns == nil {
		return dnsNone
	}
	return v.dns.Name()
}

// fullTunnel reports whether the included routes of some family the VPN
// accepts cover that family's whole address space: a default route, or
// routes adding up to one (0.0.0.0/1 and 128.0.0.0/1, as OpenVPN's def1
// writes it). Excluded routes do not matter: a full tunnel with holes for
// the local network still sends everything else, DNS included, through
// the VPN.
func fullTunnel(cfg *config.Config) bool {
	var v4, v6 []netip.Prefix
	for _, r := range cfg.Routes {
		if r.Dst.Addr().Is4() {
			v4 = append(v4, r.Dst)
		} else {
			v6 = append(v6, r.Dst)
		}
	}
	return (cfg.IPv4 && coversAll(v4, netip.IPv4Unspecified())) || (cfg.IPv6 && coversAll(v6, netip.IPv6Unspecified()))
}

// coversAll reports whether the canonical prefixes ps, all of zero's
// family, cover every address of that family.
func coversAll(ps []netip.Prefix, zero netip.Addr) bool {
	slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	next := zero // the lowest address not yet covered
	for _, p := range ps {
		if next.Less(p.Addr()) {
			return false // a gap before p
		}
		last := lastAddr(p)
		if !last.Less(next) {
			if !last.Next().IsValid() {
				return true // p reaches the family's last address
			}
			next = last.Next()
		}
	}
	return false
}

// lastAddr is the highest address in the canonical prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
