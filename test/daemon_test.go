package test

import (
	"bytes"
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

// runVpndToExit runs a vpnd that is expected to refuse to start, in a
// namespace of its own, and returns its exit code and output.
func runVpndToExit(t testing.TB, sock string, flags ...string) (int, string) {
	t.Helper()
	return runToExit(t, vpndCommand(t, newNetns(t), sock, flags...), flags)
}

// runVpndToExitIn is runVpndToExit in namespace ns, through prefix (see
// vpndCommandPrefixed).
func runVpndToExitIn(t testing.TB, ns string, prefix []string, sock string, flags ...string) (int, string) {
	t.Helper()
	return runToExit(t, vpndCommandPrefixed(t, ns, prefix, sock, flags...), flags)
}

func runToExit(t testing.TB, cmd *exec.Cmd, flags []string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(hangGuard):
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(hangGuard):
			cmd.Process.Kill()
			<-done
		}
		t.Fatalf("vpnd %v should have refused to start, but ran for %v: %s", flags, hangGuard, out.String())
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// Transport: the socket file.
func TestSocketFile(t *testing.T) {
	t.Parallel()

	t.Run("parent directory created 0755, socket 0666", func(t *testing.T) {
		t.Parallel()
		dir := newDaemonDir(t)
		sock := filepath.Join(dir, "run", "vpnd", "vpnd.sock")
		d := startDaemon(t, withSocket(sock))
		for _, p := range []string{filepath.Dir(sock)} {
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o755 || !st.IsDir() {
				t.Errorf("%s mode %v, want drwxr-xr-x", p, st.Mode())
			}
		}
		st, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o666 {
			t.Errorf("%s mode %v, want a socket with mode 0666", sock, st.Mode())
		}
		// Any uid may connect.
		d.dial(t, uidNormal).status()
	})

	t.Run("under umask 077: directories 0755, socket 0666", func(t *testing.T) {
		t.Parallel()
		// Before, mkdir applied the umask: a 0700 directory that no
		// other user could traverse.
		dir := newDaemonDir(t)
		sock := filepath.Join(dir, "run", "vpnd", "vpnd.sock")
		d := startDaemon(t, withSocket(sock), withPrefix(execAfter("umask 077")...))
		for _, p := range []string{filepath.Join(dir, "run"), filepath.Dir(sock)} {
			if st, err := os.Stat(p); err != nil || st.Mode() != os.ModeDir|0o755 {
				t.Errorf("%s: %v, want drwxr-xr-x (%v)", p, st.Mode(), err)
			}
		}
		if st, err := os.Lstat(sock); err != nil || st.Mode() != os.ModeSocket|0o666 {
			t.Errorf("%s: %v, want a socket with mode 0666 (%v)", sock, st.Mode(), err)
		}
		d.dial(t, uidNormal).status()
	})

	t.Run("refuses a socket a live vpnd serves", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t)
		code, out := runVpndToExit(t, d.sock)
		if code != 1 || !strings.Contains(out, fmt.Sprintf("already served by pid %d", d.pid)) {
			t.Errorf("second vpnd on a live socket: exit %d, want 1 and a message naming pid %d: %s", code, d.pid, out)
		}
		if _, err := os.Lstat(d.sock); err != nil {
			t.Fatalf("the second vpnd removed the live socket: %v", err)
		}
		c := d.dial(t, uidRoot)
		setUpOK(t, c.call("setUp", setUpParams, ""))
		ok(t, c.call("destroy", "{}", ""))
		d.waitClean(t, "destroy")
	})

	t.Run("replaces a stale socket file", func(t *testing.T) {
		t.Parallel()
		dir := newDaemonDir(t)
		sock := filepath.Join(dir, "stale.sock")
		staleSocketFile(t, sock)
		d := startDaemon(t, withSocket(sock))
		d.dial(t, uidRoot).status()
	})

	t.Run("refuses a directory that another user could change", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name    string
			prepare func(t *testing.T, base string) (sock string)
			want    string
		}{
			{"parent is a symbolic link into a user's directory", func(t *testing.T, base string) string {
				home := filepath.Join(base, "home")
				mkdirOwned(t, home, 0o755, uidNormal)
				if err := os.Symlink(home, filepath.Join(base, "run")); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(base, "run", "vpnd.sock")
			}, "/run is a symbolic link"},
			{"directory of another uid, mode 0777, with a stale socket", func(t *testing.T, base string) string {
				dir := filepath.Join(base, "vpnd")
				mkdirOwned(t, dir, 0o777, uidNormal)
				sock := filepath.Join(dir, "vpnd.sock")
				staleSocketFile(t, sock)
				return sock
			}, "/vpnd is owned by uid 4000"},
			{"ancestor of another uid", func(t *testing.T, base string) string {
				mkdirOwned(t, filepath.Join(base, "home"), 0o755, uidNormal)
				mkdirOwned(t, filepath.Join(base, "home", "vpnd"), 0o755, uidRoot)
				return filepath.Join(base, "home", "vpnd", "vpnd.sock")
			}, "/home is owned by uid 4000"},
			{"root's directory writable by others", func(t *testing.T, base string) string {
				mkdirOwned(t, filepath.Join(base, "vpnd"), 0o777, uidRoot)
				return filepath.Join(base, "vpnd", "vpnd.sock")
			}, "/vpnd has mode 0777"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				base := newDaemonDir(t)
				sock := tc.prepare(t, base)
				_, staleErr := os.Lstat(sock)
				ns := newNetns(t)
				plantLeftovers(t, ns)
				code, out := runVpndToExitIn(t, ns, nil, sock)
				if code != 1 {
					t.Errorf("exit %d, want 1: %s", code, out)
				}
				if !strings.Contains(out, "vpnd: listen: unsafe socket directory: "+base+tc.want) {
					t.Errorf("the message does not say %q:\n%s", base+tc.want, out)
				}
				if !strings.Contains(out, `"msg":"socket refused"`) {
					t.Errorf("the refusal was not logged:\n%s", out)
				}
				if _, err := os.Lstat(sock); (err == nil) != (staleErr == nil) {
					t.Errorf("the socket file changed: before %v, after %v", staleErr, err)
				}
				wantNotSwept(t, ns)
			})
		}
	})

	t.Run("ifname longer than 15 bytes is refused", func(t *testing.T) {
		t.Parallel()
		code, out := runVpndToExit(t, filepath.Join(newDaemonDir(t), "vpnd.sock"), "--ifname", "vpn-tun-too-long0")
		if code == 0 {
			t.Errorf("vpnd accepted --ifname of 17 bytes: %s", out)
		}
	})
}

