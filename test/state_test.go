package test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// State is input: vpnd's --state-dir is checked as its socket directory
// is, each state file is read as strictly as a request, a resolv.conf
// record is trusted only for what vpnd itself could have written, and two
// vpnds never share a state directory.

// startOrExit starts cmd, a vpnd serving on sock, and waits until it
// exits (its exit code and output) or serves (served true: it is then
// stopped with SIGTERM, so that the test can look at what it did).
func startOrExit(t testing.TB, cmd *exec.Cmd, sock string) (code int, out string, served bool) {
	t.Helper()
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	deadline := time.Now().Add(hangGuard)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		select {
		case <-done:
			return cmd.ProcessState.ExitCode(), buf.String(), false
		default:
		}
		if answers(sock) || time.Now().After(deadline) {
			break
		}
		time.Sleep(wait)
	}
	served = answers(sock)
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(hangGuard):
		cmd.Process.Kill()
		<-done
	}
	if !served {
		t.Errorf("vpnd neither served nor exited within %v (a hang at start-up):\n%s", hangGuard, buf.String())
	}
	return cmd.ProcessState.ExitCode(), buf.String(), served
}

// wantRefusedStart runs vpnd in ns with flags and expects it to exit 1
// before serving, with every one of want in its output, and its namespace
// not swept.
func wantRefusedStart(t *testing.T, ns string, flags []string, want ...string) string {
	t.Helper()
	sock := filepath.Join(newDaemonDir(t), "vpnd.sock")
	code, out, served := startOrExit(t, vpndCommand(t, ns, sock, flags...), sock)
	if served || code != 1 {
		t.Errorf("vpnd started (served %v, exit %d), want exit 1 before serving:\n%s", served, code, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("the message does not say %q:\n%s", w, out)
		}
	}
	wantNotSwept(t, ns)
	return out
}

// vpndUID is the uid the tests' vpnd runs as.
func vpndUID() int {
	if simBackend {
		return simUID
	}
	return 0
}

// writeAs writes data to p as uid (a process of that uid does it).
func writeAs(t testing.TB, uid uint32, p string, data []byte, perm os.FileMode) {
	t.Helper()
	cmd := exec.Command("sh", "-c", `umask 0; cat > "$1" && chmod "$2" "$1"`, "sh", p, fmt.Sprintf("%o", perm))
	cmd.Stdin = bytes.NewReader(data)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: primaryGID(uid), Groups: []uint32{}}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("write %s as uid %d: %v: %s", p, uid, err, out)
	}
}

// fileState describes p as an attacker would care: owner, mode (setuid
// included) and content.
func fileState(t testing.TB, p string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return err.Error()
	}
	b, _ := os.ReadFile(p)
	return fmt.Sprintf("uid %d gid %d mode %04o content %q", st.Uid, st.Gid, st.Mode&0o7777, b)
}

// resolvRecord is a resolv-conf.json record as vpnd stores it; mode is
// Go's os.FileMode, whose setuid bit is 1<<23.
func resolvRecord(path string, original, written string, mode uint32, uid, gid int) []byte {
	return fmt.Appendf(nil, `{"path":%q,"existed":true,"original":%q,"mode":%d,"uid":%d,"gid":%d,"written":%q}`,
		path, base64.StdEncoding.EncodeToString([]byte(original)), mode, uid, gid, base64.StdEncoding.EncodeToString([]byte(written)))
}

const goSetuid = 1 << 23 // os.ModeSetuid

