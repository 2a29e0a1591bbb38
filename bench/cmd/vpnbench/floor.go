package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/firewall"
)

// The baselines of the kernel work. They run in a namespace of their own
// (never vpnd's, never the host's), in a worker process that lives there
// for the whole run, and build exactly what vpnd builds for the same
// config: the TUN, its MTU, loose rp_filter and no IPv6 address
// generation, the address without a prefix route, the link up, the prefix
// route and the VPN's routes in table 98, the other family's unreachable
// default there, the owner's two rules, and vpnd's nftables table (`inet
// vpnd`, which drops the owner's IPv6 packets that would leave outside the
// VPN). The netlink floor writes the table with vpnd's own firewall
// package, in one nftables transaction as vpnd does; the ip baselines load
// the same table with `nft -f`.

// ipNet converts a prefix for vishvananda/netlink.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// setRPFilter sets loose reverse path filtering on the link, as vpnd does
// (an attribute of its RTM_NEWLINK); outside vpnd it is a sysctl.
func setRPFilter() error {
	return os.WriteFile("/proc/sys/net/ipv4/conf/"+ifname+"/rp_filter", []byte("2"), 0)
}

// ownerRules are the owner's rules for both families.
func ownerRules(uid int) []*netlink.Rule {
	var rules []*netlink.Rule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		r := netlink.NewRule()
		r.Family = fam
		r.Priority = priority
		r.Table = table
		r.UIDRange = netlink.NewRuleUIDRange(uint32(uid), uint32(uid))
		mask := uint32(protectMark)
		r.Mark, r.Mask = 0, &mask
		rules = append(rules, r)
	}
	return rules
}

func unreachable6() *netlink.Route {
	return &netlink.Route{Dst: ipNet(netip.MustParsePrefix("::/0")), Type: unix.RTN_UNREACHABLE,
		Table: table, Protocol: unix.RTPROT_STATIC, Family: unix.AF_INET6}
}

// floorSetUp does s's kernel work with vishvananda/netlink, one request at
// a time and one route per request, and the nftables table with fw (vpnd's
// firewall package, one transaction): the in-process netlink floor. It
// returns the TUN's fd, which holds the (non-persistent) link.
func floorSetUp(fw *firewall.Table, s spec, uid int) (*os.File, error) {
	t := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: ifname},
		Mode:       netlink.TUNTAP_MODE_TUN,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL,
		Queues:     1,
		NonPersist: true,
	}
	if err := netlink.LinkAdd(t); err != nil {
		return nil, fmt.Errorf("tuntap: %w", err)
	}
	f := t.Fds[0]
	// vpnd writes its table first, then the link's settings, addresses,
	// routes and rules.
	err := fw.Apply(s.nftSpec(uid))
	if err != nil {
		err = fmt.Errorf("nftables: %w", err)
	} else {
		err = floorConfigure(t, s, uid)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func floorConfigure(t netlink.Link, s spec, uid int) error {
	if err := netlink.LinkSetMTU(t, s.MTU); err != nil {
		return fmt.Errorf("mtu: %w", err)
	}
	if err := setRPFilter(); err != nil {
		return err
	}
	if err := netlink.LinkSetIP6AddrGenMode(t, 1); err != nil { // IN6_ADDR_GEN_MODE_NONE
		return fmt.Errorf("addrgenmode: %w", err)
	}
	if err := netlink.AddrAdd(t, &netlink.Addr{IPNet: ipNet(s.Addr), Flags: unix.IFA_F_NOPREFIXROUTE}); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	if err := netlink.LinkSetUp(t); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	idx := t.Attrs().Index
	for _, p := range append([]netip.Prefix{s.prefixRoute()}, s.Routes...) {
		r := &netlink.Route{LinkIndex: idx, Dst: ipNet(p), Table: table, Scope: netlink.SCOPE_LINK, Protocol: unix.RTPROT_STATIC}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("route %s: %w", p, err)
		}
	}
	if err := netlink.RouteAdd(unreachable6()); err != nil {
		return fmt.Errorf("unreachable default: %w", err)
	}
	for _, r := range ownerRules(uid) {
		if err := netlink.RuleAdd(r); err != nil {
			return fmt.Errorf("rule: %w", err)
		}
	}
	return nil
}

// teardown removes what a baseline built, as vpnd's destroy does it:
// the nftables table (vpnd's firewall package: a look whether it is there,
// then one transaction), the rules, the route that does not go with the
// link, then the link (which takes its address and routes along). One
// request each.
func teardown(fw *firewall.Table, uid int) error {
	var errs []error
	if err := fw.Apply(firewall.Spec{}); err != nil {
		errs = append(errs, fmt.Errorf("nftables: %w", err))
	}
	for _, r := range ownerRules(uid) {
		if err := netlink.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("rule del: %w", err))
		}
	}
	if err := netlink.RouteDel(unreachable6()); err != nil && !errors.Is(err, unix.ESRCH) {
		errs = append(errs, fmt.Errorf("route del: %w", err))
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		errs = append(errs, fmt.Errorf("link: %w", err))
	} else if err := netlink.LinkDel(l); err != nil {
		errs = append(errs, fmt.Errorf("link del: %w", err))
	}
	return errors.Join(errs...)
}

