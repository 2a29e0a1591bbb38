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

// LoadResolvConf returns the record, or nil if there is none.
func (d *Dir) LoadResolvConf() (*ResolvConf, error) {
	var r ResolvConf
	if found, err := d.readJSON(resolvConfFile, "resolv.conf record", &r); !found || err != nil {
		return nil, err
	}
	if !filepath.IsAbs(r.Path) {
		return nil, fmt.Errorf("resolv.conf record %s: path %q is not absolute", filepath.Join(d.path, resolvConfFile), r.Path)
	}
	return &r, nil
}

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
