package wgclient

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Config is a wg-quick configuration file, as far as vpnd-wg uses it.
type Config struct {
	Interface Interface
	Peers     []Peer
}

// Interface is the [Interface] section.
type Interface struct {
	PrivateKey Key
	// Addresses are the tunnel's own addresses, host bits kept
	// (10.8.0.2/24). A bare address is a /32 or /128.
	Addresses []netip.Prefix
	// DNS holds the DNS= entries that are IP addresses; SearchDomains
	// the ones that are names, as wg-quick reads them.
	DNS           []netip.Addr
	SearchDomains []string
	MTU           int // 0: not given
	ListenPort    int // 0: not given, a random port
}

// Peer is one [Peer] section.
type Peer struct {
	PublicKey    Key
	PresharedKey Key    // zero: none
	Endpoint     string // host:port as written ("" if none); see Resolve
	// AllowedIPs are masked to their prefix (10.0.0.0/8, not 10.1.2.3/8),
	// as wg(8) applies them.
	AllowedIPs          []netip.Prefix
	PersistentKeepalive int // seconds; 0 is off
}

// ParseError is what is wrong with a configuration file, and where.
//
// The file holds the private key, and a key can end up anywhere: under a
// misspelt name, on a line without "=", under DNS or Endpoint. So an error
// quotes a line, or a value from it, only when nothing in it could be key
// material (see shown): a key is 44 base64 characters, and what is shown
// has no run of 12 of them but the names of wg-quick's keys. Otherwise it
// names the line by its number alone.
type ParseError struct {
	File string // the file name, if known
	Line int    // 1-based; 0 when the error is about the file as a whole
	Text string // the line as written, trimmed; "" when it is not shown
	Msg  string
}

func (e *ParseError) Error() string {
	where := e.File
	if e.Line > 0 {
		if where != "" {
			where += ":"
		}
		where += fmt.Sprintf("line %d", e.Line)
		if e.Text != "" {
			where += fmt.Sprintf(" %q", e.Text)
		}
	}
	if where == "" {
		return e.Msg
	}
	return where + ": " + e.Msg
}

// Limits that keep a hostile file from costing more than a real one could.
const (
	maxLineLen  = 4096
	maxShownLen = 120 // the longest line an error quotes
)

// Keys of wg-quick that vpnd-wg knows and deliberately does not support,
// with the reason it gives. Any other unknown key is a typo.
var unsupportedKeys = map[string]string{
	"table":      "routes are vpnd's: they go into vpnd's own table, for your user only",
	"fwmark":     "vpnd protects the tunnel socket instead of marking it yourself",
	"preup":      "vpnd-wg runs no commands",
	"postup":     "vpnd-wg runs no commands",
	"predown":    "vpnd-wg runs no commands",
	"postdown":   "vpnd-wg runs no commands",
	"saveconfig": "vpnd-wg never writes the configuration file",
}

// ParseFile reads and parses the wg-quick configuration file at path.
func ParseFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfg, err := Parse(f)
	var pe *ParseError
	if errors.As(err, &pe) {
		pe.File = path
	}
	return cfg, err
}

// section is the parser's state for the section being read.
type section struct {
	kind string // "interface" or "peer"
	line int    // its header's line
	text string
	seen map[string]int // key → the line that set it (single-valued keys)
}

type lineRef struct {
	line int
	text string
}

type parser struct {
	cfg       Config
	haveIface bool
	cur       *section
	lineNo    int
	text      string // the current line, for errors
	peerKeys  map[Key]lineRef
	routedBy  map[netip.Prefix]int // AllowedIPs prefix → line that gave it
}

