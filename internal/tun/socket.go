package tun

import (
	"fmt"

	"golang.org/x/sys/unix"
)

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
