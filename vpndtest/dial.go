package vpndtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"runtime"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/client"
)

// Dial connects to vpnd as uid (vpnd learns the uid from the connection's
// peer credentials; the gid is the uid's primary group, or the same number
// for a uid without a passwd entry). Under the sim backend without root
// only the caller's own uid can be dialled; other uids skip the test with
// the reason. The client is closed when the test ends, before the checks.
func (e *Env) Dial(t testing.TB, uid uint32) *client.Client {
	t.Helper()
	own := uint32(os.Geteuid())
	if own != 0 && uid != own {
		t.Skipf("vpndtest: connecting as uid %d needs root; this test runs as uid %d", uid, own)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	var c *client.Client
	var err error
	if uid == own {
		c, err = client.Dial(ctx, e.sock)
	} else {
		var uc *net.UnixConn
		if uc, err = dialAs(e.sock, uid, primaryGID(uid)); err == nil {
			c = client.New(uc)
		}
	}
	if err != nil {
		t.Fatalf("vpndtest: connect to vpnd as uid %d: %v", uid, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialAs connects to the Unix socket sock with the credentials uid and
// gid, which vpnd reads from it with SO_PEERCRED. Only the connecting
// thread takes them on: a thread of the test's own process, locked to a
// goroutine that exits without unlocking it, so that the Go runtime ends
// the thread and no other goroutine ever runs with its credentials (and
// the runtime makes no new thread from a locked one). The connection
// keeps the credentials it was made with, wherever it is used from.
func dialAs(sock string, uid, gid uint32) (*net.UnixConn, error) {
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		// Raw system calls change this thread only; syscall.Setuid and
		// friends would change every thread of the process.
		for _, c := range []struct {
			what string
			nr   uintptr
			args [3]uintptr
		}{
			{"setgroups", unix.SYS_SETGROUPS, [3]uintptr{0, 0, 0}},
			{"setresgid", unix.SYS_SETRESGID, [3]uintptr{uintptr(gid), uintptr(gid), uintptr(gid)}},
			{"setresuid", unix.SYS_SETRESUID, [3]uintptr{uintptr(uid), uintptr(uid), uintptr(uid)}},
		} {
			if _, _, errno := unix.RawSyscall(c.nr, c.args[0], c.args[1], c.args[2]); errno != 0 {
				done <- result{-1, fmt.Errorf("%s: %w", c.what, errno)}
				return
			}
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			done <- result{-1, err}
			return
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
			unix.Close(fd)
			done <- result{-1, fmt.Errorf("connect %s: %w", sock, err)}
			return
		}
		done <- result{fd, nil}
	}()
	r := <-done
	if r.err != nil {
		return nil, r.err
	}
	f := os.NewFile(uintptr(r.fd), "vpnd")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("not a Unix socket")
	}
	return uc, nil
}

// primaryGID is uid's group in the passwd database, or the same number.
func primaryGID(uid uint32) uint32 {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		if g, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
			return uint32(g)
		}
	}
	return uid
}

// Command returns a command that runs a program as uid where the VPN's
// traffic is: in vpnd's namespace (kernel), or in the caller's (sim), with
// VPND_SOCKET set to vpnd's socket. The gid is uid's primary group, with no
// supplementary groups. Under the sim backend without root only the
// caller's own uid can run a command: for another, the command's Err is
// set and Start, Run or Output return it.
func (e *Env) Command(uid uint32, name string, arg ...string) *exec.Cmd {
	own := uint32(os.Geteuid())
	var cmd *exec.Cmd
	switch {
	case !e.sim:
		argv := []string{"netns", "exec", e.ns}
		if uid != 0 {
			gid := strconv.FormatUint(uint64(primaryGID(uid)), 10)
			argv = append(argv, "setpriv", "--reuid", strconv.FormatUint(uint64(uid), 10), "--regid", gid, "--clear-groups", "--")
		}
		cmd = exec.Command("ip", append(append(argv, name), arg...)...)
	default:
		cmd = exec.Command(name, arg...)
		switch {
		case uid == own:
		case own == 0:
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: primaryGID(uid), Groups: []uint32{}}}
		default:
			cmd.Err = fmt.Errorf("vpndtest: running a command as uid %d needs root; this test runs as uid %d", uid, own)
		}
	}
	cmd.Env = append(os.Environ(), "VPND_SOCKET="+e.sock)
	return cmd
}
