package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
)

// FuzzParse checks that Parse never panics, that every failure is an
// *errs.Error with a detail, and that every success satisfies the
// invariants the manager and the kernel code rely on. It also holds Parse
// to the reference parser (reference_test.go), which leaves the JSON to
// encoding/json: both must accept the same Config, or refuse with the same
// code and detail; and the reader's own syntax check must agree with
// json.Valid. The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"addresses":["10.8.0.2/24"]}`))
	f.Fuzz(func(t *testing.T, params []byte) {
		if got, want := valid(params), json.Valid(params); got != want {
			t.Fatalf("valid(%q) = %v, json.Valid says %v", params, got, want)
		}
		if a, ok := parseDottedQuad(string(params)); ok {
			if want, err := netip.ParseAddr(string(params)); err != nil || a != want {
				t.Fatalf("parseDottedQuad(%q) = %v; netip says %v, %v", params, a, want, err)
			}
		}
		cfg, err := Parse(json.RawMessage(params), testUsers)
		compareWithReference(t, params, cfg, err)
		if err != nil {
			if cfg != nil {
				t.Fatalf("Parse returned a config and an error")
			}
			var e *errs.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is not an *errs.Error", err, err)
			}
			if e.Detail == "" {
				t.Fatalf("error without detail: %v", err)
			}
			if e.Code != errs.CodeInvalidParam && e.Code != errs.CodeInternal {
				t.Fatalf("unexpected code %d", e.Code)
			}
			return
		}
		if err := checkInvariants(cfg); err != nil {
			t.Fatalf("%s\nparams: %s\nconfig: %+v", err, params, cfg)
		}
	})
}

// compareWithReference fails t unless refParse gives the same answer for
// params as Parse gave (cfg, err).
func compareWithReference(t *testing.T, params []byte, cfg *Config, err error) {
	t.Helper()
	want, wantErr := refParse(json.RawMessage(params), testUsers)
	switch {
	case (err == nil) != (wantErr == nil):
		t.Fatalf("params %q:\nParse     %+v, %v\nreference %+v, %v", params, cfg, err, want, wantErr)
	case err != nil:
		var got, exp *errs.Error
		errors.As(err, &got)
		errors.As(wantErr, &exp)
		if got == nil || exp == nil || got.Code != exp.Code || got.Detail != exp.Detail {
			t.Fatalf("params %q:\nParse     %v\nreference %v", params, err, wantErr)
		}
	case !reflect.DeepEqual(cfg, want):
		t.Fatalf("params %q:\nParse     %+v\nreference %+v", params, cfg, want)
	}
}

// checkInvariants returns an error describing the first invariant of a
// valid Config that cfg breaks.
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
		if ip.Is4() && a.Bits() <= 30 && (ip == a.Masked().Addr() || ip == v4Broadcast(a)) {
			return fmt.Errorf("address %v is a network or broadcast address", a)
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
		if !r.Dst.IsValid() || r.Dst != r.Dst.Masked() || r.Dst.Addr().Is4In6() {
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
			return fmt.Errorf("excluded route %v invalid, unaccepted or duplicated", p)
		}
		dsts[p] = true
	}
	if len(cfg.DNSAddresses) > MaxDNS || len(cfg.SearchDomains) > MaxSearchDomains {
		return errors.New("too many dns entries")
	}
	for _, a := range cfg.DNSAddresses {
		if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() {
			return fmt.Errorf("dns address %v", a)
		}
	}
	for _, d := range cfg.SearchDomains {
		if dnsNameProblem(d) != "" {
			return fmt.Errorf("search domain %q", d)
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
		_, err = Parse(json.RawMessage(params), testUsers)
		if valid := strings.HasPrefix(filepath.Base(file), "valid_"); valid != (err == nil) {
			t.Errorf("%s: Parse error = %v", file, err)
		}
	}
}