// Parse reads a wg-quick configuration: [Interface] with PrivateKey,
// Address, DNS, MTU and ListenPort, and one or more [Peer] sections with
// PublicKey, PresharedKey, Endpoint, AllowedIPs and PersistentKeepalive.
// Like wg(8), keys and section names are case-insensitive, "#" starts a
// comment, and Address, DNS and AllowedIPs are comma-separated lists that
// may repeat. Anything else, an unknown key, a malformed value, a key
// given twice, is an error that names the line.
func Parse(r io.Reader) (*Config, error) {
	p := &parser{peerKeys: map[Key]lineRef{}, routedBy: map[netip.Prefix]int{}}
	br := bufio.NewReader(r)
	for {
		raw, err := readLine(br)
		if errors.Is(err, errLongLine) {
			return nil, &ParseError{Line: p.lineNo + 1, Msg: fmt.Sprintf("line longer than %d bytes", maxLineLen)}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read configuration: %w", err)
		}
		if err == nil || len(raw) > 0 {
			p.lineNo++
			if perr := p.line(raw); perr != nil {
				return nil, perr
			}
		}
		if err != nil {
			break
		}
	}
	if err := p.endSection(); err != nil {
		return nil, err
	}
	if !p.haveIface {
		return nil, &ParseError{Msg: "no [Interface] section"}
	}
	if len(p.cfg.Peers) == 0 {
		return nil, &ParseError{Msg: "no [Peer] section"}
	}
	if own, ok := p.peerKeys[p.cfg.Interface.PrivateKey.PublicKey()]; ok {
		return nil, &ParseError{Line: own.line, Text: own.text, Msg: "PublicKey: this is the interface's own public key"}
	}
	if len(p.routedBy) == 0 {
		// With no routes at all vpnd would route everything (its
		// default); refuse rather than invert the meaning.
		return nil, &ParseError{Msg: "no peer has AllowedIPs: nothing would be routed into the tunnel"}
	}
	return &p.cfg, nil
}

var errLongLine = errors.New("line too long")

// readLine returns the next line without its "\n" (and without one "\r"
// before it), or errLongLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLineLen+2 {
			return nil, errLongLine
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > maxLineLen {
			return nil, errLongLine
		}
		return line, err
	}
}

func (p *parser) errorf(format string, args ...any) error {
	return &ParseError{Line: p.lineNo, Text: p.text, Msg: fmt.Sprintf(format, args...)}
}

// display is a line as an error quotes it: control characters and
// invalid UTF-8 replaced, trimmed, or "" when it is not shown (see shown).
func display(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return '?'
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if key, _, ok := strings.Cut(s, "="); ok && isSecretKey(key) {
		return ""
	}
	if len(s) > maxShownLen || !couldShow(s) {
		return ""
	}
	return s
}

// minKeyRun is the shortest run of base64 characters that an error never
// shows, but for the names of wg-quick's keys: a key is 44 of them, and a
// key cut in four by stray characters still leaves a run of 11.
const minKeyRun = 12

// keyNames are the names of wg-quick's keys and sections, lower case: the
// only runs of minKeyRun base64 characters or more that an error shows.
var keyNames = map[string]bool{
	"interface": true, "peer": true, "address": true, "dns": true, "mtu": true, "listenport": true,
	"publickey": true, "endpoint": true, "allowedips": true, "persistentkeepalive": true,
	"table": true, "fwmark": true, "preup": true, "postup": true, "predown": true, "postdown": true, "saveconfig": true,
}

// couldShow reports whether s holds nothing that could be key material:
// no run of minKeyRun or more base64 characters ([A-Za-z0-9+/=]) that is
// not one of keyNames.
func couldShow(s string) bool {
	start := -1
	for i := 0; i <= len(s); i++ {
		if i < len(s) && isBase64(s[i]) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 && i-start >= minKeyRun && !keyNames[strings.ToLower(s[start:i])] {
			return false
		}
		start = -1
	}
	return true
}

func isBase64(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '='
}

// shown is a value from the file as an error quotes it, or a note that it
// is not shown: a value that could be key material (couldShow), or one
// longer than 64 bytes.
func shown(v string) string {
	if len(v) > 64 || !couldShow(v) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "(a value not shown: it could be key material)"
	}
	return strconv.Quote(v)
}

// plainName reports whether a key or section name from the file may be
// shown: 1-24 ASCII letters and spaces, which no key is.
func plainName(n string) bool {
	return len(n) > 0 && len(n) <= 24 && !strings.ContainsFunc(n, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || r == ' ')
	})
}

