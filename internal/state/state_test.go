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
