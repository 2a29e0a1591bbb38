// Choices made where contract §5 is silent (keep docs/ in step with this):
//
//   - params must be a JSON object ("params: expected object" for null or
//     nothing). Members may appear in any order; a member that is null
//     counts as absent (Go clients marshal nil slices as null). An unknown
//     or repeated member is an error, at every level (params, LinkAddress,
//     NetAddress, RouteInfo), reported before any other member of that
//     object is checked.
//   - Checks run in a fixed order and the first violation is reported:
//     unknown members, then addresses, routes, dnsAddresses, searchDomains,
//     mtu, isIPv4Accepted, isIPv6Accepted, isBlocking, isMetered, isLegacy,
//     trustedApplications, blockedApplications. A rule relating two members
//     is checked with the later one: "route family accepted" right after the
//     isIPv*Accepted flags, "lists are mutually exclusive" after
//     blockedApplications.
//   - Integers are JSON numbers written as integers: 1500.0, 1.5e3 and
//     "1500" are rejected.
//   - IP addresses never carry a zone, and IPv4-mapped IPv6 addresses
//     (::ffff:10.8.0.2) are rejected everywhere, with a hint to write IPv4.
//     A CIDR string needs an explicit prefix length in plain decimal.
//   - NetAddress accepts OpenHarmony's optional "port" (0-65535) and ignores
//     it. A missing family means "from the address".
//   - addresses: the same IP twice is a duplicate even with different
//     prefix lengths (an interface cannot hold it twice). Link-local is fine.
//   - routes: a gateway of "" or the unspecified address (0.0.0.0, ::), or
//     an absent/null gateway, means none. A real gateway must be of the
//     destination's family, a usable host inside one of the VPN's address
//     prefixes (not its network or broadcast address, not a VPN address
//     itself, which the kernel refuses as a gateway), and is refused on an
//     excluded route. Route destinations may be any prefix, multicast
//     included. Duplicates (same canonical prefix, kind and gateway) are
//     merged, keeping the first; the same prefix included and excluded, or
//     included with two gateways, is rejected naming both indexes. Default
//     routes are added only when no included route remains at all.
//   - dnsAddresses: any IP but the unspecified address; duplicates merged.
//   - searchDomains: kept as given (case and one trailing dot preserved);
//     letters, digits and hyphens only (no underscore); duplicates merged
//     ignoring case and the trailing dot.
//   - trusted/blockedApplications: a JSON number or a string. A string of
//     decimal digits is a uid, never a name. uids are 0-4294967294
//     ((uid_t)-1 is not a uid). Duplicate uids are merged, keeping the
//     first. A resolver error that is an *errs.Error keeps its code (a
//     broken user database is 19900002, not the caller's fault).

package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vpnd/vpnd/internal/errs"
)

// The members of VpnConfig, in the order Parse checks them.
var vpnConfigMembers = []string{
	"addresses", "routes", "dnsAddresses", "searchDomains", "mtu",
	"isIPv4Accepted", "isIPv6Accepted", "isBlocking", "isMetered", "isLegacy",
	"trustedApplications", "blockedApplications",
}

