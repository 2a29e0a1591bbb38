package uidrange

import (
	"math/rand/v2"
	"slices"
	"testing"
)

const top = MaxUID

func r(a, b uint32) Range { return Range{a, b} }

func rs(ranges ...Range) []Range { return ranges }

// same compares two range lists, treating nil and empty as equal.
func same(a, b []Range) bool { return len(a) == 0 && len(b) == 0 || slices.Equal(a, b) }

func TestFromUIDs(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []uint32
		want []Range
	}{
		{"nil", nil, nil},
		{"empty", []uint32{}, nil},
		{"one", []uint32{1000}, rs(r(1000, 1000))},
		{"zero", []uint32{0}, rs(r(0, 0))},
		{"top", []uint32{top}, rs(r(top, top))},
		{"not a uid: (uid_t)-1 dropped", []uint32{4294967295}, nil},
		{"(uid_t)-1 beside top", []uint32{4294967295, top, top - 1}, rs(r(top-1, top))},
		{"duplicates", []uint32{7, 7, 7}, rs(r(7, 7))},
		{"adjacent coalesce", []uint32{5, 6, 7}, rs(r(5, 7))},
		{"unsorted adjacent", []uint32{7, 5, 6}, rs(r(5, 7))},
		{"gap", []uint32{5, 7}, rs(r(5, 5), r(7, 7))},
		{"mixed", []uint32{9, 1, 2, 2, 3, 0, 10, 12}, rs(r(0, 3), r(9, 10), r(12, 12))},
		{"both edges", []uint32{top, 0}, rs(r(0, 0), r(top, top))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			if got := FromUIDs(tc.in); !same(got, tc.want) {
				t.Errorf("FromUIDs(%v) = %v, want %v", tc.in, got, tc.want)
			}
			if !slices.Equal(in, tc.in) {
				t.Errorf("FromUIDs modified its input: %v, was %v", tc.in, in)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in, out []Range
	}{
		{"nil", nil, nil},
		{"empty range dropped", rs(r(5, 4)), nil},
		{"overlap", rs(r(1, 5), r(3, 9)), rs(r(1, 9))},
		{"contained", rs(r(1, 9), r(3, 4)), rs(r(1, 9))},
		{"adjacent", rs(r(6, 9), r(1, 5)), rs(r(1, 9))},
		{"gap kept", rs(r(7, 9), r(1, 5)), rs(r(1, 5), r(7, 9))},
		{"clamped to MaxUID", rs(r(top, 4294967295)), rs(r(top, top))},
		{"above MaxUID only", rs(r(4294967295, 4294967295)), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Normalize(tc.in); !same(got, tc.out) {
				t.Errorf("Normalize(%v) = %v, want %v", tc.in, got, tc.out)
			}
		})
	}
}

func TestComplement(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in, out []Range
	}{
		{"of nothing is all", nil, All()},
		{"of all is nothing", All(), nil},
		{"of 0", rs(r(0, 0)), rs(r(1, top))},
		{"of top", rs(r(top, top)), rs(r(0, top-1))},
		{"of both edges", rs(r(0, 0), r(top, top)), rs(r(1, top-1))},
		{"of middle", rs(r(1000, 1000)), rs(r(0, 999), r(1001, top))},
		{"of two", rs(r(5, 7), r(10, 10)), rs(r(0, 4), r(8, 9), r(11, top))},
		{"unnormalized input", rs(r(10, 10), r(6, 7), r(5, 6)), rs(r(0, 4), r(8, 9), r(11, top))},
		{"of all but 0", rs(r(1, top)), rs(r(0, 0))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Complement(tc.in); !same(got, tc.out) {
				t.Errorf("Complement(%v) = %v, want %v", tc.in, got, tc.out)
			}
		})
	}
}

