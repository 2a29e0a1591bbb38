package dns

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/godbus/dbus/v5"
	"go.uber.org/zap"

	"github.com/vpnd/vpnd/internal/manager"
)

// systemd-resolved's D-Bus names.
const (
	resolveService = "org.freedesktop.resolve1"
	resolvePath    = dbus.ObjectPath("/org/freedesktop/resolve1")
	resolveManager = "org.freedesktop.resolve1.Manager"
	// errNoSuchLink is resolved's answer for an interface index it does
	// not know (yet, or any more).
	errNoSuchLink = "org.freedesktop.resolve1.NoSuchLink"
)

// Resolved gives the VPN link its DNS settings through systemd-resolved's
// D-Bus API, per link: the link's servers, its search domains and whether
// it is a default route for queries; and it keeps multicast name resolution
// (LLMNR, mDNS) off every VPN link. resolved forgets a link's settings
// when the link goes away, so a vpnd killed with SIGKILL leaves nothing
// for its next start to restore: that start's sweep deletes the link.
//
// Each PrepareLink, Apply and Revert opens its own connection to the
// system bus and closes it: they are rare, and so a restarted dbus-daemon
// or resolved never leaves vpnd holding a dead connection.
type Resolved struct {
	log *zap.Logger
	// timeout bounds one PrepareLink, Apply, Revert or Probe, connection
	// included, so that a resolved that hangs cannot hold the manager.
	timeout time.Duration
	// linkWait is how long PrepareLink and Apply wait for resolved to
	// learn about a link that vpnd has just created: resolved follows
	// links through rtnetlink, on its own schedule, and answers
	// NoSuchLink until then.
	linkWait time.Duration
}

var (
	_ manager.DNS             = (*Resolved)(nil)
	_ manager.DNSLinkPreparer = (*Resolved)(nil)
)

// NewResolved returns the resolved backend. It connects to the system bus
// at DBUS_SYSTEM_BUS_ADDRESS if set, else at the standard socket.
func NewResolved(log *zap.Logger) *Resolved {
	if log == nil {
		log = zap.NewNop()
	}
	return &Resolved{log: log, timeout: 10 * time.Second, linkWait: 3 * time.Second}
}

// Name is "resolved".
func (r *Resolved) Name() string { return NameResolve }

// linkDNS is an element of SetLinkDNS's a(iay): an address family
// (AF_INET, AF_INET6) and the address's bytes.
type linkDNS struct {
	Family  int32
	Address []byte
}

// linkDomain is an element of SetLinkDomains's a(sb): a domain, and
// whether it only routes queries (resolvectl's "~domain") rather than
// also being a search domain.
type linkDomain struct {
	Domain      string
	RoutingOnly bool
}

// Address families as resolved's API takes them (Linux's values).
const (
	afInet  = 2
	afInet6 = 10
)

// step is one call of resolved's Manager interface.
type step struct {
	method string
	args   []any
}

// PrepareLink turns multicast name resolution off on the VPN's new link,
// for every VPN, before the link is up or has an address:
//
//   - SetLinkLLMNR(ifindex, "no")
//   - SetLinkMulticastDNS(ifindex, "no")
//
// resolved opens LLMNR (and, where the host enables it, mDNS) on every link
// that is up with an address, then probes for the host's name there and
// sends single-label (and .local) lookups to those groups: through the
// TUN, the host's name and the short names every user looks up would reach
// whoever runs the VPN's far end, where nothing answers them. Turned off
// after the link is up, the first probe, delayed by up to 100 ms, can still
// go out. The settings last until the link is deleted: Revert leaves them.
func (r *Resolved) PrepareLink(l manager.DNSLink) error {
	ifindex := int32(l.Index)
	return r.withManager(func(ctx context.Context, obj dbus.BusObject) error {
		if _, err := r.run(ctx, obj, l, true,
			step{"SetLinkLLMNR", []any{ifindex, "no"}},
			step{"SetLinkMulticastDNS", []any{ifindex, "no"}}); err != nil {
			return err
		}
		r.log.Debug("vpn link: multicast name resolution off", zap.String("ifname", l.Name), zap.Int("index", l.Index))
		return nil
	})
}

// Apply sets the link's default-route flag, its domains and its servers, in
// this order. The order fails closed: until the servers are set, the
// queries the VPN claims fail instead of going to the host's servers, and
// no query goes to the VPN's servers before its routing domains are in
// place.
//
//   - SetLinkDefaultRoute(ifindex, s.DefaultRoute)
//   - SetLinkDomains(ifindex, each search domain as a search domain, plus
//     "." as a routing-only domain ("~.") with a default route): "~."
//     makes resolved send every query that no more specific routing domain
//     claims to this link only, so a full tunnel leaks none to the
//     servers of the host's other links.
//   - SetLinkDNS(ifindex, servers)
//
// If a later call fails, Apply undoes the earlier ones as Revert does.
// PrepareLink has turned multicast name resolution off before.
func (r *Resolved) Apply(l manager.DNSLink, s manager.DNSSettings) error {
	servers := make([]linkDNS, 0, len(s.Servers))
	for _, a := range s.Servers {
		fam := int32(afInet6)
		if a.Is4() {
			fam = afInet
		}
		servers = append(servers, linkDNS{Family: fam, Address: a.AsSlice()})
	}
	domains := make([]linkDomain, 0, len(s.Domains)+1)
	for _, d := range s.Domains {
		domains = append(domains, linkDomain{Domain: d})
	}
	if s.DefaultRoute {
		domains = append(domains, linkDomain{Domain: ".", RoutingOnly: true})
	}
	ifindex := int32(l.Index)
	return r.withManager(func(ctx context.Context, obj dbus.BusObject) error {
		done, err := r.run(ctx, obj, l, true,
			step{"SetLinkDefaultRoute", []any{ifindex, s.DefaultRoute}},
			step{"SetLinkDomains", []any{ifindex, domains}},
			step{"SetLinkDNS", []any{ifindex, servers}})
		if err != nil {
			if done > 0 {
				if _, uerr := r.undo(ctx, obj, l); uerr != nil {
					err = fmt.Errorf("%w; and undoing it failed: %w", err, uerr)
				}
			}
			return err
		}
		r.log.Info("vpn dns settings applied", zap.String("ifname", l.Name), zap.Int("index", l.Index),
			zap.Stringers("servers", s.Servers), zap.Strings("domains", s.Domains), zap.Bool("default_route", s.DefaultRoute))
		return nil
	})
}

