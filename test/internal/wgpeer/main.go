// Command wgpeer is the WireGuard side of the tests that vpnd does not
// manage: a plain wireguard-go device on a TUN it creates as root, and the
// small programs that send traffic through a tunnel. It runs inside a test
// namespace (`ip netns exec NS wgpeer ...`), never in the host's.
//
//	wgpeer device [--no-offload] IFNAME FILE.conf
//	        create TUN IFNAME (as wireguard-go does: IFF_VNET_HDR, with
//	        offloads; --no-offload: a plain IFF_TUN|IFF_NO_PI TUN as vpnd
//	        makes) and run WireGuard on it with the wg-quick file's keys,
//	        port and peers. The test adds the addresses and sets the link
//	        up with ip. Prints "READY"; runs until stdin closes.
//	wgpeer echo PORT
//	        echo TCP lines and UDP datagrams on PORT of every address.
//	        Prints "READY"; runs until stdin closes.
//	wgpeer probe [--timeout D] ADDR PORT TOKEN
//	        one TCP round trip and one UDP round trip of TOKEN to an echo
//	        server; prints "TCP ok ..." / "TCP fail ..." and the same for
//	        UDP; exits 0 only if both came back.
//	wgpeer sink PORT
//	        a TCP sink: reads each connection to its end, then answers
//	        with the byte count (8 bytes, big endian). Prints "READY".
//	wgpeer blast ADDR:PORT BYTES
//	        sends BYTES to a sink and prints "BLAST bytes=N ns=T", T from
//	        connect to the sink's count.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/vpnd/vpnd/internal/wgclient"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: wgpeer device|echo|probe|sink|blast ...")
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "device":
		err = runDevice(args)
	case "echo":
		err = runEcho(args)
	case "probe":
		err = runProbe(args)
	case "sink":
		err = runSink(args)
	case "blast":
		err = runBlast(args)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgpeer:", err)
		os.Exit(1)
	}
}

// untilStdinCloses blocks until stdin ends or SIGTERM/SIGINT.
func untilStdinCloses() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	<-ctx.Done()
}

func runDevice(args []string) error {
	fs := flag.NewFlagSet("device", flag.ContinueOnError)
	noOffload := fs.Bool("no-offload", false, "a plain IFF_TUN|IFF_NO_PI TUN, as vpnd makes it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("usage: wgpeer device [--no-offload] IFNAME FILE.conf")
	}
	ifname := fs.Arg(0)
	cfg, err := wgclient.ParseFile(fs.Arg(1))
	if err != nil {
		return err
	}
	mtu := cfg.Interface.MTU
	if mtu == 0 {
		mtu = wgclient.DefaultMTU
	}
	var dev tun.Device
	if *noOffload {
		dev, err = plainTUN(ifname, mtu)
	} else {
		dev, err = tun.CreateTUN(ifname, mtu)
	}
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", ifname, err)
	}
	endpoints, err := cfg.ResolveEndpoints(context.Background(), nil)
	if err != nil {
		return err
	}
	logger := device.NewLogger(device.LogLevelError, "wgpeer "+ifname+": ")
	d := device.NewDevice(dev, conn.NewDefaultBind(), logger)
	defer d.Close()
	if err := d.IpcSet(cfg.UAPI(endpoints)); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if err := d.Up(); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	fmt.Println("READY")
	untilStdinCloses()
	return nil
}

// plainTUN opens a TUN with vpnd's flags (no IFF_VNET_HDR, so no offloads)
// and hands it to wireguard-go as it is.
func plainTUN(name string, mtu int) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
}

func runEcho(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: wgpeer echo PORT")
	}
	uc, err := net.ListenPacket("udp", "[::]:"+args[0])
	if err != nil {
		return err
	}
	tl, err := net.Listen("tcp", "[::]:"+args[0])
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			uc.WriteTo(buf[:n], from)
		}
	}()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	fmt.Println("READY")
	untilStdinCloses()
	return nil
}

func runProbe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 10*time.Second, "how long each round trip may take in all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 3 {
		return errors.New("usage: wgpeer probe [--timeout D] ADDR PORT TOKEN")
	}
	hostPort := net.JoinHostPort(fs.Arg(0), fs.Arg(1))
	token := fs.Arg(2)
	tcpErr := probeTCP(hostPort, token, *timeout)
	udpErr := probeUDP(hostPort, token, *timeout)
	report := func(proto string, err error) {
		if err != nil {
			fmt.Printf("%s fail %s: %v\n", proto, token, err)
		} else {
			fmt.Printf("%s ok %s\n", proto, token)
		}
	}
	report("TCP", tcpErr)
	report("UDP", udpErr)
	if tcpErr != nil || udpErr != nil {
		os.Exit(1)
	}
	return nil
}

func probeTCP(hostPort, token string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c, err := net.DialTimeout("tcp", hostPort, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := fmt.Fprintln(c, token); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got := strings.TrimSuffix(line, "\n"); got != token {
		return fmt.Errorf("echo %q, want %q", got, token)
	}
	return nil
}

// probeUDP sends the token every 200 ms until it comes back: the first
// datagrams may wait for, or be lost to, a handshake.
func probeUDP(hostPort, token string, timeout time.Duration) error {
	c, err := net.Dial("udp", hostPort)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		if _, err := c.Write([]byte(token)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == token {
			return nil
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// ICMP errors (ECONNREFUSED, ENETUNREACH): keep trying
			// until the deadline, then report the last one.
			time.Sleep(200 * time.Millisecond)
			if time.Now().After(deadline) {
				return err
			}
		}
	}
	return fmt.Errorf("no echo within %v", timeout)
}

func runSink(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: wgpeer sink PORT")
	}
	l, err := net.Listen("tcp", "[::]:"+args[0])
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				var b [8]byte
				binary.BigEndian.PutUint64(b[:], uint64(n))
				c.Write(b[:])
			}()
		}
	}()
	fmt.Println("READY")
	untilStdinCloses()
	return nil
}

func runBlast(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: wgpeer blast ADDR:PORT BYTES")
	}
	total, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || total <= 0 {
		return fmt.Errorf("BYTES %q: want a positive number", args[1])
	}
	start := time.Now()
	c, err := net.DialTimeout("tcp", args[0], 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	// A bounded transfer: BYTES and no more, and a hang guard.
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	buf := make([]byte, 256<<10)
	for left := total; left > 0; {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		w, err := c.Write(buf[:n])
		if err != nil {
			return err
		}
		left -= int64(w)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("read the sink's count: %w", err)
	}
	elapsed := time.Since(start)
	if got := int64(binary.BigEndian.Uint64(b[:])); got != total {
		return fmt.Errorf("the sink got %d bytes, sent %d", got, total)
	}
	fmt.Printf("BLAST bytes=%d ns=%d\n", total, elapsed.Nanoseconds())
	return nil
}
