package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/ownership"
	"github.com/vpnd/vpnd/internal/safedir"
)

// SocketMode is the socket file's mode: anyone may connect, because access
// is decided per call from the caller's peer credentials, not by the file.
const SocketMode = 0o666

// DirMode is the mode of each directory that Listen creates on the way to
// the socket, whatever the umask: every user must be able to reach the
// socket.
const DirMode = 0o755

// UnsafeDirError says why Listen refused a directory on the socket's path.
type UnsafeDirError = safedir.UnsafeError

// InUseError says that a live process already serves on the socket path:
// another vpnd, perhaps in another network namespace.
type InUseError struct {
	Path   string
	Holder ownership.Process
	Err    error // why the holder could not be identified, if it could not
}

func (e *InUseError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: a live process already serves on it (not identified: %v)", e.Path, e.Err)
	}
	return fmt.Sprintf("%s: already served by %s", e.Path, e.Holder)
}

// Listen opens vpnd's socket at path.
//
// vpnd runs as root and makes the socket world-connectable, so the path to
// it must be one that no other user can redirect. Listen walks it from "/"
// one directory at a time, without following symbolic links, and refuses a
// directory (the socket's own or one on the way to it) that is a symbolic
// link, that is owned by a uid other than root and vpnd's own effective
// uid, or that group or others may write without the sticky bit. A missing
// directory is created with mode 0755 exactly, whatever the umask, and an
// existing one keeps its mode.
//
// An existing socket file is probed: if a live process answers, Listen
// refuses and names it (it may be a vpnd in another network namespace);
// otherwise the stale file is replaced. The new socket file is created by
// bind with mode 0666 directly: no chmod by path follows, which a swapped-in
// symbolic link could redirect.
//
// Closing the listener does not remove the file: the caller removes it on
// a clean shutdown, and a failed start must not remove another vpnd's
// socket.
func Listen(path string) (*net.UnixListener, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("socket path %q: %w", path, err)
	}
	dir, name := filepath.Split(abs)
	if name == "" {
		return nil, fmt.Errorf("socket path %q names a directory", path)
	}
	dirfd, err := safedir.Open(filepath.Clean(dir), socketDir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dirfd)
	if err := removeStale(dirfd, abs, name); err != nil {
		return nil, err
	}
	return bindSocket(dirfd, abs, name)
}

// socketDir is how Listen checks and creates the socket's directory.
var socketDir = safedir.Spec{What: "socket directory", Flag: "--socket", Program: "vpnd", Mode: DirMode}

// removeStale removes a socket file that no one serves on, and refuses a
// path that something else occupies.
func removeStale(dirfd int, path, name string) error {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	// The directory is safe, so the path still leads to the file just seen.
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		holder, err := ownership.PeerProcess(c.(*net.UnixConn))
		c.Close()
		return &InUseError{Path: path, Holder: holder, Err: err}
	}
	if !errors.Is(err, unix.ECONNREFUSED) {
		return fmt.Errorf("probe existing socket %s: %w", path, err)
	}
	if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// bindSocket creates the listening socket file with mode SocketMode.
// Linux creates the file at bind with the socket inode's mode less the
// umask, so the mode is set on the socket and the umask cleared: no chmod
// by path follows.
func bindSocket(dirfd int, path, name string) (*net.UnixListener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // net.FileListener dups it
	if err := unix.Fchmod(fd, SocketMode); err != nil {
		return nil, fmt.Errorf("fchmod socket: %w", err)
	}
	sa := &unix.SockaddrUnix{Name: path}
	if err := safedir.WithoutUmask(func() error { return unix.Bind(fd, sa) }); err != nil {
		return nil, fmt.Errorf("bind %s: %w", path, err)
	}
	ln, err := func() (net.Listener, error) {
		if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", path, err)
		}
		return net.FileListener(f)
	}()
	if err != nil {
		unix.Unlinkat(dirfd, name, 0) // the file bind just made
		return nil, err
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	return ul, nil
}
