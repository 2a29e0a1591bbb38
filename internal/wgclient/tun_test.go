package wgclient

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// packetPair is a stand-in for vpnd's TUN: a SOCK_SEQPACKET pair, one
// packet per message, like vpnd's simulation mode hands out. It returns
// the client's end as a non-blocking *os.File and the far end's fd.
func packetPair(t *testing.T, nonblock bool) (*os.File, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], nonblock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	return os.NewFile(uintptr(fds[0]), "tun"), fds[1]
}

// TestTUNReadDrainsQueue: one Read returns every packet already queued,
// up to the batch, and waits only when there is none.
func TestTUNReadDrainsQueue(t *testing.T) {
	f, far := packetPair(t, true)
	tun, err := newVpndTUN(f, "vpn-tun", 1420, false)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	const offset = 16
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, offset+2000)
	}
	sizes := make([]int, len(bufs))
	for i := 1; i <= 6; i++ {
		if _, err := unix.Write(far, bytes.Repeat([]byte{byte(i)}, 100*i)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := tun.Read(bufs, sizes, offset)
	if err != nil || n != 4 {
		t.Fatalf("Read = %d, %v; want the 4 that fit", n, err)
	}
	for i := 0; i < n; i++ {
		if sizes[i] != 100*(i+1) || bufs[i][offset] != byte(i+1) {
			t.Errorf("packet %d: size %d first byte %d", i, sizes[i], bufs[i][offset])
		}
	}
	n, err = tun.Read(bufs, sizes, offset)
	if err != nil || n != 2 || sizes[0] != 500 || sizes[1] != 600 {
		t.Fatalf("second Read = %d, %v, sizes %v; want the other 2", n, err, sizes[:n])
	}
	// Nothing queued: Read waits for the next packet.
	done := make(chan int)
	go func() {
		n, _ := tun.Read(bufs, sizes, offset)
		done <- n
	}()
	if _, err := unix.Write(far, []byte{7}); err != nil {
		t.Fatal(err)
	}
	if n := <-done; n != 1 {
		t.Errorf("Read after waiting = %d", n)
	}

	// Write sends each packet from offset.
	out := [][]byte{append(make([]byte, offset), 1, 2, 3), append(make([]byte, offset), 4)}
	if n, err := tun.Write(out, offset); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	buf := make([]byte, 100)
	for _, want := range [][]byte{{1, 2, 3}, {4}} {
		m, err := unix.Read(far, buf)
		if err != nil || !bytes.Equal(buf[:m], want) {
			t.Errorf("far end read %v, %v; want %v", buf[:m], err, want)
		}
	}
	if mtu, _ := tun.MTU(); mtu != 1420 {
		t.Errorf("MTU %d", mtu)
	}
	if name, _ := tun.Name(); name != "vpn-tun" {
		t.Errorf("Name %q", name)
	}

	// After Close, Read fails and the events channel is closed.
	tun.Close()
	if _, err := tun.Read(bufs, sizes, offset); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close = %v", err)
	}
	if _, ok := <-tun.Events(); ok {
		t.Error("events channel still open")
	}
}

func TestTUNRefusesBlocking(t *testing.T) {
	f, _ := packetPair(t, false)
	defer f.Close()
	if _, err := newVpndTUN(f, "vpn-tun", 1420, false); err == nil {
		t.Fatal("a blocking TUN file was accepted")
	}
}

// With vnetHdr (vpnd --sim with offload), each message carries a 10-byte
// virtio_net_hdr before the packet: Read drops it, leaving the packet at
// offset, and Write puts a zero one before each packet. Offsets too small
// for the header are refused.
func TestTUNVnetHdr(t *testing.T) {
	f, far := packetPair(t, true)
	tun, err := newVpndTUN(f, "vpn-tun", 1420, true)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	const offset = 16
	bufs := [][]byte{make([]byte, offset+2000), make([]byte, offset+2000), make([]byte, offset+2000)}
	sizes := make([]int, len(bufs))
	hdr := bytes.Repeat([]byte{0xee}, virtioNetHdrLen) // whatever the header says
	for _, msg := range [][]byte{
		append(append([]byte{}, hdr...), 0x45, 1, 2),
		{0x45, 9}, // shorter than a header: no packet
		append(append([]byte{}, hdr...), 0x60, 3),
	} {
		if _, err := unix.Write(far, msg); err != nil {
			t.Fatal(err)
		}
	}
	n, err := tun.Read(bufs, sizes, offset)
	if err != nil || n != 2 {
		t.Fatalf("Read = %d, %v; want the 2 packets", n, err)
	}
	if !bytes.Equal(bufs[0][offset:offset+sizes[0]], []byte{0x45, 1, 2}) || !bytes.Equal(bufs[1][offset:offset+sizes[1]], []byte{0x60, 3}) {
		t.Errorf("packets % x and % x", bufs[0][offset:offset+sizes[0]], bufs[1][offset:offset+sizes[1]])
	}

	out := [][]byte{append(bytes.Repeat([]byte{0xaa}, offset), 0x45, 7, 8)}
	if n, err := tun.Write(out, offset); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	buf := make([]byte, 100)
	m, err := unix.Read(far, buf)
	if want := append(make([]byte, virtioNetHdrLen), 0x45, 7, 8); err != nil || !bytes.Equal(buf[:m], want) {
		t.Errorf("far end read % x, %v; want % x", buf[:m], err, want)
	}

	if _, err := tun.Read(bufs, sizes, virtioNetHdrLen-1); err == nil {
		t.Error("Read with no room for the header before offset succeeded")
	}
	if _, err := tun.Write(out, virtioNetHdrLen-1); err == nil {
		t.Error("Write with no room for the header before offset succeeded")
	}
}
