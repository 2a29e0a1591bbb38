// Choices made where the VpnConfig schema is silent (keep docs/ in step
// with this):
//
//   - params must be a JSON object ("params: expected object" for null or
//     nothing). Members may appear in any order; a member that is null
//     counts as absent (Go clients marshal nil slices as null). An unknown
//     or repeated member is an error, at every level (params, LinkAddress,
//     NetAddress, RouteInfo), reported before any other member of that
//     object is checked. Invalid JSON anywhere is reported before anything
//     else, as "params: invalid JSON".
//   - Checks run in a fixed order and the first violation is reported:
//     unknown members, then addresses, routes, dnsAddresses, searchDomains,
//     mtu, isIPv4Accepted, isIPv6Accepted, isBlocking, isMetered, isLegacy,
//     allowFamilyBypass, offload, trustedApplications, blockedApplications. A rule relating two members
//     is checked with the later one: "route family accepted" right after the
//     isIPv*Accepted flags, "lists are mutually exclusive" after
//     blockedApplications. An array's length is checked before its entries,
//     and no entry past an array's limit is built.
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
//   - allowFamilyBypass (vpnd's own member, like Android's allowFamily): a
//     boolean, false by default, checked after the other flags.
//   - offload (vpnd's own member): a boolean, false by default, checked
//     right after allowFamilyBypass.
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
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vpnd/vpnd/internal/errs"
)

// The members of VpnConfig, in the order Parse checks them.
const (
	mAddresses = iota
	mRoutes
	mDNSAddresses
	mSearchDomains
	mMTU
	mIPv4Accepted
	mIPv6Accepted
	mBlocking
	mMetered
	mLegacy
	mAllowFamilyBypass
	mOffload
	mTrusted
	mBlocked
	numMembers

	// mBothFamilies is not a member: it names the two isIPv*Accepted
	// flags together in a detail.
	mBothFamilies = numMembers
)

var vpnConfigMembers = [numMembers]string{
	"addresses", "routes", "dnsAddresses", "searchDomains", "mtu",
	"isIPv4Accepted", "isIPv6Accepted", "isBlocking", "isMetered", "isLegacy", "allowFamilyBypass",
	"offload", "trustedApplications", "blockedApplications",
}

// memberName returns the name of member i, as details show it.
func memberName(i int) string {
	if i == mBothFamilies {
		return "isIPv4Accepted, isIPv6Accepted"
	}
	return vpnConfigMembers[i]
}

// memberIndex returns the index of a VpnConfig member, or -1.
func memberIndex(name string) int {
	for i, m := range vpnConfigMembers {
		if m == name {
			return i
		}
	}
	return -1
}

