// Package server is vpnd's connection loop: it accepts clients on the Unix
// socket, learns who they are from SO_PEERCRED, decodes JSON-RPC requests,
// hands them to the manager and writes the answers, with the TUN fd where
// one goes back.
//
// Any local user may connect, so the server bounds what a client can make
// vpnd hold: connections (globally and per uid, with a reserve for ADMIN
// callers), request bytes read and not yet answered (a budget shared by
// all connections, with a share per uid), the time a request line may
// take, the time a write may block, and the notifications queued for a
// subscriber.
package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/auth"
	"github.com/vpnd/vpnd/internal/config"
	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/rpc"
	"github.com/vpnd/vpnd/protocol"
)

// Defaults for Config.
const (
	DefaultMaxConns     = 1024
	DefaultMaxPerUser   = 64
	DefaultAdminReserve = 16
	DefaultWriteTimeout = 5 * time.Second
	DefaultLineTimeout  = 10 * time.Second
	// DefaultRequestBudget bounds the request bytes held across all
	// connections; one uid may hold a quarter of it.
	DefaultRequestBudget   = 32 << 20
	DefaultShutdownTimeout = 3 * time.Second
	// eventQueue is how many notifications may wait for a slow subscriber
	// before vpnd gives up on it and closes its connection.
	eventQueue = 64
	// eventBytes bounds the bytes of the notifications queued for one
	// subscriber, as eventQueue bounds their number. The largest
	// notification (10,000 IPv6 routes, 2,000 addresses) is under 1 MiB.
	eventBytes = 4 << 20
)

// globalReapEvery is how often at most vpnd looks for gone peers among
// all connections, when it is at the global connection limit.
const globalReapEvery = 100 * time.Millisecond

// Accept backoff: after a failed accept (EMFILE: vpnd is out of
// descriptors) vpnd waits before trying again, doubling the wait up to a
// second, so that it neither spins nor floods the log.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// Config wires a Server.
type Config struct {
	Manager *manager.Manager
	Policy  *auth.Holder
	Users   config.UserResolver
	Log     *zap.Logger
	// MaxConns is the most connections served at once; one more gets a
	// 19900002 error line and is closed. 0 means DefaultMaxConns.
	MaxConns int
	// AdminReserve is how many connections ADMIN callers may hold beyond
	// MaxConns, so that users who fill every slot cannot lock root out.
	// 0 means DefaultAdminReserve; negative means none.
	AdminReserve int
	// MaxConnsPerUser is the most connections one uid may hold at once,
	// ADMIN accounts excepted; 0 means no per-user limit.
	MaxConnsPerUser int
	// WriteTimeout bounds each write to a client. A client that does not
	// read its responses is disconnected after it, so it cannot wedge vpnd.
	WriteTimeout time.Duration
	// LineTimeout is how long a request line may take to arrive once its
	// first byte did; then the connection is closed. 0 means
	// DefaultLineTimeout.
	LineTimeout time.Duration
	// RequestBudget bounds the request bytes vpnd holds across all
	// connections (read and not yet answered). Beyond it reads wait, and
	// the senders block; one uid may hold a quarter of it (at least one
	// largest message). 0 means DefaultRequestBudget.
	RequestBudget int64
	// ShutdownTimeout bounds Close: what is not flushed by then is cut
	// off. 0 means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Lookup resolves a peer uid/gid to an identity; nil means a cache in
	// front of auth.LookupIdentity. An error refuses the call with
	// 19900002 rather than decide on a partial identity (a guest by group
	// would pass).
	Lookup func(uid, gid uint32) (auth.Identity, error)
	// Observer is told about each request (metrics); nil observes nothing.
	Observer Observer
}

// Server serves vpnd's socket.
type Server struct {
	cfg          Config
	log          *zap.Logger
	budget       *rpc.Budget
	nextID       atomic.Uint64
	cancelEvents func()
	shutdownBy   atomic.Int64        // UnixNano; 0 until Close
	sleep        func(time.Duration) // for tests

	mu           sync.Mutex
	sessions     map[uint64]*session
	live         int            // sessions counted against the limits
	perUID       map[uint32]int // counted sessions per peer uid
	closed       bool
	wg           sync.WaitGroup
	globalReapAt time.Time // the last look for gone peers at the global limit

	subMu sync.Mutex
	subs  map[*session]*subscriber
}