func mkdirOwned(t testing.TB, p string, perm os.FileMode, uid int) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
}

// staleSocketFile leaves a socket file at p that no one listens on, as
// a vpnd of the same user would (under sim, simUID's: only its owner may
// connect to it and find it stale).
func staleSocketFile(t testing.TB, p string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: p}); err != nil {
		t.Fatal(err)
	}
	if simBackend {
		forSim(t, p)
	}
}

// Account types from a policy file.
func TestAccountsPolicy(t *testing.T) {
	t.Parallel()

	t.Run("a bad policy stops vpnd at start", func(t *testing.T) {
		t.Parallel()
		for name, policy := range map[string]string{
			"not JSON":     `{"default":`,
			"unknown type": `{"default":"superuser"}`,
			"bad user":     `{"default":"normal","users":{"0":"root"}}`,
		} {
			dir := newDaemonDir(t)
			p := filepath.Join(dir, "policy-bad.json")
			if err := os.WriteFile(p, []byte(policy), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out := runVpndToExit(t, filepath.Join(dir, "vpnd.sock"), "--accounts", p)
			if code == 0 {
				t.Errorf("%s: vpnd started with policy %s: %s", name, policy, out)
			}
			if !strings.Contains(out, "policy-bad.json") && !strings.Contains(strings.ToLower(out), "accounts") {
				t.Errorf("%s: the message does not say what is wrong: %q", name, out)
			}
		}
		dir := newDaemonDir(t)
		if code, out := runVpndToExit(t, filepath.Join(dir, "vpnd.sock"), "--accounts", filepath.Join(dir, "missing.json")); code == 0 {
			t.Errorf("vpnd started with a missing policy file: %s", out)
		}
	})

	t.Run("users by name, groups, users win", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, withAccounts(`{"default":"normal","users":{"root":"admin","bin":"normal","4001":"guest"},"groups":{"daemon":"guest","bin":"admin","nogroup":"admin"}}`))
		// daemon: guest through its group.
		wantError(t, d.dial(t, uidDaemon).call("destroy", "{}", ""), 2203001)
		// 4001: guest by uid key.
		wantError(t, d.dial(t, uidNormal2).call("destroy", "{}", ""), 2203001)
		owner := d.dial(t, uidNormal)
		setUpOK(t, owner.call("setUp", setUpParams, ""))
		// bin: its group says admin, its users entry says normal: normal.
		wantError(t, d.dial(t, uidBin).call("destroy", "{}", ""), 201)
		// nobody: admin through group nogroup (it is no longer a guest).
		ok(t, d.dial(t, uidNobody).call("destroy", "{}", ""))
		d.waitClean(t, "destroy by an admin")
	})

	t.Run("SIGHUP reloads; a bad reload keeps the old policy", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, withAccounts(`{"default":"normal"}`))
		d.ExpectLog("policy reload failed") // the bad reload below
		c := d.dial(t, uidNormal2)
		ok(t, c.call("destroy", "{}", ""))
		if err := os.WriteFile(d.accountsPath, []byte(`{"default":"normal","users":{"4001":"guest"}}`), 0o644); err != nil {
			t.Fatal(err)
		}
		d.signal(t, syscall.SIGHUP)
		eventually(t, "uid 4001 becomes a guest after SIGHUP", func() (bool, string) {
			m := c.call("destroy", "{}", "")
			return m.Error != nil && m.Error.Code == 2203001, m.raw
		})
		errorsBefore := strings.Count(d.stderr.String(), `"level":"error"`)
		if err := os.WriteFile(d.accountsPath, []byte(`{"default":"bogus"`), 0o644); err != nil {
			t.Fatal(err)
		}
		d.signal(t, syscall.SIGHUP)
		eventually(t, "the bad policy is logged as an error", func() (bool, string) {
			return strings.Count(d.stderr.String(), `"level":"error"`) > errorsBefore, "no error logged"
		})
		wantError(t, c.call("destroy", "{}", ""), 2203001)
		ok(t, d.dial(t, uidNormal).call("destroy", "{}", ""))
	})

	t.Run("embedded default: root admin, nobody guest, others normal", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t)
		wantError(t, d.dial(t, uidNobody).call("setUp", setUpParams, ""), 2203001)
		owner := d.dial(t, uidNormal)
		setUpOK(t, owner.call("setUp", setUpParams, ""))
		wantError(t, d.dial(t, uidDaemon).call("destroy", "{}", ""), 201)
		ok(t, d.dial(t, uidRoot).call("destroy", "{}", ""))
		d.waitClean(t, "destroy by root")
	})
}
