package dns

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/state"
)

// maxNameservers is how many nameserver lines resolv.conf honours: glibc
// and musl read the first three (MAXNS) and ignore the rest.
const maxNameservers = 3

// File writes the VPN's DNS settings into a resolv.conf, for hosts where
// no resolver manager owns that file, and puts the previous file back,
// byte for byte, when the VPN ends.
//
// While a VPN is up the file holds, in this order: a comment naming vpnd,
// a nameserver line for each of the VPN's first three servers, a search
// line with its search domains (if any), and the previous file's options
// lines, which tune the resolver (timeout, attempts, edns0, ...) rather
// than choose servers. The previous nameservers are dropped: glibc falls
// back to them whenever the VPN's servers are slow, which would leak the
// very queries the VPN is meant to carry. The previous search and domain
// lines are dropped too, so that unqualified names are not tried against
// the VPN's servers with the host's local domains. resolv.conf cannot
// route queries by domain, so a split tunnel's servers get every query;
// systemd-resolved can (the resolved backend).
//
// Before the file is replaced, the previous file (or its absence), its
// mode and owner, and what vpnd writes are recorded in the state
// directory. Restoring compares the file with what vpnd wrote: if someone
// else has rewritten it since (a DHCP client, an administrator), their
// newer content is kept, a warning is logged, and the record is dropped.
// A vpnd killed while a VPN is up restores the file at its next start
// (RestoreLeftover).
type File struct {
	path string
	st   *state.Dir
	log  *zap.Logger

	mu sync.Mutex
	// pending is the record of the file vpnd wrote and has not restored
	// yet: set by Apply, cleared once Revert has restored the file. A
	// Revert that failed leaves it for the next Apply (or start) to
	// retry.
	pending *state.ResolvConf
}

var _ manager.DNS = (*File)(nil)

// replaceFile is state.ReplaceFile; tests make it fail.
var replaceFile = state.ReplaceFile

// NewFile returns the file backend for path, after checking what can be
// checked before a VPN needs it:
//   - path is absolute, and there is a regular file at it or none at all;
//   - it is not a symbolic link: vpnd replaces the file by renaming a new
//     one over it, which would replace the link, not its target, and a
//     link (resolved's /etc/resolv.conf -> ../run/systemd/resolve/
//     stub-resolv.conf, resolvconf's ../run/resolvconf/resolv.conf) means
//     that another program manages the file and would rewrite it under
//     vpnd. Use that program's backend (resolved), or point --resolv-conf
//     at a regular file;
//   - it is not a mount point (a container's bind-mounted resolv.conf),
//     which a rename cannot replace;
//   - its directory is writable, for the temporary file and the rename.
func NewFile(path string, st *state.Dir, log *zap.Logger) (*File, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if st == nil {
		return nil, errors.New("the file DNS backend needs a state directory")
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("--resolv-conf %q: not an absolute path", path)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// vpnd creates it while a VPN is up and removes it after.
	case err != nil:
		return nil, fmt.Errorf("--resolv-conf %s: %w", path, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(path)
		return nil, fmt.Errorf("--resolv-conf %s is a symbolic link to %s: another program manages it (for systemd-resolved's stub, use --dns-backend resolved), and vpnd would replace the link, not its target; give --resolv-conf a regular file", path, target)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("--resolv-conf %s is not a regular file (%v)", path, fi.Mode().Type())
	default:
		var sx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, 0, &sx); err == nil &&
			sx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && sx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 {
			return nil, fmt.Errorf("--resolv-conf %s is a mount point (as in a container): vpnd replaces the file by renaming a new one over it, which a mount point refuses", path)
		}
	}
	dir := filepath.Dir(path)
	if err := unix.Faccessat(unix.AT_FDCWD, dir, unix.W_OK, unix.AT_EACCESS); err != nil {
		return nil, fmt.Errorf("--resolv-conf %s: directory %s is not writable: %w", path, dir, err)
	}
	return &File{path: path, st: st, log: log}, nil
}

// Name is "file".
func (f *File) Name() string { return NameFile }

