// Package client is the public Go client of vpnd.
//
// A VPN app dials vpnd's socket, sets a VPN up and gets the TUN device as
// an *os.File, protects its tunnel socket so that the tunnel's own traffic
// bypasses the VPN, and destroys the VPN when done:
//
//	c, err := client.Dial(ctx, "")
//	tun, info, err := c.SetUp(ctx, protocol.VpnConfig{...})
//	err = c.Protect(ctx, udpConn)
//	...
//	err = c.Destroy(ctx)
//
// An ADMIN may also turn lockdown on or off with SetLockdown.
//
// The VPN belongs to the connection: if the Client is closed (or the
// process exits) vpnd tears the VPN down.
//
// Calls are safe for concurrent use and are pipelined on one connection.
// A failed call returns an *Error carrying vpnd's error code; compare it
// with errors.Is against the sentinels below. Transport failures (vpnd
// went away) are plain wrapped errors, never an *Error.
//
// One exception: when vpnd refuses a connection (it is at its connection
// limit, or at the caller's per-user limit, or shutting down), it writes
// one error line with a null id and closes. Dial cannot see this, as the
// refusal comes after the connection is made; the first call, every call
// after it, and Err return that *Error: code 19900002 (ErrInternal), with
// vpnd's detail, for example "too many connections from uid 1000: the
// per-user limit is 64".
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/internal/rpc"
	"github.com/vpnd/vpnd/protocol"
)

// Error is the error a failed call returns: Code is one of vpnd's error
// codes (docs/protocol.md, "Errors"), Detail says what exactly was wrong.
type Error = errs.Error

// Code is a numeric error code.
type Code = errs.Code

// Sentinels, one per error code of vpnd, for errors.Is. They are the
// same values the daemon uses, so errors.Is matches by code.
var (
	ErrGuestDenied    = errs.ErrGuestDenied    // 2203001
	ErrVPNExists      = errs.ErrVPNExists      // 2203002
	ErrInvalidFD      = errs.ErrInvalidFD      // 2203004
	ErrInvalidParam   = errs.ErrInvalidParam   // 19900001
	ErrInternal       = errs.ErrInternal       // 19900002
	ErrPermission     = errs.ErrPermission     // 201
	ErrParse          = errs.ErrParse          // -32700
	ErrInvalidRequest = errs.ErrInvalidRequest // -32600
	ErrMethodNotFound = errs.ErrMethodNotFound // -32601
)

// ErrClosed is returned by calls on a Client after Close.
var ErrClosed = errors.New("vpnd client closed")

// subscriptionBuffer is how many notifications a slow subscriber may fall
// behind before the client starts queueing them in memory.
const subscriptionBuffer = 16

// Client is a connection to vpnd.
type Client struct {
	conn *rpc.Conn
	done chan struct{} // closed when the reader goroutine has exited
	wg   sync.WaitGroup

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*call
	subs    []*subscription
	closed  bool  // Close was called
	err     error // why the connection ended; set before done is closed
	// refusal is the last error vpnd sent with a null id: how it says
	// why it closes a connection it will not serve.
	refusal *Error
}

type call struct {
	ch  chan reply // buffered 1: the reader never blocks on it
	sub *subscription
}

type reply struct {
	result json.RawMessage
	files  []*os.File
	err    error
}

// Dial connects to vpnd at path; "" means protocol.DefaultSocket.
func Dial(ctx context.Context, path string) (*Client, error) {
	if path == "" {
		path = protocol.DefaultSocket
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to vpnd: %w", err)
	}
	return New(nc.(*net.UnixConn)), nil
}

// New returns a Client on an already connected socket, for example one
// end of a socketpair in tests. The Client owns uc.
func New(uc *net.UnixConn) *Client {
	c := &Client{
		conn:    rpc.NewConn(uc),
		done:    make(chan struct{}),
		pending: make(map[uint64]*call),
	}
	c.wg.Add(1)
	go c.readLoop()
	return c
}

