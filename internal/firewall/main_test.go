package firewall

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/firewall/firewalltest"
)

// The test binary doubles as the programs the tests run under other uids:
// with envSend set it is firewalltest's sender, with envOpen it opens a
// table and prints the error.
const (
	envSend = "VPND_FIREWALLTEST_SEND"
	envOpen = "VPND_FIREWALLTEST_OPEN"
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(envSend) != "":
		os.Exit(firewalltest.SendMain(os.Args[1:], func(f string, a ...any) { fmt.Printf(f, a...) }))
	case os.Getenv(envOpen) != "":
		t, err := Open(os.Getenv(envOpen))
		if err == nil {
			t.Close()
		}
		fmt.Println(err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// selfForOthers returns a copy of the test binary that every uid may run
// (`go test` keeps its own in a directory only root may enter), removed
// when t ends.
func selfForOthers(t *testing.T) string {
	t.Helper()
	src, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "vpnd-firewalltest-") // t.TempDir's parent is root's only
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "firewall.test")
	if err := copyFile(src, dst, 0o755); err != nil {
		t.Fatalf("copy the test binary: %v", err)
	}
	return dst
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// runAs runs the test binary as uid (gid the same number, no groups) in the
// test's network namespace, with env set, and returns its output lines.
// With netAdmin it keeps CAP_NET_ADMIN (as an ambient capability), which
// setting SO_MARK needs.
func runAs(t *testing.T, bin string, uid uint32, netAdmin bool, env string, args ...string) []string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{env}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: uid},
		Pdeathsig:  syscall.SIGKILL,
	}
	if netAdmin {
		cmd.SysProcAttr.AmbientCaps = []uintptr{unix.CAP_NET_ADMIN}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("run %s as uid %d: %v\n%s%s", env, uid, err, out, stderr.Bytes())
	}
	return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
}

// nft runs the nft command in the test's network namespace.
func nft(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// needNft skips t when the nft command is missing (scripts/test installs
// it: Debian's package nftables).
func needNft(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft command (package nftables)")
	}
}

// inNewNetns creates a network namespace on a thread of its own and
// returns a descriptor of it.
func inNewNetns(t *testing.T) int {
	t.Helper()
	fd := -1
	err := onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		var err error
		fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// inNetns runs f on a thread that has entered the network namespace ns.
func inNetns(ns int, f func() error) error {
	return onThread(func() error {
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("setns: %w", err)
		}
		return f()
	})
}

// onThread runs f on a locked OS thread that is never unlocked: whatever
// namespace f leaves it in, the thread ends with its goroutine and never
// runs other code (the pattern of CNI's ns package).
func onThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- f()
	}()
	return <-errc
}
