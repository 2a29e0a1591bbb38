package test

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// BenchmarkWireGuard measures one bounded TCP bulk transfer per path and
// round, from namespace A to the sink in namespace B (see wg_test.go):
//
//	veth              root, plain over the veth (no tunnel)
//	wireguard-go      root, through wireguard-go on a TUN it made itself
//	                  (IFF_VNET_HDR: TSO/GRO offloads, UDP GSO/GRO), as it
//	                  normally runs
//	wireguard-go-plain
//	                  the same on a TUN with vpnd's flags (IFF_TUN|IFF_NO_PI,
//	                  no offloads) and wireguard-go's own tun.Device
//	vpnd-wg           uid 4000, through vpnd-wg on vpnd's TUN
//
// The paths run one after the other in each round, so that a busy machine
// slows them alike. The figures are the sender's own (connect to the
// sink's count of received bytes), averaged over the rounds:
//
//	go test -run '^$' -bench BenchmarkWireGuard -benchtime 3x ./test/
func BenchmarkWireGuard(b *testing.B) {
	requireRoot(b)
	const size = 200_000_000 // bytes per transfer

	w := newWGWorld(b, 2)
	d := startBenchDaemon(b, w.a)
	for i, x := range w.extra {
		argv := []string{"ip", "netns", "exec", w.a, wgBin(b, "wgpeer"), "device"}
		if i == 1 {
			argv = append(argv, "--no-offload")
		}
		ifname := fmt.Sprintf("wg-a%d", i)
		startLineProc(b, "wgpeer device "+ifname, append(argv, ifname, x.conf)...).wait(b, "READY")
		nsIP(b, w.a, "addr", "add", x.addrA+"/24", "dev", ifname)
		nsIP(b, w.a, "link", "set", ifname, "up")
	}
	client := w.up(b, d)
	if out, ok := w.probe(b, hangGuard); !ok {
		b.Fatalf("vpnd-wg's tunnel does not work:\n%s", out)
	}

	blast := func(cmd *exec.Cmd) float64 {
		b.Helper()
		out, err := cmd.CombinedOutput()
		var bytes, ns int64
		if _, serr := fmt.Sscanf(strings.TrimSpace(string(out)), "BLAST bytes=%d ns=%d", &bytes, &ns); err != nil || serr != nil {
			b.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		return float64(bytes) * 8 / (float64(ns) / 1e9) / 1e6
	}
	asRoot := func(dst string) *exec.Cmd {
		return exec.Command("ip", "netns", "exec", w.a, wgBin(b, "wgpeer"), "blast", dst+":"+wgSinkPort, fmt.Sprint(size))
	}
	paths := []struct {
		name string
		cmd  func() *exec.Cmd
	}{
		{"veth", func() *exec.Cmd { return asRoot(twAddrB4) }},
		{"wireguard-go", func() *exec.Cmd { return asRoot(w.extra[0].addrB) }},
		{"wireguard-go-plain", func() *exec.Cmd { return asRoot(w.extra[1].addrB) }},
		{"vpnd-wg", func() *exec.Cmd {
			return w.asUser(wgBin(b, "wgpeer"), "blast", wgAddrB+":"+wgSinkPort, fmt.Sprint(size))
		}},
	}
	sum := make([]float64, len(paths))
	b.SetBytes(size * int64(len(paths)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var round []string
		for j, p := range paths {
			mbps := blast(p.cmd())
			sum[j] += mbps
			round = append(round, fmt.Sprintf("%s %.0f", p.name, mbps))
		}
		b.Logf("round %d (Mbit/s): %s", i+1, strings.Join(round, ", "))
	}
	b.StopTimer()
	for j, p := range paths {
		b.ReportMetric(sum[j]/float64(b.N), p.name+"-Mbit/s")
	}
	b.ReportMetric(100*sum[3]/sum[1], "vpnd-wg/wireguard-go-%")
	terminate(b, client, syscall.SIGTERM)
}
