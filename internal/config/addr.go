package config

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vpnd/vpnd/internal/errs"
)

// OpenHarmony's NetAddress family values.
const (
	familyIPv4 = 1
	familyIPv6 = 2
)

// parseIP parses an IP address as vpnd accepts it anywhere: no zone, and
// IPv4 written as IPv4, not as an IPv4-mapped IPv6 address (which the
// kernel would treat as IPv6 and never match against IPv4 traffic).
func parseIP(s string, p path) (netip.Addr, *errs.Error) {
	if a, ok := parseDottedQuad(s); ok {
		return a, nil
	}
	if strings.IndexByte(s, '%') >= 0 {
		return netip.Addr{}, invalid(p, "%q has a zone; zones are not allowed", s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, invalid(p, "%q is not an IP address", s)
	}
	if a.Is4In6() {
		return netip.Addr{}, invalid(p, "%q is an IPv4-mapped IPv6 address; write it as %s", s, a.Unmap())
	}
	return a, nil
}

// parseDottedQuad parses s if it is an IPv4 address in dotted-quad form as
// netip.ParseAddr accepts it (four decimal fields of 0-255, no leading
// zeros), and reports whether it did; for anything else the caller asks
// netip.ParseAddr. It does the common case in a quarter of netip's time,
// which counts with 10,000 routes.
func parseDottedQuad(s string) (netip.Addr, bool) {
	var ip [4]byte
	field, val, digits := 0, 0, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			if digits == 1 && val == 0 {
				return netip.Addr{}, false // a leading zero
			}
			val = val*10 + int(c-'0')
			digits++
			if val > 255 {
				return netip.Addr{}, false
			}
		case c == '.' && digits > 0 && field < 3:
			ip[field] = byte(val)
			field, val, digits = field+1, 0, 0
		default:
			return netip.Addr{}, false
		}
	}
	if field != 3 || digits == 0 {
		return netip.Addr{}, false
	}
	ip[3] = byte(val)
	return netip.AddrFrom4(ip), true
}

// maxBits is the longest prefix of a's family.
func maxBits(a netip.Addr) int {
	if a.Is4() {
		return 32
	}
	return 128
}

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// parseCIDR parses "address/prefixLength", keeping host bits. The prefix
// length must be minBits up to the family's maximum, written in decimal
// without leading zeros.
func parseCIDR(s string, p path, minBits int) (netip.Prefix, *errs.Error) {
	slash := strings.IndexByte(s, '/')
	if slash < 0 {
		return netip.Prefix{}, invalid(p, "%q is not in CIDR form address/prefixLength", s)
	}
	a, err := parseIP(s[:slash], p)
	if err != nil {
		return netip.Prefix{}, err
	}
	bitsPart := s[slash+1:]
	if bitsPart == "" || !isDigits(bitsPart) || (len(bitsPart) > 1 && bitsPart[0] == '0') {
		return netip.Prefix{}, invalid(p, "%q has an invalid prefix length %q", s, bitsPart)
	}
	bits, perr := strconv.Atoi(bitsPart)
	if perr != nil || bits < minBits || bits > maxBits(a) {
		return netip.Prefix{}, invalid(p, "prefix length %s out of range %d-%d", bitsPart, minBits, maxBits(a))
	}
	return netip.PrefixFrom(a, bits), nil
}

// netAddress reads the NetAddress object at d. family, if given, must be 1
// or 2 and match the address. port is part of OpenHarmony's shape; it is
// type-checked and ignored. With allowNone, an empty or unspecified
// address means "no address" and returns the zero Addr: OpenHarmony apps
// send {"address":""} or "0.0.0.0" for a route without a gateway.
func netAddress(d *dec, p path, allowNone bool) (netip.Addr, *errs.Error) {
	var f netAddressRead
	if d.openObject() {
		for i := -1; ; {
			var name string
			name, i = d.member(netAddressMembers, i+1)
			start := d.i
			switch {
			case !f.m.note(p, name, i):
				d.skip()
			case i == 0 && d.peek() == '"':
				f.s = d.text()
				f.addr = d.b[start:d.i]
			case i == 0:
				f.addr, _ = d.skip()
			case i == 1:
				f.family, _ = d.skip()
			default:
				f.port, _ = d.skip()
			}
			if !d.next('}') {
				break
			}
		}
	}
	if d.bad {
		return netip.Addr{}, nil
	}
	return f.check(p, allowNone)
}

// netAddressRead is a NetAddress object as read, before its checks.
type netAddressRead struct {
	m                  members
	addr, family, port []byte // each member's value as written; nil if absent
	s                  string // addr's value, when it is a string
}

