package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/ownership"
)

// SocketMode is the socket file's mode: anyone may connect, because access
// is decided per call from the caller's peer credentials, not by the file.
const SocketMode = 0o666

// DirMode is the mode of each directory that Listen creates on the way to
// the socket, whatever the umask: every user must be able to reach the
// socket.
const DirMode = 0o755

// UnsafeDirError says why Listen refused a directory on the socket's path.
type UnsafeDirError struct {
	Path   string // the directory refused: the socket's or one on the way to it
	Reason string
}

func (e *UnsafeDirError) Error() string {
	return fmt.Sprintf("unsafe socket directory: %s %s", e.Path, e.Reason)
}

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
	dirfd, err := openSocketDir(filepath.Clean(dir))
	if err != nil {
		return nil, err
	}
	defer unix.Close(dirfd)
	if err := removeStale(dirfd, abs, name); err != nil {
		return nil, err
	}
	return bindSocket(dirfd, abs, name)
}

// openSocketDir walks dir from the root, creating what is missing, and
// returns an fd of the checked directory.
func openSocketDir(dir string) (int, error) {
	euid := uint32(os.Geteuid())
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /: %w", err)
	}
	if err := checkDir(fd, "/", euid); err != nil {
		unix.Close(fd)
		return -1, err
	}
	cur := "/"
	for name := range strings.SplitSeq(strings.TrimPrefix(dir, "/"), "/") {
		if name == "" {
			continue // dir is "/"
		}
		cur = filepath.Join(cur, name)
		next, err := openDirAt(fd, cur, name)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
		if err := checkDir(fd, cur, euid); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// openDirAt opens parent's entry name, a directory, without following a
// symbolic link, and creates it if it is missing.
func openDirAt(parent int, path, name string) (int, error) {
	const flags = unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(parent, name, unix.O_PATH|flags, 0)
	if errors.Is(err, unix.ENOENT) {
		// With a umask of 0 the mode is DirMode from the start; a chmod
		// afterwards would need a descriptor that a umask such as 0377
		// keeps vpnd from opening unless it runs as root.
		mkErr := withoutUmask(func() error { return unix.Mkdirat(parent, name, DirMode) })
		if mkErr != nil && !errors.Is(mkErr, unix.EEXIST) {
			return -1, fmt.Errorf("create socket directory %s: %w", path, mkErr)
		}
		// EEXIST: someone else was faster; it is judged like any directory.
		fd, err = unix.Openat(parent, name, unix.O_PATH|flags, 0)
	}
	if errors.Is(err, unix.ENOTDIR) {
		// O_NOFOLLOW|O_DIRECTORY on a symbolic link fails with ENOTDIR too.
		var st unix.Stat_t
		if unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return -1, &UnsafeDirError{path, "is a symbolic link (give --socket a path without symbolic links)"}
		}
		return -1, &UnsafeDirError{path, "is not a directory"}
	}
	if err != nil {
		return -1, fmt.Errorf("open socket directory %s: %w", path, err)
	}
	return fd, nil
}

// checkDir refuses a directory that a user other than root or vpnd's own
// could change: whoever may rename or replace its entries could point the
// socket, or the file vpnd makes world-writable, elsewhere.
func checkDir(fd int, path string, euid uint32) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat socket directory %s: %w", path, err)
	}
	if st.Uid != 0 && st.Uid != euid {
		return &UnsafeDirError{path, fmt.Sprintf("is owned by uid %d (only root or vpnd's own uid %d may own it)", st.Uid, euid)}
	}
	if st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
		return &UnsafeDirError{path, fmt.Sprintf("has mode %04o: group or others may write it, and it has no sticky bit", st.Mode&0o7777)}
	}
	return nil
}

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
	if err := withoutUmask(func() error { return unix.Bind(fd, sa) }); err != nil {
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

// withoutUmask runs f with a umask of 0, so that the files f creates get
// exactly the modes it asks for. The umask is shared by every thread of the
// process, and clearing it even briefly could widen a file that another
// goroutine creates at that moment. So f runs on a thread of its own that
// first unshares its file-system attributes (CLONE_FS): the umask it clears
// is that thread's alone. The goroutine exits without unlocking the thread,
// so the runtime ends the thread instead of reusing it.
func withoutUmask(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare CLONE_FS: %w", err)
			return
		}
		unix.Umask(0)
		errc <- f()
	}()
	return <-errc
}
