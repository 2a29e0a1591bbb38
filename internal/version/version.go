// Package version says which build of vpnd and vpnctl is running, for
// their --version flags and their man pages.
package version

import "runtime/debug"

// Version, when set at link time, overrides what the build records:
//
//	go build -ldflags "-X github.com/vpnd/vpnd/internal/version.Version=$(git describe --always --dirty)" ./cmd/...
//
// Packagers set it, since a build from a source tarball records neither a
// module version nor a VCS revision.
var Version string

// String returns Version if set, else the main module's version as the Go
// toolchain recorded it (a tag, or a pseudo-version such as
// v0.0.0-20250102030405-abcdef123456 for `go install module@commit`), else
// the VCS revision of the checkout it was built from (with "-dirty" for
// uncommitted changes), else "(devel)".
func String() string {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(Version, bi)
}

func fromBuildInfo(override string, bi *debug.BuildInfo) string {
	if override != "" {
		return override
	}
	if bi == nil {
		return "(devel)"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "(devel)"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
