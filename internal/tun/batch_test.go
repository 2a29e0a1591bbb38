package tun

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// createTUN creates a TUN link named name with n and closes its fd, which
// removes the link, when the test ends (closing it earlier is fine).
func createTUN(t *testing.T, n *Netlink, name string) (*os.File, int) {
	t.Helper()
	f, index, err := n.CreateTUN(name, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, index
}

// TestAddRoutesLikeAddRoute: a batch installs exactly what AddRoute does,
// attribute for attribute, and DeleteRoute removes each of them.
func TestAddRoutesLikeAddRoute(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := New(zap.NewNop())
	_, idx := createTUN(t, n, "vpn-tun")
	for _, a := range []string{"10.8.0.2/24", "fd00::2/64"} {
		if err := n.AddAddress(idx, netip.MustParsePrefix(a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.SetUp(idx); err != nil {
		t.Fatal(err)
	}
	routes := []Route{
		{Table: 98, Dst: netip.MustParsePrefix("198.51.100.7/24"), LinkIndex: idx},
		{Table: 98, Dst: netip.MustParsePrefix("203.0.113.0/24"), Gateway: netip.MustParseAddr("10.8.0.1"), LinkIndex: idx},
		{Table: 98, Dst: netip.MustParsePrefix("198.51.100.0/28"), Throw: true},
		{Table: 98, Dst: netip.MustParsePrefix("0.0.0.0/0"), LinkIndex: idx},
		{Table: 98, Dst: netip.MustParsePrefix("2001:db8::/32"), LinkIndex: idx},
		{Table: 98, Dst: netip.MustParsePrefix("2001:db8:1::/48"), Gateway: netip.MustParseAddr("fd00::1"), LinkIndex: idx},
		{Table: 98, Dst: netip.MustParsePrefix("2001:db8:2::/48"), Throw: true},
		{Table: 98, Dst: netip.MustParsePrefix("::/0"), LinkIndex: idx},
		{Table: 1000, Dst: netip.MustParsePrefix("192.0.2.0/24"), LinkIndex: idx},
		{Table: 1000, Dst: netip.MustParsePrefix("192.0.2.0/25"), Throw: true},
	}
	show := func() string {
		var out []byte
		for _, table := range []string{"98", "1000"} {
			for _, fam := range []string{"-4", "-6"} {
				b, err := exec.Command("ip", fam, "-d", "route", "show", "table", table).CombinedOutput()
				if err != nil && strings.Contains(string(b), "FIB table does not exist") {
					continue // an empty table, as far as ip -6 is concerned
				}
				if err != nil {
					t.Fatalf("ip route: %v: %s", err, b)
				}
				out = append(out, b...)
			}
		}
		return string(out)
	}
	for _, r := range routes {
		if err := n.AddRoute(r); err != nil {
			t.Fatal(err)
		}
	}
	one := show()
	for _, r := range routes {
		if err := n.DeleteRoute(r); err != nil {
			t.Fatal(err)
		}
	}
	if s := show(); s != "" {
		t.Fatalf("left after deletes: %s", s)
	}
	added, err := n.AddRoutes(routes)
	if err != nil || len(added) != len(routes) {
		t.Fatalf("AddRoutes: %d added, %v", len(added), err)
	}
	if batch := show(); batch != one {
		t.Fatalf("batch installed\n%s\nAddRoute installed\n%s", batch, one)
	}
	for _, r := range routes {
		if err := n.DeleteRoute(r); err != nil {
			t.Fatalf("DeleteRoute after a batch: %v", err)
		}
	}
}

// TestAddRoutesPartialFailure: the kernel refuses some routes of a batch;
// AddRoutes reports the first refusal and exactly the routes it added.
func TestAddRoutesPartialFailure(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := New(zap.NewNop())
	_, idx := createTUN(t, n, "vpn-tun")
	if err := n.SetUp(idx); err != nil {
		t.Fatal(err)
	}
	var routes []Route
	for i := 0; i < 600; i++ {
		routes = append(routes, Route{Table: 98, Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 256), byte(i % 256), 0}), 24), LinkIndex: idx})
	}
	dup := routes[300]
	unreachable := Route{Table: 98, Dst: netip.MustParsePrefix("203.0.113.0/24"), Gateway: netip.MustParseAddr("192.0.2.1"), LinkIndex: idx}
	batch := slices.Concat(routes[:400], []Route{dup, unreachable}, routes[400:])
	added, err := n.AddRoutes(batch)
	if !errors.Is(err, unix.EEXIST) {
		t.Fatalf("err = %v, want the duplicate's EEXIST first", err)
	}
	if !slices.Equal(added, routes) {
		t.Fatalf("added %d routes, want the 600 distinct ones", len(added))
	}
	have, err := ListRoutes(98)
	if err != nil {
		t.Fatal(err)
	}
	if len(have) != 600 {
		t.Fatalf("kernel has %d routes, want 600", len(have))
	}
}
