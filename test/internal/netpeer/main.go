// Command netpeer is the peer host of the traffic tests. It runs in
// namespace B (`ip netns exec B netpeer ...`) and never in the host's.
//
//	netpeer sink PORT     listen on UDP and TCP port PORT of every address
//	                      (both families) and print one line per datagram
//	                      or TCP line: "UDP FROM TEXT" or "TCP FROM TEXT".
//	netpeer decap ADDR:PORT
//	                      the far end of test/internal/tunfwd: each UDP
//	                      datagram it receives is an IP packet; an inner
//	                      UDP datagram is answered with an encapsulated
//	                      inner reply ("echo " + payload, addresses and
//	                      ports swapped) sent back to the datagram's
//	                      sender. It prints "DECAP PACKET" for each.
//	netpeer capture IFNAME
//	                      print one line per frame that the link IFNAME
//	                      receives (an AF_PACKET socket: whatever its
//	                      addresses and groups): "FRAME " and the packet
//	                      as the rawclient prints it, or "FRAME ?" and
//	                      the raw packet quoted.
//
// All print "READY" once their sockets are bound, and exit when stdin
// closes.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/vpnd/vpnd/internal/firewall/firewalltest"
	"github.com/vpnd/vpnd/test/internal/packet"
)

var outMu sync.Mutex

func say(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: netpeer sink PORT | netpeer decap ADDR:PORT | netpeer capture IFNAME")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "sink":
		err = sink(os.Args[2])
	case "decap":
		err = decap(os.Args[2])
	case "capture":
		err = capture(os.Args[2])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netpeer:", err)
		os.Exit(1)
	}
	say("READY")
	io.Copy(io.Discard, os.Stdin)
}

// sink starts the listeners and returns; they serve from goroutines.
func sink(port string) error {
	// "[::]" sockets are dual-stack: IPv4 peers show as v4-mapped, which
	// the printout unmaps.
	uc, err := net.ListenPacket("udp", "[::]:"+port)
	if err != nil {
		return err
	}
	tl, err := net.Listen("tcp", "[::]:"+port)
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
			say("UDP %s %s", unmap(from.String()), oneLine(buf[:n]))
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
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					say("TCP %s %s", unmap(c.RemoteAddr().String()), oneLine(sc.Bytes()))
				}
			}()
		}
	}()
	return nil
}

func unmap(s string) string {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return s
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

func oneLine(b []byte) string { return strings.ReplaceAll(string(b), "\n", `\n`) }

func decap(addr string) error {
	uc, err := net.ListenPacket("udp", addr)
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
			p, err := packet.Parse(buf[:n])
			if err != nil {
				say("BAD %v", err)
				continue
			}
			if p.Proto != packet.ProtoUDP {
				continue // e.g. router solicitations the kernel sent on the TUN
			}
			say("DECAP %s", p)
			reply, err := packet.UDP(netip.AddrPortFrom(p.Dst, p.DstPort), netip.AddrPortFrom(p.Src, p.SrcPort),
				append([]byte("echo "), p.Payload...))
			if err != nil {
				say("BAD %v", err)
				continue
			}
			uc.WriteTo(reply, from)
		}
	}()
	return nil
}

func capture(ifname string) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	_, err = firewalltest.NewCapture(ifi.Index, func(frame []byte) {
		if p, err := packet.Parse(frame); err == nil {
			say("FRAME %s", p)
		} else {
			say("FRAME ? %q", frame)
		}
	})
	return err
}
