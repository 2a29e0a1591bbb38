package config

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
)

// FuzzParse holds Parse to the rules of docs/protocol.md's VpnConfig,
// whatever it is given: it never panics; a refusal is 19900001 (or the
// user database's own 19900002) with a detail that names a JSON path
// present in the params; and an accepted config satisfies every rule of
// the VpnConfig table (checkInvariants). The seed corpus is in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"addresses":["10.8.0.2/24"]}`))
	f.Fuzz(func(t *testing.T, params []byte) {
		cfg, err := Parse(params, testUsers)
		if err != nil {
			if cfg != nil {
				t.Fatalf("Parse returned a config and an error")
			}
			var e *errs.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is not an *errs.Error", err, err)
			}
			if e.Code != errs.CodeInvalidParam && !(e.Code == errs.CodeInternal && strings.Contains(e.Detail, "user database")) {
				t.Fatalf("unexpected code %d: %s", e.Code, e.Detail)
			}
			if why := detailPathProblem(e.Detail, params); why != "" {
				t.Fatalf("params %q: detail %q: %s", params, e.Detail, why)
			}
			return
		}
		if !json.Valid(params) {
			t.Fatalf("Parse accepted invalid JSON %q", params)
		}
		if err := checkInvariants(cfg); err != nil {
			t.Fatalf("%s\nparams: %s\nconfig: %+v", err, params, cfg)
		}
	})
}

// detailPath splits a detail into its JSON path (member, optional index,
// then keys) and the rest. Members and keys that are not plain are quoted.
var detailPath = regexp.MustCompile(`^("(?:[^"\\]|\\.)*"|[A-Za-z0-9_]+)(?:\[(\d+)\])?((?:\.(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_]+))*): (.*)$`)

// detailPathProblem says why the path at the start of detail does not
// name a value in params, or "" if it does. A value that is "required"
// need not be there, but the object holding it must.
func detailPathProblem(detail string, params []byte) string {
	switch detail {
	case "params: expected object", "params: invalid JSON",
		"trustedApplications and blockedApplications are mutually exclusive":
		return ""
	}
	if strings.HasPrefix(detail, "params: expected object, got ") {
		return ""
	}
	if rest, ok := strings.CutPrefix(detail, "isIPv4Accepted, isIPv6Accepted: "); ok {
		if rest != "no address family accepted" {
			return "unexpected detail"
		}
		return ""
	}
	m := detailPath.FindStringSubmatch(detail)
	if m == nil {
		return "no path at its start"
	}
	var doc any
	if err := json.Unmarshal(params, &doc); err != nil {
		return "params are not JSON, yet the detail names a path"
	}
	names := []string{unquoteKey(m[1])}
	for _, k := range regexp.MustCompile(`\.("(?:[^"\\]|\\.)*"|[A-Za-z0-9_]+)`).FindAllStringSubmatch(m[3], -1) {
		names = append(names, unquoteKey(k[1]))
	}
	required := m[4] == "required"
	v := doc
	for i, name := range names {
		last := i == len(names)-1
		obj, ok := v.(map[string]any)
		if !ok {
			return fmt.Sprintf("%q is not inside an object", name)
		}
		if v, ok = obj[name]; !ok {
			if last && required {
				return ""
			}
			return fmt.Sprintf("no member %q", name)
		}
		if i == 0 && m[2] != "" {
			arr, ok := v.([]any)
			n, _ := strconv.Atoi(m[2])
			if !ok || n >= len(arr) {
				return fmt.Sprintf("no element %s[%d]", name, n)
			}
			v = arr[n]
		}
	}
	return ""
}

// unquoteKey returns a member's name as encoding/json decodes it: a
// quoted name is unquoted, and invalid UTF-8 becomes U+FFFD, byte by byte.
func unquoteKey(s string) string {
	if u, err := strconv.Unquote(s); err == nil {
		s = u
	}
	return string([]rune(s))
}

