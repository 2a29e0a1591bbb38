package rpc

import (
	"bytes"
	"encoding/json"
)

// Envelope is what the wire and the server need of a line: whether it is
// JSON at all, whether it is an object, and the raw values of the
// JSON-RPC members. The values are slices of the line itself, so finding
// them copies nothing, however many members the line has: decoding a
// 4 MiB line of 340,000 members into a map used to take ten times its
// size.
type Envelope struct {
	// JSON reports whether the line is valid JSON.
	JSON bool
	// Object reports whether it is a JSON object; the members below are
	// nil otherwise.
	Object bool
	// The raw values of "jsonrpc", "id", "method", "params" and "fds",
	// nil when absent. As with encoding/json, the last of repeated
	// members wins and keys are compared after unescaping, exactly
	// (case-sensitive). Other members are skipped.
	JSONRPC, ID, Method, Params, FDs json.RawMessage
}

// ParseEnvelope finds line's envelope. Its only allocation is for a key
// written with escapes, and that is as long as the key.
func ParseEnvelope(line []byte) Envelope {
	var e Envelope
	if !json.Valid(line) {
		return e
	}
	e.JSON = true
	// From here on the input is valid JSON, so the scan below needs no
	// error checks: every index it computes is in range.
	i := skipSpace(line, 0)
	if line[i] != '{' {
		return e
	}
	e.Object = true
	i = skipSpace(line, i+1)
	if line[i] == '}' {
		return e
	}
	for {
		keyEnd := skipString(line, i)
		key := line[i:keyEnd]
		i = skipSpace(line, keyEnd) // at ':'
		i = skipSpace(line, i+1)
		valEnd := skipValue(line, i)
		e.set(key, line[i:valEnd:valEnd])
		i = skipSpace(line, valEnd) // at ',' or '}'
		if line[i] == '}' {
			return e
		}
		i = skipSpace(line, i+1)
	}
}

// set records val if the quoted key names a member of interest.
func (e *Envelope) set(quoted, val []byte) {
	name := quoted[1 : len(quoted)-1]
	if bytes.IndexByte(name, '\\') >= 0 {
		var s string
		if json.Unmarshal(quoted, &s) != nil {
			return
		}
		name = []byte(s)
	}
	switch string(name) {
	case "jsonrpc":
		e.JSONRPC = val
	case "id":
		e.ID = val
	case "method":
		e.Method = val
	case "params":
		e.Params = val
	case "fds":
		e.FDs = val
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index just past the string that starts at b[i].
func skipString(b []byte, i int) int {
	for i++; ; i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
}

// skipValue returns the index just past the value that starts at b[i].
// Nesting is counted, not recursed into, so depth costs no stack.
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
	default: // number, true, false, null
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return i
			}
			i++
		}
		return i
	}
}

// FirstKey returns the name of the first member of obj, a valid JSON
// object, unescaped, and whether it has a member at all.
func FirstKey(obj []byte) (string, bool) {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return "", false
	}
	i = skipSpace(obj, i+1)
	if i >= len(obj) || obj[i] != '"' {
		return "", false
	}
	quoted := obj[i:skipString(obj, i)]
	var s string
	if json.Unmarshal(quoted, &s) != nil {
		return string(quoted[1 : len(quoted)-1]), true
	}
	return s, true
}