func TestSubtract(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []Range
		uid  uint32
		out  []Range
	}{
		{"from nothing", nil, 5, nil},
		{"not contained", rs(r(1, 3)), 5, rs(r(1, 3))},
		{"single", rs(r(5, 5)), 5, nil},
		{"start", rs(r(5, 9)), 5, rs(r(6, 9))},
		{"end", rs(r(5, 9)), 9, rs(r(5, 8))},
		{"middle splits", rs(r(5, 9)), 7, rs(r(5, 6), r(8, 9))},
		{"0 from all", All(), 0, rs(r(1, top))},
		{"top from all", All(), top, rs(r(0, top-1))},
		{"owner from all", All(), 1000, rs(r(0, 999), r(1001, top))},
		{"(uid_t)-1 from all changes nothing", All(), 4294967295, All()},
		{"only the holding range", rs(r(1, 2), r(4, 6), r(8, 9)), 5, rs(r(1, 2), r(4, 4), r(6, 6), r(8, 9))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Subtract(tc.in, tc.uid); !same(got, tc.out) {
				t.Errorf("Subtract(%v, %d) = %v, want %v", tc.in, tc.uid, got, tc.out)
			}
		})
	}
}

func TestIntersect(t *testing.T) {
	for _, tc := range []struct {
		name    string
		a, b    []Range
		wantOut []Range
	}{
		{"nothing", nil, All(), nil},
		{"all", All(), All(), All()},
		{"disjoint", rs(r(1, 3)), rs(r(4, 6)), nil},
		{"overlap", rs(r(1, 5)), rs(r(4, 9)), rs(r(4, 5))},
		{"one spans many", rs(r(0, 100)), rs(r(1, 2), r(50, 60), r(99, 200)), rs(r(1, 2), r(50, 60), r(99, 100))},
		{"edges", All(), rs(r(0, 0), r(top, top)), rs(r(0, 0), r(top, top))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Intersect(tc.a, tc.b); !same(got, tc.wantOut) {
				t.Errorf("Intersect(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.wantOut)
			}
			if got := Intersect(tc.b, tc.a); !same(got, tc.wantOut) {
				t.Errorf("Intersect(%v, %v) = %v, want %v", tc.b, tc.a, got, tc.wantOut)
			}
		})
	}
}

func TestContains(t *testing.T) {
	set := rs(r(0, 0), r(5, 7), r(top, top))
	for uid, want := range map[uint32]bool{
		0: true, 1: false, 4: false, 5: true, 6: true, 7: true, 8: false,
		top - 1: false, top: true, 4294967295: false,
	} {
		if got := Contains(set, uid); got != want {
			t.Errorf("Contains(%v, %d) = %v, want %v", set, uid, got, want)
		}
	}
	if Contains(nil, 0) {
		t.Error("Contains(nil, 0) = true")
	}
	if Contains(All(), 4294967295) {
		t.Error("Contains(All(), (uid_t)-1) = true: it is not a uid")
	}
	if !Contains(All(), 0) || !Contains(All(), top) {
		t.Error("All() misses an edge")
	}
}

