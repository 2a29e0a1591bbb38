package firewalltest

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Capture records every frame that a link receives, from an AF_PACKET
// socket: what reached the peer, whatever its addresses, groups or
// filters.
type Capture struct {
	f    *os.File
	each func(frame []byte)

	mu     sync.Mutex
	frames [][]byte
	grew   chan struct{} // closed and replaced on every frame
	done   chan struct{}
}

// NewCapture starts capturing on the link with index ifindex, of the
// calling thread's network namespace: the socket stays there whichever
// thread reads it later. each, if not nil, is called with every frame, in
// order, from the capture's goroutine.
func NewCapture(ifindex int, each func(frame []byte)) (*Capture, error) {
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind packet socket to link %d: %w", ifindex, err)
	}
	// Non-blocking and in an os.File, so that the runtime's poller waits
	// for frames and Close ends a pending read.
	c := &Capture{f: os.NewFile(uintptr(fd), "capture"), each: each, grew: make(chan struct{}), done: make(chan struct{})}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		n, err := c.f.Read(buf)
		if err != nil {
			return
		}
		frame := bytes.Clone(buf[:n])
		if c.each != nil {
			c.each(frame)
		}
		c.mu.Lock()
		c.frames = append(c.frames, frame)
		close(c.grew)
		c.grew = make(chan struct{})
		c.mu.Unlock()
	}
}

// Seen reports whether a frame carrying token has arrived.
func (c *Capture) Seen(token string) bool { return c.SeenFunc(carries(token)) }

// Wait waits up to d for a frame carrying token and reports whether one
// came. d is a hang guard: a frame that comes ends the wait at once.
func (c *Capture) Wait(token string, d time.Duration) bool { return c.WaitFunc(carries(token), d) }

func carries(token string) func([]byte) bool {
	return func(f []byte) bool { return bytes.Contains(f, []byte(token)) }
}

// SeenFunc reports whether a frame that match accepts has arrived. A frame
// is the packet above the link layer (an IPv4 or IPv6 packet).
func (c *Capture) SeenFunc(match func([]byte) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if match(f) {
			return true
		}
	}
	return false
}

// WaitFunc waits up to d for a frame that match accepts.
func (c *Capture) WaitFunc(match func([]byte) bool, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		grew := c.grew
		c.mu.Unlock()
		if c.SeenFunc(match) {
			return true
		}
		select {
		case <-grew:
		case <-deadline.C:
			return c.SeenFunc(match)
		}
	}
}

// Close stops the capture.
func (c *Capture) Close() error {
	err := c.f.Close()
	<-c.done
	return err
}
