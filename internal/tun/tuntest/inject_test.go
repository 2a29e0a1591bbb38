package tuntest_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
)

var errInjected = errors.New("injected")

// bringUp is a miniature bring-up with rollback, the shape the manager has.
func bringUp(k *tuntest.Fake) (err error) {
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	f, index, err := k.CreateTUN("vpn-tun", false)
	if err != nil {
		return err
	}
	undo = append(undo, func() { f.Close(); k.DeleteLink(index) })
	if err := k.AddAddress(index, netip.MustParsePrefix("10.8.0.2/24")); err != nil {
		return err
	}
	if err := k.SetUp(index); err != nil {
		return err
	}
	r := tun.Route{Table: 98, Dst: netip.MustParsePrefix("0.0.0.0/0"), LinkIndex: index}
	if err := k.AddRoute(r); err != nil {
		return err
	}
	undo = append(undo, func() { k.DeleteRoute(r) })
	rule := tun.Rule{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 1000, UIDEnd: 1000, Mask: 0x20000}
	if err := k.AddRule(rule); err != nil {
		return err
	}
	undo = append(undo, func() { k.DeleteRule(rule) })
	return errInjected // keep nothing: every run rolls back
}

// FailAt walks every step of a bring-up; after each failure the state is
// what it was before, which is what the manager's tests will check.
func TestFailAtEveryStep(t *testing.T) {
	probe := tuntest.New()
	bringUp(probe)
	probe.Close()
	steps := 5 // CreateTUN, AddAddress, SetUp, AddRoute, AddRule
	if got := len(probe.Calls()); got < steps {
		t.Fatalf("probe made %d calls: %v", got, probe.Calls())
	}
	for step := 1; step <= steps; step++ {
		k := tuntest.New()
		before := k.Snapshot()
		k.FailAt(step, errInjected)
		if err := bringUp(k); !errors.Is(err, errInjected) {
			t.Errorf("step %d: %v", step, err)
		}
		if after := k.Snapshot(); !after.Equal(before) {
			t.Errorf("step %d: state %+v after rollback, want %+v", step, after, before)
		}
		calls := k.Calls()
		if c := calls[step-1]; !errors.Is(c.Err, errInjected) {
			t.Errorf("step %d: call %v did not fail", step, c)
		}
		k.Close()
	}
}

func TestFailOnAndMarks(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	k.FailOn("WatchLink", 2, errInjected)
	f, index, err := k.CreateTUN("vpn-tun", true)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := k.WatchLink(ctx, index); err != nil {
		t.Fatal(err)
	}
	if _, err := k.WatchLink(ctx, index); !errors.Is(err, errInjected) {
		t.Errorf("second WatchLink: %v", err)
	}

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := k.CheckSocket(fd); err != nil {
		t.Fatal(err)
	}
	if err := k.MarkSocket(fd, 0x20000); err != nil {
		t.Fatal(err)
	}
	if err := k.MarkSocket(fd, 0x1); err != nil {
		t.Fatal(err)
	}
	if m, ok := k.Mark(fd); !ok || m != 0x20001 {
		t.Errorf("mark %#x, %t; want 0x20001", m, ok)
	}
}

// Closing every copy of the TUN file removes the link, as in the kernel.
func TestFakeLinkGoesWithItsFile(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	f, index, err := k.CreateTUN("vpn-tun", false)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := k.WatchLink(context.Background(), index)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	<-ch // the test's own timeout guards a hang
	if s := k.Snapshot(); len(s.Links) != 0 {
		t.Errorf("links %+v after close", s.Links)
	}
}
