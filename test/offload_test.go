package test

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/packet"
)

// offload (docs/protocol.md, "Offload"): the TUN device gets IFF_VNET_HDR
// and nothing else changes; every packet the app reads or writes is led by
// a 10-byte virtio_net_hdr; VpnInfo and status report it.

// vnetHdrLen is the size of struct virtio_net_hdr, the kernel's default.
const vnetHdrLen = 10

// TestOffload: with a real TUN, a datagram the app writes behind a zero
// header reaches the owner's socket, one the owner sends comes out of the
// TUN behind a zero header, and a packet written without the header does
// not get through. The VPN's link, addresses, routes and rules are those
// of the same config without offload.
func TestOffload(t *testing.T) {
	kernelOnly(t, "real datagrams through a TUN with IFF_VNET_HDR")
	t.Parallel()
	w := newWorld(t) // namespace A runs strict rp_filter, as TestStrictRPFilter
	owner := w.dialIn(t, uidNormal)
	wild := map[string]string{"ipv4": "0.0.0.0", "ipv6": "::"}
	port := map[string]string{"ipv4": "7200", "ipv6": "7206"}
	for _, f := range twFamilies {
		owner.newSock("rx-"+f.name, f.udp)
		owner.must(fmt.Sprintf("bind rx-%s %s %s", f.name, wild[f.name], port[f.name]))
	}

	// Without offload first: the kernel's state to compare with.
	plain := setUpOK(t, owner.call("setUp", "{"+twVPN+"}", ""))
	if plain.Offload {
		t.Errorf("VpnInfo offload true without offload")
	}
	if st := w.d.vpnStatus(t); st.VPN == nil || st.VPN.Offload {
		t.Errorf("status %+v, want a VPN without offload", st.VPN)
	}
	want := w.d.kernelView(t)
	ok(t, owner.call("destroy", "{}", ""))
	owner.must("closetun")
	w.d.waitClean(t, "destroy")

	m := owner.call("setUp", "{"+twVPN+`,"offload":true}`, "")
	info := setUpOK(t, m)
	if !info.Offload {
		t.Errorf("VpnInfo offload false, want true")
	}
	if st := w.d.vpnStatus(t); st.VPN == nil || !st.VPN.Offload {
		t.Errorf("status %+v, want a VPN with offload", st.VPN)
	}
	fi := m.fdInfo[0]
	if wantFlags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR); !fi.TUN || fi.IfName != defaultIfname || fi.Flags&tunKindFlags != wantFlags {
		t.Errorf("the setUp fd is %s, want a TUN %s with TUNGETIFF flags IFF_TUN|IFF_NO_PI|IFF_VNET_HDR (%#x) and nothing else of %#x",
			fi, defaultIfname, wantFlags, tunKindFlags)
	}
	if !fi.NonBlocking {
		t.Errorf("the TUN fd is blocking")
	}
	if l := w.d.link(t, defaultIfname); l == nil || l.Linkinfo == nil || l.Linkinfo.InfoData["vnet_hdr"] != true {
		t.Errorf("ip -d link: %+v, want vnet_hdr true", l)
	}
	if got := w.d.kernelView(t); got != want {
		t.Errorf("with offload the kernel holds\n%s\nwithout\n%s", got, want)
	}

	owner.must(fmt.Sprint("vnethdr ", vnetHdrLen))
	zero := strings.Repeat("00", vnetHdrLen)
	for _, f := range twFamilies {
		t.Run(f.name, func(t *testing.T) {
			// Into the TUN, as the app writes what it decapsulated.
			tok := w.token("written behind a zero header")
			owner.must(fmt.Sprintf("tunwrite %s %s %s %s %s", f.remote, twSinkPort, f.tunSrc, port[f.name], tok))
			out := owner.must("recvfrom rx-" + f.name + " 5000")
			if wantFrom := fmt.Sprintf("FROM %s %s %s", f.remote, twSinkPort, tok); len(out) != 1 || out[0] != wantFrom {
				t.Errorf("the owner's socket got %q, want %q", out, wantFrom)
			}

			// Out of the TUN: a datagram of the owner's, whole and
			// checksummed, so its header is zeros.
			tok = w.token("read behind a header")
			owner.newSock(tok, f.udp)
			owner.udpSend(tok, f.remote, twSinkPort, tok)
			out = owner.must(fmt.Sprintf("tunread %d %s", twArrive.Milliseconds(), tok))
			if len(out) < 2 || out[len(out)-2] != "VNETHDR "+zero || !strings.HasPrefix(out[len(out)-1], "PKT ") ||
				!strings.Contains(out[len(out)-1], fmt.Sprintf(" %s %s %q", f.remote, twSinkPort, tok)) {
				t.Errorf("tunread %q: want a zero header, then the datagram to %s:%s carrying %q", out, f.remote, twSinkPort, tok)
			}
		})
	}

	t.Run("a packet without the header does not get through", func(t *testing.T) {
		f := twFamilies[0]
		owner.must("vnethdr 0")
		tok := w.token("no header")
		// The kernel takes its first 10 bytes for a header: the write is
		// refused (EINVAL) or what is left is no packet for the socket.
		owner.do(fmt.Sprintf("tunwrite %s %s %s %s %s", f.remote, twSinkPort, f.tunSrc, port[f.name], tok))
		owner.must(fmt.Sprint("vnethdr ", vnetHdrLen))
		later := w.token("with the header again")
		owner.must(fmt.Sprintf("tunwrite %s %s %s %s %s", f.remote, twSinkPort, f.tunSrc, port[f.name], later))
		out := owner.must("recvfrom rx-" + f.name + " 5000")
		if wantFrom := fmt.Sprintf("FROM %s %s %s", f.remote, twSinkPort, later); len(out) != 1 || out[0] != wantFrom {
			t.Errorf("the owner's socket got %q first, want %q: the packet without a header got through", out, wantFrom)
		}
	})
}

