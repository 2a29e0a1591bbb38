package manager

import (
	"context"
	"net/netip"
	"os"

	"github.com/vpnd/vpnd/internal/tun"
)

// Kernel is everything the manager needs from the kernel, one small step
// per method, so that a bring-up can be rolled back step by step and a fake
// can fail at any chosen step. internal/tun implements it with netlink;
// internal/tun/tuntest has the fake.
//
// Every method acts on the network namespace vpnd runs in.
type Kernel interface {
	// CreateTUN creates a non-persistent TUN device (IFF_TUN|IFF_NO_PI|
	// IFF_TUN_EXCL) and returns its only fd and its interface index. The
	// fd is non-blocking unless blocking is set. The link lives exactly
	// as long as some copy of the fd is open.
	CreateTUN(name string, blocking bool) (*os.File, int, error)
	// DeleteLink deletes the link with this index, if it still exists.
	DeleteLink(index int) error
	AddAddress(index int, addr netip.Prefix) error
	SetMTU(index, mtu int) error
	SetUp(index int) error
	// AddRoutes adds rs and returns the routes it added: all of them
	// unless err, the first failure by position, is set. The caller
	// removes exactly the returned routes on a rollback.
	AddRoutes(rs []tun.Route) ([]tun.Route, error)
	DeleteRoute(r tun.Route) error
	AddRule(r tun.Rule) error
	DeleteRule(r tun.Rule) error
	// WatchLink returns a channel that is closed once the link with this
	// index is gone, for whatever reason. It survives netlink overflows.
	// Cancelling ctx stops the watch without closing the channel.
	WatchLink(ctx context.Context, index int) (<-chan struct{}, error)
	// Occupants describes every route in table and every rule at priority
	// (any table): things vpnd would share its table or priority with.
	Occupants(table, priority int) ([]string, error)
	// ListRules and ListRoutes read back vpnd-shaped rules at priority
	// that look up table, and the routes in table, for self-healing.
	ListRules(table, priority int) ([]tun.Rule, error)
	ListRoutes(table int) ([]tun.Route, error)
	// ReplaceRoute puts r in place of any route to its destination in its
	// table.
	ReplaceRoute(r tun.Route) error
	// WatchChanges returns a channel that gets a token after a change to
	// the routes, rules or link that f selects, or after lost netlink
	// messages. It closes when ctx is cancelled or the watch fails.
	WatchChanges(ctx context.Context, f tun.ChangeFilter) (<-chan struct{}, error)
	// CheckSocket returns an *errs.Error with code 2203004 unless fd is an
	// AF_INET/AF_INET6 stream or datagram socket with no pending error.
	CheckSocket(fd int) error
	// MarkSocket ORs mark into the socket's SO_MARK, keeping its other bits.
	MarkSocket(fd int, mark uint32) error
}
