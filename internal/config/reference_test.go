package config

// This file keeps the VpnConfig validator as it was before the single-pass
// reader (json.go) replaced it: encoding/json checks the whole document,
// and a small splitter hands each value to a reader that decodes it on its
// own. It is slow and allocates per value, but it is short and plainly
// right, so the tests and FuzzParse hold the fast parser to it: for every
// input both must accept the same Config or refuse with the same code and
// detail. Its identifiers carry the prefix "ref".

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vpnd/vpnd/internal/errs"
)

// This file reads raw JSON by hand instead of unmarshalling into a struct,
// so that every wrong type, missing member, unknown member and duplicate
// member is reported with its exact JSON path.

// invalid returns a 19900001 error whose detail is "path: what".
func refInvalid(path, format string, args ...any) *errs.Error {
	return errs.New(errs.CodeInvalidParam, "%s: %s", path, fmt.Sprintf(format, args...))
}

// kindOf names the JSON type of a raw value as details show it.
func refKindOf(raw json.RawMessage) string {
	b := bytes.TrimLeft(raw, " \t\r\n")
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// isAbsent reports whether a member is missing or null; both mean "use the
// default".
func refIsAbsent(raw json.RawMessage) bool {
	return raw == nil || refKindOf(raw) == "null"
}

// child returns the path of member key inside the object at path.
func refChild(path, key string) string {
	if !refIsPlainKey(key) {
		key = strconv.Quote(key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// index returns the path of element i of the array at path.
func refIndex(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// isPlainKey reports whether key can appear unquoted in a detail.
func refIsPlainKey(key string) bool {
	if key == "" {
		return false
	}
	for _, c := range []byte(key) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// object is a decoded JSON object that remembers its path.
type refObject struct {
	path    string // "" for params itself
	members map[string]json.RawMessage
}

// readObject decodes raw, which must be a JSON object whose members are all
// in allowed. Unknown and duplicate members are reported in document order,
// before anything else in the object is looked at, since a misspelt member
// often explains a later error. what names the expected shape in a type
// error ("LinkAddress object").
func refReadObject(raw json.RawMessage, path, what string, allowed ...string) (*refObject, error) {
	selfPath := path
	if selfPath == "" {
		selfPath = "params"
	}
	if k := refKindOf(raw); k != "object" {
		return nil, refInvalid(selfPath, "expected %s, got %s", what, k)
	}
	o := &refObject{path: path, members: make(map[string]json.RawMessage)}
	var dupErr error
	ok := refSplitContainer(raw, '{', func(key, val []byte) bool {
		name := string(key[1 : len(key)-1])
		if bytes.IndexByte(key, '\\') >= 0 && json.Unmarshal(key, &name) != nil {
			dupErr = refInvalid(selfPath, "invalid JSON")
			return false
		}
		switch _, dup := o.members[name]; {
		case !refContains(allowed, name):
			dupErr = refInvalid(refChild(path, name), "unknown member")
		case dup:
			dupErr = refInvalid(refChild(path, name), "duplicate member")
		default:
			o.members[name] = val
			return true
		}
		return false
	})
	if dupErr != nil {
		return nil, dupErr
	}
	if !ok {
		return nil, refInvalid(selfPath, "invalid JSON")
	}
	return o, nil
}

// splitContainer walks the top level of raw, a JSON object (open '{') or
// array (open '['), calling fn with each member's key (quoted, as written;
// nil for arrays) and value, until fn returns false. raw must be valid JSON
// (Parse checks the whole message once); splitContainer only guards against
// running off the end. It is a hand-written scanner because a
// json.Decoder per object made a maximal config take a second to parse.
func refSplitContainer(raw []byte, open byte, fn func(key, val []byte) bool) bool {
	b := bytes.TrimSpace(raw)
	if len(b) < 2 || b[0] != open {
		return false
	}
	i := refSkipSpace(b, 1)
	if i < len(b) && (b[i] == '}' || b[i] == ']') {
		return i == len(b)-1
	}
	for i < len(b) {
		var key []byte
		if open == '{' {
			if b[i] != '"' {
				return false
			}
			end := refSkipString(b, i)
			if end > len(b) {
				return false
			}
			key = b[i:end]
			i = refSkipSpace(b, end)
			if i >= len(b) || b[i] != ':' {
				return false
			}
			i = refSkipSpace(b, i+1)
		}
		end := refSkipValue(b, i)
		if end <= i || end > len(b) {
			return false
		}
		if !fn(key, bytes.TrimRight(b[i:end], " \t\r\n")) {
			return true
		}
		i = refSkipSpace(b, end)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = refSkipSpace(b, i+1)
		case '}', ']':
			return i == len(b)-1
		default:
			return false
		}
	}
	return false
}

func refSkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index after the string that starts at b[i].
func refSkipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b) + 1
}

// skipValue returns the index after the value that starts at b[i]: a
// string, a container, or a literal that ends at a delimiter.
func refSkipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return refSkipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = refSkipString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b) + 1
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' {
			j++
		}
		return j
	}
}

