package tun

import (
	"encoding/binary"
	"slices"

	"golang.org/x/sys/unix"
)

// The host prefixes' cache. Before a NORMAL caller's setUp, vpnd asks which
// prefixes the host's other interfaces hold (HostPrefixes): three dumps, a
// good part of a setUp's time. The answer changes only when the kernel
// announces a change of an address, a link or an on-link route, and the
// monitor hears every announcement, so the answer is kept until the
// monitor hears one that could change it.
//
// This is exact, not a guess: the kernel queues its announcement of a
// change to the monitor's socket before it acknowledges the change to
// whoever made it, and a lookup first drains what is queued. Anything that
// exists when the lookup runs has been announced by then. Lost
// announcements (ENOBUFS, a re-opened monitor) drop the answer.
//
// (Occupants is not cached: its answer would have to leave vpnd's own VPN
// out, and the kernel removes a link's IPv4 routes without announcing it.)

// hostCache is the last answer of HostPrefixes.
type hostCache struct {
	ok     bool
	gen    uint64 // m.hostGen when it was filled
	except string
	result []HostPrefix
	// names are the links' names by index when it was filled; excluded
	// are the indexes of links named except (vpnd's own, then and since),
	// whose changes do not matter.
	names    map[int]string
	excluded map[int]bool
}

// cacheEventLocked drops the answer if an announcement could change it.
// m.mu must be held.
func (m *monitor) cacheEventLocked(h unix.NlMsghdr, d []byte) {
	switch h.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		l, ok := parseLink(d)
		if !ok {
			m.hostGen++
			return
		}
		hc := &m.host
		switch {
		case !hc.ok:
			m.hostGen++ // being filled, or never: anything may matter
		case l.Name == hc.except:
			// vpnd's own link, whoever changes it: never a host prefix.
			if h.Type == unix.RTM_NEWLINK {
				hc.excluded[l.Index] = true
			}
		case h.Type == unix.RTM_NEWLINK && hc.names[l.Index] == l.Name:
			// A known link's state changed (up, MTU...): not its addresses.
		default:
			m.hostGen++ // a new, renamed or deleted link
		}
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		if len(d) < unix.SizeofIfAddrmsg {
			m.hostGen++
			return
		}
		index := int(binary.NativeEndian.Uint32(d[4:8]))
		if !m.host.ok || !m.host.excluded[index] {
			m.hostGen++
		}
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		k, ok := parseRoute(d)
		if !ok {
			return
		}
		if k.tableID == unix.RT_TABLE_MAIN && k.typ == unix.RTN_UNICAST && !k.gw.IsValid() && (!m.host.ok || !m.host.excluded[k.oif]) {
			m.hostGen++
		}
	}
}

// dropCachesLocked forgets the answer: announcements were lost.
func (m *monitor) dropCachesLocked() { m.hostGen++ }

// HostPrefixes lists the addresses (with their prefix length) of every link
// but the one named except, and the on-link prefixes of the main table
// (routes without a gateway) through those links: what a NORMAL user's VPN
// address must not overlap. The answer is kept until the monitor hears a
// change that could alter it.
func (n *Netlink) HostPrefixes(except string) ([]HostPrefix, error) {
	m := n.mon
	hearing := m.drain()
	m.mu.Lock()
	if c := &m.host; hearing && c.ok && c.gen == m.hostGen && c.except == except {
		out := slices.Clone(c.result)
		m.mu.Unlock()
		return out, nil
	}
	m.host.ok = false
	gen := m.hostGen
	m.mu.Unlock()
	out, names, err := n.dumpHostPrefixes(except)
	if err != nil {
		return nil, err
	}
	excluded := map[int]bool{}
	for index, name := range names {
		if name == except {
			excluded[index] = true
		}
	}
	m.mu.Lock()
	m.host = hostCache{ok: true, gen: gen, except: except, result: slices.Clone(out), names: names, excluded: excluded}
	m.mu.Unlock()
	return out, nil
}
