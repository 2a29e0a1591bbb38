// Package preflight checks at start that vpnd can do its work, so that a
// vpnd that cannot create a VPN exits at once and says why, instead of
// serving and failing every setUp with a system internal error.
package preflight

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// TUNPath is the TUN clone device through which vpnd creates its
// interfaces.
const TUNPath = "/dev/net/tun"

// ErrNoNetAdmin says that the process lacks CAP_NET_ADMIN in its
// effective set, without which no link, address, route or rule can be
// changed and no socket marked.
var ErrNoNetAdmin = errors.New("missing capability CAP_NET_ADMIN (run as root or grant it, e.g. AmbientCapabilities=CAP_NET_ADMIN)")

// Check returns one error for each thing vpnd lacks: CAP_NET_ADMIN in its
// effective capability set, and a TUN device at tunPath that it can open
// for reading and writing. It returns nil when nothing is missing.
func Check(tunPath string) []error {
	var missing []error
	if ok, err := hasNetAdmin(); err != nil {
		missing = append(missing, fmt.Errorf("read own capabilities: %w", err))
	} else if !ok {
		missing = append(missing, ErrNoNetAdmin)
	}
	if err := openTUN(tunPath); err != nil {
		missing = append(missing, err)
	}
	return missing
}

func hasNetAdmin() (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // version 3: capabilities 0-31, then 32-63
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, err
	}
	const bit = unix.CAP_NET_ADMIN
	return data[bit/32].Effective&(1<<(bit%32)) != 0, nil
}

// openTUN opens the device as setUp will, and closes it again: only a
// real open shows a missing node, a missing module (ENODEV), a device
// cgroup or a file mode that keeps vpnd out.
func openTUN(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w (vpnd creates its TUN interfaces through this device)", path, err)
	}
	unix.Close(fd)
	return nil
}
