package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/vpnd/vpnd/protocol"
)

// optBool is a boolean flag that remembers whether it was given, so that
// an absent --ipv4 leaves vpnd's default in place.
type optBool struct {
	set, val bool
}

func (b *optBool) IsBoolFlag() bool { return true }
func (b *optBool) Type() string     { return "bool" }
func (b *optBool) String() string {
	if b == nil || !b.set {
		return ""
	}
	return strconv.FormatBool(b.val)
}
func (b *optBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("not a boolean: %q", s)
	}
	b.set, b.val = true, v
	return nil
}

// upOptions are the flags of "vpnctl up" that describe the VpnConfig.
type upOptions struct {
	configFile    string
	addresses     []string
	routes        []string
	excludes      []string
	dns           []string
	searchDomains []string
	mtu           int
	ipv4, ipv6    optBool
	blocking      bool
	metered       bool
	legacy        bool
	familyBypass  bool
	offload       bool
	trusted       []string
	blocked       []string
}

// configFlags are the flags that --config replaces.
var configFlags = []string{"address", "route", "exclude", "dns", "search-domain", "mtu", "ipv4", "ipv6", "blocking", "metered", "legacy", "allow-family-bypass", "offload", "trusted", "blocked"}

func (o *upOptions) register(fs *pflag.FlagSet) {
	fs.StringVar(&o.configFile, "config", "", "read the whole VpnConfig from `FILE.json` (\"-\" for stdin) and send it as is; excludes the other config flags")
	fs.StringArrayVar(&o.addresses, "address", nil, "interface address as `CIDR`, e.g. 10.8.0.2/24 (repeatable; at least one)")
	fs.StringArrayVar(&o.routes, "route", nil, "route `CIDR[,via=GATEWAY]` into the VPN (repeatable; default: a default route per accepted family)")
	fs.StringArrayVar(&o.excludes, "exclude", nil, "excluded route `CIDR`: traffic that must not enter the VPN (repeatable)")
	fs.StringArrayVar(&o.dns, "dns", nil, "DNS server `IP` reached through the VPN: not loopback, multicast or unspecified (repeatable)")
	fs.StringArrayVar(&o.searchDomains, "search-domain", nil, "DNS search `DOMAIN` (repeatable)")
	fs.IntVar(&o.mtu, "mtu", 0, "interface `MTU` (vpnd's default: 1500)")
	fs.Var(&o.ipv4, "ipv4", "accept IPv4 traffic, --ipv4=false to refuse it (default: true if an IPv4 address is given)")
	fs.Var(&o.ipv6, "ipv6", "accept IPv6 traffic, --ipv6=false to refuse it (default: true if an IPv6 address is given)")
	// Like a bool flag, --ipv4 alone means true.
	fs.Lookup("ipv4").NoOptDefVal = "true"
	fs.Lookup("ipv6").NoOptDefVal = "true"
	fs.BoolVar(&o.blocking, "blocking", false, "hand out the TUN fd in blocking mode")
	fs.BoolVar(&o.metered, "metered", false, "mark the VPN as metered")
	fs.BoolVar(&o.legacy, "legacy", false, "send isLegacy: true (vpnd refuses it with 19900001: it has no legacy VPN types)")
	fs.BoolVar(&o.familyBypass, "allow-family-bypass", false, "let the covered users' traffic of a family the VPN does not accept take the normal path (by default it fails closed)")
	fs.BoolVar(&o.offload, "offload", false, "create the TUN with IFF_VNET_HDR: every read and write on its fd then carries a 10-byte virtio_net_hdr before the packet (for a CMD that handles it)")
	fs.StringArrayVar(&o.trusted, "trusted", nil, "only this `USER`'s traffic (name or uid) enters the VPN (repeatable; other users need ADMIN)")
	fs.StringArrayVar(&o.blocked, "blocked", nil, "this `USER`'s traffic (name or uid) bypasses the VPN (repeatable; other users need ADMIN)")
}

