package auth

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func mustParse(t testing.TB, doc string) *Policy {
	t.Helper()
	p, err := ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatalf("ParsePolicy(%s): %v", doc, err)
	}
	return p
}

func TestTypeZeroValueIsNotAdmin(t *testing.T) {
	var zero Type
	if zero == Admin {
		t.Fatal("the zero Type is Admin")
	}
	if zero != Guest {
		t.Errorf("the zero Type is %v, want guest (fail closed)", zero)
	}
}

func TestTypeText(t *testing.T) {
	for typ, s := range map[Type]string{Admin: "admin", Normal: "normal", Guest: "guest"} {
		if got := typ.String(); got != s {
			t.Errorf("%d.String() = %q, want %q", int(typ), got, s)
		}
		b, err := json.Marshal(typ)
		if err != nil || string(b) != `"`+s+`"` {
			t.Errorf("json.Marshal(%v) = %s, %v", typ, b, err)
		}
		var back Type
		if err := json.Unmarshal(b, &back); err != nil || back != typ {
			t.Errorf("json.Unmarshal(%s) = %v, %v", b, back, err)
		}
	}
	if got := Type(7).String(); got != "Type(7)" {
		t.Errorf("Type(7).String() = %q", got)
	}
	if _, err := Type(-1).MarshalText(); err == nil {
		t.Error("Type(-1).MarshalText() succeeded")
	}
	for _, s := range []string{"Admin", "ADMIN", " admin", "", "superuser"} {
		if _, err := ParseType(s); err == nil {
			t.Errorf("ParseType(%q) succeeded", s)
		}
	}
}

