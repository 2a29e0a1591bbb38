package resolvedtest

import (
	"strings"
	"testing"
)

// The stand-in answers each of Refusals as resolved does (the same table
// runs against the real systemd-resolved in test/), and records refused
// calls with the error's name.
func TestStandInRefusesWhatResolvedRefuses(t *testing.T) {
	bus := StartBus(t)
	r := StartResolved(t, bus)
	conn := bus.Connect(t)
	for _, a := range Refusals(7) {
		r.Reset()
		name, msg := Ask(conn, a)
		if name != a.Name || msg != a.Message {
			t.Errorf("%s%v: answered %q %q, want %q %q", a.Method, a.Args, name, msg, a.Name, a.Message)
		}
		calls := r.Calls()
		if len(calls) != 1 || !strings.HasPrefix(calls[0], a.Method+"(") || (a.Name != "") != strings.HasSuffix(calls[0], " -> "+a.Name) {
			t.Errorf("%s%v: recorded %q", a.Method, a.Args, calls)
		}
	}
}

// A failure a test asks for comes before the stand-in's own checks, as
// resolved's NoSuchLink comes before it looks at the arguments.
func TestFailNextFirst(t *testing.T) {
	bus := StartBus(t)
	r := StartResolved(t, bus)
	r.FailNext("SetLinkLLMNR", ErrNoSuchLink)
	if name, _ := Ask(bus.Connect(t), Answer{Method: "SetLinkLLMNR", Args: []any{int32(7), "bogus"}}); name != ErrNoSuchLink {
		t.Fatalf("answered %s, want %s", name, ErrNoSuchLink)
	}
	if calls := r.Calls(); len(calls) != 1 || calls[0] != `SetLinkLLMNR(7, "bogus") -> `+ErrNoSuchLink {
		t.Fatalf("recorded %q", calls)
	}
}
