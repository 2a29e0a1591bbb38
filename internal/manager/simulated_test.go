package manager_test

import (
	"testing"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
	"github.com/vpnd/vpnd/protocol"
)

// Options.Simulated reaches every VpnInfo the manager hands out: the setUp
// result, status, and the notification; without it none says simulated.
func TestSimulatedVpnInfo(t *testing.T) {
	for _, simulated := range []bool{false, true} {
		k := tuntest.New()
		m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: table, RulePriority: priority, ProtectMark: mark, Simulated: simulated})
		ev := &events{}
		cancel := m.Subscribe(ev.add)
		_, info := setUp(t, m, alice, `{"addresses":["10.8.0.2/24"]}`)
		st := m.Status()
		ev.waitReasons(t, protocol.ReasonSetUp)
		if info.Simulated != simulated || st.VPN == nil || st.VPN.Simulated != simulated || ev.got[0].VPN.Simulated != simulated {
			t.Errorf("Options.Simulated %v: setUp %v, status %+v, notification %+v", simulated, info.Simulated, st.VPN, ev.got[0].VPN)
		}
		m.Shutdown()
		cancel()
		k.Close()
	}
}
