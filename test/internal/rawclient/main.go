// Command rawclient is the integration tests' stand-in for a VPN app. The
// tests run it under other uids (exec.Cmd SysProcAttr.Credential), so that
// vpnd sees real peer credentials, and drive it over stdin:
//
//	send SPEC JSON   send JSON as one line; SPEC is "-" or a comma list of
//	                 descriptors to create and attach (SCM_RIGHTS with the
//	                 line's first byte): udp, udp6, tcp, tcp6, tcpfail
//	                 (a TCP socket whose non-blocking connect was refused and
//	                 whose error is still pending), pipe, unix, udpmark1 (UDP
//	                 with SO_MARK preset to 0x1; needs root), raw (an
//	                 AF_INET SOCK_RAW socket; needs root), unixdgram.
//	recv             read one line; print "MSG <line>" and "FD <info>" for
//	                 each descriptor it declares, or "EOF".
//	mark             print "MARK <hex>": SO_MARK of the first socket of the
//	                 last send.
//	closetun         close every descriptor received so far.
//	close            close the connection to vpnd.
//
// Commands for moving real packets (traffic tests):
//
//	sock NAME KIND   create a socket (udp, udp6, tcp, tcp6) and keep it as
//	                 NAME; "send @NAME JSON" attaches it, e.g. to protect it.
//	sendto NAME IP PORT TEXT
//	                 send TEXT as one UDP datagram from socket NAME.
//	connect NAME IP PORT
//	                 connect socket NAME (TCP: waits up to 5 s).
//	write NAME TEXT  write TEXT and a newline to connected socket NAME.
//	recvfrom NAME MS wait up to MS ms for a datagram on NAME; print
//	                 "FROM IP PORT TEXT" or "TIMEOUT".
//	tunread MS TOKEN read IP packets from the last TUN received until a
//	                 UDP or TCP one whose payload contains TOKEN; print it as
//	                 "PKT FAMILY PROTO SRC SPORT DST DPORT PAYLOAD", or
//	                 "NOPKT" after MS ms. UDP/TCP packets that do not match
//	                 are printed as "OTHER ..." lines; the rest (ICMPv6
//	                 router solicitations, MLD) are skipped silently.
//	bind NAME IP PORT
//	                 bind socket NAME.
//	tunwrite SRC SPORT DST DPORT TEXT
//	                 write one IP packet carrying a UDP datagram into the
//	                 last TUN received, as a VPN app does with what it
//	                 decapsulated.
//	tunall MS        print every packet read from the last TUN for MS ms:
//	                 "PKT ..." (any protocol), or "RAW N HEX" for what does
//	                 not parse.
//	vnethdr N        from now on, each packet on the TUN is led by an N-byte
//	                 virtio_net_hdr (a VPN set up with offload: N = 10; 0,
//	                 the default, for none): tunwrite puts N zero bytes
//	                 before the packet, tunread and tunall take N bytes
//	                 off each packet they read, and tunread prints the
//	                 header of the packet it finds as "VNETHDR HEX" before
//	                 its PKT line.
//
// Every command ends with a "DONE" line; a failed one prints "ERR <text>"
// first. The process exits when stdin closes.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/wire"
)

type client struct {
	conn     *wire.Conn
	out      *bufio.Writer
	keep     []int // our copies of descriptors we sent, kept open
	lastSock int   // first socket of the last send, -1 if none
	received []int
	named    map[string]int // sockets made by "sock"
	vnetHdr  int            // header length before each TUN packet ("vnethdr")
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: rawclient SOCKET")
		os.Exit(2)
	}
	c := &client{out: bufio.NewWriter(os.Stdout), lastSock: -1, named: map[string]int{}}
	conn, err := wire.Dial(os.Args[1])
	if err != nil {
		c.printf("ERR %v", err)
		c.out.Flush()
		os.Exit(1)
	}
	c.conn = conn
	c.printf("READY uid=%d gid=%d", os.Getuid(), os.Getgid())
	c.out.Flush()

	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadString('\n')
		line = strings.TrimRight(line, "\n")
		if line != "" {
			if cerr := c.run(line); cerr != nil {
				c.printf("ERR %v", cerr)
			}
			c.printf("DONE")
			c.out.Flush()
		}
		if err != nil {
			return
		}
	}
}

func (c *client) printf(format string, args ...any) {
	fmt.Fprintf(c.out, format+"\n", args...)
}

