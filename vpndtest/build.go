package vpndtest

import (
	"bytes"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vpnd/vpnd/internal/testhooks"
)

// vpndModule and vpndPackage are vpnd's module and its daemon's package.
const (
	vpndModule  = "github.com/vpnd/vpnd"
	vpndPackage = vpndModule + "/cmd/vpnd"
)

// binDirPrefix starts the name of the directory a test binary builds
// programs into: vpndtest-programs-pidPID-RANDOM. Other harnesses have
// used vpndtest-bin-RANDOM, with a random number where a pid would be:
// never take one of those for a directory of this package's.
const binDirPrefix = "vpndtest-programs-pid"

// builds holds what this test binary built: one directory, one binary per
// package, each built once.
var builds struct {
	mu    sync.Mutex
	dir   string
	err   error
	by    map[string]*built // by package (or "vpnd")
	names map[string]bool   // file names taken in dir
	local map[string]string // import paths by local directory
}

type built struct {
	once sync.Once
	path string
	err  error
}

func init() {
	testhooks.BinDir = binDir
}

// Binary returns the vpnd that vpndtest runs: $VPNDTEST_VPND, or vpnd built
// once per test binary from the vpnd module that the test's module
// requires (see the package documentation).
func Binary(t testing.TB) string {
	t.Helper()
	p, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Build builds the program pkg once per test binary, into the directory
// where vpndtest keeps vpnd, and returns its path: for an app's test to
// run the app, or its server side on the peer. pkg is a package path, or
// a directory relative to the test's working directory ("." is the
// package under test); it is built in the test's own module. The
// directory is readable by every uid, so that Command may run the program
// as another user.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	key, err := importPath(pkg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := buildOnce(key, func(out string) error { return goBuild("", out, key) }, path.Base(key))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// importPath returns the import path of pkg, a package path or a local
// directory: the same package by its directory and by its path is built
// once.
func importPath(pkg string) (string, error) {
	if !build.IsLocalImport(pkg) {
		return pkg, nil
	}
	dir, err := filepath.Abs(pkg)
	if err != nil {
		return "", err
	}
	builds.mu.Lock()
	p, ok := builds.local[dir]
	builds.mu.Unlock()
	if ok {
		return p, nil
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(goTool(), "list", "-f", "{{.ImportPath}}", pkg)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("vpndtest: go list %s: %v: %s", pkg, err, stderr.String())
	}
	p = strings.TrimSpace(stdout.String())
	builds.mu.Lock()
	if builds.local == nil {
		builds.local = map[string]string{}
	}
	builds.local[dir] = p
	builds.mu.Unlock()
	return p, nil
}

// binary is Binary without a test.
func binary() (string, error) {
	if p := os.Getenv("VPNDTEST_VPND"); p != "" {
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("VPNDTEST_VPND=%s: not an executable file (%v)", p, err)
		}
		return p, nil
	}
	return buildOnce("vpnd", buildVpnd, "vpnd")
}

// buildVpnd builds vpnd into out. It builds in the directory of the vpnd
// module that the test's module selects (the module cache, read-only, or
// a replace directory), with vpnd's own go.mod and go.sum: those hold
// every module vpnd's daemon needs, which the test's go.sum, holding only
// what the test imports, may not. A module without that directory (a
// vendored one) builds the package path in its own module instead.
func buildVpnd(out string) error {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(goTool(), "list", "-m", "-f", "{{.Dir}}", vpndModule)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("find the vpnd module (go list -m %s): %v: %s", vpndModule, err, stderr.String())
	}
	dir := strings.TrimSpace(stdout.String())
	if dir == "" {
		return goBuild("", out, vpndPackage)
	}
	return goBuild(dir, out, "-mod=readonly", "./cmd/vpnd")
}

// goBuild runs `go build -o out ARGS...` in dir ("" for the working
// directory). VCS stamping is off: the checkout may belong to another user,
// whom git refuses to read for this one.
func goBuild(dir, out string, args ...string) error {
	cmd := exec.Command(goTool(), append([]string{"build", "-buildvcs=false", "-o", out}, args...)...)
	cmd.Dir = dir
	if dir != "" {
		cmd.Env = append(os.Environ(), "GOWORK=off")
	}
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s (in %s): %v\n%s", strings.Join(args, " "), cmd.Dir, err, o)
	}
	return os.Chmod(out, 0o755)
}

// goTool is the go command: go test puts its own first in PATH.
func goTool() string { return "go" }

// buildOnce builds key once with do, into a file named like name.
func buildOnce(key string, do func(out string) error, name string) (string, error) {
	dir, err := binDir()
	if err != nil {
		return "", err
	}
	builds.mu.Lock()
	b, ok := builds.by[key]
	if !ok {
		b = &built{}
		builds.by[key] = b
		file := name
		for i := 2; builds.names[file]; i++ {
			file = name + "-" + strconv.Itoa(i)
		}
		builds.names[file] = true
		b.path = filepath.Join(dir, file)
	}
	builds.mu.Unlock()
	b.once.Do(func() { b.err = do(b.path) })
	return b.path, b.err
}

// binDir makes this test binary's directory for programs, once, after
// removing those of test binaries that have exited.
func binDir() (string, error) {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" || builds.err != nil {
		return builds.dir, builds.err
	}
	removeStaleBinDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", binDirPrefix, os.Getpid()))
	if err == nil {
		// Other uids run the programs (Command, a dropped-privilege vpnd).
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		builds.err = fmt.Errorf("vpndtest: directory for programs: %w", err)
		return "", builds.err
	}
	builds.dir = dir
	builds.by = map[string]*built{}
	builds.names = map[string]bool{}
	return dir, nil
}

// removeStaleBinDirs removes the program directories of this user's test
// binaries that have exited: nothing else would, as a library has no hook
// at the end of the process.
func removeStaleBinDirs() {
	tmp := os.TempDir()
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, ent := range ents {
		rest, ok := strings.CutPrefix(ent.Name(), binDirPrefix)
		if !ok || !ent.IsDir() {
			continue
		}
		pidStr, _, found := strings.Cut(rest, "-")
		if !found {
			continue // not named by binDir's pattern: not ours
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // alive, or not ours to judge
		}
		p := filepath.Join(tmp, ent.Name())
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) == nil && int(st.Uid) == os.Geteuid() {
			os.RemoveAll(p)
		}
	}
}
