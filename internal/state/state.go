// Package state keeps what must outlive vpnd in its state directory
// (--state-dir, /var/lib/vpnd by default): lockdown's state, so that
// lockdown holds across restarts and a SIGKILL, and the resolv.conf that
// the file DNS backend replaced, so that a vpnd killed while a VPN was up
// puts it back at its next start.
//
// What vpnd reads here decides which users are locked down and which file
// it rewrites as root, so the directory and its files are input, checked
// as a request is: the directory as vpnd's socket directory is (safedir),
// and vpnd's own alone; each file a regular file of vpnd's, read without
// following a symbolic link, at most MaxFileSize bytes, exactly one JSON
// value without unknown members, held to the limits of the methods. One
// vpnd at a time uses a directory: it holds a lock on it for its life.
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
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/safedir"
)

// Dir is a state directory, locked for this process.
type Dir struct {
	path string
	fd   int // O_PATH descriptor of the checked directory
	lock int // the lock file, flock'ed while vpnd runs
}

// The files of a state directory.
const (
	lockdownFile = "lockdown.json"
	// lockFile is flock'ed by the vpnd that uses the directory, and holds
	// its pid, so that a second one can name it.
	lockFile = "lock"
)

// MaxFileSize caps a state file. The largest vpnd writes is a resolv.conf
// record, twice a resolv.conf of at most 64 KiB in base64, under 200 KiB;
// lockdown's 256 users take some 20 KiB.
const MaxFileSize = 1 << 20

// dirSpec is how the state directory is checked: as the socket's
// directory, and vpnd's alone (no group or world write even with the
// sticky bit, since vpnd trusts the names in it). A missing one is created
// 0700: what it holds is vpnd's business.
var dirSpec = safedir.Spec{What: "state directory", Flag: "--state-dir", Program: "vpnd", Mode: 0o700, Private: true}

// InUseError says that another vpnd holds the state directory.
type InUseError struct {
	Path string
	PID  int // 0 if it could not be read
}

func (e *InUseError) Error() string {
	holder := "pid unknown"
	if e.PID > 0 {
		holder = fmt.Sprintf("pid %d", e.PID)
	}
	return fmt.Sprintf("state directory %s is in use by another vpnd (%s): two vpnds sharing one would undo each other's lockdown; give each vpnd a --state-dir of its own (e.g. one per network namespace)", e.Path, holder)
}

// Open opens the state directory at path, creating it if it does not
// exist: it checks the directory (see the package comment), makes sure that
// vpnd can write it, and locks it for this process until Close. A
// directory another vpnd holds is an *InUseError.
func Open(path string) (*Dir, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("state directory %q: %w", path, err)
	}
	fd, err := safedir.Open(abs, dirSpec)
	if err != nil {
		return nil, err
	}
	d := &Dir{path: abs, fd: fd, lock: -1}
	// A vpnd that runs as its own user (least privilege) with a directory
	// it may read but not write would start, then fail every setLockdown:
	// find out at start instead. AT_EACCESS asks as the effective uid; a
	// read-only file system (ProtectSystem=strict without StateDirectory=)
	// fails here too.
	if err := unix.Faccessat(unix.AT_FDCWD, abs, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
		d.Close()
		return nil, fmt.Errorf("state directory %s is not writable by uid %d: %w (lockdown's state is kept there: make it vpnd's own, e.g. systemd's StateDirectory=vpnd)",
			abs, os.Geteuid(), err)
	}
	if err := d.takeLock(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// takeLock locks the directory for this process and writes its pid into
// the lock file. The kernel drops the lock when the process ends, however
// it ends.
func (d *Dir) takeLock() error {
	p := filepath.Join(d.path, lockFile)
	fd, err := unix.Openat(d.fd, lockFile, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("state directory lock %s: %w", p, err)
	}
	d.lock = fd
	if err := checkFile(fd, p); err != nil {
		return err
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		var b [16]byte
		n, _ := unix.Pread(fd, b[:], 0)
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:max(n, 0)])))
		return &InUseError{Path: d.path, PID: pid}
	} else if err != nil {
		return fmt.Errorf("lock state directory %s: %w", d.path, err)
	}
	pid := strconv.Itoa(os.Getpid()) + "\n"
	if err := unix.Ftruncate(fd, 0); err != nil {
		return fmt.Errorf("state directory lock %s: %w", p, err)
	}
	if _, err := unix.Pwrite(fd, []byte(pid), 0); err != nil {
		return fmt.Errorf("state directory lock %s: %w", p, err)
	}
	return nil
}

