package vpndtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// outsideUID runs the throwaway module's test without privilege: a uid
// with no passwd entry, so a NORMAL account under vpnd's default policy.
const outsideUID = 4242

// The test of a module that is not vpnd's: it requires github.com/vpnd/vpnd
// (replaced by this checkout), imports only vpndtest and client, and
// starts its own vpnd, which vpndtest builds from that module.
const outsideGoMod = `module example.com/vpnapp

go 1.26

require github.com/vpnd/vpnd v0.0.0

replace github.com/vpnd/vpnd => %s
`

const outsideTest = `package vpnapp

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/vpndtest"
)

func TestAppAgainstItsOwnVpnd(t *testing.T) {
	e := vpndtest.New(t, vpndtest.Peer())
	backend := "kernel"
	if e.Simulated() {
		backend = "sim"
	}
	t.Logf("backend %s, uid %d", backend, os.Getuid())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	uid := uint32(os.Getuid())
	c := e.Dial(t, uid)
	cfg := json.RawMessage(` + "`" + `{"addresses":["10.9.0.2/24"]}` + "`" + `)
	tun, info, err := c.SetUpRaw(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	if info.Simulated != e.Simulated() || info.Owner.UID != uid {
		t.Errorf("VpnInfo simulated %v, owner %d", info.Simulated, info.Owner.UID)
	}
	if _, _, err := c.SetUpRaw(ctx, cfg); !errors.Is(err, client.ErrVPNExists) {
		t.Errorf("second setUp: %v, want client.ErrVPNExists", err)
	}
	if out, err := e.PeerCommand("true").CombinedOutput(); err != nil {
		t.Errorf("the peer: %v: %s", err, out)
	}
	if err := c.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}
`

// TestOutsideModule: a throwaway module outside this one, with a replace
// to this checkout, passes its vpndtest test as the caller (root: on the
// kernel) and, as root, also as an unprivileged uid (on the sim backend),
// with a module cache of its own filled from the caller's, offline.
func TestOutsideModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds vpnd and a test binary from scratch for another user: minutes")
	}
	checkout, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	writeOutsideModule(t, mod, checkout)

	t.Run("as the caller", func(t *testing.T) {
		cmd := exec.Command("go", "test", "-count=1", "-timeout=30m", "-v", "./...")
		cmd.Dir = mod
		cmd.Env = append(outsideEnv(), "GOFLAGS=-mod=mod")
		want := fmt.Sprintf("backend kernel, uid %d", os.Getuid())
		if kernelUnavailable() != "" {
			want = fmt.Sprintf("backend sim, uid %d", os.Getuid())
		}
		runOutside(t, cmd, want)
	})

	t.Run("as an unprivileged user", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to run as another user")
		}
		id := strconv.Itoa(outsideUID)
		if out, err := exec.Command("setpriv", "--reuid", id, "--regid", id, "--clear-groups", "test", "-r", filepath.Join(checkout, "go.mod")).CombinedOutput(); err != nil {
			t.Skipf("uid %d cannot read the checkout %s: %v %s", outsideUID, checkout, err, out)
		}
		base, err := os.MkdirTemp("", "vpndtest-outside-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(base) })
		if err := os.Chmod(base, 0o755); err != nil {
			t.Fatal(err)
		}
		home := filepath.Join(base, "home")
		userMod := filepath.Join(home, "vpnapp")
		// Its temporary files too, so that the cleanup finds them all.
		tmp := filepath.Join(home, "tmp")
		for _, d := range []string{userMod, tmp} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		writeOutsideModule(t, userMod, checkout)
		modcache := filepath.Join(home, "go", "pkg", "mod")
		fillModuleCache(t, modcache, checkout, userMod)
		if out, err := exec.Command("chown", "-R", id+":"+id, home).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v: %s", err, out)
		}

		cmd := exec.Command("setpriv", "--reuid", id, "--regid", id, "--clear-groups",
			"go", "test", "-count=1", "-timeout=30m", "-v", "./...")
		cmd.Dir = userMod
		cmd.Env = append(outsideEnv(), "HOME="+home, "TMPDIR="+tmp, "GOPATH="+filepath.Join(home, "go"), "GOMODCACHE="+modcache,
			"GOCACHE="+filepath.Join(home, ".cache", "go-build"), "GOFLAGS=-mod=mod", "GOPROXY=off")
		runOutside(t, cmd, fmt.Sprintf("backend sim, uid %d", outsideUID))
	})
}

// writeOutsideModule writes the throwaway module into dir. Its go.sum
// starts as the checkout's: everything it needs is in there, so that no
// checksum has to be fetched.
func writeOutsideModule(t *testing.T, dir, checkout string) {
	t.Helper()
	sum, err := os.ReadFile(filepath.Join(checkout, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"go.mod":      fmt.Sprintf(outsideGoMod, checkout),
		"go.sum":      string(sum),
		"app_test.go": outsideTest,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fillModuleCache downloads into modcache what the checkout and the module
// in dir need, with the caller's module cache as the proxy: offline.
func fillModuleCache(t *testing.T, modcache, checkout, dir string) {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	proxy := "file://" + filepath.Join(strings.TrimSpace(string(out)), "cache", "download")
	for _, d := range []string{checkout, dir} {
		cmd := exec.Command("go", "mod", "download")
		cmd.Dir = d
		cmd.Env = append(outsideEnv(), "GOMODCACHE="+modcache, "GOPROXY="+proxy, "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go mod download in %s from %s: %v\n%s", d, proxy, err, out)
		}
	}
}

// outsideEnv is the caller's environment without what would tie the
// throwaway module to this one (a workspace, GOFLAGS) or pick a backend or
// a vpnd for it. Entries appended to it override the caller's.
func outsideEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "GOFLAGS", "GOWORK", "VPNDTEST_BACKEND", "VPNDTEST_VPND":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GOWORK=off", "GOTOOLCHAIN=local")
}

// runOutside runs the throwaway module's go test and requires it to pass
// on the backend want names.
func runOutside(t *testing.T, cmd *exec.Cmd, want string) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	for _, w := range []string{want, "--- PASS: TestAppAgainstItsOwnVpnd", "ok  \texample.com/vpnapp"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("%s: no %q in its output:\n%s", strings.Join(cmd.Args, " "), w, out)
		}
	}
}
