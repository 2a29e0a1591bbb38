// The rules Parse enforces, the choices made where OpenHarmony's VpnConfig
// is silent, and the order of the checks (the first violation is reported)
// are documented in docs/protocol.md, VpnConfig: keep the two in step.

package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/vpnd/vpnd/internal/errs"
)

// The members of VpnConfig, in the order Parse checks them.
var vpnConfigMembers = []string{
	"addresses", "routes", "dnsAddresses", "searchDomains", "mtu",
	"isIPv4Accepted", "isIPv6Accepted", "isBlocking", "isMetered", "isLegacy", "allowFamilyBypass",
	"offload", "trustedApplications", "blockedApplications",
}

// Parse validates params, the VpnConfig of a setUp request, and returns it
// in canonical form. Any violation is an *errs.Error with code 19900001
// whose detail names the JSON path and the rule, e.g.
// "routes[3].destination.prefixLength: 33 out of range 0-32". users
// resolves the application lists; whether the caller may name other users
// is the manager's business, not Parse's.
func Parse(params []byte, users UserResolver) (*Config, error) {
	root := memberPath("")
	if params == nil || bytes.HasPrefix(bytes.TrimLeft(params, " \t\r\n"), []byte("n")) {
		return nil, invalid(root, "expected object")
	}
	p := &parser{users: users, cfg: &Config{}, members: make(map[string]jsontext.Value)}
	d := newDecoder(params)
	k, err := d.PeekKind(), error(nil)
	if k == '{' {
		err = d.object(root, vpnConfigMembers, func(i int) { p.members[vpnConfigMembers[i]] = d.next() })
	} else {
		d.broken = d.SkipValue() != nil
	}
	// All of params is read before anything is reported: invalid JSON
	// anywhere comes first.
	switch {
	case !d.end():
		return nil, invalid(root, "invalid JSON")
	case k != '{':
		return nil, invalid(root, "expected object, got %s", kind(params))
	case err != nil:
		return nil, err
	}
	for _, step := range [...]func(*parser) error{
		(*parser).addresses, (*parser).routes, (*parser).dnsAddresses, (*parser).searchDomains,
		(*parser).mtu, (*parser).families, (*parser).flags, (*parser).applications,
	} {
		if err := step(p); err != nil {
			return nil, err
		}
	}
	// With no included route, one default route per accepted family.
	// OpenHarmony installs fe80::/7 for IPv6 here; vpnd deliberately
	// installs ::/0, so that IPv6 traffic really enters the VPN.
	if len(p.cfg.Routes) == 0 {
		if p.cfg.IPv4 {
			p.cfg.Routes = append(p.cfg.Routes, Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0)})
		}
		if p.cfg.IPv6 {
			p.cfg.Routes = append(p.cfg.Routes, Route{Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0)})
		}
	}
	return p.cfg, nil
}

// parser carries the state of one Parse call.
type parser struct {
	users   UserResolver
	cfg     *Config
	members map[string]jsontext.Value // the members of params as written, by name

	hasV4, hasV6 bool                        // an address of the family is present
	addrIndex    map[netip.Addr]int          // address → its index in addresses
	subnets      map[netip.Prefix]int        // masked address prefix → its first index
	bits         []int                       // the prefix lengths in subnets
	seen         map[netip.Prefix]firstRoute // route destination → where it was first given
}

// array returns member name, nil if it is absent, if it is an array of at
// most limit entries, with its number of entries.
func (p *parser) array(name, what string, limit int) (v jsontext.Value, n int, err error) {
	v, at := p.members[name], memberPath(name)
	switch {
	case absent(v):
		return nil, 0, nil
	case v.Kind() != '[':
		return nil, 0, invalid(at, "expected array of %s, got %s", what, kind(v))
	}
	if n = count(v); n > limit {
		return nil, 0, invalid(at, "%d entries, at most %d allowed", n, limit)
	}
	return v, n, nil
}

