package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/vpnd/vpnd/internal/errs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func runCmd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestFail(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{errs.New(errs.CodePermission, "address 203.0.113.2/24 is outside the address pools"), "vpnd-wg: 201 Permission denied. (address 203.0.113.2/24 is outside the address pools)\n"},
		{fmt.Errorf("bring the WireGuard device up: %w", &errs.Error{Code: errs.CodeVPNExists}), "vpnd-wg: 2203002 VPN already exists.\n"},
		{errors.New("connect to vpnd: no such file"), "vpnd-wg: connect to vpnd: no such file\n"},
	} {
		var b bytes.Buffer
		if code := fail(&b, c.err); code != 1 || b.String() != c.want {
			t.Errorf("fail(%v) = %d, %q; want 1, %q", c.err, code, b.String(), c.want)
		}
	}
}

func TestCommands(t *testing.T) {
	code, priv, _ := runCmd(t, "", "genkey")
	if code != 0 || len(strings.TrimSpace(priv)) != 44 {
		t.Fatalf("genkey = %d, %q", code, priv)
	}
	if code, pub, _ := runCmd(t, priv, "pubkey"); code != 0 || len(strings.TrimSpace(pub)) != 44 || pub == priv {
		t.Errorf("pubkey = %d, %q", code, pub)
	}
	if code, _, stderr := runCmd(t, "not a key\n", "pubkey"); code != 1 || !strings.HasPrefix(stderr, "vpnd-wg: private key on stdin: ") {
		t.Errorf("pubkey of garbage = %d, %q", code, stderr)
	}
	if code, _, stderr := runCmd(t, "", "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command = %d, %q", code, stderr)
	}
	if code, _, stderr := runCmd(t, "", "up"); code != 2 || !strings.Contains(stderr, "want one configuration file") {
		t.Errorf("up without a file = %d, %q", code, stderr)
	}

	// A malformed file is refused before vpnd is asked anything.
	conf := filepath.Join(t.TempDir(), "wg0.conf")
	if err := os.WriteFile(conf, []byte("[Interface]\nListenPort = 51820\nFwMark = 0x10\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCmd(t, "", "up", "--socket", "/nonexistent/vpnd.sock", conf)
	want := "vpnd-wg: " + conf + `:line 3 "FwMark = 0x10": FwMark is not supported by vpnd-wg: vpnd protects the tunnel socket instead of marking it yourself` + "\n"
	if code != 1 || stderr != want {
		t.Errorf("up with a bad file = %d, %q; want 1, %q", code, stderr, want)
	}

	// A file others can read gets a warning (and vpnd is asked, here in
	// vain).
	good := filepath.Join(t.TempDir(), "wg1.conf")
	if err := os.WriteFile(good, []byte("[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.8.0.2/24\n"+
		"[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 0.0.0.0/0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(good, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	code, _, stderr = runCmd(t, "", "up", "--socket", "/nonexistent/vpnd.sock", "--uapi-dir", t.TempDir(), good)
	if code != 1 || !strings.Contains(stderr, "vpnd-wg: note: "+good+" is accessible to other users (mode 0644)") ||
		!strings.Contains(stderr, "vpnd-wg: connect to vpnd: ") {
		t.Errorf("up with a 0644 file and no vpnd = %d, %q", code, stderr)
	}

	// show with nothing running.
	if code, _, stderr := runCmd(t, "", "show", "--uapi-dir", t.TempDir()); code != 1 || !strings.Contains(stderr, "no running tunnel") {
		t.Errorf("show with nothing running = %d, %q", code, stderr)
	}
}
