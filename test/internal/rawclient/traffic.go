package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/packet"
)

// connectTimeout bounds a TCP connect; it is a hang guard.
const connectTimeout = 5 * time.Second

// runTraffic runs the packet-moving commands (see the package comment).
// rest is the raw argument text, for commands whose last argument is free
// text.
func (c *client) runTraffic(cmd string, args []string, rest string) error {
	switch cmd {
	case "sock":
		if len(args) != 2 {
			return errors.New("usage: sock NAME udp|udp6|tcp|tcp6")
		}
		if _, dup := c.named[args[0]]; dup {
			return fmt.Errorf("socket %q exists", args[0])
		}
		fd, _, err := c.makeFD(args[1])
		if err != nil {
			return err
		}
		c.named[args[0]] = fd
		return nil
	case "sendto":
		f := strings.SplitN(rest, " ", 4)
		if len(f) != 4 {
			return errors.New("usage: sendto NAME IP PORT TEXT")
		}
		fd, sa, err := c.target(f[0], f[1], f[2])
		if err != nil {
			return err
		}
		return unix.Sendto(fd, []byte(f[3]), 0, sa)
	case "connect":
		if len(args) != 3 {
			return errors.New("usage: connect NAME IP PORT")
		}
		fd, sa, err := c.target(args[0], args[1], args[2])
		if err != nil {
			return err
		}
		return connect(fd, sa)
	case "write":
		f := strings.SplitN(rest, " ", 2)
		if len(f) != 2 {
			return errors.New("usage: write NAME TEXT")
		}
		fd, ok := c.named[f[0]]
		if !ok {
			return fmt.Errorf("no socket named %q", f[0])
		}
		_, err := unix.Write(fd, []byte(f[1]+"\n"))
		return err
	case "recvfrom":
		if len(args) != 2 {
			return errors.New("usage: recvfrom NAME MS")
		}
		fd, ok := c.named[args[0]]
		if !ok {
			return fmt.Errorf("no socket named %q", args[0])
		}
		ms, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		if !waitReadable(fd, time.Duration(ms)*time.Millisecond) {
			c.printf("TIMEOUT")
			return nil
		}
		buf := make([]byte, 65536)
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return err
		}
		ap := sockaddrPort(from)
		c.printf("FROM %s %d %s", ap.Addr().Unmap(), ap.Port(), buf[:n])
		return nil
	case "bind":
		if len(args) != 3 {
			return errors.New("usage: bind NAME IP PORT")
		}
		fd, sa, err := c.target(args[0], args[1], args[2])
		if err != nil {
			return err
		}
		return unix.Bind(fd, sa)
	case "tunwrite":
		f := strings.SplitN(rest, " ", 5)
		if len(f) != 5 {
			return errors.New("usage: tunwrite SRC SPORT DST DPORT TEXT")
		}
		src, err := parseAddrPort(f[0], f[1])
		if err != nil {
			return err
		}
		dst, err := parseAddrPort(f[2], f[3])
		if err != nil {
			return err
		}
		pkt, err := packet.UDP(src, dst, []byte(f[4]))
		if err != nil {
			return err
		}
		tun, err := c.lastTUN()
		if err != nil {
			return err
		}
		_, err = unix.Write(tun, append(make([]byte, c.vnetHdr), pkt...))
		return err
	case "vnethdr":
		if len(args) != 1 {
			return errors.New("usage: vnethdr N")
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 {
			return fmt.Errorf("vnethdr %q: want a length", args[0])
		}
		c.vnetHdr = n
		return nil
	case "tunall":
		if len(args) != 1 {
			return errors.New("usage: tunall MS")
		}
		ms, err := strconv.Atoi(args[0])
		if err != nil {
			return err
		}
		return c.tunAll(time.Duration(ms) * time.Millisecond)
	case "tunread":
		if len(args) != 2 {
			return errors.New("usage: tunread MS TOKEN")
		}
		ms, err := strconv.Atoi(args[0])
		if err != nil {
			return err
		}
		return c.tunRead(time.Duration(ms)*time.Millisecond, []byte(args[1]))
	}
	return fmt.Errorf("unknown command %q", cmd)
}

