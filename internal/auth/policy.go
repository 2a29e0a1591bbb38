package auth

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"github.com/vpnd/vpnd/internal/uidrange"
)

// MaxPolicySize bounds a policy file. A real one is a few hundred bytes;
// the bound only stops `--accounts /dev/zero` from eating memory.
const MaxPolicySize = 1 << 20

// Policy maps callers to account types, and says where a NORMAL user's VPN
// addresses may lie. It is immutable after ParsePolicy, so one *Policy may
// be shared by every goroutine.
//
// Numeric keys are ids and are matched against the caller's uid or gids.
// Other keys are names, matched against the names the user database gives
// for those ids at lookup time: a name that does not exist never matches,
// which is how the default policy can name groups a system may not have.
type Policy struct {
	def        Type
	userIDs    map[uint32]Type
	userNames  map[string]Type
	groupIDs   map[uint32]Type
	groupNames map[string]Type
	pools      []netip.Prefix // addressPools, in the order given; never nil
}

// MaxAddressPools bounds addressPools. InPools looks at each pool for
// each address of a setUp, so a policy cannot make that slow.
const MaxAddressPools = 256

// DefaultAddressPools are the address pools of a policy that names none:
// the private and shared address space that no host on the internet uses,
// so that a NORMAL user's VPN cannot claim another host's address (an
// address of the VPN becomes local for every user of the machine).
// RFC 1918 (10/8, 172.16/12, 192.168/16), RFC 6598 (100.64/10) and
// RFC 4193 unique local IPv6 (fc00::/7).
func DefaultAddressPools() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("fc00::/7"),
	}
}

// AddressPools returns the prefixes inside which a NORMAL user's VPN
// addresses must lie, in the policy's order. An empty list means that a
// NORMAL user may use no address at all.
func (p *Policy) AddressPools() []netip.Prefix { return slices.Clone(p.pools) }

// InPools reports whether the whole of addr lies inside one address pool:
// the address with its prefix length, since an interface address brings
// its prefix along (10.8.0.2/24 needs 10.8.0.0/24 inside a pool). An
// IPv4 prefix never lies inside an IPv6 pool nor the other way round, and
// an invalid prefix lies nowhere.
func (p *Policy) InPools(addr netip.Prefix) bool { return InPools(p.pools, addr) }

// InPools is Policy.InPools for a list of pools.
func InPools(pools []netip.Prefix, addr netip.Prefix) bool {
	if !addr.IsValid() {
		return false
	}
	addr = addr.Masked()
	for _, pool := range pools {
		if pool.Bits() <= addr.Bits() && pool.Contains(addr.Addr()) {
			return true
		}
	}
	return false
}

//go:embed default-policy.json
var defaultPolicyJSON []byte

// DefaultPolicy returns the policy used when vpnd gets no --accounts file:
// uid 0 is admin; uid 65534 (nobody) and the members of groups "guest" and
// "guests" are guests; everyone else is normal.
func DefaultPolicy() *Policy { return defaultPolicy() }

var defaultPolicy = sync.OnceValue(func() *Policy {
	p, err := ParsePolicy(defaultPolicyJSON)
	if err != nil {
		panic("auth: embedded default-policy.json: " + err.Error())
	}
	return p
})

