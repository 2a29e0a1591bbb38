package wire

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// FDInfo describes a descriptor received from vpnd.
type FDInfo struct {
	// Path is what /proc/self/fd/N links to, e.g. "/dev/net/tun".
	Path string
	// TUN is true when TUNGETIFF succeeded; IfName and Flags are its answer.
	TUN    bool
	IfName string
	Flags  uint16
	// NonBlocking reports O_NONBLOCK in the open file's status flags.
	NonBlocking bool
	// Domain and Type are SO_DOMAIN and SO_TYPE for a socket (a simulated
	// vpnd's TUN is an AF_UNIX SOCK_SEQPACKET socket); 0 otherwise.
	Domain, Type int
}

// Describe inspects fd without changing it.
func Describe(fd int) (FDInfo, error) {
	var info FDInfo
	info.Path, _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return info, fmt.Errorf("F_GETFL: %w", err)
	}
	info.NonBlocking = fl&unix.O_NONBLOCK != 0
	if d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil {
		info.Domain = d
		info.Type, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	}
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return info, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err == nil {
		info.TUN = true
		info.IfName = ifr.Name()
		info.Flags = ifr.Uint16()
	}
	return info, nil
}

// String renders the info as one line of "key=value" words, which the
// rawclient prints and the tests parse back with ParseFDInfo.
func (i FDInfo) String() string {
	return fmt.Sprintf("path=%s tun=%t ifname=%s flags=%#x nonblock=%t domain=%d type=%d",
		strings.ReplaceAll(i.Path, " ", "_"), i.TUN, orDash(i.IfName), i.Flags, i.NonBlocking, i.Domain, i.Type)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ParseFDInfo parses FDInfo.String's output.
func ParseFDInfo(s string) (FDInfo, error) {
	var i FDInfo
	var flags uint32
	var ifname string
	_, err := fmt.Sscanf(s, "path=%s tun=%t ifname=%s flags=%v nonblock=%t domain=%d type=%d",
		&i.Path, &i.TUN, &ifname, &flags, &i.NonBlocking, &i.Domain, &i.Type)
	if err != nil {
		return i, fmt.Errorf("parse fd info %q: %w", s, err)
	}
	if ifname != "-" {
		i.IfName = ifname
	}
	i.Flags = uint16(flags)
	return i, nil
}
