package server

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// Activated returns the listening socket that systemd passed to vpnd by
// socket activation (LISTEN_PID naming this process, LISTEN_FDS, the
// descriptors from fd 3 on), or nil, nil when vpnd was not started that
// way. It clears LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES either way.
//
// systemd owns that socket and its file (vpnd.socket sets its path, mode
// and directory): vpnd serves on it and never creates, chmods or removes
// it, and closing the returned listener leaves the file in place.
//
// vpnd serves exactly one Unix stream socket, so anything else is refused
// with an error rather than served: more than one descriptor, or one that
// is not a listening AF_UNIX SOCK_STREAM socket (a unit with the wrong
// ListenStream= or Accept=yes).
func Activated() (*net.UnixListener, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		return nil, nil
	}
	defer func() {
		for _, f := range files {
			f.Close() // net.FileListener dups the one it keeps
		}
	}()
	if len(files) != 1 {
		return nil, fmt.Errorf("socket activation passed %d descriptors; vpnd serves exactly one listening Unix stream socket", len(files))
	}
	f := files[0]
	if err := checkListening(f); err != nil {
		return nil, fmt.Errorf("socket activation: fd 3 (%s): %w", f.Name(), err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("socket activation: fd 3 (%s): %w", f.Name(), err)
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("socket activation: fd 3 (%s) is a %T, not a Unix socket", f.Name(), ln)
	}
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// checkListening makes sure f is a listening AF_UNIX SOCK_STREAM socket.
func checkListening(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var checkErr error
	ctlErr := rc.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			checkErr = fmt.Errorf("not a socket: %w", err)
			return
		}
		typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			checkErr = err
			return
		}
		if domain != unix.AF_UNIX || typ != unix.SOCK_STREAM {
			checkErr = fmt.Errorf("socket of domain %d, type %d; vpnd serves an AF_UNIX SOCK_STREAM socket (ListenStream=PATH)", domain, typ)
			return
		}
		listening, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			checkErr = err
			return
		}
		if listening == 0 {
			checkErr = errors.New("socket is not listening (Accept=yes passes connections; vpnd needs Accept=no)")
		}
	})
	if ctlErr != nil {
		return ctlErr
	}
	return checkErr
}
