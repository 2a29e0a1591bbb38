package sim

import "github.com/vpnd/vpnd/internal/manager"

// Host is the kernel of `vpnd --sim`: the model, with the simulated host
// behind each TUN (Echo), the real host's addresses for the manager's
// overlap check (read-only, through hostPrefixes), and no socket marks. It
// needs no privilege and changes nothing in the kernel.
type Host struct {
	*Kernel
}

// NewHost returns the simulated host. hostPrefixes answers the overlap
// check; vpnd gives it a read-only netlink reader of the namespace it
// runs in.
func NewHost(hostPrefixes func(except string) ([]manager.HostPrefix, error)) *Host {
	return &Host{Kernel: New(Options{Packet: Echo, HostPrefixes: hostPrefixes})}
}

// MarkSocket sets no mark: a simulated VPN has no rules for a mark to
// bypass, and setting SO_MARK needs a privilege that `vpnd --sim` does not
// have. Protect still checks the socket first, as on a host.
func (h *Host) MarkSocket(fd int, mark uint32) error { return nil }
