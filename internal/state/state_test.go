package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/config"
)

func open(t *testing.T, dir string) *Dir {
	t.Helper()
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestLockdownRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	d := open(t, dir)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state directory mode %v (%v), want 0700", fi.Mode(), err)
	}
	l, err := d.LoadLockdown()
	if err != nil || l.Enabled || len(l.Users) != 0 {
		t.Fatalf("no file: %+v %v, want lockdown off", l, err)
	}
	// Names come from the user database, as setLockdown's do: root has
	// one, 4000 none.
	want := config.Lockdown{Enabled: true, Users: []config.User{{UID: 0, Name: "root"}, {UID: 4000}}}
	if err := d.SaveLockdown(want); err != nil {
		t.Fatal(err)
	}
	got, err := d.LoadLockdown()
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded %+v %v, want %+v", got, err, want)
	}
	if err := d.SaveLockdown(config.Lockdown{}); err != nil {
		t.Fatal(err)
	}
	if got, err := d.LoadLockdown(); err != nil || got.Enabled {
		t.Fatalf("after off: %+v %v", got, err)
	}
	// Only the file and the lock: no temporary files left behind.
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "lock lockdown.json" {
		t.Fatalf("state directory holds %v", names)
	}
	if fi, _ := os.Stat(filepath.Join(dir, lockdownFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("lockdown file mode %v, want 0600", fi.Mode())
	}
}

