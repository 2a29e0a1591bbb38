package vpndtest

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/testhooks"
)

// Kind is a kind of object that vpnd owns in its network namespace,
// named by the flags it was given.
type Kind string

// The objects vpnd owns. Link, Rule and Route belong to a VPN and go
// with it; LockdownRule and Firewall belong to lockdown and stay while it
// is on, also after vpnd exits.
const (
	Link         Kind = "link"           // the TUN, named by --ifname
	Rule         Kind = "rule"           // a policy rule at --rule-priority
	Route        Kind = "route"          // a route in --table
	LockdownRule Kind = "lockdown rule"  // a policy rule at --rule-priority + 1
	Firewall     Kind = "nftables table" // vpnd's nftables table, inet vpnd
)

// firewallTable is the nftables table (family inet) that vpnd's lockdown
// keeps its firewall in.
const firewallTable = "vpnd"

// Leftover is one object of vpnd's found in its namespace.
type Leftover struct {
	Kind Kind
	// What describes it, e.g. "ipv4 uidrange 4000-4000 fwmark 0/0x20000
	// lookup 98 (priority 10000)".
	What string
}

// String says what l is, kind first: "link vpn-tun (index 3, type tuntap)".
func (l Leftover) String() string { return string(l.Kind) + " " + l.What }

// Leftovers lists the objects vpnd owns in its namespace now: its link,
// its rules at --rule-priority and the next priority, the routes in its
// table, and its nftables table. Under the sim backend there are none
// (in the caller's own namespace, those of another vpnd may show).
func (e *Env) Leftovers(t testing.TB) []Leftover {
	t.Helper()
	l, err := leftoversIn(e.ns, e.names, false)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func init() {
	testhooks.Leftovers = func(ns, ifname string, table, priority int, vpnOnly bool) ([]string, error) {
		ls, err := leftoversIn(ns, names{ifname: ifname, table: table, priority: priority}, vpnOnly)
		s := make([]string, len(ls))
		for i, l := range ls {
			s[i] = l.String()
		}
		return s, err
	}
}

// leftoversIn reads vpnd's objects in namespace ns ("" for the caller's)
// with netlink. vpnOnly leaves lockdown's out.
func leftoversIn(ns string, n names, vpnOnly bool) ([]Leftover, error) {
	h, nsFD, done, err := netlinkIn(ns)
	if err != nil {
		return nil, err
	}
	defer done()
	var out []Leftover

	link, err := h.LinkByName(n.ifname)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return nil, fmt.Errorf("look for link %s: %w", n.ifname, err)
	default:
		out = append(out, Leftover{Link, fmt.Sprintf("%s (index %d, type %s)", n.ifname, link.Attrs().Index, link.Type())})
	}

	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		var rules []netlink.Rule
		err := retryDump(func() (err error) { rules, err = h.RuleList(fam); return err })
		if err != nil {
			return nil, fmt.Errorf("list %s rules: %w", famName(fam), err)
		}
		for _, r := range rules {
			switch {
			case r.Priority == n.priority:
				out = append(out, Leftover{Rule, ruleString(fam, r)})
			case r.Priority == n.priority+1 && !vpnOnly:
				out = append(out, Leftover{LockdownRule, ruleString(fam, r)})
			}
		}
		var routes []netlink.Route
		err = retryDump(func() (err error) {
			routes, err = h.RouteListFiltered(fam, &netlink.Route{Table: n.table}, netlink.RT_FILTER_TABLE)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("list %s routes of table %d: %w", famName(fam), n.table, err)
		}
		for _, r := range routes {
			out = append(out, Leftover{Route, routeString(fam, r, h)})
		}
	}

	if !vpnOnly {
		fw, err := firewallTables(nsFD)
		if err != nil {
			return nil, err
		}
		out = append(out, fw...)
	}
	return out, nil
}

// netlinkIn returns a netlink handle in namespace ns ("" for the caller's),
// with the namespace's descriptor (-1 for the caller's).
func netlinkIn(ns string) (h *netlink.Handle, nsFD int, done func(), err error) {
	if ns == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, -1, nil, fmt.Errorf("netlink: %w", err)
		}
		return h, -1, h.Close, nil
	}
	nsh, err := netns.GetFromPath(nsPath(ns))
	if err != nil {
		return nil, -1, nil, fmt.Errorf("open namespace %s: %w", ns, err)
	}
	h, err = netlink.NewHandleAt(nsh)
	if err != nil {
		nsh.Close()
		return nil, -1, nil, fmt.Errorf("netlink in namespace %s: %w", ns, err)
	}
	return h, int(nsh), func() { h.Close(); nsh.Close() }, nil
}

// firewallTables finds vpnd's nftables table. Where nftables cannot be
// read (an unprivileged caller, a kernel without nf_tables), there is
// nothing of vpnd's to find either.
func firewallTables(nsFD int) ([]Leftover, error) {
	var opts []nftables.ConnOption
	if nsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(nsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT),
		errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOENT):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var out []Leftover
	for _, t := range tables {
		if t.Name == firewallTable {
			out = append(out, Leftover{Firewall, "inet " + t.Name})
		}
	}
	return out, nil
}

// retryDump repeats a netlink dump that the kernel interrupted because the
// table changed meanwhile.
func retryDump(dump func() error) error {
	var err error
	for range 10 {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

func ruleString(fam int, r netlink.Rule) string {
	s := famName(fam)
	if r.UIDRange != nil {
		s += fmt.Sprintf(" uidrange %d-%d", r.UIDRange.Start, r.UIDRange.End)
	}
	if r.Mark != 0 || r.Mask != nil {
		mask := uint32(0xffffffff)
		if r.Mask != nil {
			mask = *r.Mask
		}
		s += fmt.Sprintf(" fwmark %#x/%#x", r.Mark, mask)
	}
	if r.Table > 0 {
		s += fmt.Sprintf(" lookup %d", r.Table)
	}
	return s + fmt.Sprintf(" (priority %d)", r.Priority)
}

func routeString(fam int, r netlink.Route, h *netlink.Handle) string {
	s := famName(fam)
	switch r.Type {
	case unix.RTN_THROW:
		s += " throw"
	case unix.RTN_UNREACHABLE:
		s += " unreachable"
	case unix.RTN_BLACKHOLE:
		s += " blackhole"
	case unix.RTN_PROHIBIT:
		s += " prohibit"
	}
	dst := "default"
	if r.Dst != nil && !isDefault(r.Dst) {
		dst = r.Dst.String()
	}
	s += " " + dst
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	if r.LinkIndex > 0 {
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			s += " dev " + l.Attrs().Name
		} else {
			s += fmt.Sprintf(" dev #%d", r.LinkIndex)
		}
	}
	return s + fmt.Sprintf(" (table %d)", r.Table)
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

func famName(fam int) string {
	if fam == unix.AF_INET6 {
		return "ipv6"
	}
	return "ipv4"
}

// nsPath is where `ip netns` keeps namespace name.
func nsPath(name string) string { return "/run/netns/" + name }