// notShown ends an error about a name that plainName refuses.
const notShown = " (its name is not shown: it could be key material)"

// isSecretKey reports whether a line's key names key material. It looks at
// the letters only, so that a key the parser will refuse (with a control
// character, a stray byte or a space inside it) is still known for one:
// such a line is never quoted, whatever its value looks like.
func isSecretKey(key string) bool {
	var b strings.Builder
	for _, r := range key {
		if 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' {
			b.WriteRune(r | 0x20)
		}
	}
	switch b.String() {
	case "privatekey", "presharedkey":
		return true
	}
	return false
}

func (p *parser) line(raw []byte) error {
	s := string(raw)
	p.text = display(s)
	if !utf8.ValidString(s) {
		return p.errorf("not valid UTF-8")
	}
	for _, c := range s {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return p.errorf("control character %q", c)
		}
	}
	if i := strings.IndexByte(s, '#'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	if strings.HasPrefix(s, "[") {
		return p.header(s)
	}
	key, value, ok := strings.Cut(s, "=")
	key, value = strings.TrimSpace(key), strings.TrimSpace(value)
	lkey := strings.ToLower(key)
	if !ok {
		return p.errorf("expected Key = Value or a [Section]")
	}
	if key == "" {
		return p.errorf("no key before \"=\"")
	}
	if p.cur == nil {
		if !plainName(key) {
			return p.errorf("a key outside of a section: [Interface] or [Peer] must come first" + notShown)
		}
		return p.errorf("%s outside of a section: [Interface] or [Peer] must come first", key)
	}
	if value == "" {
		if !plainName(key) {
			return p.errorf("a key without a value" + notShown)
		}
		return p.errorf("%s has no value", key)
	}
	if p.cur.kind == "interface" {
		return p.interfaceKey(lkey, key, value)
	}
	return p.peerKey(lkey, key, value)
}

func (p *parser) header(s string) error {
	if !strings.HasSuffix(s, "]") {
		return p.errorf("a section header must end with \"]\"")
	}
	name := strings.TrimSpace(s[1 : len(s)-1])
	if err := p.endSection(); err != nil {
		return err
	}
	switch strings.ToLower(name) {
	case "interface":
		if p.haveIface {
			return p.errorf("a second [Interface] section")
		}
		p.haveIface = true
		p.cur = &section{kind: "interface", line: p.lineNo, text: p.text, seen: map[string]int{}}
	case "peer":
		p.cfg.Peers = append(p.cfg.Peers, Peer{})
		p.cur = &section{kind: "peer", line: p.lineNo, text: p.text, seen: map[string]int{}}
	default:
		if !plainName(name) {
			return p.errorf("unknown section: want [Interface] or [Peer]" + notShown)
		}
		return p.errorf("unknown section [%s]: want [Interface] or [Peer]", name)
	}
	return nil
}

// endSection checks that the section just read has its required keys.
func (p *parser) endSection() error {
	s := p.cur
	if s == nil {
		return nil
	}
	missing := func(key string) error {
		return &ParseError{Line: s.line, Text: s.text, Msg: "no " + key + " in this section"}
	}
	switch s.kind {
	case "interface":
		if _, ok := s.seen["privatekey"]; !ok {
			return missing("PrivateKey")
		}
		if len(p.cfg.Interface.Addresses) == 0 {
			return missing("Address")
		}
	case "peer":
		if _, ok := s.seen["publickey"]; !ok {
			return missing("PublicKey")
		}
	}
	return nil
}

// once records a single-valued key and refuses it the second time.
func (p *parser) once(lkey, key string) error {
	if first, ok := p.cur.seen[lkey]; ok {
		return p.errorf("%s given twice in this section (first on line %d)", key, first)
	}
	p.cur.seen[lkey] = p.lineNo
	return nil
}

