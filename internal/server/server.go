// Package server is vpnd's connection loop: it accepts clients on the Unix
// socket, learns who they are from SO_PEERCRED, decodes JSON-RPC requests,
// hands them to the manager and writes the answers, with the TUN fd where
// one goes back.
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
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

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
	DefaultWriteTimeout = 5 * time.Second
	// eventQueue is how many notifications may wait for a slow subscriber
	// before vpnd gives up on it and closes its connection.
	eventQueue = 64
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
	// MaxConnsPerUser is the most connections one uid may hold at once,
	// ADMIN accounts excepted; 0 means no per-user limit.
	MaxConnsPerUser int
	// WriteTimeout bounds each write to a client. A client that does not
	// read its responses is disconnected after it, so it cannot wedge vpnd.
	WriteTimeout time.Duration
	// Lookup resolves a peer uid/gid to an identity; nil means
	// auth.LookupIdentity. An error refuses the call with 19900002 rather
	// than decide on a partial identity (a guest by group would pass).
	Lookup func(uid, gid uint32) (auth.Identity, error)
	// Observer is told about each request (metrics); nil observes nothing.
	Observer Observer
}

// Server serves vpnd's socket.
type Server struct {
	cfg    Config
	log    *zap.Logger
	nextID atomic.Uint64

	mu       sync.Mutex
	sessions map[uint64]*session
	perUID   map[uint32]int // open sessions per peer uid
	closed   bool
	wg       sync.WaitGroup
}

// New returns a Server; call Serve to run it.
func New(cfg Config) *Server {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.Lookup == nil {
		cfg.Lookup = auth.LookupIdentity
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	return &Server{cfg: cfg, log: cfg.Log, sessions: make(map[uint64]*session), perUID: make(map[uint32]int)}
}

// Serve accepts connections until ln is closed, then returns nil.
func (s *Server) Serve(ln *net.UnixListener) error {
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
			// EMFILE and friends: back off instead of spinning.
			s.log.Warn("accept failed", zap.Error(err))
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.admit(uc)
	}
}

// admit starts a session for uc, or refuses it with one error line when
// vpnd is closing or at a connection limit.
func (s *Server) admit(uc *net.UnixConn) {
	c := rpc.NewConn(uc)
	cred, err := c.PeerCred()
	if err != nil {
		s.log.Warn("peer credentials unavailable", zap.Error(err))
		c.Close()
		return
	}
	s.mu.Lock()
	if detail := s.refusalLocked(cred.Uid, cred.Gid); detail != "" {
		s.mu.Unlock()
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		writeResponse(c, json.RawMessage("null"), nil, errs.New(errs.CodeInternal, "%s", detail), nil)
		c.Close()
		return
	}
	ss := &session{
		s:   s,
		c:   c,
		id:  s.nextID.Add(1),
		uid: cred.Uid,
		gid: cred.Gid,
		pid: cred.Pid,
	}
	ss.log = s.log.With(zap.Uint64("conn", ss.id), zap.Uint32("uid", ss.uid), zap.Int32("pid", ss.pid))
	s.sessions[ss.id] = ss
	s.perUID[ss.uid]++
	s.wg.Add(1)
	s.mu.Unlock()
	go ss.run()
}

// refusalLocked says why a new connection from uid may not be served, or
// "" if it may. The per-user limit keeps one local user from taking every
// slot (and so locking out the others, root included); ADMIN accounts are
// exempt from it. s.mu must be held.
func (s *Server) refusalLocked(uid, gid uint32) string {
	switch {
	case s.closed:
		return "vpnd is shutting down"
	case len(s.sessions) >= s.cfg.MaxConns:
		s.log.Warn("connection refused", zap.Int("connections", len(s.sessions)), zap.Int("limit", s.cfg.MaxConns))
		return "too many connections: the limit is " + strconv.Itoa(s.cfg.MaxConns)
	case s.cfg.MaxConnsPerUser > 0 && s.perUID[uid] >= s.cfg.MaxConnsPerUser:
		if id, err := s.cfg.Lookup(uid, gid); err == nil && s.cfg.Policy.Load().TypeOf(id) == auth.Admin {
			return ""
		}
		s.log.Warn("connection refused", zap.Uint32("uid", uid), zap.Int("user_connections", s.perUID[uid]),
			zap.Int("user_limit", s.cfg.MaxConnsPerUser))
		return fmt.Sprintf("too many connections from uid %d: the per-user limit is %d", uid, s.cfg.MaxConnsPerUser)
	}
	return ""
}

