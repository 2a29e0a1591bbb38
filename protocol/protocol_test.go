package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
)

func TestNewErrorObject(t *testing.T) {
	o := NewErrorObject(fmt.Errorf("wrapped: %w", errs.New(errs.CodeVPNExists, "vpn-tun is up")))
	if o.Code != 2203002 || o.Message != "VPN already exists." || o.Data.Detail != "vpn-tun is up" ||
		o.Data.Name != "VPN Already Exists" || o.Data.Cause == "" || o.Data.Solution == "" {
		t.Fatalf("%+v", o)
	}
	// An unclassified error is an internal one, its text the detail.
	o = NewErrorObject(errors.New("boom"))
	if o.Code != 19900002 || o.Data.Detail != "boom" {
		t.Fatalf("%+v", o)
	}
	// The detail is capped, and stays valid UTF-8.
	o = NewErrorObject(errs.New(errs.CodeMethodNotFound, "%s", strings.Repeat("é", 5000)))
	if len(o.Data.Detail) > maxDetail+3 || !strings.HasSuffix(o.Data.Detail, "...") || strings.ContainsRune(o.Data.Detail, '\uFFFD') {
		t.Fatalf("detail of %d bytes", len(o.Data.Detail))
	}
	if e := o.Err(); !errors.Is(e, errs.ErrMethodNotFound) {
		t.Fatal("Err() does not match its sentinel")
	}
}

func TestParseLinkAddress(t *testing.T) {
	a, err := ParseLinkAddress("fd00::2/64")
	if err != nil || a.Address.Address != "fd00::2" || a.Address.Family != 2 || a.PrefixLength != 64 || a.String() != "fd00::2/64" {
		t.Fatalf("%+v %v", a, err)
	}
	if _, err := ParseLinkAddress("10.0.0.1"); err == nil {
		t.Fatal("address without prefix accepted")
	}
}

// allowFamilyBypass is sent only when true, as the other optional flags,
// and VpnInfo always reports it.
func TestAllowFamilyBypassJSON(t *testing.T) {
	addr, _ := ParseLinkAddress("10.8.0.2/24")
	for _, tc := range []struct {
		v    any
		want string
	}{
		{VpnConfig{Addresses: []LinkAddress{addr}}, `{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24}]}`},
		{VpnConfig{Addresses: []LinkAddress{addr}, IsLegacy: false, AllowFamilyBypass: true},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24}],"allowFamilyBypass":true}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("Marshal(%+v) = %s, %v; want %s", tc.v, b, err, tc.want)
		}
	}
	b, _ := json.Marshal(VpnInfo{})
	if !strings.Contains(string(b), `"isMetered":false,"allowFamilyBypass":false,"offload":false,"trustedApplications"`) {
		t.Errorf("VpnInfo = %s, want allowFamilyBypass after isMetered", b)
	}
	var info VpnInfo
	if err := json.Unmarshal([]byte(`{"allowFamilyBypass":true}`), &info); err != nil || !info.AllowFamilyBypass {
		t.Errorf("Unmarshal: %+v, %v", info, err)
	}
	b, _ = json.Marshal(VpnInfo{RouteGateways: map[string]string{"10.0.0.0/8": "10.8.0.1"}, CoveredUIDs: []string{"1000-1000"}})
	if !strings.HasSuffix(string(b), `,"routeGateways":{"10.0.0.0/8":"10.8.0.1"},"coveredUids":["1000-1000"]}`) {
		t.Errorf("VpnInfo = %s, want routeGateways and coveredUids last", b)
	}
}

// offload is sent only when true, like allowFamilyBypass, and VpnInfo
// always reports it, right after allowFamilyBypass.
func TestOffloadJSON(t *testing.T) {
	addr, _ := ParseLinkAddress("10.8.0.2/24")
	for _, tc := range []struct {
		v    VpnConfig
		want string
	}{
		{VpnConfig{Addresses: []LinkAddress{addr}, Offload: false}, `{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24}]}`},
		{VpnConfig{Addresses: []LinkAddress{addr}, AllowFamilyBypass: true, Offload: true},
			`{"addresses":[{"address":{"address":"10.8.0.2","family":1},"prefixLength":24}],"allowFamilyBypass":true,"offload":true}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("Marshal(%+v) = %s, %v; want %s", tc.v, b, err, tc.want)
		}
	}
	b, _ := json.Marshal(VpnInfo{Offload: true})
	if !strings.Contains(string(b), `"allowFamilyBypass":false,"offload":true,"trustedApplications"`) {
		t.Errorf("VpnInfo = %s, want offload after allowFamilyBypass", b)
	}
	b, _ = json.Marshal(VpnInfo{})
	if !strings.Contains(string(b), `"offload":false`) {
		t.Errorf("VpnInfo = %s, want offload reported when false too", b)
	}
	var info VpnInfo
	if err := json.Unmarshal([]byte(`{"offload":true}`), &info); err != nil || !info.Offload {
		t.Errorf("Unmarshal: %+v, %v", info, err)
	}
}

// "simulated" appears only in simulation mode.
func TestSimulatedJSON(t *testing.T) {
	b, _ := json.Marshal(VpnInfo{})
	if strings.Contains(string(b), "simulated") {
		t.Errorf("VpnInfo of a real VPN = %s, want no simulated member", b)
	}
	b, _ = json.Marshal(VpnInfo{Simulated: true})
	if !strings.HasSuffix(string(b), `,"simulated":true}`) {
		t.Errorf("VpnInfo of a simulated VPN = %s, want simulated true", b)
	}
}