// New returns a Server; call Serve to run it.
func New(cfg Config) *Server {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	switch {
	case cfg.AdminReserve == 0:
		cfg.AdminReserve = DefaultAdminReserve
	case cfg.AdminReserve < 0:
		cfg.AdminReserve = 0
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.LineTimeout <= 0 {
		cfg.LineTimeout = DefaultLineTimeout
	}
	if cfg.RequestBudget <= 0 {
		cfg.RequestBudget = DefaultRequestBudget
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Lookup == nil {
		cfg.Lookup = auth.NewIdentityCache().Lookup
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Log,
		budget:   rpc.NewBudget(cfg.RequestBudget, cfg.RequestBudget/4),
		sleep:    time.Sleep,
		sessions: make(map[uint64]*session),
		perUID:   make(map[uint32]int),
		subs:     make(map[*session]*subscriber),
	}
	if cfg.Manager != nil {
		s.cancelEvents = cfg.Manager.Subscribe(s.broadcast)
	}
	return s
}

// acceptor is what Serve needs of a listener.
type acceptor interface {
	AcceptUnix() (*net.UnixConn, error)
}

// Serve accepts connections until ln is closed, then returns nil.
func (s *Server) Serve(ln *net.UnixListener) error { return s.serve(ln) }

func (s *Server) serve(ln acceptor) error {
	failures := 0
	var failingSince time.Time
	backoff := time.Duration(0)
	for {
		uc, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and friends: back off instead of spinning, and say
			// so once, not at every attempt.
			if failures == 0 {
				failingSince = time.Now()
				backoff = minAcceptBackoff
				s.log.Warn("accept failing, backing off", zap.Error(err), zap.Duration("max_backoff", maxAcceptBackoff))
			} else {
				backoff = min(2*backoff, maxAcceptBackoff)
			}
			failures++
			s.sleep(backoff)
			continue
		}
		if failures > 0 {
			s.log.Info("accept recovered", zap.Int("failures", failures), zap.Duration("after", time.Since(failingSince)))
			failures = 0
		}
		s.admit(uc)
	}
}

// refusal says why a connection is not admitted.
type refusal int

const (
	admitted refusal = iota
	shuttingDown
	overGlobal
	overUser
)

// admit starts a session for uc, or refuses it with one error line when
// vpnd is closing or at a connection limit. Only at a limit does it look
// further: it first stops counting connections whose peers have gone,
// then asks whether the caller is ADMIN (the user database lookup runs
// without s.mu held).
func (s *Server) admit(uc *net.UnixConn) {
	c := rpc.NewConn(uc)
	cred, err := c.PeerCred()
	if err != nil {
		s.log.Warn("peer credentials unavailable", zap.Error(err))
		c.Close()
		return
	}
	admin, probed, looked := false, false, false
	for {
		s.mu.Lock()
		why := s.refusalLocked(cred.Uid, admin)
		if why == admitted {
			ss := s.addLocked(c, cred)
			s.mu.Unlock()
			ss.log(zap.DebugLevel, "connection accepted")
			go ss.run()
			return
		}
		s.mu.Unlock()
		switch {
		case why == shuttingDown:
		case !probed:
			probed = true
			s.reapGone(why, cred.Uid)
			continue
		case !looked:
			looked = true
			if id, err := s.cfg.Lookup(cred.Uid, cred.Gid); err == nil && s.cfg.Policy.Load().TypeOf(id) == auth.Admin {
				admin = true
				continue
			}
		}
		s.refuse(c, why, cred.Uid)
		return
	}
}

// refusalLocked checks the limits for a new connection of uid. An ADMIN
// caller is exempt from the per-user limit and may exceed MaxConns by
// AdminReserve. s.mu must be held.
func (s *Server) refusalLocked(uid uint32, admin bool) refusal {
	limit := s.cfg.MaxConns
	if admin {
		limit += s.cfg.AdminReserve
	}
	switch {
	case s.closed:
		return shuttingDown
	case s.live >= limit:
		return overGlobal
	case !admin && s.cfg.MaxConnsPerUser > 0 && s.perUID[uid] >= s.cfg.MaxConnsPerUser:
		return overUser
	}
	return admitted
}

// refuse writes the documented error line (id null) and closes c.
func (s *Server) refuse(c *rpc.Conn, why refusal, uid uint32) {
	var detail string
	s.mu.Lock()
	live, mine := s.live, s.perUID[uid]
	s.mu.Unlock()
	switch why {
	case shuttingDown:
		detail = "vpnd is shutting down"
	case overGlobal:
		s.log.Warn("connection refused", zap.Uint32("uid", uid), zap.Int("connections", live), zap.Int("limit", s.cfg.MaxConns))
		detail = "too many connections: the limit is " + strconv.Itoa(s.cfg.MaxConns)
	case overUser:
		s.log.Warn("connection refused", zap.Uint32("uid", uid), zap.Int("user_connections", mine),
			zap.Int("user_limit", s.cfg.MaxConnsPerUser))
		detail = fmt.Sprintf("too many connections from uid %d: the per-user limit is %d", uid, s.cfg.MaxConnsPerUser)
	}
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	writeResponse(c, json.RawMessage("null"), nil, errs.New(errs.CodeInternal, "%s", detail), nil)
	c.Close()
}

// reapGone stops counting the connections whose peers have closed them
// but whose sessions have not noticed yet (they are busy, or waiting for
// a turn to read): only connections really open count against a limit.
// It looks at uid's connections for the per-user limit, at all for the
// global one. Their reading side is shut down, so that they end as soon
// as they have answered what they already read.
func (s *Server) reapGone(why refusal, uid uint32) {
	s.mu.Lock()
	if why == overGlobal {
		// Looking at every connection takes a poll each: at most every
		// globalReapEvery, however fast refused clients come.
		now := time.Now()
		if now.Sub(s.globalReapAt) < globalReapEvery {
			s.mu.Unlock()
			return
		}
		s.globalReapAt = now
	}
	var candidates []*session
	for _, ss := range s.sessions {
		if !ss.uncounted && (why == overGlobal || ss.uid == uid) {
			candidates = append(candidates, ss)
		}
	}
	s.mu.Unlock()
	var gone []*session
	for _, ss := range candidates {
		if ss.c.PeerGone() {
			gone = append(gone, ss)
		}
	}
	if len(gone) == 0 {
		return
	}
	s.mu.Lock()
	for _, ss := range gone {
		s.uncountLocked(ss)
	}
	s.mu.Unlock()
	for _, ss := range gone {
		ss.c.CloseRead()
	}
	s.log.Debug("closed connections no longer counted", zap.Int("connections", len(gone)))
}

func (s *Server) addLocked(c *rpc.Conn, cred *unix.Ucred) *session {
	ss := &session{
		s:   s,
		c:   c,
		id:  s.nextID.Add(1),
		uid: cred.Uid,
		gid: cred.Gid,
		pid: cred.Pid,
	}
	c.SetReadLimits(rpc.ReadLimits{LineTimeout: s.cfg.LineTimeout, Budget: s.budget, Key: ss.uid})
	s.sessions[ss.id] = ss
	s.live++
	s.perUID[ss.uid]++
	s.wg.Add(1)
	return ss
}

// uncountLocked takes ss out of the connection counts, once.
func (s *Server) uncountLocked(ss *session) {
	if ss.uncounted {
		return
	}
	ss.uncounted = true
	s.live--
	if s.perUID[ss.uid]--; s.perUID[ss.uid] <= 0 {
		delete(s.perUID, ss.uid)
	}
}

// Close disconnects every client and waits, at most ShutdownTimeout and a
// second, for their sessions to end. It first lets every session finish
// what it is doing and flush its queued notifications (the "shutdown"
// event) all at once, then cuts off those still busy. The caller closes
// the listener first so that no new session starts.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	sessions := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	if s.cancelEvents != nil {
		s.cancelEvents()
	}
	deadline := time.Now().Add(s.cfg.ShutdownTimeout)
	s.shutdownBy.Store(deadline.UnixNano())
	for _, ss := range sessions {
		ss.endSubscription()
		ss.c.CloseRead()
	}
	if waitUntil(&s.wg, deadline) {
		return
	}
	s.log.Warn("clients still busy at shutdown, closing them", zap.Int("connections", s.Conns()))
	for _, ss := range sessions {
		ss.c.Close()
	}
	if !waitUntil(&s.wg, time.Now().Add(time.Second)) {
		s.log.Error("sessions did not end at shutdown", zap.Int("connections", s.Conns()))
	}
}