// TestTypeOf checks the resolution order of account types.
func TestTypeOf(t *testing.T) {
	const doc = `{
		"default": "normal",
		"users": {"root": "admin", "1002": "guest", "alice": "guest", "1003": "normal", "carol": "admin"},
		"groups": {"wheel": "admin", "guests": "guest", "4000": "admin", "4001": "guest", "staff": "normal"}
	}`
	p := mustParse(t, doc)
	strict := mustParse(t, `{"default":"guest","groups":{"staff":"normal","wheel":"admin"}}`)
	for _, tc := range []struct {
		name string
		p    *Policy
		id   Identity
		want Type
	}{
		{"users by name", p, Identity{UID: 0, User: "root"}, Admin},
		{"users by uid", p, Identity{UID: 1002, User: "bob"}, Guest},
		{"users by uid, no name", p, Identity{UID: 1002}, Guest},
		{"users by name, other uid", p, Identity{UID: 1500, User: "alice"}, Guest},
		{"user entry beats group guest", p, Identity{UID: 1500, User: "carol", GroupNames: []string{"guests"}}, Admin},
		{"user entry beats group admin", p, Identity{UID: 1500, User: "alice", Groups: []uint32{4000}, GroupNames: []string{"wheel"}}, Guest},
		{"user normal entry beats group admin", p, Identity{UID: 1003, GroupNames: []string{"wheel"}}, Normal},
		{"uid entry beats name entry", p, Identity{UID: 1003, User: "carol"}, Normal},
		{"group admin by name", p, Identity{UID: 1500, User: "dave", GroupNames: []string{"dave", "wheel"}}, Admin},
		{"group admin by gid", p, Identity{UID: 1500, Groups: []uint32{1500, 4000}}, Admin},
		{"group admin by primary gid only", p, Identity{UID: 1500, GID: 4000}, Admin},
		{"group guest by name", p, Identity{UID: 1500, GroupNames: []string{"guests"}}, Guest},
		{"group guest by gid", p, Identity{UID: 1500, Groups: []uint32{4001}}, Guest},
		{"group guest beats group admin", p, Identity{UID: 1500, Groups: []uint32{4000}, GroupNames: []string{"wheel", "guests"}}, Guest},
		{"group guest by gid beats admin by name", p, Identity{UID: 1500, GID: 4001, GroupNames: []string{"wheel"}}, Guest},
		{"group admin beats group normal", p, Identity{UID: 1500, GroupNames: []string{"staff", "wheel"}}, Admin},
		{"default", p, Identity{UID: 1500, User: "erin", GID: 1500, Groups: []uint32{1500}, GroupNames: []string{"erin"}}, Normal},
		{"default, nothing known", p, Identity{UID: 77777, GID: 77777}, Normal},
		{"name keys never match ids", p, Identity{UID: 1500, User: "1002"}, Normal},
		{"default guest", strict, Identity{UID: 1500}, Guest},
		// Only guest and admin groups decide; a normal group does not.
		{"group normal under default guest", strict, Identity{UID: 1500, GroupNames: []string{"staff"}}, Guest},
		{"group admin under default guest", strict, Identity{UID: 1500, GroupNames: []string{"staff", "wheel"}}, Admin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.TypeOf(tc.id); got != tc.want {
				t.Errorf("TypeOf(%+v) = %v, want %v", tc.id, got, tc.want)
			}
		})
	}
}

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      policyJSON
	}{
		{"empty object", `{}`, policyJSON{Default: Normal}},
		{"default only", `{"default":"guest"}`, policyJSON{Default: Guest}},
		{"empty tables", `{"users":{},"groups":{}}`, policyJSON{Default: Normal}},
		{"documented example", `{"default":"normal","users":{"root":"admin","1002":"guest"},"groups":{"guests":"guest"}}`,
			policyJSON{Default: Normal, Users: map[string]Type{"root": Admin, "1002": Guest}, Groups: map[string]Type{"guests": Guest}}},
		{"id edges", `{"users":{"0":"admin","4294967294":"guest"},"groups":{"0":"normal","4294967294":"guest"}}`,
			policyJSON{Default: Normal, Users: map[string]Type{"0": Admin, "4294967294": Guest}, Groups: map[string]Type{"0": Normal, "4294967294": Guest}}},
		{"leading zeros are the id", `{"users":{"007":"guest"}}`, policyJSON{Default: Normal, Users: map[string]Type{"7": Guest}}},
		{"same key in users and groups", `{"users":{"x":"guest"},"groups":{"x":"admin"}}`,
			policyJSON{Default: Normal, Users: map[string]Type{"x": Guest}, Groups: map[string]Type{"x": Admin}}},
		{"names with dots, dashes, dollars, unicode", `{"users":{"a.b-c_d$":"admin","jürgen":"guest"}}`,
			policyJSON{Default: Normal, Users: map[string]Type{"a.b-c_d$": Admin, "jürgen": Guest}}},
		{"whitespace around", " \n\t{\"default\" : \"admin\"}\n\n", policyJSON{Default: Admin}},
		{"address pools", `{"addressPools":["192.0.2.0/24","2001:db8::/32","10.8.0.0/16","10.0.0.0/8","0.0.0.0/0","::/0","198.51.100.7/32"]}`,
			policyJSON{Default: Normal, AddressPools: []string{"192.0.2.0/24", "2001:db8::/32", "10.8.0.0/16", "10.0.0.0/8", "0.0.0.0/0", "::/0", "198.51.100.7/32"}}},
		{"no address pools", `{"addressPools":[]}`, policyJSON{Default: Normal, AddressPools: []string{}}},
		{"address pools, not canonical IPv6 text", `{"addressPools":["FD00:0:0::/8","2001:db8:0:0:0:0:0:0/64"]}`,
			policyJSON{Default: Normal, AddressPools: []string{"fd00::/8", "2001:db8::/64"}}},
		{"address pools, escapes", `{"address\u0050ools":["10.0.0.0\/8"]}`, policyJSON{Default: Normal, AddressPools: []string{"10.0.0.0/8"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.doc)
			got, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want.AddressPools == nil {
				tc.want.AddressPools = defaultPools
			}
			want, _ := json.Marshal(tc.want)
			if string(got) != string(want) {
				t.Errorf("ParsePolicy(%s) = %s, want %s", tc.doc, got, want)
			}
		})
	}
}

func TestParsePolicyErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{``, `empty document: want a JSON object`},
		{"  \n", `empty document: want a JSON object`},
		{`[]`, `want a JSON object, got an array`},
		{`"admin"`, `want a JSON object, got a string`},
		{`null`, `want a JSON object, got null`},
		{`{`, `invalid JSON: unexpected end of document`},
		{`{"default":"normal"`, `invalid JSON: unexpected end of document`},
		{`{"users":{"root":"admin"}`, `invalid JSON: unexpected end of document`},
		{`{"default":"normal",}`, `invalid JSON at byte 20: invalid character '}' looking for beginning of object key string`},
		{`{"default" "normal"}`, `invalid JSON at byte 11: invalid character '"' after object key`},
		{`{'default':'normal'}`, `invalid JSON at byte 1: invalid character '\''`},
		{`{"default":"normal"} x`, `unexpected data after the policy object at byte 21`},
		{`{"default":"normal"}{}`, `unexpected data after the policy object at byte 20`},
		{`{"default":"normal"}}`, `unexpected data after the policy object at byte 20`},
		{`{"Default":"normal"}`, `unknown member "Default" (want default, users, groups or addressPools)`},
		{`{"accounts":{}}`, `unknown member "accounts" (want default, users, groups or addressPools)`},
		{`{"addresspools":[]}`, `unknown member "addresspools" (want default, users, groups or addressPools)`},
		{`{"addressPools":[],"addressPools":[]}`, `duplicate member "addressPools"`},
		{`{"addressPools":null}`, `addressPools: want an array of CIDR strings, got null`},
		{`{"addressPools":"10.0.0.0/8"}`, `addressPools: want an array of CIDR strings, got a string`},
		{`{"addressPools":{"10.0.0.0/8":true}}`, `addressPools: want an array of CIDR strings, got an object`},
		{`{"addressPools":["10.0.0.0/8",8]}`, `addressPools[1]: want a CIDR string, got a number`},
		{`{"addressPools":[null]}`, `addressPools[0]: want a CIDR string, got null`},
		{`{"addressPools":[["10.0.0.0/8"]]}`, `addressPools[0]: want a CIDR string, got an array`},
		{`{"addressPools":["10.0.0.0/8","100.64.0.0/10","10.0.0.0"]}`, `addressPools[2]: "10.0.0.0" is not in CIDR form address/prefixLength`},
		{`{"addressPools":["10.0.0.300/8"]}`, `addressPools[0]: "10.0.0.300" is not an IP address`},
		{`{"addressPools":["fe80::%eth0/64"]}`, `addressPools[0]: "fe80::%eth0" has a zone; zones are not allowed`},
		{`{"addressPools":["::ffff:10.0.0.0/104"]}`, `addressPools[0]: "::ffff:10.0.0.0" is an IPv4-mapped IPv6 address; write it as 10.0.0.0`},
		{`{"addressPools":["10.0.0.0/33"]}`, `addressPools[0]: prefix length 33 out of range 0-32`},
		{`{"addressPools":["fd00::/129"]}`, `addressPools[0]: prefix length 129 out of range 0-128`},
		{`{"addressPools":["fd00::/99999999999999999999"]}`, `addressPools[0]: prefix length 99999999999999999999 out of range 0-128`},
		{`{"addressPools":["10.0.0.0/08"]}`, `addressPools[0]: "10.0.0.0/08" has an invalid prefix length "08"`},
		{`{"addressPools":["10.0.0.0/"]}`, `addressPools[0]: "10.0.0.0/" has an invalid prefix length ""`},
		{`{"addressPools":["10.0.0.0/+8"]}`, `addressPools[0]: "10.0.0.0/+8" has an invalid prefix length "+8"`},
		{`{"addressPools":["10.0.0.0/8/8"]}`, `addressPools[0]: "10.0.0.0/8/8" has an invalid prefix length "8/8"`},
		{`{"addressPools":["10.1.0.0/8"]}`, `addressPools[0]: "10.1.0.0/8" has host bits set; write 10.0.0.0/8`},
		{`{"addressPools":["fd00::1/8"]}`, `addressPools[0]: "fd00::1/8" has host bits set; write fd00::/8`},
		{`{"addressPools":["10.0.0.0/8","fc00::/7","10.0.0.0/8"]}`, `addressPools[2]: 10.0.0.0/8 duplicates addressPools[0]`},
		{`{"addressPools":["fc00::/7","FC00:0::/7"]}`, `addressPools[1]: fc00::/7 duplicates addressPools[0]`},
		{`{"addressPools":["10.0.0.0/8",]}`, `invalid JSON at byte 30: invalid character ']' looking for beginning of value`},
		{`{"addressPools":["10.0.0.0/8"`, `invalid JSON: unexpected end of document`},
		{`{"default":"normal","default":"admin"}`, `duplicate member "default"`},
		{`{"users":{},"users":{}}`, `duplicate member "users"`},
		{`{"default":"superuser"}`, `default: unknown account type "superuser" (want admin, normal or guest)`},
		{`{"default":"Admin"}`, `default: unknown account type "Admin" (want admin, normal or guest)`},
		{`{"default":""}`, `default: unknown account type "" (want admin, normal or guest)`},
		{`{"default":null}`, `default: want a string (admin, normal or guest), got null`},
		{`{"default":1}`, `default: want a string (admin, normal or guest), got a number`},
		{`{"default":true}`, `default: want a string (admin, normal or guest), got a boolean`},
		{`{"users":{"bob":"superuser"}}`, `users["bob"]: unknown account type "superuser" (want admin, normal or guest)`},
		{`{"groups":{"wheel":"root"}}`, `groups["wheel"]: unknown account type "root" (want admin, normal or guest)`},
		{`{"users":{"bob":["admin"]}}`, `users["bob"]: want a string (admin, normal or guest), got an array`},
		{`{"users":{"bob":{}}}`, `users["bob"]: want a string (admin, normal or guest), got an object`},
		{`{"users":null}`, `users: want an object, got null`},
		{`{"groups":["guests"]}`, `groups: want an object, got an array`},
		{`{"users":{"":"admin"}}`, `users[""]: empty key (want a name or a numeric id)`},
		{`{"users":{"4294967295":"admin"}}`, `users["4294967295"]: uid out of range 0-4294967294`},
		{`{"groups":{"99999999999999999999999":"admin"}}`, `groups["99999999999999999999999"]: gid out of range 0-4294967294`},
		{`{"users":{"root ":"admin"}}`, `users["root "]: ' ' cannot appear in a name`},
		{`{"groups":{"a:b":"admin"}}`, `groups["a:b"]: ':' cannot appear in a name`},
		{`{"groups":{"a,b":"admin"}}`, `groups["a,b"]: ',' cannot appear in a name`},
		{`{"users":{"a\u0000":"admin"}}`, `users["a\x00"]: '\x00' cannot appear in a name`},
		{`{"users":{"root":"admin","root":"guest"}}`, `users: duplicate key "root"`},
		{`{"users":{"7":"admin","7":"admin"}}`, `users: duplicate key "7"`},
		{`{"users":{"7":"admin","007":"guest"}}`, `users["007"]: uid 7 already given as "7"`},
		{`{"groups":{"0":"admin","00":"guest"}}`, `groups["00"]: gid 0 already given as "0"`},
	} {
		t.Run(tc.doc, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tc.doc))
			if err == nil {
				t.Fatalf("ParsePolicy(%s) succeeded", tc.doc)
			}
			if p != nil {
				t.Errorf("ParsePolicy(%s) returned a policy with its error", tc.doc)
			}
			if err.Error() != tc.want {
				t.Errorf("ParsePolicy(%s):\n got  %s\n want %s", tc.doc, err, tc.want)
			}
		})
	}
}

