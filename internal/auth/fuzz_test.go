package auth

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzParsePolicy checks that ParsePolicy never panics, that it returns
// exactly one of a policy and an error, and that a policy survives
// MarshalJSON and ParsePolicy unchanged: same canonical bytes, same
// decisions. The seed corpus is in testdata/fuzz/FuzzParsePolicy.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"default":"normal","users":{"root":"admin","1002":"guest"},"groups":{"guests":"guest"}}`))
	f.Add(defaultPolicyJSON)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if (p == nil) == (err == nil) {
			t.Fatalf("ParsePolicy(%q) = %v, %v", data, p, err)
		}
		if err != nil {
			return
		}
		canon, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("Marshal(ParsePolicy(%q)): %v", data, err)
		}
		q, err := ParsePolicy(canon)
		if err != nil {
			t.Fatalf("ParsePolicy(%s), the canonical form of %q: %v", canon, data, err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("ParsePolicy(Marshal(p)) != p for %q via %s", data, canon)
		}
		again, _ := json.Marshal(q)
		if !bytes.Equal(canon, again) {
			t.Fatalf("canonical form not stable: %s then %s", canon, again)
		}
		for _, id := range probeIdentities(p) {
			a, b := p.TypeOf(id), q.TypeOf(id)
			if a != b || a.String() == "" || a < Guest || a > Admin {
				t.Fatalf("TypeOf(%+v) = %v then %v", id, a, b)
			}
		}
	})
}

// probeIdentities builds callers that hit the policy's own keys, alone and
// together, plus one that hits none.
func probeIdentities(p *Policy) []Identity {
	all := Identity{UID: 4000000000, GID: 4000000000}
	ids := []Identity{all}
	for uid := range p.userIDs {
		ids = append(ids, Identity{UID: uid})
	}
	for name := range p.userNames {
		ids = append(ids, Identity{UID: 4000000000, User: name})
	}
	for gid := range p.groupIDs {
		ids = append(ids, Identity{UID: 4000000000, GID: gid})
		all.Groups = append(all.Groups, gid)
	}
	for name := range p.groupNames {
		ids = append(ids, Identity{UID: 4000000000, GroupNames: []string{name}})
		all.GroupNames = append(all.GroupNames, name)
	}
	return append(ids, all)
}
