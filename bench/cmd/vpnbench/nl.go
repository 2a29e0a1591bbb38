package main

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// rtnl is a raw NETLINK_ROUTE socket in the calling process's namespace,
// for what the self-heal scenario needs and vishvananda/netlink does not
// do in one go: dump a whole table, delete or add thousands of routes in
// batches, and listen to route notifications.
type rtnl struct {
	fd  int
	seq uint32
	buf []byte
}

// openRTNL opens a socket subscribed to groups (0: none) with a receive
// buffer of rcvbuf bytes (0: the default).
func openRTNL(groups uint32, rcvbuf int) (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("netlink SO_RCVBUFFORCE: %w", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &rtnl{fd: fd, buf: make([]byte, 1<<20)}, nil
}

func (n *rtnl) Close() error { return unix.Close(n.fd) }

// dumpRoutes returns the payload (rtmsg and attributes) of every route of
// table tbl, both families. A dump the kernel interrupted is retried.
func (n *rtnl) dumpRoutes(tbl int) ([][]byte, error) {
	for attempt := 0; attempt < 10; attempt++ {
		routes, interrupted, err := n.dumpOnce(tbl)
		if err != nil || !interrupted {
			return routes, err
		}
	}
	return nil, errors.New("route dump interrupted 10 times")
}

func (n *rtnl) dumpOnce(tbl int) ([][]byte, bool, error) {
	n.seq++
	req := make([]byte, unix.SizeofNlMsghdr+unix.SizeofRtMsg)
	putHdr(req, unix.RTM_GETROUTE, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, n.seq)
	if err := unix.Sendto(n.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false, fmt.Errorf("route dump: %w", err)
	}
	var routes [][]byte
	interrupted := false
	for {
		nr, _, err := unix.Recvfrom(n.fd, n.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("route dump: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(n.buf[:nr])
		if err != nil {
			return nil, false, err
		}
		for _, m := range msgs {
			if m.Header.Seq != n.seq {
				continue
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return routes, interrupted, nil
			case unix.NLMSG_ERROR:
				if e := nlErrno(m.Data); e != 0 {
					return nil, false, fmt.Errorf("route dump: %w", e)
				}
			case unix.RTM_NEWROUTE:
				if routeTable(m.Data) == tbl {
					routes = append(routes, append([]byte(nil), m.Data...))
				}
			}
		}
	}
}

// batch sends one request of type typ for each payload, many to a
// sendmsg, each with an ACK, and waits for every answer. It returns each
// request's errno (0 for success), and the first error the kernel
// reported; ignore is an errno that is not one.
func (n *rtnl) batch(typ uint16, flags uint16, payloads [][]byte, ignore unix.Errno) ([]unix.Errno, error) {
	const perSend = 256
	errnos := make([]unix.Errno, len(payloads))
	var first error
	for done := 0; done < len(payloads); {
		k := min(perSend, len(payloads)-done)
		var b []byte
		start := n.seq + 1
		for _, p := range payloads[done : done+k] {
			n.seq++
			h := make([]byte, unix.SizeofNlMsghdr)
			putHdr(h, typ, unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags, n.seq)
			binary.NativeEndian.PutUint32(h, uint32(len(h)+len(p)))
			b = append(b, h...)
			b = append(b, p...)
			for len(b)%4 != 0 {
				b = append(b, 0)
			}
		}
		if err := unix.Sendto(n.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return errnos, fmt.Errorf("netlink send: %w", err)
		}
		for acked := 0; acked < k; {
			nr, _, err := unix.Recvfrom(n.fd, n.buf, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return errnos, fmt.Errorf("netlink recv: %w", err)
			}
			msgs, err := syscall.ParseNetlinkMessage(n.buf[:nr])
			if err != nil {
				return errnos, err
			}
			for _, m := range msgs {
				if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq < start || m.Header.Seq > n.seq {
					continue
				}
				acked++
				i := done + int(m.Header.Seq-start)
				errnos[i] = nlErrno(m.Data)
				if e := errnos[i]; e != 0 && e != ignore && first == nil {
					first = fmt.Errorf("netlink request %d: %w", i, e)
				}
			}
		}
		done += k
	}
	return errnos, first
}

func putHdr(b []byte, typ, flags uint16, seq uint32) {
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
}

func nlErrno(data []byte) unix.Errno {
	if len(data) < 4 {
		return 0
	}
	return unix.Errno(-int32(binary.NativeEndian.Uint32(data)))
}

// eachAttr calls fn for each rtattr in b.
func eachAttr(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&^unix.NLA_F_NESTED, b[4:l])
		adv := (l + 3) &^ 3
		if adv > len(b) {
			return
		}
		b = b[adv:]
	}
}

// routeTable is the table of a route payload: RTA_TABLE, or the rtmsg's.
func routeTable(p []byte) int {
	if len(p) < unix.SizeofRtMsg {
		return -1
	}
	tbl := int(p[4])
	eachAttr(p[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		if typ == unix.RTA_TABLE && len(v) == 4 {
			tbl = int(binary.NativeEndian.Uint32(v))
		}
	})
	return tbl
}

// routeKey identifies a route payload: family, destination, tos, type,
// table and metric, which is what makes two routes the same route.
func routeKey(p []byte) string {
	if len(p) < unix.SizeofRtMsg {
		return ""
	}
	var dst, metric []byte
	eachAttr(p[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_DST:
			dst = v
		case unix.RTA_PRIORITY:
			metric = v
		}
	})
	return fmt.Sprintf("%d/%d/%d/%d/%d/%s/%s", p[0], p[1], p[3], p[7], routeTable(p), hex.EncodeToString(dst), hex.EncodeToString(metric))
}

// routeForAdd turns a dumped route into the payload of an RTM_NEWROUTE
// that re-creates it: the rtmsg without the flags the kernel reports but
// refuses in a request, and only the attributes that define the route
// (a dump also carries cache information and expiry).
func routeForAdd(p []byte) []byte {
	out := append([]byte(nil), p[:unix.SizeofRtMsg]...)
	binary.NativeEndian.PutUint32(out[8:], 0) // rtm_flags
	eachAttr(p[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_DST, unix.RTA_OIF, unix.RTA_GATEWAY, unix.RTA_PRIORITY, unix.RTA_TABLE, unix.RTA_PREF, unix.RTA_PREFSRC:
			a := make([]byte, 4, 4+len(v)+3)
			binary.NativeEndian.PutUint16(a, uint16(4+len(v)))
			binary.NativeEndian.PutUint16(a[2:], typ)
			a = append(a, v...)
			for len(a)%4 != 0 {
				a = append(a, 0)
			}
			out = append(out, a...)
		}
	})
	return out
}
