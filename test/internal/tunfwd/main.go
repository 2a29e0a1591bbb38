// Command tunfwd is the smallest possible VPN implementation: it sits on
// vpnd's TUN and carries each IP packet, whole, as the payload of one UDP
// datagram to a peer (test/internal/netpeer decap), and writes what the
// peer sends back into the TUN. It is meant to run under
//
//	vpnctl --socket S up ... -- tunfwd S PEER:PORT
//
// which hands it the TUN as fd 3 (VPN_TUN_FD=3). Like any VPN app it
// protects its tunnel socket first, through vpnd, so that the
// encapsulated traffic does not loop back into the VPN. It prints "READY"
// once the socket is protected and runs until it is signalled or the TUN
// goes away.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/vpnd/vpnd/client"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: tunfwd VPND-SOCKET PEER:PORT")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "tunfwd:", err)
		os.Exit(1)
	}
}

func run(sock, peer string) error {
	fdNum, err := strconv.Atoi(os.Getenv("VPN_TUN_FD"))
	if err != nil {
		return fmt.Errorf("VPN_TUN_FD: %w", err)
	}
	// vpnd hands the TUN out non-blocking, so os.NewFile makes it
	// pollable and the reads below do not pin a thread each.
	tun := os.NewFile(uintptr(fdNum), "tun")
	defer tun.Close()

	raddr, err := net.ResolveUDPAddr("udp", peer)
	if err != nil {
		return err
	}
	// Unconnected on purpose: a connect now, with the VPN's routes in
	// place, would pick the route and the source address through the
	// TUN. Protect first, then every send looks its route up with the mark.
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return err
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vc, err := client.Dial(ctx, sock)
	if err != nil {
		return fmt.Errorf("dial vpnd: %w", err)
	}
	if err := vc.Protect(ctx, conn); err != nil {
		return fmt.Errorf("protect tunnel socket: %w", err)
	}
	vc.Close()
	fmt.Println("READY")

	errc := make(chan error, 2)
	go func() { // TUN -> peer
		buf := make([]byte, 65536)
		for {
			n, err := tun.Read(buf)
			if err != nil {
				errc <- fmt.Errorf("read TUN: %w", err)
				return
			}
			if _, err := conn.WriteToUDP(buf[:n], raddr); err != nil {
				errc <- fmt.Errorf("send to peer: %w", err)
				return
			}
		}
	}()
	go func() { // peer -> TUN
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				errc <- fmt.Errorf("receive from peer: %w", err)
				return
			}
			if from.Port != raddr.Port || !from.IP.Equal(raddr.IP) {
				continue // only the peer may inject packets
			}
			if _, err := tun.Write(buf[:n]); err != nil {
				errc <- fmt.Errorf("write TUN: %w", err)
				return
			}
		}
	}()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sigc:
		return nil
	case err := <-errc:
		return err
	}
}