// LoadPolicy reads and parses the policy file at path. An empty path
// means the default policy.
func LoadPolicy(path string) (*Policy, error) {
	if path == "" {
		return DefaultPolicy(), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read account policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("read account policy: %w", err)
	}
	if len(data) > MaxPolicySize {
		return nil, fmt.Errorf("account policy %s: larger than %d bytes", path, MaxPolicySize)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("account policy %s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy parses a policy document:
//
//	{"default":"normal","users":{"root":"admin","1002":"guest"},"groups":{"guests":"guest"},
//	 "addressPools":["10.0.0.0/8","fd00::/8"]}
//
// It is strict, because a typo in an access policy must not pass
// silently: unknown or repeated members, repeated keys (also "7" and "07",
// which name the same id), values other than "admin", "normal" or "guest",
// ids above 4294967294, and anything after the object are errors. Errors
// name the offending member, e.g.
//
//	users["bob"]: unknown account type "superuser" (want admin, normal or guest)
//	addressPools[2]: "10.1.0.0/8" has host bits set; write 10.0.0.0/8
//
// addressPools is optional; without it the pools are DefaultAddressPools.
// Each pool is a CIDR string in canonical form: an IP address without a
// zone (IPv4 written as IPv4, not IPv4-mapped IPv6), a '/' and a prefix
// length in plain decimal, 0-32 or 0-128, with no host bits set, since
// "10.1.0.0/8" is more likely a mistake than a way to write 10.0.0.0/8.
// The same pool twice is an error too; pools that overlap are fine. An
// empty list is allowed and means that a NORMAL user may use no address.
//
// Parsing does not consult the user database.
func ParsePolicy(data []byte) (*Policy, error) {
	p := &Policy{
		def:        Normal,
		userIDs:    map[uint32]Type{},
		userNames:  map[string]Type{},
		groupIDs:   map[uint32]Type{},
		groupNames: map[string]Type{},
		pools:      DefaultAddressPools(),
	}
	// The token API, unlike Unmarshal, sees repeated keys and keeps the
	// position of every value for the error message.
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err == io.EOF {
		return nil, errors.New("empty document: want a JSON object")
	}
	if err != nil {
		return nil, jsonError(err)
	}
	if tok != json.Delim('{') {
		return nil, fmt.Errorf("want a JSON object, got %s", describe(tok))
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := next(dec)
		if err != nil {
			return nil, err
		}
		member := tok.(string) // the decoder allows only strings here
		if seen[member] {
			return nil, fmt.Errorf("duplicate member %q", member)
		}
		seen[member] = true
		switch member {
		case "default":
			if p.def, err = readType(dec, "default"); err != nil {
				return nil, err
			}
		case "users":
			if err := readTable(dec, "users", "uid", p.userIDs, p.userNames); err != nil {
				return nil, err
			}
		case "groups":
			if err := readTable(dec, "groups", "gid", p.groupIDs, p.groupNames); err != nil {
				return nil, err
			}
		case "addressPools":
			if p.pools, err = readPools(dec); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unknown member %q (want default, users, groups or addressPools)", member)
		}
	}
	if _, err := next(dec); err != nil { // the closing '}'
		return nil, err
	}
	end := int(dec.InputOffset())
	if rest := bytes.TrimLeft(data[end:], " \t\r\n"); len(rest) > 0 {
		return nil, fmt.Errorf("unexpected data after the policy object at byte %d", len(data)-len(rest))
	}
	return p, nil
}

// readTable reads the object of "users" or "groups" into ids and names.
func readTable(dec *json.Decoder, table, idKind string, ids map[uint32]Type, names map[string]Type) error {
	tok, err := next(dec)
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("%s: want an object, got %s", table, describe(tok))
	}
	idKeys := map[uint32]string{} // id → the key that gave it, to spot "7" and "07"
	for dec.More() {
		tok, err := next(dec)
		if err != nil {
			return err
		}
		key := tok.(string)
		where := fmt.Sprintf("%s[%q]", table, key)
		id, numeric, err := parseKey(key, idKind)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if numeric {
			if first, dup := idKeys[id]; dup {
				if first == key {
					return fmt.Errorf("%s: duplicate key %q", table, key)
				}
				return fmt.Errorf("%s: %s %d already given as %q", where, idKind, id, first)
			}
			idKeys[id] = key
		} else if _, dup := names[key]; dup {
			return fmt.Errorf("%s: duplicate key %q", table, key)
		}
		t, err := readType(dec, where)
		if err != nil {
			return err
		}
		if numeric {
			ids[id] = t
		} else {
			names[key] = t
		}
	}
	_, err = next(dec) // the closing '}'
	return err
}

// readPools reads the array of addressPools.
func readPools(dec *json.Decoder) ([]netip.Prefix, error) {
	tok, err := next(dec)
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('[') {
		return nil, fmt.Errorf("addressPools: want an array of CIDR strings, got %s", describe(tok))
	}
	pools := []netip.Prefix{}
	for dec.More() {
		if len(pools) == MaxAddressPools {
			return nil, fmt.Errorf("addressPools: more than %d entries", MaxAddressPools)
		}
		where := fmt.Sprintf("addressPools[%d]", len(pools))
		tok, err := next(dec)
		if err != nil {
			return nil, err
		}
		s, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("%s: want a CIDR string, got %s", where, describe(tok))
		}
		pool, err := parsePool(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if i := slices.Index(pools, pool); i >= 0 {
			return nil, fmt.Errorf("%s: %s duplicates addressPools[%d]", where, pool, i)
		}
		pools = append(pools, pool)
	}
	_, err = next(dec) // the closing ']'
	return pools, err
}

// parsePool parses one entry of addressPools: a canonical CIDR string.
// The wording of its errors follows the setUp parameters' own.
func parsePool(s string) (netip.Prefix, error) {
	addrPart, bitsPart, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%q is not in CIDR form address/prefixLength", s)
	}
	if strings.Contains(addrPart, "%") {
		return netip.Prefix{}, fmt.Errorf("%q has a zone; zones are not allowed", addrPart)
	}
	a, err := netip.ParseAddr(addrPart)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address", addrPart)
	}
	if a.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 address; write it as %s", addrPart, a.Unmap())
	}
	if bitsPart == "" || strings.Trim(bitsPart, "0123456789") != "" || len(bitsPart) > 1 && bitsPart[0] == '0' {
		return netip.Prefix{}, fmt.Errorf("%q has an invalid prefix length %q", s, bitsPart)
	}
	bits, err := strconv.Atoi(bitsPart)
	if err != nil || bits > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("prefix length %s out of range 0-%d", bitsPart, a.BitLen())
	}
	pool := netip.PrefixFrom(a, bits)
	if pool != pool.Masked() {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set; write %s", s, pool.Masked())
	}
	return pool, nil
}

