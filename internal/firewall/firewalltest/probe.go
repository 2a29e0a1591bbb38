// Package firewalltest holds the tools of vpnd's firewall tests, shared by
// the firewall package's own tests and the integration tests in test/: the
// datagrams that policy routing cannot stop (Leaks), a sender that runs
// them as another uid (SendMain, behind test/internal/leaksend), and a
// capture of the frames that reach a peer's link (Capture).
package firewalltest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Probe is one UDP datagram, sent from a fresh socket set up as the fields
// say.
type Probe struct {
	Name string // what it shows, for messages
	// To is the destination. An IPv6 zone (ff02::1%eth0) is the scope id.
	To netip.AddrPort
	// From binds the socket to this source address first (zero: no bind).
	From netip.Addr
	// Device binds the socket to a link (SO_BINDTODEVICE). Since Linux 5.7
	// an unprivileged socket may do this once.
	Device string
	// MulticastIf chooses the link for multicast (IP_MULTICAST_IF,
	// IPV6_MULTICAST_IF).
	MulticastIf string
	// Broadcast sets SO_BROADCAST, without which broadcasts fail (EACCES).
	Broadcast bool
	// Mark sets SO_MARK, as vpnd's protect does (needs CAP_NET_ADMIN).
	Mark uint32
}

// Leaks returns the datagrams that left by the uplink while lockdown was
// on, because policy routing never saw them: IPv6 multicast (routed by the
// local table), the subnet broadcast with SO_BROADCAST (local table),
// multicast from a socket bound to the uplink's address and limited
// broadcast with a bound source or device (the kernel skips the rules for
// these). uplink is the link's name, addr4 its IPv4 address, bcast4 its
// subnet's broadcast address; every datagram goes to port.
func Leaks(uplink string, addr4, bcast4 netip.Addr, port uint16) []Probe {
	to := func(s string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(s), port) }
	return []Probe{
		{Name: "IPv6 multicast ff0e::1234", To: to("ff0e::1234")},
		{Name: "IPv6 multicast ff02::1 (all nodes)", To: to("ff02::1%" + uplink)},
		{Name: "IPv6 multicast ff02::fb (mDNS)", To: to("ff02::fb%" + uplink)},
		{Name: "IPv6 multicast ff05::1:3 (DHCP servers)", To: to("ff05::1:3")},
		{Name: "subnet broadcast with SO_BROADCAST", To: netip.AddrPortFrom(bcast4, port), Broadcast: true},
		{Name: "239.1.2.3 from a socket bound to the uplink's address", To: to("239.1.2.3"), From: addr4},
		{Name: "255.255.255.255 with a bound source", To: to("255.255.255.255"), From: addr4, Broadcast: true},
		{Name: "255.255.255.255 with SO_BINDTODEVICE", To: to("255.255.255.255"), Device: uplink, Broadcast: true},
	}
}

// Send sends payload as p says, from a fresh socket, and returns the
// errno of the first call that failed.
func (p Probe) Send(payload string) error {
	fam := unix.AF_INET
	if p.To.Addr().Is6() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if p.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(p.Mark)); err != nil {
			return fmt.Errorf("SO_MARK: %w", err)
		}
	}
	if p.Broadcast {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
			return fmt.Errorf("SO_BROADCAST: %w", err)
		}
	}
	if p.Device != "" {
		if err := unix.BindToDevice(fd, p.Device); err != nil {
			return fmt.Errorf("SO_BINDTODEVICE %s: %w", p.Device, err)
		}
	}
	if p.MulticastIf != "" {
		ifi, err := net.InterfaceByName(p.MulticastIf)
		if err != nil {
			return err
		}
		if fam == unix.AF_INET6 {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index)
		} else {
			err = unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, &unix.IPMreqn{Ifindex: int32(ifi.Index)})
		}
		if err != nil {
			return fmt.Errorf("multicast interface %s: %w", p.MulticastIf, err)
		}
	}
	if p.From.IsValid() {
		sa, err := sockaddr(netip.AddrPortFrom(p.From, 0))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("bind %s: %w", p.From, err)
		}
	}
	sa, err := sockaddr(p.To)
	if err != nil {
		return err
	}
	if err := unix.Sendto(fd, []byte(payload), 0, sa); err != nil {
		return fmt.Errorf("sendto %s: %w", p.To, err)
	}
	return nil
}

func sockaddr(ap netip.AddrPort) (unix.Sockaddr, error) {
	a := ap.Addr()
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(ap.Port())}, nil
	}
	sa := &unix.SockaddrInet6{Addr: a.As16(), Port: int(ap.Port())}
	if z := a.Zone(); z != "" {
		ifi, err := net.InterfaceByName(z)
		if err != nil {
			return nil, err
		}
		sa.ZoneId = uint32(ifi.Index)
	}
	return sa, nil
}

// Arg encodes p and payload as one command-line argument for SendMain:
// space-separated key=value fields.
func (p Probe) Arg(payload string) string {
	f := []string{"to=" + p.To.String(), "payload=" + payload}
	if p.From.IsValid() {
		f = append(f, "from="+p.From.String())
	}
	if p.Device != "" {
		f = append(f, "dev="+p.Device)
	}
	if p.MulticastIf != "" {
		f = append(f, "mcif="+p.MulticastIf)
	}
	if p.Broadcast {
		f = append(f, "broadcast")
	}
	if p.Mark != 0 {
		f = append(f, fmt.Sprintf("mark=%#x", p.Mark))
	}
	return strings.Join(f, " ")
}

// ParseArg decodes what Arg encoded.
func ParseArg(arg string) (p Probe, payload string, err error) {
	for _, f := range strings.Fields(arg) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "to":
			p.To, err = netip.ParseAddrPort(v)
		case "payload":
			payload = v
		case "from":
			p.From, err = netip.ParseAddr(v)
		case "dev":
			p.Device = v
		case "mcif":
			p.MulticastIf = v
		case "broadcast":
			p.Broadcast = true
		case "mark":
			var m uint64
			m, err = strconv.ParseUint(v, 0, 32)
			p.Mark = uint32(m)
		default:
			err = fmt.Errorf("unknown field %q", f)
		}
		if err != nil {
			return p, "", fmt.Errorf("probe %q: %w", arg, err)
		}
	}
	if !p.To.IsValid() || payload == "" {
		return p, "", fmt.Errorf("probe %q: needs to= and payload=", arg)
	}
	return p, payload, nil
}

// SendMain sends one probe per argument (each encoded by Arg) and prints
// one line per probe, in order: "OK", or "ERR ERRNO detail" (ERRNO as
// EPERM, ENETUNREACH). It returns the exit code: 2 for a malformed
// argument, else 0.
func SendMain(args []string, printf func(format string, a ...any)) int {
	for _, a := range args {
		p, payload, err := ParseArg(a)
		if err != nil {
			printf("BAD %v\n", err)
			return 2
		}
		if err := p.Send(payload); err != nil {
			printf("ERR %s %v\n", ErrnoName(err), err)
			continue
		}
		printf("OK\n")
	}
	return 0
}

// ErrnoName is the errno's symbol (EPERM) of err, or "?" if it has none.
func ErrnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
	}
	return "?"
}
