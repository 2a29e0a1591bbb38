package errs

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
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

// TestCatalogueMatchesSeed compares the OpenHarmony codes' texts with the
// seed document, when the shared folder is beside the checkout (it is in
// CI and on developer machines).
func TestCatalogueMatchesSeed(t *testing.T) {
	b, err := os.ReadFile("../../../shared/seed/vpn-error-codes.md")
	if err != nil {
		t.Skipf("seed not available: %v", err)
	}
	sections := regexp.MustCompile(`(?m)^## (\d+) (.+)$`).FindAllStringSubmatchIndex(string(b), -1)
	if len(sections) != 5 {
		t.Fatalf("seed has %d sections, want 5", len(sections))
	}
	clean := func(s string) string { return strings.Join(strings.Fields(strings.ReplaceAll(s, "**", "")), " ") }
	part := func(sec, heading string) string {
		i := strings.Index(sec, "**"+heading+"**")
		if i < 0 {
			return ""
		}
		rest := sec[i+len(heading)+4:]
		if j := strings.Index(rest, "\n**"); j >= 0 {
			rest = rest[:j]
		}
		return clean(rest)
	}
	for i, m := range sections {
		end := len(b)
		if i+1 < len(sections) {
			end = sections[i+1][0]
		}
		sec := string(b[m[0]:end])
		var code Code
		fmt.Sscan(string(b[m[2]:m[3]]), &code)
		e, ok := Lookup(code)
		if !ok {
			t.Errorf("seed code %d not catalogued", code)
			continue
		}
		for _, c := range []struct{ field, got, want string }{
			{"name", e.Name, clean(string(b[m[4]:m[5]]))},
			{"message", e.Message, part(sec, "Error Information")},
			{"description", e.Description, part(sec, "Description")},
			{"cause", e.Cause, part(sec, "Possible Causes")},
			{"solution", e.Solution, part(sec, "Solution")},
		} {
			if c.got != c.want {
				t.Errorf("%d %s: %q, seed says %q", code, c.field, c.got, c.want)
			}
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