// Apply records the current file, then replaces it.
func (f *File) Apply(l manager.DNSLink, s manager.DNSSettings) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending != nil {
		// An earlier VPN's file could not be restored; its record says
		// what to restore, and must not be overwritten by this one's.
		if err := f.restorePending(); err != nil {
			return fmt.Errorf("an earlier VPN's %s is not restored yet: %w", f.path, err)
		}
	}
	rec := state.ResolvConf{Path: f.path, Mode: 0o644, UID: -1, GID: -1}
	fi, err := os.Lstat(f.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read %s: %w", f.path, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is no longer a regular file (%v)", f.path, fi.Mode().Type())
	default:
		rec.Existed = true
		if rec.Original, err = os.ReadFile(f.path); err != nil {
			return fmt.Errorf("read %s: %w", f.path, err)
		}
		rec.Mode = fi.Mode().Perm()
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			rec.UID, rec.GID = int(sys.Uid), int(sys.Gid)
		}
	}
	var dropped []netip.Addr
	rec.Written, dropped = renderResolvConf(l, s, rec.Original)
	if len(dropped) > 0 {
		f.log.Warn("resolv.conf honours three nameservers; the vpn's others are not written",
			zap.String("path", f.path), zap.Stringers("not_written", dropped))
	}
	// The record first: a crash between the two writes then leaves a
	// record of a file that was never replaced, which the next start
	// recognises and drops.
	if err := f.st.SaveResolvConf(rec); err != nil {
		return fmt.Errorf("record %s before replacing it: %w", f.path, err)
	}
	if err := replaceFile(f.path, rec.Written, rec.Mode, rec.UID, rec.GID); err != nil {
		if cerr := f.st.ClearResolvConf(); cerr != nil {
			f.log.Error("resolv.conf record not removed after a failed write", zap.Error(cerr))
		}
		return fmt.Errorf("replace %s: %w", f.path, err)
	}
	f.pending = &rec
	f.log.Info("vpn dns settings written", zap.String("path", f.path), zap.String("ifname", l.Name),
		zap.Stringers("servers", s.Servers), zap.Strings("domains", s.Domains))
	return nil
}

// Revert puts the previous file back (see restore).
func (f *File) Revert(manager.DNSLink) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending == nil {
		return nil
	}
	return f.restorePending()
}

func (f *File) restorePending() error {
	if err := restore(f.pending, f.st, f.log); err != nil {
		return err
	}
	f.pending = nil
	return nil
}

// RestoreLeftover is part of vpnd's start-up sweep: if a vpnd was killed
// while its file backend had replaced a resolv.conf, it restores that
// file (see File), whichever backend this vpnd uses. It returns the path
// it dealt with, "" if there was nothing to do.
func RestoreLeftover(st *state.Dir, log *zap.Logger) (string, error) {
	rec, err := st.LoadResolvConf()
	if err != nil || rec == nil {
		return "", err
	}
	return rec.Path, restore(rec, st, log)
}

// restore puts rec's original file back at rec.Path, unless the file is no
// longer what vpnd wrote, then drops the record. On error the record stays
// for a later try.
func restore(rec *state.ResolvConf, st *state.Dir, log *zap.Logger) error {
	cur, curErr := readRegular(rec.Path)
	switch {
	case curErr == nil && bytes.Equal(cur, rec.Written):
		var err error
		if rec.Existed {
			err = replaceFile(rec.Path, rec.Original, rec.Mode, rec.UID, rec.GID)
		} else {
			err = os.Remove(rec.Path)
		}
		if err != nil {
			return fmt.Errorf("restore %s: %w", rec.Path, err)
		}
		log.Info("resolv.conf restored", zap.String("path", rec.Path), zap.Bool("existed", rec.Existed))
	case rec.Existed && curErr == nil && bytes.Equal(cur, rec.Original),
		!rec.Existed && errors.Is(curErr, fs.ErrNotExist):
		// vpnd stopped before it replaced the file, or someone put the
		// original back already.
		log.Info("resolv.conf is already as it was before the vpn", zap.String("path", rec.Path))
	default:
		log.Warn("resolv.conf was changed by someone else while the vpn was up; keeping the newer file and dropping vpnd's copy of the older one",
			zap.String("path", rec.Path), zap.NamedError("read", curErr), zap.ByteString("older", rec.Original))
	}
	return st.ClearResolvConf()
}

// readRegular reads path if it is a regular file; a symbolic link or
// anything else counts as a change.
func readRegular(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%v)", path, fi.Mode().Type())
	}
	return os.ReadFile(path)
}

// renderResolvConf returns the resolv.conf for s on link l, keeping the
// options lines of the previous file, and the servers left out.
func renderResolvConf(l manager.DNSLink, s manager.DNSSettings, previous []byte) (_ []byte, dropped []netip.Addr) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by vpnd for the VPN on %s. vpnd puts the previous file back when\n", l.Name)
	b.WriteString("# the VPN ends, unless this file has been changed in the meantime.\n")
	for i, a := range s.Servers {
		if i == maxNameservers {
			dropped = s.Servers[i:]
			break
		}
		ns := a.String()
		// A link-local server is reachable only through the VPN's link,
		// which glibc learns from the zone.
		if a.Is6() && a.IsLinkLocalUnicast() {
			ns += "%" + l.Name
		}
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(s.Domains) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(s.Domains, " "))
	}
	for _, line := range strings.Split(string(previous), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "options" {
			b.WriteString(strings.TrimSpace(line) + "\n")
		}
	}
	return b.Bytes(), dropped
}
