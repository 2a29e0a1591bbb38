package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/vpnd/vpnd/client"
)

// BenchmarkStatus measures status round trips over the Unix socket while a
// typical VPN is up, with as many clients as -cpu × RunParallel runs (one
// connection each). The kernel is the fake one, so what it measures is the
// server's own path: read, decode, answer, write. bench/cmd/vpnbench measures
// the same against a real kernel and an echo baseline.
func BenchmarkStatus(b *testing.B) {
	sock, _ := serve(b, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	owner, err := client.Dial(ctx, sock)
	if err != nil {
		b.Fatal(err)
	}
	defer owner.Close()
	f, _, err := owner.SetUpRaw(ctx, json.RawMessage(`{"addresses":["10.8.0.2/24"],"routes":["198.51.100.0/24","203.0.113.0/24"],"dnsAddresses":["10.8.0.1","10.8.0.53"],"mtu":1400}`))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()

	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		req := []byte(`{"jsonrpc":"2.0","id":1,"method":"status"}` + "\n")
		for pb.Next() {
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			line, err := r.ReadSlice('\n')
			if err != nil {
				b.Error(err)
				return
			}
			if !bytes.Contains(line, []byte(`"state":"connected"`)) {
				b.Errorf("unexpected answer %s", line)
				return
			}
		}
	})
}
