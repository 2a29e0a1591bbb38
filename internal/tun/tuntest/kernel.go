package tuntest

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/sim"
)

// KernelRoutes reads table's routes of both families from the kernel of
// the test's namespace with `ip -j route`, in vpnd's terms; index maps link
// names to their indexes. A route vpnd could not have made fails the test.
func KernelRoutes(t *testing.T, table int, index map[string]int) []sim.Route {
	t.Helper()
	var out []sim.Route
	for _, fam := range []string{"-4", "-6"} {
		for _, j := range netnstest.IPJSON(t, fam, "route", "show", "table", strconv.Itoa(table)) {
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
			switch j["type"] {
			case nil, "unicast":
				r.LinkIndex = index[j["dev"].(string)]
				if gw, ok := j["gateway"].(string); ok {
					r.Gateway = netip.MustParseAddr(gw)
				}
			case "throw":
				r.Kind = manager.Throw
			case "unreachable":
				r.Kind = manager.Unreachable
			default:
				t.Errorf("table %d holds a route vpnd never makes: %v", table, j)
			}
			out = append(out, r)
		}
	}
	return out
}
