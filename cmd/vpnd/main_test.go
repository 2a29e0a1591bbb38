package main

import (
	"io"
	"strings"
	"testing"
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
