package test

// The examples of docs/protocol.md are tests: TestProtocolDoc runs every
// ```jsonc block of the page against a real vpnd in a fresh network
// namespace and compares each answer with the page, so the page cannot
// drift from the code. The notation is described in the page itself
// ("How to read the examples"); in short:
//
//	// as uid N          the lines below are sent and read on uid N's
//	                     connection (opened on first use)
//	→ LINE               send LINE as is, with a newline; a trailing
//	                     "  // with a UDP socket" attaches descriptors
//	← JSON               read the next message on that connection and
//	                     compare it with JSON, which may span several lines
//	// the client closes its connection | its TUN fd
//	$ ip ARGS            run `ip ARGS` inside the example's namespace
//	// anything else     a comment
//
// In an expected message, <index>, <pid> and <since> stand for values that
// vary from run to run, as a whole JSON value or inside a string, and a
// bare ... in an object stands for members not shown.
//
// Under VPND_TEST_BACKEND=sim the examples run against vpnd --sim, and the
// page, which shows the real thing, holds for it too, with two
// differences: each VpnInfo carries "simulated": true, as the page's
// VpnInfo table says (withoutSimulated drops it before the comparison),
// and setUp's descriptor is one end of an AF_UNIX SOCK_SEQPACKET socket
// pair instead of the TUN, as the README's simulation mode says. An
// example that provokes 19900002 through the kernel is skipped there
// (docKernelOnly).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// docPath is the page whose examples TestProtocolDoc runs.
const docPath = "../docs/protocol.md"

// docStep is one line (or, for a response, one group of lines) of an example.
type docStep struct {
	line int    // 1-based line number in the page, for messages
	kind string // "as", "send", "expect", "close", "closetun", "ip"
	uid  uint32 // for "as"
	text string // the request line, the expected JSON, or ip's arguments
	fds  string // for "send": rawclient descriptor spec, "-" for none
}

// docExample is one ```jsonc block.
type docExample struct {
	line  int    // line of the opening fence
	title string // the nearest heading above it
	steps []docStep
}

// docFDKinds maps the page's words for a descriptor sent with a request to
// the rawclient's descriptor kinds.
var docFDKinds = map[string]string{
	"a UDP socket":                      "udp",
	"an IPv6 UDP socket":                "udp6",
	"a TCP socket":                      "tcp",
	"an IPv6 TCP socket":                "tcp6",
	"a TCP socket whose connect failed": "tcpfail",
	"a pipe":                            "pipe",
	"a Unix stream socket":              "unix",
	"a Unix datagram socket":            "unixdgram",
	"a raw IP socket":                   "raw",
}

var (
	docAsRe      = regexp.MustCompile(`^// as uid ([0-9]+)\b`)
	docCloseRe   = regexp.MustCompile(`^// the client closes its (connection|TUN fd)\b`)
	docHeadingRe = regexp.MustCompile(`^#+ (.*)$`)
)

// parseProtocolDoc reads the examples of the page at path.
func parseProtocolDoc(path string) ([]docExample, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var (
		examples []docExample
		cur      *docExample
		fence    bool // inside some fenced block
		title    string
	)
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		l, n := lines[i], i+1
		trimmed := strings.TrimSpace(l)
		if !fence {
			if m := docHeadingRe.FindStringSubmatch(l); m != nil {
				title = m[1]
			}
			if strings.HasPrefix(trimmed, "```") {
				fence = true
				if trimmed == "```jsonc" {
					examples = append(examples, docExample{line: n, title: title})
					cur = &examples[len(examples)-1]
				}
			}
			continue
		}
		if trimmed == "```" {
			fence = false
			if cur != nil && !slices.ContainsFunc(cur.steps, func(s docStep) bool { return s.kind == "send" }) {
				return nil, fmt.Errorf("line %d: a jsonc block sends no request: every jsonc block is an example", cur.line)
			}
			cur = nil
			continue
		}
		if cur == nil {
			continue
		}
		switch {
		case trimmed == "":
		case strings.HasPrefix(l, "→ "):
			req, fds, err := splitFDs(strings.TrimPrefix(l, "→ "))
			if err != nil {
				return nil, fmt.Errorf("line %d: %v", n, err)
			}
			cur.steps = append(cur.steps, docStep{line: n, kind: "send", text: req, fds: fds})
		case strings.HasPrefix(l, "← "):
			text := strings.TrimPrefix(l, "← ")
			for i+1 < len(lines) && isContinuation(lines[i+1]) {
				i++
				text += "\n" + lines[i]
			}
			cur.steps = append(cur.steps, docStep{line: n, kind: "expect", text: text})
		case strings.HasPrefix(l, "$ ip "):
			cur.steps = append(cur.steps, docStep{line: n, kind: "ip", text: strings.TrimPrefix(l, "$ ip ")})
		case docAsRe.MatchString(l):
			uid, err := strconv.ParseUint(docAsRe.FindStringSubmatch(l)[1], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("line %d: %v", n, err)
			}
			cur.steps = append(cur.steps, docStep{line: n, kind: "as", uid: uint32(uid)})
		case docCloseRe.MatchString(l):
			kind := "close"
			if docCloseRe.FindStringSubmatch(l)[1] == "TUN fd" {
				kind = "closetun"
			}
			cur.steps = append(cur.steps, docStep{line: n, kind: kind})
		case strings.HasPrefix(l, "//"):
			// A comment for the reader.
		default:
			return nil, fmt.Errorf("line %d: %q is not part of the example notation", n, l)
		}
	}
	if fence {
		return nil, fmt.Errorf("unterminated fenced block")
	}
	return examples, nil
}

