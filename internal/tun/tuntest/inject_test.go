package tuntest_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/tun"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
)

var errInjected = errors.New("injected")

// bringUp is a bring-up with rollback in the manager's shape: create the
// TUN, watch it, install the VPN; on failure remove exactly what Install
// reported and close the TUN.
func bringUp(k *tuntest.Fake, o func(index int) *tun.Objects) (err error) {
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var added tun.Objects
	defer func() {
		if err != nil {
			cancel()
			if rerr := k.Remove(&added); rerr != nil {
				err = errors.Join(err, rerr)
			}
			f.Close()
		}
	}()
	if _, _, err := k.Watch(ctx, tun.ChangeFilter{LinkIndex: index, Table: table, Priorities: []int{prio}}); err != nil {
		return err
	}
	added, err = k.Install(o(index))
	if err != nil {
		return err
	}
	cancel()
	f.Close()
	return errInjected // keep nothing: every run rolls back
}

func smallVPN(index int) *tun.Objects {
	return &tun.Objects{
		Link: &tun.Link{Index: index, MTU: 1400, Addrs: []netip.Prefix{pfx("10.8.0.2/24"), pfx("fd00:8::2/64")}},
		Routes: []tun.Route{
			{Table: table, Dst: pfx("10.8.0.0/24"), LinkIndex: index},
			{Table: table, Dst: pfx("0.0.0.0/0"), LinkIndex: index},
			{Table: table, Dst: pfx("198.51.100.0/24"), Gateway: addr("10.8.0.1"), LinkIndex: index},
			{Table: table, Dst: pfx("192.168.0.0/16"), Kind: tun.Throw},
		},
		Rules: []tun.Rule{
			{Family: v4, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
			{Family: v6, Priority: prio, Table: table, UIDStart: 1000, UIDEnd: 1000, Mask: mark},
		},
	}
}

// FailAt walks every step of a bring-up; after each failure the model is
// exactly as before, and the log shows the failed step.
func TestFailAtEveryStep(t *testing.T) {
	probe := tuntest.New()
	if err := bringUp(probe, smallVPN); !errors.Is(err, errInjected) {
		t.Fatal(err)
	}
	// The bring-up's own steps, before its rollback: create, configure
	// the link, 2 addresses, up, 4 routes, 2 rules.
	steps := slices.IndexFunc(probe.Log(), func(s tuntest.Step) bool { return strings.HasPrefix(s.What, "delete") })
	probe.Close()
	if steps != 11 {
		t.Fatalf("a bring-up made %d steps before its rollback, want 11:\n%v", steps, probe.Log())
	}
	for step := 1; step <= steps; step++ {
		k := tuntest.New()
		before := k.Snapshot()
		k.FailAt(step, errInjected)
		if err := bringUp(k, smallVPN); !errors.Is(err, errInjected) {
			t.Errorf("step %d: %v", step, err)
		}
		if after := k.Snapshot(); !after.Equal(before) {
			t.Errorf("step %d: state %+v after rollback, want %+v", step, after, before)
		}
		log := k.Log()
		if !errors.Is(log[step-1].Err, errInjected) {
			t.Errorf("step %d: %v did not fail", step, log[step-1])
		}
		for i, s := range log {
			if i != step-1 && s.Err != nil {
				t.Errorf("step %d: %v failed too", step, s)
			}
		}
		if step > 1 && !strings.Contains(log[step-1].String(), "= injected") {
			t.Errorf("step %d: log line %q", step, log[step-1])
		}
		k.Close()
	}
}

// FailOn fails the nth call of a method or the nth step of a kind;
// ClearFailures forgets them; Calls counts.
func TestFailOn(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{Blocking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o := smallVPN(index)

	k.FailOn("add route", 2, errInjected)
	added, err := k.Install(o)
	if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "add route 0.0.0.0/0 dev #2 table 98") {
		t.Errorf("Install = %v, want the second route's failure named", err)
	}
	if want := slices.Delete(slices.Clone(o.Routes), 1, 2); !slices.Equal(added.Routes, want) {
		t.Errorf("added routes %v, want %v", added.Routes, want)
	}
	if len(added.Rules) != 2 || len(added.Link.Addrs) != 2 {
		t.Errorf("added %+v, want the rest of the VPN", added)
	}
	if got := k.Calls("add route"); got != 4 {
		t.Errorf("%d add route steps, want 4", got)
	}

	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	ctx := t.Context()
	uid := uint32(5000)
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"Install", func() error {
			uid++
			added, err := k.Install(&tun.Objects{Rules: []tun.Rule{{Family: v4, Priority: prio, Table: table, UIDStart: uid, UIDEnd: uid}}})
			if err != nil && (added.Len() != 0 || added.Link != nil) {
				return errors.New("Install failed but reported objects")
			}
			return err
		}},
		{"Read", func() error { _, err := k.Read(tun.Query{LinkIndex: index}); return err }},
		{"Restore", func() error {
			done, err := k.Restore(&tun.Repair{LinkIndex: index, Up: true})
			if done.LinkIndex != index || !done.Empty() {
				return errors.New("Restore failed but reported a repair")
			}
			return err
		}},
		{"Watch", func() error { _, _, err := k.Watch(ctx, tun.ChangeFilter{LinkIndex: index}); return err }},
		{"Occupants", func() error { _, err := k.Occupants(table, prio); return err }},
		{"HostPrefixes", func() error { _, err := k.HostPrefixes(""); return err }},
		{"CheckSocket", func() error { return k.CheckSocket(sock) }},
	} {
		before := k.Calls(tc.name)
		k.FailOn(tc.name, before+2, errInjected)
		first := tc.call()
		if errors.Is(first, errInjected) {
			t.Errorf("%s: the first call failed", tc.name)
		}
		if err := tc.call(); !errors.Is(err, errInjected) {
			t.Errorf("%s: the second call = %v, want the injected error", tc.name, err)
		}
		if got := k.Calls(tc.name) - before; got != 2 {
			t.Errorf("%s: %d calls counted, want 2", tc.name, got)
		}
	}

	// ClearFailures forgets what was not reached yet.
	k.FailOn("Read", 10, errInjected)
	k.FailAt(k.Steps()+1, errInjected)
	k.ClearFailures()
	for range 10 {
		if _, err := k.Read(tun.Query{LinkIndex: index}); err != nil {
			t.Errorf("Read after ClearFailures: %v", err)
		}
	}
	if _, err := k.Restore(&tun.Repair{LinkIndex: index, MTU: 1300}); err != nil {
		t.Errorf("Restore after ClearFailures: %v", err)
	}
}

