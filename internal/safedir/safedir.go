// Package safedir opens a directory that no user but root and the calling
// process's own may change: the directory of vpnd's socket, vpnd's state
// directory, and vpnd-wg's UAPI directory.
//
// A privileged program that makes a file world-connectable, or trusts what
// it finds in a file, must know that nobody else could have put the file
// there or could redirect the path to another one. Whoever may rename or
// replace a directory's entries, on the way to it or in it, can do both.
// Open walks the path from "/" one directory at a time, without following
// symbolic links, and refuses a directory that:
//   - is a symbolic link;
//   - is owned by a uid other than root and the process's effective uid;
//   - group or others may write, unless it has the sticky bit (like /tmp:
//     others cannot rename or remove what is not theirs). With
//     Spec.Private the directory itself is refused even then: in a sticky
//     directory others may still create names that the program would
//     then read as its own.
package safedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Spec says what the directory is for and how to make it.
type Spec struct {
	// What names the directory in errors: "socket directory".
	What string
	// Flag is the option that gave the path ("--socket"), for the hint
	// that comes with a symbolic link.
	Flag string
	// Program names the process in errors about owners ("vpnd").
	Program string
	// Mode is the mode of each missing directory that Open creates,
	// whatever the umask. An existing directory keeps its mode.
	Mode os.FileMode
	// Private refuses a directory that group or others may write even
	// when it is sticky; it applies to the directory itself, not to the
	// directories on the way to it.
	Private bool
	// NoCreate makes a missing directory an error (os.ErrNotExist)
	// instead of creating it.
	NoCreate bool
}

// UnsafeError says why Open refused a directory on the path.
type UnsafeError struct {
	What   string // Spec.What
	Path   string // the directory refused: the one asked for or one on the way to it
	Reason string
}

func (e *UnsafeError) Error() string {
	return fmt.Sprintf("unsafe %s: %s %s", e.What, e.Path, e.Reason)
}

// Open walks the absolute path dir from the root, creating what is
// missing with s.Mode, checks every directory on the way (see the package
// comment), and returns an O_PATH descriptor of dir, for the *at system
// calls. The caller closes it.
func Open(dir string, s Spec) (int, error) {
	if !filepath.IsAbs(dir) {
		return -1, fmt.Errorf("%s %q: not an absolute path", s.What, dir)
	}
	dir = filepath.Clean(dir)
	euid := uint32(os.Geteuid())
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /: %w", err)
	}
	last := dir == "/"
	if err := s.check(fd, "/", euid, last); err != nil {
		unix.Close(fd)
		return -1, err
	}
	cur := "/"
	names := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	for i, name := range names {
		if name == "" {
			continue // dir is "/"
		}
		cur = filepath.Join(cur, name)
		next, err := s.openAt(fd, cur, name)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
		if err := s.check(fd, cur, euid, i == len(names)-1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// openAt opens parent's entry name, a directory, without following a
// symbolic link, and creates it if it is missing.
func (s Spec) openAt(parent int, path, name string) (int, error) {
	const flags = unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(parent, name, unix.O_PATH|flags, 0)
	if errors.Is(err, unix.ENOENT) && s.NoCreate {
		return -1, fmt.Errorf("%s %s: %w", s.What, path, os.ErrNotExist)
	}
	if errors.Is(err, unix.ENOENT) {
		// With a umask of 0 the mode is s.Mode from the start; a chmod
		// afterwards would need a descriptor that a umask such as 0377
		// keeps a non-root process from opening.
		mkErr := WithoutUmask(func() error { return unix.Mkdirat(parent, name, uint32(s.Mode.Perm())) })
		if mkErr != nil && !errors.Is(mkErr, unix.EEXIST) {
			return -1, fmt.Errorf("create %s %s: %w", s.What, path, mkErr)
		}
		// EEXIST: someone else was faster; it is judged like any directory.
		fd, err = unix.Openat(parent, name, unix.O_PATH|flags, 0)
	}
	if errors.Is(err, unix.ENOTDIR) {
		// O_NOFOLLOW|O_DIRECTORY on a symbolic link fails with ENOTDIR too.
		var st unix.Stat_t
		if unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return -1, &UnsafeError{s.What, path, fmt.Sprintf("is a symbolic link (give %s a path without symbolic links)", s.Flag)}
		}
		return -1, &UnsafeError{s.What, path, "is not a directory"}
	}
	if err != nil {
		return -1, fmt.Errorf("open %s %s: %w", s.What, path, err)
	}
	return fd, nil
}

// check refuses a directory that a user other than root or the process's
// own could change; last is the directory asked for, not one on the way.
func (s Spec) check(fd int, path string, euid uint32, last bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s %s: %w", s.What, path, err)
	}
	if st.Uid != 0 && st.Uid != euid {
		return &UnsafeError{s.What, path, fmt.Sprintf("is owned by uid %d (only root or %s's own uid %d may own it)", st.Uid, s.Program, euid)}
	}
	if st.Mode&0o022 == 0 {
		return nil
	}
	if last && s.Private {
		return &UnsafeError{s.What, path, fmt.Sprintf("has mode %04o: group or others may write it (it must be %s's alone)", st.Mode&0o7777, s.Program)}
	}
	if st.Mode&unix.S_ISVTX == 0 {
		return &UnsafeError{s.What, path, fmt.Sprintf("has mode %04o: group or others may write it, and it has no sticky bit", st.Mode&0o7777)}
	}
	return nil
}

// WithoutUmask runs f with a umask of 0, so that the files f creates get
// exactly the modes it asks for. The umask is shared by every thread of the
// process, and clearing it even briefly could widen a file that another
// goroutine creates at that moment. So f runs on a thread of its own that
// first unshares its file-system attributes (CLONE_FS): the umask it clears
// is that thread's alone. The goroutine exits without unlocking the thread,
// so the runtime ends the thread instead of reusing it.
func WithoutUmask(f func() error) error {
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