// parseKey tells an id from a name. A key of decimal digits only is an
// id; anything else is a name, which must be something the user database
// could hold: no separators of /etc/passwd and /etc/group (':', ','), no
// white space or control characters. Such a key could never match, and is
// far more likely a typo (a trailing blank) than intended.
func parseKey(key, idKind string) (id uint32, numeric bool, err error) {
	if key == "" {
		return 0, false, errors.New("empty key (want a name or a numeric id)")
	}
	if strings.Trim(key, "0123456789") == "" {
		n, err := strconv.ParseUint(key, 10, 64)
		if err != nil || n > uidrange.MaxUID {
			return 0, false, fmt.Errorf("%s out of range 0-%d", idKind, uint32(uidrange.MaxUID))
		}
		return uint32(n), true, nil
	}
	for _, r := range key {
		if r == ':' || r == ',' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return 0, false, fmt.Errorf("%q cannot appear in a name", r)
		}
	}
	return 0, false, nil
}

// readType reads a string value that names an account type.
func readType(dec *json.Decoder, where string) (Type, error) {
	tok, err := next(dec)
	if err != nil {
		return Guest, err
	}
	s, ok := tok.(string)
	if !ok {
		return Guest, fmt.Errorf("%s: want a string (admin, normal or guest), got %s", where, describe(tok))
	}
	t, err := ParseType(s)
	if err != nil {
		return Guest, fmt.Errorf("%s: %w", where, err)
	}
	return t, nil
}

// next reads a token that must exist: the document is not over yet.
func next(dec *json.Decoder) (json.Token, error) {
	tok, err := dec.Token()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, jsonError(err)
	}
	return tok, nil
}

func jsonError(err error) error {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return fmt.Errorf("invalid JSON at byte %d: %w", syn.Offset, err)
	}
	if err == io.ErrUnexpectedEOF {
		return errors.New("invalid JSON: unexpected end of document")
	}
	return fmt.Errorf("invalid JSON: %w", err)
}

// describe names a token's JSON kind for error messages.
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			return "an object"
		case '[':
			return "an array"
		}
		return fmt.Sprintf("%q", string(v))
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", tok)
}

// policyJSON is the canonical form of a Policy. addressPools is always
// written, since leaving it out would mean the default pools.
type policyJSON struct {
	Default      Type            `json:"default"`
	Users        map[string]Type `json:"users,omitempty"`
	Groups       map[string]Type `json:"groups,omitempty"`
	AddressPools []string        `json:"addressPools"`
}

// MarshalJSON renders p in canonical form, ids in plain decimal, keys
// sorted and pools in their order, for logging the policy in force.
// ParsePolicy reads it back to an equal policy.
func (p *Policy) MarshalJSON() ([]byte, error) {
	pools := make([]string, len(p.pools))
	for i, pool := range p.pools {
		pools[i] = pool.String()
	}
	return json.Marshal(policyJSON{
		Default:      p.def,
		Users:        joinKeys(p.userIDs, p.userNames),
		Groups:       joinKeys(p.groupIDs, p.groupNames),
		AddressPools: pools,
	})
}

func joinKeys(ids map[uint32]Type, names map[string]Type) map[string]Type {
	if len(ids)+len(names) == 0 {
		return nil
	}
	m := make(map[string]Type, len(ids)+len(names))
	for id, t := range ids {
		m[strconv.FormatUint(uint64(id), 10)] = t
	}
	for name, t := range names {
		m[name] = t // never all digits, so never clashes with an id
	}
	return m
}

// TypeOf returns the account type of the caller id:
//
//  1. A users entry wins: the one for the uid, else the one for the user
//     name. The uid entry goes first because it names exactly the uid the
//     kernel reported, whereas one uid may have several names.
//  2. Otherwise the groups entries of all the caller's groups (the primary
//     gid and the supplementary ones, by gid or by name) are combined:
//     any guest makes a guest, else any admin an admin. Guest wins so that
//     putting a user in a guest group is enough to lock them out, whatever
//     other groups they are in.
//  3. Otherwise the policy's default. A group entry that says "normal"
//     therefore decides nothing: under a policy whose default is guest,
//     its members are guests.
func (p *Policy) TypeOf(id Identity) Type {
	if t, ok := p.userIDs[id.UID]; ok {
		return t
	}
	if id.User != "" {
		if t, ok := p.userNames[id.User]; ok {
			return t
		}
	}
	var guest, admin bool
	note := func(t Type, ok bool) {
		if ok {
			guest = guest || t == Guest
			admin = admin || t == Admin
		}
	}
	t, ok := p.groupIDs[id.GID]
	note(t, ok)
	for _, gid := range id.Groups {
		t, ok := p.groupIDs[gid]
		note(t, ok)
	}
	for _, name := range id.GroupNames {
		t, ok := p.groupNames[name]
		note(t, ok)
	}
	switch {
	case guest:
		return Guest
	case admin:
		return Admin
	}
	// A group entry that says normal decides nothing: only guest and
	// admin groups do, and everyone else gets the default.
	return p.def
}
