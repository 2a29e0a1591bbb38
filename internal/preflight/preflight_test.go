package preflight

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN and /dev/net/tun)")
	}
	if _, err := os.Stat(TUNPath); err != nil {
		t.Skipf("this machine has no TUN device: %v", err)
	}
	if errs := Check(TUNPath); errs != nil {
		t.Fatalf("root with a TUN device: %v", errs)
	}
	missing := filepath.Join(t.TempDir(), "tun")
	errs := Check(missing)
	if len(errs) != 1 || !errors.Is(errs[0], syscall.ENOENT) || !strings.HasPrefix(errs[0].Error(), missing+": ") {
		t.Fatalf("missing device: %v", errs)
	}
}

func TestCapabilityMessage(t *testing.T) {
	want := "missing capability CAP_NET_ADMIN (run as root or grant it, e.g. AmbientCapabilities=CAP_NET_ADMIN)"
	if ErrNoNetAdmin.Error() != want {
		t.Errorf("%q, want %q", ErrNoNetAdmin, want)
	}
}
