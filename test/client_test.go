package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/test/internal/wire"
)

// Uids of the embedded default policy. daemon (1) and bin (2)
// exist in every base image; 4000+ have no passwd entry.
const (
	uidRoot    = 0     // admin by default
	uidDaemon  = 1     // normal
	uidBin     = 2     // normal
	uidNobody  = 65534 // guest by default
	uidNormal  = 4000  // normal, no passwd entry
	uidNormal2 = 4001
)

// vpnd's JSON-RPC messages, decoded with the tests' own types so
// that a mistake in the protocol package cannot hide here.
type rpcMsg struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   *rpcError       `json:"error"`
	FDs     int             `json:"fds"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`

	raw     string
	members map[string]json.RawMessage
	fdInfo  []wire.FDInfo // descriptors that came with it (rawclient)
}

type rpcError struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data"`
}

func decodeMsg(t testing.TB, line string) rpcMsg {
	t.Helper()
	var m rpcMsg
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("vpnd sent a line that is not a JSON object: %v: %q", err, line)
	}
	if err := json.Unmarshal([]byte(line), &m.members); err != nil {
		t.Fatal(err)
	}
	m.raw = line
	if m.JSONRPC != "2.0" {
		t.Errorf("message without \"jsonrpc\":\"2.0\": %s", line)
	}
	return m
}

func (m rpcMsg) isNotification() bool { _, hasID := m.members["id"]; return !hasID && m.Method != "" }

func (m rpcMsg) idIs(id int) bool {
	var n json.Number
	d := json.NewDecoder(strings.NewReader(string(m.ID)))
	d.UseNumber()
	if d.Decode(&n) != nil {
		return false
	}
	return n.String() == fmt.Sprint(id)
}

// stateChanged is vpnStateChanged's params.
type stateChanged struct {
	IsConnected bool            `json:"isConnected"`
	Interface   string          `json:"interface"`
	Reason      string          `json:"reason"`
	VPN         json.RawMessage `json:"vpn"`
}

// vpnInfo is the part of VpnInfo the tests check. The tests decode into
// types of their own, not protocol's, so that a wrong JSON member name in
// protocol/ fails them instead of passing on both ends.
type vpnInfo struct {
	Interface      string   `json:"interface"`
	Index          int      `json:"index"`
	MTU            int      `json:"mtu"`
	Addresses      []string `json:"addresses"`
	Routes         []string `json:"routes"`
	ExcludedRoutes []string `json:"excludedRoutes"`
	DNSAddresses   []string `json:"dnsAddresses"`
	SearchDomains  []string `json:"searchDomains"`
	DNSBackend     string   `json:"dnsBackend"`
	IsMetered      bool     `json:"isMetered"`
	IsIPv4Accepted bool     `json:"isIPv4Accepted"`
	IsIPv6Accepted bool     `json:"isIPv6Accepted"`
	Offload        bool     `json:"offload"`
	Owner          struct {
		UID  uint32 `json:"uid"`
		PID  int    `json:"pid"`
		User string `json:"user"`
	} `json:"owner"`
	Since     string `json:"since"`
	Simulated bool   `json:"simulated"`
}

type statusResult struct {
	State    string   `json:"state"`
	VPN      *vpnInfo `json:"vpn"`
	Lockdown struct {
		Enabled      bool     `json:"enabled"`
		Applications []string `json:"applications"`
	} `json:"lockdown"`
}

// ---------------------------------------------------------------------------
// rawclient processes

// client is a rawclient process connected to vpnd as some uid.
type client struct {
	t      testing.TB
	uid    uint32
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	nextID int
	queue  []rpcMsg // notifications read while waiting for a response
	done   chan struct{}
}

// dial starts a rawclient as uid (gid = the uid's primary group, or the
// same number for uids without a passwd entry) connected to vpnd.
func (d *daemon) dial(t testing.TB, uid uint32) *client {
	t.Helper()
	return dialSocket(t, d.sock, uid)
}

func dialSocket(t testing.TB, sock string, uid uint32) *client {
	t.Helper()
	c, err := dialSocketErr(t, sock, uid)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dialSocketErr is dialSocket for any goroutine: it reports failure as an
// error instead of failing the test, which only the test's goroutine may.
func dialSocketErr(t testing.TB, sock string, uid uint32) (*client, error) {
	cmd := exec.Command(bin(t, "rawclient"), sock)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: primaryGID(uid), Groups: []uint32{}}}
	}
	return startClientErr(t, cmd, uid, "READY")
}

