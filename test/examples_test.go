package test

// The files in examples/ are what a reader copies first, so they are
// tested: both parse with vpnd's own parsers, and vpn.json is set up
// through a real vpnd, run with accounts.json, by `vpnctl up --config` as a
// NORMAL user.

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
)

const (
	exampleVPN      = "../examples/vpn.json"
	exampleAccounts = "../examples/accounts.json"
)

// TestExamplesParse checks that the examples are valid and mean what they
// are meant to mean; it needs no root.
func TestExamplesParse(t *testing.T) {
	raw, err := os.ReadFile(exampleVPN)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(raw, config.SystemUsers())
	if err != nil {
		t.Fatalf("%s: %v", exampleVPN, err)
	}
	// Every member of VpnConfig is used.
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"addresses", "routes", "dnsAddresses", "searchDomains", "mtu", "isIPv4Accepted",
		"isIPv6Accepted", "isBlocking", "isMetered", "isLegacy", "allowFamilyBypass", "offload", "trustedApplications",
		"blockedApplications"} {
		if _, ok := members[m]; !ok {
			t.Errorf("%s does not show member %q", exampleVPN, m)
		}
	}
	if len(cfg.Routes) != 2 || len(cfg.ExcludedRoutes) != 1 || !cfg.IPv4 || !cfg.IPv6 || cfg.MTU != 1400 {
		t.Errorf("%s parsed as %+v", exampleVPN, cfg)
	}
	for _, r := range cfg.Routes {
		if !r.Gateway.IsValid() {
			t.Errorf("%s: route %s has no gateway", exampleVPN, r.Dst)
		}
	}

	policy, err := auth.LoadPolicy(exampleAccounts)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   auth.Identity
		want auth.Type
	}{
		{auth.Identity{UID: 0, User: "root"}, auth.Admin},
		{auth.Identity{UID: 65534, User: "nobody"}, auth.Guest},
		{auth.Identity{UID: 1002, GID: 1002}, auth.Guest},
		{auth.Identity{UID: 4000, GID: 4000}, auth.Normal},
		{auth.Identity{UID: 4001, GID: 4001, Groups: []uint32{4001, 50}, GroupNames: []string{"netadmin"}}, auth.Admin},
		{auth.Identity{UID: 4002, GID: 4002, GroupNames: []string{"netadmin", "guests"}}, auth.Guest},
	} {
		if got := policy.TypeOf(tc.id); got != tc.want {
			t.Errorf("%s: %+v is %s, want %s", exampleAccounts, tc.id, got, tc.want)
		}
	}
	// The example VPN is one a NORMAL user may set up under the example
	// policy.
	for _, a := range cfg.Addresses {
		if !policy.InPools(a) {
			t.Errorf("%s: address %s is outside the pools of %s", exampleVPN, a, exampleAccounts)
		}
	}
	if policy.InPools(netip.MustParsePrefix("192.168.1.2/24")) {
		t.Errorf("%s: 192.168.1.2/24 should be outside its pools", exampleAccounts)
	}
}

// TestExamplesVpnctlUp sets up examples/vpn.json with `vpnctl up --config`
// as a NORMAL user, against a vpnd running with examples/accounts.json.
func TestExamplesVpnctlUp(t *testing.T) {
	t.Parallel()
	policy, err := os.ReadFile(exampleAccounts)
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, withAccounts(string(policy)))
	vpnFile, err := os.Open(exampleVPN)
	if err != nil {
		t.Fatal(err)
	}
	defer vpnFile.Close()
	// The file goes in on stdin (--config -): uid 4000 may not be able to
	// read the checkout.
	cmd := exec.Command(bin(t, "vpnctl"), "--socket", d.sock, "up", "--config", "-")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uidNormal, Gid: uidNormal, Groups: []uint32{}}}
	var stdout, stderr syncBuffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = vpnFile, &stdout, &stderr
	done := startBackground(t, cmd)
	eventually(t, "vpnctl up says the VPN is up", func() (bool, string) {
		select {
		case <-done:
			t.Fatalf("vpnctl up exited: %s%s", stdout.String(), stderr.String())
		default:
		}
		return strings.Contains(stderr.String(), "VPN is up"), stderr.String()
	})

	var info struct {
		vpnInfo
		AllowFamilyBypass   bool     `json:"allowFamilyBypass"`
		TrustedApplications []string `json:"trustedApplications"`
		BlockedApplications []string `json:"blockedApplications"`
	}
	if err := json.Unmarshal([]byte(stdout.String()), &info); err != nil {
		t.Fatalf("vpnctl up printed no VpnInfo: %v\n%s", err, stdout.String())
	}
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"mtu", info.MTU, 1400},
		{"addresses", info.Addresses, []string{"10.8.0.2/24", "fd00:8::2/64"}},
		{"routes", info.Routes, []string{"10.0.0.0/8", "fd00::/8"}},
		{"excludedRoutes", info.ExcludedRoutes, []string{"10.1.0.0/16"}},
		{"dnsAddresses", info.DNSAddresses, []string{"10.8.0.1", "fd00:8::1"}},
		{"searchDomains", info.SearchDomains, []string{"corp.example", "lab.corp.example"}},
		{"accepted", [2]bool{info.IsIPv4Accepted, info.IsIPv6Accepted}, [2]bool{true, true}},
		{"owner", info.Owner.UID, uint32(uidNormal)},
	} {
		g, _ := json.Marshal(c.got)
		w, _ := json.Marshal(c.want)
		if string(g) != string(w) {
			t.Errorf("VpnInfo %s = %s, want %s", c.what, g, w)
		}
	}

	// The kernel has what the file asks for (under sim, status has the
	// VPN, and VpnInfo above says what it is).
	d.wantTUNLink(t, 1400)
	if !d.sim {
		if got, want := d.globalAddrs(t), sorted("10.8.0.2/24", "fd00:8::2/64"); !equalStrings(got, want) {
			t.Errorf("addresses %v, want %v", got, want)
		}
		wantRoutes := sorted(
			"ipv4 10.8.0.0/24 dev vpn-tun",
			"ipv4 10.0.0.0/8 via 10.8.0.1 dev vpn-tun",
			"ipv4 throw 10.1.0.0/16",
			"ipv6 fd00:8::/64 dev vpn-tun",
			"ipv6 fd00::/8 via fd00:8::1 dev vpn-tun",
		)
		if got := d.routeStrings(t); !equalStrings(got, wantRoutes) {
			t.Errorf("routes in table %d:\n%s\nwant:\n%s", d.table, strings.Join(got, "\n"), strings.Join(wantRoutes, "\n"))
		}
		if n := len(d.vpnRules(t)); n != 2 {
			t.Errorf("%d rules at priority %d, want one per family for the owner: %v", n, d.priority, d.vpnRules(t))
		}
	}

	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatalf("vpnctl up ignored SIGINT: %s", stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("vpnctl up exit %d after SIGINT, want 0: %s", code, stderr.String())
	}
	d.waitClean(t, "vpnctl up interrupted")
}
