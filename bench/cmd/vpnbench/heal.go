package main

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// healResult is one flush of table 98 and its repair, as CLOCK_MONOTONIC
// nanoseconds (comparable across processes).
type healResult struct {
	Start    int64 // the flush's first request
	Flushed  int64 // every deletion answered
	Complete int64 // the table holds every route it held before again
	Routes   int   // routes in the table before the flush
	// Polled: the notification queue overflowed, so completion was found by
	// dumping the table every 2 ms (an upper bound, off by at most that).
	Polled bool
}

// mono is CLOCK_MONOTONIC in nanoseconds: the one clock that every process
// of the benchmark reads alike.
func mono() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// flushTable deletes every route of table 98 (both families) the way
// `ip route flush table 98` does in its first round (one dump, then the
// dumped routes sent back as deletions, many to a sendmsg), and reports
// when the table is complete again. With readd, this process re-adds the
// routes itself right after the flush, as fast as netlink allows: the
// floor of a repair. Without it, it waits for someone else (vpnd) to
// repair the table, watching the kernel's route notifications.
func flushTable(readd bool, timeout time.Duration) (healResult, error) {
	var res healResult
	mon, err := openRTNL(unix.RTMGRP_IPV4_ROUTE|unix.RTMGRP_IPV6_ROUTE, 64<<20)
	if err != nil {
		return res, err
	}
	defer mon.Close()
	req, err := openRTNL(0, 8<<20)
	if err != nil {
		return res, err
	}
	defer req.Close()
	routes, err := req.dumpRoutes(table)
	if err != nil {
		return res, err
	}
	if len(routes) == 0 {
		return res, errors.New("table 98 is empty before the flush")
	}
	res.Routes = len(routes)
	want := make(map[string]bool, len(routes))
	for _, p := range routes {
		want[routeKey(p)] = true
	}

	// The reader wakes up every 50 ms to see whether it should stop, so
	// that the socket is closed only once nobody reads it.
	tv := unix.Timeval{Usec: 50000}
	if err := unix.SetsockoptTimeval(mon.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return res, err
	}
	w := newTableWatch(want)
	go w.read(mon)
	defer func() {
		w.stop.Store(true)
		<-w.exited
	}()

	res.Start = mono()
	errnos, err := req.batch(unix.RTM_DELROUTE, 0, routes, unix.ESRCH)
	if err != nil {
		return res, fmt.Errorf("flush: %w", err)
	}
	res.Flushed = mono()
	if readd {
		adds := make([][]byte, len(routes))
		for i, p := range routes {
			adds[i] = routeForAdd(p)
		}
		if _, err := req.batch(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, adds, 0); err != nil {
			return res, fmt.Errorf("re-add: %w", err)
		}
		res.Complete = mono()
	} else {
		// Every deletion that succeeded was announced before it was
		// answered; the watcher must have read each of those
		// announcements before it may call the table complete.
		deleted := make([]string, 0, len(routes))
		for i, p := range routes {
			if errnos[i] == 0 {
				deleted = append(deleted, routeKey(p))
			}
		}
		w.flushed(deleted)
		select {
		case <-w.done:
			res.Complete, res.Polled = w.at, w.overflow
		case <-time.After(timeout):
			return res, fmt.Errorf("table 98 not complete %v after the flush: %d of %d routes back", timeout, w.count(), len(want))
		}
		if res.Polled {
			// Notifications were lost: find completion by dumping.
			for {
				got, err := req.dumpRoutes(table)
				if err != nil {
					return res, err
				}
				if sameRoutes(got, want) {
					res.Complete = mono()
					break
				}
				if time.Duration(mono()-res.Start) > timeout {
					return res, fmt.Errorf("table 98 not complete %v after the flush (polled)", timeout)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
	}
	// Whatever the notifications said, the kernel must agree.
	got, err := req.dumpRoutes(table)
	if err != nil {
		return res, err
	}
	if !sameRoutes(got, want) {
		return res, fmt.Errorf("table 98 after the repair: %d routes, want the %d from before the flush", len(got), len(want))
	}
	return res, nil
}

func sameRoutes(got [][]byte, want map[string]bool) bool {
	if len(got) != len(want) {
		return false
	}
	for _, p := range got {
		if !want[routeKey(p)] {
			return false
		}
	}
	return true
}

// tableWatch follows table 98 through route notifications.
//
// When the flush's last deletion is answered, the watcher's reader may
// not have read every notification the flush caused yet: the kernel
// queues them before it answers, but the reader takes them in at its own
// pace, and on a loaded machine it can lag by thousands. Its picture of
// the table is then one from the middle of the flush. If vpnd had
// already re-added the routes deleted until then (it may start repairing
// before the flush ends), that picture is a complete table while the
// kernel's is not. So the table counts as complete only once the reader
// has seen the deletion of every route the flush deleted, and every route
// present again after it.
type tableWatch struct {
	mu        sync.Mutex
	present   map[string]bool
	want      map[string]bool
	isFlushed bool
	overflow  bool
	// seenDel holds the routes whose deletion the reader has seen;
	// unseen counts those the flush deleted that are not in it yet
	// (known once flushed).
	seenDel map[string]bool
	expect  map[string]bool
	unseen  int
	at      int64 // when the table was seen complete (or overflowed)
	done    chan struct{}
	closed  bool
	stop    atomic.Bool
	exited  chan struct{}
}

func newTableWatch(want map[string]bool) *tableWatch {
	return &tableWatch{present: maps.Clone(want), want: want, seenDel: map[string]bool{},
		done: make(chan struct{}), exited: make(chan struct{})}
}

func (w *tableWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.present)
}

// flushed says that every deletion was answered, and which routes the
// flush deleted: once the reader has seen each of them deleted, a
// complete table is a repaired one.
func (w *tableWatch) flushed(deleted []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.isFlushed = true
	w.expect = make(map[string]bool, len(deleted))
	for _, k := range deleted {
		w.expect[k] = true
		if !w.seenDel[k] {
			w.unseen++
		}
	}
	w.checkLocked()
}

func (w *tableWatch) checkLocked() {
	if w.closed || !w.isFlushed {
		return
	}
	if w.overflow || (w.unseen == 0 && len(w.present) == len(w.want) && w.completeLocked()) {
		w.at = mono()
		w.closed = true
		close(w.done)
	}
}

func (w *tableWatch) completeLocked() bool {
	for k := range w.want {
		if !w.present[k] {
			return false
		}
	}
	return true
}

// routeEvent is one route notification of table 98.
type routeEvent struct {
	del bool
	key string
}

// apply takes in notifications, in the kernel's order.
func (w *tableWatch) apply(evs []routeEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range evs {
		if !e.del {
			w.present[e.key] = true
			continue
		}
		delete(w.present, e.key)
		if !w.seenDel[e.key] {
			w.seenDel[e.key] = true
			if w.expect[e.key] {
				w.unseen--
			}
		}
	}
	w.checkLocked()
}

// lost says that the kernel dropped notifications (the socket's queue
// overflowed): completion must be found another way.
func (w *tableWatch) lost() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.overflow = true
	w.checkLocked()
}

// read applies notifications until w.stop is set.
func (w *tableWatch) read(n *rtnl) {
	defer close(w.exited)
	buf := make([]byte, 1<<20)
	for !w.stop.Load() {
		nr, _, err := unix.Recvfrom(n.fd, buf, 0)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err == unix.ENOBUFS {
			w.lost()
			continue
		}
		if err != nil || nr == 0 {
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:nr])
		if err != nil {
			continue
		}
		evs := make([]routeEvent, 0, len(msgs))
		for _, m := range msgs {
			if (m.Header.Type != unix.RTM_NEWROUTE && m.Header.Type != unix.RTM_DELROUTE) || routeTable(m.Data) != table {
				continue
			}
			evs = append(evs, routeEvent{del: m.Header.Type == unix.RTM_DELROUTE, key: routeKey(m.Data)})
		}
		w.apply(evs)
	}
}
