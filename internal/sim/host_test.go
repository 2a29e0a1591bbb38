package sim

import (
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
	"github.com/vpnd/vpnd/internal/tun"
)

// TestHostUnprivileged runs `vpnd --sim`'s kernel as a user without any
// privilege, in a fresh network namespace whose only other link has an
// address and an on-link route: HostPrefixes reports both from the real
// kernel (through tun's read-only HostReader, as `vpnd --sim` builds its
// Host), a simulated TUN answers pings, MarkSocket sets no mark, and the
// namespace is left as it was.
func TestHostUnprivileged(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.LoUp(t)
	for _, args := range [][]string{
		{"link", "add", "lan0", "type", "veth", "peer", "name", "lan1"},
		// No link-local addresses: nothing that changes on its own (DAD).
		{"link", "set", "lan0", "addrgenmode", "none"},
		{"link", "set", "lan1", "addrgenmode", "none"},
		{"link", "set", "lan1", "up"},
		{"addr", "add", "192.0.2.1/24", "dev", "lan0"},
		{"addr", "add", "2001:db8:1::1/64", "dev", "lan0", "nodad"},
		{"link", "set", "lan0", "up"},
		{"route", "add", "10.77.0.0/16", "dev", "lan0"},
	} {
		netnstest.IP(t, args...)
	}
	// The kernel reports a veth's carrier a moment later (linkwatch):
	// compare from when nothing changes any more.
	before := namespaceState(t)
	for deadline := time.Now().Add(10 * time.Second); strings.Contains(before, "NO-CARRIER") || before != namespaceState(t); {
		if time.Now().After(deadline) {
			t.Fatalf("the namespace does not settle:\n%s", before)
		}
		time.Sleep(50 * time.Millisecond)
		before = namespaceState(t)
	}

	// From here on, a user with no privilege: the whole process (Go
	// changes the ids of every thread).
	const uid = 4321
	if err := syscall.Setresgid(uid, uid, uid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "\nCapEff:\t0000000000000000\n") {
		t.Fatalf("still privileged:\n%s", status)
	}

	r, err := tun.NewHostReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h := NewHost(r.HostPrefixes)
	defer h.Close()
	got, err := h.HostPrefixes("vpn-tun")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []manager.HostPrefix{
		{Prefix: netip.MustParsePrefix("192.0.2.1/24"), Ifname: "lan0"},
		{Prefix: netip.MustParsePrefix("2001:db8:1::1/64"), Ifname: "lan0"},
		{Prefix: netip.MustParsePrefix("10.77.0.0/16"), Ifname: "lan0"},
		{Prefix: netip.MustParsePrefix("127.0.0.1/8"), Ifname: "lo"},
	} {
		found := false
		for _, p := range got {
			found = found || p == want
		}
		if !found {
			t.Errorf("HostPrefixes %v lacks %v", got, want)
		}
	}

	f, index, err := h.CreateTUN("vpn-tun", manager.TUNOptions{Blocking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mustApply(t, h, upOps(index, 1500, netip.PrefixFrom(own4, 24), netip.PrefixFrom(own6, 64))...)
	for _, req := range [][]byte{ping4(1, "ping").build(), ping6(2, "ping").build()} {
		if _, err := f.Write(req); err != nil {
			t.Fatal(err)
		}
		checkReply(t, req, recvReply(t, f))
	}

	// protect: no mark, in the kernel or in the model.
	udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(udp)
	if err := h.MarkSocket(udp, 0x20000); err != nil {
		t.Errorf("MarkSocket: %v", err)
	}
	if m, err := unix.GetsockoptInt(udp, unix.SOL_SOCKET, unix.SO_MARK); err != nil || m != 0 {
		t.Errorf("SO_MARK %#x (%v), want 0", m, err)
	}
	if m, ok := h.Mark(udp); ok {
		t.Errorf("the model recorded mark %#x", m)
	}

	if after := namespaceState(t); after != before {
		t.Errorf("the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// namespaceState is everything `ip` shows of the namespace's links,
// addresses, rules and routes.
func namespaceState(t *testing.T) string {
	var b strings.Builder
	for _, args := range [][]string{
		{"-d", "link", "show"}, {"addr", "show"}, {"-4", "rule", "show"}, {"-6", "rule", "show"},
		{"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"},
	} {
		b.WriteString(netnstest.IP(t, args...))
	}
	return b.String()
}