// check runs a NetAddress's checks in their order (see netAddress).
func (f *netAddressRead) check(p path, allowNone bool) (netip.Addr, *errs.Error) {
	if f.m.err != nil {
		return netip.Addr{}, f.m.err
	}
	if isAbsent(f.addr) {
		return netip.Addr{}, invalid(p.at(kAddress), "required")
	}
	if k := kindOf(f.addr); k != "string" {
		return netip.Addr{}, invalid(p.at(kAddress), "expected string, got %s", k)
	}
	var a netip.Addr
	if !(allowNone && f.s == "") {
		var err *errs.Error
		if a, err = parseIP(f.s, p.at(kAddress)); err != nil {
			return netip.Addr{}, err
		}
	}
	if !isAbsent(f.family) {
		fam, _, err := intLiteral(f.family, p.at(kFamily))
		if err != nil {
			return netip.Addr{}, err
		}
		if fam != familyIPv4 && fam != familyIPv6 {
			return netip.Addr{}, invalid(p.at(kFamily), "%s is not 1 (IPv4) or 2 (IPv6)", f.family)
		}
		if a.IsValid() && (fam == familyIPv4) != a.Is4() {
			return netip.Addr{}, invalid(p.at(kFamily), "%d does not match %s address %s", fam, familyName(a), a)
		}
	}
	if !isAbsent(f.port) {
		if _, err := readInt(f.port, p.at(kPort), 0, 65535); err != nil {
			return netip.Addr{}, err
		}
	}
	if allowNone && a.IsUnspecified() {
		return netip.Addr{}, nil
	}
	return a, nil
}

// The members of OpenHarmony's NetAddress and LinkAddress, in the order
// they are checked.
var (
	netAddressMembers  = []string{"address", "family", "port"}
	linkAddressMembers = []string{"address", "prefixLength"}
)

// linkAddress reads the LinkAddress object {address: NetAddress,
// prefixLength} at d, keeping host bits. prefixLength must be minBits up
// to the family's maximum.
func linkAddress(d *dec, p path, minBits int) (netip.Prefix, *errs.Error) {
	var f linkAddressRead
	if d.openObject() {
		for i := -1; ; {
			var name string
			name, i = d.member(linkAddressMembers, i+1)
			start := d.i
			switch {
			case !f.m.note(p, name, i):
				d.skip()
			case i == 0 && d.peek() == '{':
				f.a, f.addrErr = netAddress(d, p.at(kAddress), false)
				f.addrRead, f.addr = true, d.b[start:d.i]
			case i == 0:
				f.addr, _ = d.skip()
			default:
				f.bits, _ = d.skip()
			}
			if !d.next('}') {
				break
			}
		}
	}
	if d.bad {
		return netip.Prefix{}, nil
	}
	return f.check(p, minBits)
}

// linkAddressRead is a LinkAddress object as read, before its checks.
type linkAddressRead struct {
	m          members
	addr, bits []byte      // each member's value as written; nil if absent
	addrRead   bool        // address was an object, read into a or addrErr
	a          netip.Addr  //
	addrErr    *errs.Error //
}

// check runs a LinkAddress's checks in their order (see linkAddress).
func (f *linkAddressRead) check(p path, minBits int) (netip.Prefix, *errs.Error) {
	switch {
	case f.m.err != nil:
		return netip.Prefix{}, f.m.err
	case isAbsent(f.addr):
		return netip.Prefix{}, invalid(p.at(kAddress), "required")
	case !f.addrRead:
		return netip.Prefix{}, invalid(p.at(kAddress), "expected NetAddress object, got %s", kindOf(f.addr))
	case f.addrErr != nil:
		return netip.Prefix{}, f.addrErr
	case isAbsent(f.bits):
		return netip.Prefix{}, invalid(p.at(kPrefixLength), "required")
	}
	bits, err := readInt(f.bits, p.at(kPrefixLength), int64(minBits), int64(maxBits(f.a)))
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(f.a, int(bits)), nil
}

// prefixEntry reads an entry of addresses at d: a CIDR string or a
// LinkAddress object, keeping host bits; the prefix length must be at
// least minBits.
func prefixEntry(d *dec, p path, minBits int) (netip.Prefix, *errs.Error) {
	switch d.peek() {
	case '"':
		s := d.text()
		if d.bad {
			return netip.Prefix{}, nil
		}
		return parseCIDR(s, p, minBits)
	case '{':
		return linkAddress(d, p, minBits)
	default:
		val, _ := d.skip()
		return netip.Prefix{}, invalid(p, "expected CIDR string or LinkAddress object, got %s", kindOf(val))
	}
}

// v4Broadcast returns the broadcast address of an IPv4 prefix.
func v4Broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	u := binary.BigEndian.Uint32(b[:]) | (^uint32(0) >> p.Bits())
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// hostProblem says why a, on the subnet p, cannot be a host address there
// (an interface address or a gateway), or "" if it can.
func hostProblem(a netip.Addr, p netip.Prefix) string {
	switch {
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsMulticast():
		return "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the limited broadcast address"
	}
	// A /31 (RFC 3021) or /32 has no network or broadcast address.
	if a.Is4() && p.Bits() <= 30 {
		if a == p.Masked().Addr() {
			return "the network address"
		}
		if a == v4Broadcast(p) {
			return "the broadcast address"
		}
	}
	return ""
}
