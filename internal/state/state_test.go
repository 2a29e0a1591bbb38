package state

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/vpnd/vpnd/internal/config"
)

func TestLockdownRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state directory mode %v (%v), want 0700", fi.Mode(), err)
	}
	l, err := d.LoadLockdown()
	if err != nil || l.Enabled || len(l.Users) != 0 {
		t.Fatalf("no file: %+v %v, want lockdown off", l, err)
	}
	want := config.Lockdown{Enabled: true, Users: []config.User{{UID: 1000, Name: "alice"}, {UID: 4000}}}
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
	// Only the file itself: no temporary files left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != lockdownFile {
		t.Fatalf("state directory holds %v", ents)
	}
	if fi, _ := os.Stat(filepath.Join(dir, lockdownFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("lockdown file mode %v, want 0600", fi.Mode())
	}
}

func TestLockdownBadFile(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, content := range []string{`{"enabled":true,"users":[]}`, `{"enabled":true,"users":[{"uid":5}],"extra":1}`, `not json`} {
		os.WriteFile(filepath.Join(d.Path(), lockdownFile), []byte(content), 0o600)
		if _, err := d.LoadLockdown(); err == nil {
			t.Errorf("%s: loaded without error", content)
		}
	}
}

func TestResolvConfRecord(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := d.LoadResolvConf(); r != nil || err != nil {
		t.Fatalf("no record: %+v %v", r, err)
	}
	want := ResolvConf{Path: "/etc/resolv.conf", Existed: true, Original: []byte("nameserver 192.0.2.1\n\x00\xff"), Mode: 0o644, UID: 0, GID: 0, Written: []byte("nameserver 10.8.0.1\n")}
	if err := d.SaveResolvConf(want); err != nil {
		t.Fatal(err)
	}
	got, err := d.LoadResolvConf()
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
	if r, err := d.LoadResolvConf(); r != nil || err != nil {
		t.Fatalf("after clear: %+v %v", r, err)
	}
	for _, bad := range []string{`{"path":"relative","existed":false}`, `{"path":"/x","extra":1}`, `[]`} {
		os.WriteFile(filepath.Join(d.Path(), resolvConfFile), []byte(bad), 0o600)
		if _, err := d.LoadResolvConf(); err == nil {
			t.Errorf("%s: loaded", bad)
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
}