// Parse validates params, the VpnConfig of a setUp request (contract §5),
// and returns it in canonical form. Any violation is an *errs.Error with
// code 19900001 whose detail names the JSON path and the rule, e.g.
// "routes[3].destination.prefixLength: 33 out of range 0-32". users
// resolves the application lists; whether the caller may name other users
// is the manager's business, not Parse's.
func Parse(params json.RawMessage, users UserResolver) (*Config, error) {
	cfg, err := parse(params, users)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

func parse(params json.RawMessage, users UserResolver) (*Config, *errs.Error) {
	if isAbsent(params) {
		return nil, invalid("params", "expected object")
	}
	if !json.Valid(params) {
		return nil, invalid("params", "invalid JSON")
	}
	o, err := readObject(params, "", "object", vpnConfigMembers...)
	if err != nil {
		return nil, asErr(err)
	}
	p := parser{o: o, users: users, cfg: &Config{}}
	for _, step := range []func() *errs.Error{
		p.addresses, p.routes, p.dnsAddresses, p.searchDomains, p.mtu,
		p.acceptedFamilies, p.routeFamilies, p.flags,
		p.applications,
	} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	p.defaultRoutes()
	return p.cfg, nil
}

// parser carries the state of one Parse call between its steps.
type parser struct {
	o     *object
	users UserResolver
	cfg   *Config

	hasV4, hasV6 bool
	addrIndex    map[netip.Addr]int   // address → its index in addresses
	subnets      map[netip.Prefix]int // masked address prefix → first index
	subnetBits   []int                // the prefix lengths in subnets
	routeIndex   []int                // routeIndex[i]: the index in routes of cfg.Routes[i]
	exclIndex    []int                // the same for cfg.ExcludedRoutes
}

// asErr converts the error helpers' result, always an *errs.Error or nil.
func asErr(err error) *errs.Error {
	if err == nil {
		return nil
	}
	var e *errs.Error
	if errors.As(err, &e) {
		return e
	}
	return errs.Wrap(errs.CodeInvalidParam, err, "")
}

func (p *parser) addresses() *errs.Error {
	raw := p.o.get("addresses")
	if raw == nil {
		return invalid("addresses", "required")
	}
	items, err := readArray(raw, "addresses", "CIDR strings or LinkAddress objects", MaxAddresses)
	if err != nil {
		return asErr(err)
	}
	if len(items) == 0 {
		return invalid("addresses", "at least 1 entry required")
	}
	p.addrIndex = make(map[netip.Addr]int, len(items))
	p.subnets = make(map[netip.Prefix]int)
	for i, item := range items {
		path := index("addresses", i)
		pfx, err := readPrefix(item, path, 1)
		if err != nil {
			return asErr(err)
		}
		if why := hostProblem(pfx.Addr(), pfx); why != "" {
			return invalid(path, "%s is %s", pfx, why)
		}
		if j, dup := p.addrIndex[pfx.Addr()]; dup {
			return invalid(path, "%s duplicates addresses[%d] (%s)", pfx, j, p.cfg.Addresses[j])
		}
		p.addrIndex[pfx.Addr()] = i
		if _, ok := p.subnets[pfx.Masked()]; !ok {
			p.subnets[pfx.Masked()] = i
			if !slices.Contains(p.subnetBits, pfx.Bits()) {
				p.subnetBits = append(p.subnetBits, pfx.Bits())
			}
		}
		p.cfg.Addresses = append(p.cfg.Addresses, pfx)
		if pfx.Addr().Is4() {
			p.hasV4 = true
		} else {
			p.hasV6 = true
		}
	}
	return nil
}

// route is one entry of routes after its own checks.
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
	default:
		return "included"
	}
}

func (p *parser) routes() *errs.Error {
	raw := p.o.get("routes")
	if raw == nil {
		return nil
	}
	items, err := readArray(raw, "routes", "CIDR strings or RouteInfo objects", MaxRoutes)
	if err != nil {
		return asErr(err)
	}
	type firstSeen struct {
		index int
		r     route
	}
	seen := make(map[netip.Prefix]firstSeen, len(items))
	for i, item := range items {
		path := index("routes", i)
		r, err := p.route(item, path)
		if err != nil {
			return err
		}
		if f, ok := seen[r.dst]; ok {
			if f.r == r {
				continue // duplicate: merged
			}
			return invalid(path, "%s %s here but %s in routes[%d]", r.dst, r.describe(), f.r.describe(), f.index)
		}
		seen[r.dst] = firstSeen{i, r}
		if r.excluded {
			p.cfg.ExcludedRoutes = append(p.cfg.ExcludedRoutes, r.dst)
			p.exclIndex = append(p.exclIndex, i)
		} else {
			p.cfg.Routes = append(p.cfg.Routes, Route{Dst: r.dst, Gateway: r.gw})
			p.routeIndex = append(p.routeIndex, i)
		}
	}
	return nil
}