// target resolves a named socket and a destination.
func (c *client) target(name, ip, port string) (int, unix.Sockaddr, error) {
	fd, ok := c.named[name]
	if !ok {
		return -1, nil, fmt.Errorf("no socket named %q", name)
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return -1, nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return -1, nil, err
	}
	if addr.Is4() {
		return fd, &unix.SockaddrInet4{Addr: addr.As4(), Port: int(p)}, nil
	}
	return fd, &unix.SockaddrInet6{Addr: addr.As16(), Port: int(p)}, nil
}

func sockaddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// connect connects a blocking socket without blocking for longer than
// connectTimeout.
func connect(fd int, sa unix.Sockaddr) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	defer unix.SetNonblock(fd, false)
	err := unix.Connect(fd, sa)
	if err == nil {
		return nil
	}
	if err != unix.EINPROGRESS {
		return fmt.Errorf("connect: %w", err)
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := pollRetry(pfd, connectTimeout)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("connect: no answer within %v", connectTimeout)
	}
	if soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
		return err
	} else if soErr != 0 {
		return fmt.Errorf("connect: %w", unix.Errno(soErr))
	}
	return nil
}

func pollRetry(pfd []unix.PollFd, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		n, err := unix.Poll(pfd, int(left.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		return n, err
	}
}

func waitReadable(fd int, d time.Duration) bool {
	n, err := pollRetry([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, d)
	return err == nil && n > 0
}

// tunRead reads packets from the last TUN descriptor received. The TUN is
// IFF_NO_PI, so each read is one raw IP packet. It never changes the fd's
// blocking mode: it polls first and reads with the fd as vpnd gave it.
func (c *client) tunRead(d time.Duration, token []byte) error {
	tun, err := c.lastTUN()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 || !waitReadable(tun, left) {
			c.printf("NOPKT")
			return nil
		}
		n, err := unix.Read(tun, buf)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read TUN: %w", err)
		}
		if n < c.vnetHdr {
			return fmt.Errorf("read TUN: %d bytes, shorter than the %d-byte header", n, c.vnetHdr)
		}
		hdr := buf[:c.vnetHdr]
		p, err := packet.Parse(buf[c.vnetHdr:n])
		if err != nil || (p.Proto != packet.ProtoUDP && p.Proto != packet.ProtoTCP) {
			continue // router solicitations, MLD reports and the like
		}
		if bytes.Contains(p.Payload, token) {
			if c.vnetHdr > 0 {
				c.printf("VNETHDR %x", hdr)
			}
			c.printf("PKT %s", p)
			return nil
		}
		c.printf("OTHER %s", p)
	}
}

func isTUN(fd int) bool {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return false
	}
	return unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr) == nil
}

// lastTUN returns the last TUN descriptor received.
func (c *client) lastTUN() (int, error) {
	for i := len(c.received) - 1; i >= 0; i-- {
		if isTUN(c.received[i]) {
			return c.received[i], nil
		}
	}
	return -1, errors.New("no TUN descriptor received")
}

// tunAll prints every packet read from the last TUN for d: "PKT ..." for
// what packet.Parse understands (ICMPv6 shows its protocol number), "RAW
// N BYTES" for the rest.
func (c *client) tunAll(d time.Duration) error {
	tun, err := c.lastTUN()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 || !waitReadable(tun, left) {
			return nil
		}
		n, err := unix.Read(tun, buf)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read TUN: %w", err)
		}
		if n < c.vnetHdr {
			c.printf("RAW %d %x", n, buf[:n])
			continue
		}
		pkt := buf[c.vnetHdr:n]
		if p, err := packet.Parse(pkt); err == nil {
			c.printf("PKT %s", p)
		} else {
			c.printf("RAW %d %x", len(pkt), pkt[:min(len(pkt), 64)])
		}
	}
}

func parseAddrPort(ip, port string) (netip.AddrPort, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}