// waitUntil waits for wg until deadline and reports whether it is done.
func waitUntil(wg *sync.WaitGroup, deadline time.Time) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// writeDeadline is when a write starting now must be done: WriteTimeout
// from now, and no later than the shutdown deadline.
func (s *Server) writeDeadline() time.Time {
	d := time.Now().Add(s.cfg.WriteTimeout)
	if by := s.shutdownBy.Load(); by != 0 && by < d.UnixNano() {
		d = time.Unix(0, by)
	}
	return d
}

// Conns reports how many clients are connected.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// session is one client connection. Its logger fields are built only
// when it logs.
type session struct {
	s   *Server
	c   *rpc.Conn
	id  uint64
	uid uint32
	gid uint32
	pid int32

	uncounted bool // out of the connection counts (guarded by s.mu)

	subMu       sync.Mutex
	sub         *subscriber
	startWriter bool // subscribed in this call: start writeEvents after the reply
	writerWG    sync.WaitGroup
}

// subscriber is a session's queue of encoded notifications. The frames
// are shared by every subscriber; queued counts this one's bytes.
type subscriber struct {
	frames  chan []byte
	queued  atomic.Int64
	dropped bool // guarded by s.subMu
}

// log logs msg at level with the session's fields, building them only if
// the level is enabled.
func (ss *session) log(level zapcore.Level, msg string, fields ...zap.Field) {
	if ce := ss.s.log.Check(level, msg); ce != nil {
		ce.Write(append([]zap.Field{zap.Uint64("conn", ss.id), zap.Uint32("uid", ss.uid), zap.Int32("pid", ss.pid)}, fields...)...)
	}
}