// route decodes and checks one entry of routes: a CIDR string or a
// RouteInfo object.
func (p *parser) route(raw json.RawMessage, path string) (route, *errs.Error) {
	var r route
	switch kindOf(raw) {
	case "string":
		s, _ := readString(raw, path)
		dst, err := parseCIDR(s, path, 0)
		if err != nil {
			return r, asErr(err)
		}
		r.dst = dst.Masked()
		return r, nil
	case "object":
	default:
		return r, invalid(path, "expected CIDR string or RouteInfo object, got %s", kindOf(raw))
	}
	o, err := readObject(raw, path, "RouteInfo object",
		"destination", "gateway", "isExcludedRoute", "interface", "hasGateway", "isDefaultRoute")
	if err != nil {
		return r, asErr(err)
	}
	dstRaw := o.get("destination")
	if dstRaw == nil {
		return r, invalid(o.at("destination"), "required")
	}
	if kindOf(dstRaw) != "object" {
		return r, invalid(o.at("destination"), "expected LinkAddress object, got %s", kindOf(dstRaw))
	}
	dst, err := readLinkAddress(dstRaw, o.at("destination"), 0)
	if err != nil {
		return r, asErr(err)
	}
	r.dst = dst.Masked()
	if gwRaw := o.get("gateway"); gwRaw != nil {
		if r.gw, err = readNetAddress(gwRaw, o.at("gateway"), true); err != nil {
			return r, asErr(err)
		}
	}
	if r.excluded, _, err = o.optBool("isExcludedRoute", false); err != nil {
		return r, asErr(err)
	}
	if ifRaw := o.get("interface"); ifRaw != nil {
		if _, err := readString(ifRaw, o.at("interface")); err != nil {
			return r, asErr(err)
		}
	}
	for _, key := range []string{"hasGateway", "isDefaultRoute"} {
		if _, _, err := o.optBool(key, false); err != nil {
			return r, asErr(err)
		}
	}
	if !r.gw.IsValid() {
		return r, nil
	}
	gwPath := o.at("gateway")
	if r.excluded {
		return r, invalid(gwPath, "an excluded route cannot have a gateway (got %s)", r.gw)
	}
	if r.gw.Is4() != r.dst.Addr().Is4() {
		return r, invalid(gwPath, "%s is %s but the destination %s is %s",
			r.gw, familyName(r.gw), r.dst, familyName(r.dst.Addr()))
	}
	return r, p.checkGateway(r.gw, gwPath)
}

// checkGateway requires gw to be a usable host on one of the VPN's address
// prefixes: otherwise the kernel would refuse the route, or the route
// would lead nowhere. It looks the gateway up per prefix length rather
// than scanning the addresses, so 10000 routes over 2000 addresses stay
// cheap.
func (p *parser) checkGateway(gw netip.Addr, path string) *errs.Error {
	if i, own := p.addrIndex[gw]; own {
		return invalid(path, "%s is the VPN's own address addresses[%d]", gw, i)
	}
	first := -1 // the first address whose subnet holds gw, but not as a host
	var why string
	for _, bits := range p.subnetBits {
		subnet, err := gw.Prefix(bits)
		if err != nil {
			continue // the other family
		}
		i, ok := p.subnets[subnet]
		if !ok {
			continue
		}
		a := p.cfg.Addresses[i]
		w := hostProblem(gw, a)
		if w == "" {
			return nil
		}
		if first < 0 || i < first {
			first, why = i, fmt.Sprintf("%s is %s of addresses[%d] (%s)", gw, w, i, a)
		}
	}
	if first >= 0 {
		return invalid(path, "%s", why)
	}
	return invalid(path, "%s is outside every address prefix", gw)
}

