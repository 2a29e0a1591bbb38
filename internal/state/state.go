// Package state keeps what must outlive vpnd in its state directory
// (--state-dir, /var/lib/vpnd by default): lockdown's state, so that
// lockdown holds across restarts and a SIGKILL, and the resolv.conf that
// the file DNS backend replaced, so that a vpnd killed while a VPN was up
// puts it back at its next start.
//
// Files are written atomically: a temporary file in the same directory,
// fsync, rename, fsync of the directory. A crash leaves the old file or the
// new one, never half of one.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/config"
)

// Dir is a state directory.
type Dir struct {
	path string
}

// lockdownFile holds lockdown's state.
const lockdownFile = "lockdown.json"

// Open opens the state directory at path, creating it (0700: what it holds
// is vpnd's business) if it does not exist, and makes sure that vpnd can
// write it.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("state directory %s is not a directory", path)
	}
	// A vpnd that runs as its own user (least privilege) with a directory
	// it may read but not write would start, then fail every setLockdown:
	// find out at start instead. AT_EACCESS asks as the effective uid; a
	// read-only file system (ProtectSystem=strict without StateDirectory=)
	// fails here too.
	if err := unix.Faccessat(unix.AT_FDCWD, path, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
		return nil, fmt.Errorf("state directory %s is not writable by uid %d: %w (lockdown's state is kept there: make it vpnd's own, e.g. systemd's StateDirectory=vpnd)",
			path, os.Geteuid(), err)
	}
	return &Dir{path: path}, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// storedLockdown is the file's form. Users are stored by uid, which is what
// the kernel's rules match; names are kept for people reading the file and
// for status.
type storedLockdown struct {
	Enabled bool         `json:"enabled"`
	Users   []storedUser `json:"users"`
}

type storedUser struct {
	UID  uint32 `json:"uid"`
	Name string `json:"name,omitempty"`
}

// readJSON decodes the file name of d into v, strictly (no unknown
// members). A missing file is found false and no error; what names the
// file in errors.
func (d *Dir) readJSON(name, what string, v any) (found bool, err error) {
	p := filepath.Join(d.path, name)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", what, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return false, fmt.Errorf("%s %s: %w", what, p, err)
	}
	return true, nil
}

// LoadLockdown reads lockdown's state; a missing file is lockdown off.
func (d *Dir) LoadLockdown() (config.Lockdown, error) {
	var l config.Lockdown
	var s storedLockdown
	if found, err := d.readJSON(lockdownFile, "lockdown state", &s); !found || err != nil {
		return l, err
	}
	if s.Enabled && len(s.Users) == 0 {
		return l, fmt.Errorf("lockdown state %s: enabled with no users", filepath.Join(d.path, lockdownFile))
	}
	l.Enabled = s.Enabled
	for _, u := range s.Users {
		l.Users = append(l.Users, config.User{UID: u.UID, Name: u.Name})
	}
	return l, nil
}

// SaveLockdown writes lockdown's state atomically and durably.
func (d *Dir) SaveLockdown(l config.Lockdown) error {
	s := storedLockdown{Enabled: l.Enabled, Users: []storedUser{}}
	for _, u := range l.Users {
		s.Users = append(s.Users, storedUser{UID: u.UID, Name: u.Name})
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(d.path, lockdownFile, append(b, '\n'), 0o600)
}

// writeAtomic replaces dir/name with data.
func writeAtomic(dir, name string, data []byte, mode os.FileMode) error {
	if err := ReplaceFile(filepath.Join(dir, name), data, mode, -1, -1); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// ReplaceFile replaces the file at path with data, atomically and durably:
// a temporary file in the same directory, with mode (and owner uid:gid
// unless they are -1), is written, synced and renamed over path, then the
// directory is synced. Readers see the old file or the new one, never
// half of one, and a crash leaves one of the two. A symbolic link at path
// is replaced, not followed.
func ReplaceFile(path string, data []byte, mode os.FileMode, uid, gid int) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	if dh, err := os.Open(dir); err == nil {
		dh.Sync()
		dh.Close()
	}
	return nil
}
