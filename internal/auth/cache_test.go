package auth

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeDB is a user database the cache sits in front of: its answers and
// the files that stand for /etc/passwd and /etc/group.
type fakeDB struct {
	mu      sync.Mutex
	lookups int
	groups  []uint32
	err     error
}

func (f *fakeDB) lookup(uid, gid uint32) (Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	return Identity{UID: uid, GID: gid, User: "alice", Groups: append([]uint32{gid}, f.groups...)}, f.err
}

func (f *fakeDB) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookups
}

// testCache returns a cache over db with a clock the test moves, watching
// two files in a temp dir (and one that does not exist).
func testCache(t *testing.T, db *fakeDB) (c *IdentityCache, now *time.Time, passwd, group, absent string) {
	dir := t.TempDir()
	passwd, group, absent = filepath.Join(dir, "passwd"), filepath.Join(dir, "group"), filepath.Join(dir, "userdb")
	for _, p := range []string{passwd, group} {
		if err := os.WriteFile(p, []byte("root:x:0:\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	clock := time.Unix(1000, 0)
	c = NewIdentityCache()
	c.lookup = db.lookup
	c.now = func() time.Time { return clock }
	c.paths = []string{passwd, group, absent}
	return c, &clock, passwd, group, absent
}

func TestIdentityCacheHit(t *testing.T) {
	db := &fakeDB{groups: []uint32{10}}
	c, now, _, _, _ := testCache(t, db)
	for i := 0; i < 5; i++ {
		id, err := c.Lookup(1000, 1000)
		if err != nil || id.User != "alice" || len(id.Groups) != 2 {
			t.Fatalf("lookup %d: %+v %v", i, id, err)
		}
		id.Groups[0] = 7 // the caller's copy: the cache is not changed
		*now = now.Add(time.Second)
	}
	if n := db.count(); n != 1 {
		t.Fatalf("%d database lookups for 5 calls, want 1", n)
	}
	if id, _ := c.Lookup(1000, 1000); id.Groups[0] != 1000 {
		t.Fatal("a caller's change reached the cache")
	}
	// Another gid is another caller.
	c.Lookup(1000, 1001)
	if n := db.count(); n != 2 {
		t.Fatalf("%d lookups, want 2: the key is uid and gid", n)
	}
}

// An edit of /etc/group (here: a new file renamed over it, as tools do,
// or written in place) applies to the next lookup once the check
// interval has passed.
func TestIdentityCacheInvalidation(t *testing.T) {
	db := &fakeDB{}
	c, now, passwd, group, absent := testCache(t, db)
	c.Lookup(1000, 1000)
	for _, tc := range []struct {
		name string
		edit func()
	}{
		{"group replaced", func() {
			tmp := group + ".new"
			os.WriteFile(tmp, []byte("root:x:0:\nguests:x:100:alice\n"), 0o644)
			os.Rename(tmp, group)
		}},
		{"passwd appended", func() {
			f, _ := os.OpenFile(passwd, os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString("alice:x:1000:1000::/:/bin/sh\n")
			f.Close()
		}},
		{"same size, new mtime", func() {
			later := time.Now().Add(time.Hour)
			os.Chtimes(passwd, later, later)
		}},
		{"userdb directory appears", func() { os.Mkdir(absent, 0o755) }},
	} {
		before := db.count()
		tc.edit()
		// Within the check interval the cache still answers...
		*now = now.Add(c.checkEvery / 2)
		c.Lookup(1000, 1000)
		if db.count() != before {
			t.Fatalf("%s: the cache looked at the files before its check interval", tc.name)
		}
		// ...after it, the change is seen.
		*now = now.Add(c.checkEvery)
		c.Lookup(1000, 1000)
		if db.count() != before+1 {
			t.Fatalf("%s: not seen: %d lookups, want %d", tc.name, db.count(), before+1)
		}
		// And cached again from then on.
		*now = now.Add(c.checkEvery)
		c.Lookup(1000, 1000)
		if db.count() != before+1 {
			t.Fatalf("%s: not cached again", tc.name)
		}
	}
}

// Entries expire after maxAge even with no file change (NSS sources that
// no file shows); errors are never cached.
func TestIdentityCacheAgeAndErrors(t *testing.T) {
	db := &fakeDB{}
	c, now, _, _, _ := testCache(t, db)
	c.Lookup(1, 1)
	*now = now.Add(c.maxAge + time.Second)
	c.Lookup(1, 1)
	if db.count() != 2 {
		t.Fatalf("%d lookups, want 2: the entry outlived maxAge", db.count())
	}
	db.err = errors.New("nss down")
	for i := 0; i < 2; i++ {
		if _, err := c.Lookup(2, 2); err == nil {
			t.Fatal("error lost")
		}
	}
	if db.count() != 4 {
		t.Fatalf("%d lookups, want 4: an error was cached", db.count())
	}
}

// A change seen while a lookup runs keeps that lookup's answer out of the
// cache: it may come from the old database.
func TestIdentityCacheChangeDuringLookup(t *testing.T) {
	db := &fakeDB{}
	c, now, _, group, _ := testCache(t, db)
	inner := c.lookup
	c.lookup = func(uid, gid uint32) (Identity, error) {
		id, err := inner(uid, gid)
		if db.count() == 1 {
			// Another caller notices an edit while this lookup runs.
			os.WriteFile(group, []byte("changed\n"), 0o644)
			*now = now.Add(2 * c.checkEvery)
			c.mu.Lock()
			c.checkLocked(*now)
			c.mu.Unlock()
		}
		return id, err
	}
	c.Lookup(1000, 1000)
	c.Lookup(1000, 1000)
	if db.count() != 2 {
		t.Fatalf("%d lookups, want 2", db.count())
	}
}

// The real database: the cache gives what LookupIdentity gives.
func TestIdentityCacheSystem(t *testing.T) {
	want, werr := LookupIdentity(0, 0)
	got, gerr := NewIdentityCache().Lookup(0, 0)
	if (werr == nil) != (gerr == nil) || got.User != want.User || len(got.Groups) != len(want.Groups) {
		t.Fatalf("cache %+v %v, direct %+v %v", got, gerr, want, werr)
	}
}

// BenchmarkLookupIdentity compares a lookup through NSS with one through
// the cache, for a uid without a passwd entry (nss-systemd then walks its
// userdb directories).
func BenchmarkLookupIdentity(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			LookupIdentity(4000, 4000)
		}
	})
	b.Run("cached", func(b *testing.B) {
		c := NewIdentityCache()
		for b.Loop() {
			c.Lookup(4000, 4000)
		}
	})
}
