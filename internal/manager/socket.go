package manager

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/errs"
)

// checkSocket returns an *errs.Error with code 2203004 unless fd is an
// AF_INET or AF_INET6 socket of type stream or datagram with no pending
// error. Only those can carry a VPN tunnel, and marking anything else would
// either fail or silently do nothing. It needs no privilege, and works
// alike whatever the Kernel.
//
// Reading SO_ERROR clears it, as any reader of SO_ERROR does; a socket that
// fails the check is useless anyway. An unconnected socket passes: apps
// protect their tunnel socket before they connect it.
func checkSocket(fd int) error {
	if fd < 0 {
		return errs.New(errs.CodeInvalidFD, "fd %d is negative", fd)
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return sockoptError(fd, "SO_DOMAIN", err)
	}
	if domain != unix.AF_INET && domain != unix.AF_INET6 {
		return errs.New(errs.CodeInvalidFD, "socket domain %s not AF_INET or AF_INET6", domainName(domain))
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return sockoptError(fd, "SO_TYPE", err)
	}
	if typ != unix.SOCK_STREAM && typ != unix.SOCK_DGRAM {
		return errs.New(errs.CodeInvalidFD, "socket type %s not stream or datagram", typeName(typ))
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return sockoptError(fd, "SO_ERROR", err)
	}
	if soErr != 0 {
		e := unix.Errno(soErr)
		return &errs.Error{Code: errs.CodeInvalidFD, Detail: "socket has a pending error: " + e.Error(), Err: e}
	}
	return nil
}

func sockoptError(fd int, opt string, err error) error {
	var detail string
	switch {
	case errors.Is(err, unix.ENOTSOCK):
		detail = "fd is not a socket"
	case errors.Is(err, unix.EBADF):
		detail = fmt.Sprintf("fd %d is not open", fd)
	default:
		detail = fmt.Sprintf("getsockopt %s: %v", opt, err)
	}
	return &errs.Error{Code: errs.CodeInvalidFD, Detail: detail, Err: err}
}

var domainNames = map[int]string{
	unix.AF_UNIX:      "AF_UNIX",
	unix.AF_INET:      "AF_INET",
	unix.AF_INET6:     "AF_INET6",
	unix.AF_NETLINK:   "AF_NETLINK",
	unix.AF_PACKET:    "AF_PACKET",
	unix.AF_VSOCK:     "AF_VSOCK",
	unix.AF_ALG:       "AF_ALG",
	unix.AF_BLUETOOTH: "AF_BLUETOOTH",
	unix.AF_XDP:       "AF_XDP",
}

func domainName(d int) string {
	if s, ok := domainNames[d]; ok {
		return s
	}
	return fmt.Sprintf("%d", d)
}

var typeNames = map[int]string{
	unix.SOCK_STREAM:    "SOCK_STREAM",
	unix.SOCK_DGRAM:     "SOCK_DGRAM",
	unix.SOCK_RAW:       "SOCK_RAW",
	unix.SOCK_RDM:       "SOCK_RDM",
	unix.SOCK_SEQPACKET: "SOCK_SEQPACKET",
	unix.SOCK_DCCP:      "SOCK_DCCP",
	unix.SOCK_PACKET:    "SOCK_PACKET",
}

func typeName(t int) string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("%d", t)
}
