package config

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
)

// parseIP parses an IP address as vpnd accepts it anywhere: no zone, and
// IPv4 written as IPv4, not as an IPv4-mapped IPv6 address (which the
// kernel would treat as IPv6 and never match against IPv4 traffic).
func parseIP(s string, p path) (netip.Addr, error) {
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

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// parseCIDR parses "address/prefixLength", keeping host bits. The prefix
// length must be minBits up to the family's maximum, written in decimal
// without leading zeros.
func parseCIDR(s string, p path, minBits int64) (netip.Prefix, error) {
	addr, bitsPart, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, invalid(p, "%q is not in CIDR form address/prefixLength", s)
	}
	a, err := parseIP(addr, p)
	if err != nil {
		return netip.Prefix{}, err
	}
	if bitsPart == "" || !isDigits(bitsPart) || (len(bitsPart) > 1 && bitsPart[0] == '0') {
		return netip.Prefix{}, invalid(p, "%q has an invalid prefix length %q", s, bitsPart)
	}
	bits, perr := strconv.ParseInt(bitsPart, 10, 64)
	if perr != nil || bits < minBits || bits > int64(a.BitLen()) {
		return netip.Prefix{}, invalid(p, "prefix length %s out of range %d-%d", bitsPart, minBits, a.BitLen())
	}
	return netip.PrefixFrom(a, int(bits)), nil
}

// netAddress reads the NetAddress object at d. family, if given, must be
// 1 or 2 and match the address. port is part of OpenHarmony's shape; it is
// type-checked and ignored. With allowNone, an empty or unspecified
// address means "no address" and returns the zero Addr: OpenHarmony apps
// send {"address":""} or "0.0.0.0" for a route without a gateway.
func netAddress(d *decoder, at path, allowNone bool) (netip.Addr, error) {
	var f [3]jsontext.Value
	if err := d.object(at, []string{"address", "family", "port"}, func(i int) { f[i] = d.next() }); err != nil {
		return netip.Addr{}, err
	}
	addr, family, port := f[0], f[1], f[2]
	switch {
	case absent(addr):
		return netip.Addr{}, invalid(at.key("address"), "required")
	case addr.Kind() != '"':
		return netip.Addr{}, invalid(at.key("address"), "expected string, got %s", kind(addr))
	}
	var a netip.Addr
	if s := text(addr); !allowNone || s != "" {
		var err error
		if a, err = parseIP(s, at.key("address")); err != nil {
			return netip.Addr{}, err
		}
	}
	if !absent(family) {
		fam, _, err := integer(family, at.key("family"))
		switch {
		case err != nil:
			return netip.Addr{}, err
		case fam != 1 && fam != 2: // OpenHarmony's values
			return netip.Addr{}, invalid(at.key("family"), "%s is not 1 (IPv4) or 2 (IPv6)", family)
		case a.IsValid() && (fam == 1) != a.Is4():
			return netip.Addr{}, invalid(at.key("family"), "%d does not match %s address %s", fam, familyName(a), a)
		}
	}
	if !absent(port) {
		if _, err := bounded(port, at.key("port"), 0, 65535); err != nil {
			return netip.Addr{}, err
		}
	}
	if allowNone && a.IsUnspecified() {
		return netip.Addr{}, nil
	}
	return a, nil
}

// linkAddress reads the LinkAddress object {address: NetAddress,
// prefixLength} at d, keeping host bits. prefixLength must be minBits up
// to the family's maximum.
func linkAddress(d *decoder, at path, minBits int64) (netip.Prefix, error) {
	var addr nested[netip.Addr]
	var raw, bits jsontext.Value
	err := d.object(at, []string{"address", "prefixLength"}, func(i int) {
		switch {
		case i == 0 && d.PeekKind() == '{':
			addr.set(netAddress(d, at.key("address"), false))
		case i == 0:
			raw = d.next()
		default:
			bits = d.next()
		}
	})
	if err != nil {
		return netip.Prefix{}, err
	}
	a, err := addr.check(raw, at.key("address"), "NetAddress", true)
	if err != nil {
		return netip.Prefix{}, err
	}
	if absent(bits) {
		return netip.Prefix{}, invalid(at.key("prefixLength"), "required")
	}
	n, err := bounded(bits, at.key("prefixLength"), minBits, int64(a.BitLen()))
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, int(n)), nil
}

// nested is an object inside an object, read in place as the outer one is
// read; its result waits for its turn among the outer object's checks.
type nested[T any] struct {
	read bool // it was an object
	v    T
	err  error
}

func (n *nested[T]) set(v T, err error) { n.read, n.v, n.err = true, v, err }

// check returns the nested object's value, or the error due for the
// member: raw is its value when it was not an object.
func (n *nested[T]) check(raw jsontext.Value, at path, typ string, required bool) (T, error) {
	var none T
	switch {
	case n.read:
		return n.v, n.err
	case !absent(raw):
		return none, invalid(at, "expected %s object, got %s", typ, kind(raw))
	case required:
		return none, invalid(at, "required")
	}
	return none, nil
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
	if hostBits := ^uint32(0) >> p.Bits(); a.Is4() && p.Bits() <= 30 {
		switch binary.BigEndian.Uint32(a.AsSlice()) & hostBits {
		case 0:
			return "the network address"
		case hostBits:
			return "the broadcast address"
		}
	}
	return ""
}