// Close disconnects every client and waits for their sessions to end. The
// caller closes the listener first so that no new session starts.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	sessions := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		// Flush queued notifications (the "shutdown" event) first.
		ss.unsubscribe()
		ss.c.Close()
	}
	s.wg.Wait()
}

// Conns reports how many clients are connected.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// session is one client connection.
type session struct {
	s   *Server
	c   *rpc.Conn
	id  uint64
	uid uint32
	gid uint32
	pid int32
	log *zap.Logger

	subMu       sync.Mutex
	events      chan protocol.StateChanged
	cancelSub   func()
	startWriter bool // subscribed in this call: start writeEvents after the reply
	writerWG    sync.WaitGroup
}

func (ss *session) run() {
	defer ss.s.wg.Done()
	defer func() {
		ss.unsubscribe()
		ss.c.Close()
		ss.s.cfg.Manager.ConnClosed(ss.id)
		ss.s.mu.Lock()
		delete(ss.s.sessions, ss.id)
		if ss.s.perUID[ss.uid]--; ss.s.perUID[ss.uid] == 0 {
			delete(ss.s.perUID, ss.uid)
		}
		ss.s.mu.Unlock()
		ss.log.Debug("connection closed")
	}()
	ss.log.Debug("connection accepted")
	for {
		msg, err := ss.c.ReadMessage()
		if err != nil {
			if errors.Is(err, rpc.ErrTooLong) {
				ss.log.Warn("message too long, closing", zap.Int("limit", protocol.MaxMessage))
				ss.reply(json.RawMessage("null"), nil, errs.New(errs.CodeParse, "message longer than %d bytes", protocol.MaxMessage), nil)
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				ss.log.Warn("connection failed", zap.Error(err))
			}
			return
		}
		ss.handle(msg)
	}
}

// reply writes one response; a failed write closes the connection, since
// the client is gone or not reading.
func (ss *session) reply(id json.RawMessage, result any, err error, f *os.File) bool {
	ss.c.SetWriteDeadline(time.Now().Add(ss.s.cfg.WriteTimeout))
	if werr := writeResponse(ss.c, id, result, err, f); werr != nil {
		ss.log.Warn("write failed, closing", zap.Error(werr))
		ss.c.Close()
		return false
	}
	return true
}

func writeResponse(c *rpc.Conn, id json.RawMessage, result any, err error, f *os.File) error {
	resp := protocol.Response{JSONRPC: protocol.Version, ID: id}
	if err != nil {
		resp.Error = protocol.NewErrorObject(err)
	} else {
		b, merr := json.Marshal(result)
		if merr != nil {
			return merr
		}
		resp.Result = b
	}
	var files []*os.File
	if f != nil {
		resp.FDs = 1
		files = append(files, f)
	}
	line, merr := json.Marshal(resp)
	if merr != nil {
		return merr
	}
	return c.WriteMessage(line, files...)
}

// request is a decoded JSON-RPC envelope.
type request struct {
	id       json.RawMessage // nil: a notification
	method   string
	params   json.RawMessage
	notifies bool
}

// decode checks the envelope of §2. env holds the line's top-level
// members if the caller has them already (rpc decodes them to find "fds"),
// or is nil. Its error is the JSON-RPC error to answer; id is what to
// answer it with.
func decode(line []byte, env map[string]json.RawMessage) (request, error) {
	var req request
	if !utf8.Valid(line) {
		return req, errs.New(errs.CodeParse, "message is not valid UTF-8")
	}
	if env == nil {
		if !json.Valid(line) {
			return req, errs.New(errs.CodeParse, "message is not valid JSON")
		}
		if err := json.Unmarshal(line, &env); err != nil || env == nil {
			return req, errs.New(errs.CodeInvalidRequest, "message is not a JSON object")
		}
	}
	if id, ok := env["id"]; ok {
		switch {
		case bytes.Equal(id, []byte("null")), id[0] == '"', id[0] == '-' || (id[0] >= '0' && id[0] <= '9'):
			req.id = id
		default:
			return req, errs.New(errs.CodeInvalidRequest, "id: must be a string, a number or null")
		}
	} else {
		req.notifies = true
	}
	var version string
	if err := json.Unmarshal(env["jsonrpc"], &version); err != nil || version != protocol.Version {
		return req, errs.New(errs.CodeInvalidRequest, `jsonrpc: must be "2.0"`)
	}
	if err := json.Unmarshal(env["method"], &req.method); err != nil || req.method == "" {
		return req, errs.New(errs.CodeInvalidRequest, "method: must be a non-empty string")
	}
	req.params = env["params"]
	return req, nil
}

