package wgclient

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// Keys from wg(8)'s manual page: valid base64 32-byte keys.
const (
	testPriv  = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	testPeer1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
	testPeer2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
	testPSK   = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA="
)

const goodConfig = `# a comment line
[Interface]
PrivateKey = ` + testPriv + `
Address = 10.8.0.2/24, fd00:8::2/64   # trailing comment
Address = 10.9.0.2
DNS = 10.8.0.1, fd00:8::1, corp.example, example.org.
MTU = 1400
ListenPort = 51820

[Peer]
PublicKey = ` + testPeer1 + `
PresharedKey = ` + testPSK + `
Endpoint = 192.0.2.2:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 25

[peer]
publickey=` + testPeer2 + `
endpoint = [2001:db8::1]:443
allowedips = 10.1.2.3/16
allowedips = 192.168.7.9
persistentkeepalive = off
`

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mustKey(t testing.TB, s string) Key {
	t.Helper()
	k, err := ParseKey(s)
	if err != nil {
		t.Fatalf("ParseKey(%q): %v", s, err)
	}
	return k
}

func TestParseGood(t *testing.T) {
	cfg, err := Parse(strings.NewReader(strings.ReplaceAll(goodConfig, "MTU = 1400\n", "MTU = 1400\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	pfx := netip.MustParsePrefix
	want := &Config{
		Interface: Interface{
			PrivateKey:    mustKey(t, testPriv),
			Addresses:     []netip.Prefix{pfx("10.8.0.2/24"), pfx("fd00:8::2/64"), pfx("10.9.0.2/32")},
			DNS:           []netip.Addr{netip.MustParseAddr("10.8.0.1"), netip.MustParseAddr("fd00:8::1")},
			SearchDomains: []string{"corp.example", "example.org"},
			MTU:           1400,
			ListenPort:    51820,
		},
		Peers: []Peer{
			{
				PublicKey:           mustKey(t, testPeer1),
				PresharedKey:        mustKey(t, testPSK),
				Endpoint:            "192.0.2.2:51820",
				AllowedIPs:          []netip.Prefix{pfx("0.0.0.0/0"), pfx("::/0")},
				PersistentKeepalive: 25,
			},
			{
				PublicKey: mustKey(t, testPeer2),
				Endpoint:  "[2001:db8::1]:443",
				// Host bits are masked, as wg(8) applies them; a bare
				// address is a host route.
				AllowedIPs: []netip.Prefix{pfx("10.1.0.0/16"), pfx("192.168.7.9/32")},
			},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", cfg, want)
	}
}

// TestParseErrors: every malformed or unknown line is refused with the
// line's number, its text where nothing in it could be key material, and
// a message saying what is wrong.
func TestParseErrors(t *testing.T) {
	iface := "[Interface]\nPrivateKey = " + testPriv + "\nAddress = 10.8.0.2/24\n"
	peer := "[Peer]\nPublicKey = " + testPeer1 + "\nAllowedIPs = 0.0.0.0/0\n"
	cases := []struct {
		name, conf string
		line       int
		text, msg  string // text "" means "don't check"
	}{
		{"key before any section", "Address = 10.8.0.2/24\n" + iface + peer, 1, "Address = 10.8.0.2/24", "outside of a section"},
		{"unknown key", iface + "Adress = 10.8.0.3/24\n" + peer, 4, "Adress = 10.8.0.3/24", `unknown key "Adress" in [Interface]`},
		{"unknown peer key", iface + peer + "Foo = bar\n", 7, "Foo = bar", `unknown key "Foo" in [Peer]`},
		{"unknown section", iface + "[Peers]\n", 4, "[Peers]", "unknown section [Peers]"},
		{"unterminated header", iface + "[Peer\n", 4, "[Peer", `must end with "]"`},
		{"no equals", iface + "MTU 1420\n" + peer, 4, "MTU 1420", "expected Key = Value"},
		{"empty key", iface + " = 3\n" + peer, 4, "= 3", `no key before "="`},
		{"empty value", iface + "MTU =\n" + peer, 4, "MTU =", "MTU has no value"},
		{"empty value with comment", iface + "DNS = # none\n" + peer, 4, "DNS = # none", "DNS has no value"},
		{"second interface", iface + peer + "[Interface]\n", 7, "[Interface]", "a second [Interface] section"},
		{"bad private key", "[Interface]\nPrivateKey = abc\nAddress = 10.8.0.2/24\n" + peer, 2, "", "PrivateKey: a key is 44 base64 characters, this is 3"},
		{"private key not base64", "[Interface]\nPrivateKey = " + strings.Repeat("!", 44) + "\n", 2, "", "not a base64-encoded 32-byte key"},
		{"private key non-canonical", "[Interface]\nPrivateKey = " + testPriv[:42] + "n=\n", 2, "", "not a base64-encoded 32-byte key"},
		{"zero private key", "[Interface]\nPrivateKey = " + Key{}.String() + "\n", 2, "", "the all-zero key means no key"},
		{"zero public key", iface + "[Peer]\nPublicKey = " + Key{}.String() + "\n", 5, "", "the all-zero key means no key"},
		{"private key twice", iface + "PrivateKey = " + testPriv + "\n" + peer, 4, "", "PrivateKey given twice in this section (first on line 2)"},
		{"missing private key", "[Interface]\nAddress = 10.8.0.2/24\n" + peer, 1, "[Interface]", "no PrivateKey in this section"},
		{"missing address", "[Interface]\nPrivateKey = " + testPriv + "\n" + peer, 1, "[Interface]", "no Address in this section"},
		{"missing public key", iface + "[Peer]\nAllowedIPs = 0.0.0.0/0\n", 4, "[Peer]", "no PublicKey in this section"},
		{"bad address", iface + "Address = 10.8.0.300/24\n" + peer, 4, "Address = 10.8.0.300/24", `Address: "10.8.0.300/24" is not an IP prefix`},
		{"bad prefix length", iface + "Address = 10.8.0.3/33\n" + peer, 4, "", `"10.8.0.3/33" is not an IP prefix`},
		{"address twice", iface + "Address = 10.8.0.2/16\n" + peer, 4, "", "Address: 10.8.0.2 is given twice"},
		{"empty list entry", iface + "Address = 10.8.0.3/24,\n" + peer, 4, "", "Address: empty entry in the list"},
		{"zoned address", iface + "Address = fe80::1%eth0\n" + peer, 4, "", "is not an IP address or prefix"},
		{"mapped prefix", iface + peer + "AllowedIPs = ::ffff:10.0.0.0/104\n", 7, "", "write an IPv4-mapped prefix as IPv4"},
		{"bad dns", iface + "DNS = 10.8.0.1, -bad-.example\n" + peer, 4, "", `DNS: "-bad-.example" is neither an IP address nor a DNS name`},
		{"numeric dns name", iface + "DNS = 10.8.1\n" + peer, 4, "", `"10.8.1" is neither`},
		{"mtu not a number", iface + "MTU = 1420b\n" + peer, 4, "MTU = 1420b", "MTU: want a number from 576 to 65535"},
		{"mtu too small", iface + "MTU = 575\n" + peer, 4, "", "MTU: want a number from 576 to 65535"},
		{"mtu too big", iface + "MTU = 65536\n" + peer, 4, "", "MTU: want a number from 576 to 65535"},
		{"mtu signed", iface + "MTU = +1420\n" + peer, 4, "", "MTU: want a number"},
		{"mtu twice", iface + "MTU = 1420\nMTU = 1400\n" + peer, 5, "MTU = 1400", "MTU given twice in this section (first on line 4)"},
		{"listen port too big", iface + "ListenPort = 65536\n" + peer, 4, "", "ListenPort: want a port number from 0 to 65535"},
		{"endpoint without port", iface + peer + "Endpoint = 192.0.2.2\n", 7, "Endpoint = 192.0.2.2", "Endpoint: want host:port"},
		{"endpoint port zero", iface + peer + "Endpoint = 192.0.2.2:0\n", 7, "", `Endpoint: port "0": want a number from 1 to 65535`},
		{"endpoint port name", iface + peer + "Endpoint = 192.0.2.2:wg\n", 7, "", `Endpoint: port "wg"`},
		{"endpoint bad host", iface + peer + "Endpoint = bad_host:51820\n", 7, "", `host "bad_host" is neither`},
		{"endpoint zone", iface + peer + "Endpoint = [fe80::1%eth0]:51820\n", 7, "", "zones are not supported"},
		{"endpoint twice", iface + peer + "Endpoint = 192.0.2.2:1\nEndpoint = 192.0.2.2:2\n", 8, "", "Endpoint given twice"},
		{"allowed ips bad", iface + peer + "AllowedIPs = 10.0.0.0/8/8\n", 7, "", `AllowedIPs: "10.0.0.0/8/8" is not an IP prefix`},
		{"allowed ips twice", iface + peer + "AllowedIPs = 0.0.0.0/0\n", 7, "", "0.0.0.0/0 is already in AllowedIPs on line 6"},
		{"allowed ips in two peers", iface + peer + "[Peer]\nPublicKey = " + testPeer2 + "\nAllowedIPs = 0.0.0.1/0\n", 9, "", "0.0.0.0/0 is already in AllowedIPs on line 6"},
		{"keepalive bad", iface + peer + "PersistentKeepalive = never\n", 7, "", `PersistentKeepalive: want "off" or seconds`},
		{"same peer twice", iface + peer + "[Peer]\nPublicKey = " + testPeer1 + "\n", 8, "", "PublicKey: the same peer as on line 5"},
		{"peer is self", iface + "[Peer]\nPublicKey = " + mustKey(t, testPriv).PublicKey().String() + "\nAllowedIPs = 0.0.0.0/0\n", 5, "", "this is the interface's own public key"},
		{"bad psk", iface + peer + "PresharedKey = xyz\n", 7, "", "PresharedKey: a key is 44"},
		{"control character", iface + "MTU = 14\x0020\n" + peer, 4, "MTU = 14?20", `control character '\x00'`},
		{"invalid utf-8", iface + "DNS = \xff\n" + peer, 4, "DNS = ?", "not valid UTF-8"},
		{"control character in private key", "[Interface]\nPrivateKey\f= " + testPriv + "\n", 2, "", `control character '\f'`},
		{"nul inside private key", "[Interface]\nPrivate\x00Key = " + testPriv + "\n", 2, "", `control character '\x00'`},
		{"invalid utf-8 in psk", iface + peer + "Preshared\xffKey = " + testPriv + "\n", 7, "", "not valid UTF-8"},
		{"space inside private key", "[Interface]\nPrivate Key = " + testPriv + "\n", 2, "", `unknown key "Private Key"`},
		{"long line", iface + "DNS = " + strings.Repeat("a", maxLineLen) + "\n", 4, "", "line longer than 4096 bytes"},
		{"table", iface + "Table = off\n" + peer, 4, "Table = off", "Table is not supported by vpnd-wg: routes are vpnd's"},
		{"fwmark", iface + "FwMark = 0x1\n" + peer, 4, "", "FwMark is not supported by vpnd-wg"},
		{"postup", iface + "PostUp = iptables -A ...\n" + peer, 4, "", "PostUp is not supported by vpnd-wg: vpnd-wg runs no commands"},
		{"predown", iface + "PreDown = x\n" + peer, 4, "", "PreDown is not supported"},
		{"saveconfig", iface + "SaveConfig = true\n" + peer, 4, "", "SaveConfig is not supported"},
		// Whole-file errors have no line.
		{"no interface", peer, 0, "", "no [Interface] section"},
		{"no peer", iface, 0, "", "no [Peer] section"},
		{"no allowed ips", iface + "[Peer]\nPublicKey = " + testPeer1 + "\n", 0, "", "no peer has AllowedIPs"},
		{"empty file", "", 0, "", "no [Interface] section"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse(strings.NewReader(c.conf))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse = %+v, %v; want a *ParseError", cfg, err)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with the error: %+v", cfg)
			}
			if pe.Line != c.line {
				t.Errorf("line %d, want %d (%v)", pe.Line, c.line, err)
			}
			if c.text != "" && pe.Text != c.text {
				t.Errorf("text %q, want %q", pe.Text, c.text)
			}
			if !strings.Contains(pe.Msg, c.msg) {
				t.Errorf("message %q, want it to contain %q", pe.Msg, c.msg)
			}
			if strings.Contains(err.Error(), testPriv) || strings.Contains(err.Error(), testPriv[:20]) {
				t.Errorf("the error shows the private key: %v", err)
			}
		})
	}
}

func TestParseErrorText(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wg0.conf")
	if err := os.WriteFile(path, []byte("[Interface]\nAdress = 10.8.0.2/24\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ParseFile(path)
	want := path + `:line 2 "Adress = 10.8.0.2/24": unknown key "Adress" in [Interface]`
	if err == nil || err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	cfg, err := Parse(strings.NewReader(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(bytes.NewReader(cfg.Marshal()))
	if err != nil {
		t.Fatalf("Parse(Marshal): %v\n%s", err, cfg.Marshal())
	}
	if !reflect.DeepEqual(cfg, again) {
		t.Errorf("round trip changed the config:\n%+v\n%+v", cfg, again)
	}
}

func TestKeys(t *testing.T) {
	// wg(8)'s manual pairs no keys, so check against RFC 7748's test
	// vector: Alice's private and public keys.
	priv := Key{0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66, 0x45,
		0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9, 0x2c, 0x2a}
	wantPub := Key{0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7, 0x5a,
		0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b, 0x4e, 0x6a}
	if got := priv.PublicKey(); got != wantPub {
		t.Errorf("PublicKey = %x, want %x", got, wantPub)
	}
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
		t.Errorf("generated key is not clamped: %x", k)
	}
	back, err := ParseKey(k.String())
	if err != nil || back != k {
		t.Errorf("ParseKey(String()) = %x, %v; want %x", back, err, k)
	}
}
