package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/protocol"
)

// fakeUsers is a tiny user database: names map to uids; a decimal string
// is a uid, named if the database knows it.
type fakeUsers map[string]uint32

func (f fakeUsers) ResolveUser(s string) (User, error) {
	if s == "broken" {
		return User{}, errs.New(errs.CodeInternal, "user database unavailable")
	}
	if isDigits(s) {
		uid, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return User{}, fmt.Errorf("uid %s out of range", s)
		}
		u := User{UID: uint32(uid)}
		for name, id := range f {
			if id == u.UID {
				u.Name = name
			}
		}
		return u, nil
	}
	uid, ok := f[s]
	if !ok {
		return User{}, fmt.Errorf("unknown user %q", s)
	}
	return User{Name: s, UID: uid}, nil
}

var testUsers = fakeUsers{"root": 0, "alice": 1000, "carol": 1001}

// v4 is a minimal valid addresses member, spliced into most rows.
const v4 = `"addresses":["10.8.0.2/24"]`

func TestParseRejects(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		rule   string
		params string
		detail string
	}{
		// params itself
		{"params absent", ``, "params: expected object"},
		{"params null", `null`, "params: expected object"},
		{"params not an object", `[1]`, "params: expected object, got array"},
		{"params invalid JSON", `{"addresses":`, "params: invalid JSON"},
		{"params trailing data", `{} {}`, "params: invalid JSON"},
		{"unknown member", `{` + v4 + `,"foo":1}`, "foo: unknown member"},
		{"unknown member checked first", `{"mtu":"x","isIPv6Accpted":true}`, "isIPv6Accpted: unknown member"},
		{"unknown member quoted", `{"a b":1}`, `"a b": unknown member`},
		{"duplicate member", `{` + v4 + `,"mtu":1500,"mtu":1400}`, "mtu: duplicate member"},
		{"member names are case-sensitive", `{"Addresses":["10.8.0.2/24"]}`, "Addresses: unknown member"},

		// addresses
		{"addresses required", `{}`, "addresses: required"},
		{"addresses null is absent", `{"addresses":null}`, "addresses: required"},
		{"addresses must be an array", `{"addresses":"10.8.0.2/24"}`, "addresses: expected array of CIDR strings or LinkAddress objects, got string"},
		{"addresses at least one", `{"addresses":[]}`, "addresses: at least 1 entry required"},
		{"addresses at most 2000", `{"addresses":[` + strings.Repeat(`"10.8.0.2/24",`, 2000) + `"10.8.0.2/24"]}`, "addresses: 2001 entries, at most 2000 allowed"},
		{"address element type", `{"addresses":[5]}`, "addresses[0]: expected CIDR string or LinkAddress object, got number"},
		{"address needs a prefix length", `{"addresses":["10.8.0.2"]}`, `addresses[0]: "10.8.0.2" is not in CIDR form address/prefixLength`},
		{"address not an IP", `{"addresses":["10.8.0.300/24"]}`, `addresses[0]: "10.8.0.300" is not an IP address`},
		{"address prefix not decimal", `{"addresses":["10.8.0.2/x"]}`, `addresses[0]: "10.8.0.2/x" has an invalid prefix length "x"`},
		{"address prefix leading zero", `{"addresses":["10.8.0.2/024"]}`, `addresses[0]: "10.8.0.2/024" has an invalid prefix length "024"`},
		{"address zone rejected", `{"addresses":["fe80::1%eth0/64"]}`, `addresses[0]: "fe80::1%eth0" has a zone; zones are not allowed`},
		{"address IPv4-mapped rejected", `{"addresses":["::ffff:10.8.0.2/120"]}`, `addresses[0]: "::ffff:10.8.0.2" is an IPv4-mapped IPv6 address; write it as 10.8.0.2`},
		{"address IPv4 prefix 0", `{"addresses":["10.8.0.2/0"]}`, "addresses[0]: prefix length 0 out of range 1-32"},
		{"address IPv4 prefix 33", `{"addresses":["10.8.0.2/33"]}`, "addresses[0]: prefix length 33 out of range 1-32"},
		{"address IPv6 prefix 129", `{"addresses":["fd00::2/129"]}`, "addresses[0]: prefix length 129 out of range 1-128"},
		{"address huge prefix", `{"addresses":["fd00::2/99999999999999999999"]}`, "addresses[0]: prefix length 99999999999999999999 out of range 1-128"},
		{"address loopback", `{"addresses":["127.0.0.1/8"]}`, "addresses[0]: 127.0.0.1/8 is a loopback address"},
		{"address IPv6 loopback", `{"addresses":["::1/128"]}`, "addresses[0]: ::1/128 is a loopback address"},
		{"address unspecified", `{"addresses":["0.0.0.0/8"]}`, "addresses[0]: 0.0.0.0/8 is the unspecified address"},
		{"address IPv6 unspecified", `{"addresses":["::/64"]}`, "addresses[0]: ::/64 is the unspecified address"},
		{"address multicast", `{"addresses":["224.0.0.1/24"]}`, "addresses[0]: 224.0.0.1/24 is a multicast address"},
		{"address IPv6 multicast", `{"addresses":["ff02::1/64"]}`, "addresses[0]: ff02::1/64 is a multicast address"},
		{"address limited broadcast", `{"addresses":["255.255.255.255/32"]}`, "addresses[0]: 255.255.255.255/32 is the limited broadcast address"},
		{"address network address", `{"addresses":["10.8.0.2/24","10.8.0.0/24"]}`, "addresses[1]: 10.8.0.0/24 is the network address"},
		{"address broadcast address", `{"addresses":["10.8.0.255/24"]}`, "addresses[0]: 10.8.0.255/24 is the broadcast address"},
		{"address network address at /30", `{"addresses":["10.8.0.4/30"]}`, "addresses[0]: 10.8.0.4/30 is the network address"},
		{"address duplicate", `{"addresses":["10.8.0.2/24","10.8.0.3/24","10.8.0.2/24"]}`, "addresses[2]: 10.8.0.2/24 duplicates addresses[0] (10.8.0.2/24)"},
		{"address duplicate with other prefix", `{"addresses":["10.8.0.2/24","10.8.0.2/16"]}`, "addresses[1]: 10.8.0.2/16 duplicates addresses[0] (10.8.0.2/24)"},
		{"address duplicate across forms", `{"addresses":["fd00::2/64",{"address":{"address":"fd00::2"},"prefixLength":64}]}`, "addresses[1]: fd00::2/64 duplicates addresses[0] (fd00::2/64)"},

		// LinkAddress / NetAddress
		{"LinkAddress unknown member", `{"addresses":[{"address":{"address":"10.8.0.2"},"prefixLength":24,"x":1}]}`, "addresses[0].x: unknown member"},
		{"LinkAddress address required", `{"addresses":[{"prefixLength":24}]}`, "addresses[0].address: required"},
		{"LinkAddress address is an object", `{"addresses":[{"address":"10.8.0.2","prefixLength":24}]}`, "addresses[0].address: expected NetAddress object, got string"},
		{"LinkAddress prefixLength required", `{"addresses":[{"address":{"address":"10.8.0.2"}}]}`, "addresses[0].prefixLength: required"},
		{"LinkAddress prefixLength integer", `{"addresses":[{"address":{"address":"10.8.0.2"},"prefixLength":"24"}]}`, "addresses[0].prefixLength: expected integer, got string"},
		{"LinkAddress prefixLength no fraction", `{"addresses":[{"address":{"address":"10.8.0.2"},"prefixLength":24.5}]}`, "addresses[0].prefixLength: expected integer, got 24.5"},
		{"LinkAddress prefixLength range", `{"addresses":[{"address":{"address":"10.8.0.2"},"prefixLength":33}]}`, "addresses[0].prefixLength: 33 out of range 1-32"},
		{"LinkAddress prefixLength negative", `{"addresses":[{"address":{"address":"10.8.0.2"},"prefixLength":-1}]}`, "addresses[0].prefixLength: -1 out of range 1-32"},
		{"NetAddress unknown member", `{"addresses":[{"address":{"address":"10.8.0.2","famly":1},"prefixLength":24}]}`, "addresses[0].address.famly: unknown member"},
		{"NetAddress address required", `{"addresses":[{"address":{"family":1},"prefixLength":24}]}`, "addresses[0].address.address: required"},
		{"NetAddress address string", `{"addresses":[{"address":{"address":true},"prefixLength":24}]}`, "addresses[0].address.address: expected string, got boolean"},
		{"NetAddress address valid", `{"addresses":[{"address":{"address":""},"prefixLength":24}]}`, `addresses[0].address.address: "" is not an IP address`},
		{"NetAddress family 1 or 2", `{"addresses":[{"address":{"address":"10.8.0.2","family":3},"prefixLength":24}]}`, "addresses[0].address.family: 3 is not 1 (IPv4) or 2 (IPv6)"},
		{"NetAddress family integer", `{"addresses":[{"address":{"address":"10.8.0.2","family":"1"},"prefixLength":24}]}`, "addresses[0].address.family: expected integer, got string"},
		{"NetAddress family matches", `{"addresses":[{"address":{"address":"10.8.0.2","family":2},"prefixLength":24}]}`, "addresses[0].address.family: 2 does not match IPv4 address 10.8.0.2"},
		{"NetAddress port range", `{"addresses":[{"address":{"address":"10.8.0.2","port":65536},"prefixLength":24}]}`, "addresses[0].address.port: 65536 out of range 0-65535"},
		{"LinkAddress semantic check", `{"addresses":[{"address":{"address":"10.8.0.0"},"prefixLength":24}]}`, "addresses[0]: 10.8.0.0/24 is the network address"},

		// routes
		{"routes must be an array", `{` + v4 + `,"routes":{}}`, "routes: expected array of CIDR strings or RouteInfo objects, got object"},
		{"routes at most 10000", `{` + v4 + `,"routes":[` + strings.Repeat(`"10.0.0.0/8",`, 10000) + `"10.0.0.0/8"]}`, "routes: 10001 entries, at most 10000 allowed"},
		{"route element type", `{` + v4 + `,"routes":[null]}`, "routes[0]: expected CIDR string or RouteInfo object, got null"},
		{"route CIDR prefix range", `{` + v4 + `,"routes":["0.0.0.0/0","1.0.0.0/8","2.0.0.0/8","10.0.0.0/33"]}`, "routes[3]: prefix length 33 out of range 0-32"},
		{"route IPv6 prefix range", `{"addresses":["fd00::2/64"],"routes":["::/129"]}`, "routes[0]: prefix length 129 out of range 0-128"},
		{"route CIDR zone", `{` + v4 + `,"routes":["fe80::%eth0/10"]}`, `routes[0]: "fe80::%eth0" has a zone; zones are not allowed`},
		{"route IPv4-mapped", `{` + v4 + `,"routes":["::ffff:0.0.0.0/96"]}`, `routes[0]: "::ffff:0.0.0.0" is an IPv4-mapped IPv6 address; write it as 0.0.0.0`},
		{"RouteInfo unknown member", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"isExcluded":true}]}`, "routes[0].isExcluded: unknown member"},
		{"RouteInfo destination required", `{` + v4 + `,"routes":[{"gateway":{"address":"10.8.0.1"}}]}`, "routes[0].destination: required"},
		{"RouteInfo destination is a LinkAddress", `{` + v4 + `,"routes":[{"destination":"10.0.0.0/8"}]}`, "routes[0].destination: expected LinkAddress object, got string"},
		{"RouteInfo destination prefix range", `{` + v4 + `,"routes":["0.0.0.0/0","1.0.0.0/8","2.0.0.0/8",{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":33}}]}`, "routes[3].destination.prefixLength: 33 out of range 0-32"},
		{"RouteInfo destination unknown member", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0","x":0},"prefixLength":8}}]}`, "routes[0].destination.address.x: unknown member"},
		{"RouteInfo gateway is a NetAddress", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":"10.8.0.1"}]}`, "routes[0].gateway: expected NetAddress object, got string"},
		{"RouteInfo gateway valid IP", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"x"}}]}`, `routes[0].gateway.address: "x" is not an IP address`},
		{"RouteInfo isExcludedRoute bool", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"isExcludedRoute":1}]}`, "routes[0].isExcludedRoute: expected boolean, got number"},
		{"RouteInfo interface type-checked", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"interface":0}]}`, "routes[0].interface: expected string, got number"},
		{"RouteInfo hasGateway type-checked", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"hasGateway":"yes"}]}`, "routes[0].hasGateway: expected boolean, got string"},
		{"RouteInfo isDefaultRoute type-checked", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"isDefaultRoute":[]}]}`, "routes[0].isDefaultRoute: expected boolean, got array"},
		{"gateway on excluded route", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"},"isExcludedRoute":true}]}`, "routes[0].gateway: an excluded route cannot have a gateway (got 10.8.0.1)"},
		{"gateway family matches destination", `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":[{"destination":{"address":{"address":"::"},"prefixLength":0},"gateway":{"address":"10.8.0.1"}}]}`, "routes[0].gateway: 10.8.0.1 is IPv4 but the destination ::/0 is IPv6"},
		{"gateway inside an address prefix", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"192.168.1.1"}}]}`, "routes[0].gateway: 192.168.1.1 is outside every address prefix"},
		{"gateway not the VPN's own address", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.2"}}]}`, "routes[0].gateway: 10.8.0.2 is the VPN's own address addresses[0]"},
		{"gateway not the broadcast address", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.255"}}]}`, "routes[0].gateway: 10.8.0.255 is the broadcast address of addresses[0] (10.8.0.2/24)"},
		{"gateway family field matches", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1","family":2}}]}`, "routes[0].gateway.family: 2 does not match IPv4 address 10.8.0.1"},
		{"route included and excluded", `{` + v4 + `,"routes":["10.0.0.0/8","1.0.0.0/8",{"destination":{"address":{"address":"10.1.2.3"},"prefixLength":8},"isExcludedRoute":true}]}`, "routes[2]: 10.0.0.0/8 excluded here but included in routes[0]"},
		{"route excluded then included", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"isExcludedRoute":true},"10.0.0.0/8"]}`, "routes[1]: 10.0.0.0/8 included here but excluded in routes[0]"},
		{"route two gateways", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}},{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.3"}}]}`, "routes[1]: 10.0.0.0/8 included via 10.8.0.3 here but included via 10.8.0.1 in routes[0]"},
		{"route gateway and none", `{` + v4 + `,"routes":["10.0.0.0/8",{"destination":{"address":{"address":"10.0.0.0"},"prefixLength":8},"gateway":{"address":"10.8.0.1"}}]}`, "routes[1]: 10.0.0.0/8 included via 10.8.0.1 here but included in routes[0]"},
		{"route family accepted (IPv6 absent)", `{` + v4 + `,"routes":["10.0.0.0/8","2001:db8::/32"]}`, "routes[1]: 2001:db8::/32 is IPv6 but isIPv6Accepted is false"},
		{"route family accepted (IPv4 off)", `{"addresses":["10.8.0.2/24","fd00::2/64"],"isIPv4Accepted":false,"routes":["::/0",{"destination":{"address":{"address":"1.0.0.0"},"prefixLength":8},"isExcludedRoute":true}]}`, "routes[1]: 1.0.0.0/8 is IPv4 but isIPv4Accepted is false"},
		{"excluded default route conflicts with the default route", `{` + v4 + `,"routes":[{"destination":{"address":{"address":"10.1.0.0"},"prefixLength":16},"isExcludedRoute":true},{"destination":{"address":{"address":"0.0.0.0"},"prefixLength":0},"isExcludedRoute":true}]}`, "routes[1]: 0.0.0.0/0 excluded here but included as the default route, since no route is included"},
		{"excluded IPv6 default route conflicts with the default route", `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":[{"destination":{"address":{"address":"::"},"prefixLength":0},"isExcludedRoute":true}]}`, "routes[0]: ::/0 excluded here but included as the default route, since no route is included"},
		{"route family checked after flag types", `{` + v4 + `,"routes":["2001:db8::/32"],"isIPv6Accepted":"no"}`, "isIPv6Accepted: expected boolean, got string"},

		// dnsAddresses
		{"dnsAddresses array", `{` + v4 + `,"dnsAddresses":"1.1.1.1"}`, "dnsAddresses: expected array of IP address strings, got string"},
		{"dnsAddresses at most 64", `{` + v4 + `,"dnsAddresses":[` + strings.Repeat(`"1.1.1.1",`, 64) + `"1.1.1.1"]}`, "dnsAddresses: 65 entries, at most 64 allowed"},
		{"dnsAddresses strings", `{` + v4 + `,"dnsAddresses":[{"address":"1.1.1.1"}]}`, "dnsAddresses[0]: expected string, got object"},
		{"dnsAddresses valid IP", `{` + v4 + `,"dnsAddresses":["1.1.1.1","one.one"]}`, `dnsAddresses[1]: "one.one" is not an IP address`},
		{"dnsAddresses no CIDR", `{` + v4 + `,"dnsAddresses":["1.1.1.1/32"]}`, `dnsAddresses[0]: "1.1.1.1/32" is not an IP address`},
		{"dnsAddresses no zone", `{` + v4 + `,"dnsAddresses":["fe80::1%eth0"]}`, `dnsAddresses[0]: "fe80::1%eth0" has a zone; zones are not allowed`},
		{"dnsAddresses not unspecified", `{` + v4 + `,"dnsAddresses":["0.0.0.0"]}`, "dnsAddresses[0]: 0.0.0.0 is the unspecified address"},
		{"dnsAddresses not IPv6 unspecified", `{` + v4 + `,"dnsAddresses":["1.1.1.1","::"]}`, "dnsAddresses[1]: :: is the unspecified address"},
		{"dnsAddresses not resolved's stub", `{` + v4 + `,"dnsAddresses":["127.0.0.53"]}`, "dnsAddresses[0]: 127.0.0.53 is a loopback address; a VPN's DNS server must be reachable through the VPN"},
		{"dnsAddresses not resolved's proxy stub", `{` + v4 + `,"dnsAddresses":["10.8.0.1","127.0.0.54"]}`, "dnsAddresses[1]: 127.0.0.54 is a loopback address; a VPN's DNS server must be reachable through the VPN"},
		{"dnsAddresses not IPv4 loopback", `{` + v4 + `,"dnsAddresses":["127.255.0.1"]}`, "dnsAddresses[0]: 127.255.0.1 is a loopback address; a VPN's DNS server must be reachable through the VPN"},
		{"dnsAddresses not IPv6 loopback", `{` + v4 + `,"dnsAddresses":["::1"]}`, "dnsAddresses[0]: ::1 is a loopback address; a VPN's DNS server must be reachable through the VPN"},
		{"dnsAddresses not multicast", `{` + v4 + `,"dnsAddresses":["224.0.0.251"]}`, "dnsAddresses[0]: 224.0.0.251 is a multicast address; a DNS server has a unicast address"},
		{"dnsAddresses not IPv6 multicast", `{` + v4 + `,"dnsAddresses":["ff02::fb"]}`, "dnsAddresses[0]: ff02::fb is a multicast address; a DNS server has a unicast address"},
		{"dnsAddresses not limited broadcast", `{` + v4 + `,"dnsAddresses":["255.255.255.255"]}`, "dnsAddresses[0]: 255.255.255.255 is the limited broadcast address; a DNS server has a unicast address"},
		{"dnsAddresses loopback checked in order", `{` + v4 + `,"dnsAddresses":["127.0.0.53","x"]}`, "dnsAddresses[0]: 127.0.0.53 is a loopback address; a VPN's DNS server must be reachable through the VPN"},

		// searchDomains
		{"searchDomains array", `{` + v4 + `,"searchDomains":"example.com"}`, "searchDomains: expected array of DNS name strings, got string"},
		{"searchDomains at most 64", `{` + v4 + `,"searchDomains":[` + strings.Repeat(`"a.example",`, 64) + `"a.example"]}`, "searchDomains: 65 entries, at most 64 allowed"},
		{"searchDomains strings", `{` + v4 + `,"searchDomains":[1]}`, "searchDomains[0]: expected string, got number"},
		{"searchDomains not empty", `{` + v4 + `,"searchDomains":[""]}`, `searchDomains[0]: "" is not a DNS name`},
		{"searchDomains not root", `{` + v4 + `,"searchDomains":["."]}`, `searchDomains[0]: "." is not a DNS name`},
		{"searchDomains empty label", `{` + v4 + `,"searchDomains":["a..b"]}`, `searchDomains[0]: "a..b" has an empty label`},
		{"searchDomains two trailing dots", `{` + v4 + `,"searchDomains":["a.b.."]}`, `searchDomains[0]: "a.b.." has an empty label`},
		{"searchDomains label at most 63", `{` + v4 + `,"searchDomains":["` + long + `.example"]}`, `searchDomains[0]: "` + long + `.example" has a label of 64 characters, at most 63 allowed`},
		{"searchDomains total at most 253", `{` + v4 + `,"searchDomains":["` + strings.Repeat("abcdefghi.", 25) + `abcd"]}`, `searchDomains[0]: "` + strings.Repeat("abcdefghi.", 25) + `abcd" is 254 characters long, at most 253 allowed`},
		{"searchDomains leading hyphen", `{` + v4 + `,"searchDomains":["-a.example"]}`, `searchDomains[0]: "-a.example" has label "-a" starting with a hyphen`},
		{"searchDomains trailing hyphen", `{` + v4 + `,"searchDomains":["a-.example"]}`, `searchDomains[0]: "a-.example" has label "a-" ending with a hyphen`},
		{"searchDomains letters digits hyphens", `{` + v4 + `,"searchDomains":["a_b.example"]}`, `searchDomains[0]: "a_b.example" has label "a_b" with a character other than a letter, digit or hyphen`},

		// mtu
		{"mtu integer not string", `{` + v4 + `,"mtu":"1500"}`, "mtu: expected integer, got string"},
		{"mtu integer not fraction", `{` + v4 + `,"mtu":1500.5}`, "mtu: expected integer, got 1500.5"},
		{"mtu integer not exponent", `{` + v4 + `,"mtu":1.5e3}`, "mtu: expected integer, got 1.5e3"},
		{"mtu integer not bool", `{` + v4 + `,"mtu":true}`, "mtu: expected integer, got boolean"},
		{"mtu at least 576", `{` + v4 + `,"mtu":575}`, "mtu: 575 out of range 576-65535"},
		{"mtu at most 65535", `{` + v4 + `,"mtu":65536}`, "mtu: 65536 out of range 576-65535"},
		{"mtu huge", `{` + v4 + `,"mtu":123456789012345678901234567890}`, "mtu: 123456789012345678901234567890 out of range 576-65535"},
		{"mtu IPv6 needs 1280", `{"addresses":["10.8.0.2/24","fd00::2/64"],"mtu":1000}`, "mtu: 1000 below 1280 required with an IPv6 address"},

		// accepted families
		{"isIPv4Accepted bool", `{` + v4 + `,"isIPv4Accepted":1}`, "isIPv4Accepted: expected boolean, got number"},
		{"isIPv4Accepted needs an IPv4 address", `{"addresses":["fd00::2/64"],"isIPv4Accepted":true}`, "isIPv4Accepted: true requires an IPv4 address"},
		{"isIPv6Accepted needs an IPv6 address", `{` + v4 + `,"isIPv6Accepted":true}`, "isIPv6Accepted: true requires an IPv6 address"},
		{"some family accepted", `{` + v4 + `,"isIPv4Accepted":false}`, "isIPv4Accepted, isIPv6Accepted: no address family accepted"},

		// other booleans
		{"isBlocking bool", `{` + v4 + `,"isBlocking":"true"}`, "isBlocking: expected boolean, got string"},
		{"isMetered bool", `{` + v4 + `,"isMetered":0}`, "isMetered: expected boolean, got number"},
		{"isLegacy bool", `{` + v4 + `,"isLegacy":{}}`, "isLegacy: expected boolean, got object"},
		{"isLegacy rejected", `{` + v4 + `,"isLegacy":true}`, "isLegacy: legacy VPN types are not supported"},
		{"allowFamilyBypass bool", `{` + v4 + `,"allowFamilyBypass":"true"}`, "allowFamilyBypass: expected boolean, got string"},
		{"allowFamilyBypass not a number", `{` + v4 + `,"allowFamilyBypass":1}`, "allowFamilyBypass: expected boolean, got number"},
		{"allowFamilyBypass is case-sensitive", `{` + v4 + `,"AllowFamilyBypass":true}`, "AllowFamilyBypass: unknown member"},
		{"allowFamilyBypass repeated", `{` + v4 + `,"allowFamilyBypass":true,"allowFamilyBypass":true}`, "allowFamilyBypass: duplicate member"},
		{"offload bool", `{` + v4 + `,"offload":"true"}`, "offload: expected boolean, got string"},
		{"offload not a number", `{` + v4 + `,"offload":1}`, "offload: expected boolean, got number"},
		{"offload not an array", `{` + v4 + `,"offload":[true]}`, "offload: expected boolean, got array"},
		{"offload is case-sensitive", `{` + v4 + `,"Offload":true}`, "Offload: unknown member"},
		{"offload repeated", `{` + v4 + `,"offload":true,"offload":false}`, "offload: duplicate member"},

		// applications
		{"trustedApplications array", `{` + v4 + `,"trustedApplications":"alice"}`, "trustedApplications: expected array of user names or uids, got string"},
		{"trustedApplications at most 256", `{` + v4 + `,"trustedApplications":[` + strings.Repeat(`1,`, 256) + `1]}`, "trustedApplications: 257 entries, at most 256 allowed"},
		{"trustedApplications entry type", `{` + v4 + `,"trustedApplications":[true]}`, "trustedApplications[0]: expected user name or uid, got boolean"},
		{"trustedApplications unknown user", `{` + v4 + `,"trustedApplications":["bob"]}`, `trustedApplications[0]: unknown user "bob"`},
		{"trustedApplications empty name", `{` + v4 + `,"trustedApplications":[""]}`, "trustedApplications[0]: empty user name"},
		{"trustedApplications uid integer", `{` + v4 + `,"trustedApplications":[1000.5]}`, "trustedApplications[0]: expected integer, got 1000.5"},
		{"trustedApplications uid not negative", `{` + v4 + `,"trustedApplications":[-1]}`, "trustedApplications[0]: -1 out of range 0-4294967294"},
		{"trustedApplications uid not -1", `{` + v4 + `,"trustedApplications":[4294967295]}`, "trustedApplications[0]: 4294967295 out of range 0-4294967294"},
		{"trustedApplications string uid range", `{` + v4 + `,"trustedApplications":["4294967295"]}`, "trustedApplications[0]: uid 4294967295 out of range 0-4294967294"},
		{"blockedApplications unknown user", `{` + v4 + `,"blockedApplications":["alice","bob"]}`, `blockedApplications[1]: unknown user "bob"`},
		{"blockedApplications at most 256", `{` + v4 + `,"blockedApplications":[` + strings.Repeat(`"1",`, 256) + `"1"]}`, "blockedApplications: 257 entries, at most 256 allowed"},
		{"lists mutually exclusive", `{` + v4 + `,"trustedApplications":["alice"],"blockedApplications":[1001]}`, "trustedApplications and blockedApplications are mutually exclusive"},

		// check order
		{"order: addresses before routes", `{"routes":["x"],"addresses":[]}`, "addresses: at least 1 entry required"},
		{"order: routes before mtu", `{` + v4 + `,"mtu":1,"routes":["x"]}`, `routes[0]: "x" is not in CIDR form address/prefixLength`},
		{"order: mtu before isLegacy", `{` + v4 + `,"isLegacy":true,"mtu":1}`, "mtu: 1 out of range 576-65535"},
		{"order: isLegacy before applications", `{` + v4 + `,"trustedApplications":["bob"],"isLegacy":true}`, "isLegacy: legacy VPN types are not supported"},
		{"order: isLegacy before allowFamilyBypass", `{` + v4 + `,"allowFamilyBypass":1,"isLegacy":true}`, "isLegacy: legacy VPN types are not supported"},
		{"order: allowFamilyBypass before applications", `{` + v4 + `,"trustedApplications":["bob"],"allowFamilyBypass":0}`, "allowFamilyBypass: expected boolean, got number"},
		{"order: allowFamilyBypass before offload", `{` + v4 + `,"offload":0,"allowFamilyBypass":0}`, "allowFamilyBypass: expected boolean, got number"},
		{"order: offload before applications", `{` + v4 + `,"trustedApplications":["bob"],"offload":0}`, "offload: expected boolean, got number"},
		{"order: first element first", `{"addresses":["127.0.0.1/8","10.8.0.0/24"]}`, "addresses[0]: 127.0.0.1/8 is a loopback address"},
	}
	seen := make(map[string]bool)
	for _, tt := range tests {
		if seen[tt.rule] {
			t.Fatalf("duplicate rule name %q", tt.rule)
		}
		seen[tt.rule] = true
		t.Run(tt.rule, func(t *testing.T) {
			var params json.RawMessage
			if tt.params != "" {
				params = json.RawMessage(tt.params)
			}
			cfg, err := Parse(params, testUsers)
			if err == nil {
				t.Fatalf("Parse succeeded: %+v; want detail %q", cfg, tt.detail)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with an error")
			}
			var e *errs.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not an *errs.Error", err)
			}
			if e.Code != errs.CodeInvalidParam {
				t.Errorf("code = %d, want %d", e.Code, errs.CodeInvalidParam)
			}
			if !errors.Is(err, errs.ErrInvalidParam) {
				t.Errorf("errors.Is(err, ErrInvalidParam) is false")
			}
			if e.Detail != tt.detail {
				t.Errorf("detail\n got %s\nwant %s", e.Detail, tt.detail)
			}
		})
	}
}

