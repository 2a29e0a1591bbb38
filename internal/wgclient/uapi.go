package wgclient

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/safedir"
)

// The running tunnel answers questions about itself on a Unix socket,
// DIR/IFNAME.sock, as wireguard-go does in /var/run/wireguard (which a
// normal user cannot write). It speaks the "get" operation of WireGuard's
// configuration protocol, and only that: the configuration comes from the
// file, and the routes from vpnd, so nothing may change it behind their
// back. The socket is 0600 in a 0700 directory, and a connection from
// another uid (root excepted) is closed unanswered, since "get" shows the
// private key.

// DefaultUAPIDir is $XDG_RUNTIME_DIR/vpnd-wg, or "" if XDG_RUNTIME_DIR is
// not set.
func DefaultUAPIDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "vpnd-wg")
	}
	return ""
}

// UAPIPath is the socket of interface ifname in dir.
func UAPIPath(dir, ifname string) string { return filepath.Join(dir, ifname+".sock") }

// ipcGetter is the part of wireguard-go's device that the socket serves.
type ipcGetter interface {
	IpcGetOperation(w io.Writer) error
}

type uapiServer struct {
	ln   *net.UnixListener
	path string
	dev  ipcGetter
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]bool
}

// uapiDir is how the UAPI directory is checked: as vpnd checks its socket
// directory (no symbolic link on the path, each directory root's or the
// user's, none that others may write unless sticky), and the directory
// itself the user's alone, since the socket in it serves the tunnel's
// state to whoever may connect, and another user who could write the
// directory could put a socket of theirs in its place. A missing one is
// created 0700.
var uapiDir = safedir.Spec{What: "UAPI directory", Flag: "--uapi-dir", Program: "vpnd-wg", Mode: 0o700, Private: true}

// openUAPIDir checks the UAPI directory dir (see uapiDir), creating it if
// it is missing unless noCreate, and returns its absolute path. A missing
// directory with noCreate is os.ErrNotExist.
func openUAPIDir(dir string, noCreate bool) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("--uapi-dir %q: %w", dir, err)
	}
	spec := uapiDir
	spec.NoCreate = noCreate
	fd, err := safedir.Open(abs, spec)
	if err != nil {
		return "", err
	}
	unix.Close(fd)
	return abs, nil
}

// CheckUAPIDir checks the UAPI directory that `vpnd-wg show` reads (see
// uapiDir); a missing one is fine: no tunnel serves there.
func CheckUAPIDir(dir string) error {
	_, err := openUAPIDir(dir, true)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// listenUAPI checks (and creates) dir and listens on DIR/IFNAME.sock,
// replacing a stale socket that nothing answers on.
func listenUAPI(dir, ifname string, dev ipcGetter) (*uapiServer, error) {
	dir, err := openUAPIDir(dir, false)
	if err != nil {
		return nil, err
	}
	path := UAPIPath(dir, ifname)
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("uapi socket %s: another vpnd-wg serves %s", path, ifname)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale uapi socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("uapi socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("uapi socket: %w", err)
	}
	s := &uapiServer{ln: ln, path: path, dev: dev, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *uapiServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.conns == nil {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// allowed reports whether the peer is this process's user or root.
func allowed(c *net.UnixConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return false
	}
	return cred.Uid == 0 || cred.Uid == uint32(os.Getuid())
}

func (s *uapiServer) handle(c *net.UnixConn) {
	if !allowed(c) {
		return
	}
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	for {
		op, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch op {
		case "get=1\n":
			if end, err := r.ReadString('\n'); err != nil || end != "\n" {
				return
			}
			errno := 0
			if err := s.dev.IpcGetOperation(w); err != nil {
				errno = int(unix.EIO)
			}
			fmt.Fprintf(w, "errno=%d\n\n", errno)
		case "set=1\n":
			// Read the operation to its end, and refuse it.
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == "\n" {
					break
				}
			}
			fmt.Fprintf(w, "errno=%d\n\n", int(unix.EPERM))
		default:
			return
		}
		if w.Flush() != nil {
			return
		}
	}
}

// Close stops serving, closes open connections and removes the socket.
func (s *uapiServer) Close() error {
	err := s.ln.Close() // also unlinks the socket file
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// Status is one interface's state as the configuration protocol's "get"
// reports it.
type Status struct {
	Name       string
	PrivateKey Key
	ListenPort int
	Peers      []PeerStatus
}

// PeerStatus is one peer's state.
type PeerStatus struct {
	PublicKey           Key
	PresharedKey        Key
	Endpoint            string
	AllowedIPs          []netip.Prefix
	LastHandshake       time.Time // zero: never
	RxBytes, TxBytes    uint64
	PersistentKeepalive int
}

// ErrNotRunning means that no tunnel answers on the socket.
var ErrNotRunning = errors.New("no running tunnel")

// QueryUAPI asks the tunnel serving the socket at path for its state.
func QueryUAPI(path string) (*Status, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: %w", path, ErrNotRunning)
		}
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(c, "get=1\n\n"); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	st, err := parseGet(bufio.NewReader(c))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	st.Name = strings.TrimSuffix(filepath.Base(path), ".sock")
	return st, nil
}

// parseGet reads a "get" answer up to and including its errno line.
func parseGet(r *bufio.Reader) (*Status, error) {
	st := &Status{}
	var peer *PeerStatus
	var hsSec, hsNsec int64
	flush := func() {
		if peer != nil && (hsSec != 0 || hsNsec != 0) {
			peer.LastHandshake = time.Unix(hsSec, hsNsec)
		}
		hsSec, hsNsec = 0, 0
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("read uapi answer: %w", err)
		}
		line = strings.TrimSuffix(line, "\n")
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("uapi answer: malformed line %q", line)
		}
		var perr error
		switch key {
		case "errno":
			flush()
			if value != "0" {
				return nil, fmt.Errorf("uapi answer: errno=%s", value)
			}
			return st, nil
		case "private_key":
			st.PrivateKey, perr = parseHexKey(value)
		case "listen_port":
			st.ListenPort, perr = strconv.Atoi(value)
		case "public_key":
			flush()
			st.Peers = append(st.Peers, PeerStatus{})
			peer = &st.Peers[len(st.Peers)-1]
			peer.PublicKey, perr = parseHexKey(value)
		case "fwmark", "protocol_version":
		default:
			if peer == nil {
				return nil, fmt.Errorf("uapi answer: %q before any peer", line)
			}
			switch key {
			case "preshared_key":
				peer.PresharedKey, perr = parseHexKey(value)
			case "endpoint":
				peer.Endpoint = value
			case "allowed_ip":
				var p netip.Prefix
				p, perr = netip.ParsePrefix(value)
				peer.AllowedIPs = append(peer.AllowedIPs, p)
			case "last_handshake_time_sec":
				hsSec, perr = strconv.ParseInt(value, 10, 64)
			case "last_handshake_time_nsec":
				hsNsec, perr = strconv.ParseInt(value, 10, 64)
			case "rx_bytes":
				peer.RxBytes, perr = strconv.ParseUint(value, 10, 64)
			case "tx_bytes":
				peer.TxBytes, perr = strconv.ParseUint(value, 10, 64)
			case "persistent_keepalive_interval":
				peer.PersistentKeepalive, perr = strconv.Atoi(value)
			}
		}
		if perr != nil {
			if key == "private_key" || key == "preshared_key" {
				line = key + "=(not shown)"
			}
			return nil, fmt.Errorf("uapi answer: %q: %w", line, perr)
		}
	}
}