// isContinuation reports whether l continues a multi-line response.
func isContinuation(l string) bool {
	t := strings.TrimSpace(l)
	return t != "" && t != "```" && !strings.HasPrefix(l, "→ ") && !strings.HasPrefix(l, "← ") &&
		!strings.HasPrefix(l, "//") && !strings.HasPrefix(l, "$ ")
}

// splitFDs splits a request line from its "  // with ..." annotation and
// returns the rawclient descriptor spec for it.
func splitFDs(s string) (req, spec string, err error) {
	i := strings.LastIndex(s, "  // ")
	if i < 0 {
		return s, "-", nil
	}
	req, note := strings.TrimRight(s[:i], " "), strings.TrimPrefix(s[i:], "  // ")
	words, ok := strings.CutPrefix(note, "with ")
	if !ok {
		return "", "", fmt.Errorf("request annotation %q: want \"with <descriptor>[ and <descriptor>]\"", note)
	}
	var kinds []string
	for _, w := range strings.Split(words, " and ") {
		k, ok := docFDKinds[w]
		if !ok {
			return "", "", fmt.Errorf("unknown descriptor %q (known: %s)", w, strings.Join(docFDNames(), "; "))
		}
		kinds = append(kinds, k)
	}
	return req, strings.Join(kinds, ","), nil
}

func docFDNames() []string {
	var names []string
	for n := range docFDKinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ---------------------------------------------------------------------------
// Expected messages

// docPlaceholder is a value an example may leave open: what its text
// must look like, and whether, standing alone, it is a JSON string (else
// a number).
type docPlaceholder struct {
	pattern  string
	isString bool
}

var docPlaceholders = map[string]docPlaceholder{
	"index": {`[1-9][0-9]*`, false},
	"pid":   {`[1-9][0-9]*`, false},
	"since": {`[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z`, true},
}

// docMarker prefixes a string that stands for a placeholder or "..." once
// the expected text has been made JSON; no real message holds a NUL.
const docMarker = "\x00"

var docPlaceholderRe = regexp.MustCompile(`<([a-z]+)>`)

// expectedJSON turns an expected message of the page into JSON: a bare
// placeholder <name> becomes the string "\x00name", a bare ... the member
// "\x00...":0. Placeholders inside strings stay as they are.
func expectedJSON(text string) ([]byte, error) {
	var b strings.Builder
	inString, escaped := false, false
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case inString:
			b.WriteByte(c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
			b.WriteByte(c)
		case strings.HasPrefix(text[i:], "..."):
			b.WriteString(`"\u0000...":0`)
			i += 2
		case c == '<':
			m := docPlaceholderRe.FindStringSubmatch(text[i:])
			if m == nil || !strings.HasPrefix(text[i:], m[0]) {
				return nil, fmt.Errorf("stray '<' at %q", text[i:min(len(text), i+20)])
			}
			if _, ok := docPlaceholders[m[1]]; !ok {
				return nil, fmt.Errorf("unknown placeholder %s", m[0])
			}
			b.WriteString(`"\u0000` + m[1] + `"`)
			i += len(m[0]) - 1
		default:
			b.WriteByte(c)
		}
	}
	return []byte(b.String()), nil
}

