package manager

import (
	"context"
	"os"

	"github.com/vpnd/vpnd/internal/tun"
)

// Kernel is everything the manager needs from the kernel. internal/tun
// implements it with netlink; internal/sim implements it in memory for
// `vpnd --sim` and, wrapped with fault injection, for the unit tests
// (internal/tun/tuntest).
//
// The methods work on sets of objects (tun.Objects) rather than one object
// at a time, so that a bring-up or a teardown of 10,000 routes costs a few
// round trips, not 10,000. Every method acts on the network namespace vpnd
// runs in.
type Kernel interface {
	// CreateTUN creates a non-persistent TUN device (IFF_TUN|IFF_NO_PI|
	// IFF_TUN_EXCL, and IFF_VNET_HDR if opt.VnetHdr) and returns its only
	// fd and its interface index. The fd is non-blocking unless
	// opt.Blocking. The link lives exactly as long as some copy of the fd
	// is open.
	CreateTUN(name string, opt tun.TUNOptions) (*os.File, int, error)
	// Install configures o's link and adds o's addresses, routes and rules.
	// It returns what it added: all of o unless err, the first failure, is
	// set. The caller removes exactly what was added to roll back.
	Install(o *tun.Objects) (tun.Objects, error)
	// Remove deletes o: rules, then routes that do not go with the link,
	// then the link with its addresses and routes. Objects already gone are
	// not errors; it goes on past errors and returns them all.
	Remove(o *tun.Objects) error
	// Read reports what the kernel holds of q now.
	Read(q tun.Query) (*tun.State, error)
	// Restore puts back what r lists and reports what it really restored.
	Restore(r *tun.Repair) (tun.Repair, error)
	// Watch reports changes that f selects until ctx is cancelled: gone is
	// closed once the link is gone, changed gets a token whenever something
	// f selects changed other than by vpnd's own requests. A link deleted
	// before Watch was called may go unnoticed: call it before configuring
	// the link, so that a configuration that succeeds proves the link
	// outlived the registration.
	Watch(ctx context.Context, f tun.ChangeFilter) (gone, changed <-chan struct{}, err error)
	// Occupants describes every route in table and every rule at one of
	// priorities: things vpnd would share its table or priorities with.
	Occupants(table int, priorities ...int) ([]string, error)
	// HostPrefixes lists the addresses and on-link prefixes of every link
	// but the one named except (vpnd's own).
	HostPrefixes(except string) ([]tun.HostPrefix, error)
	// CheckSocket returns an *errs.Error with code 2203004 unless fd is an
	// AF_INET/AF_INET6 stream or datagram socket with no pending error.
	CheckSocket(fd int) error
	// MarkSocket ORs mark into the socket's SO_MARK, keeping its other bits.
	MarkSocket(fd int, mark uint32) error
}
