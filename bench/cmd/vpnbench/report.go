package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// Units of a series.
const (
	unitMs   = "ms"
	unitRate = "req/s"
	unitMiB  = "MiB"
)

// Series is one measured quantity: vpnd's, or a baseline's.
type Series struct {
	Name    string    `json:"name"`
	Role    string    `json:"role"` // "vpnd" or "baseline"
	Unit    string    `json:"unit"`
	Samples []float64 `json:"samples"`
	Median  float64   `json:"median"`
	P99     float64   `json:"p99"`
	// P99Unit is set when the p99 is of another quantity than the
	// samples: for a rate, it is the p99 of the round-trip latency (ms).
	P99Unit string `json:"p99_unit,omitempty"`
	// Ratio is the vpnd series' median over this one's (baselines only).
	Ratio *float64 `json:"ratio_vpnd_over_this,omitempty"`
	// p99Of holds the samples the p99 is taken from when P99Unit is set.
	p99Of []float64
}

func (s *Series) add(v float64) { s.Samples = append(s.Samples, v) }

// Result is one row group of the table: a scenario and its baselines.
type Result struct {
	ID     string         `json:"id"`
	Title  string         `json:"title"`
	Series []*Series      `json:"series"`
	Notes  []string       `json:"notes,omitempty"`
	Extra  map[string]any `json:"extra,omitempty"`
}

func newResult(id, title string, series ...*Series) *Result {
	return &Result{ID: id, Title: title, Series: series}
}

func vpndSeries(name, unit string) *Series { return &Series{Name: name, Role: "vpnd", Unit: unit} }
func baseSeries(name, unit string) *Series { return &Series{Name: name, Role: "baseline", Unit: unit} }

// finish computes medians, p99s and ratios from the samples.
func (r *Result) finish() {
	var ref *Series
	for _, s := range r.Series {
		s.Median = median(s.Samples)
		if s.P99Unit != "" {
			s.P99 = percentile(s.p99Of, 99)
		} else {
			s.P99 = percentile(s.Samples, 99)
		}
		if math.IsNaN(s.P99) {
			s.P99 = 0
		}
		if len(s.Samples) == 0 {
			s.Median, s.P99 = 0, 0 // JSON has no NaN; the table prints "-"
		} else if ref == nil && s.Role == "vpnd" {
			ref = s
		}
	}
	if ref == nil {
		return
	}
	for _, s := range r.Series {
		if s.Role == "baseline" && s.Median > 0 && len(s.Samples) > 0 {
			q := ref.Median / s.Median
			s.Ratio = &q
		}
	}
}

// PerRoute is the growth of a setUp with the route count.
type PerRoute struct {
	Series   string  `json:"series"`
	Routes   int     `json:"routes"`
	MedianMs float64 `json:"median_ms"`
	// PerRouteUs is the median over the route count.
	PerRouteUs float64 `json:"per_route_us"`
	// MarginalUs is (median(N) - median(1)) / (N - 1): what one more route
	// costs, without the fixed cost of a setUp.
	MarginalUs float64 `json:"marginal_per_route_us,omitempty"`
}