// Parse validates params, the VpnConfig of a setUp request, and returns it
// in canonical form. Any violation is an *errs.Error with code 19900001
// whose detail names the JSON path and the rule, e.g.
// "routes[3].destination.prefixLength: 33 out of range 0-32". users
// resolves the application lists; whether the caller may name other users
// is the manager's business, not Parse's.
//
// Parse reads params once and allocates no memory per route or address
// beyond the Config's own slices, so that a 4 MiB request costs about
// what its valid result needs, whatever it holds.
func Parse(params json.RawMessage, users UserResolver) (*Config, error) {
	cfg, err := parse(params, users)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

func parse(params json.RawMessage, users UserResolver) (*Config, *errs.Error) {
	p := &parser{users: users, cfg: &Config{}, firstV4: -1, firstV6: -1}
	d := &p.d
	d.b = params
	d.ws()
	if params == nil || d.peek() == 'n' {
		return nil, invalid(memberPath(-1), "expected object")
	}
	kind := kindOf(params[d.i:])
	if kind == "object" {
		p.scan()
	} else {
		d.skip()
	}
	d.ws()
	if d.bad || d.i != len(params) {
		return nil, invalid(memberPath(-1), "invalid JSON")
	}
	if kind != "object" {
		return nil, invalid(memberPath(-1), "expected object, got %s", kind)
	}
	if p.members.err != nil {
		return nil, p.members.err
	}
	for _, step := range [...]func(*parser) *errs.Error{
		(*parser).addresses, (*parser).routes, (*parser).dnsAddresses, (*parser).searchDomains,
		(*parser).mtu, (*parser).acceptedFamilies, (*parser).routeFamilies, (*parser).flags,
		(*parser).applications,
	} {
		if err := step(p); err != nil {
			return nil, err
		}
	}
	p.defaultRoutes()
	return p.cfg, nil
}

// parser carries the state of one Parse call.
type parser struct {
	d     dec // reads params
	sub   dec // reads a member's value again, after scan noted it
	users UserResolver
	cfg   *Config

	// The members of params, found by scan.
	members members
	vals    [numMembers][]byte      // each member's value as written; nil if absent
	counts  [numMembers]int         // the number of elements of an array value
	done    [numMembers]bool        // read in place by scan, with this result:
	result  [numMembers]*errs.Error //
	hasV4   bool                    // an IPv4 address is present
	hasV6   bool                    // an IPv6 address is present
	addrIdx map[netip.Addr]int      // address → its index in addresses
	subnets map[netip.Prefix]int    // masked address prefix → first index
	bits    []int                   // the prefix lengths in subnets
	seen    routeSet                // route destination → where it was first given
	okGW    netip.Addr              // the last gateway that passed checkGateway

	// The first route of each family, for routeFamilies: its index in
	// routes and its destination.
	firstV4, firstV6       int
	firstV4Dst, firstV6Dst netip.Prefix
}

// scan reads params, which is an object, once from start to end: it notes
// every member and its value, and counts the entries of arrays. It reads
// routes in place as it passes them, since they make up nearly all of a
// large config; for that it reads addresses first, from the value it
// noted, since a gateway must lie inside an address prefix. When routes
// comes before addresses, or addresses is wrong, routes is read after
// scan, with the other members, in check order.
func (p *parser) scan() {
	d := &p.d
	root := memberPath(-1)
	if !d.openObject() {
		return
	}
	for {
		name := d.key()
		if d.bad {
			return
		}
		i := memberIndex(name)
		start := d.i
		if !p.members.note(root, name, i) {
			d.skip()
		} else {
			if i == mRoutes && d.peek() == '[' && p.vals[mAddresses] != nil && p.addresses() == nil {
				p.result[i], p.done[i] = p.readRoutes(d, -1), true
			} else {
				_, p.counts[i] = d.skip()
			}
			p.vals[i] = d.b[start:d.i]
		}
		if !d.next('}') {
			return
		}
	}
}

// value points the second reader at member i's value, and reports whether
// it is present and not null.
func (p *parser) value(i int) (*dec, bool) {
	val := p.vals[i]
	if isAbsent(val) {
		return nil, false
	}
	p.sub.b, p.sub.i, p.sub.depth, p.sub.bad = val, 0, 1, false
	return &p.sub, true
}

// elements reads the array at d with read, one element at a time, until
// read fails or limit elements were read; the rest of the array is only
// checked and counted. It returns the number of elements and read's
// error. read must consume its element whatever it finds.
func (d *dec) elements(limit int, read func(i int) *errs.Error) (n int, err *errs.Error) {
	if !d.openArray() {
		return 0, nil
	}
	for {
		if err == nil && n < limit {
			err = read(n)
		} else {
			d.skip()
		}
		n++
		if d.bad || !d.next(']') {
			return n, err
		}
	}
}

// capHint is how many entries to make room for in the result before
// reading an array at d of at most limit entries, each taking at least
// minBytes bytes with its separator: count when scan has counted the
// array, else as many as the bytes left could hold. Either way the room
// is never more than the array's bytes allow, so that a short request
// never makes vpnd reserve room for the limit, and never too little, so
// that the slice never grows.
func capHint(d *dec, count, limit, minBytes int) int {
	if count >= 0 {
		return min(count, limit)
	}
	return min(limit, (len(d.b)-d.i)/minBytes+1)
}

// tooMany is the error for an array longer than its limit.
func tooMany(p path, n, limit int) *errs.Error {
	return invalid(p, "%d entries, at most %d allowed", n, limit)
}

// addresses reads addresses once, from the value scan noted, and
// returns the result again if asked again.
func (p *parser) addresses() *errs.Error {
	if !p.done[mAddresses] {
		p.done[mAddresses] = true
		if d, ok := p.value(mAddresses); ok {
			p.result[mAddresses] = p.readAddresses(d, p.counts[mAddresses])
		} else {
			p.result[mAddresses] = invalid(memberPath(mAddresses), "required")
		}
	}
	return p.result[mAddresses]
}

// readAddresses reads the addresses array at d; count is its length if
// scan counted it, else -1.
func (p *parser) readAddresses(d *dec, count int) *errs.Error {
	at := memberPath(mAddresses)
	if d.peek() != '[' {
		val, _ := d.skip()
		return invalid(at, "expected array of CIDR strings or LinkAddress objects, got %s", kindOf(val))
	}
	if count > MaxAddresses {
		return tooMany(at, count, MaxAddresses)
	}
	// The shortest address is "1::/1", 7 bytes and a comma.
	hint := capHint(d, count, MaxAddresses, 8)
	n, err := d.elements(MaxAddresses, func(i int) *errs.Error { return p.address(d, at.elem(i), hint) })
	switch {
	case d.bad:
		return nil
	case n > MaxAddresses:
		return tooMany(at, n, MaxAddresses)
	case n == 0:
		return invalid(at, "at least 1 entry required")
	}
	return err
}

func (p *parser) address(d *dec, at path, hint int) *errs.Error {
	pfx, err := prefixEntry(d, at, 1)
	if err != nil || d.bad {
		return err
	}
	if why := hostProblem(pfx.Addr(), pfx); why != "" {
		return invalid(at, "%s is %s", pfx, why)
	}
	if p.addrIdx == nil {
		p.addrIdx = make(map[netip.Addr]int, hint)
		p.subnets = make(map[netip.Prefix]int)
		p.cfg.Addresses = make([]netip.Prefix, 0, hint)
	}
	if j, dup := p.addrIdx[pfx.Addr()]; dup {
		return invalid(at, "%s duplicates addresses[%d] (%s)", pfx, j, p.cfg.Addresses[j])
	}
	p.addrIdx[pfx.Addr()] = int(at.index)
	if _, ok := p.subnets[pfx.Masked()]; !ok {
		p.subnets[pfx.Masked()] = int(at.index)
		if !slices.Contains(p.bits, pfx.Bits()) {
			p.bits = append(p.bits, pfx.Bits())
		}
	}
	p.cfg.Addresses = append(p.cfg.Addresses, pfx)
	if pfx.Addr().Is4() {
		p.hasV4 = true
	} else {
		p.hasV6 = true
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
	if p.done[mRoutes] {
		return p.result[mRoutes]
	}
	d, ok := p.value(mRoutes)
	if !ok {
		return nil
	}
	return p.readRoutes(d, p.counts[mRoutes])
}

// readRoutes reads the routes array at d; count is its length if scan
// counted it, else -1. addresses must have been read.
func (p *parser) readRoutes(d *dec, count int) *errs.Error {
	at := memberPath(mRoutes)
	if d.peek() != '[' {
		val, _ := d.skip()
		return invalid(at, "expected array of CIDR strings or RouteInfo objects, got %s", kindOf(val))
	}
	if count > MaxRoutes {
		return tooMany(at, count, MaxRoutes)
	}
	// The shortest route is "::/0", 6 bytes and a comma.
	hint := capHint(d, count, MaxRoutes, 7)
	n, err := d.elements(MaxRoutes, func(i int) *errs.Error { return p.route(d, at.elem(i), hint) })
	switch {
	case d.bad:
		return nil
	case n > MaxRoutes:
		return tooMany(at, n, MaxRoutes)
	}
	return err
}

// route reads one entry of routes, a CIDR string or a RouteInfo object,
// checks it and adds it to the Config unless it repeats an earlier one.
func (p *parser) route(d *dec, at path, hint int) *errs.Error {
	var r route
	switch d.peek() {
	case '"':
		s := d.text()
		if d.bad {
			return nil
		}
		dst, err := parseCIDR(s, at, 0)
		if err != nil {
			return err
		}
		r.dst = dst.Masked()
	case '{':
		var err *errs.Error
		if r, err = p.routeInfo(d, at); err != nil || d.bad {
			return err
		}
	default:
		val, _ := d.skip()
		return invalid(at, "expected CIDR string or RouteInfo object, got %s", kindOf(val))
	}
	if p.seen.slots == nil {
		p.seen.init(hint)
		p.cfg.Routes = make([]Route, 0, hint)
	}
	slot, found := p.findRoute(r.dst)
	if found {
		first := p.storedRoute(slot.ref)
		if first == r {
			return nil // a duplicate: merged
		}
		return invalid(at, "%s %s here but %s in routes[%d]", r.dst, r.describe(), first.describe(), slot.index)
	}
	if r.excluded {
		p.cfg.ExcludedRoutes = append(p.cfg.ExcludedRoutes, r.dst)
		slot.ref = -int32(len(p.cfg.ExcludedRoutes))
	} else {
		p.cfg.Routes = append(p.cfg.Routes, Route{Dst: r.dst, Gateway: r.gw})
		slot.ref = int32(len(p.cfg.Routes))
	}
	slot.index = at.index
	p.seen.added()
	if r.dst.Addr().Is4() && p.firstV4 < 0 {
		p.firstV4, p.firstV4Dst = int(at.index), r.dst
	}
	if r.dst.Addr().Is6() && p.firstV6 < 0 {
		p.firstV6, p.firstV6Dst = int(at.index), r.dst
	}
	return nil
}

// storedRoute returns the route that a routeSlot's ref points to.
func (p *parser) storedRoute(ref int32) route {
	if ref < 0 {
		return route{dst: p.cfg.ExcludedRoutes[-ref-1], excluded: true}
	}
	r := p.cfg.Routes[ref-1]
	return route{dst: r.Dst, gw: r.Gateway}
}

// routeSet remembers where each route destination was first given. It is
// an open-addressing hash table sized once for the routes to come: a Go
// map cost more than half of a 10,000-route parse, in hashing, growth and
// memory. Hashes are seeded per process, so that no request can be made
// of colliding destinations.
type routeSet struct {
	slots []routeSlot // a power of two of them
	n     int         // slots in use
}

type routeSlot struct {
	hash  uint32 // of the destination, to pass most other slots without looking at their route
	ref   int32  // 0: empty; k > 0: Config.Routes[k-1]; k < 0: Config.ExcludedRoutes[-k-1]
	index int32  // the route's index in routes
}

// routeKey seeds hashRoute, differently in each process.
var routeKey = [2]uint64{rand.Uint64(), rand.Uint64()}

// hashRoute hashes a route destination: one 64x64→128-bit multiplication
// of the address halves mixed with the seed, as wyhash does. It is several
// times cheaper than hash/maphash, and as unpredictable without the seed.
func hashRoute(dst netip.Prefix) uint32 {
	a := dst.Addr().As16()
	x := binary.LittleEndian.Uint64(a[:8]) ^ routeKey[0]
	y := binary.LittleEndian.Uint64(a[8:]) ^ routeKey[1] ^ uint64(dst.Bits())<<1
	hi, lo := bits.Mul64(x, y)
	h := hi ^ lo
	return uint32(h ^ h>>32)
}

// init makes room for hint routes at a load of at most 2/3.
func (s *routeSet) init(hint int) {
	size := 8
	for size < hint+hint/2 {
		size *= 2
	}
	s.slots = make([]routeSlot, size)
}

// added notes that the slot findRoute returned is now in use, and grows
// the table when it is more than 3/4 full (which the hint's bound should
// rule out).
func (s *routeSet) added() {
	s.n++
	if s.n*4 <= len(s.slots)*3 {
		return
	}
	old := s.slots
	s.slots = make([]routeSlot, 2*len(old))
	mask := uint32(len(s.slots) - 1)
	for _, o := range old {
		if o.ref == 0 {
			continue
		}
		i := o.hash & mask
		for s.slots[i].ref != 0 {
			i = (i + 1) & mask
		}
		s.slots[i] = o
	}
}

// findRoute returns the slot of destination dst and true, or the empty
// slot where it belongs and false. The slot's hash is set either way.
func (p *parser) findRoute(dst netip.Prefix) (*routeSlot, bool) {
	h := hashRoute(dst)
	slots := p.seen.slots
	mask := uint32(len(slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := &slots[i]
		if s.ref == 0 {
			s.hash = h
			return s, false
		}
		if s.hash == h && p.storedRoute(s.ref).dst == dst {
			return s, true
		}
	}
}

// The members of OpenHarmony's RouteInfo. interface, hasGateway and
// isDefaultRoute are type-checked and ignored.
const (
	riDestination = iota
	riGateway
	riExcluded
	riInterface
	riHasGateway
	riIsDefault
	numRouteInfo
)

var routeInfoMembers = []string{
	"destination", "gateway", "isExcludedRoute", "interface", "hasGateway", "isDefaultRoute",
}

// routeInfo reads the RouteInfo object at d. destination and gateway are
// read in place; everything is checked, in the order of the ri
// constants, once the object is read.
func (p *parser) routeInfo(d *dec, at path) (route, *errs.Error) {
	if r, ok := p.compactRouteInfo(d, at); ok {
		return r, nil
	}
	var f routeInfoRead
	if d.openObject() {
		for i := -1; ; {
			var name string
			name, i = d.member(routeInfoMembers, i+1)
			start := d.i
			if !f.m.note(at, name, i) {
				d.skip()
			} else {
				switch {
				case i == riDestination && d.peek() == '{':
					f.dst, f.dstErr = linkAddress(d, at.at(kDestination), 0)
					f.dstRead = true
				case i == riGateway && d.peek() == '{':
					f.gw, f.gwErr = netAddress(d, at.at(kGateway), true)
					f.gwRead = true
				default:
					d.skip()
				}
				f.vals[i] = d.b[start:d.i]
			}
			if !d.next('}') {
				break
			}
		}
	}
	if d.bad {
		return route{}, nil
	}
	return p.checkRouteInfo(&f, at)
}

// routeInfoRead is a RouteInfo object as read, before its checks.
type routeInfoRead struct {
	m       members
	vals    [numRouteInfo][]byte // each member's value as written; nil if absent
	dstRead bool                 // destination was an object, read into dst or dstErr
	dst     netip.Prefix
	dstErr  *errs.Error
	gwRead  bool // gateway was an object, read into gw or gwErr
	gw      netip.Addr
	gwErr   *errs.Error
}

// checkRouteInfo runs a RouteInfo's checks in their order.
func (p *parser) checkRouteInfo(f *routeInfoRead, at path) (route, *errs.Error) {
	r := route{gw: f.gw}
	switch {
	case f.m.err != nil:
		return r, f.m.err
	case isAbsent(f.vals[riDestination]):
		return r, invalid(at.at(kDestination), "required")
	case !f.dstRead:
		return r, invalid(at.at(kDestination), "expected LinkAddress object, got %s", kindOf(f.vals[riDestination]))
	case f.dstErr != nil:
		return r, f.dstErr
	}
	r.dst = f.dst.Masked()
	if !isAbsent(f.vals[riGateway]) {
		if !f.gwRead {
			return r, invalid(at.at(kGateway), "expected NetAddress object, got %s", kindOf(f.vals[riGateway]))
		}
		if f.gwErr != nil {
			return r, f.gwErr
		}
	}
	var err *errs.Error
	if r.excluded, _, err = optBool(f.vals[riExcluded], at.at(kIsExcludedRoute), false); err != nil {
		return r, err
	}
	if v := f.vals[riInterface]; !isAbsent(v) && kindOf(v) != "string" {
		return r, invalid(at.at(kInterface), "expected string, got %s", kindOf(v))
	}
	if _, _, err := optBool(f.vals[riHasGateway], at.at(kHasGateway), false); err != nil {
		return r, err
	}
	if _, _, err := optBool(f.vals[riIsDefault], at.at(kIsDefaultRoute), false); err != nil {
		return r, err
	}
	if !r.gw.IsValid() {
		return r, nil
	}
	if r.excluded {
		return r, invalid(at.at(kGateway), "an excluded route cannot have a gateway (got %s)", r.gw)
	}
	if r.gw.Is4() != r.dst.Addr().Is4() {
		return r, invalid(at.at(kGateway), "%s is %s but the destination %s is %s",
			r.gw, familyName(r.gw), r.dst, familyName(r.dst.Addr()))
	}
	if r.gw == p.okGW {
		return r, nil // most routes share a gateway: it passed once
	}
	if err := p.checkGateway(r.gw, at.at(kGateway)); err != nil {
		return r, err
	}
	p.okGW = r.gw
	return r, nil
}

// compactRouteInfo reads the RouteInfo object at d if it is written
// exactly as encoding/json writes a protocol.RouteInfo, without space:
//
//	{"destination":{"address":{"address":"10.0.0.0","family":1},"prefixLength":8},
//	 "gateway":{"address":"10.8.0.1","family":1},"isExcludedRoute":true}
//
// with family, gateway and isExcludedRoute optional, and IP addresses
// made of hex digits, dots and colons. It is how vpnd's own client and
// vpnctl send routes, and comparing whole runs of bytes instead of reading
// token by token takes a fifth off a 10,000-route parse. It runs the same
// checks, in the same order, on what it read.
// For anything else, and for a route that fails a check, it returns false
// having read nothing, and the general reader reads the object again
// (and reports the error).
func (p *parser) compactRouteInfo(d *dec, at path) (route, bool) {
	var f routeInfoRead
	b, j := d.b, d.i
	const open, dstOpen = `{"destination":`, `{"address":`
	if !hasAt(b, j, open+dstOpen) {
		return route{}, false
	}
	j += len(open)
	var dst linkAddressRead
	var ok bool
	dstStart := j
	j += len(dstOpen)
	addrStart := j
	var na netAddressRead
	if j, ok = compactNetAddress(b, j, &na); !ok {
		return route{}, false
	}
	dst.addrRead, dst.addr = true, b[addrStart:j]
	dst.a, dst.addrErr = na.check(at.at(kDestination).at(kAddress), false)
	const bitsKey = `,"prefixLength":`
	if !hasAt(b, j, bitsKey) {
		return route{}, false
	}
	j += len(bitsKey)
	end, ok := intAt(b, j)
	if !ok || end >= len(b) || b[end] != '}' {
		return route{}, false
	}
	dst.bits, j = b[j:end], end+1
	f.dst, f.dstErr = dst.check(at.at(kDestination), 0)
	f.dstRead, f.vals[riDestination] = true, b[dstStart:j]
	const gwKey = `,"gateway":`
	if hasAt(b, j, gwKey) {
		j += len(gwKey)
		gwStart := j
		var gw netAddressRead
		if j, ok = compactNetAddress(b, j, &gw); !ok {
			return route{}, false
		}
		f.gw, f.gwErr = gw.check(at.at(kGateway), true)
		f.gwRead, f.vals[riGateway] = true, b[gwStart:j]
	}
	const exclKey = `,"isExcludedRoute":`
	switch {
	case hasAt(b, j, exclKey+"true"):
		f.vals[riExcluded] = b[j+len(exclKey) : j+len(exclKey)+4]
		j += len(exclKey) + 4
	case hasAt(b, j, exclKey+"false"):
		f.vals[riExcluded] = b[j+len(exclKey) : j+len(exclKey)+5]
		j += len(exclKey) + 5
	}
	if j >= len(b) || b[j] != '}' {
		return route{}, false
	}
	r, err := p.checkRouteInfo(&f, at)
	if err != nil {
		return route{}, false
	}
	d.i = j + 1
	return r, true
}

// compactNetAddress reads {"address":"A"} or {"address":"A","family":N}
// at b[j], A made of hex digits, dots and colons, into f, and returns the
// index after it.
func compactNetAddress(b []byte, j int, f *netAddressRead) (int, bool) {
	const open = `{"address":"`
	if !hasAt(b, j, open) {
		return 0, false
	}
	j += len(open)
	start := j
	for j < len(b) && isIPByte(b[j]) {
		j++
	}
	if j >= len(b) || b[j] != '"' {
		return 0, false
	}
	f.addr, f.s = b[start-1:j+1], view(b[start:j])
	j++
	const famKey = `,"family":`
	if hasAt(b, j, famKey) {
		j += len(famKey)
		end, ok := intAt(b, j)
		if !ok {
			return 0, false
		}
		f.family, j = b[j:end], end
	}
	if j >= len(b) || b[j] != '}' {
		return 0, false
	}
	return j + 1, true
}

// hasAt reports whether b holds s at j.
func hasAt(b []byte, j int, s string) bool {
	return len(b)-j >= len(s) && string(b[j:j+len(s)]) == s
}

func isIPByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '.' || c == ':'
}

// intAt reads a JSON integer at b[j] (-?(0|[1-9][0-9]*), not followed by
// a fraction or an exponent) and returns the index after it.
func intAt(b []byte, j int) (int, bool) {
	if j < len(b) && b[j] == '-' {
		j++
	}
	start := j
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	if j == start || j-start > 1 && b[start] == '0' {
		return 0, false
	}
	if j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E') {
		return 0, false
	}
	return j, true
}

// checkGateway requires gw to be a usable host on one of the VPN's address
// prefixes: otherwise the kernel would refuse the route, or the route
// would lead nowhere. It looks the gateway up per prefix length rather
// than scanning the addresses, so 10000 routes over 2000 addresses stay
// cheap.
func (p *parser) checkGateway(gw netip.Addr, at path) *errs.Error {
	if i, own := p.addrIdx[gw]; own {
		return invalid(at, "%s is the VPN's own address addresses[%d]", gw, i)
	}
	first := -1 // the first address whose subnet holds gw, but not as a host
	var why string
	for _, bits := range p.bits {
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
		return invalid(at, "%s", why)
	}
	return invalid(at, "%s is outside every address prefix", gw)
}

func (p *parser) dnsAddresses() *errs.Error {
	d, ok := p.value(mDNSAddresses)
	if !ok {
		return nil
	}
	at := memberPath(mDNSAddresses)
	if d.peek() != '[' {
		val, _ := d.skip()
		return invalid(at, "expected array of IP address strings, got %s", kindOf(val))
	}
	count := p.counts[mDNSAddresses]
	if count > MaxDNS {
		return tooMany(at, count, MaxDNS)
	}
	p.cfg.DNSAddresses = make([]netip.Addr, 0, count)
	_, err := d.elements(MaxDNS, func(i int) *errs.Error {
		at := at.elem(i)
		if d.peek() != '"' {
			val, _ := d.skip()
			return invalid(at, "expected string, got %s", kindOf(val))
		}
		a, err := parseIP(d.text(), at)
		if err != nil || d.bad {
			return err
		}
		if a.IsUnspecified() {
			return invalid(at, "%s is the unspecified address", a)
		}
		if !slices.Contains(p.cfg.DNSAddresses, a) {
			p.cfg.DNSAddresses = append(p.cfg.DNSAddresses, a)
		}
		return nil
	})
	if len(p.cfg.DNSAddresses) == 0 {
		p.cfg.DNSAddresses = nil
	}
	return err
}

func (p *parser) searchDomains() *errs.Error {
	d, ok := p.value(mSearchDomains)
	if !ok {
		return nil
	}
	at := memberPath(mSearchDomains)
	if d.peek() != '[' {
		val, _ := d.skip()
		return invalid(at, "expected array of DNS name strings, got %s", kindOf(val))
	}
	count := p.counts[mSearchDomains]
	if count > MaxSearchDomains {
		return tooMany(at, count, MaxSearchDomains)
	}
	p.cfg.SearchDomains = make([]string, 0, count)
	_, err := d.elements(MaxSearchDomains, func(i int) *errs.Error {
		at := at.elem(i)
		if d.peek() != '"' {
			val, _ := d.skip()
			return invalid(at, "expected string, got %s", kindOf(val))
		}
		s := d.text()
		if d.bad {
			return nil
		}
		if why := dnsNameProblem(s); why != "" {
			return invalid(at, "%q %s", s, why)
		}
		// Names are ASCII now, so EqualFold is plain ASCII case folding.
		key := strings.TrimSuffix(s, ".")
		for _, had := range p.cfg.SearchDomains {
			if strings.EqualFold(strings.TrimSuffix(had, "."), key) {
				return nil
			}
		}
		p.cfg.SearchDomains = append(p.cfg.SearchDomains, strings.Clone(s))
		return nil
	})
	if len(p.cfg.SearchDomains) == 0 {
		p.cfg.SearchDomains = nil
	}
	return err
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
	val := p.vals[mMTU]
	if isAbsent(val) {
		return nil
	}
	v, err := readInt(val, memberPath(mMTU), MinMTU, MaxMTU)
	if err != nil {
		return err
	}
	if p.hasV6 && v < MinMTUIPv6 {
		return invalid(memberPath(mMTU), "%d below %d required with an IPv6 address", v, MinMTUIPv6)
	}
	p.cfg.MTU = int(v)
	return nil
}

// flag reads the optional boolean member i: def when it is absent.
func (p *parser) flag(i int, def bool) (v, present bool, err *errs.Error) {
	return optBool(p.vals[i], memberPath(i), def)
}

// acceptedFamilies resolves isIPv4Accepted and isIPv6Accepted: each
// defaults to whether an address of its family is present, and true
// requires one.
func (p *parser) acceptedFamilies() *errs.Error {
	var err *errs.Error
	var set bool
	if p.cfg.IPv4, set, err = p.flag(mIPv4Accepted, p.hasV4); err != nil {
		return err
	}
	if set && p.cfg.IPv4 && !p.hasV4 {
		return invalid(memberPath(mIPv4Accepted), "true requires an IPv4 address")
	}
	if p.cfg.IPv6, set, err = p.flag(mIPv6Accepted, p.hasV6); err != nil {
		return err
	}
	if set && p.cfg.IPv6 && !p.hasV6 {
		return invalid(memberPath(mIPv6Accepted), "true requires an IPv6 address")
	}
	if !p.cfg.IPv4 && !p.cfg.IPv6 {
		return invalid(memberPath(mBothFamilies), "no address family accepted")
	}
	return nil
}

// routeFamilies requires every route's family to be accepted, reporting
// the first route, included or excluded, of a family that is not. It runs
// after acceptedFamilies, since it depends on the flags' values.
func (p *parser) routeFamilies() *errs.Error {
	v4 := p.firstV4 >= 0 && !p.cfg.IPv4
	v6 := p.firstV6 >= 0 && !p.cfg.IPv6
	if v4 && (!v6 || p.firstV4 < p.firstV6) {
		return invalid(memberPath(mRoutes).elem(p.firstV4), "%s is IPv4 but isIPv4Accepted is false", p.firstV4Dst)
	}
	if v6 {
		return invalid(memberPath(mRoutes).elem(p.firstV6), "%s is IPv6 but isIPv6Accepted is false", p.firstV6Dst)
	}
	return nil
}

func (p *parser) flags() *errs.Error {
	var err *errs.Error
	if p.cfg.Blocking, _, err = p.flag(mBlocking, false); err != nil {
		return err
	}
	if p.cfg.Metered, _, err = p.flag(mMetered, false); err != nil {
		return err
	}
	legacy, _, err := p.flag(mLegacy, false)
	if err != nil {
		return err
	}
	if legacy {
		return invalid(memberPath(mLegacy), "legacy VPN types are not supported")
	}
	if p.cfg.AllowFamilyBypass, _, err = p.flag(mAllowFamilyBypass, false); err != nil {
		return err
	}
	p.cfg.Offload, _, err = p.flag(mOffload, false)
	return err
}

// defaultRoutes adds a default route per accepted family when no included
// route was given. OpenHarmony installs fe80::/7 for IPv6 here; vpnd
// deliberately installs ::/0, so that IPv6 traffic really enters the VPN.
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
	if p.cfg.Trusted, err = p.userList(mTrusted); err != nil {
		return err
	}
	if p.cfg.Blocked, err = p.userList(mBlocked); err != nil {
		return err
	}
	if len(p.cfg.Trusted) > 0 && len(p.cfg.Blocked) > 0 {
		return errs.New(errs.CodeInvalidParam, "trustedApplications and blockedApplications are mutually exclusive")
	}
	return nil
}