func (p *parser) addresses() error {
	at := memberPath("addresses")
	v, n, err := p.array("addresses", "CIDR strings or LinkAddress objects", MaxAddresses)
	switch {
	case err != nil:
		return err
	case v == nil:
		return invalid(at, "required")
	case n == 0:
		return invalid(at, "at least 1 entry required")
	}
	p.cfg.Addresses = make([]netip.Prefix, 0, n)
	p.addrIndex = make(map[netip.Addr]int, n)
	p.subnets = make(map[netip.Prefix]int)
	return elements(v, func(i int, d *decoder) error {
		at := at.elem(i)
		var pfx netip.Prefix
		var err error
		switch d.PeekKind() {
		case '"':
			pfx, err = parseCIDR(text(d.next()), at, 1)
		case '{':
			pfx, err = linkAddress(d, at, 1)
		default:
			err = invalid(at, "expected CIDR string or LinkAddress object, got %s", kind(d.next()))
		}
		if err != nil {
			return err
		}
		if why := hostProblem(pfx.Addr(), pfx); why != "" {
			return invalid(at, "%s is %s", pfx, why)
		}
		if j, dup := p.addrIndex[pfx.Addr()]; dup {
			return invalid(at, "%s duplicates addresses[%d] (%s)", pfx, j, p.cfg.Addresses[j])
		}
		p.addrIndex[pfx.Addr()] = i
		if _, ok := p.subnets[pfx.Masked()]; !ok {
			p.subnets[pfx.Masked()] = i
			if !slices.Contains(p.bits, pfx.Bits()) {
				p.bits = append(p.bits, pfx.Bits())
			}
		}
		p.cfg.Addresses = append(p.cfg.Addresses, pfx)
		p.hasV4 = p.hasV4 || pfx.Addr().Is4()
		p.hasV6 = p.hasV6 || pfx.Addr().Is6()
		return nil
	})
}

// route is an entry of routes.
type route struct {
	dst      netip.Prefix // canonical
	gw       netip.Addr   // zero: none
	excluded bool
}

// describe says what a route does, for conflict details.
func (r route) describe() string {
	switch {
	case r.excluded:
		return "excluded"
	case r.gw.IsValid():
		return "included via " + r.gw.String()
	}
	return "included"
}

// firstRoute is where a route destination was first given: its index in
// routes, and Config.Routes[at] or, if at < 0, ExcludedRoutes[^at].
type firstRoute struct{ index, at int32 }

func (p *parser) routes() error {
	v, n, err := p.array("routes", "CIDR strings or RouteInfo objects", MaxRoutes)
	if v == nil {
		return err
	}
	p.cfg.Routes = make([]Route, 0, n)
	p.seen = make(map[netip.Prefix]firstRoute, n)
	return elements(v, func(i int, d *decoder) error {
		at := memberPath("routes").elem(i)
		var r route
		var err error
		switch d.PeekKind() {
		case '"':
			r.dst, err = parseCIDR(text(d.next()), at, 0)
			r.dst = r.dst.Masked()
		case '{':
			r, err = p.routeInfo(d, at)
		default:
			err = invalid(at, "expected CIDR string or RouteInfo object, got %s", kind(d.next()))
		}
		if err != nil {
			return err
		}
		if f, ok := p.seen[r.dst]; ok { // merged if it is the same route
			first := route{dst: r.dst, excluded: f.at < 0}
			if f.at >= 0 {
				first.gw = p.cfg.Routes[f.at].Gateway
			}
			if first != r {
				return invalid(at, "%s %s here but %s in routes[%d]", r.dst, r.describe(), first.describe(), f.index)
			}
			return nil
		}
		if r.excluded {
			p.seen[r.dst] = firstRoute{int32(i), ^int32(len(p.cfg.ExcludedRoutes))}
			p.cfg.ExcludedRoutes = append(p.cfg.ExcludedRoutes, r.dst)
		} else {
			p.seen[r.dst] = firstRoute{int32(i), int32(len(p.cfg.Routes))}
			p.cfg.Routes = append(p.cfg.Routes, Route{Dst: r.dst, Gateway: r.gw})
		}
		return nil
	})
}

