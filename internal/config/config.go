// Package config validates a setUp request's VpnConfig and turns it into
// the canonical form that vpnd applies to the kernel.
package config

import "net/netip"

// The limits of a VpnConfig.
const (
	MaxAddresses     = 2000
	MaxRoutes        = 10000
	MaxDNS           = 64
	MaxSearchDomains = 64
	MaxApplications  = 256
	DefaultMTU       = 1500
	MinMTU           = 576
	MinMTUIPv6       = 1280
	MaxMTU           = 65535
)

// Route is an included route: traffic to Dst enters the VPN.
type Route struct {
	Dst     netip.Prefix // canonical: host bits masked
	Gateway netip.Addr   // zero when none was given
}

// User is an entry of trustedApplications or blockedApplications,
// resolved through the system's user database.
type User struct {
	Name string // as found in the user database ("" if the uid has no name)
	UID  uint32
}

// Config is a validated VpnConfig. Every slice is in the order given, with
// duplicates merged; Routes already holds the default routes that Parse
// adds when no included route was given.
type Config struct {
	Addresses      []netip.Prefix // host bits kept
	Routes         []Route
	ExcludedRoutes []netip.Prefix // canonical
	DNSAddresses   []netip.Addr
	SearchDomains  []string
	MTU            int
	IPv4           bool // isIPv4Accepted, after defaults
	IPv6           bool // isIPv6Accepted, after defaults
	Blocking       bool
	Metered        bool
	// AllowFamilyBypass is allowFamilyBypass: for an address family the
	// VPN does not accept, let the covered users' traffic of that family
	// take the normal path instead of failing closed (unreachable), the
	// default that keeps it from leaking outside the VPN.
	AllowFamilyBypass bool
	// Offload is offload: the TUN is created with IFF_VNET_HDR, so that
	// every read and write on its fd carries a struct virtio_net_hdr
	// before the packet, and the app may turn on the TUN's offloads.
	Offload bool
	Trusted []User
	Blocked []User
}

// UserResolver resolves a trustedApplications/blockedApplications entry,
// a user name or a decimal uid, through the system's user database.
// It returns an error for a name that does not exist.
type UserResolver interface {
	ResolveUser(nameOrUID string) (User, error)
}
