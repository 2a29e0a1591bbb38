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
	"github.com/vpnd/vpnd/internal/rundir"
	"github.com/vpnd/vpnd/internal/version"
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

func TestVersion(t *testing.T) {
	for _, a := range []string{"--version", "-v", "version"} {
		if code, out, _ := runCmd(t, "", a); code != 0 || out != "vpnd-wg version "+version.String()+"\n" {
			t.Errorf("%s = %d, %q", a, code, out)
		}
	}
}

// Without XDG_RUNTIME_DIR (su, containers, ssh without a session), up and
// show still meet in one directory, a private fallback, and say which.
func TestRuntimeDirFallback(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("TMPDIR", t.TempDir())
	d, err := rundir.Find(os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(d.Path, "vpnd-wg")
	note := "vpnd-wg: note: XDG_RUNTIME_DIR is not set: tunnel state is served in " + dir + "\n"
	code, _, stderr := runCmd(t, "", "show")
	if code != 1 || !strings.HasPrefix(stderr, note) || !strings.Contains(stderr, "no running tunnel serves its state in "+dir) {
		t.Errorf("show = %d, %q; want 1, the note %q and no tunnel in %s", code, stderr, note, dir)
	}
	conf := filepath.Join(t.TempDir(), "wg0.conf")
	if err := os.WriteFile(conf, []byte("[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.8.0.2/24\n"+
		"[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 0.0.0.0/0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCmd(t, "", "up", "--socket", "/nonexistent/vpnd.sock", conf)
	if code != 1 || !strings.Contains(stderr, note) || strings.Contains(stderr, "will not see this tunnel") {
		t.Errorf("up = %d, %q; want the note %q", code, stderr, note)
	}
	// A given --uapi-dir needs no fallback, and no note.
	if code, _, stderr := runCmd(t, "", "show", "--uapi-dir", t.TempDir()); code != 1 || strings.Contains(stderr, "note") {
		t.Errorf("show --uapi-dir = %d, %q", code, stderr)
	}
}

// The man page is made from --help's text and the commands' flags.
func TestManPage(t *testing.T) {
	// man clears these, as the builder's own do not belong in the page.
	t.Setenv("VPND_SOCKET", "/builder/vpnd.sock")
	t.Setenv("XDG_RUNTIME_DIR", "/builder/run")
	dir := t.TempDir()
	if code, _, stderr := runCmd(t, "", "man", dir); code != 0 {
		t.Fatalf("man = %d, %s", code, stderr)
	}
	b, err := os.ReadFile(filepath.Join(dir, "vpnd-wg.1"))
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, want := range []string{".TH \"VPND-WG\" \"1\"", "vpnd-wg up [--socket PATH]", "-no-offload", "-uapi-dir DIR",
		"XDG_RUNTIME_DIR is not set", "vpnd-runtime-UID", ".SH SEE ALSO"} {
		if !strings.Contains(page, want) {
			t.Errorf("vpnd-wg.1 lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, "/builder") {
		t.Errorf("vpnd-wg.1 shows the builder's environment:\n%s", page)
	}
	if code, _, _ := runCmd(t, "", "man"); code != 2 {
		t.Errorf("man without a directory = %d, want 2", code)
	}
}
