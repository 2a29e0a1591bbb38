package tun

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// largestVPN is a VPN at the config's limits: 2,000 addresses, 10,000
// routes (prefix routes, routes through a gateway, excluded routes, both
// families) and the rules of an ADMIN owner who blocked 256 users: about
// 259 uid ranges per family.
func largestVPN(index int) *Objects {
	o := &Objects{Link: &Link{Index: index, MTU: 1400}}
	o.Link.Addrs = append(o.Link.Addrs, netip.MustParsePrefix("10.8.0.2/16"), netip.MustParsePrefix("fd00:8::2/64"))
	for i := range 999 {
		o.Link.Addrs = append(o.Link.Addrs,
			netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 32),
			netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 9, 14: byte(i >> 8), 15: byte(i)}), 128))
	}
	o.Routes = append(o.Routes,
		Route{Table: 98, Dst: netip.MustParsePrefix("10.8.0.0/16"), LinkIndex: index},
		Route{Table: 98, Dst: netip.MustParsePrefix("fd00:8::/64"), LinkIndex: index})
	gw4, gw6 := netip.MustParseAddr("10.8.0.1"), netip.MustParseAddr("fd00:8::1")
	for i := range 4999 {
		r4 := Route{Table: 98, Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i >> 8), byte(i), 0}), 24), LinkIndex: index}
		r6 := Route{Table: 98, Dst: netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 4: byte(i >> 8), 5: byte(i)}), 48), LinkIndex: index}
		switch i % 5 {
		case 1:
			r4.Gateway, r6.Gateway = gw4, gw6
		case 2:
			r4.Kind, r4.LinkIndex, r6.Kind, r6.LinkIndex = Throw, 0, Throw, 0
		}
		o.Routes = append(o.Routes, r4, r6)
	}
	const owner = 20000
	var ranges [][2]uint32
	start := uint32(0)
	for k := range 256 {
		blocked := uint32(1000 + 2*k)
		ranges = append(ranges, [2]uint32{start, blocked - 1})
		start = blocked + 1
	}
	ranges = append(ranges, [2]uint32{start, owner - 1}, [2]uint32{owner + 1, 4294967294})
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		o.Rules = append(o.Rules, Rule{Family: fam, Priority: 10000, Table: 98, UIDStart: owner, UIDEnd: owner, Mask: 0x20000})
		for _, r := range ranges {
			o.Rules = append(o.Rules, Rule{Family: fam, Priority: 10000, Table: 98, UIDStart: r[0], UIDEnd: r[1]})
		}
	}
	return o
}

func countLines(t *testing.T, args ...string) int {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "does not exist") {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if err != nil {
		return 0
	}
	return strings.Count(string(out), "\n")
}

