package errs

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"testing"
)

// The error table of docs/protocol.md: every code with its exact message.
var documented = map[Code]string{
	2203001:  "VPN creation denied. Check the user type.",
	2203002:  "VPN already exists.",
	2203004:  "Invalid socket file descriptor.",
	19900001: "Invalid parameter value.",
	19900002: "System internal error.",
	201:      "Permission denied.",
	-32700:   "Parse error.",
	-32600:   "Invalid request.",
	-32601:   "Method not found.",
}

func TestCatalogueMatchesTheDocs(t *testing.T) {
	if len(Codes()) != len(documented) {
		t.Fatalf("catalogue has %d codes, the docs %d", len(Codes()), len(documented))
	}
	for code, msg := range documented {
		e, ok := Lookup(code)
		if !ok {
			t.Errorf("%d missing", code)
			continue
		}
		if e.Message != msg || code.Message() != msg {
			t.Errorf("%d: message %q, want %q", code, e.Message, msg)
		}
		if e.Code != code || e.Name == "" || e.Description == "" || e.Cause == "" || e.Solution == "" {
			t.Errorf("%d: incomplete entry %+v", code, e)
		}
	}
	if got := Code(42).Message(); got != "error 42" {
		t.Errorf("unknown code message %q", got)
	}
}

// TestCatalogueMatchesProtocolDoc: docs/protocol.md carries the whole
// catalogue, each code's message in the error table and its name,
// description, cause and solution in its own section, as vpnd sends them
// and vpnctl explain prints them. The doc and the catalogue must agree,
// for every code and nothing else.
func TestCatalogueMatchesProtocolDoc(t *testing.T) {
	b, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	sections := regexp.MustCompile("(?m)^### (-?\\d+) .+\n\n- name: `([^`]*)`\n- description: `([^`]*)`\n- cause: `([^`]*)`\n- solution: `([^`]*)`\n").FindAllStringSubmatch(doc, -1)
	rows := regexp.MustCompile("(?m)^\\| (-?\\d+) \\| `([^`]*)` \\|").FindAllStringSubmatch(doc, -1)
	message := map[string]string{}
	for _, r := range rows {
		message[r[1]] = r[2]
	}
	seen := map[Code]bool{}
	for _, m := range sections {
		var code Code
		fmt.Sscan(m[1], &code)
		e, ok := Lookup(code)
		if !ok {
			t.Errorf("protocol.md documents %d, which is not catalogued", code)
			continue
		}
		seen[code] = true
		for _, c := range []struct{ field, got, want string }{
			{"name", e.Name, m[2]},
			{"message", e.Message, message[m[1]]},
			{"description", e.Description, m[3]},
			{"cause", e.Cause, m[4]},
			{"solution", e.Solution, m[5]},
		} {
			if c.got != c.want {
				t.Errorf("%d %s: %q, protocol.md says %q", code, c.field, c.got, c.want)
			}
		}
	}
	for _, c := range Codes() {
		if !seen[c] {
			t.Errorf("%d has no section with name, description, cause and solution in protocol.md", c)
		}
	}
}

func TestErrorIs(t *testing.T) {
	err := fmt.Errorf("context: %w", New(CodeVPNExists, "vpn-tun is up"))
	if !errors.Is(err, ErrVPNExists) || errors.Is(err, ErrGuestDenied) {
		t.Fatal("errors.Is by code broken")
	}
	if CodeOf(err) != CodeVPNExists || CodeOf(errors.New("x")) != CodeInternal {
		t.Fatal("CodeOf broken")
	}
	cause := errors.New("netlink: file exists")
	w := Wrap(CodeInternal, cause, "add route")
	if !errors.Is(w, cause) || w.Detail != "add route: netlink: file exists" {
		t.Fatalf("Wrap: %+v", w)
	}
	if got := New(CodeInvalidParam, "mtu: %d below 576", 500).Error(); got != "19900001 Invalid parameter value. (mtu: 500 below 576)" {
		t.Fatalf("Error() = %q", got)
	}
	if got := ErrParse.Error(); got != "-32700 Parse error." {
		t.Fatalf("Error() = %q", got)
	}
}