// A resolver's own *errs.Error keeps its code: a broken user database is
// not the caller's fault.
func TestParseResolverInternalError(t *testing.T) {
	_, err := Parse(json.RawMessage(`{`+v4+`,"trustedApplications":["broken"]}`), testUsers)
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.CodeInternal {
		t.Fatalf("err = %v, want code %d", err, errs.CodeInternal)
	}
	if want := "trustedApplications[0]: user database unavailable"; e.Detail != want {
		t.Errorf("detail = %q, want %q", e.Detail, want)
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestParseAccepts(t *testing.T) {
	defaultV4 := []Route{{Dst: pfx("0.0.0.0/0")}}
	defaultV6 := []Route{{Dst: pfx("::/0")}}
	tests := []struct {
		name   string
		params string
		want   Config
	}{
		{
			name:   "minimal CIDR: defaults and IPv4 default route",
			params: `{"addresses":["10.8.0.2/24"]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4,
				MTU: 1500, IPv4: true},
		},
		{
			name:   "minimal LinkAddress without family",
			params: `{"addresses":[{"address":{"address":"10.8.0.2"},"prefixLength":24}]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4,
				MTU: 1500, IPv4: true},
		},
		{
			name:   "LinkAddress with family and port, IPv6 only",
			params: `{"addresses":[{"address":{"address":"fd00::2","family":2,"port":0},"prefixLength":64}]}`,
			want: Config{Addresses: []netip.Prefix{pfx("fd00::2/64")}, Routes: defaultV6,
				MTU: 1500, IPv6: true},
		},
		{
			name:   "dual stack: both default routes, IPv4 first",
			params: `{"addresses":["fd00::2/64","10.8.0.2/24"],"mtu":1280}`,
			want: Config{Addresses: []netip.Prefix{pfx("fd00::2/64"), pfx("10.8.0.2/24")},
				Routes: append(append([]Route{}, defaultV4...), defaultV6...), MTU: 1280, IPv4: true, IPv6: true},
		},
		{
			name:   "dual stack with IPv6 not accepted",
			params: `{"addresses":["fd00::2/64","10.8.0.2/24"],"isIPv6Accepted":false,"mtu":1280}`,
			want: Config{Addresses: []netip.Prefix{pfx("fd00::2/64"), pfx("10.8.0.2/24")},
				Routes: defaultV4, MTU: 1280, IPv4: true},
		},
		{
			name:   "edge addresses: /31, /32, link-local, IPv6 subnet-router anycast",
			params: `{"addresses":["10.8.0.0/31","10.9.0.1/32","169.254.1.1/16","fe80::1/64","fd00::/64"]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.0/31"), pfx("10.9.0.1/32"), pfx("169.254.1.1/16"), pfx("fe80::1/64"), pfx("fd00::/64")},
				Routes: append(append([]Route{}, defaultV4...), defaultV6...), MTU: 1500, IPv4: true, IPv6: true},
		},
		{
			name: "routes canonicalised, merged, gateways, excluded",
			params: `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":[
				"10.1.2.3/8",
				{"destination":{"address":{"address":"10.0.0.0","family":1},"prefixLength":8}},
				{"destination":{"address":{"address":"192.168.0.0"},"prefixLength":16},"gateway":{"address":"10.8.0.1"},"interface":"tun0","hasGateway":true,"isDefaultRoute":false},
				{"destination":{"address":{"address":"192.168.7.7"},"prefixLength":16},"gateway":{"address":"10.8.0.1","family":1}},
				{"destination":{"address":{"address":"2001:db8::1"},"prefixLength":32},"gateway":{"address":""}},
				{"destination":{"address":{"address":"172.16.0.0"},"prefixLength":12},"gateway":{"address":"0.0.0.0"}},
				{"destination":{"address":{"address":"10.9.0.0"},"prefixLength":16},"isExcludedRoute":true,"gateway":{"address":"::"}},
				{"destination":{"address":{"address":"10.9.1.1"},"prefixLength":16},"isExcludedRoute":true,"gateway":null},
				"2001:db8:ffff::/48"
			]}`,
			want: Config{
				Addresses: []netip.Prefix{pfx("10.8.0.2/24"), pfx("fd00::2/64")},
				Routes: []Route{
					{Dst: pfx("10.0.0.0/8")},
					{Dst: pfx("192.168.0.0/16"), Gateway: addr("10.8.0.1")},
					{Dst: pfx("2001:db8::/32")},
					{Dst: pfx("172.16.0.0/12")},
					{Dst: pfx("2001:db8:ffff::/48")},
				},
				ExcludedRoutes: []netip.Prefix{pfx("10.9.0.0/16")},
				MTU:            1500, IPv4: true, IPv6: true,
			},
		},
		{
			name:   "only excluded routes: defaults still added",
			params: `{"addresses":["10.8.0.2/24"],"routes":[{"destination":{"address":{"address":"10.8.0.0"},"prefixLength":24},"isExcludedRoute":true}]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4,
				ExcludedRoutes: []netip.Prefix{pfx("10.8.0.0/24")}, MTU: 1500, IPv4: true},
		},
		{
			name:   "explicit default route is not doubled",
			params: `{"addresses":["10.8.0.2/24","fd00::2/64"],"routes":["0.0.0.0/0"]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24"), pfx("fd00::2/64")}, Routes: defaultV4,
				MTU: 1500, IPv4: true, IPv6: true},
		},
		{
			name: "gateway on a second address prefix; IPv6 gateway",
			params: `{"addresses":["10.8.0.2/30","10.9.0.2/24","fd00::2/64"],"routes":[
				{"destination":{"address":{"address":"1.0.0.0"},"prefixLength":8},"gateway":{"address":"10.9.0.1"}},
				{"destination":{"address":{"address":"2000::"},"prefixLength":3},"gateway":{"address":"fd00::1","family":2}}]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/30"), pfx("10.9.0.2/24"), pfx("fd00::2/64")},
				Routes: []Route{{Dst: pfx("1.0.0.0/8"), Gateway: addr("10.9.0.1")}, {Dst: pfx("2000::/3"), Gateway: addr("fd00::1")}},
				MTU:    1500, IPv4: true, IPv6: true},
		},
		{
			name: "dns, search domains, flags, merged",
			params: `{"addresses":["10.8.0.2/24"],"dnsAddresses":["1.1.1.1","2606:4700::1111","1.1.1.1"],
				"searchDomains":["Corp.Example.","corp.example","a-1.b2.example","4.example"],
				"mtu":9000,"isBlocking":true,"isMetered":true,"isLegacy":false,"isIPv4Accepted":true,"isIPv6Accepted":false}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4,
				DNSAddresses:  []netip.Addr{addr("1.1.1.1"), addr("2606:4700::1111")},
				SearchDomains: []string{"Corp.Example.", "a-1.b2.example", "4.example"},
				MTU:           9000, IPv4: true, Blocking: true, Metered: true},
		},
		{
			name:   "trusted applications: names, numbers, decimal strings, merged",
			params: `{"addresses":["10.8.0.2/24"],"trustedApplications":["alice",1000,"1001",0,"carol","4294967294"]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4, MTU: 1500, IPv4: true,
				Trusted: []User{{"alice", 1000}, {"carol", 1001}, {"root", 0}, {"", 4294967294}}},
		},
		{
			name:   "blocked applications; empty trusted list is fine",
			params: `{"addresses":["10.8.0.2/24"],"trustedApplications":[],"blockedApplications":["root"]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4, MTU: 1500, IPv4: true,
				Blocked: []User{{"root", 0}}},
		},
		{
			name:   "an excluded default route beside an included route",
			params: `{"addresses":["10.8.0.2/24"],"routes":["10.9.0.0/16",{"destination":{"address":{"address":"0.0.0.0"},"prefixLength":0},"isExcludedRoute":true}]}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: []Route{{Dst: pfx("10.9.0.0/16")}},
				ExcludedRoutes: []netip.Prefix{pfx("0.0.0.0/0")}, MTU: 1500, IPv4: true},
		},
		{
			name:   "allowFamilyBypass true",
			params: `{"addresses":["10.8.0.2/24"],"allowFamilyBypass":true}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4, MTU: 1500, IPv4: true,
				AllowFamilyBypass: true},
		},
		{
			name:   "allowFamilyBypass false is the default",
			params: `{"addresses":["10.8.0.2/24"],"allowFamilyBypass":false}`,
			want:   Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4, MTU: 1500, IPv4: true},
		},
		{
			name:   "offload true",
			params: `{"addresses":["10.8.0.2/24"],"offload":true}`,
			want: Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4, MTU: 1500, IPv4: true,
				Offload: true},
		},
		{
			name:   "offload false is the default",
			params: `{"offload":false,"addresses":["10.8.0.2/24"]}`,
			want:   Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4, MTU: 1500, IPv4: true},
		},
		{
			name:   "null members count as absent",
			params: `{"addresses":["10.8.0.2/24"],"routes":null,"mtu":null,"isIPv4Accepted":null,"allowFamilyBypass":null,"offload":null,"trustedApplications":null}`,
			want:   Config{Addresses: []netip.Prefix{pfx("10.8.0.2/24")}, Routes: defaultV4, MTU: 1500, IPv4: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse(json.RawMessage(tt.params), testUsers)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(*cfg, tt.want) {
				t.Errorf("got  %+v\nwant %+v", *cfg, tt.want)
			}
			if err := checkInvariants(cfg); err != nil {
				t.Error(err)
			}
		})
	}
}

// What the public protocol package marshals must parse, so Go clients and
// vpnd agree on the shape.
func TestParseProtocolShape(t *testing.T) {
	yes := true
	vc := protocol.VpnConfig{
		Addresses: []protocol.LinkAddress{{Address: protocol.NetAddress{Address: "10.8.0.2", Family: 1}, PrefixLength: 24}},
		Routes: []protocol.RouteInfo{
			{Destination: protocol.LinkAddress{Address: protocol.NetAddress{Address: "0.0.0.0"}}, Gateway: &protocol.NetAddress{Address: "10.8.0.1", Family: 1}},
			{Destination: protocol.LinkAddress{Address: protocol.NetAddress{Address: "10.8.0.0"}, PrefixLength: 24}, IsExcludedRoute: true, Interface: "vpn-tun"},
		},
		DNSAddresses:        []string{"10.8.0.1"},
		MTU:                 1400,
		IsIPv4Accepted:      &yes,
		AllowFamilyBypass:   true,
		TrustedApplications: []string{"alice"},
	}
	params, err := json.Marshal(vc)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(params, testUsers)
	if err != nil {
		t.Fatalf("Parse(%s): %v", params, err)
	}
	want := Config{
		Addresses:         []netip.Prefix{pfx("10.8.0.2/24")},
		Routes:            []Route{{Dst: pfx("0.0.0.0/0"), Gateway: addr("10.8.0.1")}},
		ExcludedRoutes:    []netip.Prefix{pfx("10.8.0.0/24")},
		DNSAddresses:      []netip.Addr{addr("10.8.0.1")},
		MTU:               1400,
		IPv4:              true,
		AllowFamilyBypass: true,
		Trusted:           []User{{"alice", 1000}},
	}
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("got  %+v\nwant %+v", *cfg, want)
	}
}