// The largest VPN installs completely in a few round trips, reads back
// whole, and goes away completely: by Remove, and by the start-up sweep
// after a vpnd was killed with it up. The figures are logged, not judged.
func TestLargestVPN(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	leftovers := func(what string) {
		t.Helper()
		got := map[string]int{
			"rules":         countLines(t, "rule", "show", "priority", "10000") + countLines(t, "-6", "rule", "show", "priority", "10000"),
			"IPv4 routes":   countLines(t, "-4", "route", "show", "table", "98"),
			"IPv6 routes":   countLines(t, "-6", "route", "show", "table", "98"),
			"vpn-tun links": countLines(t, "link", "show", "type", "tun"),
		}
		for k, v := range got {
			if v != 0 {
				t.Errorf("after %s: %d %s left", what, v, k)
			}
		}
	}
	install := func() (*Objects, int64, time.Duration) {
		t.Helper()
		_, index := makeTUN(t, n, "vpn-tun")
		o := largestVPN(index)
		sends := n.c.sends.Load()
		start := time.Now()
		added, err := n.Install(o)
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if len(added.Routes) != len(o.Routes) || len(added.Rules) != len(o.Rules) || len(added.Link.Addrs) != len(o.Link.Addrs) {
			t.Fatalf("Install added %d addresses, %d routes, %d rules of %d, %d, %d",
				len(added.Link.Addrs), len(added.Routes), len(added.Rules), len(o.Link.Addrs), len(o.Routes), len(o.Rules))
		}
		return o, n.c.sends.Load() - sends, took
	}

	o, sends, took := install()
	t.Logf("Install of %d addresses, %d routes, %d rules: %v, %d sendmsg", len(o.Link.Addrs), len(o.Routes), len(o.Rules), took, sends)
	start := time.Now()
	s, err := n.Read(Query{LinkIndex: o.Link.Index, Table: 98, Priorities: []int{10000}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Read: %v", time.Since(start))
	if len(s.Link.Addrs) != len(o.Link.Addrs) || len(s.Routes) != len(o.Routes) || len(s.Rules) != len(o.Rules) {
		t.Errorf("Read %d addresses, %d routes, %d rules; want %d, %d, %d",
			len(s.Link.Addrs), len(s.Routes), len(s.Rules), len(o.Link.Addrs), len(o.Routes), len(o.Rules))
	}
	if got, want := countLines(t, "-4", "route", "show", "table", "98")+countLines(t, "-6", "route", "show", "table", "98"), len(o.Routes); got != want {
		t.Errorf("ip route shows %d routes in table 98, want %d", got, want)
	}
	sends = n.c.sends.Load()
	start = time.Now()
	if err := n.Remove(o); err != nil {
		t.Fatal(err)
	}
	t.Logf("Remove: %v, %d sendmsg", time.Since(start), n.c.sends.Load()-sends)
	leftovers("Remove")

	// A vpnd killed with it up: the next one's sweep.
	o, _, _ = install()
	sends = n.c.sends.Load()
	start = time.Now()
	removed, err := n.Sweep(nil, SweepSpec{IfName: "vpn-tun", Table: 98, Priority: 10000})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Sweep: %v, %d sendmsg", time.Since(start), n.c.sends.Load()-sends)
	leftovers("Sweep")
	// The link, the rules, and the routes that do not go with the link.
	throws := 0
	for _, r := range o.Routes {
		if r.Kind == Throw {
			throws++
		}
	}
	if want := 1 + len(o.Rules) + throws; len(removed) != want || !strings.Contains(removed[0], fmt.Sprintf("with the %d routes through it", len(o.Routes)-throws)) {
		t.Errorf("Sweep reports %d objects, first %q; want %d, the link with the %d routes through it", len(removed), removed[0], want, len(o.Routes)-throws)
	}

}

// Remove deletes a VPN's rules before its link, so that no traffic looks
// up the table while the link goes: in one batch when a few routes stay
// behind the link, and before the link's deletion on a socket of its own
// when many do. The kernel's notifications, read in the order it sent
// them, show the order.
func TestRemoveRulesBeforeLink(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	for _, throws := range []int{1, parallelRemoveRoutes} {
		t.Run(fmt.Sprintf("%d throw routes", throws), func(t *testing.T) {
			_, index := makeTUN(t, n, "vpn-tun")
			o := &Objects{Link: &Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix("10.8.0.2/24")}}}
			o.Routes = append(o.Routes, Route{Table: 98, Dst: netip.MustParsePrefix("0.0.0.0/0"), LinkIndex: index})
			for i := range throws {
				o.Routes = append(o.Routes, Route{Table: 98, Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i >> 8), byte(i), 0}), 24), Kind: Throw})
			}
			for uid := range uint32(4) {
				o.Rules = append(o.Rules, Rule{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 1000 + uid, UIDEnd: 1000 + uid})
			}
			if _, err := n.Install(o); err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
			if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK | unix.RTMGRP_IPV4_RULE | unix.RTMGRP_IPV4_ROUTE}); err != nil {
				t.Fatal(err)
			}
			if err := n.Remove(o); err != nil {
				t.Fatal(err)
			}
			var seen []string // "rule", "route" and "link" deletions, in order
			buf := make([]byte, 1<<16)
			for {
				k, _, err := unix.Recvfrom(fd, buf, 0)
				if err == unix.EAGAIN {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				msgs, err := syscall.ParseNetlinkMessage(buf[:k])
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range msgs {
					switch m.Header.Type {
					case unix.RTM_DELRULE:
						seen = append(seen, "rule")
					case unix.RTM_DELROUTE:
						seen = append(seen, "route")
					case unix.RTM_DELLINK:
						seen = append(seen, "link")
					}
				}
			}
			firstLink, lastRule, rules := slices.Index(seen, "link"), -1, 0
			for i, s := range seen {
				if s == "rule" {
					lastRule, rules = i, rules+1
				}
			}
			if firstLink < 0 || rules != len(o.Rules) {
				t.Fatalf("deletions seen: %v; want %d rules and the link", seen, len(o.Rules))
			}
			if lastRule > firstLink {
				t.Errorf("the link went before the last rule: %v", seen[:min(len(seen), 12)])
			}
		})
	}
}
