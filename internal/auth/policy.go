package auth

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"github.com/vpnd/vpnd/internal/uidrange"
)

// MaxPolicySize bounds a policy file. A real one is a few hundred bytes;
// the bound only stops `--accounts /dev/zero` from eating memory.
const MaxPolicySize = 1 << 20

// Policy maps callers to account types (contract §6). It is immutable
// after ParsePolicy, so one *Policy may be shared by every goroutine.
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
//	{"default":"normal","users":{"root":"admin","1002":"guest"},"groups":{"guests":"guest"}}
//
// It is strict, because a typo in an access policy must not pass
// silently: unknown or repeated members, repeated keys (also "7" and "07",
// which name the same id), values other than "admin", "normal" or "guest",
// ids above 4294967294, and anything after the object are errors. Errors
// name the offending member, e.g.
//
//	users["bob"]: unknown account type "superuser" (want admin, normal or guest)
//
// Parsing does not consult the user database.
func ParsePolicy(data []byte) (*Policy, error) {
	p := &Policy{
		def:        Normal,
		userIDs:    map[uint32]Type{},
		userNames:  map[string]Type{},
		groupIDs:   map[uint32]Type{},
		groupNames: map[string]Type{},
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
		default:
			return nil, fmt.Errorf("unknown member %q (want default, users or groups)", member)
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

// policyJSON is the canonical form of a Policy.
type policyJSON struct {
	Default Type            `json:"default"`
	Users   map[string]Type `json:"users,omitempty"`
	Groups  map[string]Type `json:"groups,omitempty"`
}

// MarshalJSON renders p in canonical form, ids in plain decimal and keys
// sorted, for logging the policy in force. ParsePolicy reads it back to an
// equal policy.
func (p *Policy) MarshalJSON() ([]byte, error) {
	return json.Marshal(policyJSON{
		Default: p.def,
		Users:   joinKeys(p.userIDs, p.userNames),
		Groups:  joinKeys(p.groupIDs, p.groupNames),
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

// TypeOf returns the account type of the caller id (contract §6):
//
//  1. A users entry wins: the one for the uid, else the one for the user
//     name. The uid entry goes first because it names exactly the uid the
//     kernel reported, whereas one uid may have several names.
//  2. Otherwise the groups entries of all the caller's groups (the primary
//     gid and the supplementary ones, by gid or by name) are combined:
//     any guest makes a guest, else any admin an admin, else any normal
//     a normal. Guest wins so that putting a user in a guest group is
//     enough to lock them out, whatever other groups they are in.
//  3. Otherwise the policy's default.
//
// Contract §6 only ranks guest and admin among groups; a group that says
// "normal" is ranked after them, so that it means normal even under a
// policy whose default is guest.
func (p *Policy) TypeOf(id Identity) Type {
	if t, ok := p.userIDs[id.UID]; ok {
		return t
	}
	if id.User != "" {
		if t, ok := p.userNames[id.User]; ok {
			return t
		}
	}
	var guest, admin, normal bool
	note := func(t Type, ok bool) {
		if ok {
			guest = guest || t == Guest
			admin = admin || t == Admin
			normal = normal || t == Normal
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
	case normal:
		return Normal
	}
	return p.def
}
