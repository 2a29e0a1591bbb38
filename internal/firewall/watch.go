package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftaTable is the attribute that names an object's table in every nf_tables
// message about a table, chain, rule, set, set element, object or
// flowtable: NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
// NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE and
// NFTA_FLOWTABLE_TABLE are all 1.
const nftaTable = 1

// Watch returns a channel (buffered 1) that gets a token whenever another
// process may have changed vpnd's table: the kernel's nftables monitor
// (NFNLGRP_NFTABLES) reported a transaction that touched `inet NAME`, or the
// monitor socket overflowed (ENOBUFS) and events were lost. Tokens coalesce:
// one token stands for any number of changes, so the receiver re-reads the
// kernel (Holds) rather than counting.
//
// Transactions that this process committed (Apply, through any Table) send
// no token: the kernel names the committing thread in each transaction's
// NEWGEN message, and a thread of this process is in /proc/self/task.
// Under a PID namespace the kernel's thread id is not the one this process
// sees; then vpnd's own changes send tokens too, which costs one Holds each
// and nothing else.
//
// Call Watch before the first Holds: a change between the two is then
// never missed. The socket is opened in the calling thread's network
// namespace. The channel is closed when ctx ends, when the Table is
// closed, or when the monitor socket fails with anything but ENOBUFS (then
// call Watch again, and check with Holds).
func (t *Table) Watch(ctx context.Context) (<-chan struct{}, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, explain("open an nfnetlink socket", err)
	}
	if t.watchReadBuffer > 0 {
		if err := c.SetReadBuffer(t.watchReadBuffer); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		c.Close()
		return nil, explain("join the nftables monitor group", err)
	}
	t.watchMu.Lock()
	if t.closed {
		t.watchMu.Unlock()
		c.Close()
		return nil, errClosed
	}
	t.watchers[c] = true
	t.watching.Add(1)
	t.watchMu.Unlock()

	out := make(chan struct{}, 1)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	go func() {
		defer t.watching.Done()
		defer close(out)
		defer stop()
		defer func() {
			t.watchMu.Lock()
			delete(t.watchers, c)
			t.watchMu.Unlock()
			c.Close()
		}()
		t.watch(c, out)
	}()
	return out, nil
}

// watch reads the monitor socket until it fails or is closed. It reads
// through the runtime poller with MSG_DONTWAIT rather than with the
// connection's Receive, which starts a goroutine for every read: vpnd's
// leak checks count goroutines, and one that comes and goes with each
// message would make the count flicker.
func (t *Table) watch(c *netlink.Conn, out chan<- struct{}) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 64<<10)
	touched := false // the current transaction touched vpnd's table
	handle := func(msgs []syscall.NetlinkMessage) {
		for _, m := range msgs {
			if m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
				continue
			}
			switch uint16(m.Header.Type & 0xff) {
			case unix.NFT_MSG_NEWGEN:
				// The end of one transaction's events.
				if touched && !ownThread(genPID(m.Data[4:])) {
					t.signal(out)
				}
				touched = false
			default:
				if m.Data[0] == byte(family) && tableOf(m.Data[4:]) == t.name {
					touched = true
				}
			}
		}
	}
	rc.Read(func(fd uintptr) bool {
		for {
			n, _, flags, _, err := unix.Recvmsg(int(fd), buf, nil, unix.MSG_DONTWAIT)
			switch {
			case errors.Is(err, unix.EAGAIN):
				return false // wait until readable
			case errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.ENOBUFS):
				// The kernel dropped events it could not queue: anything
				// may have changed, and the current transaction's events
				// are incomplete.
				touched = false
				t.signal(out)
				continue
			case err != nil:
				return true // broken
			}
			msgs, perr := syscall.ParseNetlinkMessage(buf[:n])
			if perr != nil || flags&unix.MSG_TRUNC != 0 {
				// What could not be read may have been about vpnd's table.
				touched = false
				t.signal(out)
				continue
			}
			handle(msgs)
		}
	})
	// Read returns once the socket is closed (ctx, Close) or broke.
}

// signal sends a token unless one is already waiting.
func (t *Table) signal(out chan<- struct{}) {
	t.watchMu.Lock()
	t.signals++
	t.watchMu.Unlock()
	select {
	case out <- struct{}{}:
	default:
	}
}

// tableOf returns the table an nf_tables object message names ("" if none).
func tableOf(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == nftaTable {
			return ad.String()
		}
	}
	return ""
}

// ownThread reports whether tid is a thread of this process.
func ownThread(tid uint32) bool {
	if tid == 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}

// genPID returns NFTA_GEN_PROC_PID of a NEWGEN message: the thread that
// committed the transaction (the kernel's task_pid_nr; 0 if it did not
// say).
func genPID(b []byte) uint32 {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_PROC_PID {
			return ad.Uint32()
		}
	}
	return 0
}