// checkInvariants returns an error describing the first rule of
// docs/protocol.md's VpnConfig that cfg breaks. It checks each rule by
// itself, without the parser's own helpers.
func checkInvariants(cfg *Config) error {
	if n := len(cfg.Addresses); n < 1 || n > MaxAddresses {
		return fmt.Errorf("%d addresses", n)
	}
	var hasV4, hasV6 bool
	seen := make(map[netip.Addr]bool)
	for _, a := range cfg.Addresses {
		ip := a.Addr()
		if !a.IsValid() || ip.Zone() != "" || ip.Is4In6() {
			return fmt.Errorf("address %v malformed", a)
		}
		if a.Bits() < 1 {
			return fmt.Errorf("address %v has prefix 0", a)
		}
		if ip.IsLoopback() || ip.IsUnspecified() || ip.IsMulticast() || ip == netip.MustParseAddr("255.255.255.255") {
			return fmt.Errorf("address %v is not unicast", a)
		}
		if ip.Is4() && a.Bits() <= 30 {
			b := ip.As4()
			host := binary.BigEndian.Uint32(b[:]) & (1<<(32-a.Bits()) - 1)
			if host == 0 || host == 1<<(32-a.Bits())-1 {
				return fmt.Errorf("address %v is a network or broadcast address", a)
			}
		}
		if seen[ip] {
			return fmt.Errorf("address %v duplicated", a)
		}
		seen[ip] = true
		hasV4 = hasV4 || ip.Is4()
		hasV6 = hasV6 || ip.Is6()
	}
	if cfg.MTU < MinMTU || cfg.MTU > MaxMTU || hasV6 && cfg.MTU < MinMTUIPv6 {
		return fmt.Errorf("mtu %d", cfg.MTU)
	}
	if !cfg.IPv4 && !cfg.IPv6 || cfg.IPv4 && !hasV4 || cfg.IPv6 && !hasV6 {
		return fmt.Errorf("accepted families v4=%v v6=%v with addresses v4=%v v6=%v", cfg.IPv4, cfg.IPv6, hasV4, hasV6)
	}
	accepted := func(p netip.Prefix) bool { return p.Addr().Is4() && cfg.IPv4 || p.Addr().Is6() && cfg.IPv6 }
	if len(cfg.Routes) == 0 {
		return errors.New("no included route")
	}
	if n := len(cfg.Routes) + len(cfg.ExcludedRoutes); n > MaxRoutes+2 {
		return fmt.Errorf("%d routes", n)
	}
	dsts := make(map[netip.Prefix]bool)
	for _, r := range cfg.Routes {
		if !r.Dst.IsValid() || r.Dst != r.Dst.Masked() || r.Dst.Addr().Is4In6() || r.Dst.Addr().Zone() != "" {
			return fmt.Errorf("route %v not canonical", r.Dst)
		}
		if !accepted(r.Dst) {
			return fmt.Errorf("route %v of a family not accepted", r.Dst)
		}
		if dsts[r.Dst] {
			return fmt.Errorf("route %v twice", r.Dst)
		}
		dsts[r.Dst] = true
		if r.Gateway.IsValid() {
			if r.Gateway.Is4() != r.Dst.Addr().Is4() || r.Gateway.IsUnspecified() {
				return fmt.Errorf("route %v via %v", r.Dst, r.Gateway)
			}
			inside := false
			for _, a := range cfg.Addresses {
				if a.Addr() == r.Gateway {
					return fmt.Errorf("route %v via own address", r.Dst)
				}
				inside = inside || a.Contains(r.Gateway)
			}
			if !inside {
				return fmt.Errorf("route %v via %v outside the addresses", r.Dst, r.Gateway)
			}
		}
	}
	for _, p := range cfg.ExcludedRoutes {
		if !p.IsValid() || p != p.Masked() || !accepted(p) || dsts[p] {
			return fmt.Errorf("excluded route %v invalid, unaccepted or also included", p)
		}
		dsts[p] = true
	}
	if len(cfg.DNSAddresses) > MaxDNS || len(cfg.SearchDomains) > MaxSearchDomains {
		return errors.New("too many dns entries")
	}
	dns := make(map[netip.Addr]bool)
	for _, a := range cfg.DNSAddresses {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() ||
			a == netip.MustParseAddr("255.255.255.255") || dns[a] {
			return fmt.Errorf("dns address %v", a)
		}
		dns[a] = true
	}
	label := regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	domains := make(map[string]bool)
	for _, d := range cfg.SearchDomains {
		name := strings.TrimSuffix(d, ".")
		if name == "" || len(name) > 253 {
			return fmt.Errorf("search domain %q", d)
		}
		for _, l := range strings.Split(name, ".") {
			if !label.MatchString(l) {
				return fmt.Errorf("search domain %q", d)
			}
		}
		if key := strings.ToLower(name); domains[key] {
			return fmt.Errorf("search domain %q twice", d)
		} else {
			domains[key] = true
		}
	}
	if len(cfg.Trusted) > 0 && len(cfg.Blocked) > 0 {
		return errors.New("both application lists set")
	}
	for _, list := range [][]User{cfg.Trusted, cfg.Blocked} {
		if len(list) > MaxApplications {
			return errors.New("too many applications")
		}
		uids := make(map[uint32]bool)
		for _, u := range list {
			if uids[u.UID] || u.UID > maxUID {
				return fmt.Errorf("uid %d duplicated or out of range", u.UID)
			}
			uids[u.UID] = true
		}
	}
	return nil
}

// The seed corpus says by its file names which seeds are valid: keep it
// honest, so the fuzzer starts from both sides of the validator.
func TestSeedCorpus(t *testing.T) {
	files, err := filepath.Glob("testdata/fuzz/FuzzParse/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no seed corpus: %v", err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" {
			t.Fatalf("%s: not a fuzz corpus file", file)
		}
		params, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		_, err = Parse([]byte(params), testUsers)
		if valid := strings.HasPrefix(filepath.Base(file), "valid_"); valid != (err == nil) {
			t.Errorf("%s: Parse error = %v", file, err)
		}
	}
}
