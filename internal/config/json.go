package config

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"unsafe"

	"github.com/vpnd/vpnd/internal/errs"
)

// This file is the JSON reader under Parse. It reads params once, from the
// first byte to the last, and checks the JSON syntax as it goes, exactly as
// encoding/json's Valid would (the same grammar, the same nesting limit;
// invalid UTF-8 inside strings is allowed, as there). The parser reads the
// values it knows in place, as it passes them, so that a config with
// 10,000 routes costs no allocation per route and no second pass. Values
// it cannot use yet, or does not know, are checked and stepped over.
//
// It reads by hand, rather than unmarshalling into a struct, so that every
// wrong type, missing member, unknown member and duplicate member is
// reported with its exact JSON path; and it builds those paths and details
// only when it reports an error.

// maxDepth is encoding/json's nesting limit: a document nested deeper is
// not valid JSON to it, and so not to vpnd.
const maxDepth = 10000

// dec walks a JSON document. Its methods stop at the first syntax error and
// set bad; every caller then returns at once, and Parse answers
// "params: invalid JSON", whatever else it found.
type dec struct {
	b     []byte
	i     int  // the next byte to read
	depth int  // containers open at b[i]
	bad   bool // b is not JSON
	// objects records, for each open container that skip opened, whether
	// it is an object (1) or an array (0).
	objects [maxDepth/64 + 1]uint64
}

func (d *dec) fail() { d.bad, d.i = true, len(d.b) }

// ws steps over white space.
func (d *dec) ws() {
	if d.i < len(d.b) && d.b[d.i] > ' ' {
		return // the usual case: compact JSON
	}
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// peek returns the next byte, or 0 at the end.
func (d *dec) peek() byte {
	if d.i < len(d.b) {
		return d.b[d.i]
	}
	return 0
}

// strPlain marks the bytes that stand for themselves inside a JSON string
// and say nothing about it: printable ASCII other than '"' and '\\'.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// lo8 and hi8 have the lowest and the highest bit of each byte set: for
// testing eight bytes at once, as in "Bit Twiddling Hacks" (a zero byte in
// x sets a high bit of (x-lo8)&^x&hi8).
const (
	lo8 = 0x0101010101010101
	hi8 = 0x8080808080808080
)

// String flags returned by str.
const (
	strEscaped  = 1 << iota // holds a backslash escape
	strNonASCII             // holds a byte above 0x7f
)

// str reads the string at b[i], which must start with '"', and returns its
// content as written, between the quotes, and what the content holds.
func (d *dec) str() (content []byte, flags int) {
	b := d.b
	start := d.i + 1
	i := start
	for {
		// Eight bytes at a time while none of them needs a look: no '"',
		// no '\\', no control character, nothing above 0x7f.
		for i+8 <= len(b) {
			v := binary.LittleEndian.Uint64(b[i:])
			q, s := v^(lo8*'"'), v^(lo8*'\\')
			if ((q-lo8)&^q|(s-lo8)&^s|(v-lo8*0x20)&^v|v)&hi8 != 0 {
				break
			}
			i += 8
		}
		for i < len(b) && strPlain[b[i]] {
			i++
		}
		if i >= len(b) {
			d.fail()
			return nil, 0
		}
		switch c := b[i]; {
		case c == '"':
			d.i = i + 1
			return b[start:i], flags
		case c == '\\':
			flags |= strEscaped
			if i+1 >= len(b) {
				d.fail()
				return nil, 0
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					d.fail()
					return nil, 0
				}
				i += 6
			default:
				d.fail()
				return nil, 0
			}
		case c >= 0x80:
			flags |= strNonASCII
			i++
		default: // a control character
			d.fail()
			return nil, 0
		}
	}
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// num reads the number at b[i]: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *dec) num() {
	b, i := d.b, d.i
	digits := func() bool {
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		d.fail()
		return
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			d.fail()
			return
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			d.fail()
			return
		}
	}
	d.i = i
}