// Close closes the connection. vpnd then tears down a VPN this client
// owns. Calls in flight fail, subscription channels are closed, and every
// goroutine of the Client has exited when Close returns.
func (c *Client) Close() error {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	var err error
	if !already {
		err = c.conn.Close()
	}
	c.wg.Wait()
	return err
}

// Done is closed when the connection to vpnd has ended, by Close or
// because vpnd went away. Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is up. It is set
// as soon as a call can fail for that reason, a moment before Done closes.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Call sends a request and waits for its response. It returns the raw
// result and the descriptors the response carried, which the caller must
// close. params may be nil (no "params" member) or anything json.Marshal
// accepts, including a json.RawMessage sent as is. files are sent with
// the request ("fds" is set) and stay open.
//
// If ctx ends first, Call returns ctx.Err() and the call is abandoned: its
// response, and any descriptor in it, is discarded when it arrives. The
// write itself is not interruptible; it only blocks if vpnd stops reading.
func (c *Client) Call(ctx context.Context, method string, params any, files ...*os.File) (json.RawMessage, []*os.File, error) {
	return c.call(ctx, method, params, nil, files)
}

func (c *Client) call(ctx context.Context, method string, params any, sub *subscription, files []*os.File) (json.RawMessage, []*os.File, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	req := protocol.Request{JSONRPC: protocol.Version, Method: method, FDs: len(files)}
	if params != nil {
		p, err := json.Marshal(params)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: encode params: %w", method, err)
		}
		req.Params = p
	}

	cl := &call{ch: make(chan reply, 1), sub: sub}
	c.mu.Lock()
	if c.closed || c.err != nil {
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = ErrClosed
		}
		return nil, nil, err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.mu.Unlock()

	req.ID = json.RawMessage(strconv.FormatUint(id, 10))
	line, err := json.Marshal(req)
	if err == nil {
		err = c.conn.WriteMessage(line, files...)
	}
	if err != nil {
		c.abandon(id, cl)
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			// vpnd closed the connection, maybe with a line saying why:
			// the reader gets to it before it sees the end.
			select {
			case <-c.done:
			case <-ctx.Done():
			}
		}
		if cerr := c.Err(); cerr != nil {
			return nil, nil, cerr
		}
		return nil, nil, fmt.Errorf("%s: send request: %w", method, err)
	}

	select {
	case r := <-cl.ch:
		return r.result, r.files, r.err
	case <-ctx.Done():
		c.abandon(id, cl)
		return nil, nil, ctx.Err()
	}
}

// abandon forgets a call. A reply that raced in is discarded, fds closed.
func (c *Client) abandon(id uint64, cl *call) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
	select {
	case r := <-cl.ch:
		closeFiles(r.files)
	default:
	}
}

// readLoop dispatches everything vpnd sends: responses by id, and
// notifications to subscribers.
func (c *Client) readLoop() {
	defer c.wg.Done()
	var err error
	for {
		var m rpc.Message
		m, err = c.conn.ReadMessage()
		if err != nil {
			break
		}
		c.dispatch(m)
	}

	c.mu.Lock()
	switch {
	case c.closed:
		c.err = ErrClosed
	case c.refusal != nil:
		c.err = c.refusal
	default:
		c.err = fmt.Errorf("connection to vpnd lost: %w", err)
	}
	pending, subs := c.pending, c.subs
	c.pending, c.subs = nil, nil
	c.mu.Unlock()
	c.conn.Close()
	// Done first, so that whoever sees a call fail or a subscription
	// close finds Err set.
	close(c.done)
	for _, cl := range pending {
		cl.ch <- reply{err: c.err}
	}
	for _, s := range subs {
		s.close()
	}
}

