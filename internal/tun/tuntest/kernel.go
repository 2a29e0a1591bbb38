package tuntest

import (
	"encoding/json"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/sim"
)

// KernelRoutes reads table's routes of both families from the kernel of
// the test's namespace with `ip -j -d route`, in vpnd's terms; index maps
// link names to their indexes. It reads them independently of vpnd's own
// reader: a route that `ip` shows with another protocol than "static",
// another scope than vpnd gives its kind, or flags vpnd never sets is
// Foreign; a type vpnd never makes is OtherKind (and Foreign).
func KernelRoutes(t *testing.T, table int, index map[string]int) []sim.Route {
	t.Helper()
	var out []sim.Route
	for _, fam := range []string{"-4", "-6"} {
		for _, j := range netnstest.IPJSON(t, fam, "-d", "route", "show", "table", strconv.Itoa(table)) {
			dst := j["dst"].(string)
			switch {
			case dst == "default" && fam == "-4":
				dst = "0.0.0.0/0"
			case dst == "default":
				dst = "::/0"
			case !strings.Contains(dst, "/") && fam == "-4":
				dst += "/32"
			case !strings.Contains(dst, "/"):
				dst += "/128"
			}
			r := sim.Route{Table: table, Route: manager.Route{Dst: netip.MustParsePrefix(dst)}}
			if m, ok := j["metric"].(float64); ok && !(fam == "-6" && m == 1024) {
				r.Metric = uint32(m)
			}
			if tos, ok := j["tos"].(string); ok {
				v, err := strconv.ParseUint(tos, 0, 8)
				if err != nil {
					t.Fatalf("route %v: tos: %v", j, err)
				}
				r.Tos = uint8(v)
			}
			scope := "global"
			switch j["type"] {
			case nil, "unicast":
				dev, _ := j["dev"].(string) // none with several next hops
				r.LinkIndex = index[dev]
				if gw, ok := j["gateway"].(string); ok {
					r.Gateway = netip.MustParseAddr(gw)
				} else if fam == "-4" {
					scope = "link"
				}
			case "throw":
				r.Kind = manager.Throw
			case "unreachable":
				r.Kind = manager.Unreachable
			default:
				r.Kind = manager.OtherKind
			}
			r.Foreign = j["protocol"] != "static" || j["scope"] != scope || r.Kind == manager.OtherKind || j["nexthops"] != nil || j["prefsrc"] != nil
			flags, _ := j["flags"].([]any)
			for _, f := range flags {
				switch {
				case f == "linkdown" || f == "dead":
					// The kernel's own, as the link's state changes.
				case f == "onlink" && r.Gateway.IsValid():
				default:
					r.Foreign = true
				}
			}
			if r.Gateway.IsValid() && !slices.Contains(flags, any("onlink")) {
				r.Foreign = true
			}
			out = append(out, r)
		}
	}
	return out
}

// WaitIPv6 waits until every IPv6 address of link name in the test's
// namespace is through duplicate address detection and has its local
// route. The kernel configures an address, and announces it, from a work
// queue after the request that added it was acknowledged (even with
// IFA_F_NODAD), and again when its duplicate address detection ends: so
// after WaitIPv6 every announcement of what was done to the link so far
// is queued. A link that does not exist has nothing to wait for.
func WaitIPv6(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("ip", "-j", "-6", "addr", "show", "dev", name).Output()
		if err != nil {
			return // gone
		}
		var links []struct {
			AddrInfo []struct {
				Local     string `json:"local"`
				Tentative bool   `json:"tentative"`
				DADFailed bool   `json:"dadfailed"`
			} `json:"addr_info"`
		}
		if err := json.Unmarshal(out, &links); err != nil {
			t.Fatalf("ip -j -6 addr show dev %s: %v\n%s", name, err, out)
		}
		routes, _ := exec.Command("ip", "-6", "route", "show", "table", "local", "dev", name).Output()
		done := true
		for _, l := range links {
			for _, a := range l.AddrInfo {
				done = done && (a.DADFailed || !a.Tentative && strings.Contains(string(routes), "local "+a.Local+" "))
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("IPv6 addresses of %s never became usable:\n%s\n%s", name, out, routes)
		}
		time.Sleep(time.Millisecond)
	}
}