// run serves the connection until it ends.
func (ss *session) run() {
	defer ss.end()
	for {
		// Waiting for the next request before reading it keeps an idle
		// connection without a read buffer, and its goroutine's stack at
		// 2 kB: 8.3 KB of vpnd's resident memory per idle connection in
		// vpnbench, against a goal of 10 KB; 12.0 KB when each waited in
		// ReadMessage, with a 1 KiB buffer and a 4 kB stack.
		if ss.c.Wait() != nil {
			return
		}
		msg, err := ss.c.ReadMessage()
		if err != nil {
			ss.readFailed(err)
			return
		}
		ss.handle(msg)
	}
}

// end releases the connection and everything it holds.
func (ss *session) end() {
	ss.unsubscribe()
	ss.c.Close()
	ss.s.cfg.Manager.ConnClosed(ss.id)
	ss.s.mu.Lock()
	ss.s.uncountLocked(ss)
	delete(ss.s.sessions, ss.id)
	ss.s.mu.Unlock()
	ss.log(zap.DebugLevel, "connection closed")
	ss.s.wg.Done()
}

// readFailed says why the connection ends, to the client if it is owed
// an answer, and to the log if it is out of the ordinary.
func (ss *session) readFailed(err error) {
	switch {
	case errors.Is(err, rpc.ErrTooLong):
		ss.log(zap.WarnLevel, "message too long, closing", zap.Int("limit", protocol.MaxMessage))
		ss.reply(json.RawMessage("null"), nil, errs.New(errs.CodeParse, "message longer than %d bytes", protocol.MaxMessage), nil)
	case errors.Is(err, rpc.ErrLineTimeout):
		ss.log(zap.WarnLevel, "request line timed out, closing", zap.Duration("limit", ss.s.cfg.LineTimeout))
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	default:
		ss.log(zap.WarnLevel, "connection failed", zap.Error(err))
	}
}

// reply writes one response; a failed write closes the connection, since
// the client is gone or not reading.
func (ss *session) reply(id json.RawMessage, result any, err error, f *os.File) bool {
	ss.c.SetWriteDeadline(ss.s.writeDeadline())
	if werr := writeResponse(ss.c, id, result, err, f); werr != nil {
		ss.log(zap.WarnLevel, "write failed, closing", zap.Error(werr))
		ss.c.Close()
		return false
	}
	return true
}

