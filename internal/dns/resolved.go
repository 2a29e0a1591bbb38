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
// D-Bus API, per link: the link's servers, its search domains, and whether
// it is a default route for queries. resolved forgets a link's settings
// when the link goes away, so a vpnd killed with SIGKILL leaves nothing
// for its next start to restore: that start's sweep deletes the link.
//
// Each Apply and Revert opens its own connection to the system bus and
// closes it: they are rare, and so a restarted dbus-daemon or resolved
// never leaves vpnd holding a dead connection.
type Resolved struct {
	log *zap.Logger
	// timeout bounds one Apply, Revert or Probe, connection included, so
	// that a resolved that hangs cannot hold the manager.
	timeout time.Duration
	// linkWait is how long Apply waits for resolved to learn about a
	// link that vpnd has just created: resolved follows links through
	// rtnetlink, on its own schedule, and answers NoSuchLink until then.
	linkWait time.Duration
}

var _ manager.DNS = (*Resolved)(nil)

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

// Apply sets, in this order, the link's default-route flag, its domains
// and its servers. The order fails closed: until the servers are set, the
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
// If a later call fails, RevertLink undoes the earlier ones.
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
	steps := []struct {
		method string
		args   []any
	}{
		{"SetLinkDefaultRoute", []any{ifindex, s.DefaultRoute}},
		{"SetLinkDomains", []any{ifindex, domains}},
		{"SetLinkDNS", []any{ifindex, servers}},
	}
	return r.withManager(func(ctx context.Context, obj dbus.BusObject) error {
		for i, st := range steps {
			var err error
			if i == 0 {
				err = r.callWhenKnown(ctx, obj, st.method, st.args...)
			} else {
				err = call(ctx, obj, st.method, st.args...)
			}
			if err == nil {
				continue
			}
			err = fmt.Errorf("%s on %s (index %d): %w", st.method, l.Name, l.Index, err)
			if i > 0 {
				if rerr := call(ctx, obj, "RevertLink", ifindex); rerr != nil && !isNoSuchLink(rerr) {
					err = fmt.Errorf("%w; and undoing it failed: RevertLink: %w", err, rerr)
				}
			}
			return err
		}
		r.log.Info("vpn dns settings applied", zap.String("ifname", l.Name), zap.Int("index", l.Index),
			zap.Stringers("servers", s.Servers), zap.Strings("domains", s.Domains), zap.Bool("default_route", s.DefaultRoute))
		return nil
	})
}

// Revert calls RevertLink(ifindex), which drops every setting of the link.
// A link that resolved no longer knows (deleted, and its settings with it)
// is not an error.
func (r *Resolved) Revert(l manager.DNSLink) error {
	return r.withManager(func(ctx context.Context, obj dbus.BusObject) error {
		err := call(ctx, obj, "RevertLink", int32(l.Index))
		if err != nil && !isNoSuchLink(err) {
			return fmt.Errorf("RevertLink on %s (index %d): %w", l.Name, l.Index, err)
		}
		r.log.Info("vpn dns settings reverted", zap.String("ifname", l.Name), zap.Int("index", l.Index), zap.Bool("link_known", err == nil))
		return nil
	})
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