// lit reads the literal word (true, false or null) at b[i].
func (d *dec) lit(word string) {
	if len(d.b)-d.i < len(word) || string(d.b[d.i:d.i+len(word)]) != word {
		d.fail()
		return
	}
	d.i += len(word)
}

// push opens a container at b[i] ('{' or '['), within the nesting limit.
func (d *dec) push(object bool) bool {
	d.depth++
	if d.depth > maxDepth {
		d.fail()
		return false
	}
	if object {
		d.objects[d.depth>>6] |= 1 << (d.depth & 63)
	} else {
		d.objects[d.depth>>6] &^= 1 << (d.depth & 63)
	}
	d.i++
	d.ws()
	return true
}

func (d *dec) inObject() bool { return d.objects[d.depth>>6]&(1<<(d.depth&63)) != 0 }

// openObject enters the object at b[i], which must start with '{'. It
// returns false for an empty object, which it has then read whole;
// otherwise the first member's key comes next.
func (d *dec) openObject() bool { return d.open(true, '}') }

// openArray enters the array at b[i], which must start with '['. It
// returns false for an empty array, which it has then read whole.
func (d *dec) openArray() bool { return d.open(false, ']') }

// open enters an object or array whose closing bracket is end.
func (d *dec) open(object bool, end byte) bool {
	if !d.push(object) {
		return false
	}
	if d.peek() == end {
		d.i++
		d.depth--
		return false
	}
	return true
}

// next reads what follows a member or element of the container being read:
// a ',' (true, another one comes) or the closing bracket (false).
func (d *dec) next(closing byte) bool {
	d.ws()
	switch {
	case d.i >= len(d.b):
		d.fail()
	case d.b[d.i] == ',':
		d.i++
		d.ws()
		return true
	case d.b[d.i] == closing:
		d.i++
		d.depth--
	default:
		d.fail()
	}
	return false
}

// key reads a member's key and the ':' after it, and returns the member's
// name. Without escapes the name is the key's bytes as written (not
// necessarily UTF-8), viewed in place: see view. With escapes it is
// decoded as encoding/json would.
func (d *dec) key() string {
	if d.peek() != '"' {
		d.fail()
		return ""
	}
	start := d.i
	content, flags := d.str()
	if d.bad {
		return ""
	}
	name := view(content)
	if flags&strEscaped != 0 {
		name = decodeString(d.b[start:d.i])
	}
	d.ws()
	if d.peek() != ':' {
		d.fail()
		return ""
	}
	d.i++
	d.ws()
	return name
}

// member reads the key of the next member of an object whose members are
// names, and the ':' after it, and returns the member's name and its index
// in names (-1: none of them). It first tries names[guess] as written
// plainly: members mostly come in the same order, and comparing bytes
// costs a fraction of reading a string.
func (d *dec) member(names []string, guess int) (string, int) {
	if guess < len(names) {
		n := names[guess]
		if end := d.i + len(n) + 2; end < len(d.b) && d.b[d.i] == '"' && d.b[end-1] == '"' &&
			d.b[end] == ':' && string(d.b[d.i+1:end-1]) == n {
			d.i = end + 1
			d.ws()
			return n, guess
		}
	}
	name := d.key()
	for i, n := range names {
		if n == name {
			return name, i
		}
	}
	return name, -1
}

// text reads the string at b[i] and returns its value: viewed in place
// when it is plain ASCII, else decoded as encoding/json would (escapes
// resolved, invalid UTF-8 replaced by U+FFFD).
func (d *dec) text() string {
	start := d.i
	content, flags := d.str()
	if d.bad {
		return ""
	}
	if flags == 0 {
		return view(content)
	}
	return decodeString(d.b[start:d.i])
}

// decodeString decodes a JSON string literal that str has checked.
func decodeString(quoted []byte) string {
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return "" // unreachable: str checked the literal
	}
	return s
}