// TestDefaultPolicy checks the embedded policy.
func TestDefaultPolicy(t *testing.T) {
	p := DefaultPolicy()
	for _, tc := range []struct {
		name string
		id   Identity
		want Type
	}{
		{"uid 0 admin", Identity{UID: 0, GID: 0, User: "root", Groups: []uint32{0}, GroupNames: []string{"root"}}, Admin},
		{"uid 0 admin, even in group guests", Identity{UID: 0, GroupNames: []string{"root", "guests"}}, Admin},
		{"uid 0 admin, whatever its name", Identity{UID: 0, User: "toor"}, Admin},
		{"uid 65534 guest", Identity{UID: 65534, GID: 65534, User: "nobody", GroupNames: []string{"nogroup"}}, Guest},
		{"group guests", Identity{UID: 1000, GID: 1000, User: "u", Groups: []uint32{1000, 1500}, GroupNames: []string{"u", "guests"}}, Guest},
		{"group guest", Identity{UID: 1000, GroupNames: []string{"guest"}}, Guest},
		{"other normal", Identity{UID: 1000, GID: 1000, User: "u", Groups: []uint32{1000, 27}, GroupNames: []string{"u", "sudo"}}, Normal},
		{"name root without uid 0 normal", Identity{UID: 1000, User: "root"}, Normal},
		{"unknown uid normal", Identity{UID: 123456, GID: 123456}, Normal},
		{"max uid normal", Identity{UID: 4294967294}, Normal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.TypeOf(tc.id); got != tc.want {
				t.Errorf("default TypeOf(%+v) = %v, want %v", tc.id, got, tc.want)
			}
		})
	}
	if DefaultPolicy() != p {
		t.Error("DefaultPolicy parses the embedded file again on each call")
	}
	got, _ := json.Marshal(p)
	const want = `{"default":"normal","users":{"0":"admin","65534":"guest"},"groups":{"guest":"guest","guests":"guest"},` +
		`"addressPools":["10.0.0.0/8","100.64.0.0/10","172.16.0.0/12","192.168.0.0/16","fc00::/7"]}`
	if string(got) != want {
		t.Errorf("default policy = %s, want %s", got, want)
	}
}