// startClient starts a rawclient command and waits for its first line,
// which must begin with ready.
func startClient(t testing.TB, cmd *exec.Cmd, uid uint32, ready string) *client {
	t.Helper()
	c, err := startClientErr(t, cmd, uid, ready)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startClientErr is startClient without failing the test.
func startClientErr(t testing.TB, cmd *exec.Cmd, uid uint32, ready string) (*client, error) {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start rawclient as uid %d: %w", uid, err)
	}
	c := &client{t: t, uid: uid, cmd: cmd, stdin: stdin, lines: make(chan string, 64), nextID: 1, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 8<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		c.stdin.Close()
		go func() {
			for range c.lines {
			}
		}()
		select {
		case <-c.done:
		case <-time.After(hangGuard):
			cmd.Process.Kill()
			<-c.done
		}
		if s := stderr.String(); s != "" && t.Failed() {
			t.Logf("rawclient uid %d stderr: %s", uid, s)
		}
	})
	first, err := c.lineErr()
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(first, ready) {
		return nil, fmt.Errorf("rawclient as uid %d: %q, want %q...; stderr %s", uid, first, ready, stderr.String())
	}
	return c, nil
}

func primaryGID(uid uint32) uint32 {
	switch uid {
	case uidNobody:
		return 65534
	}
	return uid // daemon:1, bin:2, numeric uids: same number
}

func (c *client) line() string {
	c.t.Helper()
	l, err := c.lineErr()
	if err != nil {
		c.t.Fatal(err)
	}
	return l
}

// lineErr is line without failing the test.
func (c *client) lineErr() (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("rawclient (uid %d) exited", c.uid)
		}
		return l, nil
	case <-time.After(hangGuard):
		return "", fmt.Errorf("rawclient (uid %d) gave no output for %v", c.uid, hangGuard)
	}
}

// do runs one rawclient command and returns its output lines; a command
// that failed returns its ERR text as the error.
func (c *client) do(command string) ([]string, error) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, command+"\n"); err != nil {
		c.t.Fatalf("write to rawclient: %v", err)
	}
	return c.collect()
}

func (c *client) collect() ([]string, error) {
	c.t.Helper()
	var out []string
	var err error
	for {
		l := c.line()
		switch {
		case l == "DONE":
			return out, err
		case strings.HasPrefix(l, "ERR "):
			err = fmt.Errorf("%s", strings.TrimPrefix(l, "ERR "))
		default:
			out = append(out, l)
		}
	}
}

func (c *client) must(command string) []string {
	c.t.Helper()
	out, err := c.do(command)
	if err != nil {
		c.t.Fatalf("rawclient (uid %d) %q: %v", c.uid, command, err)
	}
	return out
}

