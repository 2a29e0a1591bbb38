package tun

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/manager"
)

// The kernel announces a link's MTU and up state, and IPv6 addresses, with
// port id 0 whoever asked, so the echo filter cannot drop the
// announcements of vpnd's own link changes. Without more, each bring-up
// and each ending would make the reconciler read the link again (three
// requests) for changes it made itself.
//
// So the monitor keeps the facts of vpnd's links that the reconciler's
// view holds too: name, MTU, up state and addresses, as the last read
// found them, with vpnd's own changes since (expect, before each batch is
// sent). An announcement that shows a link as its facts say changes
// nothing the reconciler keeps: the kernel is as vpnd knows it. Anything
// else counts as a change. Announcements caused by a deletion vpnd asked
// for (the link's own, its addresses', the routes through it) count for
// nothing either: the reconciler's view already dropped them.
//
// A read's answer may be older than an announcement the monitor has
// already taken in, so while a read of the links is under way nothing is
// suppressed, and the facts are replaced by what the read found only
// afterwards. A change the monitor suppresses is one that leaves the
// link as the facts say, so nothing vpnd keeps is missed.

// linkFacts is what vpnd knows of one of its links.
type linkFacts struct {
	name string
	// states are the link's MTU and up state as the last read found them
	// or an announcement confirmed, then each state that vpnd's changes
	// since lead to, in the order they were sent: one batch that sets the
	// MTU and then the link up is announced twice, once half done.
	states []linkState
	addrs  map[netip.Prefix]bool // true: foreign (see manager.Addr)
	// deleting says that vpnd asked for the link's deletion.
	deleting bool
}

type linkState struct {
	mtu int
	up  bool
}

// maxStates bounds the states a link's facts wait for; changes that the
// kernel does not announce (the MTU it already has) leave theirs behind.
// An announcement of a state dropped costs one read of the link.
const maxStates = 8

// facts is what the monitor knows of vpnd's links. It has a lock of its
// own, taken after monitor.mu where both are: Apply records what it asks
// for (expect) whatever the monitor's reader is doing.
type facts struct {
	mu      sync.Mutex
	links   map[int]*linkFacts
	reading int // link reads under way
}

// beginRead says that a read of the links starts: until endRead, no
// announcement is suppressed.
func (m *monitor) beginRead() {
	m.facts.mu.Lock()
	m.facts.reading++
	m.facts.mu.Unlock()
}

// endRead ends a read of the links, with the links found if ok: they are
// vpnd's links from now on, and their facts.
func (m *monitor) endRead(links []manager.LinkState, ok bool) {
	if ok {
		m.mu.Lock()
		for _, l := range links {
			m.tracked[l.Index] = true
		}
		m.mu.Unlock()
	}
	m.facts.mu.Lock()
	defer m.facts.mu.Unlock()
	m.facts.reading--
	if !ok {
		clear(m.facts.links)
		return
	}
	facts := make(map[int]*linkFacts, len(links))
	for _, l := range links {
		f := &linkFacts{name: l.Name, states: []linkState{{l.MTU, l.Up}}, addrs: make(map[netip.Prefix]bool, len(l.Addrs))}
		for _, a := range l.Addrs {
			f.addrs[a.Prefix] = a.Foreign
		}
		facts[l.Index] = f
	}
	m.facts.links = facts
}

// expect records the link changes that ops ask for, before they are
// sent: the kernel may announce them before the answer comes.
func (m *monitor) expect(ops []manager.Op) {
	m.facts.mu.Lock()
	defer m.facts.mu.Unlock()
	for _, op := range ops {
		f := m.facts.links[op.Link.Index]
		if f == nil {
			continue
		}
		last := f.states[len(f.states)-1]
		switch op.Kind {
		case manager.SetLink:
			f.states = append(f.states, linkState{op.Link.MTU, last.up})
		case manager.LinkUp:
			f.states = append(f.states, linkState{last.mtu, true})
		case manager.AddAddr:
			f.addrs[op.Addr] = false
		case manager.DelAddr:
			delete(f.addrs, op.Addr)
		case manager.DelLink:
			f.deleting = true
		}
		if n := len(f.states); n > maxStates {
			f.states = slices.Delete(f.states, 0, n-maxStates)
		}
	}
}

