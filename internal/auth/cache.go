package auth

import (
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// userDBPaths are what the C library reads to answer user and group
// lookups here: the files, the NSS configuration, and the directories of
// systemd's userdb records (nss-systemd reads one file per user there).
// A change to any of them (its modification or change time, size or
// inode: an editor that writes a new file and renames it changes the
// inode) empties the cache. A path that does not exist is fine; its
// appearing is a change too.
var userDBPaths = []string{
	"/etc/passwd",
	"/etc/group",
	"/etc/nsswitch.conf",
	"/etc/userdb",
	"/run/userdb",
	"/run/host/userdb",
	"/usr/local/lib/userdb",
	"/usr/lib/userdb",
	"/run/systemd/userdb",
}

const (
	// identityCheckEvery is how often at most the cache stats
	// userDBPaths. A change to the databases applies to lookups from
	// that long after it on, at the latest.
	identityCheckEvery = 250 * time.Millisecond
	// identityMaxAge bounds how long an entry is used, for NSS sources no
	// file shows a change of (LDAP, sssd, systemd's dynamic users).
	identityMaxAge = 30 * time.Second
	// identityMaxEntries bounds the cache; it is emptied when full.
	identityMaxEntries = 4096
)

// IdentityCache remembers LookupIdentity's answers, keyed by uid and gid.
// A lookup walks NSS (on a systemd host, dozens of opens of userdb
// directories for a uid without a passwd entry: about 180 µs), and vpnd
// needs one at every setUp, destroy and protect, and at the connection
// limits.
//
// The cache is emptied when the user or group database changes, checked
// at most every identityCheckEvery by stat(2) of the files and
// directories the C library reads, and an entry is used for at most
// identityMaxAge. Errors are not cached: a database that could not be
// read is asked again at the next lookup.
type IdentityCache struct {
	lookup     func(uid, gid uint32) (Identity, error)
	now        func() time.Time
	paths      []string
	checkEvery time.Duration
	maxAge     time.Duration

	mu        sync.Mutex
	entries   map[identityKey]identityEntry
	gen       uint64 // counts the times the databases changed
	stamp     []fileStamp
	checkedAt time.Time
}

type identityKey struct{ uid, gid uint32 }

type identityEntry struct {
	id Identity
	at time.Time
}

// fileStamp is what stat says of a path; the zero value means absent.
type fileStamp struct {
	exists       bool
	dev, ino     uint64
	size         int64
	mtime, ctime syscall.Timespec
}

// NewIdentityCache returns an empty cache in front of LookupIdentity.
func NewIdentityCache() *IdentityCache {
	return &IdentityCache{
		lookup:     LookupIdentity,
		now:        time.Now,
		paths:      userDBPaths,
		checkEvery: identityCheckEvery,
		maxAge:     identityMaxAge,
	}
}

// Lookup is LookupIdentity through the cache, with the same results. The
// Identity returned is the caller's to keep.
func (c *IdentityCache) Lookup(uid, gid uint32) (Identity, error) {
	key := identityKey{uid, gid}
	now := c.now()
	c.mu.Lock()
	c.checkLocked(now)
	e, ok := c.entries[key]
	gen := c.gen
	c.mu.Unlock()
	if ok && now.Sub(e.at) < c.maxAge {
		return e.id.clone(), nil
	}

	// The lookup runs without the lock: it may take long (a remote NSS
	// source), and other callers must not wait for it.
	id, err := c.lookup(uid, gid)
	if err != nil {
		return id, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// A change seen while this lookup ran may mean it read the old
	// database: the answer is for this call only.
	if c.gen != gen {
		return id, nil
	}
	if c.entries == nil || len(c.entries) >= identityMaxEntries {
		c.entries = make(map[identityKey]identityEntry)
	}
	c.entries[key] = identityEntry{id: id.clone(), at: now}
	return id, nil
}

// checkLocked empties the cache if the databases changed since the last
// check, looking at most every checkEvery.
func (c *IdentityCache) checkLocked(now time.Time) {
	if !c.checkedAt.IsZero() && now.Sub(c.checkedAt) < c.checkEvery && !now.Before(c.checkedAt) {
		return
	}
	c.checkedAt = now
	stamp := make([]fileStamp, len(c.paths))
	for i, p := range c.paths {
		stamp[i] = statStamp(p)
	}
	if !slices.Equal(stamp, c.stamp) {
		c.stamp = stamp
		c.entries = nil
		c.gen++
	}
}

func statStamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStamp{exists: true, size: fi.Size(), mtime: syscall.NsecToTimespec(fi.ModTime().UnixNano())}
	}
	return fileStamp{
		exists: true,
		dev:    uint64(st.Dev),
		ino:    st.Ino,
		size:   st.Size,
		mtime:  st.Mtim,
		ctime:  st.Ctim,
	}
}

func (id Identity) clone() Identity {
	id.Groups = slices.Clone(id.Groups)
	id.GroupNames = slices.Clone(id.GroupNames)
	return id
}