// The members of OpenHarmony's RouteInfo. interface, hasGateway and
// isDefaultRoute are type-checked and ignored.
var routeInfoMembers = []string{"destination", "gateway", "isExcludedRoute", "interface", "hasGateway", "isDefaultRoute"}

// routeInfo reads the RouteInfo object at d, then runs its checks in
// order; destination and gateway are read in place, their errors kept.
func (p *parser) routeInfo(d *decoder, at path) (route, error) {
	var f [6]jsontext.Value
	var dst nested[netip.Prefix]
	var gw nested[netip.Addr]
	if err := d.object(at, routeInfoMembers, func(i int) {
		switch {
		case i == 0 && d.PeekKind() == '{':
			dst.set(linkAddress(d, at.key("destination"), 0))
		case i == 1 && d.PeekKind() == '{':
			gw.set(netAddress(d, at.key("gateway"), true))
		default:
			f[i] = d.next()
		}
	}); err != nil {
		return route{}, err
	}
	var r route
	pfx, err := dst.check(f[0], at.key("destination"), "LinkAddress", true)
	if err != nil {
		return r, err
	}
	r.dst = pfx.Masked()
	if r.gw, err = gw.check(f[1], at.key("gateway"), "NetAddress", false); err != nil {
		return r, err
	}
	if r.excluded, _, err = flag(f[2], at.key("isExcludedRoute"), false); err != nil {
		return r, err
	}
	if !absent(f[3]) && f[3].Kind() != '"' {
		return r, invalid(at.key("interface"), "expected string, got %s", kind(f[3]))
	}
	for _, i := range []int{4, 5} {
		if _, _, err := flag(f[i], at.key(routeInfoMembers[i]), false); err != nil {
			return r, err
		}
	}
	switch {
	case !r.gw.IsValid():
		return r, nil
	case r.excluded:
		return r, invalid(at.key("gateway"), "an excluded route cannot have a gateway (got %s)", r.gw)
	case r.gw.Is4() != r.dst.Addr().Is4():
		return r, invalid(at.key("gateway"), "%s is %s but the destination %s is %s",
			r.gw, familyName(r.gw), r.dst, familyName(r.dst.Addr()))
	}
	return r, p.checkGateway(r.gw, at.key("gateway"))
}

// checkGateway requires gw to be a usable host on one of the VPN's address
// prefixes, or the kernel would refuse the route or it would lead nowhere.
// It looks gw up per prefix length: scanning 2,000 addresses for each of
// 10,000 routes through distinct gateways took half a second.
func (p *parser) checkGateway(gw netip.Addr, at path) error {
	if i, own := p.addrIndex[gw]; own {
		return invalid(at, "%s is the VPN's own address addresses[%d]", gw, i)
	}
	first, why := -1, "" // the first address whose subnet holds gw, but not as a host
	for _, bits := range p.bits {
		subnet, err := gw.Prefix(bits)
		i, ok := p.subnets[subnet]
		if err != nil || !ok {
			continue
		}
		w := hostProblem(gw, p.cfg.Addresses[i])
		if w == "" {
			return nil
		}
		if first < 0 || i < first {
			first, why = i, w
		}
	}
	if first >= 0 {
		return invalid(at, "%s is %s of addresses[%d] (%s)", gw, why, first, p.cfg.Addresses[first])
	}
	return invalid(at, "%s is outside every address prefix", gw)
}

// stringList reads member name, an array of strings, with each of them.
func (p *parser) stringList(name, what string, limit int, each func(s string, at path) error) error {
	v, _, err := p.array(name, what, limit)
	if v == nil {
		return err
	}
	return elements(v, func(i int, d *decoder) error {
		at, e := memberPath(name).elem(i), d.next()
		if e.Kind() != '"' {
			return invalid(at, "expected string, got %s", kind(e))
		}
		return each(text(e), at)
	})
}