// Close releases the directory: another vpnd may use it from now on.
func (d *Dir) Close() error {
	if d.lock >= 0 {
		unix.Close(d.lock)
		d.lock = -1
	}
	if d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
	return nil
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

// checkFile refuses a state file that vpnd could not have written: one
// that is not a regular file, or that a user other than root and vpnd's
// own owns or may write.
func checkFile(fd int, p string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return checkStat(&st, p)
}

func checkStat(st *unix.Stat_t, p string) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK:
		return fmt.Errorf("%s is a symbolic link: vpnd does not follow one in its state directory", p)
	default:
		return fmt.Errorf("%s is not a regular file", p)
	}
	if euid := uint32(os.Geteuid()); st.Uid != 0 && st.Uid != euid {
		return fmt.Errorf("%s is owned by uid %d (only root or vpnd's own uid %d may own it)", p, st.Uid, euid)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("%s has mode %04o: group or others may write it", p, st.Mode&0o7777)
	}
	if st.Size > MaxFileSize {
		return fmt.Errorf("%s is larger than %d bytes, more than vpnd ever writes", p, MaxFileSize)
	}
	return nil
}

// readFile reads the state file name: what is not a regular file of
// vpnd's, or is over MaxFileSize, is refused before it is opened (a FIFO
// would block the read, another user's file would be theirs), and no
// symbolic link is followed (the file itself; the directory is checked
// already). A missing file is os.ErrNotExist.
func (d *Dir) readFile(name string) ([]byte, error) {
	p := filepath.Join(d.path, name)
	var st unix.Stat_t
	err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil, os.ErrNotExist
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if err := checkStat(&st, p); err != nil {
		return nil, err
	}
	// O_NOFOLLOW and O_NONBLOCK: what is opened may not be what was
	// checked, if vpnd's own uid swapped it in between; it is checked
	// again, and must not block the start meanwhile.
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, os.ErrNotExist
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("%s is a symbolic link: vpnd does not follow one in its state directory", p)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	if err := checkFile(fd, p); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes, more than vpnd ever writes", p, MaxFileSize)
	}
	return b, nil
}

// readJSON decodes the file name of d into v: exactly one JSON value with
// no unknown members, and nothing but white space after it. A missing
// file is found false and no error; what names the file in errors.
func (d *Dir) readJSON(name, what string, v any) (found bool, err error) {
	b, err := d.readFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	p := filepath.Join(d.path, name)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return false, fmt.Errorf("%s %s: %w", what, p, err)
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("%s %s: data after the JSON value, which ends at offset %d: a state file holds exactly one value", what, p, end)
	}
	return true, nil
}

// LoadLockdown reads lockdown's state; a missing file is lockdown off.
// The stored users are held to setLockdown's rules, by the same code
// (config.ParseLockdown): at most 256, valid uids, none when lockdown is
// off and at least one when it is on. Their names come from the user
// database, as setLockdown's do.
func (d *Dir) LoadLockdown() (config.Lockdown, error) {
	var s storedLockdown
	if found, err := d.readJSON(lockdownFile, "lockdown state", &s); !found || err != nil {
		return config.Lockdown{}, err
	}
	apps := make([]string, len(s.Users))
	for i, u := range s.Users {
		apps[i] = strconv.FormatUint(uint64(u.UID), 10)
	}
	params, err := json.Marshal(struct {
		Enabled      bool     `json:"enabled"`
		Applications []string `json:"applications"`
	}{s.Enabled, apps})
	if err != nil {
		return config.Lockdown{}, err
	}
	l, err := config.ParseLockdown(params, config.SystemUsers())
	if err != nil {
		return config.Lockdown{}, fmt.Errorf("lockdown state %s: its users break setLockdown's rules: %s", filepath.Join(d.path, lockdownFile), detail(err))
	}
	return l, nil
}

// detail is an error's detail without its code, if it has one.
func detail(err error) string {
	var e *errs.Error
	if errors.As(err, &e) && e.Detail != "" {
		return e.Detail
	}
	return err.Error()
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
	return ReplaceFileIf(path, data, mode, uid, gid, nil)
}

// ReplaceFileIf is ReplaceFile that calls unchanged, if not nil, right
// before the rename, when the new file is written and synced, and leaves
// path alone, returning unchanged's error, if it fails: the caller's way to
// make sure that the file it read and means to replace is still the one
// there, as close to the replacement as it can be checked.
func ReplaceFileIf(path string, data []byte, mode os.FileMode, uid, gid int, unchanged func() error) error {
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
	if unchanged != nil {
		if err := unchanged(); err != nil {
			return err
		}
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
