package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	flag "github.com/spf13/pflag"

	"github.com/vpnd/vpnd/protocol"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string // "" = valid
		mark uint32
	}{
		{nil, "", 0x20000},
		{[]string{"--protect-mark", "0x40000", "--table", "200", "--rule-priority", "500", "--ifname", "tun7"}, "", 0x40000},
		{[]string{"--ifname", "a-name-of-16-byt"}, "--ifname", 0},
		{[]string{"--ifname", "a/b"}, "--ifname", 0},
		{[]string{"--ifname", ""}, "--ifname", 0},
		{[]string{"--ifname", "tun%d"}, "--ifname", 0},
		{[]string{"--ifname", "tun\x01"}, "--ifname", 0},
		{[]string{"--table", "254"}, "reserved table", 0},
		{[]string{"--table", "0"}, "reserved table", 0},
		{[]string{"--rule-priority", "0"}, "out of range", 0},
		{[]string{"--rule-priority", "32766"}, "out of range", 0},
		{[]string{"--rule-priority", "32765"}, "out of range", 0}, // lockdown would take 32766, main's
		{[]string{"--protect-mark", "0"}, "--protect-mark", 0},
		{[]string{"--protect-mark", "0x100000000"}, "--protect-mark", 0},
		{[]string{"--max-connections", "0"}, "--max-connections", 0},
		{[]string{"--max-connections-per-user", "-1"}, "--max-connections-per-user", 0},
		{[]string{"--max-connections-per-user", "0"}, "", 0x20000},
		{[]string{"stray"}, "unexpected argument", 0},
		{[]string{"--dns-backend", "resolved", "--resolv-conf", "/tmp/x"}, "", 0x20000},
		{[]string{"--dns-backend", "none"}, "", 0x20000},
		{[]string{"--dns-backend", "resolvconf"}, "--dns-backend", 0},
		{[]string{"--allow-offload", "admin"}, "", 0x20000},
		{[]string{"--allow-offload", "none"}, "", 0x20000},
		{[]string{"--allow-offload", "root"}, `--allow-offload: want all, admin or none, not "root"`, 0},
	} {
		_, mark, err := parseFlags(tc.args, io.Discard)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%v: got %v, want error containing %q", tc.args, err, tc.err)
		case tc.err == "" && mark != tc.mark:
			t.Errorf("%v: mark %#x, want %#x", tc.args, mark, tc.mark)
		}
	}
}

func TestLogger(t *testing.T) {
	if _, err := newLogger("debug", "json"); err != nil {
		t.Fatal(err)
	}
	if _, err := newLogger("loud", "json"); err == nil {
		t.Fatal("bad level accepted")
	}
	if _, err := newLogger("info", "xml"); err == nil {
		t.Fatal("bad format accepted")
	}
}

// TestHelpMatchesREADME: --help shows each flag as README's table of
// vpnd's flags writes it ("--socket PATH"), and README lists every flag.
func TestHelpMatchesREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section, _, _ := strings.Cut(string(readme)[strings.Index(string(readme), "## Running vpnd"):], "\n## ")
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(--[a-z-]+(?: [A-Z]+)?)` \\|").FindAllStringSubmatch(section, -1) {
		documented = append(documented, m[1])
	}
	if len(documented) < 10 {
		t.Fatalf("found only %q in README's flag table", documented)
	}
	var help strings.Builder
	if _, _, err := parseFlags([]string{"--help"}, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	shown := regexp.MustCompile(`(?m)^\s+(?:-[a-z], )?(--[a-z-]+(?: [A-Z]+)?)  `).FindAllStringSubmatch(help.String(), -1)
	var inHelp []string
	for _, m := range shown {
		if m[1] != "--help" {
			inHelp = append(inHelp, m[1])
		}
	}
	slices.Sort(documented)
	slices.Sort(inHelp)
	if !slices.Equal(documented, inHelp) {
		t.Errorf("README documents %q\n--help shows     %q", documented, inHelp)
	}
	if strings.Contains(help.String(), "--man") {
		t.Error("--help shows the hidden --man")
	}
}

// The description at the top of --help (and of the man page) names every
// method vpnd serves.
func TestHelpNamesEveryMethod(t *testing.T) {
	var help strings.Builder
	if _, _, err := parseFlags([]string{"--help"}, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	intro, _, _ := strings.Cut(help.String(), "\n\n"+"Start-up")
	for _, m := range []string{protocol.MethodSetUp, protocol.MethodProtect, protocol.MethodDestroy, protocol.MethodStatus,
		protocol.MethodSubscribe, protocol.MethodSetLockdown} {
		if !regexp.MustCompile(`\b` + m + `\b`).MatchString(intro) {
			t.Errorf("--help's description does not name %s:\n%s", m, intro)
		}
	}
}

func TestVersionFlag(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-v"}, {"--version", "--table", "0"}} {
		o, _, err := parseFlags(args, io.Discard)
		if err != nil || !o.version {
			t.Errorf("%v: %+v %v", args, o, err)
		}
	}
}

// TestManPage: "vpnd --man DIR" writes vpnd.8 from the flag definitions
// and the --help description.
func TestManPage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "man8")
	if code := run([]string{"--man", dir}, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	b, err := os.ReadFile(filepath.Join(dir, "vpnd.8"))
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, want := range []string{`.TH "VPND" "8"`, "the VPN manager daemon", "CAP_NET_ADMIN", `\fB--rule-priority\fP=10000`, `\fB--max-connections-per-user\fP=64`, `\fB--version\fP`} {
		if !strings.Contains(page, want) {
			t.Errorf("vpnd.8 lacks %q", want)
		}
	}
	if strings.Contains(page, "--man") {
		t.Error("vpnd.8 shows the hidden --man")
	}
	// The numbered start-up steps are one list item each.
	if n := strings.Count(page, ".IP "); n < 4 {
		t.Errorf("vpnd.8 has %d list items, want the 4 start-up steps:\n%s", n, page)
	}
}
