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
// between namespaces A and B (see wg_test.go), along five paths:
//
//	veth                root, plain over the veth (no tunnel)
//	wireguard-go        root, through wireguard-go on a TUN it made itself
//	                    (IFF_VNET_HDR: TSO/GRO offloads, UDP GSO/GRO), as it
//	                    normally runs
//	wireguard-go-plain  the same on a TUN without IFF_VNET_HDR (IFF_TUN|
//	                    IFF_NO_PI, no offloads) and wireguard-go's own
//	                    tun.Device
//	vpnd-wg             uid 4000, through vpnd-wg on vpnd's TUN, with
//	                    offload (IFF_VNET_HDR; wireguard-go's offload device)
//	vpnd-wg-no-offload  the same with --no-offload (no IFF_VNET_HDR;
//	                    vpnd-wg's batching device)
//
// Only one VPN runs at a time, so the two vpnd-wg paths take turns: before
// each, the other's vpnd-wg is stopped, this one started and warmed up
// with a transfer of 32 MB each way (untimed). Both namespaces keep no TCP
// metrics (net.ipv4.tcp_no_metrics_save=1): the two vpnd-wg paths share
// their addresses, and one's connections must not set the start of the
// other's.
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
	for _, ns := range []string{w.a, w.b} {
		if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_no_metrics_save=1").CombinedOutput(); err != nil {
			b.Fatalf("tcp_no_metrics_save in %s: %v: %s", ns, err, out)
		}
	}
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
	// The vpnd-wg running now, and whether with offload.
	var client *lineProc
	var clientOffload bool
	// useClient makes the running vpnd-wg one with or without offload,
	// and reports whether it had to start it.
	useClient := func(offload bool) bool {
		b.Helper()
		if client != nil && clientOffload == offload {
			return false
		}
		if client != nil {
			terminate(b, client, syscall.SIGTERM)
		}
		var flags []string
		if !offload {
			flags = append(flags, "--no-offload")
		}
		client, clientOffload = w.up(b, d, flags...), offload
		if l, _ := client.find("vpn-tun is up"); !strings.HasSuffix(l, map[bool]string{false: "offload off", true: "offload on"}[offload]) {
			b.Fatalf("vpnd-wg %v: %q", flags, l)
		}
		if out, ok := w.probe(b, hangGuard); !ok {
			b.Fatalf("vpnd-wg's tunnel %v does not work:\n%s", flags, out)
		}
		return true
	}
	useClient(true)
	// Sinks in A for the "down" way: root's answers through the main
	// table, uid 4000's through its VPN.
	const rootSink, userSink = "7003", wgUserSinkPort
	startLineProc(b, "wgpeer sink (root, A)", "ip", "netns", "exec", w.a, lazyBin(b, "wgpeer"), "sink", rootSink).wait(b, "READY")
	w.startUserSink(b)

	blastArgs := func(dst, port string) []string {
		return []string{lazyBin(b, "wgpeer"), "blast", dst + ":" + port, fmt.Sprint(size)}
	}
	inA := func(dst string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", w.a}, blastArgs(dst, wgSinkPort)...)...)
	}
	inB := func(dst, port string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", w.b}, blastArgs(dst, port)...)...)
	}
	vpndWG := func(offload bool) wgBenchPath {
		name := "vpnd-wg"
		if !offload {
			name += "-no-offload"
		}
		return wgBenchPath{name, func() *exec.Cmd { return w.asUser(blastArgs(wgAddrB, wgSinkPort)...) }, func() *exec.Cmd { return inB(wgAddrA, userSink) },
			func() {
				if useClient(offload) {
					w.bulk(b, 32<<20) // a fresh process, fresh pools: warm it up
				}
			}}
	}
	paths := []wgBenchPath{
		{"veth", func() *exec.Cmd { return inA(twAddrB4) }, func() *exec.Cmd { return inB(twAddrA4, rootSink) }, nil},
		{"wireguard-go", func() *exec.Cmd { return inA(w.extra[0].addrB) }, func() *exec.Cmd { return inB(w.extra[0].addrA, rootSink) }, nil},
		{"wireguard-go-plain", func() *exec.Cmd { return inA(w.extra[1].addrB) }, func() *exec.Cmd { return inB(w.extra[1].addrA, rootSink) }, nil},
		vpndWG(true),
		vpndWG(false),
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
			if p.prepare != nil {
				b.StopTimer()
				p.prepare()
				b.StartTimer()
			}
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
	for _, ours := range []string{"vpnd-wg", "vpnd-wg-no-offload"} {
		for _, way := range []string{"up", "down"} {
			if wg, v := mean["wireguard-go-"+way], mean[ours+"-"+way]; wg > 0 && v > 0 {
				b.ReportMetric(100*v/wg, ours+"/wireguard-go-"+way+"-%")
			}
		}
	}
	if client != nil {
		terminate(b, client, syscall.SIGTERM)
	}
}

// wgBenchPath is one path between A and B: the command that sends from A
// to B's sink, the one that sends from B to A's, and what to do before
// them (nil: nothing).
type wgBenchPath struct {
	name     string
	up, down func() *exec.Cmd
	prepare  func()
}

var (
	wgBenchPaths = flag.String("wgbench.paths", "", "BenchmarkWireGuard: run only these paths (comma-separated)")
	wgBenchWays  = flag.String("wgbench.ways", "", `BenchmarkWireGuard: "up" or "down" to run only that way`)
)