// writeResponse encodes and sends one response. It builds the line by
// hand around the request's raw id, so that a large id is copied once,
// not three times as json.Marshal of a protocol.Response would.
func writeResponse(c *rpc.Conn, id json.RawMessage, result any, err error, f *os.File) error {
	var body []byte
	var merr error
	if raw, ok := result.(json.RawMessage); ok && err == nil {
		body = raw // encoded already, and valid: vpnd made it
	} else if err != nil {
		body, merr = json.Marshal(protocol.NewErrorObject(err))
	} else {
		body, merr = json.Marshal(result)
	}
	if merr != nil {
		return merr
	}
	b := make([]byte, 0, len(id)+len(body)+64)
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	if err != nil {
		b = append(b, `,"error":`...)
	} else {
		b = append(b, `,"result":`...)
	}
	b = append(b, body...)
	var files []*os.File
	if f != nil {
		b = append(b, `,"fds":1`...)
		files = append(files, f)
	}
	b = append(b, "}\n"...)
	return c.WriteFrame(b, files...)
}

// request is a decoded JSON-RPC envelope.
type request struct {
	id       json.RawMessage // nil: a notification
	method   string
	params   json.RawMessage
	notifies bool
}

// decode checks the JSON-RPC envelope (docs/protocol.md). env holds the line's envelope if the
// caller has it already (rpc finds it to read "fds"), or is nil. Its
// error is the JSON-RPC error to answer; id is what to answer it with.
func decode(line []byte, env *rpc.Envelope) (request, error) {
	var req request
	if !utf8.Valid(line) {
		return req, errs.New(errs.CodeParse, "message is not valid UTF-8")
	}
	if env == nil {
		e := rpc.ParseEnvelope(line)
		env = &e
	}
	if !env.JSON {
		return req, errs.New(errs.CodeParse, "message is not valid JSON")
	}
	if !env.Object {
		return req, errs.New(errs.CodeInvalidRequest, "message is not a JSON object")
	}
	if id := env.ID; id != nil {
		switch {
		case bytes.Equal(id, []byte("null")), id[0] == '"', id[0] == '-' || (id[0] >= '0' && id[0] <= '9'):
			req.id = id
		default:
			return req, errs.New(errs.CodeInvalidRequest, "id: must be a string, a number or null")
		}
	} else {
		req.notifies = true
	}
	if version, ok := jsonString(env.JSONRPC); !ok || version != protocol.Version {
		return req, errs.New(errs.CodeInvalidRequest, `jsonrpc: must be "2.0"`)
	}
	method, ok := jsonString(env.Method)
	if !ok || method == "" {
		return req, errs.New(errs.CodeInvalidRequest, "method: must be a non-empty string")
	}
	req.method = method
	req.params = env.Params
	return req, nil
}

// jsonString decodes raw, a valid JSON value of a valid UTF-8 line, if
// it is a string. jsontext unquotes as encoding/json does, an invalid
// surrogate escape becoming U+FFFD; the error it reports for one is the
// only one possible here, and is ignored, as encoding/json ignores it.
func jsonString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	s, _ := jsontext.AppendUnquote(nil, raw)
	return string(s), true
}

func (ss *session) handle(msg rpc.Message) {
	defer closeFiles(msg.Files)
	start := time.Now()
	req, err := decode(msg.Line, &msg.Envelope)
	if err == nil && msg.FDErr != nil {
		err = errs.New(errs.CodeInvalidRequest, "fds: %v", msg.FDErr)
	}
	if err != nil {
		id := req.id
		if id == nil {
			id = json.RawMessage("null")
		}
		ss.log(zap.DebugLevel, "bad request", zap.Error(err))
		ss.s.cfg.Observer.Request(req.method, int(errs.CodeOf(err)), time.Since(start))
		ss.reply(id, nil, err, nil)
		return
	}
	if req.notifies && (req.method == protocol.MethodSetUp || req.method == protocol.MethodCreate) {
		// A setUp nobody can receive the TUN fd of would only make a VPN
		// that dies at once; ignore it, as JSON-RPC lets a server do.
		ss.log(zap.InfoLevel, "setUp sent as a notification, ignored")
		return
	}
	result, f, vpnID, err := ss.call(req, msg.Files)
	code := 0
	if err != nil {
		code = int(errs.CodeOf(err))
	}
	if ss.s.log.Core().Enabled(zap.DebugLevel) {
		ss.log(zap.DebugLevel, "call", zap.String("method", req.method), zap.Int("code", code), zap.Error(err))
	}
	ss.s.cfg.Observer.Request(req.method, code, time.Since(start))
	ok := true
	if !req.notifies {
		ok = ss.reply(req.id, result, err, f)
	}
	ss.subMu.Lock()
	if ss.startWriter {
		ss.startWriter = false
		go ss.writeEvents(ss.sub)
	}
	ss.subMu.Unlock()
	if f != nil {
		// vpnd keeps no copy of the TUN fd: the link lives as long as the
		// client holds it.
		f.Close()
		if !ok {
			ss.s.cfg.Manager.Abort(vpnID)
		}
	}
}

