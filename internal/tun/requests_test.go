package tun

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/netnstest"
)

func TestInChunk(t *testing.T) {
	const max = math.MaxUint32
	for _, tc := range []struct {
		seq, base uint32
		n         int
		want      bool
	}{
		{5, 5, 1, true},
		{4, 5, 1, false},
		{6, 5, 1, false},
		{9, 5, 5, true},
		{10, 5, 5, false},
		{max, max - 1, 4, true},
		{0, max - 1, 4, true},
		{1, max - 1, 4, true},
		{2, max - 1, 4, false},
		{max - 2, max - 1, 4, false},
		{0, max, 1, false},
		{max, max, 1, true},
		{0, 0, 0, false},
	} {
		if got := inChunk(tc.seq, tc.base, tc.n); got != tc.want {
			t.Errorf("inChunk(%#x, %#x, %d) = %t, want %t", tc.seq, tc.base, tc.n, got, tc.want)
		}
	}
}

// ruleOp adds or deletes vpnd's lookup rule for one uid.
func ruleOp(kind manager.OpKind, uid uint32) manager.Op {
	return manager.Op{Kind: kind, Table: table, Rule: manager.Rule{Family: v4, Priority: prio, Table: table, UIDStart: uid, UIDEnd: uid}}
}

// shortTimeout makes the request socket give up on an answer after d,
// for the rest of the test: a broken exchange then fails the test at once
// instead of after answerTimeout.
func shortTimeout(t *testing.T, n *Netlink, d time.Duration) {
	t.Helper()
	tv := unix.NsecToTimeval(d.Nanoseconds())
	must(t, n.req.s.SetReceiveTimeout(&tv))
	t.Cleanup(func() {
		tv := unix.NsecToTimeval(answerTimeout.Nanoseconds())
		n.req.s.SetReceiveTimeout(&tv)
	})
}

// A batch whose sequence numbers wrap past 2^32-1 is answered like any
// other: every failure lands on its own op, and the acknowledgement of
// the last request, whose sequence number is smaller than the first's,
// ends the exchange. Comparing sequence numbers with < and > would drop
// every answer after the wrap and wait for one that never comes.
func TestSequenceWrap(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	n := openNetlink(t, nil)
	shortTimeout(t, n, 2*time.Second)
	n.req.mu.Lock()
	n.req.seq = math.MaxUint32 - 2 // the batch is sent from 2^32-2 to 2
	n.req.mu.Unlock()
	ops := []manager.Op{
		ruleOp(manager.AddRule, 1), ruleOp(manager.AddRule, 1),
		ruleOp(manager.AddRule, 2), ruleOp(manager.AddRule, 2), ruleOp(manager.AddRule, 3),
	}
	results, err := n.Apply(ops)
	if err != nil {
		t.Fatalf("Apply across the wrap: %v", err)
	}
	var got []string
	for _, e := range results {
		got = append(got, outcome(e))
	}
	if want := []string{"ok", "EEXIST", "ok", "EEXIST", "ok"}; !slices.Equal(got, want) {
		t.Errorf("answers across the wrap: %v, want %v", got, want)
	}
	n.req.mu.Lock()
	seq := n.req.seq
	n.req.mu.Unlock()
	if seq != 2 {
		t.Errorf("sequence number %d after the batch, want 2", seq)
	}
	// A dump across the wrap, and the next batch.
	n.req.mu.Lock()
	n.req.seq = math.MaxUint32
	n.req.mu.Unlock()
	h, err := n.Read(manager.Query{Places: places, What: manager.PartRules})
	if err != nil || len(h.Rules) != 3 {
		t.Errorf("Read across the wrap: %v, %v", h, err)
	}
	if r := applyResults(t, n, ruleOp(manager.DelRule, 1), ruleOp(manager.AddRule, 3)); r[0] != nil || !errors.Is(r[1], unix.EEXIST) {
		t.Errorf("the batch after the wrap: %v", r)
	}
}