func (p *parser) dnsAddresses() *errs.Error {
	raw := p.o.get("dnsAddresses")
	if raw == nil {
		return nil
	}
	items, err := readArray(raw, "dnsAddresses", "IP address strings", MaxDNS)
	if err != nil {
		return asErr(err)
	}
	seen := make(map[netip.Addr]bool, len(items))
	for i, item := range items {
		path := index("dnsAddresses", i)
		s, err := readString(item, path)
		if err != nil {
			return asErr(err)
		}
		a, err := parseIP(s, path)
		if err != nil {
			return asErr(err)
		}
		if a.IsUnspecified() {
			return invalid(path, "%s is the unspecified address", a)
		}
		if !seen[a] {
			seen[a] = true
			p.cfg.DNSAddresses = append(p.cfg.DNSAddresses, a)
		}
	}
	return nil
}

func (p *parser) searchDomains() *errs.Error {
	raw := p.o.get("searchDomains")
	if raw == nil {
		return nil
	}
	items, err := readArray(raw, "searchDomains", "DNS name strings", MaxSearchDomains)
	if err != nil {
		return asErr(err)
	}
	seen := make(map[string]bool, len(items))
	for i, item := range items {
		path := index("searchDomains", i)
		s, err := readString(item, path)
		if err != nil {
			return asErr(err)
		}
		if why := dnsNameProblem(s); why != "" {
			return invalid(path, "%q %s", s, why)
		}
		key := strings.ToLower(strings.TrimSuffix(s, "."))
		if !seen[key] {
			seen[key] = true
			p.cfg.SearchDomains = append(p.cfg.SearchDomains, s)
		}
	}
	return nil
}

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
	for _, label := range strings.Split(name, ".") {
		switch {
		case label == "":
			return "has an empty label"
		case len(label) > 63:
			return fmt.Sprintf("has a label of %d characters, at most 63 allowed", len(label))
		case label[0] == '-':
			return fmt.Sprintf("has label %q starting with a hyphen", label)
		case label[len(label)-1] == '-':
			return fmt.Sprintf("has label %q ending with a hyphen", label)
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Sprintf("has label %q with a character other than a letter, digit or hyphen", label)
			}
		}
	}
	return ""
}

func (p *parser) mtu() *errs.Error {
	p.cfg.MTU = DefaultMTU
	raw := p.o.get("mtu")
	if raw == nil {
		return nil
	}
	v, err := readInt(raw, "mtu", MinMTU, MaxMTU)
	if err != nil {
		return asErr(err)
	}
	if p.hasV6 && v < MinMTUIPv6 {
		return invalid("mtu", "%d below %d required with an IPv6 address", v, MinMTUIPv6)
	}
	p.cfg.MTU = int(v)
	return nil
}

// acceptedFamilies resolves isIPv4Accepted and isIPv6Accepted: each
// defaults to whether an address of its family is present, and true
// requires one.
func (p *parser) acceptedFamilies() *errs.Error {
	var err error
	var set bool
	if p.cfg.IPv4, set, err = p.o.optBool("isIPv4Accepted", p.hasV4); err != nil {
		return asErr(err)
	}
	if set && p.cfg.IPv4 && !p.hasV4 {
		return invalid("isIPv4Accepted", "true requires an IPv4 address")
	}
	if p.cfg.IPv6, set, err = p.o.optBool("isIPv6Accepted", p.hasV6); err != nil {
		return asErr(err)
	}
	if set && p.cfg.IPv6 && !p.hasV6 {
		return invalid("isIPv6Accepted", "true requires an IPv6 address")
	}
	if !p.cfg.IPv4 && !p.cfg.IPv6 {
		return invalid("isIPv4Accepted, isIPv6Accepted", "no address family accepted")
	}
	return nil
}

