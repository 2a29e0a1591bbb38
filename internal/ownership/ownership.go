// Package ownership makes sure that at most one vpnd serves a network
// namespace's interface name, routing table and rule priority.
//
// Two vpnds on the same names would destroy each other's work: the
// start-up sweep of the second deletes the first one's live link, rules
// and routes. A socket path cannot guard against that (two vpnds may use
// two paths, and one path may be shared across namespaces), so each
// resource is claimed by binding an abstract Unix socket named after it,
// for example "@vpnd/table/98". Abstract names live in the network
// namespace, not in the file system: they are exactly as wide as the
// resources they stand for, need no clean-up, and disappear when the
// process that bound them exits, however it exits (SIGKILL included).
//
// The sockets listen for the daemon's lifetime. A second vpnd that cannot
// bind a name connects to it instead and reads the listener's credentials
// (SO_PEERCRED), so that it can say which process holds the name.
package ownership

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"golang.org/x/sys/unix"
)

// Resource is one kernel name that a vpnd owns in its network namespace.
type Resource struct {
	Kind  string // "ifname", "table", "priority" or "nft"
	Value string
}

// Name is the abstract socket name that claims r ("@" stands for the
// leading NUL byte of an abstract address).
func (r Resource) Name() string { return "@vpnd/" + r.Kind + "/" + r.Value }

// String names r for people: "interface vpn-tun", "routing table 98",
// "rule priority 10001".
func (r Resource) String() string {
	switch r.Kind {
	case "ifname":
		return "interface " + r.Value
	case "table":
		return "routing table " + r.Value
	case "priority":
		return "rule priority " + r.Value
	case "nft":
		return "nftables table inet " + r.Value
	}
	return r.Kind + " " + r.Value
}

// Resources lists what a vpnd with these flags owns: its interface name,
// its table, its rule priority, and priority+1, which is where vpnd puts
// its lockdown rules (two vpnds whose priorities are one apart would
// otherwise share a priority), and its nftables table.
func Resources(ifname string, table, priority int, nftTable string) []Resource {
	return []Resource{
		{"ifname", ifname},
		{"table", strconv.Itoa(table)},
		{"priority", strconv.Itoa(priority)},
		{"priority", strconv.Itoa(priority + 1)},
		{"nft", nftTable},
	}
}

// Lock holds the listening abstract sockets that claim a vpnd's resources.
type Lock struct {
	lns []*net.UnixListener
	wg  sync.WaitGroup
}

// HeldError says that a resource is taken, and by which process.
type HeldError struct {
	Resource Resource
	Holder   Process // zero PID if the holder could not be identified
	Err      error   // why the holder could not be identified, if it could not
}

func (e *HeldError) Error() string {
	who := e.Holder.String()
	if e.Holder.PID == 0 && e.Err != nil {
		who = fmt.Sprintf("an unidentified process (%v)", e.Err)
	}
	return fmt.Sprintf("%s (%s) is held by %s", e.Resource, e.Resource.Name(), who)
}

// probeAttempts bounds how often Acquire retries a name whose holder went
// away between the failed bind and the connect.
const probeAttempts = 3

// Acquire claims every resource, or none: if one is taken it releases
// what it bound and returns a *HeldError naming the holder.
func Acquire(resources []Resource) (*Lock, error) {
	l := &Lock{}
	for _, r := range resources {
		ln, err := claim(r)
		if err != nil {
			l.Close()
			return nil, err
		}
		l.lns = append(l.lns, ln)
	}
	for _, ln := range l.lns {
		l.wg.Add(1)
		go l.acceptAndClose(ln)
	}
	return l, nil
}

func claim(r Resource) (*net.UnixListener, error) {
	addr := &net.UnixAddr{Name: r.Name(), Net: "unix"}
	var probeErr error
	for range probeAttempts {
		ln, err := net.ListenUnix("unix", addr)
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("claim %s (%s): %w", r, r.Name(), err)
		}
		holder, err := holderOf(addr)
		if err == nil {
			return nil, &HeldError{Resource: r, Holder: holder}
		}
		// ECONNREFUSED: the holder closed it since the bind failed (it
		// exited, or it only binds without listening); try again.
		probeErr = err
	}
	return nil, &HeldError{Resource: r, Err: probeErr}
}

func holderOf(addr *net.UnixAddr) (Process, error) {
	c, err := net.DialTimeout("unix", addr.Name, time.Second)
	if err != nil {
		return Process{}, err
	}
	defer c.Close()
	return PeerProcess(c.(*net.UnixConn))
}

// acceptAndClose keeps the listen backlog empty, so that a second vpnd's
// connect never blocks or fails for lack of room.
func (l *Lock) acceptAndClose(ln *net.UnixListener) {
	defer l.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: back off instead of spinning.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		c.Close()
	}
}

// Close releases the resources. A nil Lock is fine.
func (l *Lock) Close() error {
	if l == nil {
		return nil
	}
	var errs []error
	for _, ln := range l.lns {
		errs = append(errs, ln.Close())
	}
	l.wg.Wait()
	l.lns = nil
	return errors.Join(errs...)
}

// Process identifies a process by what the kernel says about it.
type Process struct {
	PID     int // in this process's PID namespace; 0 if not visible from it
	UID     uint32
	Cmdline string // from /proc/PID/cmdline, arguments joined by spaces
}

func (p Process) String() string {
	if p.PID == 0 {
		return fmt.Sprintf("a process of uid %d in another PID namespace", p.UID)
	}
	return fmt.Sprintf("pid %d (uid %d: %s)", p.PID, p.UID, p.Cmdline)
}

// PeerProcess identifies the process at the other end of c. For a
// connection that this process made, that is the process that called
// listen() on the socket it connected to.
func PeerProcess(c *net.UnixConn) (Process, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Process{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Process{}, err
	}
	if credErr != nil {
		return Process{}, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	p := Process{PID: int(cred.Pid), UID: cred.Uid}
	if p.PID != 0 {
		p.Cmdline = cmdline(p.PID)
	}
	return p, nil
}

// maxCmdline keeps a message readable whatever the holder's arguments.
const maxCmdline = 512

func cmdline(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Sprintf("command line unreadable: %v", err)
	}
	s := oneLine(strings.TrimRight(string(b), "\x00"))
	if s == "" {
		return "no command line"
	}
	return s
}

// oneLine joins NUL-separated arguments with spaces and replaces control
// characters: the arguments are the holder's to choose, and the message
// that quotes them must stay one honest line.
func oneLine(s string) string {
	if len(s) > maxCmdline {
		s = s[:maxCmdline] + "..."
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == 0:
			return ' '
		case unicode.IsControl(r):
			return '?'
		}
		return r
	}, s)
}