func decodeNumbers(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, fmt.Errorf("more than one JSON value")
	}
	return v, nil
}

// matchDoc compares an actual message with the expected value, and
// returns where they differ, or "".
func matchDoc(want, got any, at string) string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Sprintf("%s: got %s, want an object", at, compact(got))
		}
		_, open := w[docMarker+"..."]
		for k, wv := range w {
			if k == docMarker+"..." {
				continue
			}
			gv, ok := g[k]
			if !ok {
				return fmt.Sprintf("%s: member %q missing", at, k)
			}
			if d := matchDoc(wv, gv, at+"."+k); d != "" {
				return d
			}
		}
		if !open {
			for k := range g {
				if _, ok := w[k]; !ok {
					return fmt.Sprintf("%s: unexpected member %q: %s", at, k, compact(g[k]))
				}
			}
		}
		return ""
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Sprintf("%s: got %s, want %s", at, compact(got), compact(want))
		}
		for i := range w {
			if d := matchDoc(w[i], g[i], fmt.Sprintf("%s[%d]", at, i)); d != "" {
				return d
			}
		}
		return ""
	case string:
		if name, ok := strings.CutPrefix(w, docMarker); ok {
			ph := docPlaceholders[name]
			var text string
			switch g := got.(type) {
			case string:
				if !ph.isString {
					return fmt.Sprintf("%s: got %s, want <%s>, a number", at, compact(got), name)
				}
				text = g
			case json.Number:
				if ph.isString {
					return fmt.Sprintf("%s: got %s, want <%s>, a string", at, compact(got), name)
				}
				text = g.String()
			default:
				return fmt.Sprintf("%s: got %s, want <%s>", at, compact(got), name)
			}
			if !regexp.MustCompile(`^(?:` + ph.pattern + `)$`).MatchString(text) {
				return fmt.Sprintf("%s: got %s, want <%s>", at, compact(got), name)
			}
			return ""
		}
		g, ok := got.(string)
		if !ok {
			return fmt.Sprintf("%s: got %s, want %q", at, compact(got), w)
		}
		if !docStringRe(w).MatchString(g) {
			return fmt.Sprintf("%s: got %q, want %q", at, g, w)
		}
		return ""
	default: // json.Number, bool, nil
		if compact(want) != compact(got) {
			return fmt.Sprintf("%s: got %s, want %s", at, compact(got), compact(want))
		}
		return ""
	}
}