// TestOffloadSimulated: in simulation mode offload puts the same 10-byte
// header before each packet on the socket pair, both ways: an echo
// request behind a zero header is answered behind a zero header, one
// without a header is not; VpnInfo reports offload.
func TestOffloadSimulated(t *testing.T) {
	t.Parallel()
	d := startSim(t)
	owner := d.rawConn(t)
	fd := setUpKeep(t, owner, 1, `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"offload":true}`)
	defer unix.Close(fd)
	if st := d.vpnStatus(t); st.VPN == nil || !st.VPN.Offload || !st.VPN.Simulated {
		t.Errorf("status %+v, want a simulated VPN with offload", st.VPN)
	}
	hdr := make([]byte, vnetHdrLen)
	for i, tc := range []struct{ src, dst string }{{"10.8.0.1", "10.8.0.2"}, {"fd00:8::1", "fd00:8::2"}} {
		data := []byte(fmt.Sprint("ping behind a header ", i))
		src, dst := netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst)
		req := packet.EchoRequest(src, dst, 0x55, uint16(i), data)
		// Without the header first: the model takes 10 bytes of the IP
		// header for one, and what is left is no echo request.
		if _, err := unix.Write(fd, packet.EchoRequest(src, dst, 0x66, uint16(i), data)); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Write(fd, append(append([]byte{}, hdr...), req...)); err != nil {
			t.Fatal(err)
		}
		reply := readPacket(t, fd, hangGuard)
		if len(reply) < vnetHdrLen || !bytes.Equal(reply[:vnetHdrLen], hdr) {
			t.Fatalf("reply % x, want a zero virtio_net_hdr first", reply)
		}
		e, err := packet.ParseEcho(reply[vnetHdrLen:])
		if err != nil || e.ID != 0x55 || e.Seq != uint16(i) || !bytes.Equal(e.Data, data) || e.Src.String() != tc.dst {
			t.Errorf("first reply %+v (%v), want the echo reply from %s to the request behind a header", e, err, tc.dst)
		}
		if p := readPacket(t, fd, 100*time.Millisecond); p != nil {
			t.Errorf("one more packet back: % x", p)
		}
	}
}

// TestAllowOffload: vpnd --allow-offload admin refuses offload to a NORMAL
// user with 201 (before 2203002, and leaving nothing behind), while the
// same user still gets a VPN without it and an admin gets one with it;
// --allow-offload none refuses it to the admin too.
func TestAllowOffload(t *testing.T) {
	t.Parallel()
	const plain, offload = `{"addresses":["10.8.0.2/24"]}`, `{"addresses":["10.8.0.2/24"],"offload":true}`
	d := startDaemon(t, withFlags("--allow-offload", "admin"))
	user := d.dial(t, uidNormal)
	wantError(t, user.call("setUp", offload, ""), 201,
		fmt.Sprintf("offload: this vpnd allows it to admin accounts only (--allow-offload admin); caller uid %d is normal", uidNormal))
	if p := d.leftovers(t); len(p) > 0 {
		t.Fatalf("a refused setUp left %v", p)
	}
	if info := setUpOK(t, user.call("setUp", plain, "")); info.Offload {
		t.Errorf("VpnInfo offload true without offload")
	}
	wantError(t, user.call("setUp", offload, ""), 201, "offload: this vpnd allows it to admin accounts only")
	ok(t, user.call("destroy", "{}", ""))
	user.closeTUN()
	d.waitClean(t, "destroy")

	admin := d.dial(t, uidRoot)
	m := admin.call("setUp", offload, "")
	if info := setUpOK(t, m); !info.Offload {
		t.Errorf("an admin's VpnInfo offload false, want true")
	}
	if fi := m.fdInfo[0]; !simBackend && fi.Flags&unix.IFF_VNET_HDR == 0 {
		t.Errorf("the admin's TUN %s has no IFF_VNET_HDR", fi)
	}
	ok(t, admin.call("destroy", "{}", ""))
	admin.closeTUN()
	d.waitClean(t, "destroy")
	d.stop(t)

	d = startDaemon(t, withFlags("--allow-offload", "none"))
	wantError(t, d.dial(t, uidRoot).call("setUp", offload, ""), 201, "offload: this vpnd allows it to nobody (--allow-offload none)")
	if p := d.leftovers(t); len(p) > 0 {
		t.Fatalf("a refused setUp left %v", p)
	}
}