// call runs one method. It returns the result, the TUN file for setUp
// (with the VPN's id, for Abort), or an error.
func (ss *session) call(req request, files []*os.File) (any, *os.File, uint64, error) {
	m := ss.s.cfg.Manager
	switch req.method {
	case protocol.MethodSetUp, protocol.MethodCreate:
		cfg, err := config.Parse(req.params, ss.s.cfg.Users)
		if err != nil {
			return nil, nil, 0, err
		}
		c, err := ss.caller()
		if err != nil {
			return nil, nil, 0, err
		}
		f, info, id, err := m.SetUp(c, cfg)
		if err != nil {
			return nil, nil, 0, err
		}
		return info, f, id, nil
	case protocol.MethodProtect:
		if err := emptyParams(req.params); err != nil {
			return nil, nil, 0, err
		}
		if len(files) != 1 {
			return nil, nil, 0, errs.New(errs.CodeInvalidFD, `protect takes exactly one descriptor ("fds": 1), got %d`, len(files))
		}
		c, err := ss.caller()
		if err != nil {
			return nil, nil, 0, err
		}
		ctlErr := controlFD(files[0], func(fd int) { err = m.Protect(c, fd) })
		if ctlErr != nil {
			return nil, nil, 0, errs.Wrap(errs.CodeInvalidFD, ctlErr, "descriptor")
		}
		return struct{}{}, nil, 0, err
	case protocol.MethodDestroy:
		if err := emptyParams(req.params); err != nil {
			return nil, nil, 0, err
		}
		c, err := ss.caller()
		if err != nil {
			return nil, nil, 0, err
		}
		return struct{}{}, nil, 0, m.Destroy(c)
	case protocol.MethodStatus:
		if err := emptyParams(req.params); err != nil {
			return nil, nil, 0, err
		}
		body, err := m.StatusJSON()
		if err != nil {
			return nil, nil, 0, errs.Wrap(errs.CodeInternal, err, "status")
		}
		return body, nil, 0, nil
	case protocol.MethodSetLockdown:
		l, err := config.ParseLockdown(req.params, ss.s.cfg.Users)
		if err != nil {
			return nil, nil, 0, err
		}
		c, err := ss.caller()
		if err != nil {
			return nil, nil, 0, err
		}
		return struct{}{}, nil, 0, m.SetLockdown(c, l)
	case protocol.MethodSubscribe:
		if err := emptyParams(req.params); err != nil {
			return nil, nil, 0, err
		}
		ss.subscribe()
		return struct{}{}, nil, 0, nil
	default:
		return nil, nil, 0, errs.New(errs.CodeMethodNotFound, "unknown method %.64q", req.method)
	}
}

// caller resolves the peer's account type now, so that a SIGHUP reload or
// a change of the user's groups applies to its next call.
func (ss *session) caller() (manager.Caller, error) {
	id, err := ss.s.cfg.Lookup(ss.uid, ss.gid)
	if err != nil {
		return manager.Caller{}, errs.Wrap(errs.CodeInternal, err, "user database")
	}
	policy := ss.s.cfg.Policy.Load()
	return manager.Caller{
		UID:          ss.uid,
		PID:          ss.pid,
		User:         id.User,
		Type:         policy.TypeOf(id),
		AddressPools: policy.AddressPools(),
		Conn:         ss.id,
	}, nil
}