// The fake marks sockets in memory, keeping the bits the socket had; a
// mark can be failed like any step.
func TestMarks(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, ok := k.Mark(fd); ok {
		t.Error("an unmarked socket has a mark")
	}
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
	// The mark follows the socket, not the fd number.
	dup, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dup)
	if m, ok := k.Mark(dup); !ok || m != 0x20001 {
		t.Errorf("mark of a dup %#x, %t; want 0x20001", m, ok)
	}
	k.FailOn("mark socket", 3, errInjected)
	if err := k.MarkSocket(fd, 0x4); !errors.Is(err, errInjected) {
		t.Errorf("third mark = %v, want the injected error", err)
	}
	if m, _ := k.Mark(fd); m != 0x20001 {
		t.Errorf("a failed mark changed the mark to %#x", m)
	}
	if err := k.MarkSocket(1<<20, 0x20000); err == nil {
		t.Error("marking a closed fd succeeded")
	}
	// CheckSocket is the kernel's check.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if err := k.CheckSocket(p[0]); err == nil || err.Error() != tun.CheckSocket(p[0]).Error() {
		t.Errorf("CheckSocket(pipe) = %v, want %v", err, tun.CheckSocket(p[0]))
	}
}

// Closing every copy of the TUN file removes the link, as in the kernel.
func TestFakeLinkGoesWithItsFile(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	f, index, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gone, _, err := k.Watch(t.Context(), tun.ChangeFilter{LinkIndex: index})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Install(smallVPN(index)); err != nil {
		t.Fatal(err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dup int
	rc.Control(func(fd uintptr) { dup, err = unix.Dup(int(fd)) })
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if s := k.Snapshot(); len(s.Links) != 1 {
		t.Fatalf("links %+v while a dup of the file is open", s.Links)
	}
	unix.Close(dup)
	<-gone // the test's own timeout guards a hang
	s := k.Snapshot()
	if len(s.Links) != 0 {
		t.Errorf("links %+v after close", s.Links)
	}
	// The routes through the link went with it; the others stay.
	if !slices.Equal(s.Routes, smallVPN(index).Routes[3:]) || len(s.Rules) != 2 {
		t.Errorf("after the link went: routes %v, rules %v", s.Routes, s.Rules)
	}
	// The name is free again.
	f2, _, err := k.CreateTUN("vpn-tun", tun.TUNOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f2.Close()
}

func TestHostPrefixes(t *testing.T) {
	k := tuntest.New()
	defer k.Close()
	if ps, err := k.HostPrefixes(""); err != nil || len(ps) != 0 {
		t.Errorf("HostPrefixes of a new fake = %v, %v", ps, err)
	}
	want := []tun.HostPrefix{{Prefix: pfx("192.0.2.1/24"), Ifname: "eth0"}, {Prefix: pfx("192.0.2.0/24"), Ifname: "eth0"}}
	k.SetHostPrefixes(want...)
	if ps, err := k.HostPrefixes("vpn-tun"); err != nil || !slices.Equal(ps, want) {
		t.Errorf("HostPrefixes = %v, %v; want %v", ps, err, want)
	}
}