// withFacts calls known with the facts of the link with this index,
// under their lock, and returns its answer; false, without calling it,
// while a read of the links is under way or if vpnd knows nothing of the
// link: then an announcement about it must count as a change.
func (m *monitor) withFacts(index int, known func(*linkFacts) bool) bool {
	m.facts.mu.Lock()
	defer m.facts.mu.Unlock()
	f := m.facts.links[index]
	if m.facts.reading > 0 || f == nil {
		return false
	}
	return known(f)
}

// forget drops the facts of a link that is gone, and reports whether vpnd
// had asked for its deletion (as withFacts would know it).
func (m *monitor) forget(index int) bool {
	m.facts.mu.Lock()
	defer m.facts.mu.Unlock()
	f := m.facts.links[index]
	delete(m.facts.links, index)
	return m.facts.reading == 0 && f != nil && f.deleting
}

// linkAsKnown reports whether an RTM_NEWLINK shows a link as its facts
// say, now or on the way to what vpnd asked for (or the link is being
// deleted). A state announced becomes the link's known state: what vpnd
// asked for before it is done.
func (m *monitor) linkAsKnown(index int, d []byte) bool {
	attrs, err := nl.ParseRouteAttr(d[unix.SizeofIfInfomsg:])
	if err != nil {
		return false
	}
	name, mtu := "", -1
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFLA_IFNAME:
			name = unix.ByteSliceToString(a.Value)
		case unix.IFLA_MTU:
			if len(a.Value) == 4 {
				mtu = int(binary.NativeEndian.Uint32(a.Value))
			}
		}
	}
	up := nl.DeserializeIfInfomsg(d).Flags&unix.IFF_UP != 0

	return m.withFacts(index, func(f *linkFacts) bool {
		if f.deleting {
			return true
		}
		i := slices.Index(f.states, linkState{mtu, up})
		if name != f.name || i < 0 {
			return false
		}
		f.states = slices.Delete(f.states, 0, i)
		return true
	})
}

// addrAsKnown reports whether an address announcement shows the link's
// addresses as its facts say (or the link is being deleted).
func (m *monitor) addrAsKnown(typ uint16, d []byte) bool {
	msg := nl.DeserializeIfAddrmsg(d)
	p, flags, ok := parseAddr(msg, d)
	return m.withFacts(int(msg.Index), func(f *linkFacts) bool {
		if f.deleting {
			return true
		}
		if !ok {
			return false
		}
		foreign, known := f.addrs[p]
		if typ == unix.RTM_DELADDR {
			return !known
		}
		want := addrFlags(p)
		return known && foreign == (flags&want != want)
	})
}

// parseAddr returns the address and flags of an address announcement.
func parseAddr(msg *nl.IfAddrmsg, d []byte) (netip.Prefix, uint32, bool) {
	attrs, err := nl.ParseRouteAttr(d[unix.SizeofIfAddrmsg:])
	if err != nil {
		return netip.Prefix{}, 0, false
	}
	var local, address []byte
	flags := uint32(msg.Flags)
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFA_LOCAL:
			local = a.Value
		case unix.IFA_ADDRESS:
			address = a.Value
		case unix.IFA_FLAGS:
			if len(a.Value) == 4 {
				flags = binary.NativeEndian.Uint32(a.Value)
			}
		}
	}
	if local == nil {
		local = address
	}
	ip, ok := netip.AddrFromSlice(local)
	if !ok {
		return netip.Prefix{}, 0, false
	}
	return netip.PrefixFrom(ip.Unmap(), int(msg.Prefixlen)), flags, true
}

// routeAsKnown reports whether a route announcement comes from the
// deletion of a link vpnd asked to delete (the routes through it go with
// it).
func (m *monitor) routeAsKnown(typ uint16, d []byte) bool {
	if typ != unix.RTM_DELROUTE {
		return false
	}
	attrs, err := nl.ParseRouteAttr(d[unix.SizeofRtMsg:])
	if err != nil {
		return false
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.RTA_OIF && len(a.Value) == 4 {
			return m.withFacts(int(binary.NativeEndian.Uint32(a.Value)), func(f *linkFacts) bool { return f.deleting })
		}
	}
	return false
}
