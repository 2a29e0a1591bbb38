package ownership

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/netnstest"
)

// Every test binds abstract names, which live in the network namespace:
// each runs in a fresh one, so that it can never collide with a vpnd on
// the host.

func TestNames(t *testing.T) {
	var got []string
	for _, r := range Resources("vpn-tun", 98, 10000, "vpnd") {
		got = append(got, r.Name())
	}
	want := "@vpnd/ifname/vpn-tun @vpnd/table/98 @vpnd/priority/10000 @vpnd/priority/10001 @vpnd/nft/vpnd"
	if strings.Join(got, " ") != want {
		t.Errorf("names %q, want %q", got, want)
	}
}

func TestAcquireRefusesAHeldResource(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	defer goleak.VerifyNone(t)
	a, err := Acquire(Resources("vpn-tun", 98, 10000, "vpnd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		res  []Resource
		want string
	}{
		{"same everything", Resources("vpn-tun", 98, 10000, "vpnd"), "@vpnd/ifname/vpn-tun"},
		{"same nftables table", Resources("tun1", 97, 20000, "vpnd"), "@vpnd/nft/vpnd"},
		{"same ifname", Resources("vpn-tun", 97, 20000, "other"), "@vpnd/ifname/vpn-tun"},
		{"same table", Resources("tun1", 98, 20000, "other"), "@vpnd/table/98"},
		{"same priority", Resources("tun1", 97, 10000, "other"), "@vpnd/priority/10000"},
		{"priority one below", Resources("tun1", 97, 9999, "other"), "@vpnd/priority/10000"},
		{"priority one above", Resources("tun1", 97, 10001, "other"), "@vpnd/priority/10001"},
	} {
		b, err := Acquire(tc.res)
		if err == nil {
			b.Close()
			t.Errorf("%s: acquired what another holds", tc.name)
			continue
		}
		var held *HeldError
		if !errors.As(err, &held) {
			t.Errorf("%s: %v, want a *HeldError", tc.name, err)
			continue
		}
		if held.Resource.Name() != tc.want {
			t.Errorf("%s: held %s, want %s", tc.name, held.Resource.Name(), tc.want)
		}
		if held.Holder.PID != os.Getpid() || held.Holder.UID != uint32(os.Getuid()) {
			t.Errorf("%s: holder %+v, want pid %d uid %d", tc.name, held.Holder, os.Getpid(), os.Getuid())
		}
		self, _ := os.ReadFile("/proc/self/cmdline")
		if arg0 := strings.Split(string(self), "\x00")[0]; !strings.Contains(err.Error(), arg0) {
			t.Errorf("%s: %q does not name the holder's command line %q", tc.name, err, arg0)
		}
	}
	// A refused Acquire released what it had bound before the conflict:
	// "tun1" and table 97 are free.
	c, err := Acquire(Resources("tun1", 97, 20000, "other"))
	if err != nil {
		t.Fatalf("a refused Acquire kept its names: %v", err)
	}
	c.Close()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed: the names are free again.
	a, err = Acquire(Resources("vpn-tun", 98, 10000, "vpnd"))
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	a.Close()
}

// A holder accepts and closes at once, so that connections (probes of
// refused vpnds, or a local user's flood) never fill its backlog and a
// later probe still learns who holds the name.
func TestBacklogNeverFills(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	defer goleak.VerifyNone(t)
	a, err := Acquire(Resources("vpn-tun", 98, 10000, "vpnd"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Connections that stay open on the client side: the backlog would
	// fill after somaxconn of them if nobody accepted.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 5000 {
		c, err := net.DialTimeout("unix", "@vpnd/table/98", time.Second)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		conns = append(conns, c)
		if len(conns) == 500 {
			for _, c := range conns {
				c.Close()
			}
			conns = conns[:0]
		}
	}
	_, err = Acquire(Resources("vpn-tun", 98, 10000, "vpnd"))
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.PID != os.Getpid() {
		t.Fatalf("after the flood: %v, want the holder named", err)
	}
}

// A name bound by something that does not listen is still taken: Acquire
// says so without hanging, and cannot say by whom.
func TestHolderThatDoesNotListen(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@vpnd/ifname/vpn-tun"}); err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(Resources("vpn-tun", 98, 10000, "vpnd"))
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.PID != 0 || !errors.Is(held.Err, syscall.ECONNREFUSED) {
		t.Fatalf("%v, want a HeldError with an unknown holder", err)
	}
	if !strings.Contains(err.Error(), "interface vpn-tun") || !strings.Contains(err.Error(), "unidentified") {
		t.Errorf("message %q", err)
	}
}

func TestCmdline(t *testing.T) {
	if got := cmdline(os.Getpid()); !strings.Contains(got, "ownership") || strings.Contains(got, "\x00") {
		t.Errorf("own cmdline %q", got)
	}
	if got, want := oneLine("vpnd\x00--socket\x00/a\nb\x1b[2J"), "vpnd --socket /a?b?[2J"; got != want {
		t.Errorf("oneLine: %q, want %q", got, want)
	}
}
