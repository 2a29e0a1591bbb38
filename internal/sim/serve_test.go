package sim

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/signaltest"
)

// The model's end of a simulated TUN behaves as a TUN towards the client:
// it reads whatever the client writes, answers through Options.Packet, and
// removes the link only when the client closed its end.

// upTUN creates a simulated TUN with 10.8.0.2/24, up, and the echo host.
func upTUN(t *testing.T, blocking bool) (*Kernel, *os.File, int) {
	t.Helper()
	k := New(Options{Packet: Echo})
	t.Cleanup(func() { k.Close() })
	f, index, err := k.CreateTUN("vpn-tun", manager.TUNOptions{Blocking: blocking})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	mustApply(t, k, upOps(index, 1500, netip.MustParsePrefix("10.8.0.2/24"))...)
	return k, f, index
}

// upOps are the ops that make link index a VPN's link: its MTU, its
// addresses, up.
func upOps(index, mtu int, addrs ...netip.Prefix) []manager.Op {
	ops := []manager.Op{{Kind: manager.SetLink, Link: manager.Link{Index: index, MTU: mtu}}}
	for _, a := range addrs {
		ops = append(ops, manager.Op{Kind: manager.AddAddr, Link: manager.Link{Index: index}, Addr: a})
	}
	return append(ops, manager.Op{Kind: manager.LinkUp, Link: manager.Link{Index: index}})
}

// mustApply applies ops to k and fails the test unless every one of them
// took.
func mustApply(t *testing.T, k interface {
	Apply([]manager.Op) ([]error, error)
}, ops ...manager.Op) {
	t.Helper()
	results, err := k.Apply(ops)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range results {
		if e != nil {
			t.Fatalf("%s: %v", ops[i], e)
		}
	}
}

// recvReply reads one packet from the client's end, waiting up to 5 s.
func recvReply(t *testing.T, f *os.File) []byte {
	t.Helper()
	buf := make([]byte, 65536)
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _, err := unix.Recvfrom(int(f.Fd()), buf, unix.MSG_DONTWAIT)
		if err == nil {
			return buf[:n]
		}
		if !errors.Is(err, unix.EAGAIN) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no reply within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// An empty write is a packet of no bytes, which a TUN drops; only a closed
// end ends the link.
func TestEmptyPacketIsNotTheEnd(t *testing.T) {
	k, f, _ := upTUN(t, true)
	if _, err := unix.Write(int(f.Fd()), nil); err != nil {
		t.Fatalf("empty write: %v", err)
	}
	if _, err := f.Write(ping4(7, "after the empty packet").build()); err != nil {
		t.Fatal(err)
	}
	if r := recvReply(t, f); len(r) < 28 || r[20] != icmpEchoReply {
		t.Fatalf("reply % x", r)
	}
	if s := k.Snapshot(); len(s.Links) != 1 {
		t.Fatalf("links after an empty packet: %+v", s.Links)
	}
	f.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(k.Snapshot().Links) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the link outlived the client's end")
		}
		time.Sleep(time.Millisecond)
	}
}

// A client that writes and never reads: its replies are dropped once its
// queue is full, and its own writes keep going through, as with a TUN.
// If the model waited for the client to read, it would stop reading, and
// the client's blocking writes would hang.
func TestUnreadRepliesDoNotBlock(t *testing.T) {
	_, f, _ := upTUN(t, true)
	const n = 5000
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if _, err := f.Write(ping4(uint16(i), "unread").build()); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%d writes of a client that does not read did not finish within 10 s", n)
	}
	// What did fit in the client's queue is there to read.
	if r := recvReply(t, f); len(r) < 28 || r[20] != icmpEchoReply {
		t.Fatalf("reply % x", r)
	}
}

// A signal that interrupts the check after an empty packet (EINTR: Go's
// runtime sends itself SIGURG to preempt goroutines) is not a closed end.
// Before, the link went away when one did.
func TestEmptyPacketsUnderSignals(t *testing.T) {
	k, f, _ := upTUN(t, true)
	signaltest.Storm(t)
	for range 5000 {
		if _, err := unix.Write(int(f.Fd()), nil); err != nil {
			t.Fatalf("empty write: %v", err)
		}
	}
	if _, err := f.Write(ping4(7, "after the empty packets").build()); err != nil {
		t.Fatal(err)
	}
	if r := recvReply(t, f); len(r) < 28 || r[20] != icmpEchoReply {
		t.Fatalf("reply % x", r)
	}
	if s := k.Snapshot(); len(s.Links) != 1 {
		t.Fatalf("links after empty packets under signals: %+v", s.Links)
	}
}
