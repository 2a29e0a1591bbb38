package test

import (
	"flag"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// BenchmarkWireGuard measures bounded TCP bulk transfers (200 MB each)
// between namespaces A and B (see wg_test.go), along four paths:
//
//	veth                root, plain over the veth (no tunnel)
//	wireguard-go        root, through wireguard-go on a TUN it made itself
//	                    (IFF_VNET_HDR: TSO/GRO offloads, UDP GSO/GRO), as it
//	                    normally runs
//	wireguard-go-plain  the same on a TUN with vpnd's flags (IFF_TUN|IFF_NO_PI,
//	                    no offloads) and wireguard-go's own tun.Device
//	vpnd-wg             uid 4000, through vpnd-wg on vpnd's TUN
//
// and both ways: "up" sends from A to a sink in B, "down" from B to a sink
// in A. B's end is always wireguard-go with offloads. The paths and ways
// run one after the other in each round, so that a busy machine slows them
// alike. The figures are the sender's own (connect to the sink's count of
// received bytes), averaged over the rounds:
//
//	go test -run '^$' -bench BenchmarkWireGuard -benchtime 3x ./test/
//
// -wgbench.paths=vpnd-wg,veth (after the package) runs only the paths
// named, -wgbench.ways=up or down only that way (for profiling).
func BenchmarkWireGuard(b *testing.B) {
	kernelOnly(b, "WireGuard's throughput through vpnd's TUN, against the kernel's own paths")
	requireRoot(b)
	const size = 200_000_000 // bytes per transfer

	w := newWGWorld(b, 2)
	d := startBenchDaemon(b, w.a)
	for i, x := range w.extra {
		argv := []string{"ip", "netns", "exec", w.a, lazyBin(b, "wgpeer"), "device"}
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
	// Sinks in A for the "down" way: root's answers through the main
	// table, uid 4000's through its VPN.
	const rootSink, userSink = "7003", "7004"
	startLineProc(b, "wgpeer sink (root, A)", "ip", "netns", "exec", w.a, lazyBin(b, "wgpeer"), "sink", rootSink).wait(b, "READY")
	startLineCmd(b, "wgpeer sink (uid 4000, A)", w.asUser(lazyBin(b, "wgpeer"), "sink", userSink)).wait(b, "READY")

	blastArgs := func(dst, port string) []string {
		return []string{lazyBin(b, "wgpeer"), "blast", dst + ":" + port, fmt.Sprint(size)}
	}
	inA := func(dst string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", w.a}, blastArgs(dst, wgSinkPort)...)...)
	}
	inB := func(dst, port string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", w.b}, blastArgs(dst, port)...)...)
	}
	paths := []wgBenchPath{
		{"veth", func() *exec.Cmd { return inA(twAddrB4) }, func() *exec.Cmd { return inB(twAddrA4, rootSink) }},
		{"wireguard-go", func() *exec.Cmd { return inA(w.extra[0].addrB) }, func() *exec.Cmd { return inB(w.extra[0].addrA, rootSink) }},
		{"wireguard-go-plain", func() *exec.Cmd { return inA(w.extra[1].addrB) }, func() *exec.Cmd { return inB(w.extra[1].addrA, rootSink) }},
		{"vpnd-wg", func() *exec.Cmd { return w.asUser(blastArgs(wgAddrB, wgSinkPort)...) }, func() *exec.Cmd { return inB(wgAddrA, userSink) }},
	}
	if *wgBenchPaths != "" {
		want := strings.Split(*wgBenchPaths, ",")
		paths = slices.DeleteFunc(paths, func(p wgBenchPath) bool { return !slices.Contains(want, p.name) })
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
	sum := map[string]float64{}
	b.SetBytes(2 * size * int64(len(paths)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var round []string
		for _, p := range paths {
			var up, down float64
			if *wgBenchWays != "down" {
				up = blast(p.up())
				sum[p.name+"-up"] += up
			}
			if *wgBenchWays != "up" {
				down = blast(p.down())
				sum[p.name+"-down"] += down
			}
			round = append(round, fmt.Sprintf("%s %.0f/%.0f", p.name, up, down))
		}
		b.Logf("round %d (Mbit/s up/down): %s", i+1, strings.Join(round, ", "))
	}
	b.StopTimer()
	mean := map[string]float64{}
	for k, v := range sum {
		mean[k] = v / float64(b.N)
		b.ReportMetric(mean[k], k+"-Mbit/s")
	}
	for _, way := range []string{"up", "down"} {
		if wg, ours := mean["wireguard-go-"+way], mean["vpnd-wg-"+way]; wg > 0 && ours > 0 {
			b.ReportMetric(100*ours/wg, "vpnd-wg/wireguard-go-"+way+"-%")
		}
	}
	terminate(b, client, syscall.SIGTERM)
}

// wgBenchPath is one path between A and B: the command that sends from A
// to B's sink, and the one that sends from B to A's.
type wgBenchPath struct {
	name     string
	up, down func() *exec.Cmd
}

var (
	wgBenchPaths = flag.String("wgbench.paths", "", "BenchmarkWireGuard: run only these paths (comma-separated)")
	wgBenchWays  = flag.String("wgbench.ways", "", `BenchmarkWireGuard: "up" or "down" to run only that way`)
)