func (c *client) run(line string) error {
	cmd, rest, _ := strings.Cut(line, " ")
	switch cmd {
	case "send":
		spec, msg, ok := strings.Cut(rest, " ")
		if !ok {
			return fmt.Errorf("send needs SPEC and JSON")
		}
		return c.send(spec, msg)
	case "recv":
		return c.recv()
	case "mark":
		if c.lastSock < 0 {
			return fmt.Errorf("no socket sent")
		}
		m, err := unix.GetsockoptInt(c.lastSock, unix.SOL_SOCKET, unix.SO_MARK)
		if err != nil {
			return fmt.Errorf("getsockopt SO_MARK: %w", err)
		}
		c.printf("MARK %#x", uint32(m))
		return nil
	case "closetun":
		for _, fd := range c.received {
			unix.Close(fd)
		}
		c.received = nil
		return nil
	case "close":
		return c.conn.Close()
	case "sock", "sendto", "connect", "write", "recvfrom", "tunread", "bind", "tunwrite", "tunall", "vnethdr":
		return c.runTraffic(cmd, strings.Fields(rest), rest)
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func (c *client) send(spec, msg string) error {
	var fds []int
	c.lastSock = -1
	if spec != "-" {
		for _, kind := range strings.Split(spec, ",") {
			fd, isSock, err := c.makeFD(kind)
			if err != nil {
				return fmt.Errorf("make %s: %w", kind, err)
			}
			if isSock && c.lastSock < 0 {
				c.lastSock = fd
			}
			fds = append(fds, fd)
		}
	}
	return c.conn.Send([]byte(msg+"\n"), fds...)
}

// makeFD creates a descriptor of the given kind. It returns the fd to send
// and keeps whatever must stay open (our copy, a pipe's other end).
func (c *client) makeFD(kind string) (fd int, isSock bool, err error) {
	if name, ok := strings.CutPrefix(kind, "@"); ok {
		fd, ok := c.named[name]
		if !ok {
			return -1, false, fmt.Errorf("no socket named %q", name)
		}
		return fd, true, nil
	}
	switch kind {
	case "udp", "udp6", "tcp", "tcp6", "udpmark1":
		domain, typ := unix.AF_INET, unix.SOCK_DGRAM
		if strings.HasSuffix(kind, "6") {
			domain = unix.AF_INET6
		}
		if strings.HasPrefix(kind, "tcp") {
			typ = unix.SOCK_STREAM
		}
		fd, err = unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, false, err
		}
		if kind == "udpmark1" {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, 1); err != nil {
				return -1, false, fmt.Errorf("preset SO_MARK: %w", err)
			}
		}
		c.keep = append(c.keep, fd)
		return fd, true, nil
	case "tcpfail":
		fd, err = failedTCP()
		if err != nil {
			return -1, false, err
		}
		c.keep = append(c.keep, fd)
		return fd, true, nil
	case "raw": // AF_INET SOCK_RAW: a socket, but neither stream nor datagram
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return -1, false, err
		}
		c.keep = append(c.keep, fd)
		return fd, true, nil
	case "unixdgram":
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, false, err
		}
		c.keep = append(c.keep, p[0], p[1])
		return p[0], true, nil
	case "pipe":
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return -1, false, err
		}
		c.keep = append(c.keep, p[0], p[1])
		return p[0], false, nil
	case "unix":
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, false, err
		}
		c.keep = append(c.keep, p[0], p[1])
		return p[0], true, nil
	}
	return -1, false, fmt.Errorf("unknown descriptor kind %q", kind)
}

// failedTCP returns a TCP socket whose connect to a closed port of
// 127.0.0.1 was refused, with the error still pending (SO_ERROR not read):
// a non-blocking connect, then poll until the kernel reports the failure.
func failedTCP() (int, error) {
	// Find a closed port: bind an ephemeral one and close it.
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(l)
		return -1, err
	}
	sa, err := unix.Getsockname(l)
	unix.Close(l)
	if err != nil {
		return -1, err
	}
	port := sa.(*unix.SockaddrInet4).Port

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port})
	if err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, fmt.Errorf("non-blocking connect to closed port %d: want EINPROGRESS, got %v", port, err)
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		n, err := unix.Poll(pfd, 10000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		if n == 0 {
			unix.Close(fd)
			return -1, fmt.Errorf("connect to closed port %d did not fail", port)
		}
		break
	}
	if pfd[0].Revents&unix.POLLERR == 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("connect to closed port %d: no POLLERR (revents %#x)", port, pfd[0].Revents)
	}
	return fd, nil
}

func (c *client) recv() error {
	line, err := c.conn.ReadLine()
	if err == io.EOF {
		c.printf("EOF")
		return nil
	}
	if err != nil {
		return err
	}
	c.printf("MSG %s", line)
	var head struct {
		FDs int `json:"fds"`
	}
	if err := json.Unmarshal(line, &head); err != nil {
		return fmt.Errorf("decode message: %w", err)
	}
	fds, err := c.conn.TakeFDs(head.FDs)
	if err != nil {
		return err
	}
	for _, fd := range fds {
		c.received = append(c.received, fd)
		info, err := wire.Describe(fd)
		if err != nil {
			return err
		}
		c.printf("FD %s", info)
	}
	return nil
}