func TestLoadPolicy(t *testing.T) {
	p, err := LoadPolicy("")
	if err != nil || p != DefaultPolicy() {
		t.Errorf(`LoadPolicy("") = %p, %v; want the default policy`, p, err)
	}

	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(good, []byte(`{"default":"guest","users":{"1000":"admin"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err = LoadPolicy(good)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.TypeOf(Identity{UID: 1000}); got != Admin {
		t.Errorf("uid 1000 is %v, want admin", got)
	}
	if got := p.TypeOf(Identity{UID: 0}); got != Guest {
		t.Errorf("uid 0 is %v, want guest (file default)", got)
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"users":{"bob":"superuser"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadPolicy(bad)
	if want := "account policy " + bad + `: users["bob"]: unknown account type "superuser" (want admin, normal or guest)`; err == nil || err.Error() != want {
		t.Errorf("LoadPolicy(bad) error = %v, want %s", err, want)
	}

	missing := filepath.Join(dir, "missing.json")
	if _, err := LoadPolicy(missing); err == nil || !strings.Contains(err.Error(), missing) || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("LoadPolicy(missing) error = %v", err)
	}

	huge := filepath.Join(dir, "huge.json")
	if err := os.WriteFile(huge, []byte(`{"default":"normal"}`+strings.Repeat(" ", MaxPolicySize)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPolicy(huge); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("LoadPolicy(huge) error = %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// TestHolder checks the SIGHUP rule: a bad policy leaves the old
// one in force.
func TestHolder(t *testing.T) {
	var zero Holder
	if zero.Load() != DefaultPolicy() {
		t.Error("the zero Holder does not hold the default policy")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "accounts.json")
	write := func(doc string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := NewHolder(nil)
	write(`{"default":"admin"}`)
	if err := h.Reload(path); err != nil {
		t.Fatal(err)
	}
	first := h.Load()
	if got := first.TypeOf(Identity{UID: 1000}); got != Admin {
		t.Fatalf("after reload uid 1000 is %v, want admin", got)
	}
	write(`{"default":"root"}`)
	if err := h.Reload(path); err == nil {
		t.Fatal("Reload of a bad policy succeeded")
	}
	if h.Load() != first {
		t.Error("a failed Reload replaced the policy in force")
	}
	h.Store(nil)
	if h.Load() != DefaultPolicy() {
		t.Error("Store(nil) does not restore the default policy")
	}

	// Readers and a reloader at once, for the race detector.
	guest := mustParse(t, `{"default":"guest"}`)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for range 200 {
				if i == 0 {
					h.Store(guest)
					continue
				}
				_ = h.Load().TypeOf(Identity{UID: 1000})
			}
		})
	}
	wg.Wait()
}

// TestLookup checks Lookup against this machine's user database, which
// has root (uid 0, group root) and nothing at uid 4000000000.
func TestLookup(t *testing.T) {
	id, err := LookupIdentity(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if id.User != "root" || id.UID != 0 || id.GID != 0 {
		t.Errorf("LookupIdentity(0, 0) = %+v, want user root", id)
	}
	if len(id.Groups) == 0 || id.Groups[0] != 0 {
		t.Errorf("Groups = %v, want gid 0 first", id.Groups)
	}
	if !contains(id.GroupNames, "root") {
		t.Errorf("GroupNames = %v, want root among them", id.GroupNames)
	}
	if got := DefaultPolicy().TypeOf(id); got != Admin {
		t.Errorf("root is %v under the default policy, want admin", got)
	}

	// The peer gid need not be the passwd primary group (setgid); both count.
	id = Lookup(0, 4000000001)
	if !reflect.DeepEqual(id.Groups[:2], []uint32{4000000001, 0}) {
		t.Errorf("Lookup(0, 4000000001).Groups = %v, want the peer gid, then 0", id.Groups)
	}

	id, err = LookupIdentity(4000000000, 4000000000)
	if err != nil {
		t.Fatal(err)
	}
	want := Identity{UID: 4000000000, GID: 4000000000, Groups: []uint32{4000000000}}
	if !reflect.DeepEqual(id, want) {
		t.Errorf("LookupIdentity(unknown) = %+v, want %+v", id, want)
	}
	if got := DefaultPolicy().TypeOf(id); got != Normal {
		t.Errorf("an unknown uid is %v under the default policy, want normal", got)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func BenchmarkLookup(b *testing.B) {
	for b.Loop() {
		Lookup(0, 0)
	}
}

var defaultPools = []string{"10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}

func TestDefaultAddressPools(t *testing.T) {
	var got []string
	for _, p := range DefaultPolicy().AddressPools() {
		got = append(got, p.String())
	}
	if !reflect.DeepEqual(got, defaultPools) {
		t.Errorf("default policy's pools = %v, want %v", got, defaultPools)
	}
	if !reflect.DeepEqual(DefaultPolicy().AddressPools(), DefaultAddressPools()) {
		t.Error("the embedded policy's pools are not DefaultAddressPools()")
	}
	if !reflect.DeepEqual(mustParse(t, `{}`).AddressPools(), DefaultAddressPools()) {
		t.Error("a policy without addressPools does not get DefaultAddressPools()")
	}
	// The policy is immutable: its callers get a copy.
	p := mustParse(t, `{}`)
	p.AddressPools()[0] = netip.MustParsePrefix("0.0.0.0/0")
	if p.InPools(netip.MustParsePrefix("8.8.8.8/32")) {
		t.Error("changing the slice AddressPools returned changed the policy")
	}
}

// TestInPools checks which VPN addresses lie inside the pools: the whole
// prefix of the address must lie inside one pool.
func TestInPools(t *testing.T) {
	def := DefaultPolicy()
	custom := mustParse(t, `{"addressPools":["10.8.0.0/16","10.9.0.0/16","2001:db8::/32","198.51.100.7/32"]}`)
	none := mustParse(t, `{"addressPools":[]}`)
	all := mustParse(t, `{"addressPools":["0.0.0.0/0","::/0"]}`)
	for _, tc := range []struct {
		name string
		p    *Policy
		addr string
		want bool
	}{
		{"default: 10/8 host", def, "10.8.0.2/24", true},
		{"default: the whole pool", def, "10.0.0.2/8", true},
		{"default: wider than the pool", def, "10.0.0.2/7", false},
		{"default: CGNAT", def, "100.64.1.1/16", true},
		{"default: just past CGNAT", def, "100.128.0.1/24", false},
		{"default: 172.16/12 edge", def, "172.31.255.254/30", true},
		{"default: past 172.16/12", def, "172.32.0.1/24", false},
		{"default: 192.168/16", def, "192.168.1.2/24", true},
		{"default: a public host", def, "8.8.8.8/32", false},
		{"default: a public /24", def, "203.0.113.5/24", false},
		{"default: ULA", def, "fd00::2/64", true},
		{"default: ULA, fc half", def, "fc00::1/7", true},
		{"default: wider than ULA", def, "fd00::2/6", false},
		{"default: global IPv6", def, "2001:db8::2/64", false},
		{"default: link-local", def, "fe80::1/64", false},
		{"default: IPv4-mapped never matches IPv4 pools", def, "::ffff:10.8.0.2/120", false},
		{"custom: inside one pool", custom, "10.8.3.4/24", true},
		{"custom: across two pools", custom, "10.8.0.1/15", false},
		{"custom: a /32 pool holds its host", custom, "198.51.100.7/32", true},
		{"custom: a /32 pool, wider address", custom, "198.51.100.7/31", false},
		{"custom: IPv6", custom, "2001:db8:1::2/64", true},
		{"custom: default pools no longer apply", custom, "192.168.1.2/24", false},
		{"no pools: nothing", none, "10.8.0.2/24", false},
		{"no pools: nothing IPv6", none, "fd00::2/64", false},
		{"everything: IPv4", all, "8.8.8.8/32", true},
		{"everything: IPv6", all, "2001:db8::1/1", true},
		{"everything: even /0", all, "8.8.8.8/0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.InPools(netip.MustParsePrefix(tc.addr)); got != tc.want {
				t.Errorf("InPools(%s) = %v, want %v", tc.addr, got, tc.want)
			}
		})
	}
	if def.InPools(netip.Prefix{}) {
		t.Error("the zero prefix lies in a pool")
	}
}
