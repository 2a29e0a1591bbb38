package rundir

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The runtime directory without a login session: $XDG_RUNTIME_DIR when
// set, else the user's own /run/user/UID, else a private directory under
// $TMPDIR, and never a directory someone else could have prepared.
func TestFind(t *testing.T) {
	uid := os.Geteuid()
	other := uid + 1 // a directory of someone else's
	if os.Geteuid() != 0 {
		other = -1 // only root can chown
	}
	type setup func(t *testing.T, runUser, tmp string)
	mkdir := func(rel string, mode os.FileMode, owner int) setup {
		return func(t *testing.T, runUser, tmp string) {
			d := filepath.Join(strings.NewReplacer("RUN", runUser, "TMP", tmp).Replace(rel))
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, mode); err != nil {
				t.Fatal(err)
			}
			if owner >= 0 {
				if err := os.Chown(d, owner, owner); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	u := strconv.Itoa(uid)
	for _, tc := range []struct {
		name   string
		xdg    string
		tmpdir bool // $TMPDIR is the test's temporary directory, else unset
		setup  []setup
		want   string // RUN and TMP stand for the directories
		env    bool
		err    string
	}{
		{name: "XDG_RUNTIME_DIR wins", xdg: "/run/user/4242", tmpdir: true, setup: []setup{mkdir("RUN/"+u, 0o700, -1)},
			want: "/run/user/4242", env: true},
		{name: "relative XDG_RUNTIME_DIR is ignored", xdg: "run", tmpdir: true, setup: []setup{mkdir("RUN/"+u, 0o700, -1)}, want: "RUN/" + u},
		{name: "unset: /run/user/UID", tmpdir: true, setup: []setup{mkdir("RUN/"+u, 0o700, -1)}, want: "RUN/" + u},
		{name: "unset, no /run/user/UID: made under TMPDIR", tmpdir: true, want: "TMP/vpnd-runtime-" + u},
		{name: "/run/user/UID open to others: TMPDIR", tmpdir: true, setup: []setup{mkdir("RUN/"+u, 0o755, -1)}, want: "TMP/vpnd-runtime-" + u},
		{name: "earlier fallback reused", tmpdir: true, setup: []setup{mkdir("TMP/vpnd-runtime-"+u, 0o700, -1)}, want: "TMP/vpnd-runtime-" + u},
		{name: "fallback open to others: refused", tmpdir: true, setup: []setup{mkdir("TMP/vpnd-runtime-"+u, 0o777, -1)},
			err: "vpnd-runtime-" + u + " has mode 0777: others may enter it: remove it, or set XDG_RUNTIME_DIR"},
		{name: "fallback is a symbolic link: refused", tmpdir: true, setup: []setup{mkdir("TMP/elsewhere", 0o700, -1),
			func(t *testing.T, _, tmp string) {
				if err := os.Symlink(filepath.Join(tmp, "elsewhere"), filepath.Join(tmp, "vpnd-runtime-"+u)); err != nil {
					t.Fatal(err)
				}
			}}, err: "vpnd-runtime-" + u + " is a symbolic link"},
		{name: "fallback is a file: refused", tmpdir: true, setup: []setup{func(t *testing.T, _, tmp string) {
			if err := os.WriteFile(filepath.Join(tmp, "vpnd-runtime-"+u), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}}, err: "vpnd-runtime-" + u + " is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runUser, tmp := t.TempDir(), t.TempDir()
			for _, s := range tc.setup {
				s(t, runUser, tmp)
			}
			env := map[string]string{"XDG_RUNTIME_DIR": tc.xdg}
			if tc.tmpdir {
				env["TMPDIR"] = tmp
			}
			d, err := find(func(k string) string { return env[k] }, uid, runUser)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("find = %+v, %v; want an error saying %q", d, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := strings.NewReplacer("RUN", runUser, "TMP", tmp).Replace(tc.want)
			if d.Path != want || d.FromEnv != tc.env {
				t.Errorf("find = %+v, want %s (from env %v)", d, want, tc.env)
			}
			if err := checkPrivate(d.Path, uid); !tc.env && err != nil {
				t.Errorf("the directory found is not private: %v", err)
			}
		})
	}
	if other < 0 {
		t.Log("not root: the case of a fallback owned by someone else is not run")
		return
	}
	t.Run("fallback owned by someone else: refused", func(t *testing.T) {
		tmp := t.TempDir()
		mkdir("TMP/vpnd-runtime-"+u, 0o700, other)(t, "", tmp)
		_, err := find(func(k string) string { return map[string]string{"TMPDIR": tmp}[k] }, uid, t.TempDir())
		if want := "belongs to uid " + strconv.Itoa(other); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err %v, want one saying %q", err, want)
		}
	})
}
