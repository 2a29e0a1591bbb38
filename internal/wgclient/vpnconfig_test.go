package wgclient

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, conf string) *Config {
	t.Helper()
	cfg, err := Parse(strings.NewReader(conf))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestVpnConfig(t *testing.T) {
	cfg := parse(t, goodConfig)
	vc, notes, err := cfg.VpnConfig()
	if err != nil {
		t.Fatal(err)
	}
	var addrs, routes []string
	for _, a := range vc.Addresses {
		addrs = append(addrs, a.String())
	}
	for _, r := range vc.Routes {
		routes = append(routes, r.Destination.String())
	}
	if want := []string{"10.8.0.2/24", "fd00:8::2/64", "10.9.0.2/32"}; !reflect.DeepEqual(addrs, want) {
		t.Errorf("addresses %v, want %v", addrs, want)
	}
	// The union of every peer's AllowedIPs, in file order.
	if want := []string{"0.0.0.0/0", "::/0", "10.1.0.0/16", "192.168.7.9/32"}; !reflect.DeepEqual(routes, want) {
		t.Errorf("routes %v, want %v", routes, want)
	}
	if !reflect.DeepEqual(vc.DNSAddresses, []string{"10.8.0.1", "fd00:8::1"}) ||
		!reflect.DeepEqual(vc.SearchDomains, []string{"corp.example", "example.org"}) || vc.MTU != 1400 || len(notes) != 0 {
		t.Errorf("dns %v search %v mtu %d notes %v", vc.DNSAddresses, vc.SearchDomains, vc.MTU, notes)
	}

	// An IPv4-only interface: ::/0 is left out with a note, and the MTU
	// defaults to wg-quick's.
	cfg = parse(t, "[Interface]\nPrivateKey = "+testPriv+"\nAddress = 10.8.0.2/24\n[Peer]\nPublicKey = "+testPeer1+"\nAllowedIPs = 0.0.0.0/0, ::/0\n")
	vc, notes, err = cfg.VpnConfig()
	if err != nil || len(vc.Routes) != 1 || vc.Routes[0].Destination.String() != "0.0.0.0/0" || vc.MTU != DefaultMTU {
		t.Fatalf("VpnConfig = %+v, %v", vc, err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "::/0 not routed: no IPv6 address") {
		t.Errorf("notes %q", notes)
	}

	// Nothing left to route is an error, never an empty route list
	// (which vpnd reads as "everything").
	cfg = parse(t, "[Interface]\nPrivateKey = "+testPriv+"\nAddress = 10.8.0.2/24\n[Peer]\nPublicKey = "+testPeer1+"\nAllowedIPs = ::/0\n")
	if vc, _, err := cfg.VpnConfig(); err == nil || !strings.Contains(err.Error(), "nothing to route") {
		t.Errorf("VpnConfig = %+v, %v; want an error", vc, err)
	}
}

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestResolveAndUAPI(t *testing.T) {
	cfg := parse(t, strings.Replace(goodConfig, "192.0.2.2:51820", "vpn.example:51820", 1))
	r := fakeResolver{"vpn.example": {netip.MustParseAddr("::ffff:192.0.2.9"), netip.MustParseAddr("192.0.2.10")}}
	eps, err := cfg.ResolveEndpoints(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:51820"), netip.MustParseAddrPort("[2001:db8::1]:443")}; !reflect.DeepEqual(eps, want) {
		t.Errorf("endpoints %v, want %v", eps, want)
	}
	if _, err := cfg.ResolveEndpoints(context.Background(), fakeResolver{}); err == nil || !strings.Contains(err.Error(), "vpn.example:51820") {
		t.Errorf("unresolvable endpoint: %v", err)
	}

	got := cfg.UAPI(eps)
	want := "private_key=" + mustKey(t, testPriv).hex() + "\nlisten_port=51820\nreplace_peers=true\n" +
		"public_key=" + mustKey(t, testPeer1).hex() + "\npreshared_key=" + mustKey(t, testPSK).hex() + "\n" +
		"endpoint=192.0.2.9:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n" +
		"public_key=" + mustKey(t, testPeer2).hex() + "\nendpoint=[2001:db8::1]:443\npersistent_keepalive_interval=0\n" +
		"replace_allowed_ips=true\nallowed_ip=10.1.0.0/16\nallowed_ip=192.168.7.9/32\n"
	if got != want {
		t.Errorf("UAPI:\n%s\nwant:\n%s", got, want)
	}
}

// fakeDevice answers "get" with a fixed text, as wireguard-go would.
type fakeDevice string

func (f fakeDevice) IpcGetOperation(w io.Writer) error {
	_, err := w.Write([]byte(f))
	return err
}

func TestUAPIServeAndShow(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	now := time.Unix(1_700_000_000, 0)
	get := "private_key=" + mustKey(t, testPriv).hex() + "\nlisten_port=41414\n" +
		"public_key=" + mustKey(t, testPeer2).hex() + "\npreshared_key=" + strings.Repeat("0", 64) + "\nprotocol_version=1\n" +
		"last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n" +
		"public_key=" + mustKey(t, testPeer1).hex() + "\npreshared_key=" + mustKey(t, testPSK).hex() + "\nprotocol_version=1\n" +
		"endpoint=192.0.2.2:51820\nlast_handshake_time_sec=1699999935\nlast_handshake_time_nsec=5\n" +
		"tx_bytes=4858\nrx_bytes=3221225472\npersistent_keepalive_interval=25\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n"
	srv, err := listenUAPI(dir, "vpn-tun", fakeDevice(get))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(srv.path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, %v; want 0700", fi.Mode(), err)
	}
	// A second tunnel with the same name is refused while this one runs.
	if _, err := listenUAPI(dir, "vpn-tun", fakeDevice("")); err == nil || !strings.Contains(err.Error(), "another vpnd-wg") {
		t.Errorf("second listen: %v", err)
	}

	st, err := QueryUAPI(UAPIPath(dir, "vpn-tun"))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	WriteShow(&out, st, now)
	want := `interface: vpn-tun
  public key: ` + mustKey(t, testPriv).PublicKey().String() + `
  private key: (hidden)
  listening port: 41414

peer: ` + testPeer1 + `
  preshared key: (hidden)
  endpoint: 192.0.2.2:51820
  allowed ips: 0.0.0.0/0, ::/0
  latest handshake: 1 minute, 4 seconds ago
  transfer: 3.00 GiB received, 4.74 KiB sent
  persistent keepalive: every 25 seconds

peer: ` + testPeer2 + `
  allowed ips: (none)
`
	if out.String() != want {
		t.Errorf("show:\n%s\nwant:\n%s", out.String(), want)
	}

	// "set" is refused: the configuration is the file's and vpnd's.
	c, err := net.Dial("unix", UAPIPath(dir, "vpn-tun"))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("set=1\nlisten_port=1\n\n"))
	if line, _ := bufio.NewReader(c).ReadString('\n'); line != "errno=1\n" {
		t.Errorf("set answered %q, want errno=1 (EPERM)", line)
	}
	c.Close()

	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(srv.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
	if _, err := QueryUAPI(UAPIPath(dir, "vpn-tun")); !errors.Is(err, ErrNotRunning) {
		t.Errorf("query after Close = %v, want ErrNotRunning", err)
	}
	// A stale socket file (a killed vpnd-wg) is replaced.
	l, err := net.Listen("unix", srv.path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	srv, err = listenUAPI(dir, "vpn-tun", fakeDevice(get))
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	srv.Close()
}

func TestShowFormats(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "Now"}, {time.Second, "1 second ago"}, {2*time.Hour + time.Second, "2 hours, 1 second ago"},
		{400 * 24 * time.Hour, "1 year, 35 days ago"},
	} {
		if got := ago(c.d); got != c.want {
			t.Errorf("ago(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1536: "1.50 KiB", 5 << 20: "5.00 MiB", 3 << 40: "3.00 TiB"} {
		if got := byteCount(n); got != want {
			t.Errorf("byteCount(%d) = %q, want %q", n, got, want)
		}
	}
}