// Machine is where the figures were measured.
type Machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	Virtual   bool   `json:"virtual_machine"`
	MemoryMiB int64  `json:"memory_mib"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	IPRoute2  string `json:"iproute2"`
	// VPND says which vpnd was measured: the checkout's commit (git
	// describe), or for -vpnd the binary's path and --version.
	VPND string `json:"vpnd,omitempty"`
}

// Report is everything one run measured.
type Report struct {
	Command  string     `json:"command"`
	Date     time.Time  `json:"date"`
	Duration string     `json:"duration"`
	N        int        `json:"n"`
	Warmup   int        `json:"warmup"`
	Quick    bool       `json:"quick"`
	Machine  Machine    `json:"machine"`
	Results  []*Result  `json:"results"`
	PerRoute []PerRoute `json:"per_route,omitempty"`
	Notes    []string   `json:"notes,omitempty"`
	Errors   []string   `json:"errors,omitempty"`
	plot     string     // the plot file, if one was written
}

// describeVPND says which vpnd a run measures.
func describeVPND(prebuilt string) string {
	if prebuilt != "" {
		desc := "binary " + prebuilt
		if out, err := exec.Command(prebuilt, "--version").Output(); err == nil {
			if v, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n"); v != "" {
				desc += " (" + v + ")"
			}
		}
		return desc
	}
	root, err := moduleRoot()
	if err != nil {
		return ""
	}
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return "built from " + root
	}
	return "built from commit " + strings.TrimSpace(string(out))
}

func collectMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			k = strings.TrimSpace(k)
			if !ok {
				continue
			}
			if k == "model name" && m.CPU == "" {
				m.CPU = strings.TrimSpace(v)
			}
			if k == "flags" && strings.Contains(" "+v+" ", " hypervisor ") {
				m.Virtual = true
			}
		}
	}
	if st, err := procStatusFile("/proc/meminfo", "MemTotal"); err == nil {
		m.MemoryMiB = st["MemTotal"] / 1024
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if out, err := exec.Command("ip", "-V").Output(); err == nil {
		m.IPRoute2 = strings.TrimSpace(string(out))
	}
	return m
}

// procStatusFile reads "Key: N kB" fields of a /proc file.
func procStatusFile(path string, fields ...string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vals := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, f := range fields {
			if k == f {
				var n int64
				if _, err := fmt.Sscan(strings.TrimSpace(v), &n); err == nil {
					vals[k] = n
				}
			}
		}
	}
	return vals, nil
}

// fmtValue prints v in unit with three significant digits or so.
func fmtValue(v float64, unit string) string {
	if math.IsNaN(v) {
		return "-"
	}
	switch unit {
	case unitMs:
		switch {
		case v < 1:
			return sig(v*1000) + " µs"
		case v < 1000:
			return sig(v) + " ms"
		default:
			return sig(v/1000) + " s"
		}
	case unitRate:
		if v >= 1000 {
			return sig(v/1000) + " k/s"
		}
		return sig(v) + " /s"
	case unitMiB:
		return fmt.Sprintf("%.1f MiB", v)
	}
	return sig(v) + " " + unit
}

func sig(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func (s *Series) medianText() string {
	if len(s.Samples) == 0 {
		return "-"
	}
	return fmtValue(s.Median, s.Unit)
}

func (s *Series) p99Text() string {
	if len(s.Samples) == 0 {
		return "-"
	}
	if s.P99Unit != "" {
		return fmtValue(s.P99, s.P99Unit) + " rtt"
	}
	return fmtValue(s.P99, s.Unit)
}

func (s *Series) ratioText() string {
	if s.Ratio == nil {
		return ""
	}
	return fmt.Sprintf("%.2f", *s.Ratio)
}

// writeText prints the table for a terminal.
func (r *Report) writeText(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tseries\tn\tmedian\tp99\tvpnd/baseline\t")
	for _, res := range r.Results {
		title := res.Title
		for _, s := range res.Series {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t\n", title, s.Name, len(s.Samples), s.medianText(), s.p99Text(), s.ratioText())
			title = ""
		}
	}
	tw.Flush()
	if len(r.PerRoute) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "setUp growth\troutes\tmedian\tper route\tmarginal per route\t")
		for _, p := range r.PerRoute {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\n", p.Series, p.Routes, fmtValue(p.MedianMs, unitMs), fmtValue(p.PerRouteUs/1000, unitMs), marginalText(p))
		}
		tw.Flush()
	}
	for _, res := range r.Results {
		for _, n := range res.Notes {
			fmt.Fprintf(w, "note (%s): %s\n", res.Title, n)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	for _, e := range r.Errors {
		fmt.Fprintln(w, "ERROR:", e)
	}
}

func marginalText(p PerRoute) string {
	if p.Routes <= 1 {
		return "-"
	}
	return fmtValue(p.MarginalUs/1000, unitMs)
}

// markdown is the generated section of BENCHMARKS.md.
func (r *Report) markdown(mdPath string) string {
	var b strings.Builder
	m := r.Machine
	virt := ""
	if m.Virtual {
		virt = " (virtual machine)"
	}
	fmt.Fprintf(&b, "Measured %s by `%s` (%s; n = %d per series after %d warm-up rounds).\n\n",
		r.Date.UTC().Format("2006-01-02 15:04 MST"), r.Command, r.Duration, r.N, r.Warmup)
	fmt.Fprintf(&b, "| machine | |\n|---|---|\n")
	fmt.Fprintf(&b, "| CPU | %s%s |\n| cores | %d |\n| memory | %d MiB |\n| kernel | %s |\n| Go | %s |\n| iproute2 | %s |\n",
		m.CPU, virt, m.Cores, m.MemoryMiB, m.Kernel, m.Go, m.IPRoute2)
	if m.VPND != "" {
		fmt.Fprintf(&b, "| vpnd | %s |\n", m.VPND)
	}
	b.WriteString("\n| scenario | series | n | median | p99 | vpnd/baseline |\n|---|---|--:|--:|--:|--:|\n")
	for _, res := range r.Results {
		title := res.Title
		for _, s := range res.Series {
			name := s.Name
			if s.Role == "vpnd" {
				name = "**" + name + "**"
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s |\n", title, name, len(s.Samples), s.medianText(), s.p99Text(), s.ratioText())
			title = ""
		}
	}
	if len(r.PerRoute) > 0 {
		b.WriteString("\nGrowth of setUp with the route count (medians):\n\n| series | routes | median | per route | marginal per route |\n|---|--:|--:|--:|--:|\n")
		for _, p := range r.PerRoute {
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s |\n", p.Series, p.Routes, fmtValue(p.MedianMs, unitMs), fmtValue(p.PerRouteUs/1000, unitMs), marginalText(p))
		}
	}
	if r.plot != "" {
		rel, err := filepath.Rel(filepath.Dir(mdPath), r.plot)
		if err != nil {
			rel = r.plot
		}
		fmt.Fprintf(&b, "\n![setUp time against route count, log-log](%s)\n", filepath.ToSlash(rel))
	}
	var notes []string
	for _, res := range r.Results {
		for _, n := range res.Notes {
			notes = append(notes, res.Title+": "+n)
		}
	}
	notes = append(notes, r.Notes...)
	if len(notes) > 0 {
		b.WriteString("\nNotes from this run:\n\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "- **error:** %s\n", e)
	}
	return b.String()
}

// Markers of the generated section in BENCHMARKS.md.
const (
	beginMarker = "<!-- vpnbench:begin (generated by `go -C bench run ./cmd/vpnbench -markdown ../BENCHMARKS.md`; do not edit by hand) -->"
	endMarker   = "<!-- vpnbench:end -->"
)

// replaceSection puts section between the markers of doc, or appends the
// markers and section if doc has none.
func replaceSection(doc, section string) (string, error) {
	i := strings.Index(doc, "<!-- vpnbench:begin")
	j := strings.Index(doc, endMarker)
	block := beginMarker + "\n\n" + section + "\n" + endMarker
	switch {
	case i < 0 && j < 0:
		if doc != "" && !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		if doc != "" {
			doc += "\n"
		}
		return doc + block + "\n", nil
	case i < 0 || j < i:
		return "", errors.New("the vpnbench markers are broken: want one begin marker before one end marker")
	}
	return doc[:i] + block + doc[j+len(endMarker):], nil
}

func (r *Report) writeMarkdown(path string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	doc, err := replaceSection(string(old), r.markdown(path))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, []byte(doc), 0o644)
}

func (r *Report) writeJSON(path string) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