func (c *Client) dispatch(m rpc.Message) {
	var resp protocol.Response
	if err := json.Unmarshal(m.Line, &resp); err != nil {
		closeFiles(m.Files) // not something vpnd would send; ignore it
		return
	}
	if len(resp.ID) == 0 || string(resp.ID) == "null" {
		closeFiles(m.Files)
		if resp.Method == protocol.MethodStateChanged {
			var ev protocol.StateChanged
			if json.Unmarshal(resp.Params, &ev) == nil {
				c.mu.Lock()
				for _, s := range c.subs {
					s.push(ev)
				}
				c.mu.Unlock()
			}
		}
		// A response with a null id answers no request of ours (we
		// never send a line vpnd cannot parse): it is vpnd refusing the
		// connection, just before it closes it. The connection's end
		// reports it.
		if resp.Error != nil {
			c.mu.Lock()
			c.refusal = resp.Error.Err()
			c.mu.Unlock()
		}
		return
	}
	id, err := strconv.ParseUint(string(resp.ID), 10, 64)
	c.mu.Lock()
	cl, ok := c.pending[id]
	if err != nil || !ok {
		c.mu.Unlock()
		closeFiles(m.Files) // an abandoned call
		return
	}
	delete(c.pending, id)
	var r reply
	switch {
	case resp.Error != nil:
		closeFiles(m.Files)
		r.err = resp.Error.Err()
	case m.FDErr != nil:
		r.err = fmt.Errorf("response from vpnd: %w", m.FDErr)
	default:
		r.result, r.files = resp.Result, m.Files
		if cl.sub != nil {
			// Activate the subscription here, in order, so that no
			// notification after the response is missed.
			c.subs = append(c.subs, cl.sub)
			c.wg.Add(1)
			go cl.sub.run(&c.wg)
		}
	}
	c.mu.Unlock()
	cl.ch <- r
}

// SetUp asks vpnd to set up a VPN with cfg. It returns the TUN device,
// which the caller owns: closing it ends the VPN, as does closing the
// Client. The file is non-blocking unless cfg.IsBlocking. From a simulated
// vpnd (`vpnd --sim`, VpnInfo.Simulated) it is one end of a SOCK_SEQPACKET
// socket pair instead, read and written the same way: one IP packet at a
// time.
func (c *Client) SetUp(ctx context.Context, cfg protocol.VpnConfig) (*os.File, *protocol.VpnInfo, error) {
	return c.setUp(ctx, cfg)
}

// SetUpRaw is SetUp with the VpnConfig given as raw JSON, sent as is, so
// that OpenHarmony's object form and the CIDR-string form both work.
func (c *Client) SetUpRaw(ctx context.Context, cfg json.RawMessage) (*os.File, *protocol.VpnInfo, error) {
	return c.setUp(ctx, cfg)
}

func (c *Client) setUp(ctx context.Context, params any) (*os.File, *protocol.VpnInfo, error) {
	res, files, err := c.Call(ctx, protocol.MethodSetUp, params)
	if err != nil {
		return nil, nil, err
	}
	if len(files) != 1 {
		closeFiles(files)
		return nil, nil, fmt.Errorf("setUp: response carried %d descriptors, want 1 (the TUN fd)", len(files))
	}
	var info protocol.VpnInfo
	if err := json.Unmarshal(res, &info); err != nil {
		files[0].Close()
		return nil, nil, fmt.Errorf("setUp: decode result: %w", err)
	}
	tun := files[0]
	return tun, &info, nil
}

// Protect asks vpnd to let conn's traffic bypass the VPN (it sets the
// protect bit of the socket's SO_MARK). conn is typically a *net.UDPConn
// or *net.TCPConn; it stays open and usable.
func (c *Client) Protect(ctx context.Context, conn syscall.Conn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return &Error{Code: errs.CodeInvalidFD, Detail: err.Error(), Err: err}
	}
	var dup int
	var derr error
	if err := rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return &Error{Code: errs.CodeInvalidFD, Detail: err.Error(), Err: err}
	}
	if derr != nil {
		return &Error{Code: errs.CodeInvalidFD, Detail: "dup: " + derr.Error(), Err: derr}
	}
	return c.protectOwned(ctx, dup)
}

