package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/vpnd/vpnd/internal/rundir"
)

// uapiDirOrFallback is where tunnels serve their state: dir, the
// --uapi-dir flag, when it is set (its default is
// $XDG_RUNTIME_DIR/vpnd-wg); else vpnd-wg in the fallback runtime
// directory (rundir.Find), which it names on stderr, so that up and show,
// run without a login session, still meet in the same place.
func uapiDirOrFallback(dir string, stderr io.Writer) (string, error) {
	if dir != "" {
		return dir, nil
	}
	d, err := rundir.Find(os.Getenv)
	if err != nil {
		return "", err
	}
	dir = filepath.Join(d.Path, "vpnd-wg")
	if !d.FromEnv {
		fmt.Fprintf(stderr, "vpnd-wg: note: XDG_RUNTIME_DIR is not set: tunnel state is served in %s\n", dir)
	}
	return dir, nil
}
