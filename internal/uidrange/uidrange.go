// Package uidrange is the uid-set arithmetic behind vpnd's policy rules
// (docs/routing.md).
//
// The kernel matches rules by `uidrange A-B`, so the set of uids a VPN
// covers is kept as a list of inclusive ranges: one rule per range. Every
// function here accepts ranges in any order, overlapping or not, and
// returns them normalized: sorted, disjoint, with adjacent ranges merged,
// and nil when the set is empty. That keeps the rule count minimal and
// makes two equal sets compare equal.
package uidrange

import (
	"cmp"
	"fmt"
	"slices"
)

// MaxUID is the largest uid. (uid_t)-1, 4294967295, is not a uid: the
// kernel and setresuid(2) use it to mean "unchanged", so no process can
// run as it and no rule needs to cover it.
const MaxUID = 4294967294

// Range is the inclusive uid range Start-End, as in `ip rule ... uidrange
// Start-End`. A range with Start > End is empty.
type Range struct {
	Start, End uint32
}

// String renders the range the way `ip rule` does: "A-B".
func (r Range) String() string { return fmt.Sprintf("%d-%d", r.Start, r.End) }

// All is every uid: [0, MaxUID].
func All() []Range { return []Range{{0, MaxUID}} }

// FromUIDs returns the uids as normalized ranges: sorted, deduplicated,
// runs of consecutive uids merged (5, 6, 7 become 5-7). Values above
// MaxUID are not uids and are dropped. The input is not modified.
func FromUIDs(uids []uint32) []Range {
	sorted := slices.Clone(uids)
	slices.Sort(sorted)
	var out []Range
	for _, u := range sorted {
		if u > MaxUID {
			break // sorted: everything after is above MaxUID too
		}
		if n := len(out); n > 0 && u <= out[n-1].End+1 {
			// A duplicate or the next uid of the current run. End+1
			// cannot overflow: End <= MaxUID < MaxUint32.
			out[n-1].End = u
			continue
		}
		out = append(out, Range{u, u})
	}
	return out
}

// Normalize returns rs sorted, with empty ranges dropped, ends above MaxUID
// clamped to it, and overlapping or adjacent ranges merged. The input is
// not modified.
func Normalize(rs []Range) []Range {
	var clean []Range
	for _, r := range rs {
		if r.End > MaxUID {
			r.End = MaxUID
		}
		if r.Start > r.End {
			continue
		}
		clean = append(clean, r)
	}
	slices.SortFunc(clean, func(a, b Range) int { return cmp.Compare(a.Start, b.Start) })
	var out []Range
	for _, r := range clean {
		if n := len(out); n > 0 && r.Start <= out[n-1].End+1 {
			out[n-1].End = max(out[n-1].End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Complement returns the uids in [0, MaxUID] that rs does not contain.
func Complement(rs []Range) []Range {
	var out []Range
	next := uint64(0) // first uid not yet accounted for; uint64 so MaxUID+1 fits
	for _, r := range Normalize(rs) {
		if uint64(r.Start) > next {
			out = append(out, Range{uint32(next), r.Start - 1})
		}
		next = uint64(r.End) + 1
	}
	if next <= MaxUID {
		out = append(out, Range{uint32(next), MaxUID})
	}
	return out
}

// Subtract returns rs without uid, splitting the range that held it.
func Subtract(rs []Range, uid uint32) []Range {
	var out []Range
	for _, r := range Normalize(rs) {
		if uid < r.Start || uid > r.End {
			out = append(out, r)
			continue
		}
		if uid > r.Start {
			out = append(out, Range{r.Start, uid - 1})
		}
		if uid < r.End {
			out = append(out, Range{uid + 1, r.End})
		}
	}
	return out
}

// Intersect returns the uids that both a and b contain.
func Intersect(a, b []Range) []Range {
	a, b = Normalize(a), Normalize(b)
	var out []Range
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].Start, b[j].Start), min(a[i].End, b[j].End)
		if lo <= hi {
			out = append(out, Range{lo, hi})
		}
		// Advance whichever range ends first; the other may still
		// overlap the next one.
		if a[i].End < b[j].End {
			i++
		} else {
			j++
		}
	}
	return out
}

// Contains reports whether some range of rs holds uid.
func Contains(rs []Range, uid uint32) bool {
	for _, r := range rs {
		if r.Start <= uid && uid <= r.End && uid <= MaxUID {
			return true
		}
	}
	return false
}

// Covered returns the uids whose traffic enters a VPN (docs/routing.md).
//
// A NORMAL owner's VPN carries only the owner's own traffic, as on
// OpenHarmony, where an app's VPN covers only its own user. An ADMIN
// owner's VPN carries every uid's, narrowed by the application lists:
// trusted keeps exactly the listed uids, blocked removes them.
//
// The lists narrow the base set rather than replace it, so a NORMAL owner
// can never cover another user here even if the caller's own check (201
// for naming other users) were missing: trusted=[self] covers the owner,
// blocked=[self] covers nothing, and any other uid in the lists has no
// effect. Setting both lists is rejected by config validation; if both
// arrive anyway, the result is trusted minus blocked.
func Covered(ownerUID uint32, admin bool, trusted, blocked []uint32) []Range {
	set := All()
	if !admin {
		set = FromUIDs([]uint32{ownerUID})
	}
	if len(trusted) > 0 {
		set = Intersect(set, FromUIDs(trusted))
	}
	if len(blocked) > 0 {
		set = Intersect(set, Complement(FromUIDs(blocked)))
	}
	return set
}
