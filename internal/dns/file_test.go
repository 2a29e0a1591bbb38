package dns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/state"
)

const original = `# the host's own resolv.conf
nameserver 192.0.2.53
nameserver 2001:db8::53
search home.example
options edns0 trust-ad
sortlist 192.0.2.0/24
  options   timeout:2
`

// fileEnv is a resolv.conf in a temporary directory, a state directory,
// and a file backend for them whose log is observed.
type fileEnv struct {
	path string
	st   *state.Dir
	f    *File
	logs *observer.ObservedLogs
}

func newFileEnv(t *testing.T, content *string, mode os.FileMode) *fileEnv {
	t.Helper()
	dir := t.TempDir()
	e := &fileEnv{path: filepath.Join(dir, "etc", "resolv.conf")}
	if err := os.Mkdir(filepath.Dir(e.path), 0o755); err != nil {
		t.Fatal(err)
	}
	if content != nil {
		if err := os.WriteFile(e.path, []byte(*content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(e.path, mode); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if e.st, err = state.Open(filepath.Join(dir, "state")); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	e.logs = logs
	if e.f, err = NewFile(e.path, e.st, zap.New(core)); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *fileEnv) read(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (e *fileEnv) record(t *testing.T) *state.ResolvConf {
	t.Helper()
	r, err := e.st.LoadResolvConf(e.path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// onlyRecordOrNothing checks that the resolv.conf's directory holds no
// temporary files.
func (e *fileEnv) noTempFiles(t *testing.T) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Dir(e.path))
	for _, d := range ents {
		if d.Name() != "resolv.conf" {
			t.Errorf("left in %s: %s", filepath.Dir(e.path), d.Name())
		}
	}
}

func ptr(s string) *string { return &s }

var fullTunnelDNS = manager.DNSSettings{Servers: addrs("10.8.0.1", "fd00::1"), Domains: []string{"corp.example", "lab.example"}, DefaultRoute: true}

// The file while a VPN is up: the VPN's servers first, then its search
// domains, then the previous file's options lines; nothing else of it.
func TestRenderResolvConf(t *testing.T) {
	got, dropped := renderResolvConf(vpnLink, fullTunnelDNS, []byte(original))
	want := `# Written by vpnd for the VPN on vpn-tun. vpnd puts the previous file back when
# the VPN ends, unless this file has been changed in the meantime.
nameserver 10.8.0.1
nameserver fd00::1
search corp.example lab.example
options edns0 trust-ad
options   timeout:2
`
	if string(got) != want || len(dropped) != 0 {
		t.Errorf("got (dropped %v):\n%s\nwant:\n%s", dropped, got, want)
	}

	// Three nameservers at most (what resolv.conf honours); no search
	// line without domains; a link-local server gets the VPN's link as
	// its zone.
	s := manager.DNSSettings{Servers: addrs("fe80::1", "10.8.0.1", "10.8.0.2", "10.8.0.3", "10.8.0.4")}
	got, dropped = renderResolvConf(vpnLink, s, nil)
	want = `# Written by vpnd for the VPN on vpn-tun. vpnd puts the previous file back when
# the VPN ends, unless this file has been changed in the meantime.
nameserver fe80::1%vpn-tun
nameserver 10.8.0.1
nameserver 10.8.0.2
`
	if string(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if len(dropped) != 2 || dropped[0].String() != "10.8.0.3" || dropped[1].String() != "10.8.0.4" {
		t.Errorf("dropped %v, want 10.8.0.3 and 10.8.0.4", dropped)
	}
}

// Apply, then Revert: the file is the VPN's while it is up, and exactly
// the previous bytes, mode and owner afterwards; the record lives in the
// state directory exactly as long.
func TestFileApplyRevert(t *testing.T) {
	e := newFileEnv(t, ptr(original), 0o640)
	if err := os.Chown(e.path, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := e.f.Apply(vpnLink, fullTunnelDNS); err != nil {
		t.Fatal(err)
	}
	during := e.read(t)
	if !strings.Contains(during, "nameserver 10.8.0.1\nnameserver fd00::1\nsearch corp.example lab.example\n") || strings.Contains(during, "192.0.2.53") {
		t.Errorf("during the VPN:\n%s", during)
	}
	if r := e.record(t); r == nil || string(r.Original) != original || string(r.Written) != during || !r.Existed {
		t.Errorf("record during the VPN: %+v", r)
	}
	if err := e.f.Revert(vpnLink); err != nil {
		t.Fatal(err)
	}
	if got := e.read(t); got != original {
		t.Errorf("after the VPN:\n%q\nwant:\n%q", got, original)
	}
	fi, _ := os.Stat(e.path)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o640 || st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("restored file mode %v owner %d:%d, want 0640 1234:5678", fi.Mode(), st.Uid, st.Gid)
	}
	if r := e.record(t); r != nil {
		t.Errorf("record left after Revert: %+v", r)
	}
	e.noTempFiles(t)
	// A second Revert has nothing to do.
	if err := e.f.Revert(vpnLink); err != nil || e.read(t) != original {
		t.Errorf("second Revert: %v", err)
	}
}

// No file before the VPN: vpnd creates one (0644) and removes it after.
func TestFileAbsentBefore(t *testing.T) {
	e := newFileEnv(t, nil, 0)
	if err := e.f.Apply(vpnLink, fullTunnelDNS); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(e.path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("during the VPN: %v %v", fi, err)
	}
	if err := e.f.Revert(vpnLink); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(e.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after the VPN the file exists (%v)", err)
	}
}

// Someone rewrote the file while the VPN was up: their content stays, a
// warning says so, and the record goes.
func TestFileChangedUnderneath(t *testing.T) {
	for _, change := range []struct {
		name string
		do   func(path string) error
	}{
		{"rewritten", func(p string) error { return os.WriteFile(p, []byte("nameserver 198.51.100.53\n"), 0o644) }},
		{"removed", os.Remove},
		{"replaced by a symbolic link", func(p string) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Symlink("/nonexistent/stub-resolv.conf", p)
		}},
	} {
		t.Run(change.name, func(t *testing.T) {
			e := newFileEnv(t, ptr(original), 0o644)
			if err := e.f.Apply(vpnLink, fullTunnelDNS); err != nil {
				t.Fatal(err)
			}
			if err := change.do(e.path); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Readlink(e.path)
			beforeBytes, _ := os.ReadFile(e.path)
			if err := e.f.Revert(vpnLink); err != nil {
				t.Fatal(err)
			}
			after, _ := os.Readlink(e.path)
			afterBytes, _ := os.ReadFile(e.path)
			if before != after || string(beforeBytes) != string(afterBytes) {
				t.Errorf("Revert clobbered the newer file: %q %q, was %q %q", after, afterBytes, before, beforeBytes)
			}
			if n := e.logs.FilterMessageSnippet("changed by someone else").FilterField(zap.String("path", e.path)).Len(); n != 1 {
				t.Errorf("%d warnings about the change, want 1: %v", n, e.logs.All())
			}
			if r := e.record(t); r != nil {
				t.Errorf("record kept: %+v", r)
			}
		})
	}
}

// A vpnd killed while the VPN was up: the next start restores the file
// from the record alone.
func TestRestoreLeftover(t *testing.T) {
	e := newFileEnv(t, ptr(original), 0o644)
	if err := e.f.Apply(vpnLink, fullTunnelDNS); err != nil {
		t.Fatal(err)
	}
	// The killed vpnd's File is gone; a new start only has the state
	// directory.
	if err := RestoreLeftover(e.st, e.record(t), zap.NewNop()); err != nil {
		t.Fatalf("RestoreLeftover: %v", err)
	}
	if got := e.read(t); got != original {
		t.Errorf("after the restart:\n%s", got)
	}
	if r := e.record(t); r != nil {
		t.Errorf("record kept: %+v", r)
	}
	// Nothing to do the next time.
	if r := e.record(t); r != nil {
		t.Errorf("a record for the next time: %+v", r)
	}
}

// Killed between recording and replacing: the file is still the original;
// the start drops the record and leaves the file alone, without a warning.
func TestRestoreLeftoverNeverWritten(t *testing.T) {
	e := newFileEnv(t, ptr(original), 0o644)
	if err := e.st.SaveResolvConf(state.ResolvConf{Path: e.path, Existed: true, Original: []byte(original), Mode: 0o644, UID: -1, GID: -1, Written: []byte("nameserver 10.8.0.1\n")}); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	if err := RestoreLeftover(e.st, e.record(t), zap.New(core)); err != nil {
		t.Fatal(err)
	}
	if got := e.read(t); got != original {
		t.Errorf("file changed:\n%s", got)
	}
	if logs.FilterMessageSnippet("already as it was").Len() != 1 || logs.FilterLevelExact(zap.WarnLevel).Len() != 0 {
		t.Errorf("logs: %v", logs.All())
	}
	if r := e.record(t); r != nil {
		t.Errorf("record kept: %+v", r)
	}
}

// A write that fails leaves the file and the state directory as they
// were, and the error names the file.
func TestFileApplyFails(t *testing.T) {
	t.Run("resolv.conf directory gone", func(t *testing.T) {
		e := newFileEnv(t, nil, 0)
		os.Remove(filepath.Dir(e.path))
		err := e.f.Apply(vpnLink, fullTunnelDNS)
		if err == nil || !strings.Contains(err.Error(), "replace "+e.path) {
			t.Fatalf("Apply: %v", err)
		}
		if r := e.record(t); r != nil {
			t.Errorf("record kept after a failed Apply: %+v", r)
		}
		if err := e.f.Revert(vpnLink); err != nil {
			t.Errorf("Revert after a failed Apply: %v", err)
		}
	})
	t.Run("state directory gone", func(t *testing.T) {
		e := newFileEnv(t, ptr(original), 0o644)
		os.RemoveAll(e.st.Path())
		err := e.f.Apply(vpnLink, fullTunnelDNS)
		if err == nil || !strings.Contains(err.Error(), "record "+e.path) {
			t.Fatalf("Apply: %v", err)
		}
		if got := e.read(t); got != original {
			t.Errorf("file changed:\n%s", got)
		}
	})
}

// A restore that fails keeps the record, and the next Apply restores
// first: a later VPN never records the earlier VPN's file as "original".
func TestFileRevertFailsThenApply(t *testing.T) {
	e := newFileEnv(t, ptr(original), 0o644)
	if err := e.f.Apply(vpnLink, fullTunnelDNS); err != nil {
		t.Fatal(err)
	}
	replaceFile = func(string, []byte, os.FileMode, int, int, func() error) error { return errors.New("injected") }
	err := e.f.Revert(vpnLink)
	replaceFile = state.ReplaceFileIf
	if err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("Revert: %v", err)
	}
	if r := e.record(t); r == nil || string(r.Original) != original {
		t.Fatalf("record after a failed Revert: %+v", r)
	}
	s := manager.DNSSettings{Servers: addrs("10.9.0.1")}
	if err := e.f.Apply(vpnLink, s); err != nil {
		t.Fatal(err)
	}
	if r := e.record(t); r == nil || string(r.Original) != original {
		t.Fatalf("second VPN's record: %+v, want the host's file as the original", r)
	}
	if err := e.f.Revert(vpnLink); err != nil {
		t.Fatal(err)
	}
	if got := e.read(t); got != original {
		t.Errorf("after both VPNs:\n%s", got)
	}
}

// NewFile refuses what it cannot safely replace, at start.
func TestNewFileRefuses(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	stub := filepath.Join(dir, "stub-resolv.conf")
	os.WriteFile(stub, []byte("nameserver 127.0.0.53\n"), 0o644)
	link := filepath.Join(dir, "resolv.conf")
	os.Symlink(stub, link)
	for _, tc := range []struct {
		path string
		want string
	}{
		{link, "is a symbolic link to " + stub},
		{dir, "is not a regular file"},
		{"etc/resolv.conf", "not an absolute path"},
		{filepath.Join(dir, "missing", "resolv.conf"), "is not writable"},
	} {
		if _, err := NewFile(tc.path, st, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewFile(%s): %v, want %q", tc.path, err, tc.want)
		}
	}
	if b, _ := os.ReadFile(stub); string(b) != "nameserver 127.0.0.53\n" {
		t.Errorf("the link's target changed: %q", b)
	}
}

// originalTrimmed is original as restoredContent rebuilds it around
// others' edits: its options lines as vpnd copied them, trimmed.
const originalTrimmed = `# the host's own resolv.conf
nameserver 192.0.2.53
nameserver 2001:db8::53
search home.example
options edns0 trust-ad
sortlist 192.0.2.0/24
options   timeout:2
`

// When the VPN ends, vpnd removes exactly its own lines and keeps
// everyone else's edits; the lines it dropped come back where they were.
func TestRestoredContent(t *testing.T) {
	written, _ := renderResolvConf(vpnLink, fullTunnelDNS, []byte(original))
	w := string(written)
	rec := &state.ResolvConf{Path: "/etc/resolv.conf", Existed: true, Original: []byte(original), Written: written}
	for _, tc := range []struct {
		name, cur string
		want      string // "" with mine false: the file stays as it is
	}{
		{"unchanged", w, original},
		{"a nameserver appended", w + "nameserver 198.51.100.1\n", originalTrimmed + "nameserver 198.51.100.1\n"},
		{"appended without a final newline", w + "nameserver 198.51.100.1", originalTrimmed + "nameserver 198.51.100.1\n"},
		{"a line put first", "nameserver 198.51.100.1\n" + w, "nameserver 198.51.100.1\n" + originalTrimmed},
		// The sortlist line followed the options line that is gone: it
		// comes back after the line before, where vpnd's lines began.
		{"an options line changed", strings.Replace(w, "options edns0 trust-ad\n", "options edns0\n", 1),
			strings.Replace(originalTrimmed, "options edns0 trust-ad\nsortlist 192.0.2.0/24\n", "sortlist 192.0.2.0/24\noptions edns0\n", 1)},
		{"an options line removed", strings.Replace(w, "options   timeout:2\n", "", 1), strings.Replace(originalTrimmed, "options   timeout:2\n", "", 1)},
		{"one of vpnd's nameservers removed", strings.Replace(w, "nameserver fd00::1\n", "", 1), originalTrimmed},
		{"a copy of vpnd's nameserver added", w + "nameserver 10.8.0.1\n", originalTrimmed + "nameserver 10.8.0.1\n"},
		{"rewritten by someone else", "# DHCP\nnameserver 198.51.100.53\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, mine := restoredContent(rec, []byte(tc.cur))
			if tc.want == "" {
				if mine {
					t.Errorf("restoredContent changed someone else's file into:\n%s", got)
				}
				return
			}
			if !mine || string(got) != tc.want {
				t.Errorf("restoredContent = %v:\n%s\nwant:\n%s", mine, got, tc.want)
			}
			if strings.Contains(string(got), "corp.example") || strings.Contains(string(got), "Written by vpnd") {
				t.Errorf("vpnd's lines are left:\n%s", got)
			}
		})
	}
	// A record that is not vpnd's rendering of its original is not used
	// to edit anything.
	bad := &state.ResolvConf{Path: rec.Path, Existed: true, Original: []byte(original), Written: []byte("nameserver 10.8.0.1\n")}
	if got, mine := restoredContent(bad, []byte("nameserver 10.8.0.1\nnameserver 198.51.100.1\n")); mine {
		t.Errorf("an inconsistent record edited the file into:\n%s", got)
	}
}

// Another program appends a nameserver while the VPN is up: after it,
// the VPN's servers are gone, the appended line and the host's own are
// there, and a warning says so.
func TestFileKeepsOthersEdits(t *testing.T) {
	e := newFileEnv(t, ptr(original), 0o644)
	if err := e.f.Apply(vpnLink, fullTunnelDNS); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(e.path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("nameserver 198.51.100.1\n")
	f.Close()
	if err := e.f.Revert(vpnLink); err != nil {
		t.Fatal(err)
	}
	if got, want := e.read(t), originalTrimmed+"nameserver 198.51.100.1\n"; got != want {
		t.Errorf("after the VPN:\n%s\nwant:\n%s", got, want)
	}
	if e.logs.FilterMessageSnippet("vpnd removed its own lines and kept the other changes").Len() != 1 {
		t.Errorf("no warning: %v", e.logs.All())
	}
	if r := e.record(t); r != nil {
		t.Errorf("record kept: %+v", r)
	}
	e.noTempFiles(t)
}

// An empty resolv.conf before the VPN: vpnd never writes an empty file
// over one with content, so a comment stands for it.
func TestFileEmptyBefore(t *testing.T) {
	e := newFileEnv(t, ptr(""), 0o644)
	if err := e.f.Apply(vpnLink, fullTunnelDNS); err != nil {
		t.Fatal(err)
	}
	if r := e.record(t); r == nil || !r.Existed || len(r.Original) != 0 {
		t.Fatalf("record %+v", r)
	}
	if err := e.f.Revert(vpnLink); err != nil {
		t.Fatal(err)
	}
	if got := e.read(t); got != emptyStandIn {
		t.Errorf("after the VPN: %q, want %q", got, emptyStandIn)
	}
}

// A resolv.conf over MaxResolvConf is refused at start, and by Apply if
// it grew later, with an error naming it and nothing changed.
func TestFileTooLarge(t *testing.T) {
	big := "# " + strings.Repeat("x", MaxResolvConf) + "\nnameserver 192.0.2.53\n"
	dir := t.TempDir()
	st, err := state.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p := filepath.Join(dir, "resolv.conf")
	os.WriteFile(p, []byte(big), 0o644)
	want := fmt.Sprintf("%s is %d bytes, more than the 65536 that vpnd reads", p, len(big))
	if _, err := NewFile(p, st, nil); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("NewFile: %v, want %q", err, want)
	}
	e := newFileEnv(t, ptr(original), 0o644)
	os.WriteFile(e.path, []byte(big), 0o644)
	want = fmt.Sprintf("%s is %d bytes, more than the 65536", e.path, len(big))
	if err := e.f.Apply(vpnLink, fullTunnelDNS); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Apply: %v, want %q", err, want)
	}
	if e.read(t) != big || e.record(t) != nil {
		t.Errorf("the file or the state changed")
	}
	e.noTempFiles(t)
}

// racingWriter rewrites path the way a non-atomic editor does: truncate,
// a pause, write. hold stops it between two writes.
type racingWriter struct {
	mu   sync.Mutex
	stop chan struct{}
	done chan struct{}
	n    int
}

func startRacingWriter(t *testing.T, path, content string) *racingWriter {
	w := &racingWriter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			w.mu.Lock()
			if f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644); err == nil {
				time.Sleep(time.Duration(1+i%3) * time.Millisecond)
				f.WriteString(content)
				f.Close()
				w.n++
			}
			w.mu.Unlock()
			time.Sleep(time.Duration(i%7) * 5 * time.Millisecond)
		}
	}()
	t.Cleanup(w.finish)
	return w
}

