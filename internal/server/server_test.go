package server

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/rpc"
	"github.com/vpnd/vpnd/internal/tun/tuntest"
	"github.com/vpnd/vpnd/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		line   string
		code   errs.Code // 0: valid
		notify bool
		method string // for a valid line: "status" unless set
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"status"}`, 0, false, ""},
		{`{"jsonrpc":"2.0","id":"a","method":"status","params":{}}`, 0, false, ""},
		{`{"jsonrpc":"2.0","id":null,"method":"status"}`, 0, false, ""},
		{`{"jsonrpc":"2.0","method":"destroy"}`, 0, true, "destroy"},
		{`{"jsonrpc":"2.0","id":-1.5e3,"method":"status"}`, 0, false, ""},
		// Escapes are JSON: they decode to the same strings.
		{`{"jsonrpc":"2\u002e0","id":1,"method":"st\u0061tus"}`, 0, false, ""},
		{`{"jsonrpc":"2.0","id":1,"method":"\u00e9t\"at"}`, 0, false, "\u00e9t\"at"},
		{`{"jsonrpc":"2.0","id":1,"method":"nosuchmethod"}`, 0, false, "nosuchmethod"},
		// An invalid surrogate escape decodes to U+FFFD, as encoding/json
		// decodes it.
		{`{"jsonrpc":"2.0","id":1,"method":"x\ud800y"}`, 0, false, "x\ufffdy"},
		{`{"jsonrpc":"2\u002e1","id":1,"method":"status"}`, errs.CodeInvalidRequest, false, ""},
		{`{"jsonrpc":2.0,"id":1,"method":"status"}`, errs.CodeInvalidRequest, false, ""},
		{"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"st\xffatus\"}", errs.CodeParse, false, ""},
		{`{"jsonrpc":"2.0",`, errs.CodeParse, false, ""},
		{`not json`, errs.CodeParse, false, ""},
		{`[]`, errs.CodeInvalidRequest, false, ""},
		{`"x"`, errs.CodeInvalidRequest, false, ""},
		{`null`, errs.CodeInvalidRequest, false, ""},
		{`{"jsonrpc":"1.0","id":1,"method":"status"}`, errs.CodeInvalidRequest, false, ""},
		{`{"id":1,"method":"status"}`, errs.CodeInvalidRequest, false, ""},
		{`{"jsonrpc":"2.0","id":1}`, errs.CodeInvalidRequest, false, ""},
		{`{"jsonrpc":"2.0","id":1,"method":""}`, errs.CodeInvalidRequest, false, ""},
		{`{"jsonrpc":"2.0","id":1,"method":7}`, errs.CodeInvalidRequest, false, ""},
		{`{"jsonrpc":"2.0","id":true,"method":"status"}`, errs.CodeInvalidRequest, false, ""},
		{`{"jsonrpc":"2.0","id":{},"method":"status"}`, errs.CodeInvalidRequest, false, ""},
	} {
		req, err := decode([]byte(tc.line), nil)
		// With the envelope found already, as rpc hands it over, the
		// answer is the same.
		env := rpc.ParseEnvelope([]byte(tc.line))
		req2, err2 := decode([]byte(tc.line), &env)
		if errs.CodeOf(err2) != errs.CodeOf(err) || (err == nil) != (err2 == nil) || req2.method != req.method || string(req2.id) != string(req.id) {
			t.Errorf("%s: with the envelope %+v %v, without %+v %v", tc.line, req2, err2, req, err)
		}
		if tc.code == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.line, err)
			} else if req.notifies != tc.notify {
				t.Errorf("%s: notifies = %v", tc.line, req.notifies)
			}
			if want := cmp.Or(tc.method, "status"); req.method != want {
				t.Errorf("%s: method %q, want %q", tc.line, req.method, want)
			}
			continue
		}
		if got := errs.CodeOf(err); err == nil || got != tc.code {
			t.Errorf("%s: got %v, want code %d", tc.line, err, tc.code)
		}
	}
}

func TestEmptyParams(t *testing.T) {
	for p, want := range map[string]errs.Code{``: 0, `null`: 0, `{}`: 0, `[]`: errs.CodeInvalidParam, `{"x":1}`: errs.CodeInvalidParam, `3`: errs.CodeInvalidParam} {
		err := emptyParams(json.RawMessage(p))
		if (err == nil) != (want == 0) || (err != nil && errs.CodeOf(err) != want) {
			t.Errorf("params %q: %v", p, err)
		}
	}
}

type noUsers struct{}

func (noUsers) ResolveUser(s string) (config.User, error) {
	return config.User{}, errors.New("no users here")
}

func policy(t testing.TB, js string) *auth.Holder {
	t.Helper()
	p, err := auth.ParsePolicy([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	var h auth.Holder
	h.Store(p)
	return &h
}

// serve runs a Server with a manager on the fake kernel; every peer is an
// ADMIN named "test" unless cfg says otherwise.
func serve(t testing.TB, cfg Config) (sock string, k *tuntest.Fake) {
	t.Helper()
	b := start(t, cfg)
	return b.sock, b.k
}

// bed is a running Server and what it runs on.
type bed struct {
	sock string
	k    *tuntest.Fake
	m    *manager.Manager
	s    *Server
}

func start(t testing.TB, cfg Config) *bed {
	t.Helper()
	k := tuntest.New()
	m := manager.New(k, manager.Options{IfName: "vpn-tun", Table: 98, RulePriority: 10000, ProtectMark: 0x20000})
	if cfg.Policy == nil {
		cfg.Policy = policy(t, `{"default":"admin"}`)
	}
	cfg.Manager, cfg.Users = m, noUsers{}
	if cfg.Lookup == nil {
		cfg.Lookup = func(uid, gid uint32) (auth.Identity, error) {
			return auth.Identity{UID: uid, GID: gid, User: "test"}, nil
		}
	}
	sock := filepath.Join(t.TempDir(), "vpnd.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	s := New(cfg)
	done := make(chan struct{})
	go func() { s.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ln.Close()
		<-done
		m.Shutdown()
		s.Close()
		k.Close()
	})
	return &bed{sock: sock, k: k, m: m, s: s}
}

func rawDial(t *testing.T, sock string) (*net.UnixConn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, r *bufio.Reader) protocol.Response {
	t.Helper()
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var resp protocol.Response
	if err := json.Unmarshal(line, &resp); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return resp
}

func TestPipelinedAndParseErrors(t *testing.T) {
	sock, _ := serve(t, Config{})
	c, r := rawDial(t, sock)
	// Three requests in one write: a parse error, a notification and a
	// status call. The parse error keeps the connection open; the
	// notification gets no answer.
	c.Write([]byte("{oops\n" + `{"jsonrpc":"2.0","method":"destroy"}` + "\n" + `{"jsonrpc":"2.0","id":"s","method":"status"}` + "\n"))
	if resp := readResp(t, r); resp.Error == nil || resp.Error.Code != int(errs.CodeParse) || string(resp.ID) != "null" {
		t.Fatalf("want parse error with id null, got %+v", resp)
	}
	if resp := readResp(t, r); string(resp.ID) != `"s"` || resp.Error != nil {
		t.Fatalf("want status answer, got %+v", resp)
	}
	// A long unknown method name does not make an oversize answer.
	c.Write([]byte(`{"jsonrpc":"2.0","id":2,"method":"` + strings.Repeat("x", 1<<20) + `"}` + "\n"))
	if resp := readResp(t, r); resp.Error == nil || resp.Error.Code != int(errs.CodeMethodNotFound) || len(resp.Error.Data.Detail) > 200 {
		t.Fatalf("got %+v", resp.Error)
	}
}

func TestConnectionLimit(t *testing.T) {
	sock, _ := serve(t, Config{MaxConns: 3, Policy: policy(t, `{"default":"normal"}`)})
	for i := 0; i < 3; i++ {
		c, r := rawDial(t, sock)
		c.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"status"}` + "\n"))
		readResp(t, r) // admitted and served
	}
	_, r := rawDial(t, sock)
	resp := readResp(t, r)
	if resp.Error == nil || resp.Error.Code != int(errs.CodeInternal) || !strings.Contains(resp.Error.Data.Detail, "limit is 3") {
		t.Fatalf("over the limit: %+v", resp.Error)
	}
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("connection over the limit left open")
	}
}