// request builds a request line. params is raw JSON text when it is a
// string or json.RawMessage, otherwise it is marshalled; nil omits it.
func request(id int, method string, params any, nfds int) string {
	m := map[string]any{"jsonrpc": "2.0", "method": method}
	if id != 0 {
		m["id"] = id
	}
	switch p := params.(type) {
	case nil:
	case string:
		m["params"] = json.RawMessage(p)
	default:
		m["params"] = p
	}
	if nfds > 0 {
		m["fds"] = nfds
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// send sends a request with fds of the given kinds ("" for none) and
// returns its id.
func (c *client) send(method string, params any, fdKinds string) int {
	c.t.Helper()
	id := c.nextID
	c.nextID++
	n := 0
	spec := "-"
	if fdKinds != "" {
		spec = fdKinds
		n = len(strings.Split(fdKinds, ","))
	}
	c.must("send " + spec + " " + request(id, method, params, n))
	return id
}

// recv reads one message; ok is false on EOF.
func (c *client) recv() (rpcMsg, bool) {
	c.t.Helper()
	out := c.must("recv")
	if len(out) == 1 && out[0] == "EOF" {
		return rpcMsg{}, false
	}
	if len(out) == 0 || !strings.HasPrefix(out[0], "MSG ") {
		c.t.Fatalf("rawclient recv: %q", out)
	}
	m := decodeMsg(c.t, strings.TrimPrefix(out[0], "MSG "))
	for _, l := range out[1:] {
		info, err := wire.ParseFDInfo(strings.TrimPrefix(l, "FD "))
		if err != nil {
			c.t.Fatal(err)
		}
		m.fdInfo = append(m.fdInfo, info)
	}
	return m, true
}

// response reads until the response with this id, queueing notifications.
func (c *client) response(id int) rpcMsg {
	c.t.Helper()
	for {
		m, ok := c.recv()
		if !ok {
			c.t.Fatalf("vpnd closed the connection of uid %d before answering request %d", c.uid, id)
		}
		if m.isNotification() {
			c.queue = append(c.queue, m)
			continue
		}
		if !m.idIs(id) {
			c.t.Fatalf("uid %d waits for the response to %d, got %s", c.uid, id, m.raw)
		}
		return m
	}
}

// call sends a request and returns its response.
func (c *client) call(method string, params any, fdKinds string) rpcMsg {
	c.t.Helper()
	return c.response(c.send(method, params, fdKinds))
}

// notification returns the next server notification.
func (c *client) notification() rpcMsg {
	c.t.Helper()
	if len(c.queue) > 0 {
		m := c.queue[0]
		c.queue = c.queue[1:]
		return m
	}
	for {
		m, ok := c.recv()
		if !ok {
			c.t.Fatalf("connection of uid %d closed while waiting for a notification", c.uid)
		}
		if m.isNotification() {
			return m
		}
		c.t.Fatalf("unexpected response while waiting for a notification: %s", m.raw)
	}
}

// stateChange returns the next vpnStateChanged params.
func (c *client) stateChange() stateChanged {
	c.t.Helper()
	m := c.notification()
	if m.Method != "vpnStateChanged" {
		c.t.Fatalf("notification %s, want vpnStateChanged", m.raw)
	}
	var p stateChanged
	if err := json.Unmarshal(m.Params, &p); err != nil {
		c.t.Fatalf("vpnStateChanged params: %v: %s", err, m.raw)
	}
	return p
}

// mark returns SO_MARK of the first socket of the last send.
func (c *client) mark() uint32 {
	c.t.Helper()
	out := c.must("mark")
	var m uint32
	if len(out) != 1 {
		c.t.Fatalf("mark: %q", out)
	}
	if _, err := fmt.Sscanf(out[0], "MARK %v", &m); err != nil {
		c.t.Fatalf("mark: %q: %v", out, err)
	}
	return m
}

// closeTUN closes every descriptor the client received.
func (c *client) closeTUN() { c.t.Helper(); c.must("closetun") }

// closeConn closes the client's connection to vpnd (the process and its
// descriptors stay).
func (c *client) closeConn() { c.t.Helper(); c.must("close") }

// ---------------------------------------------------------------------------
// Assertions on responses

// ok asserts a successful response and returns its result.
func ok(t testing.TB, m rpcMsg) json.RawMessage {
	t.Helper()
	if m.Error != nil {
		t.Fatalf("want success, got error %d %q: %v", m.Error.Code, m.Error.Message, m.Error.Data)
	}
	if _, has := m.members["result"]; !has {
		t.Fatalf("response without result: %s", m.raw)
	}
	return m.Result
}

// setUpOK asserts a successful setUp that carried exactly one TUN fd.
func setUpOK(t testing.TB, m rpcMsg) vpnInfo {
	t.Helper()
	res := ok(t, m)
	var info vpnInfo
	if err := json.Unmarshal(res, &info); err != nil {
		t.Fatalf("setUp result: %v: %s", err, res)
	}
	if m.FDs != 1 || len(m.fdInfo) != 1 {
		t.Fatalf("setUp response declares %d fds and carried %d, want 1: %s", m.FDs, len(m.fdInfo), m.raw)
	}
	if info.Simulated != simBackend {
		t.Errorf("VpnInfo simulated %v from the %s backend", info.Simulated, map[bool]string{false: "kernel", true: "sim"}[simBackend])
	}
	return info
}

// The error table of docs/protocol.md, with OpenHarmony's causes and solutions.
var documentedMessages = map[int]string{
	2203001:  "VPN creation denied. Check the user type.",
	2203002:  "VPN already exists.",
	2203004:  "Invalid socket file descriptor.",
	19900001: "Invalid parameter value.",
	19900002: "System internal error.",
	201:      "Permission denied.",
	-32700:   "Parse error.",
	-32600:   "Invalid request.",
	-32601:   "Method not found.",
}

var seedText = map[int]struct{ name, cause, solution string }{
	2203001:  {"Failed to Create a VPN", "The login user does not have the operation permission. Specifically, the GUEST user does not have the permission to call the setUp API.", "Check the type of the login user."},
	2203002:  {"VPN Already Exists", "The VPN has been created.", "Call the destroy API to destroy the existing VPN, and then call the setUp API."},
	2203004:  {"Invalid Descriptor", "A TCP socket connection fails to be established.", "Check whether a TCP socket connection is set up successfully."},
	19900001: {"Invalid Parameter", "The type or number of parameters is incorrect.", "Check the type and number of parameters."},
	19900002: {"System Internal Error", "An internal error is probably due to a null pointer, memory allocation error, or IPC communication error.", "Check whether the VPN service is normal."},
}

// wantError asserts an error response with this code, the documented
// exact message, data.name/cause/solution (OpenHarmony's text where OpenHarmony
// has the code) and a detail containing each of detailHas.
func wantError(t testing.TB, m rpcMsg, code int, detailHas ...string) {
	t.Helper()
	if m.Error == nil {
		t.Fatalf("want error %d, got success: %s", code, m.raw)
	}
	if _, has := m.members["result"]; has {
		t.Errorf("error response also has a result: %s", m.raw)
	}
	e := m.Error
	if e.Code != code {
		t.Fatalf("error code %d (%q, %v), want %d", e.Code, e.Message, e.Data, code)
	}
	if e.Message != documentedMessages[code] {
		t.Errorf("error %d message %q, want %q", code, e.Message, documentedMessages[code])
	}
	str := func(k string) string { s, _ := e.Data[k].(string); return s }
	for _, k := range []string{"name", "cause", "solution"} {
		if strings.TrimSpace(str(k)) == "" {
			t.Errorf("error %d: data.%s is empty: %s", code, k, m.raw)
		}
	}
	if seed, has := seedText[code]; has {
		unmark := func(s string) string { return strings.ReplaceAll(s, "**", "") }
		if unmark(str("name")) != seed.name {
			t.Errorf("error %d: data.name %q, want OpenHarmony's %q", code, str("name"), seed.name)
		}
		if unmark(str("cause")) != seed.cause {
			t.Errorf("error %d: data.cause %q, want OpenHarmony's %q", code, str("cause"), seed.cause)
		}
		if unmark(str("solution")) != seed.solution {
			t.Errorf("error %d: data.solution %q, want OpenHarmony's %q", code, str("solution"), seed.solution)
		}
	}
	if strings.TrimSpace(str("detail")) == "" {
		t.Errorf("error %d: data.detail is missing or empty: %s", code, m.raw)
	}
	for _, s := range detailHas {
		if !strings.Contains(str("detail"), s) {
			t.Errorf("error %d: data.detail %q does not mention %q", code, str("detail"), s)
		}
	}
}

// ---------------------------------------------------------------------------
// Direct connections (root, in the test process) for wire-level tests

// rawConn connects to vpnd from the test process (uid 0).
func (d *daemon) rawConn(t testing.TB) *wire.Conn {
	t.Helper()
	c, err := wire.Dial(d.sock)
	if err != nil {
		t.Fatalf("dial %s: %v", d.sock, err)
	}
	tv := unix.NsecToTimeval(hangGuard.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(c.FD(), unix.SOL_SOCKET, opt, &tv); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func writeLine(t testing.TB, c *wire.Conn, line string, fds ...int) {
	t.Helper()
	if err := c.Send([]byte(line+"\n"), fds...); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// readMsg reads the next message; ok is false when vpnd closed the
// connection.
func readMsg(t testing.TB, c *wire.Conn) (rpcMsg, bool) {
	t.Helper()
	line, err := c.ReadLine()
	if err == io.EOF {
		return rpcMsg{}, false
	}
	if err != nil {
		t.Fatalf("read from vpnd: %v", err)
	}
	m := decodeMsg(t, string(line))
	fds, err := c.TakeFDs(m.FDs)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		info, _ := wire.Describe(fd)
		m.fdInfo = append(m.fdInfo, info)
		unix.Close(fd)
	}
	return m, true
}

// mustRead reads the next message and fails on EOF.
func mustRead(t testing.TB, c *wire.Conn) rpcMsg {
	t.Helper()
	m, ok := readMsg(t, c)
	if !ok {
		t.Fatalf("vpnd closed the connection")
	}
	return m
}

// ---------------------------------------------------------------------------
// Small helpers

// parallelClients starts n rawclients concurrently.
func parallelClients(t testing.TB, d *daemon, uids []uint32) []*client {
	t.Helper()
	bin(t, "rawclient") // fails here, on the test's goroutine, if it did not build
	cs := make([]*client, len(uids))
	errs := make([]error, len(uids))
	var wg sync.WaitGroup
	for i, uid := range uids {
		wg.Add(1)
		go func() {
			// Not d.dial: only the test's goroutine may fail the test.
			defer wg.Done()
			cs[i], errs[i] = dialSocketErr(t, d.sock, uid)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("client %d (uid %d) did not start: %v", i, uids[i], err)
		}
	}
	return cs
}

// status calls status as c and decodes it.
func (c *client) status() statusResult {
	c.t.Helper()
	var s statusResult
	res := ok(c.t, c.call("status", "{}", ""))
	if err := json.Unmarshal(res, &s); err != nil {
		c.t.Fatalf("status result: %v: %s", err, res)
	}
	return s
}
