package auth

import (
	"encoding/json"
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

// TestTypeOf checks the resolution order of contract §6.
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
		{"group normal under default guest", strict, Identity{UID: 1500, GroupNames: []string{"staff"}}, Normal},
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
		{"contract example", `{"default":"normal","users":{"root":"admin","1002":"guest"},"groups":{"guests":"guest"}}`,
			policyJSON{Default: Normal, Users: map[string]Type{"root": Admin, "1002": Guest}, Groups: map[string]Type{"guests": Guest}}},
		{"id edges", `{"users":{"0":"admin","4294967294":"guest"},"groups":{"0":"normal","4294967294":"guest"}}`,
			policyJSON{Default: Normal, Users: map[string]Type{"0": Admin, "4294967294": Guest}, Groups: map[string]Type{"0": Normal, "4294967294": Guest}}},
		{"leading zeros are the id", `{"users":{"007":"guest"}}`, policyJSON{Default: Normal, Users: map[string]Type{"7": Guest}}},
		{"same key in users and groups", `{"users":{"x":"guest"},"groups":{"x":"admin"}}`,
			policyJSON{Default: Normal, Users: map[string]Type{"x": Guest}, Groups: map[string]Type{"x": Admin}}},
		{"names with dots, dashes, dollars, unicode", `{"users":{"a.b-c_d$":"admin","jürgen":"guest"}}`,
			policyJSON{Default: Normal, Users: map[string]Type{"a.b-c_d$": Admin, "jürgen": Guest}}},
		{"whitespace around", " \n\t{\"default\" : \"admin\"}\n\n", policyJSON{Default: Admin}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.doc)
			got, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
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
		{`{"Default":"normal"}`, `unknown member "Default" (want default, users or groups)`},
		{`{"accounts":{}}`, `unknown member "accounts" (want default, users or groups)`},
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

// TestDefaultPolicy checks the embedded policy of contract §6.
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
	const want = `{"default":"normal","users":{"0":"admin","65534":"guest"},"groups":{"guest":"guest","guests":"guest"}}`
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

// TestHolder checks the SIGHUP rule of §6: a bad policy leaves the old
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