func (p *parser) dnsAddresses() error {
	return p.stringList("dnsAddresses", "IP address strings", MaxDNS, func(s string, at path) error {
		a, err := parseIP(s, at)
		if err != nil {
			return err
		}
		// A server on the host's loopback (resolved's stub listeners among
		// them, which resolved refuses) is never reached through the VPN.
		switch why := hostProblem(a, netip.PrefixFrom(a, a.BitLen())); {
		case a.IsUnspecified():
			return invalid(at, "%s is the unspecified address", a)
		case a.IsLoopback():
			return invalid(at, "%s is a loopback address; a VPN's DNS server must be reachable through the VPN", a)
		case why != "":
			return invalid(at, "%s is %s; a DNS server has a unicast address", a, why)
		}
		if !slices.Contains(p.cfg.DNSAddresses, a) {
			p.cfg.DNSAddresses = append(p.cfg.DNSAddresses, a)
		}
		return nil
	})
}

func (p *parser) searchDomains() error {
	return p.stringList("searchDomains", "DNS name strings", MaxSearchDomains, func(s string, at path) error {
		if why := dnsNameProblem(s); why != "" {
			return invalid(at, "%q %s", s, why)
		}
		// Names are ASCII now, so EqualFold is plain ASCII case folding.
		if !slices.ContainsFunc(p.cfg.SearchDomains, func(had string) bool {
			return strings.EqualFold(strings.TrimSuffix(had, "."), strings.TrimSuffix(s, "."))
		}) {
			p.cfg.SearchDomains = append(p.cfg.SearchDomains, s)
		}
		return nil
	})
}

var notLDH = regexp.MustCompile(`[^A-Za-z0-9-]`) // letters, digits, hyphen

// dnsNameProblem says why s is not an RFC 1123 host name, or "" if it is.
// One trailing dot (a fully qualified name) is allowed.
func dnsNameProblem(s string) string {
	name := strings.TrimSuffix(s, ".")
	if name == "" {
		return "is not a DNS name"
	}
	if len(name) > 253 {
		return fmt.Sprintf("is %d characters long, at most 253 allowed", len(name))
	}
	for label := range strings.SplitSeq(name, ".") {
		switch {
		case label == "":
			return "has an empty label"
		case len(label) > 63:
			return fmt.Sprintf("has a label of %d characters, at most 63 allowed", len(label))
		case label[0] == '-':
			return fmt.Sprintf("has label %q starting with a hyphen", label)
		case label[len(label)-1] == '-':
			return fmt.Sprintf("has label %q ending with a hyphen", label)
		case notLDH.MatchString(label):
			return fmt.Sprintf("has label %q with a character other than a letter, digit or hyphen", label)
		}
	}
	return ""
}

func (p *parser) mtu() error {
	p.cfg.MTU = DefaultMTU
	m, at := p.members["mtu"], memberPath("mtu")
	if absent(m) {
		return nil
	}
	v, err := bounded(m, at, MinMTU, MaxMTU)
	if err == nil && p.hasV6 && v < MinMTUIPv6 {
		err = invalid(at, "%d below %d required with an IPv6 address", v, MinMTUIPv6)
	}
	p.cfg.MTU = int(v)
	return err
}

// families resolves isIPv4Accepted and isIPv6Accepted (true by default if
// an address of the family is present), then requires every route's family
// to be accepted, reporting the first route of a family that is not, and
// refuses an excluded default route that no included route justifies.
func (p *parser) families() error {
	var err error
	var set bool
	if p.cfg.IPv4, set, err = flag(p.members["isIPv4Accepted"], memberPath("isIPv4Accepted"), p.hasV4); err != nil {
		return err
	}
	if set && p.cfg.IPv4 && !p.hasV4 {
		return invalid(memberPath("isIPv4Accepted"), "true requires an IPv4 address")
	}
	if p.cfg.IPv6, set, err = flag(p.members["isIPv6Accepted"], memberPath("isIPv6Accepted"), p.hasV6); err != nil {
		return err
	}
	if set && p.cfg.IPv6 && !p.hasV6 {
		return invalid(memberPath("isIPv6Accepted"), "true requires an IPv6 address")
	}
	if !p.cfg.IPv4 && !p.cfg.IPv6 {
		return invalid(memberPath("isIPv4Accepted, isIPv6Accepted"), "no address family accepted")
	}
	first, dst := int32(-1), netip.Prefix{}
	for d, f := range p.seen {
		if (d.Addr().Is4() && !p.cfg.IPv4 || d.Addr().Is6() && !p.cfg.IPv6) && (first < 0 || f.index < first) {
			first, dst = f.index, d
		}
	}
	switch {
	case first >= 0 && dst.Addr().Is4():
		return invalid(memberPath("routes").elem(int(first)), "%s is IPv4 but isIPv4Accepted is false", dst)
	case first >= 0:
		return invalid(memberPath("routes").elem(int(first)), "%s is IPv6 but isIPv6Accepted is false", dst)
	}
	// With no included route, Parse adds a default route per family,
	// which an excluded default route contradicts (the kernel refuses it).
	for _, d := range p.cfg.ExcludedRoutes {
		if len(p.cfg.Routes) == 0 && d.Bits() == 0 {
			return invalid(memberPath("routes").elem(int(p.seen[d].index)),
				"%s excluded here but included as the default route, since no route is included", d)
		}
	}
	return nil
}