// routeFamilies requires every route's family to be accepted. It runs after
// acceptedFamilies, since it depends on the flags' values.
func (p *parser) routeFamilies() *errs.Error {
	check := func(dst netip.Prefix, i int) *errs.Error {
		if dst.Addr().Is4() && !p.cfg.IPv4 {
			return invalid(index("routes", i), "%s is IPv4 but isIPv4Accepted is false", dst)
		}
		if dst.Addr().Is6() && !p.cfg.IPv6 {
			return invalid(index("routes", i), "%s is IPv6 but isIPv6Accepted is false", dst)
		}
		return nil
	}
	// Report the lowest index among included and excluded routes.
	ri, ei := 0, 0
	for ri < len(p.cfg.Routes) || ei < len(p.cfg.ExcludedRoutes) {
		if ei >= len(p.cfg.ExcludedRoutes) || ri < len(p.cfg.Routes) && p.routeIndex[ri] < p.exclIndex[ei] {
			if err := check(p.cfg.Routes[ri].Dst, p.routeIndex[ri]); err != nil {
				return err
			}
			ri++
		} else {
			if err := check(p.cfg.ExcludedRoutes[ei], p.exclIndex[ei]); err != nil {
				return err
			}
			ei++
		}
	}
	return nil
}

func (p *parser) flags() *errs.Error {
	var err error
	if p.cfg.Blocking, _, err = p.o.optBool("isBlocking", false); err != nil {
		return asErr(err)
	}
	if p.cfg.Metered, _, err = p.o.optBool("isMetered", false); err != nil {
		return asErr(err)
	}
	legacy, _, err := p.o.optBool("isLegacy", false)
	if err != nil {
		return asErr(err)
	}
	if legacy {
		return invalid("isLegacy", "legacy VPN types are not supported")
	}
	return nil
}

// defaultRoutes adds a default route per accepted family when no included
// route was given (§5; OpenHarmony's fe80::/7 for IPv6 is deliberately not
// copied).
func (p *parser) defaultRoutes() {
	if len(p.cfg.Routes) > 0 {
		return
	}
	if p.cfg.IPv4 {
		p.cfg.Routes = append(p.cfg.Routes, Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0)})
	}
	if p.cfg.IPv6 {
		p.cfg.Routes = append(p.cfg.Routes, Route{Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0)})
	}
}

func (p *parser) applications() *errs.Error {
	var err *errs.Error
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

// userList resolves an application list: user names or uids, given as
// JSON numbers or decimal strings.
func (p *parser) userList(member string) ([]User, *errs.Error) {
	raw := p.o.get(member)
	if raw == nil {
		return nil, nil
	}
	items, err := readArray(raw, member, "user names or uids", MaxApplications)
	if err != nil {
		return nil, asErr(err)
	}
	var list []User
	seen := make(map[uint32]bool, len(items))
	for i, item := range items {
		path := index(member, i)
		var key string
		switch kindOf(item) {
		case "number":
			v, err := readInt(item, path, 0, maxUID)
			if err != nil {
				return nil, asErr(err)
			}
			key = strconv.FormatInt(v, 10)
		case "string":
			key, _ = readString(item, path)
			if key == "" {
				return nil, invalid(path, "empty user name")
			}
			if isDigits(key) {
				if v, err := strconv.ParseUint(key, 10, 64); err != nil || v > maxUID {
					return nil, invalid(path, "uid %s out of range 0-%d", key, maxUID)
				}
			}
		default:
			return nil, invalid(path, "expected user name or uid, got %s", kindOf(item))
		}
		if p.users == nil {
			return nil, errs.New(errs.CodeInternal, "%s: no user database", path)
		}
		u, rerr := p.users.ResolveUser(key)
		if rerr != nil {
			var e *errs.Error
			if errors.As(rerr, &e) {
				return nil, &errs.Error{Code: e.Code, Detail: path + ": " + e.Detail, Err: e.Err}
			}
			return nil, &errs.Error{Code: errs.CodeInvalidParam, Detail: path + ": " + rerr.Error(), Err: rerr}
		}
		if !seen[u.UID] {
			seen[u.UID] = true
			list = append(list, u)
		}
	}
	return list, nil
}
