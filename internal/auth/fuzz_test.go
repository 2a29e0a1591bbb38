package auth

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
)

// FuzzParsePolicy checks that ParsePolicy never panics, that it returns
// exactly one of a policy and an error, and that a policy survives
// MarshalJSON and ParsePolicy unchanged: same canonical bytes, same
// decisions, same address pools. InPools must agree with a second way of
// saying "inside one pool". The seed corpus is in
// testdata/fuzz/FuzzParsePolicy.
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
		for _, addr := range probePrefixes(p) {
			if got, want := p.InPools(addr), inPoolsByOverlap(p.AddressPools(), addr); got != want {
				t.Fatalf("InPools(%s) = %v for pools %v, want %v", addr, got, p.AddressPools(), want)
			}
		}
		for _, pool := range p.AddressPools() {
			if !p.InPools(pool) {
				t.Fatalf("pool %s does not lie in the pools", pool)
			}
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

// inPoolsByOverlap says whether addr's whole prefix lies in one of pools,
// put another way than InPools: the pool overlaps it and is no longer.
func inPoolsByOverlap(pools []netip.Prefix, addr netip.Prefix) bool {
	if !addr.IsValid() {
		return false
	}
	for _, pool := range pools {
		if pool.Overlaps(addr) && pool.Bits() <= addr.Bits() {
			return true
		}
	}
	return false
}

// probePrefixes builds prefixes around the policy's pools: each pool, one
// bit longer and shorter, a host at each end, and some fixed ones.
func probePrefixes(p *Policy) []netip.Prefix {
	probes := []netip.Prefix{
		netip.MustParsePrefix("10.8.0.2/24"), netip.MustParsePrefix("8.8.8.8/32"),
		netip.MustParsePrefix("fd00::2/64"), netip.MustParsePrefix("::ffff:10.0.0.1/128"),
		netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"), {},
	}
	for _, pool := range p.AddressPools() {
		a, bits := pool.Addr(), pool.Bits()
		probes = append(probes, pool, netip.PrefixFrom(a, max(bits-1, 0)), netip.PrefixFrom(a, min(bits+1, a.BitLen())),
			netip.PrefixFrom(a, a.BitLen()))
		if prev := a.Prev(); prev.IsValid() {
			probes = append(probes, netip.PrefixFrom(prev, prev.BitLen()))
		}
	}
	return probes
}