// --state-dir is refused, naming it, where a user other than root and
// vpnd's own could change it, before anything is swept.
func TestStateDirChecked(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, base string) (state, refused string)
		want    string
	}{
		{"another user's, mode 0700", func(t *testing.T, base string) (string, string) {
			p := filepath.Join(base, "state")
			mkdirOwned(t, p, 0o700, uidNormal)
			return p, p
		}, "is owned by uid 4000"},
		{"another user's, mode 0777", func(t *testing.T, base string) (string, string) {
			p := filepath.Join(base, "state")
			mkdirOwned(t, p, 0o777, uidNormal)
			return p, p
		}, "is owned by uid 4000"},
		{"vpnd's, mode 0777", func(t *testing.T, base string) (string, string) {
			p := filepath.Join(base, "state")
			mkdirOwned(t, p, 0o777, vpndUID())
			return p, p
		}, "has mode 0777"},
		{"vpnd's, sticky and writable by all", func(t *testing.T, base string) (string, string) {
			p := filepath.Join(base, "state")
			mkdirOwned(t, p, os.ModeSticky|0o777, vpndUID())
			return p, p
		}, "has mode 1777"},
		{"vpnd's, writable by the group", func(t *testing.T, base string) (string, string) {
			p := filepath.Join(base, "state")
			mkdirOwned(t, p, 0o770, vpndUID())
			return p, p
		}, "has mode 0770"},
		{"a symbolic link", func(t *testing.T, base string) (string, string) {
			mkdirOwned(t, filepath.Join(base, "real"), 0o700, vpndUID())
			p := filepath.Join(base, "state")
			if err := os.Symlink(filepath.Join(base, "real"), p); err != nil {
				t.Fatal(err)
			}
			return p, p
		}, "is a symbolic link (give --state-dir a path without symbolic links)"},
		{"an ancestor writable by others", func(t *testing.T, base string) (string, string) {
			mkdirOwned(t, filepath.Join(base, "shared"), 0o757, 0)
			mkdirOwned(t, filepath.Join(base, "shared", "state"), 0o700, vpndUID())
			return filepath.Join(base, "shared", "state"), filepath.Join(base, "shared")
		}, "has mode 0757"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := newNetns(t)
			plantLeftovers(t, ns)
			state, refused := tc.prepare(t, newDaemonDir(t))
			wantRefusedStart(t, ns, []string{"--state-dir", state}, "vpnd: unsafe state directory: "+refused+" "+tc.want)
		})
	}
}