// Revert undoes Apply, servers first, so that no query goes to the VPN's
// servers once the VPN is going:
//
//   - SetLinkDNS(ifindex, [])
//   - SetLinkDomains(ifindex, [])
//   - SetLinkDefaultRoute(ifindex, false)
//
// It does not call RevertLink, which would also turn multicast name
// resolution back on (see PrepareLink) on a link that is still up, for
// the moment until vpnd deletes it: long enough for resolved to send the
// host's name into the TUN. resolved forgets every setting of a link when
// it is deleted, so nothing stays behind. A link that resolved no longer
// knows (deleted, and its settings with it) is not an error.
func (r *Resolved) Revert(l manager.DNSLink) error {
	return r.withManager(func(ctx context.Context, obj dbus.BusObject) error {
		known, err := r.undo(ctx, obj, l)
		if err != nil {
			return err
		}
		r.log.Info("vpn dns settings reverted", zap.String("ifname", l.Name), zap.Int("index", l.Index), zap.Bool("link_known", known))
		return nil
	})
}

// undo is Revert's calls. It reports whether resolved still knew the link.
func (r *Resolved) undo(ctx context.Context, obj dbus.BusObject, l manager.DNSLink) (known bool, err error) {
	ifindex := int32(l.Index)
	_, err = r.run(ctx, obj, l, false,
		step{"SetLinkDNS", []any{ifindex, []linkDNS{}}},
		step{"SetLinkDomains", []any{ifindex, []linkDomain{}}},
		step{"SetLinkDefaultRoute", []any{ifindex, false}})
	if isNoSuchLink(err) {
		return false, nil
	}
	return err == nil, err
}

// run makes the calls in order and stops at the first error, which it
// returns naming the method and the link, with the number of calls that
// succeeded. With waitForLink, the first call waits for resolved to learn
// about the link.
func (r *Resolved) run(ctx context.Context, obj dbus.BusObject, l manager.DNSLink, waitForLink bool, steps ...step) (int, error) {
	for i, st := range steps {
		var err error
		if i == 0 && waitForLink {
			err = r.callWhenKnown(ctx, obj, st.method, st.args...)
		} else {
			err = call(ctx, obj, st.method, st.args...)
		}
		if err != nil {
			return i, fmt.Errorf("%s on %s (index %d): %w", st.method, l.Name, l.Index, err)
		}
	}
	return len(steps), nil
}

// Probe reports whether resolved answers on the system bus: a Ping to its
// Manager object, which the bus may start it for (D-Bus activation).
func (r *Resolved) Probe() error {
	return r.withManager(func(ctx context.Context, obj dbus.BusObject) error {
		return obj.CallWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", 0).Err
	})
}

// withManager connects to the system bus and runs f with resolved's
// Manager object, all within r.timeout.
func (r *Resolved) withManager(f func(context.Context, dbus.BusObject) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	// The context also closes the connection if connecting or a call
	// hangs past the timeout.
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("connect to the system bus: %w", err)
	}
	defer conn.Close()
	return f(ctx, conn.Object(resolveService, resolvePath))
}

// callWhenKnown is call, retried while resolved does not know the link
// yet, for up to r.linkWait.
func (r *Resolved) callWhenKnown(ctx context.Context, obj dbus.BusObject, method string, args ...any) error {
	deadline := time.Now().Add(r.linkWait)
	wait := 5 * time.Millisecond
	for tries := 1; ; tries++ {
		err := call(ctx, obj, method, args...)
		if err == nil || !isNoSuchLink(err) || time.Now().Add(wait).After(deadline) {
			if err == nil && tries > 1 {
				r.log.Debug("resolved learnt about the vpn link", zap.Int("tries", tries))
			}
			return err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return err
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// call calls a method of resolved's Manager interface. A D-Bus error keeps
// its name in the message ("org.freedesktop.resolve1.NoSuchLink: Link 7
// not known"), which godbus would drop.
func call(ctx context.Context, obj dbus.BusObject, method string, args ...any) error {
	err := obj.CallWithContext(ctx, resolveManager+"."+method, 0, args...).Err
	var de dbus.Error
	if errors.As(err, &de) {
		return busError{de}
	}
	return err
}

// busError is a D-Bus error reply.
type busError struct{ e dbus.Error }

func (b busError) Error() string {
	if msg := b.e.Error(); msg != b.e.Name {
		return b.e.Name + ": " + msg
	}
	return b.e.Name
}

func (b busError) Unwrap() error { return b.e }

func isNoSuchLink(err error) bool {
	var de dbus.Error
	return errors.As(err, &de) && de.Name == errNoSuchLink
}
