package tun_test

import (
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/tun"
)

// Netlink is the manager's Kernel. The check lives in a test so that tun
// itself never imports manager (which imports tun for its types).
var _ manager.Kernel = (*tun.Netlink)(nil)