// view returns b's bytes as a string without copying them. Parse only
// reads params, and nobody writes to them while it runs, so the view
// cannot change under it. A view is only ever inspected (parsed into a
// netip.Addr, compared, quoted into an error detail, which copies it):
// whatever Parse keeps or hands on, such as a search domain or a user name
// for the resolver, is copied first with strings.Clone.
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// skip reads the value at b[i] whatever it is, checking its syntax, and
// returns it as written. For an array it also returns its number of
// elements.
func (d *dec) skip() (val []byte, n int) {
	start := d.i
	switch d.peek() {
	case '"':
		d.str()
	case '{', '[':
		n = d.skipContainer()
	case 't':
		d.lit("true")
	case 'f':
		d.lit("false")
	case 'n':
		d.lit("null")
	default:
		d.num()
	}
	if d.bad {
		return nil, 0
	}
	return d.b[start:d.i], n
}

// skipContainer reads the object or array at b[i] to its end, keeping its
// own stack of open containers in d.objects, and counts the elements of
// the outer container if it is an array.
func (d *dec) skipContainer() (n int) {
	base := d.depth
	for {
		// A value starts at b[i].
		switch d.peek() {
		case '{':
			if !d.openObject() {
				break
			}
			d.key()
			continue
		case '[':
			if !d.openArray() {
				break
			}
			if d.depth == base+1 {
				n++
			}
			continue
		case '"':
			d.str()
		case 't':
			d.lit("true")
		case 'f':
			d.lit("false")
		case 'n':
			d.lit("null")
		default:
			d.num()
		}
		// A value ended: close what ends with it, then go on with the next
		// member or element.
		for !d.bad && d.depth > base {
			object := d.inObject()
			closing := byte(']')
			if object {
				closing = '}'
			}
			if !d.next(closing) {
				continue // closed (or bad)
			}
			if object {
				d.key()
			} else if d.depth == base+1 {
				n++
			}
			break
		}
		if d.bad || d.depth == base {
			return n
		}
	}
}

// valid reports whether b is one JSON value, alone but for white space:
// what encoding/json's Valid reports, without its allocations.
func valid(b []byte) bool {
	d := dec{b: b}
	d.ws()
	d.skip()
	d.ws()
	return !d.bad && d.i == len(b)
}

// path is where a value sits in params, e.g. routes[3].gateway.address.
// It is a small value without pointers, built as the parser descends and
// turned into text only for an error detail.
type path struct {
	member int8  // the index of a member of params in vpnConfigMembers (see memberName); -1: params itself
	n      uint8 // keys in use
	keys   [3]key
	index  int32 // the element of that member's array, or -1
}

// key names a member of a nested object, for paths.
type key uint8

const (
	kAddress key = iota
	kPrefixLength
	kFamily
	kPort
	kDestination
	kGateway
	kIsExcludedRoute
	kInterface
	kHasGateway
	kIsDefaultRoute
)

var keyNames = [...]string{
	kAddress: "address", kPrefixLength: "prefixLength", kFamily: "family", kPort: "port",
	kDestination: "destination", kGateway: "gateway", kIsExcludedRoute: "isExcludedRoute",
	kInterface: "interface", kHasGateway: "hasGateway", kIsDefaultRoute: "isDefaultRoute",
}

// memberPath returns the path of member i of params (-1: params itself).
func memberPath(i int) path { return path{member: int8(i), index: -1} }

// elem returns the path of element i of the array at p.
func (p path) elem(i int) path { p.index = int32(i); return p }

// at returns the path of member k of the object at p.
func (p path) at(k key) path { p.keys[p.n] = k; p.n++; return p }

func (p path) String() string {
	if p.member < 0 {
		return "params"
	}
	s := memberName(int(p.member))
	if p.index >= 0 {
		s += "[" + strconv.Itoa(int(p.index)) + "]"
	}
	for _, k := range p.keys[:p.n] {
		s = child(s, keyNames[k])
	}
	return s
}

