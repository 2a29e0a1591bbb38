package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// metricsAddr is where the metrics tests' vpnds serve, each in its own
// network namespace (so on its own loopback).
const metricsAddr = "127.0.0.1:9477"

// scrape fetches http://metricsAddr/metrics from inside d's namespace (the
// socket is made there on a locked thread) and returns each sample by its
// series, e.g. `vpnd_requests_total{code="0",method="setUp"}`.
func scrape(t testing.TB, d *daemon) map[string]float64 {
	t.Helper()
	fd, err := socketInNetns("/run/netns/"+d.ns, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 9477}); err != nil {
		unix.Close(fd)
		t.Fatalf("connect to the metrics in %s: %v", d.ns, err)
	}
	f := os.NewFile(uintptr(fd), "metrics")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", metricsAddr)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("scrape: %s, Content-Type %q:\n%s", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	samples := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// wantSamples checks the given samples (absent counts as 0) and describes
// the differences.
func wantSamples(got map[string]float64, want map[string]float64) string {
	var diffs []string
	for k, w := range want {
		if g := got[k]; g != w {
			diffs = append(diffs, fmt.Sprintf("%s = %v, want %v", k, g, w))
		}
	}
	return strings.Join(diffs, "; ")
}

// eventuallySamples polls the metrics until they show want.
func eventuallySamples(t testing.TB, d *daemon, what string, want map[string]float64) map[string]float64 {
	t.Helper()
	var got map[string]float64
	eventually(t, what, func() (bool, string) {
		got = scrape(t, d)
		diff := wantSamples(got, want)
		return diff == "", diff
	})
	return got
}