func parseHexKey(s string) (Key, error) {
	var k Key
	if len(s) != 2*KeyLen {
		return k, errors.New("not a 64-digit hex key")
	}
	for i := range k {
		v, err := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		if err != nil {
			return k, errors.New("not a 64-digit hex key")
		}
		k[i] = byte(v)
	}
	return k, nil
}

// WriteShow writes st as `wg show` does, keys hidden, peers with the most
// recent handshake first.
func WriteShow(w io.Writer, st *Status, now time.Time) {
	fmt.Fprintf(w, "interface: %s\n", st.Name)
	if !st.PrivateKey.IsZero() {
		fmt.Fprintf(w, "  public key: %s\n", st.PrivateKey.PublicKey())
		fmt.Fprintf(w, "  private key: (hidden)\n")
	}
	if st.ListenPort != 0 {
		fmt.Fprintf(w, "  listening port: %d\n", st.ListenPort)
	}
	peers := append([]PeerStatus(nil), st.Peers...)
	sort.SliceStable(peers, func(i, j int) bool { return peers[i].LastHandshake.After(peers[j].LastHandshake) })
	for _, p := range peers {
		fmt.Fprintf(w, "\npeer: %s\n", p.PublicKey)
		if !p.PresharedKey.IsZero() {
			fmt.Fprintf(w, "  preshared key: (hidden)\n")
		}
		if p.Endpoint != "" {
			fmt.Fprintf(w, "  endpoint: %s\n", p.Endpoint)
		}
		ips := "(none)"
		if len(p.AllowedIPs) > 0 {
			ips = joinPrefixes(p.AllowedIPs)
		}
		fmt.Fprintf(w, "  allowed ips: %s\n", ips)
		if !p.LastHandshake.IsZero() {
			fmt.Fprintf(w, "  latest handshake: %s\n", ago(now.Sub(p.LastHandshake)))
		}
		if p.RxBytes != 0 || p.TxBytes != 0 {
			fmt.Fprintf(w, "  transfer: %s received, %s sent\n", byteCount(p.RxBytes), byteCount(p.TxBytes))
		}
		if p.PersistentKeepalive != 0 {
			fmt.Fprintf(w, "  persistent keepalive: every %s\n", duration(int64(p.PersistentKeepalive)))
		}
	}
}

// ago is wg's "1 minute, 5 seconds ago", or "Now".
func ago(d time.Duration) string {
	secs := int64(d / time.Second)
	if secs <= 0 {
		return "Now"
	}
	return duration(secs) + " ago"
}

func duration(secs int64) string {
	units := []struct {
		name string
		secs int64
	}{{"year", 365 * 24 * 3600}, {"day", 24 * 3600}, {"hour", 3600}, {"minute", 60}, {"second", 1}}
	var parts []string
	for _, u := range units {
		if n := secs / u.secs; n > 0 {
			secs -= n * u.secs
			s := fmt.Sprintf("%d %s", n, u.name)
			if n != 1 {
				s += "s"
			}
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ", ")
}

// byteCount is wg's "1.50 KiB".
func byteCount(n uint64) string {
	switch {
	case n < 1024:
		return fmt.Sprintf("%d B", n)
	case n < 1024*1024:
		return fmt.Sprintf("%.2f KiB", float64(n)/1024)
	case n < 1024*1024*1024:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1024*1024))
	case n < 1024*1024*1024*1024:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1024*1024*1024))
	default:
		return fmt.Sprintf("%.2f TiB", float64(n)/(1024*1024*1024*1024))
	}
}