// TestPerUserLimit: one user cannot take every slot, unless it is ADMIN.
func TestPerUserLimit(t *testing.T) {
	for _, tc := range []struct {
		policy  string
		refused bool
	}{{`{"default":"normal"}`, true}, {`{"default":"admin"}`, false}} {
		sock, _ := serve(t, Config{MaxConnsPerUser: 2, Policy: policy(t, tc.policy)})
		for i := 0; i < 2; i++ {
			c, r := rawDial(t, sock)
			c.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"status"}` + "\n"))
			readResp(t, r)
		}
		c, r := rawDial(t, sock)
		c.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":"status"}` + "\n"))
		resp := readResp(t, r)
		if got := resp.Error != nil; got != tc.refused {
			t.Fatalf("%s: third connection refused = %v, want %v (%+v)", tc.policy, got, tc.refused, resp.Error)
		}
		if tc.refused && !strings.Contains(resp.Error.Data.Detail, "per-user limit is 2") {
			t.Fatalf("detail %q", resp.Error.Data.Detail)
		}
	}
}

// TestSlowReaderDropped: a client that pipelines requests and never reads
// is disconnected after the write timeout; others are served meanwhile.
func TestSlowReaderDropped(t *testing.T) {
	sock, _ := serve(t, Config{WriteTimeout: 200 * time.Millisecond})
	slow, _ := rawDial(t, sock)
	writeErr := make(chan error, 1)
	go func() {
		// 20 MB of answers cannot fit in the socket buffers: vpnd's writes
		// block, time out, and vpnd hangs up, which fails these writes.
		req := []byte(strings.Repeat(`{"jsonrpc":"2.0","id":1,"method":"status"}`+"\n", 1000))
		for i := 0; i < 200; i++ {
			if _, err := slow.Write(req); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Status(ctx); err != nil {
		t.Fatalf("other client not served: %v", err)
	}
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("vpnd took 200000 requests from a client that never read an answer")
		}
	case <-ctx.Done():
		t.Fatal("slow client not disconnected")
	}
	if _, err := cl.Status(ctx); err != nil {
		t.Fatalf("other client not served after: %v", err)
	}
}

// TestSubscribeOrder: the subscribe answer comes before any notification,
// and a setUp/destroy pair arrives in order.
func TestSubscribeOrder(t *testing.T) {
	sock, _ := serve(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watcher, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	events, err := watcher.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	owner, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	f, _, err := owner.SetUpRaw(ctx, json.RawMessage(`{"addresses":["10.8.0.2/24"]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	owner.Close() // the owner's connection closes: ownerGone
	for _, want := range []string{protocol.ReasonSetUp, protocol.ReasonOwnerGone} {
		select {
		case ev := <-events:
			if ev.Reason != want {
				t.Fatalf("reason %q, want %q", ev.Reason, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %s event", want)
		}
	}
}