// --metrics-listen: the values move as the calls happen, failures count
// by code, unknown methods as "other", teardowns by reason, self-healing
// repairs; the VPN's routes and rules agree with the kernel. Under sim the
// kernel parts (the counts as the kernel holds them, a rule deleted behind
// vpnd's back) are left out.
func TestMetrics(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, withFlags("--metrics-listen", metricsAddr))
	if !d.logContains(`"metrics served"`, `"url":"http://`+metricsAddr+`/metrics"`) {
		t.Errorf("vpnd does not say where the metrics are")
	}
	got := eventuallySamples(t, d, "initial metrics", map[string]float64{"vpnd_vpn_up": 0, "vpnd_connections": 0})
	// The harness's readiness probe asked for status already.
	statusOK := got[`vpnd_requests_total{code="0",method="status"}`]
	for _, name := range []string{"go_goroutines", "process_open_fds", "vpnd_setup_duration_seconds_count"} {
		if _, ok := got[name]; !ok {
			t.Errorf("no %s in the metrics", name)
		}
	}

	const up = `{"addresses":["10.8.0.2/24","fd00:8::2/64"],"routes":["198.51.100.0/24",` +
		`{"destination":{"address":{"address":"198.51.100.2"},"prefixLength":32},"isExcludedRoute":true}]}`
	c := d.dial(t, uidNormal)
	eventuallySamples(t, d, "a client connected", map[string]float64{"vpnd_connections": 1})
	setUpOK(t, c.call("setUp", up, ""))
	wantError(t, c.call("setUp", up, ""), 2203002)
	wantError(t, c.call("protect", "{}", ""), 2203004)
	wantError(t, c.call("bogusMethod", "{}", ""), -32601)
	wantError(t, c.call("status", `{"x":1}`, ""), 19900001)
	ok(t, c.call("status", "{}", ""))
	raw := d.rawConn(t)
	writeLine(t, raw, `{not json`)
	if m := mustRead(t, raw); m.Error == nil || m.Error.Code != -32700 {
		t.Errorf("a line that is not JSON: %+v, want -32700", m)
	}
	raw.Close()

	want := map[string]float64{
		`vpnd_requests_total{code="0",method="setUp"}`:         1,
		`vpnd_requests_total{code="2203002",method="setUp"}`:   1,
		`vpnd_requests_total{code="2203004",method="protect"}`: 1,
		`vpnd_requests_total{code="-32601",method="other"}`:    1,
		`vpnd_requests_total{code="-32700",method="other"}`:    1,
		`vpnd_requests_total{code="19900001",method="status"}`: 1,
		`vpnd_requests_total{code="0",method="status"}`:        statusOK + 1,
		`vpnd_setup_duration_seconds_count`:                    1,
		`vpnd_vpn_up`:                                          1,
	}
	if !d.sim {
		// The VPN's routes and rules are counted as the kernel holds them.
		want[`vpnd_vpn_routes`] = float64(len(d.routes(t)))
		want[`vpnd_vpn_rules`] = float64(len(d.vpnRules(t)))
	}
	got = eventuallySamples(t, d, "after the calls", want)
	// The VPN of the test holds 3 routes and 2 rules at least (a simulated
	// vpnd counts what it would put in the kernel).
	if routes, rules := got[`vpnd_vpn_routes`], got[`vpnd_vpn_rules`]; routes < 3 || rules < 2 {
		t.Errorf("vpnd_vpn_routes %v, vpnd_vpn_rules %v: the VPN is not what the test set up", routes, rules)
	}
	if s := got["vpnd_setup_duration_seconds_sum"]; s <= 0 || s > 10 {
		t.Errorf("vpnd_setup_duration_seconds_sum = %v", s)
	}
	for k := range got {
		if strings.HasPrefix(k, "vpnd_requests_total") && strings.Contains(k, "bogus") {
			t.Errorf("an unknown method got a label of its own: %s", k)
		}
	}

	// Self-healing: a deleted rule comes back, and is counted.
	if !d.sim {
		r := d.vpnRules(t)[0]
		d.ip(t, famFlag(r.Family), "rule", "del", "priority", fmt.Sprint(d.priority), "uidrange", fmt.Sprintf("%d-%d", *r.UIDStart, *r.UIDEnd))
		eventuallySamples(t, d, "self-healing counted", map[string]float64{`vpnd_heal_repairs_total{of="vpn"}`: 1})
	}

	// Every ending, by reason.
	ok(t, c.call("destroy", "{}", ""))
	eventuallySamples(t, d, "destroy", map[string]float64{
		`vpnd_teardowns_total{reason="destroy"}`: 1, "vpnd_vpn_up": 0, "vpnd_vpn_routes": 0, "vpnd_vpn_rules": 0})
	setUpOK(t, c.call("setUp", up, ""))
	c.closeTUN()
	eventuallySamples(t, d, "TUN closed", map[string]float64{`vpnd_teardowns_total{reason="linkGone"}`: 1, "vpnd_vpn_up": 0})
	setUpOK(t, c.call("setUp", up, ""))
	c.closeConn()
	eventuallySamples(t, d, "owner gone", map[string]float64{
		`vpnd_teardowns_total{reason="ownerGone"}`:     1,
		`vpnd_requests_total{code="0",method="setUp"}`: 3,
		`vpnd_setup_duration_seconds_count`:            3,
		"vpnd_vpn_up":                                  0,
		"vpnd_connections":                             0,
	})
}

// A metrics address vpnd cannot bind stops it at start, before the sweep.
func TestMetricsListenRefused(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	plantLeftovers(t, ns)
	sock := filepath.Join(newDaemonDir(t), "vpnd.sock")
	code, out := runVpndToExitIn(t, ns, nil, sock, "--metrics-listen", "192.0.2.1:9477")
	if code != 1 || !strings.Contains(out, "vpnd: --metrics-listen 192.0.2.1:9477: listen tcp 192.0.2.1:9477: bind: cannot assign requested address") {
		t.Errorf("exit %d: %s", code, out)
	}
	wantNotSwept(t, ns)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file %s: %v", sock, err)
	}
}
