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
	_, index := createTUN(t, n, "vpn-tun")
	if err := n.SetUp(index); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	changes, err := n.WatchChanges(ctx, ChangeFilter{Table: 97, Priority: 10000, LinkIndex: index})
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

// TestWatchChangesFilter: changes to other tables, priorities and links
// make no token; changes to the watched ones do, for each kind.
func TestWatchChangesFilter(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	defer goleak.VerifyNone(t)
	n := New(zap.NewNop())
	_, index := createTUN(t, n, "vpn-tun")
	other, otherIndex, err := n.CreateTUN("other0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, i := range []int{index, otherIndex} {
		if err := n.SetUp(i); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		time.Sleep(10 * time.Millisecond)
	}()
	changes, err := n.WatchChanges(ctx, ChangeFilter{Table: 98, Priority: 10000, LinkIndex: index})
	if err != nil {
		t.Fatal(err)
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case <-changes:
			t.Fatalf("%s made a token", what)
		case <-time.After(100 * time.Millisecond): // the change is synchronous; this only waits for delivery
		}
	}
	seen := func(what string) {
		t.Helper()
		select {
		case <-changes:
		case <-time.After(10 * time.Second): // a hang guard
			t.Fatalf("%s made no token", what)
		}
	}
	r97 := Route{Table: 97, Dst: netip.MustParsePrefix("10.1.0.0/16"), LinkIndex: otherIndex}
	if err := n.AddRoute(r97); err != nil {
		t.Fatal(err)
	}
	quiet("a route in table 97")
	rule := Rule{Family: unix.AF_INET6, Priority: 9000, Table: 97, UIDStart: 5, UIDEnd: 5}
	if err := n.AddRule(rule); err != nil {
		t.Fatal(err)
	}
	quiet("a rule at priority 9000 for table 97")
	if err := n.SetMTU(otherIndex, 1400); err != nil {
		t.Fatal(err)
	}
	quiet("another link's MTU")

	if err := n.AddRoute(Route{Table: 98, Dst: netip.MustParsePrefix("2001:db8::/32"), LinkIndex: otherIndex}); err != nil {
		t.Fatal(err)
	}
	seen("an IPv6 route in table 98")
	if err := n.AddRule(Rule{Family: unix.AF_INET, Priority: 10000, Table: 97, UIDStart: 5, UIDEnd: 5}); err != nil {
		t.Fatal(err)
	}
	seen("a rule at priority 10000")
	if err := n.AddRule(Rule{Family: unix.AF_INET, Priority: 20000, Table: 98, UIDStart: 5, UIDEnd: 5}); err != nil {
		t.Fatal(err)
	}
	seen("a rule looking up table 98")
	if err := n.SetMTU(index, 1400); err != nil {
		t.Fatal(err)
	}
	seen("the watched link's MTU")
}
