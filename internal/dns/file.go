package dns

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/state"
)

// maxNameservers is how many nameserver lines resolv.conf honours: glibc
// and musl read the first three (MAXNS) and ignore the rest.
const maxNameservers = 3

// MaxResolvConf is the largest resolv.conf the file backend reads: 64 KiB.
// A resolv.conf is a few hundred bytes: resolvers use three nameservers,
// six search domains in musl (a search line of 256 bytes), ten sortlist
// pairs, and a few options. 64 KiB leaves room for the long comment
// headers that generators write, while a file of hundreds of megabytes (a
// mistake, or a user's attack where that user may write the file) would
// cost vpnd gigabytes and seconds under the manager's lock: such a file is
// refused with an error naming it.
const MaxResolvConf = 64 << 10

// File writes the VPN's DNS settings into a resolv.conf, for hosts where
// no resolver manager owns that file, and puts the previous file back
// when the VPN ends.
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
// directory. The file is read until a read sees it unchanged from start to
// end, and replaced only if it is still the file read (see readResolvConf):
// an editor that truncates the file and then writes it never makes vpnd
// record half a file, or an empty one.
//
// When the VPN ends, a file that is still exactly what vpnd wrote gets the
// previous content back, byte for byte, with the mode and owner it has. A
// file that someone else has edited meanwhile keeps their edits: vpnd
// removes exactly the lines it added and puts back the lines it had
// dropped (see restoredContent), or leaves the file alone if none of its
// lines is left. vpnd never replaces a file that is not empty with an empty
// one. A vpnd killed while a VPN is up restores the file at its next start
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

// replaceFile is state.ReplaceFileIf; tests make it fail.
var replaceFile = state.ReplaceFileIf

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
//   - it is at most MaxResolvConf bytes;
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
	case fi.Size() > MaxResolvConf:
		return nil, fmt.Errorf("--resolv-conf %w", tooLarge(path, fi.Size()))
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
	for try := 1; ; try++ {
		rec, err := f.apply(l, s)
		if errors.Is(err, errChanged) && try < maxReplaceTries {
			backOff(try) // someone wrote the file while vpnd read or replaced it
			continue
		}
		if errors.Is(err, errChanged) {
			return fmt.Errorf("replace %s: it kept changing under vpnd (%d tries)", f.path, try)
		}
		if err != nil {
			return err
		}
		f.pending = rec
		f.log.Info("vpn dns settings written", zap.String("path", f.path), zap.String("ifname", l.Name),
			zap.Stringers("servers", s.Servers), zap.Strings("domains", s.Domains))
		return nil
	}
}