// docStringRe matches a string of the page, placeholders and all.
func docStringRe(s string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	last := 0
	for _, m := range docPlaceholderRe.FindAllStringSubmatchIndex(s, -1) {
		ph, ok := docPlaceholders[s[m[2]:m[3]]]
		if !ok {
			continue // not a placeholder: literal text
		}
		b.WriteString(regexp.QuoteMeta(s[last:m[0]]))
		b.WriteString("(?:" + ph.pattern + ")")
		last = m[1]
	}
	b.WriteString(regexp.QuoteMeta(s[last:]))
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// withoutSimulated removes every "simulated": true member of a message
// from vpnd --sim, in place, and returns it. The page shows a real vpnd's
// answers, whose VpnInfo has no such member (protocol.md's VpnInfo table:
// "present, and true, only when vpnd runs in simulation mode"); a
// "simulated" of any other value stays, and fails the comparison.
func withoutSimulated(v any) any {
	switch v := v.(type) {
	case map[string]any:
		if sim, ok := v["simulated"].(bool); ok && sim {
			delete(v, "simulated")
		}
		for _, m := range v {
			withoutSimulated(m)
		}
	case []any:
		for _, e := range v {
			withoutSimulated(e)
		}
	}
	return v
}

func compact(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// Running the examples

// TestProtocolDocNotation checks the page's examples against the notation
// and the matcher against itself; it needs no root.
func TestProtocolDocNotation(t *testing.T) {
	examples, err := parseProtocolDoc(docPath)
	if err != nil {
		t.Fatalf("%s: %v", docPath, err)
	}
	if len(examples) < 10 {
		t.Fatalf("%s: only %d examples found", docPath, len(examples))
	}
	for _, ex := range examples {
		for _, s := range ex.steps {
			if s.kind != "expect" {
				continue
			}
			b, err := expectedJSON(s.text)
			if err != nil {
				t.Errorf("%s:%d: %v", docPath, s.line, err)
				continue
			}
			if _, err := decodeNumbers(b); err != nil {
				t.Errorf("%s:%d: expected message is not JSON: %v\n%s", docPath, s.line, err, s.text)
			}
		}
	}

	// The matcher itself.
	for _, tc := range []struct {
		want, got string
		ok        bool
	}{
		{`{"a":1,"b":"x"}`, `{"b":"x","a":1}`, true},
		{`{"a":1}`, `{"a":2}`, false},
		{`{"a":1}`, `{"a":1,"b":2}`, false},
		{`{"a":1, ...}`, `{"a":1,"b":2}`, true},
		{`{..., "b":2}`, `{"a":1}`, false},
		{`{"i":<index>}`, `{"i":7}`, true},
		{`{"i":<index>}`, `{"i":"7"}`, false},
		{`{"i":<index>}`, `{"i":0}`, false},
		{`{"s":"<since>"}`, `{"s":"2025-01-02T03:04:05Z"}`, true},
		{`{"s":"<since>"}`, `{"s":"yesterday"}`, false},
		{`{"s":<since>}`, `{"s":"2025-01-02T03:04:05Z"}`, true},
		{`{"s":<since>}`, `{"s":20250102}`, false},
		{`{"d":"owned by uid 0 (pid <pid>)"}`, `{"d":"owned by uid 0 (pid 42)"}`, true},
		{`{"d":"owned by uid 0 (pid <pid>)"}`, `{"d":"owned by uid 1 (pid 42)"}`, false},
		{`{"d":"a <b> c"}`, `{"d":"a <b> c"}`, true},
		{`{"d":"x.y"}`, `{"d":"xzy"}`, false},
		{`[1,2]`, `[1,2,3]`, false},
		{`{"a":null}`, `{"a":null}`, true},
		{`{"a":null}`, `{"a":[]}`, false},
		{`{"a":[]}`, `{"a":null}`, false},
	} {
		b, err := expectedJSON(tc.want)
		if err != nil {
			t.Fatalf("%s: %v", tc.want, err)
		}
		want, err := decodeNumbers(b)
		if err != nil {
			t.Fatalf("%s: %v", tc.want, err)
		}
		got, err := decodeNumbers([]byte(tc.got))
		if err != nil {
			t.Fatal(err)
		}
		if d := matchDoc(want, got, "message"); (d == "") != tc.ok {
			t.Errorf("match %s against %s: %q, want ok=%t", tc.want, tc.got, d, tc.ok)
		}
	}

	// The matcher on a simulated vpnd's answers (withoutSimulated first).
	for _, tc := range []struct {
		want, got string
		ok        bool
	}{
		{`{"vpn":{"mtu":1500}}`, `{"vpn":{"mtu":1500,"simulated":true}}`, true},
		{`{"params":{"vpn":{"mtu":1500}}}`, `{"params":{"vpn":{"mtu":1500,"simulated":true}}}`, true},
		{`{"vpns":[{"mtu":1500}]}`, `{"vpns":[{"mtu":1500,"simulated":true}]}`, true},
		{`{"vpn":{"mtu":1500}}`, `{"vpn":{"mtu":1500,"simulated":false}}`, false},
		{`{"vpn":{"mtu":1500}}`, `{"vpn":{"mtu":1500,"simulated":"true"}}`, false},
		{`{"vpn":{"mtu":1500}}`, `{"vpn":{"mtu":1400,"simulated":true}}`, false},
	} {
		b, err := expectedJSON(tc.want)
		if err != nil {
			t.Fatalf("%s: %v", tc.want, err)
		}
		want, err := decodeNumbers(b)
		if err != nil {
			t.Fatalf("%s: %v", tc.want, err)
		}
		got, err := decodeNumbers([]byte(tc.got))
		if err != nil {
			t.Fatal(err)
		}
		if d := matchDoc(want, got, "message"); d == "" {
			t.Errorf("match %s against %s as is: ok, want the extra member refused", tc.want, tc.got)
		}
		if d := matchDoc(want, withoutSimulated(got), "message"); (d == "") != tc.ok {
			t.Errorf("match %s against %s from vpnd --sim: %q, want ok=%t", tc.want, tc.got, d, tc.ok)
		}
	}
}

// TestProtocolDoc runs every example of docs/protocol.md, each against its
// own vpnd (default flags, the embedded account policy) in a fresh network
// namespace, and compares every answer with the page.
func TestProtocolDoc(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	examples, err := parseProtocolDoc(docPath)
	if err != nil {
		t.Fatalf("%s: %v", docPath, err)
	}
	for _, ex := range examples {
		name := fmt.Sprintf("line%d-%s", ex.line, ex.title)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runDocExample(t, ex)
		})
	}
}