// vpnConfig builds the VpnConfig the flags describe. set holds the names
// of the flags given on the command line. Addresses and routes are checked
// to be CIDRs here only because the object form needs them split; every
// other rule is vpnd's to enforce.
func (o *upOptions) vpnConfig(set map[string]bool) (protocol.VpnConfig, error) {
	var cfg protocol.VpnConfig
	if len(o.addresses) == 0 {
		return cfg, fmt.Errorf("at least one --address (or --config) is required")
	}
	for _, a := range o.addresses {
		la, err := parseCIDR(a)
		if err != nil {
			return cfg, fmt.Errorf("--address %s: %v", a, err)
		}
		cfg.Addresses = append(cfg.Addresses, la)
	}
	for _, r := range o.routes {
		ri, err := parseRoute(r, false)
		if err != nil {
			return cfg, fmt.Errorf("--route %s: %v", r, err)
		}
		cfg.Routes = append(cfg.Routes, ri)
	}
	for _, r := range o.excludes {
		ri, err := parseRoute(r, true)
		if err != nil {
			return cfg, fmt.Errorf("--exclude %s: %v", r, err)
		}
		cfg.Routes = append(cfg.Routes, ri)
	}
	cfg.DNSAddresses = o.dns
	cfg.SearchDomains = o.searchDomains
	if set["mtu"] && o.mtu <= 0 {
		return cfg, fmt.Errorf("--mtu %d: must be positive", o.mtu)
	}
	cfg.MTU = o.mtu
	if o.ipv4.set {
		v := o.ipv4.val
		cfg.IsIPv4Accepted = &v
	}
	if o.ipv6.set {
		v := o.ipv6.val
		cfg.IsIPv6Accepted = &v
	}
	cfg.IsBlocking = o.blocking
	cfg.IsMetered = o.metered
	cfg.IsLegacy = o.legacy
	cfg.AllowFamilyBypass = o.familyBypass
	cfg.Offload = o.offload
	cfg.TrustedApplications = o.trusted
	cfg.BlockedApplications = o.blocked
	return cfg, nil
}

// parseRoute parses "CIDR[,via=GATEWAY]" (no gateway when excluded). Its
// errors name the part that is wrong.
func parseRoute(s string, excluded bool) (protocol.RouteInfo, error) {
	cidr, options, _ := strings.Cut(s, ",")
	la, err := parseCIDR(cidr)
	if err != nil {
		return protocol.RouteInfo{}, err
	}
	ri := protocol.RouteInfo{Destination: la, IsExcludedRoute: excluded}
	if options == "" {
		return ri, nil
	}
	for _, opt := range strings.Split(options, ",") {
		key, val, _ := strings.Cut(opt, "=")
		switch {
		case key != "via":
			return ri, fmt.Errorf("%q: unknown option (the only one is via=GATEWAY)", opt)
		case excluded:
			return ri, fmt.Errorf("via: an excluded route takes no gateway")
		case ri.Gateway != nil:
			return ri, fmt.Errorf("via: given twice")
		}
		if _, err := netip.ParseAddr(val); err != nil {
			return ri, fmt.Errorf("via: %q is not an IP address", val)
		}
		ri.Gateway = &protocol.NetAddress{Address: val}
	}
	return ri, nil
}

// parseCIDR parses an address or prefix with its length, saying which part
// is wrong. Host bits are kept: vpnd masks a route's, an address needs them.
func parseCIDR(s string) (protocol.LinkAddress, error) {
	addr, bits, ok := strings.Cut(s, "/")
	if !ok {
		return protocol.LinkAddress{}, fmt.Errorf("%q has no prefix length (e.g. 10.8.0.0/24)", s)
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return protocol.LinkAddress{}, fmt.Errorf("%q is not an IP address", addr)
	}
	if n, err := strconv.Atoi(bits); err != nil || n < 0 || n > ip.BitLen() {
		return protocol.LinkAddress{}, fmt.Errorf("prefix length %q: want 0-%d", bits, ip.BitLen())
	}
	return protocol.ParseLinkAddress(s)
}

// params returns the setUp params: the --config file as is, or the
// VpnConfig built from the flags. stdin serves --config -.
func (o *upOptions) params(set map[string]bool, stdin io.Reader) (json.RawMessage, error) {
	if o.configFile == "" {
		cfg, err := o.vpnConfig(set)
		if err != nil {
			return nil, err
		}
		return json.Marshal(cfg)
	}
	for _, name := range configFlags {
		if set[name] {
			return nil, fmt.Errorf("--config cannot be combined with --%s", name)
		}
	}
	var raw []byte
	var err error
	if o.configFile == "-" {
		raw, err = io.ReadAll(stdin)
	} else {
		raw, err = os.ReadFile(o.configFile)
	}
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	// Compact, since a message is one line; the content goes to vpnd
	// unchanged, so both the CIDR-string and the object forms work.
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, fmt.Errorf("--config %s: not valid JSON: %w", o.configFile, err)
	}
	return b.Bytes(), nil
}