// The attack: a state directory that another user may write (mode 0777,
// or theirs), in which that user places a resolv.conf record. vpnd must
// not start, and so must not "restore" anything: not the attacker's bytes
// as a root-owned setuid file, not a root file chowned to the attacker,
// and this with --dns-backend none too.
func TestStateDirAttack(t *testing.T) {
	kernelOnly(t, "vpnd as root writing files that a record names; a simulated vpnd runs as an ordinary user")
	t.Parallel()
	const payload = "#!/bin/sh\nid > /tmp/pwned\n"
	for _, dir := range []struct {
		name  string
		perm  os.FileMode
		owner int
	}{{"root's, mode 0777", 0o777, 0}, {"the attacker's", 0o755, uidNormal}} {
		for _, attack := range []struct {
			name string
			// target makes the file the record names and returns the
			// record.
			record func(t *testing.T, base string) (target string, record []byte)
		}{
			{"a setuid root file of the attacker's bytes", func(t *testing.T, base string) (string, []byte) {
				home := filepath.Join(base, "home")
				mkdirOwned(t, home, 0o755, uidNormal)
				target := filepath.Join(home, "shell")
				writeAs(t, uidNormal, target, []byte("innocent\n"), 0o644)
				return target, resolvRecord(target, payload, "innocent\n", goSetuid|0o755, -1, -1)
			}},
			{"a root file chowned to the attacker", func(t *testing.T, base string) (string, []byte) {
				target := filepath.Join(base, "root-secret")
				if err := os.WriteFile(target, []byte("root's own\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				return target, resolvRecord(target, "root's own\n", "root's own\n", 0o666, uidNormal, uidNormal)
			}},
		} {
			t.Run(dir.name+"/"+attack.name, func(t *testing.T) {
				t.Parallel()
				base := newDaemonDir(t)
				state := filepath.Join(base, "state")
				mkdirOwned(t, state, dir.perm, dir.owner)
				target, record := attack.record(t, base)
				writeAs(t, uidNormal, filepath.Join(state, "resolv-conf.json"), record, 0o644)
				before := fileState(t, target)
				ns := newNetns(t)
				plantLeftovers(t, ns)
				resolv := filepath.Join(t.TempDir(), "resolv.conf")
				wantRefusedStart(t, ns, []string{"--state-dir", state, "--dns-backend", "none", "--resolv-conf", resolv},
					"vpnd: unsafe state directory: "+state)
				if after := fileState(t, target); after != before {
					t.Errorf("vpnd acted on the attacker's record: %s was %s, is now %s", target, before, after)
				}
			})
		}
	}
}

// A record in a safe state directory (one an older vpnd left, or edited
// by hand) is still checked: it applies only to --resolv-conf, its mode
// must be permission bits only, and the file it restores gets the owner
// that the file at --resolv-conf has, never the record's.
func TestResolvRecordTrust(t *testing.T) {
	kernelOnly(t, "vpnd as root restoring a resolv.conf at start; a simulated vpnd runs as an ordinary user")
	t.Parallel()
	const during = "nameserver 10.8.0.1\n"
	const before = "nameserver 192.0.2.53\n"
	setup := func(t *testing.T) (ns, state, resolv string) {
		ns = newNetns(t)
		plantLeftovers(t, ns)
		state = stateDirFor(t, ns)
		resolv = filepath.Join(t.TempDir(), "resolv.conf")
		if err := os.WriteFile(resolv, []byte(during), 0o644); err != nil {
			t.Fatal(err)
		}
		return ns, state, resolv
	}
	flags := func(resolv string) []string { return []string{"--dns-backend", "none", "--resolv-conf", resolv} }

	t.Run("another file than --resolv-conf", func(t *testing.T) {
		t.Parallel()
		ns, state, resolv := setup(t)
		other := filepath.Join(t.TempDir(), "other")
		os.WriteFile(other, []byte(during), 0o644)
		rec := filepath.Join(state, "resolv-conf.json")
		os.WriteFile(rec, resolvRecord(other, before, during, 0o644, 0, 0), 0o600)
		wantRefusedStart(t, ns, flags(resolv), "vpnd: resolv.conf record "+rec+": it is for \""+other+"\", and --resolv-conf is "+resolv)
		if got := readFile(t, other); got != during {
			t.Errorf("%s was restored: %q", other, got)
		}
	})
	t.Run("a setuid mode", func(t *testing.T) {
		t.Parallel()
		ns, state, resolv := setup(t)
		rec := filepath.Join(state, "resolv-conf.json")
		os.WriteFile(rec, resolvRecord(resolv, before, during, goSetuid|0o755, 0, 0), 0o600)
		wantRefusedStart(t, ns, flags(resolv), "vpnd: resolv.conf record "+rec+": mode", "is not permission bits")
		if got := fileState(t, resolv); got != fmt.Sprintf("uid 0 gid 0 mode 0644 content %q", during) {
			t.Errorf("%s changed: %s", resolv, got)
		}
	})
	t.Run("another owner", func(t *testing.T) {
		t.Parallel()
		ns, state, resolv := setup(t)
		os.WriteFile(filepath.Join(state, "resolv-conf.json"), resolvRecord(resolv, before, during, 0o666, uidNormal, uidNormal), 0o600)
		d := startDaemon(t, inNetns(ns), withFlags(flags(resolv)...))
		if got, want := fileState(t, resolv), fmt.Sprintf("uid 0 gid 0 mode 0644 content %q", before); got != want {
			t.Errorf("restored %s: %s, want %s (the owner and mode it had)", resolv, got, want)
		}
		noRecord(t, d.ns)
	})
}

// Each state file is read as strictly as a request: no symbolic link, a
// regular file only (a FIFO must not hang the start), a size cap, exactly
// one JSON value, setLockdown's limits. Anything else stops vpnd at start
// with a message naming the file.
func TestStateFilesStrict(t *testing.T) {
	t.Parallel()
	uids := func(n int, first uint64) string {
		var b strings.Builder
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"uid":%d}`, first+uint64(i))
		}
		return `{"enabled":true,"users":[` + b.String() + `]}`
	}
	const off = `{"enabled":false,"users":[]}`
	for _, tc := range []struct {
		name  string
		file  string
		plant func(t *testing.T, p string)
		want  string
	}{
		{"a symbolic link", "lockdown.json", func(t *testing.T, p string) {
			target := filepath.Join(newDaemonDir(t), "lockdown.json")
			plantAs(t, target, []byte(off))
			os.Symlink(target, p)
		}, "is a symbolic link"},
		{"a FIFO", "lockdown.json", func(t *testing.T, p string) {
			if err := unix.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chown(p, vpndUID(), vpndUID())
		}, "is not a regular file"},
		{"larger than the cap", "lockdown.json", func(t *testing.T, p string) {
			plantAs(t, p, []byte(off+strings.Repeat(" ", 2<<20)))
		}, "is larger than"},
		{"trailing garbage", "lockdown.json", func(t *testing.T, p string) {
			plantAs(t, p, []byte(off+"garbage"))
		}, "after the JSON value"},
		{"a second value", "lockdown.json", func(t *testing.T, p string) {
			plantAs(t, p, []byte(off+"\n"+uids(1, 4001)))
		}, "after the JSON value"},
		{"an unknown member", "lockdown.json", func(t *testing.T, p string) {
			plantAs(t, p, []byte(`{"enabled":false,"users":[],"extra":1}`))
		}, `unknown field "extra"`},
		{"5000 uids", "lockdown.json", func(t *testing.T, p string) {
			plantAs(t, p, []byte(uids(5000, 10000)))
		}, "5000 entries, at most 256"},
		{"uid 4294967295", "lockdown.json", func(t *testing.T, p string) {
			plantAs(t, p, []byte(uids(1, 4294967295)))
		}, "uid 4294967295 out of range"},
		{"another user's file", "lockdown.json", func(t *testing.T, p string) {
			plantAs(t, p, []byte(off))
			os.Chown(p, uidNormal, uidNormal)
		}, "is owned by uid 4000"},
		{"a file others may write", "lockdown.json", func(t *testing.T, p string) {
			plantAs(t, p, []byte(off))
			os.Chmod(p, 0o666)
		}, "has mode 0666"},
		{"a resolv.conf record with a second value", "resolv-conf.json", func(t *testing.T, p string) {
			rec := resolvRecord("/nonexistent/resolv.conf", "", "", 0o644, 0, 0)
			plantAs(t, p, append(rec, rec...))
		}, "after the JSON value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := newNetns(t)
			plantLeftovers(t, ns)
			p := filepath.Join(stateDirFor(t, ns), tc.file)
			tc.plant(t, p)
			wantRefusedStart(t, ns, []string{"--resolv-conf", filepath.Join(t.TempDir(), "resolv.conf")}, "vpnd: ", p, tc.want)
		})
	}
}

// newStateDir makes a state directory for a vpnd of its own (the harness
// gives the vpnds of one namespace the same one).
func newStateDir(t testing.TB) string {
	t.Helper()
	dir := newDaemonDir(t)
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if simBackend {
		forSim(t, dir)
	}
	return dir
}

// plantAs writes a state file as vpnd would own it.
func plantAs(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, vpndUID(), vpndUID()); err != nil {
		t.Fatal(err)
	}
}

// Two vpnds, one per network namespace, given the same state directory:
// the second refuses to start, naming the first, instead of sweeping the
// first one's lockdown at its next restart. The first keeps serving, its
// lockdown in force.
func TestStateDirShared(t *testing.T) {
	t.Parallel()
	state := newStateDir(t)
	a := startDaemon(t, withFlags("--state-dir", state))
	admin := a.dial(t, uidRoot)
	ok(t, admin.call("setLockdown", `{"enabled":true,"applications":["4001"]}`, ""))
	var rulesBefore []string
	if !a.sim {
		rulesBefore = a.lockdownRules(t)
		if len(rulesBefore) != 2 {
			t.Fatalf("lockdown rules %q, want one per family", rulesBefore)
		}
	}
	ns := newNetns(t)
	plantLeftovers(t, ns)
	wantRefusedStart(t, ns, []string{"--state-dir", state},
		fmt.Sprintf("vpnd: state directory %s is in use by another vpnd (pid %d)", state, a.pid))
	if s := admin.status(); !s.Lockdown.Enabled || !equalStrings(s.Lockdown.Applications, []string{"4001"}) {
		t.Errorf("the first vpnd's lockdown after the refused start: %+v", s.Lockdown)
	}
	if !a.sim {
		if got := a.lockdownRules(t); strings.Join(got, "\n") != strings.Join(rulesBefore, "\n") {
			t.Errorf("the first vpnd's lockdown rules changed: %q, were %q", got, rulesBefore)
		}
	}
	ok(t, admin.call("setLockdown", `{"enabled":false}`, ""))
	// Once the first one has stopped, the directory is free.
	a.stop(t)
	b := startDaemon(t, withFlags("--state-dir", state))
	b.stop(t)
}
