package tun

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/errs"
)

// CheckSocket returns an *errs.Error with code 2203004 unless fd is an
// AF_INET or AF_INET6 socket of type stream or datagram with no pending
// error. Only those can carry a VPN tunnel, and marking anything else would
// either fail or silently do nothing.
//
// Reading SO_ERROR clears it, as any reader of SO_ERROR does; a socket that
// fails the check is useless anyway. An unconnected socket passes: apps
// protect their tunnel socket before they connect it.
func (n *Netlink) CheckSocket(fd int) error { return CheckSocket(fd) }

// CheckSocket is Netlink.CheckSocket; it needs no privilege, so tuntest's
// fake uses it too.
func CheckSocket(fd int) error {
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

// MarkSocket ORs mark into the socket's SO_MARK, keeping the bits other
// software (a firewall, another VPN) may have set. Setting SO_MARK needs
// CAP_NET_ADMIN, which is why vpnd marks the client's socket for it.
func (n *Netlink) MarkSocket(fd int, mark uint32) error {
	old, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
	if err != nil {
		return fmt.Errorf("get SO_MARK of fd %d: %w", fd, err)
	}
	nv := uint32(old) | mark
	if nv == uint32(old) {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(int32(nv))); err != nil {
		return fmt.Errorf("set SO_MARK %#x on fd %d: %w", nv, fd, err)
	}
	return nil
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
