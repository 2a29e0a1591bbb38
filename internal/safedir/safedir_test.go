package safedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var private = Spec{What: "state directory", Flag: "--state-dir", Program: "vpnd", Mode: 0o700, Private: true}

func open(t *testing.T, dir string, s Spec) error {
	t.Helper()
	fd, err := Open(dir, s)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

// Missing directories get exactly Spec.Mode, whatever the umask, and the
// descriptor is the directory asked for.
func TestOpenCreatesWithMode(t *testing.T) {
	base := t.TempDir()
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	dir := filepath.Join(base, "a", "b")
	fd, err := Open(dir, Spec{What: "test directory", Mode: 0o750})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, d := range []string{filepath.Join(base, "a"), dir} {
		if fi, err := os.Lstat(d); err != nil || fi.Mode() != os.ModeDir|0o750 {
			t.Errorf("%s: %v %v, want drwxr-x---", d, fi.Mode(), err)
		}
	}
	var st, want unix.Stat_t
	unix.Fstat(fd, &st)
	unix.Stat(dir, &want)
	if st.Ino != want.Ino {
		t.Errorf("the descriptor is not %s", dir)
	}
}

// A sticky directory that everyone may write is fine on the way (like
// /tmp), but not as a private directory itself: others may create names
// in it. Without the sticky bit neither is.
func TestOpenPrivate(t *testing.T) {
	base := t.TempDir()
	sticky := filepath.Join(base, "tmp")
	os.Mkdir(sticky, 0o755)
	if err := os.Chmod(sticky, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	if err := open(t, filepath.Join(sticky, "state"), private); err != nil {
		t.Errorf("a private directory under a sticky one: %v", err)
	}
	var unsafe *UnsafeError
	err := open(t, sticky, private)
	if !errors.As(err, &unsafe) || unsafe.Path != sticky || !strings.Contains(err.Error(), "has mode 1777: group or others may write it (it must be vpnd's alone)") {
		t.Errorf("the sticky directory itself: %v", err)
	}
	if err := open(t, sticky, Spec{What: "socket directory", Mode: 0o755}); err != nil {
		t.Errorf("a sticky directory for a socket: %v", err)
	}
	group := filepath.Join(base, "group")
	os.Mkdir(group, 0o700)
	os.Chmod(group, 0o770)
	if err := open(t, group, private); err == nil || !strings.Contains(err.Error(), "unsafe state directory: "+group+" has mode 0770") {
		t.Errorf("a group-writable directory: %v", err)
	}
	link := filepath.Join(base, "link")
	os.Symlink(filepath.Join(sticky, "state"), link)
	if err := open(t, link, private); err == nil || !strings.Contains(err.Error(), link+" is a symbolic link (give --state-dir a path without symbolic links)") {
		t.Errorf("a symbolic link: %v", err)
	}
	if err := open(t, "relative", private); err == nil {
		t.Error("a relative path was accepted")
	}
}

// A directory of another uid is refused, with the owner named.
func TestOpenOtherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a directory of another uid")
	}
	dir := filepath.Join(t.TempDir(), "d")
	os.Mkdir(dir, 0o700)
	os.Chown(dir, 4000, 4000)
	err := open(t, dir, private)
	if err == nil || !strings.Contains(err.Error(), dir+" is owned by uid 4000 (only root or vpnd's own uid 0 may own it)") {
		t.Errorf("a directory of uid 4000: %v", err)
	}
}