func (p *parser) flags() error {
	var legacy bool
	for _, f := range []struct {
		name string
		v    *bool
	}{
		{"isBlocking", &p.cfg.Blocking}, {"isMetered", &p.cfg.Metered}, {"isLegacy", &legacy},
		{"allowFamilyBypass", &p.cfg.AllowFamilyBypass}, {"offload", &p.cfg.Offload},
	} {
		var err error
		if *f.v, _, err = flag(p.members[f.name], memberPath(f.name), false); err != nil {
			return err
		}
		if legacy {
			return invalid(memberPath("isLegacy"), "legacy VPN types are not supported")
		}
	}
	return nil
}

func (p *parser) applications() error {
	var err error
	if p.cfg.Trusted, err = p.userList("trustedApplications"); err != nil {
		return err
	}
	if p.cfg.Blocked, err = p.userList("blockedApplications"); err != nil {
		return err
	}
	if len(p.cfg.Trusted) > 0 && len(p.cfg.Blocked) > 0 {
		return errs.New(errs.CodeInvalidParam, "trustedApplications and blockedApplications are mutually exclusive")
	}
	return nil
}

// maxUID is the largest uid: (uid_t)-1 means "no uid" to the kernel.
const maxUID = 4294967294

// userList resolves an application list, member name: user names or
// uids, given as JSON numbers or decimal strings. A resolver error that
// is an *errs.Error keeps its code: a broken user database is not the
// caller's fault.
func (p *parser) userList(name string) (list []User, err error) {
	v, _, err := p.array(name, "user names or uids", MaxApplications)
	if v == nil {
		return nil, err
	}
	err = elements(v, func(i int, d *decoder) error {
		at, e := memberPath(name).elem(i), d.next()
		var key string
		switch e.Kind() {
		case '"':
			key = text(e)
			if key == "" {
				return invalid(at, "empty user name")
			}
			if v, err := strconv.ParseUint(key, 10, 64); isDigits(key) && (err != nil || v > maxUID) {
				return invalid(at, "uid %s out of range 0-%d", key, maxUID)
			}
		case '0':
			uid, err := bounded(e, at, 0, maxUID)
			if err != nil {
				return err
			}
			key = strconv.FormatInt(uid, 10)
		default:
			return invalid(at, "expected user name or uid, got %s", kind(e))
		}
		if p.users == nil {
			return errs.New(errs.CodeInternal, "%s: no user database", at)
		}
		u, rerr := p.users.ResolveUser(key)
		var coded *errs.Error
		switch {
		case errors.As(rerr, &coded):
			return &errs.Error{Code: coded.Code, Detail: at.String() + ": " + coded.Detail, Err: coded.Err}
		case rerr != nil:
			return &errs.Error{Code: errs.CodeInvalidParam, Detail: at.String() + ": " + rerr.Error(), Err: rerr}
		case !slices.ContainsFunc(list, func(had User) bool { return had.UID == u.UID }):
			list = append(list, u)
		}
		return nil
	})
	return list, err
}

func isDigits(s string) bool {
	return strings.IndexFunc(s, func(c rune) bool { return c < '0' || c > '9' }) < 0
}
