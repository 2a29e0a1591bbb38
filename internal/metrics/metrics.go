// Package metrics is vpnd's Prometheus instrumentation (--metrics-listen):
// what the server and the manager report through their small observer
// interfaces, kept in a registry of vpnd's own and served in the text
// format at /metrics.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/net/netutil"

	"github.com/vpnd/vpnd/protocol"
)

// Path is where the metrics are served.
const Path = "/metrics"

// methods are the method label's values; any other method is counted as
// "other", so that a client cannot grow the label set.
var methods = map[string]bool{
	protocol.MethodSetUp: true, protocol.MethodCreate: true, protocol.MethodProtect: true,
	protocol.MethodDestroy: true, protocol.MethodStatus: true, protocol.MethodSubscribe: true,
	protocol.MethodSetLockdown: true,
}

// setupBuckets span a setUp's duration: about 100 µs for a small VPN on the
// simulated kernel, milliseconds through netlink, a second or so for
// 10,000 routes.
var setupBuckets = prometheus.ExponentialBuckets(100e-6, 2.5, 12) // 100 µs ... 2.4 s

// Metrics holds vpnd's metrics. Its methods are safe for concurrent use; a
// nil *Metrics is not valid: leave the observer nil instead.
type Metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	setup       prometheus.Histogram
	vpnUp       prometheus.Gauge
	vpnRoutes   prometheus.Gauge
	vpnRules    prometheus.Gauge
	teardowns   *prometheus.CounterVec
	healRepairs *prometheus.CounterVec
}

// New returns vpnd's metrics in a registry of their own, with the Go
// runtime's and the process's collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vpnd_requests_total",
			Help: `Requests answered, by method ("other" for unknown or missing ones) and code ("0" for success).`,
		}, []string{"method", "code"}),
		setup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vpnd_setup_duration_seconds",
			Help:    "Time to answer a successful setUp, from the request read to the answer ready: parsing, checks and bring-up.",
			Buckets: setupBuckets,
		}),
		vpnUp:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "vpnd_vpn_up", Help: "1 while a VPN is up, else 0."}),
		vpnRoutes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vpnd_vpn_routes", Help: "Routes the VPN holds in its table (prefix, included, excluded and fail-closed routes); 0 without a VPN."}),
		vpnRules:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "vpnd_vpn_rules", Help: "Policy rules the VPN holds (lockdown's not counted); 0 without a VPN."}),
		teardowns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vpnd_teardowns_total",
			Help: "VPNs ended, by reason: destroy, ownerGone, linkGone or shutdown.",
		}, []string{"reason"}),
		healRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vpnd_heal_repairs_total",
			Help: `Times self-healing put back something of vpnd's that was deleted or changed, by what it guards ("vpn" or "lockdown").`,
		}, []string{"of"}),
	}
	m.reg.MustRegister(m.requests, m.setup, m.vpnUp, m.vpnRoutes, m.vpnRules, m.teardowns, m.healRepairs,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// CountConnections makes vpnd_connections report conns(): the clients
// connected now.
func (m *Metrics) CountConnections(conns func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vpnd_connections",
		Help: "Clients connected to vpnd's socket.",
	}, func() float64 { return float64(conns()) }))
}

// Request counts one answered request (the server's observer). code is 0
// for success; took, for a successful setUp, goes into the histogram.
func (m *Metrics) Request(method string, code int, took time.Duration) {
	if !methods[method] {
		method = "other"
	}
	m.requests.WithLabelValues(method, strconv.Itoa(code)).Inc()
	if code == 0 && (method == protocol.MethodSetUp || method == protocol.MethodCreate) {
		m.setup.Observe(took.Seconds())
	}
}

// VPNUp records a VPN that came up with routes and rules (the manager's
// observer).
func (m *Metrics) VPNUp(routes, rules int) {
	m.vpnUp.Set(1)
	m.vpnRoutes.Set(float64(routes))
	m.vpnRules.Set(float64(rules))
}

// VPNDown records the end of the VPN, and why.
func (m *Metrics) VPNDown(reason string) {
	m.vpnUp.Set(0)
	m.vpnRoutes.Set(0)
	m.vpnRules.Set(0)
	m.teardowns.WithLabelValues(reason).Inc()
}

// Repaired records one repair by self-healing of what guard ("vpn" or
// "lockdown") holds.
func (m *Metrics) Repaired(guard string) { m.healRepairs.WithLabelValues(guard).Inc() }

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Limits of the metrics listener. Any local user may connect to it, so
// what one connection can hold, and how many are served at once, is
// bounded: at most MaxConns connections are accepted at a time (others
// wait in the kernel's listen backlog, costing vpnd nothing), each must
// send its request header, at most MaxHeaderBytes, within headerTimeout,
// and is closed after one request. A scrape sends a few hundred bytes and
// takes milliseconds; 20,000 connections that never finish their header
// cost vpnd MaxConns connections' worth of memory and descriptors, not
// 20,000, and never its socket's descriptors.
const (
	MaxConns       = 64
	MaxHeaderBytes = 8 << 10
	headerTimeout  = 5 * time.Second
	idleTimeout    = 5 * time.Second
)

// Server serves the metrics on a listener.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen binds addr (host:port) for the metrics, so that a taken address
// fails at start; Serve then serves on it.
func (m *Metrics) Listen(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, m.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
	// One connection per scrape: no idle connection (and goroutine) stays
	// behind between scrapes.
	srv.SetKeepAlivesEnabled(false)
	return &Server{srv: srv, ln: netutil.LimitListener(ln, MaxConns)}, nil
}

// Addr is the address the metrics are served on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Close; it logs a failure.
func (s *Server) Serve(log *zap.Logger) {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics server failed", zap.Error(err))
	}
}

// Close stops serving and closes the connections of scrapes in progress.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	s.ln.Close() // in case Serve never ran
	return err
}
