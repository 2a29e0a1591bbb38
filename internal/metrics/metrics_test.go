package metrics

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Path, nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d", rec.Code)
	}
	return rec.Body.String()
}

// The label sets stay bounded, the histogram takes successful setUps
// only, and a VPN's end zeroes its gauges.
func TestMetrics(t *testing.T) {
	m := New()
	conns := 3
	m.CountConnections(func() int { return conns })
	m.Request("setUp", 0, 2*time.Millisecond)
	m.Request("create", 0, 3*time.Millisecond)
	m.Request("setUp", 2203002, time.Second)
	m.Request("no such method", -32601, 0)
	m.Request("", -32700, 0)
	m.Request(strings.Repeat("x", 1000), -32601, 0)
	m.VPNUp(7, 4)
	m.Repaired("vpn")
	m.Repaired("lockdown")
	out := scrape(t, m)
	for _, want := range []string{
		`vpnd_requests_total{code="0",method="setUp"} 1`,
		`vpnd_requests_total{code="0",method="create"} 1`,
		`vpnd_requests_total{code="2203002",method="setUp"} 1`,
		`vpnd_requests_total{code="-32601",method="other"} 2`,
		`vpnd_requests_total{code="-32700",method="other"} 1`,
		`vpnd_setup_duration_seconds_count 2`,
		`vpnd_setup_duration_seconds_sum 0.005`,
		`vpnd_setup_duration_seconds_bucket{le="0.0001"} 0`,
		`vpnd_setup_duration_seconds_bucket{le="0.0015625"} 0`,
		`vpnd_setup_duration_seconds_bucket{le="0.00390625"} 2`,
		`vpnd_setup_duration_seconds_bucket{le="+Inf"} 2`,
		"vpnd_vpn_up 1", "vpnd_vpn_routes 7", "vpnd_vpn_rules 4", "vpnd_connections 3",
		`vpnd_heal_repairs_total{of="vpn"} 1`, `vpnd_heal_repairs_total{of="lockdown"} 1`,
		"go_goroutines ", "process_open_fds ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "no such method") || strings.Contains(out, "xxx") {
		t.Errorf("an unknown method became a label value")
	}
	m.VPNDown("linkGone")
	out = scrape(t, m)
	for _, want := range []string{"vpnd_vpn_up 0", "vpnd_vpn_routes 0", "vpnd_vpn_rules 0", `vpnd_teardowns_total{reason="linkGone"} 1`} {
		if !strings.Contains(out, want) {
			t.Errorf("after VPNDown, no %q", want)
		}
	}
}

// Listen binds at once (a taken address fails at start); Close works
// whether Serve ran or not.
func TestListenServeClose(t *testing.T) {
	m := New()
	s, err := m.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Listen(s.Addr().String()); err == nil || !strings.Contains(err.Error(), "--metrics-listen "+s.Addr().String()+": ") {
		t.Errorf("a taken address: %v", err)
	}
	done := make(chan struct{})
	go func() { s.Serve(nil); close(done) }()
	resp, err := http.Get("http://" + s.Addr().String() + Path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close != true {
		t.Errorf("status %d, close %v: want 200 and no keep-alive", resp.StatusCode, resp.Close)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	<-done

	idle, err := New().Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := idle.Close(); err != nil {
		t.Error(err)
	}
}

// At most MaxConns connections are served at once: one more waits,
// unanswered, until a slot frees. A header over MaxHeaderBytes is refused.
func TestListenerLimits(t *testing.T) {
	s, err := New().Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(nil); close(done) }()
	defer func() { s.Close(); <-done }()
	addr := s.Addr().String()
	request := func(extra string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: vpnd\r\n%s\r\n", Path, extra)
		return c, bufio.NewReader(c)
	}

	c, r := request("X-Big: " + strings.Repeat("x", MaxHeaderBytes+4096) + "\r\n")
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a header of %d bytes: %v %v", MaxHeaderBytes+4096, resp, err)
	}
	c.Close()

	var slow []net.Conn
	for range MaxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: vpnd\r\nX-Slow: ", Path)
		slow = append(slow, c)
	}
	c, r = request("")
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := r.ReadByte(); err == nil {
		t.Fatalf("connection %d was served while %d others held their slots", MaxConns+1, MaxConns)
	}
	slow[0].Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if resp, err := http.ReadResponse(r, nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("once a slot was free: %v %v", resp, err)
	}
	for _, c := range slow[1:] {
		c.Close()
	}
}
