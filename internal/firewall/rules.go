package firewall

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// uidSet is one named set of the table: the uids one drop rule matches.
type uidSet struct {
	name string
	uids []UIDRange
}

// sets lists the table's sets, in the order Render prints them. A list
// without uids has no set (and no rule).
func (n normalized) sets() []uidSet {
	var out []uidSet
	for _, s := range []uidSet{
		{setLockdown, n.lockdown},
		{setFailClosed4, n.failClosed4},
		{setFailClosed6, n.failClosed6},
	} {
		if len(s.uids) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// rule is one rule of the output chain: its expressions, and the line nft
// prints for them.
type rule struct {
	text  string
	exprs []expr.Any
}

// rules lists the output chain's rules in order. The accepts come first:
// a packet that may leave ends vpnd's chain there (other tables' chains
// still run, and their drops still drop). Then one drop per set.
//
// The expressions are exactly what nft generates for the printed line, so
// that `nft list table` shows the line and Holds can compare the kernel's
// rules expression by expression.
func (n normalized) rules() []rule {
	rs := []rule{{
		// Local delivery: by type, not by name, so it holds whatever the
		// loopback link is called (ARPHRD_LOOPBACK).
		"meta oiftype loopback accept",
		[]expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFTYPE, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint16(unix.ARPHRD_LOOPBACK)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
	}}
	if n.allowIfname != "" {
		name := make([]byte, ifnameSize) // the kernel compares all of IFNAMSIZ
		copy(name, n.allowIfname)
		rs = append(rs, rule{
			fmt.Sprintf("oifname %q accept", n.allowIfname),
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
				&expr.Verdict{Kind: expr.VerdictAccept},
			},
		})
	}
	if n.protectMark != 0 {
		text := fmt.Sprintf("meta mark & 0x%08x != 0x00000000 accept", n.protectMark)
		if n.protectMark == 0xffffffff {
			text = "meta mark != 0x00000000 accept" // nft leaves out a mask of all ones
		}
		rs = append(rs, rule{
			text,
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(n.protectMark), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
				&expr.Verdict{Kind: expr.VerdictAccept},
			},
		})
	}
	for _, s := range n.sets() {
		var family []expr.Any
		text := fmt.Sprintf("meta skuid @%s drop", s.name)
		switch s.name {
		case setFailClosed4:
			family = nfproto(unix.NFPROTO_IPV4)
			text = "meta nfproto ipv4 " + text
		case setFailClosed6:
			family = nfproto(unix.NFPROTO_IPV6)
			text = "meta nfproto ipv6 " + text
		}
		// The socket's owner (its file's fsuid, set when the socket was
		// created: the same uid that `ip rule uidrange` sees). A packet
		// without a full socket of this namespace (the kernel's own
		// neighbour discovery and MLD, TIME_WAIT replies, forwarded
		// traffic) has no skuid, and the rule does not match. Interval
		// sets hold big-endian keys; skuid is host order: hton first.
		rs = append(rs, rule{text, append(family,
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
			&expr.Lookup{SourceRegister: 1, SetName: s.name},
			&expr.Verdict{Kind: expr.VerdictDrop},
		)})
	}
	return rs
}

func nfproto(p uint8) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// elements encodes uid ranges as an interval set's elements: each range
// A-B is a start key A and an end key B+1 (the first uid after it), big
// endian, as nft writes them. B+1 cannot overflow: B <= uidrange.MaxUID.
func elements(rs []UIDRange) []nftables.SetElement {
	els := make([]nftables.SetElement, 0, 2*len(rs))
	for _, r := range rs {
		els = append(els,
			nftables.SetElement{Key: binaryutil.BigEndian.PutUint32(r.Start)},
			nftables.SetElement{Key: binaryutil.BigEndian.PutUint32(r.End + 1), IntervalEnd: true})
	}
	return els
}

// ranges decodes an interval set's elements back into uid ranges, whatever
// their order. An end with no start before it (nft writes one for 0) opens
// nothing; a start with no end runs to the largest key. ok is false when
// the elements are not a well-formed list of uid intervals.
func ranges(els []nftables.SetElement) (rs []UIDRange, ok bool) {
	type key struct {
		v   uint64
		end bool
	}
	keys := make([]key, 0, len(els))
	for _, e := range els {
		if len(e.Key) != 4 || e.Val != nil || e.KeyEnd != nil || e.VerdictData != nil || e.Timeout != 0 {
			return nil, false
		}
		keys = append(keys, key{uint64(binaryutil.BigEndian.Uint32(e.Key)), e.IntervalEnd})
	}
	// By key; at one key an end comes before a start (a range that ends
	// where the next begins).
	slices.SortFunc(keys, func(a, b key) int {
		if c := cmp.Compare(a.v, b.v); c != 0 {
			return c
		}
		return cmp.Compare(boolRank(!a.end), boolRank(!b.end))
	})
	open := false
	var start uint64
	for _, k := range keys {
		switch {
		case !k.end && !open:
			open, start = true, k.v
		case k.end && open:
			if k.v == 0 {
				return nil, false
			}
			rs = append(rs, UIDRange{Start: uint32(start), End: uint32(k.v - 1)})
			open = false
		case !k.end && open:
			return nil, false // two starts in a row
		}
		// An end without a start: nft's marker below the first range.
	}
	if open {
		rs = append(rs, UIDRange{Start: uint32(start), End: 0xffffffff})
	}
	return rs, true
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}