// ipSequence does s's kernel work as a shell script would: one `ip`
// command per step, and the nftables table with `nft -f nftFile` (which
// holds s.nftScript(uid)) right after the link, where vpnd writes it.
func ipSequence(s spec, uid int, nftFile string) error {
	for i, c := range s.ipCommands(uid) {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
		if i == 0 {
			// rp_filter needs the link; ip has no command for it.
			if err := setRPFilter(); err != nil {
				return err
			}
			if err := nftLoad(nftFile); err != nil {
				return err
			}
		}
	}
	return nil
}

// ipBatch does s's kernel work with `ip -batch FILE`, `ip -6 -batch
// FILE6` and `nft -f NFTFILE` (files hold s.ipBatch(uid) and
// s.nftScript(uid)).
func ipBatch(files [3]string) error {
	if out, err := exec.Command("ip", "-batch", files[0]).CombinedOutput(); err != nil {
		return fmt.Errorf("ip -batch: %v: %s", err, out)
	}
	if err := setRPFilter(); err != nil {
		return err
	}
	if out, err := exec.Command("ip", "-6", "-batch", files[1]).CombinedOutput(); err != nil {
		return fmt.Errorf("ip -6 -batch: %v: %s", err, out)
	}
	return nftLoad(files[2])
}

// nftLoad runs `nft -f file`: one nft process, one transaction.
func nftLoad(file string) error {
	if out, err := exec.Command("nft", "-f", file).CombinedOutput(); err != nil {
		return fmt.Errorf("nft -f: %v: %s", err, out)
	}
	return nil
}

// kernelState describes what the namespace holds of a VPN: the link's
// kind, MTU and up state, its rp_filter and IPv6 address generation, its
// addresses, the routes of table 98 and the rules at vpnd's priority, one
// sorted line each; then vpnd's nftables table as `nft list table` prints
// it, and whether it holds exactly what vpnd's firewall package writes for
// want (fw.Holds compares what nft does not print: set flags, every
// expression, no other object). Without the link, one line says so and
// the rest follows. vpnbench compares vpnd's with the baselines' before it
// measures, after a setUp and after its ending, so that a baseline that
// did less (or other) kernel work than vpnd cannot pass as its floor.
func kernelState(fw *firewall.Table, want firewall.Spec) ([]string, error) {
	var out []string
	index := 0
	l, err := netlink.LinkByName(ifname)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		out = append(out, "link "+ifname+": none")
	case err != nil:
		return nil, fmt.Errorf("link %s: %w", ifname, err)
	default:
		a := l.Attrs()
		index = a.Index
		out = append(out, fmt.Sprintf("link %s kind=%s mtu=%d up=%v", a.Name, l.Type(), a.MTU, a.Flags&net.FlagUp != 0))
		for _, f := range []string{"/proc/sys/net/ipv4/conf/" + ifname + "/rp_filter", "/proc/sys/net/ipv6/conf/" + ifname + "/addr_gen_mode"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			out = append(out, fmt.Sprintf("%s=%s", strings.TrimPrefix(f, "/proc/sys/net/"), strings.TrimSpace(string(b))))
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, err
		}
		for _, ad := range addrs {
			out = append(out, fmt.Sprintf("addr %s noprefixroute=%v", ad.IPNet, ad.Flags&unix.IFA_F_NOPREFIXROUTE != 0))
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		dev := "other"
		if index != 0 && r.LinkIndex == index {
			dev = ifname
		}
		out = append(out, fmt.Sprintf("route %v type=%d proto=%d scope=%d dev=%s", r.Dst, r.Type, r.Protocol, r.Scope, dev))
	}
	rules, err := netlink.RuleListFiltered(netlink.FAMILY_ALL, &netlink.Rule{Priority: priority}, netlink.RT_FILTER_PRIORITY)
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		uids, mask := "", uint32(0)
		if r.UIDRange != nil {
			uids = fmt.Sprintf("%d-%d", r.UIDRange.Start, r.UIDRange.End)
		}
		if r.Mask != nil {
			mask = *r.Mask
		}
		out = append(out, fmt.Sprintf("rule family=%d priority=%d uidrange=%s fwmark=%#x/%#x table=%d", r.Family, r.Priority, uids, r.Mark, mask, r.Table))
	}
	slices.Sort(out)
	table, err := nftList()
	if err != nil {
		return nil, err
	}
	out = append(out, table...)
	holds, err := fw.Holds(want)
	if err != nil {
		return nil, err
	}
	out = append(out, fmt.Sprintf("nft table inet %s holds what vpnd writes for the VPN: %v", nftTable, holds))
	return out, nil
}

// nftList is `nft list table inet vpnd`, a line each, in nft's order; one
// line saying so if there is no such table.
func nftList() ([]string, error) {
	cmd := exec.Command("nft", "list", "table", "inet", nftTable)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		if strings.Contains(stderr.String(), "No such file or directory") {
			return []string{"nft: no table inet " + nftTable}, nil
		}
		return nil, fmt.Errorf("nft list table inet %s: %v: %s", nftTable, err, stderr.String())
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, "nft "+l)
		}
	}
	return out, nil
}
