package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// resolvConfFile holds the file DNS backend's record while a VPN's DNS
// settings are in a resolv.conf.
const resolvConfFile = "resolv-conf.json"

// ResolvConf is what the file DNS backend must remember while its
// resolv.conf is in place: enough to put the previous file back exactly,
// even after a crash, and to tell whether someone else has rewritten the
// file since.
type ResolvConf struct {
	// Path is the file that was replaced.
	Path string `json:"path"`
	// Existed is false when there was no file at Path: restoring then
	// removes vpnd's.
	Existed bool `json:"existed"`
	// Original is the previous file's content (base64 in the JSON), and
	// Mode, UID and GID its permission bits and owner.
	Original []byte      `json:"original"`
	Mode     os.FileMode `json:"mode"`
	UID      int         `json:"uid"`
	GID      int         `json:"gid"`
	// Written is what vpnd put at Path.
	Written []byte `json:"written"`
}

// SaveResolvConf records r atomically and durably, replacing any earlier
// record.
func (d *Dir) SaveResolvConf(r ResolvConf) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(d.path, resolvConfFile, append(b, '\n'), 0o600)
}

// LoadResolvConf returns the record, or nil if there is none. It is
// trusted only for what vpnd itself could have written for the file at
// path, its --resolv-conf: a record for another file, a mode with more
// than permission bits (setuid, setgid, sticky) or an owner that is no
// uid is an error naming the record.
func (d *Dir) LoadResolvConf(path string) (*ResolvConf, error) {
	var r ResolvConf
	if found, err := d.readJSON(resolvConfFile, "resolv.conf record", &r); !found || err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("resolv.conf record %s: %s", filepath.Join(d.path, resolvConfFile), fmt.Sprintf(format, args...))
	}
	switch {
	case r.Path != path:
		return nil, bad("it is for %q, and --resolv-conf is %s: vpnd restores only its own --resolv-conf (start it once with --resolv-conf %s to restore that file, or remove the record)", r.Path, path, r.Path)
	case r.Mode&^os.ModePerm != 0:
		return nil, bad("mode %v is not permission bits only", r.Mode)
	case r.UID < -1 || r.UID > maxUID || r.GID < -1 || r.GID > maxUID:
		return nil, bad("owner %d:%d is not a uid and gid", r.UID, r.GID)
	}
	return &r, nil
}

// maxUID is the largest uid: (uid_t)-1 means "no uid" to the kernel.
const maxUID = 1<<32 - 2

// ClearResolvConf removes the record; no record is not an error.
func (d *Dir) ClearResolvConf() error {
	err := os.Remove(filepath.Join(d.path, resolvConfFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove resolv.conf record: %w", err)
	}
	if dh, err := os.Open(d.path); err == nil {
		dh.Sync()
		dh.Close()
	}
	return nil
}
