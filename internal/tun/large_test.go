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

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
)

// largestVPN is a VPN at the config's limits: 2,000 addresses, 10,000
// routes (prefix routes, routes through a gateway, excluded routes, both
// families) and the rules of an ADMIN owner who blocked 256 users: 259
// uid ranges per family.
func largestVPN(index int) vpnObjects {
	o := vpnObjects{link: manager.Link{Index: index, MTU: 1400}}
	o.link.Addrs = append(o.link.Addrs, pfx("10.8.0.2/16"), pfx("fd00:8::2/64"))
	for i := range 999 {
		o.link.Addrs = append(o.link.Addrs,
			netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 32),
			netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 9, 14: byte(i >> 8), 15: byte(i)}), 128))
	}
	o.routes = append(o.routes,
		manager.Route{Dst: pfx("10.8.0.0/16"), LinkIndex: index},
		manager.Route{Dst: pfx("fd00:8::/64"), LinkIndex: index})
	gw4, gw6 := ip("10.8.0.1"), ip("fd00:8::1")
	for i := range 4999 {
		r4 := manager.Route{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i >> 8), byte(i), 0}), 24), LinkIndex: index}
		r6 := manager.Route{Dst: netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 4: byte(i >> 8), 5: byte(i)}), 48), LinkIndex: index}
		switch i % 5 {
		case 1:
			r4.Gateway, r6.Gateway = gw4, gw6
		case 2:
			r4.Kind, r4.LinkIndex, r6.Kind, r6.LinkIndex = manager.Throw, 0, manager.Throw, 0
		}
		o.routes = append(o.routes, r4, r6)
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
	for _, fam := range []int{v4, v6} {
		o.rules = append(o.rules, manager.Rule{Family: fam, Priority: prio, Table: table, UIDStart: owner, UIDEnd: owner, Mask: mark})
		for _, r := range ranges {
			o.rules = append(o.rules, manager.Rule{Family: fam, Priority: prio, Table: table, UIDStart: r[0], UIDEnd: r[1]})
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

// The largest VPN goes in with one Apply, in a few sendmsg calls; Read
// gives all of it back, addresses included; one Apply of the teardown
// (beside the link: see TestRulesGoBeforeTheLink) removes it completely.
// The figures are logged, not judged.
func TestLargestVPN(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	_, index := makeTUN(t, n, "vpn-tun")
	o := largestVPN(index)
	ops := o.upOps()
	sends := n.req.sends.Load()
	start := time.Now()
	applyAll(t, n, ops...)
	t.Logf("bring-up of %d addresses, %d routes, %d rules (%d ops): %v, %d sendmsg",
		len(o.link.Addrs), len(o.routes), len(o.rules), len(ops), time.Since(start), n.req.sends.Load()-sends)

	for _, part := range []manager.Parts{manager.PartLinks, manager.PartRoutes, manager.PartRules} {
		start = time.Now()
		if _, err := n.Read(manager.Query{Places: places, What: part}); err != nil {
			t.Fatal(err)
		}
		t.Logf("Read of the %s: %v", part, time.Since(start))
	}
	sends = n.req.sends.Load()
	start = time.Now()
	h := readAll(t, n)
	t.Logf("Read: %v, %d sendmsg on the request socket (and the typed dumps)", time.Since(start), n.req.sends.Load()-sends)
	if len(h.Links) != 1 {
		t.Fatalf("Read %d links", len(h.Links))
	}
	if len(h.Links[0].Addrs) != len(o.link.Addrs) || len(h.Routes) != len(o.routes) || len(h.Rules) != len(o.rules) {
		t.Errorf("Read %d addresses, %d routes, %d rules; want %d, %d, %d",
			len(h.Links[0].Addrs), len(h.Routes), len(h.Rules), len(o.link.Addrs), len(o.routes), len(o.rules))
	}
	if got, want := addrStrs(h.Links[0].Addrs), strs(o.link.Addrs); got != want {
		t.Error("Read addresses differ from the VPN's")
	}
	if got, want := strs(h.Routes), strs(o.routes); got != want {
		t.Error("Read routes differ from the VPN's")
	}
	if !slices.Equal(h.Rules, o.rules) {
		t.Error("Read rules differ from the VPN's, or are in another order")
	}
	if got := len(linkAddrs(t, "vpn-tun")); got != len(o.link.Addrs) {
		t.Errorf("ip shows %d addresses, want %d", got, len(o.link.Addrs))
	}
	if got, want := countLines(t, "-4", "route", "show", "table", "98")+countLines(t, "-6", "route", "show", "table", "98"), len(o.routes); got != want {
		t.Errorf("ip route shows %d routes in table 98, want %d", got, want)
	}

	down := o.downOps()
	sends = n.req.sends.Load()
	start = time.Now()
	applyAll(t, n, down...)
	t.Logf("teardown (%d ops): %v, %d sendmsg", len(down), time.Since(start), n.req.sends.Load()-sends)
	left := map[string]int{
		"rules":         countLines(t, "rule", "show", "priority", "10000") + countLines(t, "-6", "rule", "show", "priority", "10000"),
		"IPv4 routes":   countLines(t, "-4", "route", "show", "table", "98"),
		"IPv6 routes":   countLines(t, "-6", "route", "show", "table", "98"),
		"vpn-tun links": countLines(t, "link", "show", "type", "tun"),
	}
	for k, v := range left {
		if v != 0 {
			t.Errorf("after the teardown: %d %s left", v, k)
		}
	}
}

// A teardown deletes the VPN's rules before its link, so that no traffic
// looks up the table while the link goes: in one batch when a few routes
// stay behind the link, and before the link's deletion on a socket of its
// own when many do (parallelRemoveRoutes). The kernel's announcements,
// read in the order it sent them, show the order.
func TestRulesGoBeforeTheLink(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	for _, throws := range []int{1, parallelRemoveRoutes} {
		t.Run(fmt.Sprintf("%d throw routes", throws), func(t *testing.T) {
			_, index := makeTUN(t, n, "vpn-tun")
			o := vpnObjects{link: manager.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{pfx("10.8.0.2/24")}}}
			o.routes = append(o.routes, manager.Route{Dst: pfx("0.0.0.0/0"), LinkIndex: index})
			for i := range throws {
				o.routes = append(o.routes, manager.Route{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i >> 8), byte(i), 0}), 24), Kind: manager.Throw})
			}
			for uid := range uint32(4) {
				o.rules = append(o.rules, manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: 1000 + uid, UIDEnd: 1000 + uid})
			}
			applyAll(t, n, o.upOps()...)
			fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
			must(t, err)
			defer unix.Close(fd)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
			must(t, unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK | unix.RTMGRP_IPV4_RULE | unix.RTMGRP_IPV4_ROUTE}))
			down := o.downOps()
			if got := len(down) - len(o.rules) - 1; got != throws {
				t.Fatalf("the teardown deletes %d routes, want %d", got, throws)
			}
			applyAll(t, n, down...)
			var seen []string // "rule", "route" and "link" deletions, in order
			buf := make([]byte, 1<<16)
			for {
				k, _, err := unix.Recvfrom(fd, buf, 0)
				if err == unix.EAGAIN {
					break
				}
				must(t, err)
				msgs, err := syscall.ParseNetlinkMessage(buf[:k])
				must(t, err)
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
			if firstLink < 0 || rules != len(o.rules) {
				t.Fatalf("deletions seen: %v; want %d rules and the link", seen, len(o.rules))
			}
			if lastRule > firstLink {
				t.Errorf("the link went before the last rule: %v", seen[:min(len(seen), 12)])
			}
			if linkExists(t, "vpn-tun") {
				t.Error("the link survived")
			}
			kernelHolds(t, "after the teardown", nil, nil)
		})
	}
}
