package wgclient

import (
	"bytes"
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// keyToken is a key as wg-quick writes one: 43 base64 characters and "=".
var keyToken = regexp.MustCompile(`[A-Za-z0-9+/]{43}=`)

// FuzzParse: Parse never panics; an error names a line that exists (or
// the whole file), never contains a key-length base64 token of the input,
// and never quotes a line whose key is PrivateKey or PresharedKey; a
// config it accepts is well formed and survives Marshal and Parse
// unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte("[Interface]\nPrivateKey = " + testPriv + "\nAddress = 10.8.0.2/24\n[Peer]\nPublicKey = " + testPeer1 + "\nAllowedIPs = 0.0.0.0/0\n"))
	f.Add([]byte("[Interface]\r\nAddress=10.8.0.2\r\n# x\r\n[Peer]\r\nEndpoint=[::1]:1\r\n"))
	f.Add([]byte("[interface]\nDNS = a.example, 1.1.1.1\nMTU = 1280\n"))
	f.Add([]byte("[Interface]\nPrivatKey = " + testPSK + "\n"))
	f.Add([]byte("[Interface]\nDNS = 10.8.0.1, " + testPSK + "\n"))
	f.Add([]byte("[Interface] PrivateKey = " + testPSK + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(bytes.NewReader(data))
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("not a *ParseError: %v", err)
			}
			if lines := bytes.Count(data, []byte("\n")) + 1; pe.Line < 0 || pe.Line > lines {
				t.Fatalf("error names line %d of %d: %v", pe.Line, lines, err)
			}
			for _, tok := range keyToken.FindAll(data, -1) {
				if strings.Contains(err.Error(), string(tok)) {
					t.Fatalf("error shows a key-length token of the input, %s: %v", tok, err)
				}
			}
			if pe.Line > 0 {
				line := strings.TrimSuffix(strings.Split(string(data), "\n")[pe.Line-1], "\r")
				key, _, hasValue := strings.Cut(line, "=")
				// Any key whose letters spell a key-material name, however
				// mangled by spaces, control characters or stray bytes.
				letters := strings.Map(func(r rune) rune {
					if 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' {
						return r
					}
					return -1
				}, key)
				switch strings.ToLower(letters) {
				case "privatekey", "presharedkey":
					if hasValue && pe.Text != "" {
						t.Fatalf("error quotes a line of key material: %v", err)
					}
				}
			}
			return
		}
		if cfg.Interface.PrivateKey.IsZero() {
			t.Fatalf("accepted a config without a private key")
		}
		if len(cfg.Interface.Addresses) == 0 || len(cfg.Peers) == 0 {
			t.Fatalf("accepted a config without addresses or peers: %+v", cfg)
		}
		for _, p := range cfg.Peers {
			for _, a := range p.AllowedIPs {
				if a != a.Masked() {
					t.Fatalf("AllowedIPs %s not masked", a)
				}
			}
		}
		again, err := Parse(bytes.NewReader(cfg.Marshal()))
		if err != nil {
			t.Fatalf("Parse(Marshal(cfg)): %v\n%s", err, cfg.Marshal())
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", cfg, again)
		}
	})
}