// ProtectFD is Protect for a raw socket descriptor. The caller keeps fd.
func (c *Client) ProtectFD(ctx context.Context, fd int) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return &Error{Code: errs.CodeInvalidFD, Detail: fmt.Sprintf("fd %d: %v", fd, err), Err: err}
	}
	return c.protectOwned(ctx, dup)
}

// protectOwned sends a duplicate of the caller's socket: the same open
// socket, so the mark vpnd sets is seen through the caller's fd, while
// the caller may close or use its own fd meanwhile.
func (c *Client) protectOwned(ctx context.Context, dup int) error {
	f := os.NewFile(uintptr(dup), "protect")
	defer f.Close()
	_, files, err := c.Call(ctx, protocol.MethodProtect, struct{}{}, f)
	closeFiles(files)
	return err
}

// Destroy ends the VPN. Destroying when there is none succeeds.
func (c *Client) Destroy(ctx context.Context) error {
	_, files, err := c.Call(ctx, protocol.MethodDestroy, struct{}{})
	closeFiles(files)
	return err
}

// Status reports whether a VPN is up, and which.
func (c *Client) Status(ctx context.Context) (*protocol.StatusResult, error) {
	res, files, err := c.Call(ctx, protocol.MethodStatus, struct{}{})
	closeFiles(files)
	if err != nil {
		return nil, err
	}
	var st protocol.StatusResult
	if err := json.Unmarshal(res, &st); err != nil {
		return nil, fmt.Errorf("status: decode result: %w", err)
	}
	return &st, nil
}

// SetLockdown turns lockdown on for l.Applications (user names or uids),
// changes its list, or turns it off (l.Enabled false): while it is on, the
// listed users' traffic may leave only through a VPN. Only an ADMIN account
// may call it (else ErrPermission). Status reports lockdown's state.
func (c *Client) SetLockdown(ctx context.Context, l protocol.Lockdown) error {
	_, files, err := c.Call(ctx, protocol.MethodSetLockdown, l)
	closeFiles(files)
	return err
}

// Subscribe asks vpnd for vpnStateChanged notifications. Once it returns,
// every notification arrives on the channel, in order; none are dropped
// for a slow reader while the connection is up (they queue in memory).
// The channel is closed when the Client closes or the connection ends;
// notifications a subscriber had not read by then may be dropped beyond
// the channel's buffer, so that Close never waits for a reader.
func (c *Client) Subscribe(ctx context.Context) (<-chan protocol.StateChanged, error) {
	s := newSubscription(c.done)
	_, files, err := c.call(ctx, protocol.MethodSubscribe, struct{}{}, s, nil)
	closeFiles(files)
	if err != nil {
		// An abandoned call may still have activated s; it then
		// lives, undelivered, until the Client closes.
		return nil, err
	}
	return s.out, nil
}

// subscription forwards notifications from the reader to the subscriber
// without ever blocking the reader.
type subscription struct {
	out  chan protocol.StateChanged
	stop <-chan struct{}

	mu     sync.Mutex
	queue  []protocol.StateChanged
	wake   chan struct{} // buffered 1
	closed bool
}

func newSubscription(stop <-chan struct{}) *subscription {
	return &subscription{
		out:  make(chan protocol.StateChanged, subscriptionBuffer),
		stop: stop,
		wake: make(chan struct{}, 1),
	}
}

func (s *subscription) push(ev protocol.StateChanged) {
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscription) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run delivers queued notifications until the subscription is closed.
// Notifications queued before the close are still delivered if the
// subscriber keeps reading; once the connection is done, a subscriber that
// stopped reading no longer holds the goroutine.
func (s *subscription) run(wg *sync.WaitGroup) {
	defer wg.Done()
	defer close(s.out)
	for {
		s.mu.Lock()
		q, closed := s.queue, s.closed
		s.queue = nil
		s.mu.Unlock()
		for _, ev := range q {
			select {
			case s.out <- ev:
			default:
				select {
				case s.out <- ev:
				case <-s.stop:
					return
				}
			}
		}
		if closed && len(q) == 0 {
			return
		}
		if len(q) == 0 {
			<-s.wake
		}
	}
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}
