package sim_test

import (
	"errors"
	"slices"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/sim"
	"github.com/vpnd/vpnd/internal/tun"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newKernel(t *testing.T, opt sim.Options) *sim.Kernel {
	t.Helper()
	k := sim.New(opt)
	t.Cleanup(k.Close)
	return k
}

// Remove refuses a rule delete that would hit another rule first, as the
// kernel's rule lookup would, but only for a rule that is there: one that
// is gone is not an error, whatever a delete of it would hit.
func TestRemoveRuleExact(t *testing.T) {
	k := newKernel(t, sim.Options{})
	masked := tun.Rule{Family: unix.AF_INET, Priority: 10000, Table: 98, UIDStart: 5, UIDEnd: 5, Mask: 0x20000}
	plain := masked
	plain.Mask = 0
	rules := func() []tun.Rule { return k.Snapshot().Rules }

	if _, err := k.Install(&tun.Objects{Rules: []tun.Rule{masked, plain}}); err != nil {
		t.Fatal(err)
	}
	if err := k.Remove(&tun.Objects{Rules: []tun.Rule{plain}}); !errors.Is(err, tun.ErrAmbiguousRule) {
		t.Errorf("Remove(plain) behind masked = %v, want ErrAmbiguousRule", err)
	}
	if got := rules(); !slices.Equal(got, []tun.Rule{masked, plain}) {
		t.Fatalf("rules %v after a refused delete", got)
	}
	if err := k.Remove(&tun.Objects{Rules: []tun.Rule{plain, masked}}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Install(&tun.Objects{Rules: []tun.Rule{plain, masked}}); err != nil {
		t.Fatal(err)
	}
	if err := k.Remove(&tun.Objects{Rules: []tun.Rule{plain}}); err != nil {
		t.Fatal(err)
	}
	// Gone already: no error, and the masked rule stays.
	if err := k.Remove(&tun.Objects{Rules: []tun.Rule{plain}}); err != nil {
		t.Errorf("Remove of a gone rule = %v, want nil", err)
	}
	if got := rules(); !slices.Equal(got, []tun.Rule{masked}) {
		t.Errorf("rules %v, want only %v", got, masked)
	}
}
