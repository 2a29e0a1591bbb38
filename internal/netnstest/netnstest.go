// Package netnstest runs a test inside a fresh network namespace of its own.
//
// The test binary re-executes itself with CLONE_NEWNET, running only the
// one test. The whole child process lives in the new namespace, so no
// thread ever switches namespaces (and none can leak back into the host's
// with a half-changed one), and every link, address, route and rule the
// test creates disappears with the namespace when the child exits. The
// host's namespace is never touched.
package netnstest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
)

const (
	envTest     = "VPND_NETNS_TEST"
	envParentNS = "VPND_NETNS_PARENT"
)

// Enter reports whether t runs inside its own network namespace. In the
// test binary started by `go test` it re-executes the binary in a new
// namespace to run just t, reports the child's outcome and output, and
// returns false: the caller must return at once. In that child it returns
// true, after checking that the namespace really is not the parent's.
//
//	func TestX(t *testing.T) {
//		if !netnstest.Enter(t) {
//			return
//		}
//		// inside a fresh namespace
//	}
//
// Enter skips t unless it runs as root. It works only for top-level tests.
func Enter(t *testing.T) bool {
	t.Helper()
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("netnstest.Enter must be called from a top-level test, not %s", t.Name())
	}
	if os.Getenv(envTest) == t.Name() {
		parent := os.Getenv(envParentNS)
		self, err := nsID()
		if err != nil {
			t.Fatalf("read own network namespace: %v", err)
		}
		if parent == "" || parent == self {
			t.Fatalf("refusing to run: network namespace %s is the parent's (%s)", self, parent)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	self, err := nsID()
	if err != nil {
		t.Fatalf("read own network namespace: %v", err)
	}
	args := []string{"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.count=1", "-test.v"}
	cmd := exec.CommandContext(t.Context(), os.Args[0], args...)
	cmd.Env = append(os.Environ(), envTest+"="+t.Name(), envParentNS+"="+self)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err = cmd.Run()
	text := out.String()
	switch {
	case err != nil:
		t.Fatalf("test in fresh network namespace failed: %v\n%s", err, text)
	case strings.Contains(text, "--- SKIP: "+t.Name()):
		t.Skipf("skipped in network namespace:\n%s", text)
	case !strings.Contains(text, "--- PASS: "+t.Name()):
		t.Fatalf("test did not run in the network namespace:\n%s", text)
	default:
		if testing.Verbose() {
			t.Logf("output from the network namespace:\n%s", text)
		}
	}
	return false
}

func nsID() (string, error) {
	return os.Readlink("/proc/self/ns/net")
}

// LoUp sets the namespace's loopback link up: a new namespace has it down.
func LoUp(t *testing.T) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up: %v", err)
	}
}

// IP runs `ip ARGS...` in the test's namespace and returns its stdout.
func IP(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

// IPJSON runs `ip -j ARGS...` and decodes its output into a slice of
// generic objects. A routing table that does not exist (yet) holds nothing:
// nil, not a failure.
func IPJSON(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	args = append([]string{"-j"}, args...)
	out, err := exec.Command("ip", args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		if strings.Contains(string(stderr), "FIB table does not exist") {
			return nil
		}
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, stderr)
	}
	var v []map[string]any
	if strings.TrimSpace(string(out)) == "" {
		return nil
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("decode `ip %s`: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v
}
