package tun

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// openNetlink opens vpnd's kernel in the test's namespace, with log (a
// test logger if nil), and closes it when the test ends.
func openNetlink(t *testing.T, log *zap.Logger) *Netlink {
	t.Helper()
	if log == nil {
		log = zaptest.NewLogger(t)
	}
	n, err := New(log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// makeTUN creates a TUN link whose fd is closed, removing the link, when
// the test ends (closing it earlier is fine).
func makeTUN(t *testing.T, n *Netlink, name string) (*os.File, int) {
	t.Helper()
	f, index, err := n.CreateTUN(name, TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, index
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
