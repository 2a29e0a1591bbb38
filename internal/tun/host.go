package tun

import (
	"go.uber.org/zap"
)

// HostReader reads the host's addresses and on-link prefixes, and nothing
// else, through a netlink socket of its own. Netlink dumps need no
// privilege, so `vpnd --sim`, which runs as any user and changes nothing in
// the kernel, uses it to refuse a NORMAL user's overlapping addresses
// exactly as vpnd does on a host. It sends dump requests only: it has no
// way to change anything.
type HostReader struct {
	n *Netlink
}

// NewHostReader opens the reader's socket in the current network
// namespace.
func NewHostReader() (*HostReader, error) {
	c, err := openNLConn()
	if err != nil {
		return nil, err
	}
	return &HostReader{n: &Netlink{log: zap.NewNop(), c: c}}, nil
}

// HostPrefixes is Netlink.HostPrefixes, without its cache (the reader
// has no monitor): the addresses of every link but the one named except,
// and the main table's on-link prefixes through them.
func (h *HostReader) HostPrefixes(except string) ([]HostPrefix, error) {
	ps, _, err := h.n.dumpHostPrefixes(except)
	return ps, err
}

// Close closes the socket.
func (h *HostReader) Close() error { return h.n.c.close() }