// subscribe registers this client for vpnStateChanged. Notifications
// queue from now on; handle starts the writer once the subscribe response
// is out, so that the response always comes before the first one.
func (ss *session) subscribe() {
	ss.subMu.Lock()
	defer ss.subMu.Unlock()
	if ss.sub != nil {
		return // already subscribed; subscribing twice is harmless
	}
	ss.sub = &subscriber{frames: make(chan []byte, eventQueue)}
	ss.s.subMu.Lock()
	ss.s.subs[ss] = ss.sub
	ss.s.subMu.Unlock()
	ss.writerWG.Add(1)
	ss.startWriter = true
}

// broadcast hands a state change to every subscriber. It runs with the
// manager locked, so it only queues: the notification is encoded once and
// the same bytes go to every subscriber, whatever their number. A
// subscriber whose queue is full (eventQueue notifications or eventBytes
// bytes) is disconnected.
func (s *Server) broadcast(ev protocol.StateChanged) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if len(s.subs) == 0 {
		return
	}
	frame, err := notificationFrame(ev)
	if err != nil {
		s.log.Error("encode notification failed", zap.Error(err))
		return
	}
	n := int64(len(frame))
	for ss, sub := range s.subs {
		if sub.dropped {
			continue
		}
		if sub.queued.Load()+n <= eventBytes {
			select {
			case sub.frames <- frame:
				sub.queued.Add(n)
				continue
			default:
			}
		}
		sub.dropped = true
		ss.log(zap.WarnLevel, "subscriber too slow, closing", zap.Int("queued", len(sub.frames)), zap.Int64("queued_bytes", sub.queued.Load()))
		ss.c.Close()
	}
}

// notificationFrame encodes ev as a vpnStateChanged line, newline
// included.
func notificationFrame(ev protocol.StateChanged) ([]byte, error) {
	params, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	const head = `{"jsonrpc":"2.0","method":"` + protocol.MethodStateChanged + `","params":`
	b := make([]byte, 0, len(head)+len(params)+2)
	b = append(b, head...)
	b = append(b, params...)
	return append(b, "}\n"...), nil
}

func (ss *session) writeEvents(sub *subscriber) {
	defer ss.writerWG.Done()
	for frame := range sub.frames {
		sub.queued.Add(-int64(len(frame)))
		ss.c.SetWriteDeadline(ss.s.writeDeadline())
		if err := ss.c.WriteFrame(frame); err != nil {
			ss.c.Close()
			for frame := range sub.frames {
				sub.queued.Add(-int64(len(frame)))
			}
			return
		}
	}
}

// endSubscription stops queueing notifications for this client; the
// writer flushes what is queued and exits.
func (ss *session) endSubscription() {
	ss.subMu.Lock()
	defer ss.subMu.Unlock()
	if ss.sub == nil {
		return
	}
	ss.s.subMu.Lock()
	delete(ss.s.subs, ss)
	close(ss.sub.frames)
	ss.s.subMu.Unlock()
	ss.sub = nil
	if ss.startWriter {
		// Subscribed, but the writer never started: nothing will drain.
		ss.startWriter = false
		ss.writerWG.Done()
	}
}

// unsubscribe ends the subscription and waits for the writer to finish.
func (ss *session) unsubscribe() {
	ss.endSubscription()
	ss.writerWG.Wait()
}

// emptyParams accepts absent params, null, or an empty object. It builds
// nothing from p but its first member's name, whatever p holds: params of
// 340,000 members cost a scan.
func emptyParams(p json.RawMessage) error {
	if len(p) == 0 || bytes.Equal(p, []byte("null")) {
		return nil
	}
	if p[0] != '{' || !json.Valid(p) {
		return errs.New(errs.CodeInvalidParam, "params: expected object")
	}
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.Token() // the '{'
	tok, _ := dec.Token()
	if key, ok := tok.(string); ok {
		if len(key) > 64 {
			key = strings.ToValidUTF8(key[:64], "") + "..."
		}
		return errs.New(errs.CodeInvalidParam, "params.%s: unknown member", key)
	}
	return nil
}

// controlFD runs fn with f's descriptor without (*os.File).Fd, which
// would switch the file to blocking mode.
func controlFD(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