func (w *racingWriter) finish() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// A non-atomic editor racing 100 VPN cycles: whenever the editor is
// between two writes, the file holds the editor's content, never nothing
// and never half of it. vpnd may refuse a setUp while the file keeps
// changing under it (it gives up after a few tries), and then leaves the
// file and the state directory as they were.
func TestFileRacingWriter(t *testing.T) {
	const editors = "# the editor's\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"
	e := newFileEnv(t, ptr(editors), 0o644)
	w := startRacingWriter(t, e.path, editors)
	refused := 0
	for i := 0; i < 100; i++ {
		err := e.f.Apply(vpnLink, fullTunnelDNS)
		switch {
		case err != nil && strings.Contains(err.Error(), "kept changing"):
			refused++
			if r := e.record(t); r != nil {
				t.Fatalf("cycle %d: a refused Apply left its record", i)
			}
		case err != nil:
			t.Fatalf("cycle %d: Apply: %v", i, err)
		default:
			if err := e.f.Revert(vpnLink); err != nil {
				t.Fatalf("cycle %d: Revert: %v", i, err)
			}
		}
		w.mu.Lock()
		got := e.read(t)
		w.mu.Unlock()
		if got != editors {
			t.Fatalf("cycle %d: after the VPN, between two of the editor's writes, the file holds %q, want the editor's %q", i, got, editors)
		}
	}
	w.finish()
	t.Logf("the editor wrote %d times during 100 cycles; %d setUps were refused because the file kept changing", w.n, refused)
	if refused == 100 {
		t.Errorf("every Apply was refused: the race was not run")
	}
	if got := e.read(t); got != editors {
		t.Errorf("at the end: %q", got)
	}
}