func (p *parser) interfaceKey(lkey, key, value string) error {
	ifc := &p.cfg.Interface
	switch lkey {
	case "privatekey":
		if err := p.once(lkey, "PrivateKey"); err != nil {
			return err
		}
		k, err := ParseKey(value)
		if err != nil {
			return p.errorf("PrivateKey: %v", err)
		}
		if k.IsZero() {
			return p.errorf("PrivateKey: the all-zero key means no key")
		}
		ifc.PrivateKey = k
	case "address":
		return p.list("Address", value, func(item string) error {
			a, err := parseAddress(item)
			if err != nil {
				return err
			}
			for _, b := range ifc.Addresses {
				if b.Addr() == a.Addr() {
					return fmt.Errorf("%s is given twice", a.Addr())
				}
			}
			ifc.Addresses = append(ifc.Addresses, a)
			return nil
		})
	case "dns":
		return p.list("DNS", value, func(item string) error {
			if a, err := netip.ParseAddr(item); err == nil {
				if a.Zone() != "" {
					return fmt.Errorf("%s: a DNS server cannot have a zone", shown(item))
				}
				ifc.DNS = append(ifc.DNS, a.Unmap())
				return nil
			}
			// wg-quick takes what is not an IP address as a search domain.
			name := strings.TrimSuffix(item, ".")
			if !validDNSName(name) {
				return fmt.Errorf("%s is neither an IP address nor a DNS name", shown(item))
			}
			ifc.SearchDomains = append(ifc.SearchDomains, name)
			return nil
		})
	case "mtu":
		if err := p.once(lkey, "MTU"); err != nil {
			return err
		}
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil || n < 576 || n > 65535 {
			return p.errorf("MTU: want a number from 576 to 65535")
		}
		ifc.MTU = int(n)
	case "listenport":
		if err := p.once(lkey, "ListenPort"); err != nil {
			return err
		}
		n, err := strconv.ParseUint(value, 10, 16)
		if err != nil {
			return p.errorf("ListenPort: want a port number from 0 to 65535")
		}
		ifc.ListenPort = int(n)
	default:
		return p.unknown(lkey, key, "[Interface]")
	}
	return nil
}

func (p *parser) peerKey(lkey, key, value string) error {
	peer := &p.cfg.Peers[len(p.cfg.Peers)-1]
	switch lkey {
	case "publickey":
		if err := p.once(lkey, "PublicKey"); err != nil {
			return err
		}
		k, err := ParseKey(value)
		if err != nil {
			return p.errorf("PublicKey: %v", err)
		}
		if k.IsZero() {
			return p.errorf("PublicKey: the all-zero key means no key")
		}
		if first, ok := p.peerKeys[k]; ok {
			return p.errorf("PublicKey: the same peer as on line %d", first.line)
		}
		p.peerKeys[k] = lineRef{p.lineNo, p.text}
		peer.PublicKey = k
	case "presharedkey":
		if err := p.once(lkey, "PresharedKey"); err != nil {
			return err
		}
		k, err := ParseKey(value)
		if err != nil {
			return p.errorf("PresharedKey: %v", err)
		}
		peer.PresharedKey = k
	case "endpoint":
		if err := p.once(lkey, "Endpoint"); err != nil {
			return err
		}
		if err := checkEndpoint(value); err != nil {
			return p.errorf("Endpoint: %v", err)
		}
		peer.Endpoint = value
	case "allowedips":
		return p.list("AllowedIPs", value, func(item string) error {
			pfx, err := parseAddress(item)
			if err != nil {
				return err
			}
			pfx = pfx.Masked()
			if first, ok := p.routedBy[pfx]; ok {
				return fmt.Errorf("%s is already in AllowedIPs on line %d", pfx, first)
			}
			p.routedBy[pfx] = p.lineNo
			peer.AllowedIPs = append(peer.AllowedIPs, pfx)
			return nil
		})
	case "persistentkeepalive":
		if err := p.once(lkey, "PersistentKeepalive"); err != nil {
			return err
		}
		if strings.EqualFold(value, "off") {
			return nil
		}
		n, err := strconv.ParseUint(value, 10, 16)
		if err != nil {
			return p.errorf("PersistentKeepalive: want \"off\" or seconds from 0 to 65535")
		}
		peer.PersistentKeepalive = int(n)
	default:
		return p.unknown(lkey, key, "[Peer]")
	}
	return nil
}