// maxUID is the largest uid: (uid_t)-1 means "no uid" to the kernel.
const maxUID = 4294967294

// userList resolves an application list, member i: user names or uids,
// given as JSON numbers or decimal strings.
func (p *parser) userList(i int) ([]User, *errs.Error) {
	d, ok := p.value(i)
	if !ok {
		return nil, nil
	}
	at := memberPath(i)
	if d.peek() != '[' {
		val, _ := d.skip()
		return nil, invalid(at, "expected array of user names or uids, got %s", kindOf(val))
	}
	if count := p.counts[i]; count > MaxApplications {
		return nil, tooMany(at, count, MaxApplications)
	}
	var list []User
	_, err := d.elements(MaxApplications, func(i int) *errs.Error {
		at := at.elem(i)
		var key string
		switch c := d.peek(); {
		case c == '"':
			s := d.text()
			if d.bad {
				return nil
			}
			if s == "" {
				return invalid(at, "empty user name")
			}
			if isDigits(s) {
				if v, err := strconv.ParseUint(s, 10, 64); err != nil || v > maxUID {
					return invalid(at, "uid %s out of range 0-%d", s, maxUID)
				}
			}
			key = strings.Clone(s) // the resolver may keep it
		case c == '-' || c >= '0' && c <= '9':
			val, _ := d.skip()
			v, err := readInt(val, at, 0, maxUID)
			if err != nil {
				return err
			}
			key = strconv.FormatInt(v, 10)
		default:
			val, _ := d.skip()
			return invalid(at, "expected user name or uid, got %s", kindOf(val))
		}
		if p.users == nil {
			return errs.New(errs.CodeInternal, "%s: no user database", at)
		}
		u, rerr := p.users.ResolveUser(key)
		if rerr != nil {
			var e *errs.Error
			if errors.As(rerr, &e) {
				return &errs.Error{Code: e.Code, Detail: at.String() + ": " + e.Detail, Err: e.Err}
			}
			return &errs.Error{Code: errs.CodeInvalidParam, Detail: at.String() + ": " + rerr.Error(), Err: rerr}
		}
		if !slices.ContainsFunc(list, func(had User) bool { return had.UID == u.UID }) {
			list = append(list, u)
		}
		return nil
	})
	return list, err
}
