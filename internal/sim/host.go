package sim

import (
	"go.uber.org/zap"

	"github.com/vpnd/vpnd/internal/tun"
)

// Host is the kernel of `vpnd --sim`: the model, with the simulated host
// behind each TUN (Echo), the real host's addresses for the manager's
// overlap check, read-only, and no socket marks. It needs no privilege and
// changes nothing in the kernel.
type Host struct {
	*Kernel
	host *tun.HostReader
}

// NewHost opens the read-only netlink socket that HostPrefixes answers
// from, in the current network namespace.
func NewHost() (*Host, error) {
	r, err := tun.NewHostReader()
	if err != nil {
		return nil, err
	}
	return &Host{Kernel: New(Options{Packet: Echo, HostPrefixes: r.HostPrefixes}), host: r}, nil
}

// MarkSocket sets no mark: a simulated VPN has no rules for a mark to
// bypass, and setting SO_MARK needs a privilege that `vpnd --sim` does not
// have. Protect still checks the socket first (CheckSocket), as on a host.
func (h *Host) MarkSocket(fd int, mark uint32) error { return nil }

// Sweep removes nothing: a killed simulated vpnd leaves nothing behind, its
// model went with it. It has tun.Netlink's signature, so that vpnd starts
// the same way on either kernel.
func (h *Host) Sweep(*zap.Logger, tun.SweepSpec) ([]string, error) { return nil, nil }

// Close deletes the simulated links, waits for their readers, and closes
// the netlink socket.
func (h *Host) Close() error {
	h.Kernel.Close()
	return h.host.Close()
}