func refContains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// get returns the member key, or nil if it is absent or null.
func (o *refObject) get(key string) json.RawMessage {
	raw := o.members[key]
	if refIsAbsent(raw) {
		return nil
	}
	return raw
}

// at returns the path of member key.
func (o *refObject) at(key string) string { return refChild(o.path, key) }

// readArray decodes raw, which must be a JSON array of at most max
// elements.
func refReadArray(raw json.RawMessage, path, what string, max int) ([]json.RawMessage, error) {
	if k := refKindOf(raw); k != "array" {
		return nil, refInvalid(path, "expected array of %s, got %s", what, k)
	}
	var items []json.RawMessage
	ok := refSplitContainer(raw, '[', func(_, val []byte) bool {
		items = append(items, val)
		return true
	})
	if !ok {
		return nil, refInvalid(path, "invalid JSON")
	}
	if len(items) > max {
		return nil, refInvalid(path, "%d entries, at most %d allowed", len(items), max)
	}
	return items, nil
}

// readString decodes raw, which must be a JSON string.
func refReadString(raw json.RawMessage, path string) (string, error) {
	if k := refKindOf(raw); k != "string" {
		return "", refInvalid(path, "expected string, got %s", k)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", refInvalid(path, "invalid JSON")
	}
	return s, nil
}

// readBool decodes raw, which must be true or false.
func refReadBool(raw json.RawMessage, path string) (bool, error) {
	if k := refKindOf(raw); k != "boolean" {
		return false, refInvalid(path, "expected boolean, got %s", k)
	}
	return bytes.TrimLeft(raw, " \t\r\n")[0] == 't', nil
}

// optBool decodes an optional boolean member: def when it is absent.
func (o *refObject) optBool(key string, def bool) (v bool, present bool, err error) {
	raw := o.get(key)
	if raw == nil {
		return def, false, nil
	}
	v, err = refReadBool(raw, o.at(key))
	return v, true, err
}

// readInt decodes raw, which must be a JSON number written as an integer
// (no fraction, no exponent), within min..max. A value out of range is
// reported with its literal text, however large.
func refReadInt(raw json.RawMessage, path string, min, max int64) (int64, error) {
	lit, v, ok, err := refIntLiteral(raw, path)
	if err != nil {
		return 0, err
	}
	if !ok || v < min || v > max {
		return 0, refInvalid(path, "%s out of range %d-%d", lit, min, max)
	}
	return v, nil
}

// intLiteral checks that raw is an integer literal and returns its text and
// value; ok is false when the value does not fit in an int64.
func refIntLiteral(raw json.RawMessage, path string) (lit string, v int64, ok bool, err error) {
	if k := refKindOf(raw); k != "number" {
		return "", 0, false, refInvalid(path, "expected integer, got %s", k)
	}
	lit = string(bytes.TrimSpace(raw))
	digits := lit
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if digits == "" || !refIsDigits(digits) {
		return "", 0, false, refInvalid(path, "expected integer, got %s", lit)
	}
	v, perr := strconv.ParseInt(lit, 10, 64)
	return lit, v, perr == nil, nil
}

func refIsDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// The members of VpnConfig, in the order Parse checks them.
var refVpnConfigMembers = []string{
	"addresses", "routes", "dnsAddresses", "searchDomains", "mtu",
	"isIPv4Accepted", "isIPv6Accepted", "isBlocking", "isMetered", "isLegacy", "allowFamilyBypass",
	"offload", "trustedApplications", "blockedApplications",
}

// refParse validates params, the VpnConfig of a setUp request,
// and returns it in canonical form. Any violation is an *errs.Error with
// code 19900001 whose detail names the JSON path and the rule, e.g.
// "routes[3].destination.prefixLength: 33 out of range 0-32". users
// resolves the application lists; whether the caller may name other users
// is the manager's business, not Parse's.
func refParse(params json.RawMessage, users UserResolver) (*Config, error) {
	cfg, err := refParseConfig(params, users)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

func refParseConfig(params json.RawMessage, users UserResolver) (*Config, *errs.Error) {
	if refIsAbsent(params) {
		return nil, refInvalid("params", "expected object")
	}
	if !json.Valid(params) {
		return nil, refInvalid("params", "invalid JSON")
	}
	o, err := refReadObject(params, "", "object", refVpnConfigMembers...)
	if err != nil {
		return nil, refAsErr(err)
	}
	p := refParser{o: o, users: users, cfg: &Config{}}
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
type refParser struct {
	o     *refObject
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
func refAsErr(err error) *errs.Error {
	if err == nil {
		return nil
	}
	var e *errs.Error
	if errors.As(err, &e) {
		return e
	}
	return errs.Wrap(errs.CodeInvalidParam, err, "")
}

func (p *refParser) addresses() *errs.Error {
	raw := p.o.get("addresses")
	if raw == nil {
		return refInvalid("addresses", "required")
	}
	items, err := refReadArray(raw, "addresses", "CIDR strings or LinkAddress objects", MaxAddresses)
	if err != nil {
		return refAsErr(err)
	}
	if len(items) == 0 {
		return refInvalid("addresses", "at least 1 entry required")
	}
	p.addrIndex = make(map[netip.Addr]int, len(items))
	p.subnets = make(map[netip.Prefix]int)
	for i, item := range items {
		path := refIndex("addresses", i)
		pfx, err := refReadPrefix(item, path, 1)
		if err != nil {
			return refAsErr(err)
		}
		if why := refHostProblem(pfx.Addr(), pfx); why != "" {
			return refInvalid(path, "%s is %s", pfx, why)
		}
		if j, dup := p.addrIndex[pfx.Addr()]; dup {
			return refInvalid(path, "%s duplicates addresses[%d] (%s)", pfx, j, p.cfg.Addresses[j])
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
type refRoute struct {
	dst      netip.Prefix // canonical
	gw       netip.Addr   // zero: none
	excluded bool
}

// describe says what a route does, for conflict details.
func (r refRoute) describe() string {
	switch {
	case r.excluded:
		return "excluded"
	case r.gw.IsValid():
		return "included via " + r.gw.String()
	default:
		return "included"
	}
}

func (p *refParser) routes() *errs.Error {
	raw := p.o.get("routes")
	if raw == nil {
		return nil
	}
	items, err := refReadArray(raw, "routes", "CIDR strings or RouteInfo objects", MaxRoutes)
	if err != nil {
		return refAsErr(err)
	}
	type firstSeen struct {
		index int
		r     refRoute
	}
	seen := make(map[netip.Prefix]firstSeen, len(items))
	for i, item := range items {
		path := refIndex("routes", i)
		r, err := p.route(item, path)
		if err != nil {
			return err
		}
		if f, ok := seen[r.dst]; ok {
			if f.r == r {
				continue // duplicate: merged
			}
			return refInvalid(path, "%s %s here but %s in routes[%d]", r.dst, r.describe(), f.r.describe(), f.index)
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
func (p *refParser) route(raw json.RawMessage, path string) (refRoute, *errs.Error) {
	var r refRoute
	switch refKindOf(raw) {
	case "string":
		s, _ := refReadString(raw, path)
		dst, err := refParseCIDR(s, path, 0)
		if err != nil {
			return r, refAsErr(err)
		}
		r.dst = dst.Masked()
		return r, nil
	case "object":
	default:
		return r, refInvalid(path, "expected CIDR string or RouteInfo object, got %s", refKindOf(raw))
	}
	o, err := refReadObject(raw, path, "RouteInfo object",
		"destination", "gateway", "isExcludedRoute", "interface", "hasGateway", "isDefaultRoute")
	if err != nil {
		return r, refAsErr(err)
	}
	dstRaw := o.get("destination")
	if dstRaw == nil {
		return r, refInvalid(o.at("destination"), "required")
	}
	if refKindOf(dstRaw) != "object" {
		return r, refInvalid(o.at("destination"), "expected LinkAddress object, got %s", refKindOf(dstRaw))
	}
	dst, err := refReadLinkAddress(dstRaw, o.at("destination"), 0)
	if err != nil {
		return r, refAsErr(err)
	}
	r.dst = dst.Masked()
	if gwRaw := o.get("gateway"); gwRaw != nil {
		if r.gw, err = refReadNetAddress(gwRaw, o.at("gateway"), true); err != nil {
			return r, refAsErr(err)
		}
	}
	if r.excluded, _, err = o.optBool("isExcludedRoute", false); err != nil {
		return r, refAsErr(err)
	}
	if ifRaw := o.get("interface"); ifRaw != nil {
		if _, err := refReadString(ifRaw, o.at("interface")); err != nil {
			return r, refAsErr(err)
		}
	}
	for _, key := range []string{"hasGateway", "isDefaultRoute"} {
		if _, _, err := o.optBool(key, false); err != nil {
			return r, refAsErr(err)
		}
	}
	if !r.gw.IsValid() {
		return r, nil
	}
	gwPath := o.at("gateway")
	if r.excluded {
		return r, refInvalid(gwPath, "an excluded route cannot have a gateway (got %s)", r.gw)
	}
	if r.gw.Is4() != r.dst.Addr().Is4() {
		return r, refInvalid(gwPath, "%s is %s but the destination %s is %s",
			r.gw, refFamilyName(r.gw), r.dst, refFamilyName(r.dst.Addr()))
	}
	return r, p.checkGateway(r.gw, gwPath)
}

// checkGateway requires gw to be a usable host on one of the VPN's address
// prefixes: otherwise the kernel would refuse the route, or the route
// would lead nowhere. It looks the gateway up per prefix length rather
// than scanning the addresses, so 10000 routes over 2000 addresses stay
// cheap.
func (p *refParser) checkGateway(gw netip.Addr, path string) *errs.Error {
	if i, own := p.addrIndex[gw]; own {
		return refInvalid(path, "%s is the VPN's own address addresses[%d]", gw, i)
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
		w := refHostProblem(gw, a)
		if w == "" {
			return nil
		}
		if first < 0 || i < first {
			first, why = i, fmt.Sprintf("%s is %s of addresses[%d] (%s)", gw, w, i, a)
		}
	}
	if first >= 0 {
		return refInvalid(path, "%s", why)
	}
	return refInvalid(path, "%s is outside every address prefix", gw)
}

func (p *refParser) dnsAddresses() *errs.Error {
	raw := p.o.get("dnsAddresses")
	if raw == nil {
		return nil
	}
	items, err := refReadArray(raw, "dnsAddresses", "IP address strings", MaxDNS)
	if err != nil {
		return refAsErr(err)
	}
	seen := make(map[netip.Addr]bool, len(items))
	for i, item := range items {
		path := refIndex("dnsAddresses", i)
		s, err := refReadString(item, path)
		if err != nil {
			return refAsErr(err)
		}
		a, err := refParseIP(s, path)
		if err != nil {
			return refAsErr(err)
		}
		if a.IsUnspecified() {
			return refInvalid(path, "%s is the unspecified address", a)
		}
		if !seen[a] {
			seen[a] = true
			p.cfg.DNSAddresses = append(p.cfg.DNSAddresses, a)
		}
	}
	return nil
}

func (p *refParser) searchDomains() *errs.Error {
	raw := p.o.get("searchDomains")
	if raw == nil {
		return nil
	}
	items, err := refReadArray(raw, "searchDomains", "DNS name strings", MaxSearchDomains)
	if err != nil {
		return refAsErr(err)
	}
	seen := make(map[string]bool, len(items))
	for i, item := range items {
		path := refIndex("searchDomains", i)
		s, err := refReadString(item, path)
		if err != nil {
			return refAsErr(err)
		}
		if why := refDnsNameProblem(s); why != "" {
			return refInvalid(path, "%q %s", s, why)
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
func refDnsNameProblem(s string) string {
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

func (p *refParser) mtu() *errs.Error {
	p.cfg.MTU = DefaultMTU
	raw := p.o.get("mtu")
	if raw == nil {
		return nil
	}
	v, err := refReadInt(raw, "mtu", MinMTU, MaxMTU)
	if err != nil {
		return refAsErr(err)
	}
	if p.hasV6 && v < MinMTUIPv6 {
		return refInvalid("mtu", "%d below %d required with an IPv6 address", v, MinMTUIPv6)
	}
	p.cfg.MTU = int(v)
	return nil
}

// acceptedFamilies resolves isIPv4Accepted and isIPv6Accepted: each
// defaults to whether an address of its family is present, and true
// requires one.
func (p *refParser) acceptedFamilies() *errs.Error {
	var err error
	var set bool
	if p.cfg.IPv4, set, err = p.o.optBool("isIPv4Accepted", p.hasV4); err != nil {
		return refAsErr(err)
	}
	if set && p.cfg.IPv4 && !p.hasV4 {
		return refInvalid("isIPv4Accepted", "true requires an IPv4 address")
	}
	if p.cfg.IPv6, set, err = p.o.optBool("isIPv6Accepted", p.hasV6); err != nil {
		return refAsErr(err)
	}
	if set && p.cfg.IPv6 && !p.hasV6 {
		return refInvalid("isIPv6Accepted", "true requires an IPv6 address")
	}
	if !p.cfg.IPv4 && !p.cfg.IPv6 {
		return refInvalid("isIPv4Accepted, isIPv6Accepted", "no address family accepted")
	}
	return nil
}

// routeFamilies requires every route's family to be accepted. It runs after
// acceptedFamilies, since it depends on the flags' values.
func (p *refParser) routeFamilies() *errs.Error {
	check := func(dst netip.Prefix, i int) *errs.Error {
		if dst.Addr().Is4() && !p.cfg.IPv4 {
			return refInvalid(refIndex("routes", i), "%s is IPv4 but isIPv4Accepted is false", dst)
		}
		if dst.Addr().Is6() && !p.cfg.IPv6 {
			return refInvalid(refIndex("routes", i), "%s is IPv6 but isIPv6Accepted is false", dst)
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

func (p *refParser) flags() *errs.Error {
	var err error
	if p.cfg.Blocking, _, err = p.o.optBool("isBlocking", false); err != nil {
		return refAsErr(err)
	}
	if p.cfg.Metered, _, err = p.o.optBool("isMetered", false); err != nil {
		return refAsErr(err)
	}
	legacy, _, err := p.o.optBool("isLegacy", false)
	if err != nil {
		return refAsErr(err)
	}
	if legacy {
		return refInvalid("isLegacy", "legacy VPN types are not supported")
	}
	if p.cfg.AllowFamilyBypass, _, err = p.o.optBool("allowFamilyBypass", false); err != nil {
		return refAsErr(err)
	}
	if p.cfg.Offload, _, err = p.o.optBool("offload", false); err != nil {
		return refAsErr(err)
	}
	return nil
}

// defaultRoutes adds a default route per accepted family when no included
// route was given (OpenHarmony's fe80::/7 for IPv6 is deliberately not
// copied).
func (p *refParser) defaultRoutes() {
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

func (p *refParser) applications() *errs.Error {
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
const refMaxUID = 4294967294

// userList resolves an application list: user names or uids, given as
// JSON numbers or decimal strings.
func (p *refParser) userList(member string) ([]User, *errs.Error) {
	raw := p.o.get(member)
	if raw == nil {
		return nil, nil
	}
	items, err := refReadArray(raw, member, "user names or uids", MaxApplications)
	if err != nil {
		return nil, refAsErr(err)
	}
	var list []User
	seen := make(map[uint32]bool, len(items))
	for i, item := range items {
		path := refIndex(member, i)
		var key string
		switch refKindOf(item) {
		case "number":
			v, err := refReadInt(item, path, 0, refMaxUID)
			if err != nil {
				return nil, refAsErr(err)
			}
			key = strconv.FormatInt(v, 10)
		case "string":
			key, _ = refReadString(item, path)
			if key == "" {
				return nil, refInvalid(path, "empty user name")
			}
			if refIsDigits(key) {
				if v, err := strconv.ParseUint(key, 10, 64); err != nil || v > refMaxUID {
					return nil, refInvalid(path, "uid %s out of range 0-%d", key, refMaxUID)
				}
			}
		default:
			return nil, refInvalid(path, "expected user name or uid, got %s", refKindOf(item))
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

// OpenHarmony's NetAddress family values.
const (
	refFamilyIPv4 = 1
	refFamilyIPv6 = 2
)

// parseIP parses an IP address as vpnd accepts it anywhere: no zone, and
// IPv4 written as IPv4, not as an IPv4-mapped IPv6 address (which the
// kernel would treat as IPv6 and never match against IPv4 traffic).
func refParseIP(s, path string) (netip.Addr, error) {
	if strings.Contains(s, "%") {
		return netip.Addr{}, refInvalid(path, "%q has a zone; zones are not allowed", s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, refInvalid(path, "%q is not an IP address", s)
	}
	if a.Is4In6() {
		return netip.Addr{}, refInvalid(path, "%q is an IPv4-mapped IPv6 address; write it as %s", s, a.Unmap())
	}
	return a, nil
}

// maxBits is the longest prefix of a's family.
func refMaxBits(a netip.Addr) int {
	if a.Is4() {
		return 32
	}
	return 128
}

func refFamilyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// parseCIDR parses "address/prefixLength", keeping host bits. The prefix
// length must be minBits up to the family's maximum, written in decimal
// without leading zeros.
func refParseCIDR(s, path string, minBits int) (netip.Prefix, error) {
	addrPart, bitsPart, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, refInvalid(path, "%q is not in CIDR form address/prefixLength", s)
	}
	a, err := refParseIP(addrPart, path)
	if err != nil {
		return netip.Prefix{}, err
	}
	if bitsPart == "" || !refIsDigits(bitsPart) || (len(bitsPart) > 1 && bitsPart[0] == '0') {
		return netip.Prefix{}, refInvalid(path, "%q has an invalid prefix length %q", s, bitsPart)
	}
	bits, err := strconv.Atoi(bitsPart)
	if err != nil || bits < minBits || bits > refMaxBits(a) {
		return netip.Prefix{}, refInvalid(path, "prefix length %s out of range %d-%d", bitsPart, minBits, refMaxBits(a))
	}
	return netip.PrefixFrom(a, bits), nil
}

// readNetAddress decodes OpenHarmony's NetAddress {address, family?, port?}.
// family, if given, must be 1 or 2 and match the address. port is part of
// OpenHarmony's shape; it is type-checked and ignored. With allowNone, an
// empty or unspecified address means "no address" and returns the zero
// Addr: OpenHarmony apps send {"address":""} or "0.0.0.0" for a route
// without a gateway.
func refReadNetAddress(raw json.RawMessage, path string, allowNone bool) (netip.Addr, error) {
	o, err := refReadObject(raw, path, "NetAddress object", "address", "family", "port")
	if err != nil {
		return netip.Addr{}, err
	}
	addrRaw := o.get("address")
	if addrRaw == nil {
		return netip.Addr{}, refInvalid(o.at("address"), "required")
	}
	s, err := refReadString(addrRaw, o.at("address"))
	if err != nil {
		return netip.Addr{}, err
	}
	var a netip.Addr
	if !(allowNone && s == "") {
		if a, err = refParseIP(s, o.at("address")); err != nil {
			return netip.Addr{}, err
		}
	}
	if famRaw := o.get("family"); famRaw != nil {
		lit, fam, _, err := refIntLiteral(famRaw, o.at("family"))
		if err != nil {
			return netip.Addr{}, err
		}
		if fam != refFamilyIPv4 && fam != refFamilyIPv6 {
			return netip.Addr{}, refInvalid(o.at("family"), "%s is not 1 (IPv4) or 2 (IPv6)", lit)
		}
		if a.IsValid() && (fam == refFamilyIPv4) != a.Is4() {
			return netip.Addr{}, refInvalid(o.at("family"), "%d does not match %s address %s", fam, refFamilyName(a), a)
		}
	}
	if portRaw := o.get("port"); portRaw != nil {
		if _, err := refReadInt(portRaw, o.at("port"), 0, 65535); err != nil {
			return netip.Addr{}, err
		}
	}
	if allowNone && a.IsUnspecified() {
		return netip.Addr{}, nil
	}
	return a, nil
}

// readLinkAddress decodes OpenHarmony's LinkAddress {address: NetAddress,
// prefixLength}, keeping host bits. prefixLength must be minBits up to the
// family's maximum.
func refReadLinkAddress(raw json.RawMessage, path string, minBits int) (netip.Prefix, error) {
	o, err := refReadObject(raw, path, "LinkAddress object", "address", "prefixLength")
	if err != nil {
		return netip.Prefix{}, err
	}
	addrRaw := o.get("address")
	if addrRaw == nil {
		return netip.Prefix{}, refInvalid(o.at("address"), "required")
	}
	a, err := refReadNetAddress(addrRaw, o.at("address"), false)
	if err != nil {
		return netip.Prefix{}, err
	}
	bitsRaw := o.get("prefixLength")
	if bitsRaw == nil {
		return netip.Prefix{}, refInvalid(o.at("prefixLength"), "required")
	}
	bits, err := refReadInt(bitsRaw, o.at("prefixLength"), int64(minBits), int64(refMaxBits(a)))
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, int(bits)), nil
}

// readPrefix decodes a CIDR string or a LinkAddress object, keeping host
// bits; the prefix length must be at least minBits.
func refReadPrefix(raw json.RawMessage, path string, minBits int) (netip.Prefix, error) {
	switch refKindOf(raw) {
	case "string":
		s, err := refReadString(raw, path)
		if err != nil {
			return netip.Prefix{}, err
		}
		return refParseCIDR(s, path, minBits)
	case "object":
		return refReadLinkAddress(raw, path, minBits)
	default:
		return netip.Prefix{}, refInvalid(path, "expected CIDR string or LinkAddress object, got %s", refKindOf(raw))
	}
}

// v4Broadcast returns the broadcast address of an IPv4 prefix.
func refV4Broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	u := binary.BigEndian.Uint32(b[:]) | (^uint32(0) >> p.Bits())
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// hostProblem says why a, on the subnet p, cannot be a host address there
// (an interface address or a gateway), or "" if it can.
func refHostProblem(a netip.Addr, p netip.Prefix) string {
	switch {
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsMulticast():
		return "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the limited broadcast address"
	}
	// A /31 (RFC 3021) or /32 has no network or broadcast address.
	if a.Is4() && p.Bits() <= 30 {
		if a == p.Masked().Addr() {
			return "the network address"
		}
		if a == refV4Broadcast(p) {
			return "the broadcast address"
		}
	}
	return ""
}