// child returns the path of member key inside the object at path.
func child(path, key string) string {
	if !isPlainKey(key) {
		key = strconv.Quote(key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// isPlainKey reports whether key can appear unquoted in a detail.
func isPlainKey(key string) bool {
	if key == "" {
		return false
	}
	for _, c := range []byte(key) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// invalid returns a 19900001 error whose detail is "path: what".
func invalid(p path, format string, args ...any) *errs.Error {
	return errs.New(errs.CodeInvalidParam, "%s: %s", p, fmt.Sprintf(format, args...))
}

// members tracks the members of one object as the parser meets them: which
// it has seen, and the first unknown or repeated one, which is the error
// reported for the object before anything else in it, since a misspelt
// member often explains a later error.
type members struct {
	seen uint32
	err  *errs.Error
}

// note records member name, whose index in the object's list of members is
// i (-1: not in the list), and reports whether the parser should read its
// value; otherwise the value is to be skipped.
func (m *members) note(p path, name string, i int) bool {
	if m.err != nil {
		return false
	}
	switch {
	case i < 0:
		m.err = invalidMember(p, name, "unknown member")
	case m.seen&(1<<i) != 0:
		m.err = invalidMember(p, name, "duplicate member")
	default:
		m.seen |= 1 << i
		return true
	}
	return false
}

// invalidMember returns the error for member name of the object at p.
func invalidMember(p path, name, what string) *errs.Error {
	where := child("", name) // a member of params itself
	if p.member >= 0 {
		where = child(p.String(), name)
	}
	return errs.New(errs.CodeInvalidParam, "%s: %s", where, what)
}

// kindOf names the JSON type of a value as details show it.
func kindOf(val []byte) string {
	if len(val) == 0 {
		return "nothing"
	}
	switch val[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// isAbsent reports whether a member's value is missing or null; both mean
// "use the default".
func isAbsent(val []byte) bool { return len(val) == 0 || val[0] == 'n' }

// readBool checks a member's value, which must be true or false.
func readBool(val []byte, p path) (bool, *errs.Error) {
	if k := kindOf(val); k != "boolean" {
		return false, invalid(p, "expected boolean, got %s", k)
	}
	return val[0] == 't', nil
}

// optBool reads an optional boolean member: def when it is absent.
func optBool(val []byte, p path, def bool) (v bool, present bool, err *errs.Error) {
	if isAbsent(val) {
		return def, false, nil
	}
	v, err = readBool(val, p)
	return v, true, err
}

// readInt reads a JSON number written as an integer (no fraction, no
// exponent), within min..max. A value out of range is reported with its
// literal text, however large.
func readInt(val []byte, p path, min, max int64) (int64, *errs.Error) {
	v, ok, err := intLiteral(val, p)
	if err != nil {
		return 0, err
	}
	if !ok || v < min || v > max {
		return 0, invalid(p, "%s out of range %d-%d", val, min, max)
	}
	return v, nil
}

// intLiteral checks that val is an integer literal and returns its value;
// ok is false when the value does not fit in an int64.
func intLiteral(val []byte, p path) (v int64, ok bool, err *errs.Error) {
	if k := kindOf(val); k != "number" {
		return 0, false, invalid(p, "expected integer, got %s", k)
	}
	digits := val
	if digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || !isDigits(digits) {
		return 0, false, invalid(p, "expected integer, got %s", val)
	}
	var u uint64
	for _, c := range digits {
		if u > (1<<63)/10 {
			return 0, false, nil
		}
		u = u*10 + uint64(c-'0')
	}
	if val[0] == '-' {
		if u > 1<<63 {
			return 0, false, nil
		}
		return -int64(u), true, nil // -(1<<63) wraps to itself, as wanted
	}
	if u > 1<<63-1 {
		return 0, false, nil
	}
	return int64(u), true, nil
}

func isDigits[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