// TestCovered checks who a VPN covers (docs/routing.md).
func TestCovered(t *testing.T) {
	const owner = 1000
	for _, tc := range []struct {
		name             string
		admin            bool
		trusted, blocked []uint32
		want             []Range
	}{
		// NORMAL: only the owner's own traffic.
		{"normal, no lists: owner only", false, nil, nil, rs(r(owner, owner))},
		{"normal, trusted self: owner", false, []uint32{owner}, nil, rs(r(owner, owner))},
		{"normal, blocked self: nothing", false, nil, []uint32{owner}, nil},
		{"normal, trusted other (denied elsewhere): nothing", false, []uint32{1001}, nil, nil},
		{"normal, blocked other (denied elsewhere): owner", false, nil, []uint32{1001}, rs(r(owner, owner))},
		// ADMIN: every uid, narrowed by the lists.
		{"admin, no lists: all", true, nil, nil, All()},
		{"admin, trusted: exactly them", true, []uint32{1002, 1001, 5, 1001}, nil, rs(r(5, 5), r(1001, 1002))},
		{"admin, trusted need not include owner", true, []uint32{1001}, nil, rs(r(1001, 1001))},
		{"admin, blocked: all but them", true, nil, []uint32{0, 1001}, rs(r(1, 1000), r(1002, top))},
		{"admin, blocked self", true, nil, []uint32{owner}, rs(r(0, owner-1), r(owner+1, top))},
		{"admin, blocked edges", true, nil, []uint32{0, top}, rs(r(1, top-1))},
		{"admin, trusted edges", true, []uint32{top, 0}, nil, rs(r(0, 0), r(top, top))},
		{"admin, empty non-nil lists: all", true, []uint32{}, []uint32{}, All()},
		{"both lists (rejected elsewhere): trusted minus blocked", true, []uint32{5, 6, 7}, []uint32{6}, rs(r(5, 5), r(7, 7))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Covered(owner, tc.admin, tc.trusted, tc.blocked); !same(got, tc.want) {
				t.Errorf("Covered(%d, admin=%v, trusted=%v, blocked=%v) = %v, want %v",
					owner, tc.admin, tc.trusted, tc.blocked, got, tc.want)
			}
		})
	}
	if got := Covered(0, false, nil, nil); !same(got, rs(r(0, 0))) {
		t.Errorf("Covered(0, normal) = %v, want 0-0", got)
	}
	if got := Covered(top, false, nil, nil); !same(got, rs(r(top, top))) {
		t.Errorf("Covered(MaxUID, normal) = %v, want %d-%d", got, top, top)
	}
}

// TestProperties checks the arithmetic against a naive set on random
// inputs. The uids are drawn from two small windows, at 0 and at MaxUID,
// so that collisions, adjacency and both edges come up often, and every
// uid of both windows is probed.
func TestProperties(t *testing.T) {
	const window = 48
	rng := rand.New(rand.NewPCG(1, 2))
	randUID := func() uint32 {
		switch rng.IntN(8) {
		case 0:
			return rng.Uint32() // anywhere, (uid_t)-1 included
		case 1, 2, 3:
			return top - uint32(rng.IntN(window))
		default:
			return uint32(rng.IntN(window))
		}
	}
	var probes []uint32
	for i := range uint32(window + 2) {
		probes = append(probes, i, top-i)
	}
	probes = append(probes, 4294967295, 1<<31, 123456)

	for iter := range 3000 {
		uids := make([]uint32, rng.IntN(40))
		for i := range uids {
			uids[i] = randUID()
		}
		naive := map[uint32]bool{}
		for _, u := range uids {
			if u <= top {
				naive[u] = true
			}
		}
		x := FromUIDs(uids)
		if !same(Normalize(x), x) {
			t.Fatalf("#%d: FromUIDs(%v) = %v is not normalized", iter, uids, x)
		}
		if got := Complement(Complement(x)); !same(got, x) {
			t.Fatalf("#%d: Complement(Complement(%v)) = %v", iter, x, got)
		}
		not := Complement(x)
		sub := randUID()
		without := Subtract(x, sub)
		other := FromUIDs([]uint32{randUID(), randUID(), randUID(), randUID()})
		both := Intersect(x, other)
		for _, p := range probes {
			if got := Contains(x, p); got != naive[p] {
				t.Fatalf("#%d: Contains(FromUIDs(%v), %d) = %v, naive set says %v", iter, uids, p, got, naive[p])
			}
			if got, want := Contains(not, p), !naive[p] && p <= top; got != want {
				t.Fatalf("#%d: Contains(Complement(%v), %d) = %v, want %v", iter, x, p, got, want)
			}
			if got, want := Contains(without, p), naive[p] && p != sub; got != want {
				t.Fatalf("#%d: Contains(Subtract(%v, %d), %d) = %v, want %v", iter, x, sub, p, got, want)
			}
			if got, want := Contains(both, p), naive[p] && Contains(other, p); got != want {
				t.Fatalf("#%d: Contains(Intersect(%v, %v), %d) = %v, want %v", iter, x, other, p, got, want)
			}
		}
		for _, out := range [][]Range{not, without, both} {
			if !same(Normalize(out), out) {
				t.Fatalf("#%d: result %v is not normalized", iter, out)
			}
		}
	}
}
