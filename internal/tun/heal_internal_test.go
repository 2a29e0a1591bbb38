package tun

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// TestWatchChangesSurvivesOverflow floods the change watch until the
// kernel drops messages (ENOBUFS), then checks that the watch still
// reports changes: the raw socket stays usable, and vpnd resyncs.
func TestWatchChangesSurvivesOverflow(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	defer goleak.VerifyNone(t)
	core, logs := observer.New(zap.DebugLevel)
	n := New(zap.New(core))
	n.watchRcvBuf = 1 // the kernel rounds it up to its minimum
	f, index, err := n.CreateTUN("vpn-tun", false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := n.SetUp(index); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	changes, err := n.WatchChanges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const overflowed = "netlink change monitor overflowed; resyncing"
	for i := 0; i < 200 && logs.FilterMessage(overflowed).Len() == 0; i++ {
		for j := range 100 {
			r := Route{Table: 97, Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), byte(j), 0}), 24), LinkIndex: index}
			if err := n.AddRoute(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	if logs.FilterMessage(overflowed).Len() == 0 {
		t.Fatal("the change watch never overflowed; the test proves nothing")
	}
	// Drain what is pending, then make one more change: it must be seen.
	drain := time.After(200 * time.Millisecond)
	for draining := true; draining; {
		select {
		case <-changes:
		case <-drain:
			draining = false
		}
	}
	if err := n.AddRule(Rule{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 1, UIDEnd: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	case <-time.After(10 * time.Second): // a hang guard, not a timing claim
		t.Fatal("no change reported after the overflow")
	}
	cancel()
	for range changes { // closed once the watcher has stopped
	}
}
