package test

import (
	"fmt"
	"strings"
	"testing"
)

// The link's settings (docs/routing.md): on a host with strict
// reverse-path filtering, a NORMAL owner's VPN still receives. The kernel
// checks a packet that the app writes into the TUN by looking its source
// up without the uid that selects the VPN's table; it finds the main
// table's route out of the veth and, in strict mode, drops the packet.
// vpnd makes its own link loose (rp_filter=2) through netlink, and leaves
// the host's "all" and "default" settings alone. It also turns IPv6
// address generation off on the link: no fe80:: address, so no router
// solicitation or MLD report of the kernel's own lands in the app's TUN.
func TestStrictRPFilter(t *testing.T) {
	kernelOnly(t, "the kernel's reverse-path filter on real packets written into the TUN, and the link's sysctls")
	t.Parallel()
	w := newWorld(t) // namespace A runs strict rp_filter
	owner := w.dialIn(t, uidNormal)
	wild := map[string]string{"ipv4": "0.0.0.0", "ipv6": "::"}
	port := map[string]string{"ipv4": "7100", "ipv6": "7106"}
	for _, f := range twFamilies {
		owner.newSock("rx-"+f.name, f.udp)
		owner.must(fmt.Sprintf("bind rx-%s %s %s", f.name, wild[f.name], port[f.name]))
	}
	owner.setUpVPN(twVPN)

	// Within a second of bring-up: nothing on the TUN.
	if pkts := owner.must("tunall 1000"); len(pkts) > 0 {
		t.Errorf("the kernel sent packets of its own into the TUN after bring-up:\n%s", strings.Join(pkts, "\n"))
	}
	for _, a := range w.d.addrs(t, defaultIfname) {
		if strings.HasPrefix(a.Local, "fe80:") {
			t.Errorf("%s has the link-local address %s/%d", defaultIfname, a.Local, a.Prefixlen)
		}
	}

	sysctl := func(name string) string {
		out, err := nsExec(w.a, "cat", "/proc/sys/net/ipv4/conf/"+name+"/rp_filter")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	for name, want := range map[string]string{defaultIfname: "2", "all": "1", "default": "1"} {
		if got := sysctl(name); got != want {
			t.Errorf("net.ipv4.conf.%s.rp_filter = %s, want %s", name, got, want)
		}
	}

	// A datagram from a remote host, as the app decapsulated it, reaches
	// the owner's socket through the TUN.
	for _, f := range twFamilies {
		t.Run(f.name, func(t *testing.T) {
			tok := w.token("reply through the TUN")
			owner.must(fmt.Sprintf("tunwrite %s %s %s %s %s", f.remote, twSinkPort, f.tunSrc, port[f.name], tok))
			out := owner.must("recvfrom rx-" + f.name + " 5000")
			want := fmt.Sprintf("FROM %s %s %s", f.remote, twSinkPort, tok)
			if len(out) != 1 || out[0] != want {
				t.Errorf("the owner's socket got %q, want %q", out, want)
			}
		})
	}
}
