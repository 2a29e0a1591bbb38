package server

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// activationHelperEnv makes the test binary act as a socket-activated
// process (see TestActivatedHelper) instead of running the tests.
const activationHelperEnv = "VPND_TEST_ACTIVATION_HELPER"

// TestActivatedHelper is not a test: it is the child that runActivated
// starts with descriptors from fd 3 on, as systemd starts a service. It
// prints what Activated returned, then whether LISTEN_* are still set,
// and accepts one connection on the listener to show that it works.
func TestActivatedHelper(t *testing.T) {
	if os.Getenv(activationHelperEnv) == "" {
		t.Skip("helper process for TestActivated")
	}
	ln, err := Activated()
	switch {
	case err != nil:
		fmt.Printf("ERR %v\n", err)
	case ln == nil:
		fmt.Println("NONE")
	default:
		fmt.Printf("LISTENER %s\n", ln.Addr())
	}
	fmt.Printf("ENV %q %q %q\n", os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"))
	if ln != nil {
		c, err := ln.Accept()
		if err != nil {
			fmt.Printf("ACCEPT %v\n", err)
		} else {
			fmt.Println("ACCEPTED")
			c.Close()
		}
		ln.Close()
	}
	os.Stdout.Sync()
	os.Exit(0)
}

// runActivated runs TestActivatedHelper with files as fds 3, 4, ... and
// LISTEN_FDS = len(files); listenPID "self" makes LISTEN_PID the child's
// own pid, as systemd sets it. connect, if set, is dialled while the child
// waits in Accept.
func runActivated(t *testing.T, files []*os.File, listenPID string, connect string) string {
	t.Helper()
	script := `export LISTEN_PID="$VPND_TEST_LISTEN_PID"; exec "$0" "$@"`
	if listenPID == "self" {
		script = `export LISTEN_PID=$$; exec "$0" "$@"`
	}
	cmd := exec.Command("sh", "-c", script, os.Args[0], "-test.run=^TestActivatedHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), activationHelperEnv+"=1", "VPND_TEST_LISTEN_PID="+listenPID,
		fmt.Sprintf("LISTEN_FDS=%d", len(files)), "LISTEN_FDNAMES=vpnd.socket")
	cmd.ExtraFiles = files
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if connect != "" {
		if c, err := net.Dial("unix", connect); err == nil {
			c.Close()
		} else {
			t.Errorf("dial %s: %v", connect, err)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	return out.String()
}

// socketFile returns a socket of the given domain and type as a file; bind
// to path (if not "") and listen (if listen).
func socketFile(t *testing.T, domain, typ int, path string, listen bool) *os.File {
	t.Helper()
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "socket")
	t.Cleanup(func() { f.Close() })
	if path != "" {
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
	}
	if domain == unix.AF_INET {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
	}
	if listen {
		if err := unix.Listen(fd, 8); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// Socket activation: the one listening Unix stream socket systemd passes
// is served; anything else is refused with a precise error; LISTEN_* are
// cleared so that they do not leak to children; a LISTEN_PID naming
// another process means "not activated".
func TestActivated(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "vpnd.sock")
	good := socketFile(t, unix.AF_UNIX, unix.SOCK_STREAM, sock, true)

	cleared := `ENV "" "" ""`
	t.Run("one listening unix stream socket", func(t *testing.T) {
		out := runActivated(t, []*os.File{good}, "self", sock)
		for _, want := range []string{"LISTENER " + sock, cleared, "ACCEPTED"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if st, err := os.Lstat(sock); err != nil || st.Mode()&os.ModeSocket == 0 {
			t.Errorf("the socket file after the listener closed: %v", err)
		}
	})
	t.Run("LISTEN_PID of another process", func(t *testing.T) {
		out := runActivated(t, []*os.File{good}, "1", "")
		if !strings.Contains(out, "NONE") || !strings.Contains(out, cleared) {
			t.Errorf("got:\n%s", out)
		}
	})
	t.Run("not activated", func(t *testing.T) {
		out := runActivated(t, nil, "self", "")
		if !strings.Contains(out, "NONE") {
			t.Errorf("got:\n%s", out)
		}
	})

	refused := []struct {
		name  string
		files func() []*os.File
		want  string
	}{
		{"two sockets", func() []*os.File {
			return []*os.File{good, socketFile(t, unix.AF_UNIX, unix.SOCK_STREAM, filepath.Join(dir, "b.sock"), true)}
		}, "ERR socket activation passed 2 descriptors; vpnd serves exactly one listening Unix stream socket"},
		{"datagram socket", func() []*os.File {
			return []*os.File{socketFile(t, unix.AF_UNIX, unix.SOCK_DGRAM, filepath.Join(dir, "d.sock"), false)}
		}, fmt.Sprintf("ERR socket activation: fd 3 (vpnd.socket): socket of domain %d, type %d; vpnd serves an AF_UNIX SOCK_STREAM socket (ListenStream=PATH)", unix.AF_UNIX, unix.SOCK_DGRAM)},
		{"TCP socket", func() []*os.File {
			return []*os.File{socketFile(t, unix.AF_INET, unix.SOCK_STREAM, "", true)}
		}, fmt.Sprintf("ERR socket activation: fd 3 (vpnd.socket): socket of domain %d, type %d;", unix.AF_INET, unix.SOCK_STREAM)},
		{"not listening (Accept=yes)", func() []*os.File {
			return []*os.File{socketFile(t, unix.AF_UNIX, unix.SOCK_STREAM, filepath.Join(dir, "n.sock"), false)}
		}, "ERR socket activation: fd 3 (vpnd.socket): socket is not listening (Accept=yes passes connections; vpnd needs Accept=no)"},
		{"not a socket", func() []*os.File {
			f, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return []*os.File{f}
		}, "ERR socket activation: fd 3 (vpnd.socket): not a socket: socket operation on non-socket"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			out := runActivated(t, tc.files(), "self", "")
			if !strings.Contains(out, tc.want) || !strings.Contains(out, cleared) {
				t.Errorf("got:\n%s\nwant %q", out, tc.want)
			}
		})
	}
}