func (p *parser) unknown(lkey, key, where string) error {
	if why, ok := unsupportedKeys[lkey]; ok && where == "[Interface]" {
		return p.errorf("%s is not supported by vpnd-wg: %s", key, why)
	}
	if !plainName(key) {
		return p.errorf("unknown key in %s%s", where, notShown)
	}
	return p.errorf("unknown key %q in %s", key, where)
}

// list applies f to each comma-separated item of value.
func (p *parser) list(key, value string, f func(string) error) error {
	for _, item := range strings.Split(value, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return p.errorf("%s: empty entry in the list", key)
		}
		if err := f(item); err != nil {
			return p.errorf("%s: %v", key, err)
		}
	}
	return nil
}

// parseAddress reads an address with an optional prefix length; a bare
// address is a host prefix, as wg(8) reads one.
func parseAddress(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%s is not an IP address or prefix", shown(s))
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s is not an IP prefix", shown(s))
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%s: write an IPv4-mapped prefix as IPv4", shown(s))
	}
	return pfx, nil
}

// checkEndpoint accepts host:port, [v6]:port, with a numeric port 1-65535
// and a host that is an IP address or a DNS name.
func checkEndpoint(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port or [IPv6]:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("port %s: want a number from 1 to 65535", shown(port))
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return fmt.Errorf("address %s: zones are not supported", shown(host))
		}
		if strings.Contains(host, ":") && !strings.HasPrefix(s, "[") {
			return fmt.Errorf("write an IPv6 endpoint as [address]:port")
		}
		return nil
	}
	if !validDNSName(strings.TrimSuffix(host, ".")) {
		return fmt.Errorf("host %s is neither an IP address nor a DNS name", shown(host))
	}
	return nil
}

// validDNSName checks RFC 1123 host syntax: labels of 1-63 letters,
// digits and hyphens, not starting or ending with a hyphen, 253 bytes in
// all, and not all digits (that would be a malformed address).
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	digitsOnly := true
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
				digitsOnly = false
			case c >= '0' && c <= '9':
			default:
				return false
			}
		}
	}
	return !digitsOnly
}

// Marshal writes cfg in wg-quick's format. Parse(Marshal(cfg)) gives cfg
// back, with PersistentKeepalive 0 written as nothing.
func (cfg *Config) Marshal() []byte {
	var b bytes.Buffer
	ifc := cfg.Interface
	b.WriteString("[Interface]\n")
	fmt.Fprintf(&b, "PrivateKey = %s\n", ifc.PrivateKey)
	fmt.Fprintf(&b, "Address = %s\n", joinPrefixes(ifc.Addresses))
	var dns []string
	for _, a := range ifc.DNS {
		dns = append(dns, a.String())
	}
	dns = append(dns, ifc.SearchDomains...)
	if len(dns) > 0 {
		fmt.Fprintf(&b, "DNS = %s\n", strings.Join(dns, ", "))
	}
	if ifc.MTU != 0 {
		fmt.Fprintf(&b, "MTU = %d\n", ifc.MTU)
	}
	if ifc.ListenPort != 0 {
		fmt.Fprintf(&b, "ListenPort = %d\n", ifc.ListenPort)
	}
	for _, peer := range cfg.Peers {
		b.WriteString("\n[Peer]\n")
		fmt.Fprintf(&b, "PublicKey = %s\n", peer.PublicKey)
		if !peer.PresharedKey.IsZero() {
			fmt.Fprintf(&b, "PresharedKey = %s\n", peer.PresharedKey)
		}
		if peer.Endpoint != "" {
			fmt.Fprintf(&b, "Endpoint = %s\n", peer.Endpoint)
		}
		if len(peer.AllowedIPs) > 0 {
			fmt.Fprintf(&b, "AllowedIPs = %s\n", joinPrefixes(peer.AllowedIPs))
		}
		if peer.PersistentKeepalive != 0 {
			fmt.Fprintf(&b, "PersistentKeepalive = %d\n", peer.PersistentKeepalive)
		}
	}
	return b.Bytes()
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
