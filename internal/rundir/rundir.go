// Package rundir finds a user's runtime directory: where `vpnd --sim`
// puts its socket and vpnd-wg the sockets that `vpnd-wg show` reads.
//
// A login session sets $XDG_RUNTIME_DIR (/run/user/UID, made by
// pam_systemd). su, sudo, containers and ssh commands without a session
// often leave it unset; the fallbacks below are safe for a socket whose
// directory must be the user's alone.
package rundir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Dir is the runtime directory found, and how.
type Dir struct {
	Path string
	// FromEnv is true when Path is $XDG_RUNTIME_DIR. Otherwise a caller
	// should say which directory it uses: the user did not choose it.
	FromEnv bool
}

// Find returns the runtime directory of the effective user:
//
//  1. $XDG_RUNTIME_DIR, if it is an absolute path (the XDG base directory
//     rules say to ignore a relative one);
//  2. else /run/user/UID, if it is a directory (not a symbolic link) that
//     the user owns and that no one else may enter (mode 0700, as
//     pam_systemd makes it);
//  3. else $TMPDIR/vpnd-runtime-UID ($TMPDIR if absolute, else /tmp),
//     created 0700. An existing one must be a directory that the user
//     owns and no one else may enter: /tmp is shared, and another user
//     may have made that name first. Then Find fails, naming it.
func Find(getenv func(string) string) (Dir, error) {
	return find(getenv, os.Geteuid(), "/run/user")
}

func find(getenv func(string) string, uid int, runUser string) (Dir, error) {
	if d := getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return Dir{Path: d, FromEnv: true}, nil
	}
	if d := filepath.Join(runUser, strconv.Itoa(uid)); checkPrivate(d, uid) == nil {
		return Dir{Path: d}, nil
	}
	tmp := getenv("TMPDIR")
	if !filepath.IsAbs(tmp) {
		tmp = "/tmp"
	}
	d := filepath.Join(tmp, "vpnd-runtime-"+strconv.Itoa(uid))
	switch err := os.Mkdir(d, 0o700); {
	case err == nil:
		// The umask may have taken bits away; no one else gets any.
		if err := os.Chmod(d, 0o700); err != nil {
			return Dir{}, fmt.Errorf("runtime directory: %w", err)
		}
	case !errors.Is(err, fs.ErrExist):
		return Dir{}, fmt.Errorf("XDG_RUNTIME_DIR is not set, %s/%d is not usable, and the fallback %s cannot be made: %w: set XDG_RUNTIME_DIR", runUser, uid, d, err)
	}
	if err := checkPrivate(d, uid); err != nil {
		return Dir{}, fmt.Errorf("XDG_RUNTIME_DIR is not set, %s/%d is not usable, and the fallback is not safe: %w: remove it, or set XDG_RUNTIME_DIR", runUser, uid, err)
	}
	return Dir{Path: d}, nil
}

// checkPrivate says why d is not a directory of uid's that no one else
// may enter, or nil if it is one.
func checkPrivate(d string, uid int) error {
	fi, err := os.Lstat(d)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link", d)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", d)
	case !ok:
		return fmt.Errorf("%s: no owner known", d)
	case int(st.Uid) != uid:
		return fmt.Errorf("%s belongs to uid %d, not %d", d, st.Uid, uid)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s has mode %#o: others may enter it", d, fi.Mode().Perm())
	}
	return nil
}