// A state file is read as strictly as a request, and held to
// setLockdown's limits; every refusal names the file.
func TestLockdownBadFile(t *testing.T) {
	d := open(t, t.TempDir())
	p := filepath.Join(d.Path(), lockdownFile)
	users := func(n int, first uint64) string {
		var b strings.Builder
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"uid":%d}`, first+uint64(i))
		}
		return `{"enabled":true,"users":[` + b.String() + `]}`
	}
	for _, tc := range []struct{ content, want string }{
		{`{"enabled":true,"users":[]}`, "at least 1 entry required when enabled is true"},
		{`{"enabled":false,"users":[{"uid":5}]}`, "must be empty when enabled is false"},
		{`{"enabled":true,"users":[{"uid":5}],"extra":1}`, `unknown field "extra"`},
		{`not json`, "invalid character"},
		{`{"enabled":false,"users":[]} x`, "data after the JSON value"},
		{`{"enabled":false,"users":[]}{"enabled":true,"users":[{"uid":5}]}`, "data after the JSON value"},
		{users(257, 1000), "257 entries, at most 256"},
		{users(1, 4294967295), "uid 4294967295 out of range 0-4294967294"},
		{users(1, 4294967296), "cannot unmarshal number 4294967296"},
		{`{"enabled":false,"users":[]}` + strings.Repeat(" ", MaxFileSize), fmt.Sprintf("is larger than %d bytes", MaxFileSize)},
	} {
		os.WriteFile(p, []byte(tc.content), 0o600)
		_, err := d.LoadLockdown()
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.60s: %v, want an error naming %s saying %q", tc.content, err, p, tc.want)
		}
	}
	if got, err := (func() (config.Lockdown, error) {
		os.WriteFile(p, []byte(users(256, 1000)+"\n  \n"), 0o600)
		return d.LoadLockdown()
	})(); err != nil || len(got.Users) != 256 {
		t.Errorf("256 users and trailing white space: %d users, %v", len(got.Users), err)
	}
}

// What is not a regular file of vpnd's alone is refused before it is
// read: a FIFO does not block, a symbolic link is not followed.
func TestStateFileKinds(t *testing.T) {
	d := open(t, t.TempDir())
	p := filepath.Join(d.Path(), lockdownFile)
	target := filepath.Join(t.TempDir(), "elsewhere.json")
	os.WriteFile(target, []byte(`{"enabled":false,"users":[]}`), 0o600)
	for _, tc := range []struct {
		name  string
		plant func() error
		want  string
	}{
		{"symbolic link", func() error { return os.Symlink(target, p) }, "is a symbolic link"},
		{"FIFO", func() error { return unix.Mkfifo(p, 0o600) }, "is not a regular file"},
		{"directory", func() error { return os.Mkdir(p, 0o700) }, "is not a regular file"},
		{"writable by others", func() error {
			if err := os.WriteFile(p, []byte(`{"enabled":false,"users":[]}`), 0o600); err != nil {
				return err
			}
			return os.Chmod(p, 0o646)
		}, "has mode 0646: group or others may write it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(p)
			if err := tc.plant(); err != nil {
				t.Fatal(err)
			}
			_, err := d.LoadLockdown()
			if err == nil || !strings.Contains(err.Error(), p+" "+tc.want) {
				t.Errorf("%v, want %q", err, p+" "+tc.want)
			}
		})
	}
	if os.Geteuid() == 0 {
		os.RemoveAll(p)
		os.WriteFile(p, []byte(`{"enabled":false,"users":[]}`), 0o600)
		os.Chown(p, 4000, 4000)
		if _, err := d.LoadLockdown(); err == nil || !strings.Contains(err.Error(), p+" is owned by uid 4000") {
			t.Errorf("a file of uid 4000: %v", err)
		}
	}
}

// One process at a time holds a state directory; the second is told who
// holds it. Close frees it.
func TestOpenLocks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	d := open(t, dir)
	// flock locks belong to the open file description: a second Open in
	// this process conflicts as a second vpnd would.
	_, err := Open(dir)
	var inUse *InUseError
	if !errors.As(err, &inUse) || inUse.PID != os.Getpid() || !strings.Contains(err.Error(), fmt.Sprintf("state directory %s is in use by another vpnd (pid %d)", dir, os.Getpid())) {
		t.Fatalf("second Open: %v", err)
	}
	d.Close()
	d2, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	d2.Close()
}

// The directory is checked as the socket's is, and must be vpnd's alone.
func TestOpenRefusesUnsafeDirectory(t *testing.T) {
	base := t.TempDir()
	shared := filepath.Join(base, "shared")
	os.Mkdir(shared, 0o700)
	os.Chmod(shared, os.ModeSticky|0o777)
	if _, err := Open(shared); err == nil || !strings.Contains(err.Error(), "unsafe state directory: "+shared+" has mode 1777") {
		t.Errorf("a sticky world-writable directory: %v", err)
	}
	d, err := Open(filepath.Join(shared, "state"))
	if err != nil {
		t.Fatalf("a directory of its own under a sticky one: %v", err)
	}
	d.Close()
	link := filepath.Join(base, "link")
	os.Symlink(filepath.Join(shared, "state"), link)
	if _, err := Open(link); err == nil || !strings.Contains(err.Error(), link+" is a symbolic link") {
		t.Errorf("a symbolic link: %v", err)
	}
}

func TestResolvConfRecord(t *testing.T) {
	d := open(t, t.TempDir())
	const path = "/etc/resolv.conf"
	if r, err := d.LoadResolvConf(path); r != nil || err != nil {
		t.Fatalf("no record: %+v %v", r, err)
	}
	want := ResolvConf{Path: path, Existed: true, Original: []byte("nameserver 192.0.2.1\n\x00\xff"), Mode: 0o644, UID: 0, GID: 0, Written: []byte("nameserver 10.8.0.1\n")}
	if err := d.SaveResolvConf(want); err != nil {
		t.Fatal(err)
	}
	got, err := d.LoadResolvConf(path)
	if err != nil || !reflect.DeepEqual(*got, want) {
		t.Fatalf("loaded %+v %v, want %+v", got, err, want)
	}
	if fi, _ := os.Stat(filepath.Join(d.Path(), resolvConfFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v, want 0600", fi.Mode())
	}
	if err := d.ClearResolvConf(); err != nil {
		t.Fatal(err)
	}
	if err := d.ClearResolvConf(); err != nil {
		t.Fatalf("second clear: %v", err)
	}
	if r, err := d.LoadResolvConf(path); r != nil || err != nil {
		t.Fatalf("after clear: %+v %v", r, err)
	}
	rec := filepath.Join(d.Path(), resolvConfFile)
	for _, tc := range []struct{ bad, want string }{
		{`{"path":"relative","existed":false}`, `it is for "relative", and --resolv-conf is /etc/resolv.conf`},
		{`{"path":"/tmp/x","existed":false}`, `it is for "/tmp/x", and --resolv-conf is /etc/resolv.conf`},
		{`{"path":"/etc/resolv.conf","extra":1}`, `unknown field "extra"`},
		{`[]`, "cannot unmarshal array"},
		{`{"path":"/etc/resolv.conf","mode":8389101}`, "mode urwxr-xr-x is not permission bits only"},
		{`{"path":"/etc/resolv.conf","mode":2147484141}`, "is not permission bits only"},
		{`{"path":"/etc/resolv.conf","mode":420,"uid":-2,"gid":0}`, "owner -2:0 is not a uid and gid"},
		{`{"path":"/etc/resolv.conf","mode":420,"uid":0,"gid":4294967295}`, "owner 0:4294967295 is not a uid and gid"},
		{`{"path":"/etc/resolv.conf"}{"path":"/tmp/x"}`, "data after the JSON value"},
	} {
		os.WriteFile(rec, []byte(tc.bad), 0o600)
		if _, err := d.LoadResolvConf(path); err == nil || !strings.Contains(err.Error(), rec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.bad, err, tc.want)
		}
	}
}

// ReplaceFile replaces a symbolic link rather than writing through it,
// sets the mode whatever the umask, and leaves no temporary file.
func TestReplaceFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("target"), 0o644)
	p := filepath.Join(dir, "file")
	os.Symlink(target, p)
	if err := ReplaceFile(p, []byte("new"), 0o640, -1, -1); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "target" {
		t.Errorf("wrote through the link: %q", b)
	}
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o640 {
		t.Fatalf("replaced file: %v %v", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Errorf("content %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("directory holds %v", ents)
	}
	if err := ReplaceFile(filepath.Join(dir, "missing", "file"), nil, 0o644, -1, -1); err == nil {
		t.Error("ReplaceFile in a missing directory succeeded")
	}
	// A failed check before the rename leaves the file and no temporary.
	refused := errors.New("changed")
	if err := ReplaceFileIf(p, []byte("newer"), 0o640, -1, -1, func() error { return refused }); !errors.Is(err, refused) {
		t.Errorf("ReplaceFileIf: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Errorf("content after a refused replacement: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("directory holds %v", ents)
	}
}
