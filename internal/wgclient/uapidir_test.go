package wgclient

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The UAPI directory is checked as vpnd checks its socket directory, and
// must be the user's alone; `show` accepts a missing one.
func TestUAPIDirChecked(t *testing.T) {
	base := t.TempDir()
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, os.ModeSticky|0o777)
	link := filepath.Join(base, "link")
	os.Symlink(open, link)
	for _, tc := range []struct{ dir, want string }{
		{open, "unsafe UAPI directory: " + open + " has mode 1777"},
		{link, "unsafe UAPI directory: " + link + " is a symbolic link (give --uapi-dir a path without symbolic links)"},
	} {
		if _, err := listenUAPI(tc.dir, "wg0", nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("listenUAPI(%s): %v, want %q", tc.dir, err, tc.want)
		}
		if err := CheckUAPIDir(tc.dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckUAPIDir(%s): %v, want %q", tc.dir, err, tc.want)
		}
	}
	missing := filepath.Join(base, "missing", "vpnd-wg")
	if err := CheckUAPIDir(missing); err != nil {
		t.Errorf("CheckUAPIDir of a missing directory: %v", err)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("CheckUAPIDir created %s", missing)
	}
	// A new one is created 0700, under a sticky directory too.
	mine := filepath.Join(open, "mine")
	s, err := listenUAPI(mine, "wg0", nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if fi, err := os.Stat(mine); err != nil || fi.Mode() != os.ModeDir|0o700 {
		t.Errorf("%s: %v %v, want drwx------", mine, fi.Mode(), err)
	}
}
