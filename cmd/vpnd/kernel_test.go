package main

import (
	"os"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/rundir"
)

// --sim changes the defaults of --socket and --state-dir to places an
// ordinary user can create, distinct from a real vpnd's; given flags win.
func TestSimDefaults(t *testing.T) {
	for _, tc := range []struct {
		name             string
		env              map[string]string
		args             []string
		socket, stateDir string
		err              string
	}{
		{"no --sim: the host's defaults", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/a"}, nil,
			"/run/vpnd/vpnd.sock", "/var/lib/vpnd", ""},
		{"XDG variables", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000", "XDG_STATE_HOME": "/home/a/st", "HOME": "/home/a"},
			[]string{"--sim"}, "/run/user/1000/vpnd-sim.sock", "/home/a/st/vpnd-sim", ""},
		{"no XDG_STATE_HOME: ~/.local/state", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/a"},
			[]string{"--sim"}, "/run/user/1000/vpnd-sim.sock", "/home/a/.local/state/vpnd-sim", ""},
		{"given flags win", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/a"},
			[]string{"--sim", "--socket", "/tmp/x/s.sock", "--state-dir", "/tmp/x/state"}, "/tmp/x/s.sock", "/tmp/x/state", ""},
		{"no XDG_RUNTIME_DIR: the fallback", map[string]string{"HOME": "/home/a"}, []string{"--sim"},
			"FALLBACK/vpnd-sim.sock", "/home/a/.local/state/vpnd-sim", ""},
		{"no XDG_RUNTIME_DIR, --socket given", map[string]string{"HOME": "/home/a"}, []string{"--sim", "--socket", "/tmp/s.sock"},
			"/tmp/s.sock", "/home/a/.local/state/vpnd-sim", ""},
		{"relative XDG_RUNTIME_DIR is ignored", map[string]string{"XDG_RUNTIME_DIR": "run", "HOME": "/home/a"}, []string{"--sim"},
			"FALLBACK/vpnd-sim.sock", "/home/a/.local/state/vpnd-sim", ""},
		{"no home", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, []string{"--sim"}, "", "", "give --state-dir DIR"},
		{"no home, --state-dir given", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, []string{"--sim", "--state-dir", "/tmp/st"},
			"/run/user/1000/vpnd-sim.sock", "/tmp/st", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []string{"XDG_RUNTIME_DIR", "XDG_STATE_HOME", "HOME"} {
				t.Setenv(v, tc.env[v])
			}
			// The fallback's own choices are rundir's tests'; here, that
			// it is used and named.
			t.Setenv("TMPDIR", t.TempDir())
			fallback, err := rundir.Find(func(k string) string {
				if k == "XDG_RUNTIME_DIR" {
					return ""
				}
				return os.Getenv(k)
			})
			if err != nil {
				t.Fatal(err)
			}
			var note strings.Builder
			o, _, err := parseFlags(tc.args, &note)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			socket := strings.Replace(tc.socket, "FALLBACK", fallback.Path, 1)
			if o.socket != socket || o.stateDir != tc.stateDir || o.sim != (len(tc.args) > 0) {
				t.Errorf("socket %q state-dir %q sim %v, want %q %q", o.socket, o.stateDir, o.sim, socket, tc.stateDir)
			}
			// The user is told which directory vpnd chose.
			if said := strings.Contains(note.String(), "XDG_RUNTIME_DIR is not set: the socket is "+socket+", in your runtime directory "+fallback.Path); said != (socket != tc.socket) {
				t.Errorf("note %q, want one naming %s: %v", note.String(), fallback.Path, !said)
			}
		})
	}
}