// fillAnswers queues answers on the request socket that nobody reads, as
// requests whose answers were never read would, until the socket's
// receive buffer (shrunk to the kernel's minimum) has no room left: the
// kernel then drops the answer to the next request. With NETLINK_NO_ENOBUFS
// it drops it silently, as if it never came; without, the socket reports
// ENOBUFS.
func fillAnswers(t *testing.T, n *Netlink, silent bool) {
	t.Helper()
	fd := n.req.s.GetFd()
	must(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1))
	noENOBUFS := 0
	if silent {
		noENOBUFS = 1
	}
	must(t, unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, noENOBUFS))
	t.Cleanup(func() {
		unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 0)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf)
	})
	for i := range 64 {
		// NLMSG_NOOP, acknowledged: a stale answer far from any sequence
		// number of vpnd's.
		var m [unix.SizeofNlMsghdr]byte
		binary.NativeEndian.PutUint32(m[0:4], unix.SizeofNlMsghdr)
		binary.NativeEndian.PutUint16(m[4:6], unix.NLMSG_NOOP)
		binary.NativeEndian.PutUint16(m[6:8], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
		binary.NativeEndian.PutUint32(m[8:12], 0x40000000+uint32(i))
		must(t, unix.Sendto(fd, m[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}))
	}
}

// An exchange whose answer never comes ends with an error wrapping
// ErrTransient after the answer timeout, instead of waiting forever with
// the socket's lock held; so does one whose answer the kernel dropped for
// want of room (ENOBUFS). The request itself may well have been carried
// out: the caller must read the kernel again. Then the socket works on at
// once: the next exchange's answer is not lost too (the kernel drops
// every answer to a socket it found full until its reader has emptied
// it), and a dump whose answers were lost does not make the kernel
// refuse the next one (EBUSY) or lose its answers.
func TestAnswerLost(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	for _, silent := range []bool{true, false} {
		n := openNetlink(t, nil)
		const timeout = 500 * time.Millisecond
		shortTimeout(t, n, timeout)
		fillAnswers(t, n, silent)
		start := time.Now()
		done := make(chan struct{})
		var results []error
		var err error
		go func() {
			defer close(done)
			results, err = n.Apply([]manager.Op{ruleOp(manager.AddRule, 100)})
		}()
		select {
		case <-done:
		case <-time.After(hangGuard):
			t.Fatal("Apply is still waiting for an answer that will not come")
		}
		took := time.Since(start)
		want := "no answer within"
		if !silent {
			want = unix.ENOBUFS.Error()
		}
		if !errors.Is(err, manager.ErrTransient) || !strings.Contains(err.Error(), want) {
			t.Errorf("silent %t: Apply = %v, %v; want an error wrapping ErrTransient saying %q", silent, results, err, want)
		}
		if silent && took < timeout {
			t.Errorf("Apply gave up after %v, before the timeout of %v", took, timeout)
		}
		t.Logf("silent %t: Apply returned after %v: %v", silent, took, err)
		if got := kernelRules(t, prio); len(got) != 1 || got[0].UIDStart != 100 {
			t.Errorf("silent %t: rules %v; want the rule added though its answer was lost", silent, got)
		}

		// Room again: the next exchange and the next dump are answered.
		unix.SetsockoptInt(n.req.s.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf)
		r, err := n.Apply([]manager.Op{ruleOp(manager.AddRule, 100), ruleOp(manager.AddRule, 101)})
		if err != nil || len(r) != 2 || !errors.Is(r[0], unix.EEXIST) || r[1] != nil {
			t.Errorf("silent %t: the next Apply: %v, %v; want EEXIST, then the add", silent, r, err)
		}
		rules := func(what string) {
			t.Helper()
			h, err := n.Read(manager.Query{Places: places, What: manager.PartRules})
			if err != nil || len(h.Rules) != 2 {
				t.Errorf("silent %t: %s: %+v, %v; want the two rules", silent, what, h, err)
			}
		}
		rules("the next Read")

		// A dump with the queue full ends whole, or with an error
		// wrapping ErrTransient (the kernel could not go on with it);
		// the next one is answered whole.
		unix.SetsockoptInt(n.req.s.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1)
		fillAnswers(t, n, silent)
		h, err := n.Read(manager.Query{Places: places, What: manager.PartRules})
		if err != nil && !errors.Is(err, manager.ErrTransient) || err == nil && len(h.Rules) != 2 {
			t.Errorf("silent %t: Read with a full queue: %+v, %v; want the rules, or a transient error", silent, h, err)
		}
		t.Logf("silent %t: Read with a full queue: %v", silent, err)
		unix.SetsockoptInt(n.req.s.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf)
		rules("the Read after a dump with a full queue")
		applyAll(t, n, ruleOp(manager.DelRule, 100), ruleOp(manager.DelRule, 101))
	}
}
