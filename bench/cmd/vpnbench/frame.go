package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// frameConn speaks vpnd's framing (one compact JSON-RPC message per line,
// descriptors as SCM_RIGHTS with the first byte of their message) with as
// little work around it as possible. The client side of every round trip
// uses it, against vpnd and against the echo baselines alike, so that the
// client's own cost is the same for both.
type frameConn struct {
	uc   *net.UnixConn
	buf  []byte // unread bytes are buf[r:w]
	r, w int
	oob  []byte
	fds  []int // received, not yet taken
	id   int
	req  []byte // request being built
}

func dialFrame(path string) (*frameConn, error) {
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	return newFrameConn(uc), nil
}

// newFrameConn starts with a 4 KiB buffer (bufio's default), which grows
// for longer lines: the echo server is the minimal server, in memory too.
func newFrameConn(uc *net.UnixConn) *frameConn {
	return &frameConn{uc: uc, buf: make([]byte, 4<<10), oob: make([]byte, unix.CmsgSpace(16*4))}
}

// Close closes the connection and every descriptor not taken.
func (c *frameConn) Close() error {
	c.closeFDs()
	return c.uc.Close()
}

func (c *frameConn) closeFDs() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = c.fds[:0]
}

// takeFDs returns the descriptors received so far; the caller owns them.
func (c *frameConn) takeFDs() []int {
	fds := c.fds
	c.fds = nil
	return fds
}

// request builds the next request line (newline included), with a fresh
// id. params is raw JSON. The line is valid until the next call.
func (c *frameConn) request(method string, params []byte, fds int) []byte {
	c.id++
	b := append(c.req[:0], `{"jsonrpc":"2.0","id":`...)
	b = strconv.AppendInt(b, int64(c.id), 10)
	b = append(b, `,"method":"`...)
	b = append(b, method...)
	b = append(b, `","params":`...)
	b = append(b, params...)
	if fds > 0 {
		b = append(b, `,"fds":`...)
		b = strconv.AppendInt(b, int64(fds), 10)
	}
	b = append(b, "}\n"...)
	c.req = b
	return b
}

// write sends one line, with fd as SCM_RIGHTS when fd >= 0.
func (c *frameConn) write(line []byte, fd int) error {
	if fd < 0 {
		_, err := c.uc.Write(line)
		return err
	}
	n, _, err := c.uc.WriteMsgUnix(line, unix.UnixRights(fd), nil)
	if err == nil && n < len(line) {
		_, err = c.uc.Write(line[n:])
	}
	return err
}

// readLine returns the next line without its newline; it is valid until
// the next read. Descriptors that arrive are queued in c.fds.
func (c *frameConn) readLine() ([]byte, error) {
	for {
		if i := bytes.IndexByte(c.buf[c.r:c.w], '\n'); i >= 0 {
			line := c.buf[c.r : c.r+i]
			c.r += i + 1
			return line, nil
		}
		if c.r > 0 {
			c.w = copy(c.buf, c.buf[c.r:c.w])
			c.r = 0
		}
		if c.w == len(c.buf) {
			c.buf = append(c.buf, make([]byte, len(c.buf))...)
		}
		n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.buf[c.w:], c.oob)
		if oobn > 0 {
			if perr := c.parseRights(c.oob[:oobn]); perr != nil && err == nil {
				err = perr
			}
		}
		if err == nil && flags&unix.MSG_CTRUNC != 0 {
			err = errors.New("ancillary data truncated")
		}
		c.w += n
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, errors.New("connection closed by peer")
		}
	}
}

func (c *frameConn) parseRights(oob []byte) error {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		c.fds = append(c.fds, fds...)
	}
	return nil
}

// rpcError is the error member of a response.
type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    struct {
		Detail string `json:"detail"`
	} `json:"data"`
}

func (e *rpcError) Error() string {
	return fmt.Sprintf("%d %s (%s)", e.Code, e.Message, e.Data.Detail)
}

// responseError decodes line's error member, or returns nil for a result.
// It is not on the timed path.
func responseError(line []byte) error {
	var r struct {
		Error  *rpcError       `json:"error"`
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return fmt.Errorf("response is not JSON-RPC: %w: %.200q", err, line)
	}
	if r.Error != nil {
		return r.Error
	}
	if r.Result == nil {
		return fmt.Errorf("response has neither result nor error: %.200q", line)
	}
	return nil
}

// errorCode is the code of line's error member, 0 for a result.
func errorCode(line []byte) int {
	var e *rpcError
	if errors.As(responseError(line), &e) {
		return e.Code
	}
	return 0
}

// hasError is the cheap check of a hot loop: vpnd's error responses (and
// only they) carry a top-level "error" member right after the id.
func hasError(line []byte) bool { return bytes.Contains(line, []byte(`,"error":{`)) }

// serveEcho is the baseline server of the status and protect scenarios: a
// minimal server with vpnd's framing. It reads each request line (and any
// descriptors, which it closes, as vpnd closes what it does not keep),
// decodes the envelope, and answers with statusResult for "status" and {}
// otherwise, so that its answers are exactly as long as vpnd's.
func serveEcho(path string, statusResult []byte) error {
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for {
		uc, err := ln.AcceptUnix()
		if err != nil {
			wg.Wait()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			echoConn(newFrameConn(uc), statusResult)
		}()
	}
}

func echoConn(c *frameConn, statusResult []byte) {
	defer c.Close()
	var resp []byte
	for {
		line, err := c.readLine()
		if err != nil {
			return
		}
		var env struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			FDs    int             `json:"fds"`
		}
		if err := json.Unmarshal(line, &env); err != nil {
			return
		}
		c.closeFDs()
		result := []byte("{}")
		if env.Method == "status" {
			result = statusResult
		}
		resp = append(resp[:0], `{"jsonrpc":"2.0","id":`...)
		resp = append(resp, env.ID...)
		resp = append(resp, `,"result":`...)
		resp = append(resp, result...)
		resp = append(resp, "}\n"...)
		if _, err := c.uc.Write(resp); err != nil {
			return
		}
	}
}