func (ss *session) handle(msg rpc.Message) {
	defer closeFiles(msg.Files)
	start := time.Now()
	req, err := decode(msg.Line, msg.Members)
	if err == nil && msg.FDErr != nil {
		err = errs.New(errs.CodeInvalidRequest, "fds: %v", msg.FDErr)
	}
	if err != nil {
		id := req.id
		if id == nil {
			id = json.RawMessage("null")
		}
		ss.log.Debug("bad request", zap.Error(err))
		ss.s.cfg.Observer.Request(req.method, int(errs.CodeOf(err)), time.Since(start))
		ss.reply(id, nil, err, nil)
		return
	}
	if req.notifies && (req.method == protocol.MethodSetUp || req.method == protocol.MethodCreate) {
		// A setUp nobody can receive the TUN fd of would only make a VPN
		// that dies at once; ignore it, as JSON-RPC lets a server do.
		ss.log.Info("setUp sent as a notification, ignored")
		return
	}
	result, f, vpnID, err := ss.call(req, msg.Files)
	code := 0
	if err != nil {
		code = int(errs.CodeOf(err))
	}
	ss.log.Debug("call", zap.String("method", req.method), zap.Int("code", code), zap.Error(err))
	ss.s.cfg.Observer.Request(req.method, code, time.Since(start))
	ok := true
	if !req.notifies {
		ok = ss.reply(req.id, result, err, f)
	}
	ss.subMu.Lock()
	if ss.startWriter {
		ss.startWriter = false
		go ss.writeEvents(ss.events)
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
		return m.Status(), nil, 0, nil
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

// subscribe registers this client for vpnStateChanged. Events queue from
// now on; handle starts the writer once the subscribe response is out, so
// that the response always comes before the first notification.
func (ss *session) subscribe() {
	ss.subMu.Lock()
	defer ss.subMu.Unlock()
	if ss.events != nil {
		return // already subscribed; subscribing twice is harmless
	}
	ss.events = make(chan protocol.StateChanged, eventQueue)
	events := ss.events
	ss.cancelSub = ss.s.cfg.Manager.Subscribe(func(ev protocol.StateChanged) {
		select {
		case events <- ev:
		default:
			ss.log.Warn("subscriber too slow, closing", zap.Int("queued", eventQueue))
			ss.c.Close()
		}
	})
	ss.writerWG.Add(1)
	ss.startWriter = true
}

func (ss *session) writeEvents(events <-chan protocol.StateChanged) {
	defer ss.writerWG.Done()
	for ev := range events {
		params, _ := json.Marshal(ev)
		line, _ := json.Marshal(protocol.Response{JSONRPC: protocol.Version, Method: protocol.MethodStateChanged, Params: params})
		ss.c.SetWriteDeadline(time.Now().Add(ss.s.cfg.WriteTimeout))
		if err := ss.c.WriteMessage(line); err != nil {
			ss.c.Close()
			for range events {
			}
			return
		}
	}
}

func (ss *session) unsubscribe() {
	ss.subMu.Lock()
	defer ss.subMu.Unlock()
	if ss.events == nil {
		return
	}
	ss.cancelSub()
	close(ss.events)
	ss.events = nil
	if ss.startWriter {
		// Subscribed, but the writer never started: nothing will drain.
		ss.startWriter = false
		ss.writerWG.Done()
	}
	ss.writerWG.Wait()
}

// emptyParams accepts absent params, null, or an empty object.
func emptyParams(p json.RawMessage) error {
	if len(p) == 0 || bytes.Equal(p, []byte("null")) {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(p, &m); err != nil {
		return errs.New(errs.CodeInvalidParam, "params: expected object")
	}
	for k := range m {
		return errs.New(errs.CodeInvalidParam, "params.%s: unknown member", k)
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
