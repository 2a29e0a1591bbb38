package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/vpnd/vpnd/internal/errs"
)

// This file reads raw JSON by hand instead of unmarshalling into a struct,
// so that every wrong type, missing member, unknown member and duplicate
// member is reported with its exact JSON path.

// invalid returns a 19900001 error whose detail is "path: what".
func invalid(path, format string, args ...any) *errs.Error {
	return errs.New(errs.CodeInvalidParam, "%s: %s", path, fmt.Sprintf(format, args...))
}

// kindOf names the JSON type of a raw value as details show it.
func kindOf(raw json.RawMessage) string {
	b := bytes.TrimLeft(raw, " \t\r\n")
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
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

// isAbsent reports whether a member is missing or null; both mean "use the
// default".
func isAbsent(raw json.RawMessage) bool {
	return raw == nil || kindOf(raw) == "null"
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

// index returns the path of element i of the array at path.
func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

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

// object is a decoded JSON object that remembers its path.
type object struct {
	path    string // "" for params itself
	members map[string]json.RawMessage
}

// readObject decodes raw, which must be a JSON object whose members are all
// in allowed. Unknown and duplicate members are reported in document order,
// before anything else in the object is looked at, since a misspelt member
// often explains a later error. what names the expected shape in a type
// error ("LinkAddress object").
func readObject(raw json.RawMessage, path, what string, allowed ...string) (*object, error) {
	selfPath := path
	if selfPath == "" {
		selfPath = "params"
	}
	if k := kindOf(raw); k != "object" {
		return nil, invalid(selfPath, "expected %s, got %s", what, k)
	}
	o := &object{path: path, members: make(map[string]json.RawMessage)}
	var dupErr error
	ok := splitContainer(raw, '{', func(key, val []byte) bool {
		name := string(key[1 : len(key)-1])
		if bytes.IndexByte(key, '\\') >= 0 && json.Unmarshal(key, &name) != nil {
			dupErr = invalid(selfPath, "invalid JSON")
			return false
		}
		switch _, dup := o.members[name]; {
		case !contains(allowed, name):
			dupErr = invalid(child(path, name), "unknown member")
		case dup:
			dupErr = invalid(child(path, name), "duplicate member")
		default:
			o.members[name] = val
			return true
		}
		return false
	})
	if dupErr != nil {
		return nil, dupErr
	}
	if !ok {
		return nil, invalid(selfPath, "invalid JSON")
	}
	return o, nil
}

// splitContainer walks the top level of raw, a JSON object (open '{') or
// array (open '['), calling fn with each member's key (quoted, as written;
// nil for arrays) and value, until fn returns false. raw must be valid JSON
// (Parse checks the whole message once); splitContainer only guards against
// running off the end. It is a hand-written scanner because a
// json.Decoder per object made a maximal config take a second to parse.
func splitContainer(raw []byte, open byte, fn func(key, val []byte) bool) bool {
	b := bytes.TrimSpace(raw)
	if len(b) < 2 || b[0] != open {
		return false
	}
	i := skipSpace(b, 1)
	if i < len(b) && (b[i] == '}' || b[i] == ']') {
		return i == len(b)-1
	}
	for i < len(b) {
		var key []byte
		if open == '{' {
			if b[i] != '"' {
				return false
			}
			end := skipString(b, i)
			if end > len(b) {
				return false
			}
			key = b[i:end]
			i = skipSpace(b, end)
			if i >= len(b) || b[i] != ':' {
				return false
			}
			i = skipSpace(b, i+1)
		}
		end := skipValue(b, i)
		if end <= i || end > len(b) {
			return false
		}
		if !fn(key, bytes.TrimRight(b[i:end], " \t\r\n")) {
			return true
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}', ']':
			return i == len(b)-1
		default:
			return false
		}
	}
	return false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index after the string that starts at b[i].
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b) + 1
}

// skipValue returns the index after the value that starts at b[i]: a
// string, a container, or a literal that ends at a delimiter.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b) + 1
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' {
			j++
		}
		return j
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// get returns the member key, or nil if it is absent or null.
func (o *object) get(key string) json.RawMessage {
	raw := o.members[key]
	if isAbsent(raw) {
		return nil
	}
	return raw
}

// at returns the path of member key.
func (o *object) at(key string) string { return child(o.path, key) }

// readArray decodes raw, which must be a JSON array of at most max
// elements.
func readArray(raw json.RawMessage, path, what string, max int) ([]json.RawMessage, error) {
	if k := kindOf(raw); k != "array" {
		return nil, invalid(path, "expected array of %s, got %s", what, k)
	}
	var items []json.RawMessage
	ok := splitContainer(raw, '[', func(_, val []byte) bool {
		items = append(items, val)
		return true
	})
	if !ok {
		return nil, invalid(path, "invalid JSON")
	}
	if len(items) > max {
		return nil, invalid(path, "%d entries, at most %d allowed", len(items), max)
	}
	return items, nil
}

// readString decodes raw, which must be a JSON string.
func readString(raw json.RawMessage, path string) (string, error) {
	if k := kindOf(raw); k != "string" {
		return "", invalid(path, "expected string, got %s", k)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", invalid(path, "invalid JSON")
	}
	return s, nil
}

// readBool decodes raw, which must be true or false.
func readBool(raw json.RawMessage, path string) (bool, error) {
	if k := kindOf(raw); k != "boolean" {
		return false, invalid(path, "expected boolean, got %s", k)
	}
	return bytes.TrimLeft(raw, " \t\r\n")[0] == 't', nil
}

// optBool decodes an optional boolean member: def when it is absent.
func (o *object) optBool(key string, def bool) (v bool, present bool, err error) {
	raw := o.get(key)
	if raw == nil {
		return def, false, nil
	}
	v, err = readBool(raw, o.at(key))
	return v, true, err
}

// readInt decodes raw, which must be a JSON number written as an integer
// (no fraction, no exponent), within min..max. A value out of range is
// reported with its literal text, however large.
func readInt(raw json.RawMessage, path string, min, max int64) (int64, error) {
	lit, v, ok, err := intLiteral(raw, path)
	if err != nil {
		return 0, err
	}
	if !ok || v < min || v > max {
		return 0, invalid(path, "%s out of range %d-%d", lit, min, max)
	}
	return v, nil
}

// intLiteral checks that raw is an integer literal and returns its text and
// value; ok is false when the value does not fit in an int64.
func intLiteral(raw json.RawMessage, path string) (lit string, v int64, ok bool, err error) {
	if k := kindOf(raw); k != "number" {
		return "", 0, false, invalid(path, "expected integer, got %s", k)
	}
	lit = string(bytes.TrimSpace(raw))
	digits := lit
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if digits == "" || !isDigits(digits) {
		return "", 0, false, invalid(path, "expected integer, got %s", lit)
	}
	v, perr := strconv.ParseInt(lit, 10, 64)
	return lit, v, perr == nil, nil
}

func isDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
