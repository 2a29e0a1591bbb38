package wgclient

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"testing"
	"time"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestBindProtectsBeforeBind: every socket is handed to protect while it
// is still unbound, so before anything can be sent from it.
func TestBindProtectsBeforeBind(t *testing.T) {
	var seen []string
	b := newProtectedBind(func(fd int) error {
		dom, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		typ, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		sa, err := unix.Getsockname(fd)
		port := -1
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			port = a.Port
		case *unix.SockaddrInet6:
			port = a.Port
		}
		seen = append(seen, fmt.Sprintf("domain=%d type=%d port=%d err=%v", dom, typ, port, err))
		return nil
	})
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	want := []string{
		fmt.Sprintf("domain=%d type=%d port=0 err=<nil>", unix.AF_INET, unix.SOCK_DGRAM),
		fmt.Sprintf("domain=%d type=%d port=0 err=<nil>", unix.AF_INET6, unix.SOCK_DGRAM),
	}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("protect saw %q, want %q", seen, want)
	}
	if len(fns) != 2 || port == 0 {
		t.Errorf("Open = %d receive funcs on port %d", len(fns), port)
	}
}

// TestBindProtectRefused: a refusal from vpnd fails Open, with vpnd's
// error, and leaves no socket open.
func TestBindProtectRefused(t *testing.T) {
	refusal := errors.New("201 Permission denied.")
	before := fdCount(t)
	b := newProtectedBind(func(int) error { return refusal })
	if _, _, err := b.Open(0); !errors.Is(err, refusal) {
		t.Fatalf("Open = %v, want the refusal", err)
	}
	if after := fdCount(t); after != before {
		t.Errorf("%d fds open after the refused Open, %d before", after, before)
	}
	// The IPv6 socket is refused after the IPv4 one was opened.
	calls := 0
	b = newProtectedBind(func(int) error {
		calls++
		if calls == 2 {
			return refusal
		}
		return nil
	})
	if _, _, err := b.Open(0); !errors.Is(err, refusal) {
		t.Fatalf("Open = %v, want the refusal", err)
	}
	if after := fdCount(t); after != before {
		t.Errorf("%d fds open after the refused IPv6 socket, %d before", after, before)
	}
}

func TestFillMessages(t *testing.T) {
	sized := func(ns ...int) [][]byte {
		var bufs [][]byte
		for _, n := range ns {
			bufs = append(bufs, make([]byte, n))
		}
		return bufs
	}
	repeat := func(n, size int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = size
		}
		return s
	}
	cases := []struct {
		name  string
		sizes []int
		gso   bool
		want  []int // datagrams per message
	}{
		{"no gso", []int{100, 100, 100}, false, []int{1, 1, 1}},
		{"one run", []int{100, 100, 100}, true, []int{3}},
		{"a shorter tail ends the run", []int{100, 100, 50, 100}, true, []int{3, 1}},
		{"a longer one starts a run", []int{50, 100, 100}, true, []int{1, 2}},
		{"64 segments at most", repeat(130, 100), true, []int{64, 64, 2}},
		{"64 KiB at most", repeat(50, 1500), true, []int{43, 7}},
		{"single", []int{1400}, true, []int{1}},
	}
	ua := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ms := make([]ipv6.Message, conn.IdealBatchSize)
			got := fillMessages(ms, sized(c.sizes...), ua, c.gso)
			var per []int
			for _, m := range got {
				per = append(per, len(m.Buffers))
				if len(m.Buffers) > 1 && segmentSizeOf(m.OOB) != len(m.Buffers[0]) {
					t.Errorf("UDP_SEGMENT %d, want %d", segmentSizeOf(m.OOB), len(m.Buffers[0]))
				}
				if len(m.Buffers) == 1 && len(m.OOB) != 0 {
					t.Errorf("a single datagram carries a control message")
				}
			}
			if !reflect.DeepEqual(per, c.want) {
				t.Errorf("datagrams per message %v, want %v", per, c.want)
			}
		})
	}
}

// segmentSizeOf reads a UDP_SEGMENT control message back.
func segmentSizeOf(oob []byte) int {
	h, data, _, err := unix.ParseOneSocketControlMessage(oob)
	if err != nil || h.Level != unix.SOL_UDP || h.Type != unix.UDP_SEGMENT || len(data) < 2 {
		return -1
	}
	return int(data[0]) | int(data[1])<<8
}

// TestBindTraffic sends batches between two binds on loopback, with and
// without GSO/GRO: every datagram arrives once, whole and in order.
func TestBindTraffic(t *testing.T) {
	for _, noGSO := range []bool{false, true} {
		t.Run(fmt.Sprintf("noGSO=%v", noGSO), func(t *testing.T) {
			tx, rx := newProtectedBind(nil), newProtectedBind(nil)
			tx.noGSO, rx.noGSO = noGSO, noGSO
			if _, _, err := tx.Open(0); err != nil {
				t.Fatal(err)
			}
			defer tx.Close()
			fns, port, err := rx.Open(0)
			if err != nil {
				t.Fatal(err)
			}
			defer rx.Close()
			if !noGSO && !tx.gso4 {
				t.Log("the kernel has no UDP GSO: testing the plain path only")
			}
			ep, err := tx.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			// Two runs of equal sizes with shorter tails, as the TUN
			// side produces them.
			var sent [][]byte
			for i := 0; i < 100; i++ {
				size := 1200
				if i == 69 || i == 99 {
					size = 333
				}
				sent = append(sent, bytes.Repeat([]byte{byte(i)}, size))
			}
			if err := tx.Send(sent, ep); err != nil {
				t.Fatal(err)
			}
			bufs := make([][]byte, conn.IdealBatchSize)
			for i := range bufs {
				bufs[i] = make([]byte, 65535)
			}
			sizes := make([]int, len(bufs))
			eps := make([]conn.Endpoint, len(bufs))
			var got [][]byte
			rx.v4.SetReadDeadline(time.Now().Add(5 * time.Second))
			for len(got) < len(sent) {
				n, err := fns[0](bufs, sizes, eps)
				if err != nil {
					t.Fatalf("after %d datagrams: %v", len(got), err)
				}
				for i := 0; i < n; i++ {
					if sizes[i] == 0 {
						continue
					}
					got = append(got, append([]byte(nil), bufs[i][:sizes[i]]...))
					if want := netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", tx.v4.LocalAddr().(*net.UDPAddr).Port)); eps[i].(*endpoint).AddrPort != want {
						t.Fatalf("from %v, want %v", eps[i].DstToString(), want)
					}
				}
			}
			if !reflect.DeepEqual(got, sent) {
				t.Errorf("received %d datagrams, not the %d sent in order", len(got), len(sent))
			}
		})
	}
}

func TestBindIPv6AndErrors(t *testing.T) {
	b := newProtectedBind(nil)
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Errorf("second Open = %v", err)
	}
	ep, err := b.ParseEndpoint("[::ffff:127.0.0.1]:9")
	if err != nil || !ep.DstIP().Is4() {
		t.Errorf("a mapped endpoint is not unmapped: %v, %v", ep, err)
	}
	if _, err := b.ParseEndpoint("nonsense"); err == nil {
		t.Error("ParseEndpoint accepted nonsense")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Send([][]byte{{1}}, ep); !errors.Is(err, unix.EAFNOSUPPORT) {
		t.Errorf("Send after Close = %v", err)
	}
}