// docKernelOnly says why an example cannot run against a simulated vpnd,
// or "". The page provokes 19900002 (the system refused) through the
// kernel, with a foreign route in vpnd's table: a simulated vpnd reads no
// kernel table.
func docKernelOnly(ex docExample) string {
	for _, s := range ex.steps {
		if s.kind == "expect" && strings.Contains(s.text, `"code":19900002`) {
			return "the page provokes 19900002 through the kernel, which a simulated vpnd never reads"
		}
	}
	return ""
}

func runDocExample(t *testing.T, ex docExample) {
	if why := docKernelOnly(ex); why != "" {
		kernelOnly(t, why)
	}
	d := startDaemon(t)
	where := func(s docStep) string {
		abs, _ := filepath.Abs(docPath)
		return fmt.Sprintf("%s:%d", abs, s.line)
	}
	clients := map[uint32]*client{}
	var cur *client
	for _, s := range ex.steps {
		if s.kind != "as" && s.kind != "ip" && cur == nil {
			t.Fatalf("%s: no \"// as uid N\" line before the first exchange", where(s))
		}
		switch s.kind {
		case "as":
			c, ok := clients[s.uid]
			if !ok {
				c = d.dial(t, s.uid)
				clients[s.uid] = c
			}
			cur = c
		case "ip":
			d.ip(t, strings.Fields(s.text)...)
		case "send":
			cur.must("send " + s.fds + " " + s.text)
		case "close":
			cur.closeConn()
		case "closetun":
			cur.closeTUN()
		case "expect":
			m, ok := cur.recv()
			if !ok {
				t.Fatalf("%s: vpnd closed the connection of uid %d, want\n%s", where(s), cur.uid, s.text)
			}
			b, err := expectedJSON(s.text)
			if err != nil {
				t.Fatalf("%s: %v", where(s), err)
			}
			want, err := decodeNumbers(b)
			if err != nil {
				t.Fatalf("%s: expected message is not JSON: %v", where(s), err)
			}
			got, err := decodeNumbers([]byte(m.raw))
			if err != nil {
				t.Fatalf("%s: vpnd sent a line that is not JSON: %v: %s", where(s), err, m.raw)
			}
			if d.sim {
				got = withoutSimulated(got)
			}
			if diff := matchDoc(want, got, "message"); diff != "" {
				t.Errorf("%s: the answer differs from the page: %s\ngot:  %s\nwant: %s", where(s), diff, m.raw, s.text)
			}
			// vpnd sends exactly the descriptors a message declares,
			// and the only one it ever sends is the TUN (under sim, its
			// end of the socket pair).
			if len(m.fdInfo) != m.FDs {
				t.Errorf("%s: the message declares %d descriptors and carried %d", where(s), m.FDs, len(m.fdInfo))
			}
			for _, fi := range m.fdInfo {
				switch {
				case d.sim && (fi.TUN || fi.Domain != unix.AF_UNIX || fi.Type != unix.SOCK_SEQPACKET):
					t.Errorf("%s: the descriptor a simulated vpnd sent is not an AF_UNIX SOCK_SEQPACKET socket: %+v", where(s), fi)
				case !d.sim && (!fi.TUN || fi.IfName != d.ifname):
					t.Errorf("%s: the descriptor vpnd sent is not the TUN %s: %+v", where(s), d.ifname, fi)
				}
			}
		}
	}
	// An example leaves nothing behind: its clients go, and with them
	// the VPN; lockdown, which outlives vpnd, must have been turned off.
	for _, c := range clients {
		c.stdin.Close()
	}
	for _, c := range clients {
		select {
		case <-c.done:
		case <-time.After(hangGuard):
			t.Fatalf("rawclient of uid %d did not exit", c.uid)
		}
	}
	d.waitClean(t, "after the example")
	if d.sim {
		if l := d.vpnStatus(t).Lockdown; l.Enabled {
			t.Errorf("example at line %d left lockdown on: %+v", ex.line, l)
		}
		return
	}
	for _, r := range d.rules(t) {
		if r.Priority == d.priority+1 {
			t.Errorf("example at line %d left a lockdown rule: %s", ex.line, r)
		}
	}
}
