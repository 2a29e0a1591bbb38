package main

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/rpc"
	"github.com/vpnd/vpnd/protocol"
)

// status says when the VPN is a simulation, and only then.
func TestStatusSimulated(t *testing.T) {
	for _, simulated := range []bool{false, true} {
		info := testInfo
		info.Simulated = simulated
		d := newFakeDaemon(t, func(_ *rpc.Conn, req protocol.Request, _ []*os.File) (any, []*os.File, error) {
			return protocol.StatusResult{State: "connected", VPN: &info}, nil, nil
		})
		code, out, stderr := vpnctl(t, context.Background(), "", "--socket", d.path, "status")
		if code != 0 || strings.Contains(out, "simulated:       yes") != simulated {
			t.Errorf("simulated %v: exit %d\n%s\n%s", simulated, code, out, stderr)
		}
	}
}
