package config

import (
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
)

// OpenHarmony's NetAddress family values.
const (
	familyIPv4 = 1
	familyIPv6 = 2
)

// parseIP parses an IP address as vpnd accepts it anywhere: no zone, and
// IPv4 written as IPv4, not as an IPv4-mapped IPv6 address (which the
// kernel would treat as IPv6 and never match against IPv4 traffic).
func parseIP(s, path string) (netip.Addr, error) {
	if strings.Contains(s, "%") {
		return netip.Addr{}, invalid(path, "%q has a zone; zones are not allowed", s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, invalid(path, "%q is not an IP address", s)
	}
	if a.Is4In6() {
		return netip.Addr{}, invalid(path, "%q is an IPv4-mapped IPv6 address; write it as %s", s, a.Unmap())
	}
	return a, nil
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
func parseCIDR(s, path string, minBits int) (netip.Prefix, error) {
	addrPart, bitsPart, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, invalid(path, "%q is not in CIDR form address/prefixLength", s)
	}
	a, err := parseIP(addrPart, path)
	if err != nil {
		return netip.Prefix{}, err
	}
	if bitsPart == "" || !isDigits(bitsPart) || (len(bitsPart) > 1 && bitsPart[0] == '0') {
		return netip.Prefix{}, invalid(path, "%q has an invalid prefix length %q", s, bitsPart)
	}
	bits, err := strconv.Atoi(bitsPart)
	if err != nil || bits < minBits || bits > maxBits(a) {
		return netip.Prefix{}, invalid(path, "prefix length %s out of range %d-%d", bitsPart, minBits, maxBits(a))
	}
	return netip.PrefixFrom(a, bits), nil
}

// readNetAddress decodes OpenHarmony's NetAddress {address, family?, port?}.
// family, if given, must be 1 or 2 and match the address. port is part of
// OpenHarmony's shape; it is type-checked and ignored. With allowNone, an
// empty or unspecified address means "no address" and returns the zero
// Addr: OpenHarmony apps send {"address":""} or "0.0.0.0" for a route
// without a gateway.
func readNetAddress(raw json.RawMessage, path string, allowNone bool) (netip.Addr, error) {
	o, err := readObject(raw, path, "NetAddress object", "address", "family", "port")
	if err != nil {
		return netip.Addr{}, err
	}
	addrRaw := o.get("address")
	if addrRaw == nil {
		return netip.Addr{}, invalid(o.at("address"), "required")
	}
	s, err := readString(addrRaw, o.at("address"))
	if err != nil {
		return netip.Addr{}, err
	}
	var a netip.Addr
	if !(allowNone && s == "") {
		if a, err = parseIP(s, o.at("address")); err != nil {
			return netip.Addr{}, err
		}
	}
	if famRaw := o.get("family"); famRaw != nil {
		lit, fam, _, err := intLiteral(famRaw, o.at("family"))
		if err != nil {
			return netip.Addr{}, err
		}
		if fam != familyIPv4 && fam != familyIPv6 {
			return netip.Addr{}, invalid(o.at("family"), "%s is not 1 (IPv4) or 2 (IPv6)", lit)
		}
		if a.IsValid() && (fam == familyIPv4) != a.Is4() {
			return netip.Addr{}, invalid(o.at("family"), "%d does not match %s address %s", fam, familyName(a), a)
		}
	}
	if portRaw := o.get("port"); portRaw != nil {
		if _, err := readInt(portRaw, o.at("port"), 0, 65535); err != nil {
			return netip.Addr{}, err
		}
	}
	if allowNone && a.IsUnspecified() {
		return netip.Addr{}, nil
	}
	return a, nil
}

// readLinkAddress decodes OpenHarmony's LinkAddress {address: NetAddress,
// prefixLength}, keeping host bits. prefixLength must be minBits up to the
// family's maximum.
func readLinkAddress(raw json.RawMessage, path string, minBits int) (netip.Prefix, error) {
	o, err := readObject(raw, path, "LinkAddress object", "address", "prefixLength")
	if err != nil {
		return netip.Prefix{}, err
	}
	addrRaw := o.get("address")
	if addrRaw == nil {
		return netip.Prefix{}, invalid(o.at("address"), "required")
	}
	a, err := readNetAddress(addrRaw, o.at("address"), false)
	if err != nil {
		return netip.Prefix{}, err
	}
	bitsRaw := o.get("prefixLength")
	if bitsRaw == nil {
		return netip.Prefix{}, invalid(o.at("prefixLength"), "required")
	}
	bits, err := readInt(bitsRaw, o.at("prefixLength"), int64(minBits), int64(maxBits(a)))
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, int(bits)), nil
}

// readPrefix decodes a CIDR string or a LinkAddress object, keeping host
// bits; the prefix length must be at least minBits.
func readPrefix(raw json.RawMessage, path string, minBits int) (netip.Prefix, error) {
	switch kindOf(raw) {
	case "string":
		s, err := readString(raw, path)
		if err != nil {
			return netip.Prefix{}, err
		}
		return parseCIDR(s, path, minBits)
	case "object":
		return readLinkAddress(raw, path, minBits)
	default:
		return netip.Prefix{}, invalid(path, "expected CIDR string or LinkAddress object, got %s", kindOf(raw))
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
