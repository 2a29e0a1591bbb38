package tun

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// A link subscription overflows (ENOBUFS) under a burst of link events.
// The watcher must resubscribe, must not fire while the link lives, and
// must still see the link go.
func TestWatchLinkSurvivesOverflow(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	defer goleak.VerifyNone(t)
	core, logs := observer.New(zap.DebugLevel)
	n := New(zap.New(core))
	n.watchRcvBuf = 1 // the kernel rounds it up to its minimum, a few KiB

	f, index := createTUN(t, n, "vpn-tun")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gone, err := n.WatchLink(ctx, index)
	if err != nil {
		t.Fatal(err)
	}

	// Every MTU change is an RTM_NEWLINK of about a kilobyte.
	flood, floodIndex, err := n.CreateTUN("flood0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	for i := 0; i < 1000 && logs.FilterMessage("link subscription lost; resubscribing").Len() == 0; i++ {
		for j := range 50 {
			if err := n.SetMTU(floodIndex, 1300+j); err != nil {
				t.Fatal(err)
			}
		}
	}
	if logs.FilterMessage("link subscription lost; resubscribing").Len() == 0 {
		t.Fatal("the subscription never overflowed; the test proves nothing")
	}
	select {
	case <-gone:
		t.Fatal("watch fired while the link exists")
	default:
	}

	f.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second): // a hang guard, not a timing claim
		t.Fatal("watch did not fire after the overflow")
	}
}
