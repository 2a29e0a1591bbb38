// Package firewall keeps vpnd's own nftables table: the output filter that
// enforces lockdown and the other family's fail-closed where policy routing
// cannot (docs/leaks.md, docs/routing.md).
//
// Policy rules never see what the local table routes (multicast, subnet and
// limited broadcast) nor multicast and limited broadcast from a socket with
// a bound source address or device: the kernel skips the rules for those.
// A kill switch therefore has to be a firewall, as Android's netd and
// Mullvad's are. The filter is one base chain at the output hook of an
// `inet` table that belongs to vpnd alone:
//
//	table inet vpnd {
//		set lockdown { type uid; flags constant,interval; elements = { 2101 } }
//		chain output {
//			type filter hook output priority filter; policy accept;
//			meta oiftype loopback accept
//			oifname "vpn-tun" accept
//			meta mark & 0x00020000 != 0x00000000 accept
//			meta skuid @lockdown drop
//		}
//	}
//
// vpnd writes the whole table in one transaction (Apply) and compares the
// kernel's table with what it would write (Holds); it never touches another
// table and never flushes the ruleset. The table stays in the kernel when
// vpnd exits or dies, so lockdown keeps failing closed.
package firewall

import (
	"fmt"
	"strings"

	"github.com/vpnd/vpnd/internal/uidrange"
)

// UIDRange is an inclusive range of uids, Start-End, as policy rules use.
type UIDRange = uidrange.Range

// Spec is what vpnd's table must hold. The zero Spec (or any Spec without
// uids) means "no table": a table that drops nothing is not kept.
type Spec struct {
	// Lockdown's uids may send only by loopback, by AllowIfname, or with
	// ProtectMark: every family.
	Lockdown []UIDRange
	// FailClosedV4 is the same for IPv4 packets only: the uids that a VPN
	// which does not carry IPv4 covers.
	FailClosedV4 []UIDRange
	// FailClosedV6 is the same for IPv6 packets only.
	FailClosedV6 []UIDRange
	// AllowIfname is the VPN's link: packets leaving by it pass. "" for
	// none (no VPN is up). Matched by name, so that the rule holds for
	// the next VPN's link of the same name too.
	AllowIfname string
	// ProtectMark: packets whose mark has a bit of it set pass (sockets
	// vpnd protected). 0 for none.
	ProtectMark uint32
}

// Empty reports whether s lists no uid, so that vpnd's table must not
// exist.
func (s Spec) Empty() bool {
	return len(s.Lockdown) == 0 && len(s.FailClosedV4) == 0 && len(s.FailClosedV6) == 0
}

// Names of the table's objects. They appear in `nft list table inet vpnd`,
// so they say what they hold.
const (
	chainName      = "output"
	setLockdown    = "lockdown"
	setFailClosed4 = "failclosed_v4"
	setFailClosed6 = "failclosed_v6"
)

// maxRanges caps the ranges of one set. 256 listed users, or the
// complement of 256 users (an ADMIN VPN's blocked list), are at most 257;
// the cap keeps a set's elements inside one netlink attribute (64 KiB).
const maxRanges = 1024

// probeSuffix names the table Open's check adds and deletes: NAME_probe.
const probeSuffix = "_probe"

// maxNameLen is the longest table name vpnd accepts: the kernel allows 255
// bytes (NFT_NAME_MAXLEN - 1), and the probe table's name must fit too.
const maxNameLen = 255 - len(probeSuffix)

// checkTableName accepts what nft can name without quoting: a letter or
// '_', then letters, digits, '_' and '.'. `nft list table inet NAME` then
// works as written in the docs and logs.
func checkTableName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("nftables table name %q: want 1 to %d characters", name, maxNameLen)
	}
	for i, c := range name {
		letter := c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
		if letter || (i > 0 && (c == '.' || ('0' <= c && c <= '9'))) {
			continue
		}
		return fmt.Errorf("nftables table name %q: character %q at %d; use letters, digits, '_' and '.', starting with a letter or '_'", name, c, i)
	}
	return nil
}

// normalized is a Spec checked and put into the one form both Apply and
// Holds compare: ranges sorted, merged, and clamped to uidrange.MaxUID.
type normalized struct {
	lockdown, failClosed4, failClosed6 []UIDRange
	allowIfname                        string
	protectMark                        uint32
}

func (s Spec) normalize() (normalized, error) {
	n := normalized{allowIfname: s.AllowIfname, protectMark: s.ProtectMark}
	for _, l := range []struct {
		name string
		in   []UIDRange
		out  *[]UIDRange
	}{
		{"Lockdown", s.Lockdown, &n.lockdown},
		{"FailClosedV4", s.FailClosedV4, &n.failClosed4},
		{"FailClosedV6", s.FailClosedV6, &n.failClosed6},
	} {
		// A backwards range would silently leave its uids free: a filter
		// that fails open. Refuse it instead of dropping it.
		for _, r := range l.in {
			if r.Start > r.End {
				return normalized{}, fmt.Errorf("%s: uid range %d-%d ends before it starts", l.name, r.Start, r.End)
			}
			if r.Start > uidrange.MaxUID {
				return normalized{}, fmt.Errorf("%s: uid range %d-%d: %d is not a uid", l.name, r.Start, r.End, r.Start)
			}
		}
		*l.out = uidrange.Normalize(l.in)
		if len(*l.out) > maxRanges {
			return normalized{}, fmt.Errorf("%s: %d uid ranges, at most %d", l.name, len(*l.out), maxRanges)
		}
	}
	if s.AllowIfname != "" {
		if err := checkIfname(s.AllowIfname); err != nil {
			return normalized{}, fmt.Errorf("AllowIfname: %w", err)
		}
	}
	return n, nil
}

// ifnameSize is the kernel's IFNAMSIZ: a link name and its NUL.
const ifnameSize = 16

// checkIfname applies the kernel's rules for a link name (dev_valid_name):
// 1 to 15 bytes, not "." or "..", no '/', ':', NUL or white space. nft
// prints it in double quotes, so a quote or backslash is refused too.
func checkIfname(name string) error {
	if name == "" || len(name) >= ifnameSize || name == "." || name == ".." {
		return fmt.Errorf("link name %q: want 1 to %d bytes, not \".\" or \"..\"", name, ifnameSize-1)
	}
	if i := strings.IndexAny(name, "/: \t\n\v\f\r\x00\"\\"); i >= 0 {
		return fmt.Errorf("link name %q: character %q not allowed", name, name[i])
	}
	return nil
}

// Render returns the table that Apply(s) writes into table `inet NAME` as
// `nft list table inet NAME` prints it (nft 1.0), for logs, docs and tests.
// An empty Spec renders as "" (no table). An invalid Spec renders its error
// as an nft comment.
func Render(name string, s Spec) string {
	n, err := s.normalize()
	if err != nil {
		return "# invalid: " + err.Error() + "\n"
	}
	if s.Empty() {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", name)
	for _, set := range n.sets() {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype uid\n\t\tflags constant,interval\n\t\telements = { %s }\n\t}\n\n",
			set.name, renderRanges(set.uids))
	}
	fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook output priority filter; policy accept;\n", chainName)
	for _, r := range n.rules() {
		fmt.Fprintf(&b, "\t\t%s\n", r.text)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

func renderRanges(rs []UIDRange) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		if r.Start == r.End {
			parts[i] = fmt.Sprint(r.Start)
		} else {
			parts[i] = r.String()
		}
	}
	return strings.Join(parts, ", ")
}
