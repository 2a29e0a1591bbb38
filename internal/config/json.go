package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/vpnd/vpnd/internal/errs"
)

// decodeOptions make jsontext read JSON as encoding/json does (the same
// grammar and nesting limit of 10,000; invalid UTF-8 in strings decodes to
// U+FFFD), and let repeated members through for the parser to report.
var decodeOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}

// decoder reads a JSON value and hands out the values in it as they stand
// in src, so that each stays valid after the next read.
type decoder struct {
	jsontext.Decoder
	src    []byte
	broken bool // a read failed: src is not JSON
}

func newDecoder(src []byte) *decoder {
	d := &decoder{src: src}
	d.Reset(bytes.NewBuffer(src), decodeOptions...)
	return d
}

// next reads the next value or member name.
func (d *decoder) next() jsontext.Value {
	v, err := d.ReadValue()
	if d.broken = d.broken || err != nil; d.broken {
		return nil
	}
	end := int(d.InputOffset())
	return d.src[end-len(v) : end]
}

// more reports whether the array or object being read has another entry.
func (d *decoder) more() bool {
	k := d.PeekKind()
	d.broken = d.broken || k == 0
	return !d.broken && k != ']' && k != '}'
}

// count returns the number of elements of v, 0 if it is not an array.
func count(v jsontext.Value) (n int) {
	if v.Kind() != '[' {
		return 0
	}
	d := newDecoder(v)
	for d.ReadToken(); d.more() && d.SkipValue() == nil; n++ {
	}
	return n
}

// end reports whether nothing but white space follows what d has read.
func (d *decoder) end() bool { _, err := d.ReadToken(); return !d.broken && errors.Is(err, io.EOF) }

// elements calls read for each element of the array v, in order, until
// read fails. read must read the element from d.
func elements(v jsontext.Value, read func(i int, d *decoder) error) error {
	d := newDecoder(v)
	d.ReadToken()
	for i := 0; d.more(); i++ {
		if err := read(i, d); err != nil {
			return err
		}
	}
	return nil
}

// object reads the object at d member by member, calling read with the
// index in names of each member's name; read must read the member's
// value. The first unknown or repeated member is the object's error,
// reported before anything in it is checked (a misspelt member often
// explains a later error); the rest of the object is then skipped.
func (d *decoder) object(at path, names []string, read func(i int)) error {
	var err error
	var seen uint64
	d.ReadToken()
	for d.more() {
		name := d.next()
		i := nameIndex(name, names)
		switch {
		case d.broken || err != nil:
		case i < 0:
			err = at.memberError(memberName(name), "unknown member")
		case seen&(1<<i) != 0:
			err = at.memberError(memberName(name), "duplicate member")
		default:
			seen |= 1 << i
			read(i)
			continue
		}
		d.broken = d.broken || d.SkipValue() != nil
	}
	if _, rerr := d.ReadToken(); rerr != nil {
		d.broken = true
	}
	return err
}

// memberName returns a member's name as details show it: as written when
// it holds no escape, whatever its bytes, else decoded.
func memberName(name jsontext.Value) string {
	if bytes.IndexByte(name, '\\') < 0 {
		return string(name[1 : len(name)-1])
	}
	return text(name)
}

// nameIndex returns the index of a member's name in names, or -1.
func nameIndex(name jsontext.Value, names []string) int {
	if len(name) < 2 || bytes.IndexByte(name, '\\') >= 0 {
		return slices.Index(names, text(name))
	}
	return slices.IndexFunc(names, func(n string) bool { return n == string(name[1:len(name)-1]) })
}

// text decodes the JSON string v as encoding/json does: escapes resolved,
// invalid UTF-8 replaced by U+FFFD.
func text(v jsontext.Value) string {
	if len(v) >= 2 && bytes.IndexByte(v, '\\') < 0 && utf8.Valid(v) {
		return string(v[1 : len(v)-1])
	}
	s, _ := jsontext.AppendUnquote(nil, v) // invalid UTF-8 is replaced, and reported
	return string(s)
}

var kindNames = map[jsontext.Kind]string{
	'{': "object", '[': "array", '"': "string", 't': "boolean", 'f': "boolean", 'n': "null", '0': "number",
}

// kind names the JSON type of v as details show it.
func kind(v jsontext.Value) string { return cmp.Or(kindNames[v.Kind()], "nothing") }

// absent reports whether a member is missing or null: both mean "default".
func absent(v jsontext.Value) bool { return v == nil || v.Kind() == 'n' }

// flag reads an optional boolean: def when it is absent.
func flag(v jsontext.Value, at path, def bool) (value, set bool, err error) {
	if k := v.Kind(); k == 't' || k == 'f' {
		return k == 't', true, nil
	}
	if absent(v) {
		return def, false, nil
	}
	return false, false, invalid(at, "expected boolean, got %s", kind(v))
}

// integer reads v, a JSON number written as an integer (no fraction, no
// exponent). fits is false when it does not fit in an int64.
func integer(v jsontext.Value, at path) (n int64, fits bool, err error) {
	if v.Kind() != '0' {
		return 0, false, invalid(at, "expected integer, got %s", kind(v))
	}
	n, perr := strconv.ParseInt(string(v), 10, 64)
	if perr != nil && !errors.Is(perr, strconv.ErrRange) {
		return 0, false, invalid(at, "expected integer, got %s", v)
	}
	return n, perr == nil, nil
}

// bounded reads an integer within min..max. A value out of range is
// reported with its literal text, however large.
func bounded(v jsontext.Value, at path, min, max int64) (int64, error) {
	n, fits, err := integer(v, at)
	if err == nil && (!fits || n < min || n > max) {
		err = invalid(at, "%s out of range %d-%d", v, min, max)
	}
	return n, err
}

// path is where a value sits in params, such as
// routes[3].destination.prefixLength. It becomes text only in a detail.
type path struct {
	member string    // a member of params; "" is params itself
	index  int       // an element of that member's array, or -1
	keys   [3]string // then members of the objects inside
	n      int
}

func memberPath(member string) path { return path{member: member, index: -1} }

// elem and key return the path of element i, or member k, of the value at p.
func (p path) elem(i int) path   { p.index = i; return p }
func (p path) key(k string) path { p.keys[p.n] = k; p.n++; return p }

func (p path) String() string {
	s := cmp.Or(p.member, "params")
	if p.index >= 0 {
		s += "[" + strconv.Itoa(p.index) + "]"
	}
	return strings.Join(append([]string{s}, p.keys[:p.n]...), ".")
}

var plainKey = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// memberError returns the error for member name of the object at p. The
// name is quoted unless it is plain letters, digits and underscores.
func (p path) memberError(name, what string) error {
	if !plainKey.MatchString(name) {
		name = strconv.Quote(name)
	}
	if p.member != "" {
		name = p.String() + "." + name
	}
	return errs.New(errs.CodeInvalidParam, "%s: %s", name, what)
}

// invalid returns a 19900001 error whose detail is "path: what".
func invalid(p path, format string, args ...any) error {
	return errs.New(errs.CodeInvalidParam, "%s: %s", p, fmt.Sprintf(format, args...))
}