// apply reads, records and replaces the file once; errChanged means that
// the file changed before it was replaced, and nothing was.
func (f *File) apply(l manager.DNSLink, s manager.DNSSettings) (*state.ResolvConf, error) {
	cur, err := readResolvConf(f.path)
	if err != nil {
		return nil, err
	}
	rec := state.ResolvConf{Path: f.path, Mode: 0o644, UID: -1, GID: -1}
	if cur.exists {
		rec.Existed, rec.Original, rec.Mode, rec.UID, rec.GID = true, cur.data, cur.perm, cur.uid, cur.gid
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
		return nil, fmt.Errorf("record %s before replacing it: %w", f.path, err)
	}
	if err := replaceFile(f.path, rec.Written, rec.Mode, rec.UID, rec.GID, cur.unchanged(f.path)); err != nil {
		if cerr := f.st.ClearResolvConf(); cerr != nil {
			f.log.Error("resolv.conf record not removed after a failed write", zap.Error(cerr))
		}
		if errors.Is(err, errChanged) {
			return nil, err
		}
		return nil, fmt.Errorf("replace %s: %w", f.path, err)
	}
	return &rec, nil
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
// file (see File), whichever backend this vpnd uses. rec is the record
// that the state directory holds (nil if none), read at start with
// state.Dir.LoadResolvConf, which refuses a record for another file than
// --resolv-conf or one that vpnd could not have written.
func RestoreLeftover(st *state.Dir, rec *state.ResolvConf, log *zap.Logger) error {
	if rec == nil {
		return nil
	}
	return restore(rec, st, log)
}

// restore puts rec's file back as it was before the VPN, keeping what
// others changed meanwhile (restoredContent), then drops the record. The
// file written gets the mode and owner that the file at rec.Path has now:
// the previous file's, which vpnd gave it, unless someone changed them
// since; never what the record says, so that no record can make vpnd give
// a file to someone or make it setuid. On error the record stays for a
// later try.
func restore(rec *state.ResolvConf, st *state.Dir, log *zap.Logger) error {
	for try := 1; ; try++ {
		err := restoreOnce(rec, log)
		if errors.Is(err, errChanged) && try < maxReplaceTries {
			backOff(try)
			continue
		}
		if errors.Is(err, errChanged) {
			return fmt.Errorf("restore %s: it kept changing under vpnd (%d tries)", rec.Path, try)
		}
		if err != nil {
			return fmt.Errorf("restore %s: %w", rec.Path, err)
		}
		return st.ClearResolvConf()
	}
}

func restoreOnce(rec *state.ResolvConf, log *zap.Logger) error {
	cur, err := readResolvConf(rec.Path)
	switch {
	case errors.Is(err, errChanged):
		return err
	case err != nil:
		// Not a regular file any more, or too large to be vpnd's: the
		// file is someone else's now.
		log.Warn("resolv.conf was changed by someone else while the vpn was up, into something vpnd does not edit; keeping it and dropping vpnd's copy of the older one",
			zap.String("path", rec.Path), zap.NamedError("read", err), zap.ByteString("older", rec.Original))
		return nil
	case !cur.exists && rec.Existed:
		log.Warn("resolv.conf was changed by someone else while the vpn was up: removed; leaving it removed and dropping vpnd's copy of the older one",
			zap.String("path", rec.Path), zap.ByteString("older", rec.Original))
		return nil
	case !cur.exists, rec.Existed && bytes.Equal(cur.data, rec.Original):
		// vpnd stopped before it replaced the file, or someone put the
		// original back already.
		log.Info("resolv.conf is already as it was before the vpn", zap.String("path", rec.Path))
		return nil
	}
	content, mine := restoredContent(rec, cur.data)
	switch {
	case !mine:
		log.Warn("resolv.conf was changed by someone else while the vpn was up, and none of vpnd's lines is left; keeping it and dropping vpnd's copy of the older one",
			zap.String("path", rec.Path), zap.ByteString("older", rec.Original))
		return nil
	case !bytes.Equal(cur.data, rec.Written):
		log.Warn("resolv.conf was changed by someone else while the vpn was up; vpnd removed its own lines and kept the other changes",
			zap.String("path", rec.Path))
	}
	if !rec.Existed && len(bytes.TrimSpace(content)) == 0 {
		// vpnd made the file, and nothing of anyone else's is in it.
		if err := cur.unchanged(rec.Path)(); err != nil {
			return err
		}
		if err := os.Remove(rec.Path); err != nil {
			return err
		}
		log.Info("resolv.conf restored", zap.String("path", rec.Path), zap.Bool("existed", false))
		return nil
	}
	if len(content) == 0 {
		// The previous file was empty. An empty file is also what a
		// truncated read gives, so vpnd never writes one over a file
		// with content: a comment says the same to the resolver.
		content = []byte(emptyStandIn)
	}
	if err := replaceFile(rec.Path, content, cur.perm, cur.uid, cur.gid, cur.unchanged(rec.Path)); err != nil {
		return err
	}
	log.Info("resolv.conf restored", zap.String("path", rec.Path), zap.Bool("existed", rec.Existed))
	return nil
}

// emptyStandIn is what vpnd writes where the previous resolv.conf was
// empty.
const emptyStandIn = "# vpnd: this file was empty before the VPN; this comment stands for the empty file.\n"

// restoredContent is what the file becomes when the VPN ends, given what
// it holds now (cur): vpnd's edit undone, and everyone else's kept.
//
// vpnd's edit turned the previous file into rec.Written: its own lines
// (comments, nameserver and search lines) on top, then the previous
// file's options lines; the previous file's other lines were dropped. If
// cur is still rec.Written, the previous file comes back byte for byte.
// Otherwise vpnd finds Written's lines in cur, in order, each matched
// whole and once (a copy that someone else added stays), removes its own
// lines, and puts the lines it dropped back where they were: those that
// came before the first options line where vpnd's own lines began, each
// other one after the options line it followed (or, if someone removed
// that line, after the one before it). Lines that others added, changed
// or removed stay as they made them.
//
// mine is false when none of vpnd's own lines is left in cur: someone
// rewrote the file, and it is theirs. It is false too for a record that
// is not vpnd's rendering of its original (Written does not end with the
// original's options lines).
func restoredContent(rec *state.ResolvConf, cur []byte) (content []byte, mine bool) {
	if bytes.Equal(cur, rec.Written) {
		return rec.Original, true
	}
	orig, written, now := splitLines(rec.Original), splitLines(rec.Written), splitLines(cur)
	var options []int // the original's options lines, by index
	for i, line := range orig {
		if isOptions(line) {
			options = append(options, i)
		}
	}
	own := len(written) - len(options) // vpnd's own lines come first
	if own < 0 {
		return nil, false
	}
	for k, i := range options {
		if written[own+k] != strings.TrimSpace(orig[i]) {
			return nil, false
		}
	}
	// at[i] is where Written's line i is in cur, matched in order; -1 if
	// it is gone.
	where := map[string][]int{}
	for j, line := range now {
		where[line] = append(where[line], j)
	}
	at := make([]int, len(written))
	removed := make([]bool, len(now))
	next, first := 0, -1 // first: the first of vpnd's own lines left in cur
	for i, line := range written {
		at[i] = -1
		js := where[line]
		if n := sort.SearchInts(js, next); n < len(js) {
			at[i], next = js[n], js[n]+1
		}
		if i < own && at[i] >= 0 {
			removed[at[i]] = true
			if first < 0 {
				first = at[i]
			}
		}
	}
	if first < 0 {
		return nil, false
	}
	// The original's dropped lines: before goes where vpnd's lines began,
	// after[j] after cur's line j.
	var before []string
	after := map[int][]string{}
	passed := -1 // index into options of the last options line passed
	for i, line := range orig {
		if passed+1 < len(options) && options[passed+1] == i {
			passed++
			continue
		}
		k := passed
		for k >= 0 && at[own+k] < 0 {
			k--
		}
		if k < 0 {
			before = append(before, line)
		} else {
			after[at[own+k]] = append(after[at[own+k]], line)
		}
	}
	var b bytes.Buffer
	for j, line := range now {
		if j == first {
			writeLines(&b, before)
		}
		if !removed[j] {
			writeLines(&b, []string{line})
		}
		writeLines(&b, after[j])
	}
	return b.Bytes(), true
}

// splitLines splits b into lines without their "\n".
func splitLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func writeLines(b *bytes.Buffer, lines []string) {
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
}

func isOptions(line string) bool {
	f := strings.Fields(line)
	return len(f) > 0 && f[0] == "options"
}

// maxTries bounds how often vpnd reads a resolv.conf that keeps changing
// under it, and maxReplaceTries how often it reads, records and replaces
// it again because it changed before the rename: then the setUp fails,
// or the restore keeps the file. About a second at most, under the
// manager's lock.
const (
	maxTries        = 20
	maxReplaceTries = 5
)

// errChanged says that the file changed while vpnd read it, or before
// vpnd replaced it.
var errChanged = errors.New("the file changed under vpnd")

// stillEmpty looks at an empty file a few more times, over 50 ms: an
// editor that truncates the file and then writes it leaves it empty for a
// moment, and a file system with timestamps in whole seconds may show the
// next truncation with the same times as the last. errChanged if the file
// is seen changed.
func stillEmpty(path string, id fileID) error {
	for range 5 {
		time.Sleep(10 * time.Millisecond)
		now, err := lstatID(path)
		if err != nil {
			return err
		}
		if now != id {
			return errChanged
		}
	}
	return nil
}

// snapshot is a resolv.conf as read at one moment.
type snapshot struct {
	exists   bool
	data     []byte
	perm     os.FileMode
	uid, gid int
	id       fileID
}

// fileID tells whether a file is still the one read: an editor that
// rewrites it in place changes its size or its times, one that renames a
// new file over it changes the inode.
type fileID struct {
	exists       bool
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

func idOf(st *unix.Stat_t) fileID {
	return fileID{exists: true, dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
}

// lstatID is the identity of what is at path now (exists false if
// nothing).
func lstatID(path string) (fileID, error) {
	var st unix.Stat_t
	err := unix.Lstat(path, &st)
	if errors.Is(err, unix.ENOENT) {
		return fileID{}, nil
	}
	if err != nil {
		return fileID{}, err
	}
	return idOf(&st), nil
}

// unchanged is the check, right before vpnd replaces the file at path,
// that it is still the file s read.
func (s snapshot) unchanged(path string) func() error {
	return func() error {
		id, err := lstatID(path)
		if err != nil {
			return err
		}
		if id != s.id {
			return errChanged
		}
		return nil
	}
}

// readResolvConf reads the resolv.conf at path until one read sees the
// same file, unchanged, from before it opens the file to after it has read
// it, so that a file rewritten in place during the read is read again. An
// empty file is believed only if it is still empty a moment later. A file
// that is not regular (a symbolic link is not followed) or is larger than
// MaxResolvConf is an error.
func readResolvConf(path string) (snapshot, error) {
	for try := 1; ; try++ {
		s, err := readOnce(path)
		if err == nil && s.exists && len(s.data) == 0 {
			err = stillEmpty(path, s.id)
		}
		if !errors.Is(err, errChanged) {
			return s, err
		}
		if try == maxTries {
			// Not errChanged: the callers' own retries would multiply these.
			return snapshot{}, fmt.Errorf("read %s: it kept changing while vpnd read it (%d tries)", path, try)
		}
		backOff(try)
	}
}

// backOff waits a little longer after each try, so that a writer busy
// with the file leaves vpnd a moment to read or replace it: 190 ms at
// most over maxTries.
func backOff(try int) { time.Sleep(time.Duration(try) * time.Millisecond) }

func readOnce(path string) (snapshot, error) {
	before, err := lstatID(path)
	if err != nil {
		return snapshot{}, fmt.Errorf("read %s: %w", path, err)
	}
	if !before.exists {
		return snapshot{}, nil
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return snapshot{}, errChanged
	case errors.Is(err, unix.ELOOP):
		return snapshot{}, fmt.Errorf("%s is no longer a regular file (a symbolic link)", path)
	case err != nil:
		return snapshot{}, fmt.Errorf("read %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return snapshot{}, fmt.Errorf("read %s: %w", path, err)
	}
	if idOf(&st) != before {
		return snapshot{}, errChanged
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return snapshot{}, fmt.Errorf("%s is no longer a regular file", path)
	}
	if st.Size > MaxResolvConf {
		return snapshot{}, tooLarge(path, st.Size)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxResolvConf+1))
	if err != nil {
		return snapshot{}, fmt.Errorf("read %s: %w", path, err)
	}
	after, err := lstatID(path)
	if err != nil {
		return snapshot{}, fmt.Errorf("read %s: %w", path, err)
	}
	if after != before || int64(len(data)) != st.Size {
		return snapshot{}, errChanged
	}
	return snapshot{exists: true, data: data, perm: os.FileMode(st.Mode).Perm(), uid: int(st.Uid), gid: int(st.Gid), id: before}, nil
}

func tooLarge(path string, size int64) error {
	return fmt.Errorf("%s is %d bytes, more than the %d that vpnd reads of a resolv.conf (resolvers use three nameservers and a few short lines)", path, size, MaxResolvConf)
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
