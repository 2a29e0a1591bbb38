package wgclient

import (
	"errors"
	"strings"
	"testing"
)

// keyWindows are the 12-character pieces of k: an error that shows any
// of them shows part of the key.
func keyWindows(k string) []string {
	var w []string
	for i := 0; i+12 <= len(k); i++ {
		w = append(w, k[i:i+12])
	}
	return w
}

// A key in the wrong place, under a misspelt name, or on a malformed line
// is never shown in an error, whole or in part: the error names the line
// and says what is wrong.
func TestParseErrorsHideKeys(t *testing.T) {
	const iface = "[Interface]\nPrivateKey = " + testPriv + "\nAddress = 10.8.0.2/24\n"
	const peer = "[Peer]\nPublicKey = " + testPeer1 + "\nAllowedIPs = 0.0.0.0/0\n"
	// Each case puts a secret (testPSK, a key nowhere else in the file)
	// somewhere it does not belong.
	const k = testPSK
	cases := []struct {
		name, conf string
		line       int
		msg        string
	}{
		{"misspelt PrivateKey", "[Interface]\nPrivatKey = " + k + "\n", 2, `unknown key "PrivatKey" in [Interface]`},
		{"PrivateKey without =", "[Interface]\nPrivateKey " + k + "\n", 2, "a key without a value (its name is not shown"},
		{"PrivateKey with a colon", "[Interface]\nPrivateKey: " + k + "\n", 2, "a key without a value (its name is not shown"},
		{"the key alone on a line", "[Interface]\n" + k + "\n", 2, "a key without a value (its name is not shown"},
		{"the key alone, without its =", "[Interface]\n" + strings.TrimSuffix(k, "=") + "\n", 2, "expected Key = Value"},
		{"header and key on one line", "[Interface] PrivateKey = " + k + "\n", 1, `a section header must end with "]"`},
		{"misspelt PresharedKey", iface + peer + "PresharedKy = " + k + "\n", 7, `unknown key "PresharedKy" in [Peer]`},
		{"a homoglyph in the name", "[Interface]\nPrivateK\u0435y = " + k + "\n", 2, "unknown key"},
		{"a line over 4096 bytes", iface + k + strings.Repeat(" ", maxLineLen) + "\n", 4, "line longer than 4096 bytes"},
		{"a long line starting with a key name", iface + "PostUp = " + k + strings.Repeat(" ", maxLineLen) + "\n", 4, "line longer than 4096 bytes"},
		{"under PostUp", iface + "PostUp = wg set %i private-key <(echo " + k + ")\n" + peer, 4, "PostUp is not supported by vpnd-wg"},
		{"under DNS", iface + "DNS = " + k + "\n" + peer, 4, "DNS: "},
		{"under DNS, in a list", iface + "DNS = 10.8.0.1, " + k + "\n" + peer, 4, "DNS: "},
		{"under Endpoint", iface + peer + "Endpoint = " + k + "\n", 7, "Endpoint: "},
		{"under Endpoint, with a port", iface + peer + "Endpoint = " + k + ":51820\n", 7, "Endpoint: "},
		{"under AllowedIPs", iface + peer + "AllowedIPs = " + k + "\n", 7, "AllowedIPs: "},
		{"under Address", "[Interface]\nPrivateKey = " + testPriv + "\nAddress = " + k + "\n", 3, "Address: "},
		{"under MTU", iface + "MTU = " + k + "\n", 4, "MTU: "},
		{"under ListenPort", iface + "ListenPort = " + k + "\n", 4, "ListenPort: "},
		{"under PersistentKeepalive", iface + peer + "PersistentKeepalive = " + k + "\n", 7, "PersistentKeepalive: "},
		{"PublicKey in [Interface]", "[Interface]\nPublicKey = " + k + "\n", 2, `unknown key "PublicKey" in [Interface]`},
		{"PrivateKey in [Peer]", iface + peer + "PrivateKey = " + k + "\n", 7, `unknown key "PrivateKey" in [Peer]`},
		{"before any section", "PrivateKey = " + k + "\n", 1, "PrivateKey outside of a section"},
		{"as a section name", "[" + k + "]\n", 1, "unknown section"},
		{"as a key name", "[Interface]\n" + k + "x = 1\n", 2, "unknown key"},
		{"a bad PrivateKey", "[Interface]\nPrivateKey = " + k[:40] + "\n", 2, "PrivateKey: a key is 44 base64 characters, this is 40"},
		{"PrivateKey twice", iface + "PrivateKey = " + k + "\n", 4, "PrivateKey given twice"},
		{"a control character in the line", "[Interface]\nPrivateKey = " + k + "\x01\n", 2, "control character"},
		{"invalid UTF-8 in the line", "[Interface]\nPrivateKey = " + k + "\xff\n", 2, "not valid UTF-8"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.conf))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse: %v, want a *ParseError", err)
			}
			if pe.Line != c.line || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q, want line %d saying %q", err, c.line, c.msg)
			}
			for _, w := range keyWindows(k) {
				if strings.Contains(err.Error(), w) {
					t.Fatalf("the error shows key material (%q): %v", w, err)
				}
			}
		})
	}
}
