// Command slowhttp is the slow-header attack of the integration tests on
// vpnd's metrics listener (--metrics-listen), run as an ordinary user in
// vpnd's network namespace:
//
//	slowhttp ADDR N
//
// It keeps N connections to ADDR open at once, each of which sends the
// start of an HTTP request header and never finishes it; a connection the
// server closes is opened again at once. It runs until its stdin is
// closed, then prints one line of counts and exits:
//
//	opened O closed-by-server C failed F most-at-once M (first failure: ...)
//
// Connections that cannot be made (a full listen backlog keeps a connect
// waiting) count as failed once their 10 s dial timeout passes, and are
// tried again.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const partial = "GET /metrics HTTP/1.1\r\nHost: vpnd\r\nX-Slow: "

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: slowhttp ADDR N")
		os.Exit(2)
	}
	addr := os.Args[1]
	n, err := strconv.Atoi(os.Args[2])
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "slowhttp: bad count %q\n", os.Args[2])
		os.Exit(2)
	}
	var opened, closed, failed, open, most atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	stop := ctx.Done()
	dialer := net.Dialer{Timeout: 10 * time.Second}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	stopped := false
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := dialer.DialContext(ctx, "tcp", addr)
				if err != nil {
					if failed.Add(1) == 1 {
						firstErr.Store(err.Error())
					}
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					continue
				}
				mu.Lock()
				if stopped {
					// Made after the others were closed: a connection
					// waiting in the server's backlog would never end.
					mu.Unlock()
					c.Close()
					return
				}
				conns[c] = true
				mu.Unlock()
				opened.Add(1)
				if now := open.Add(1); now > most.Load() {
					most.Store(now) // a high-water mark; races only lose a little
				}
				c.Write([]byte(partial))
				io.Copy(io.Discard, c) // until the server (or stop) closes it
				open.Add(-1)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
				select {
				case <-stop:
					return
				default:
					closed.Add(1)
				}
			}
		}()
	}
	io.Copy(io.Discard, os.Stdin)
	cancel()
	mu.Lock()
	stopped = true
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	fmt.Printf("opened %d closed-by-server %d failed %d most-at-once %d", opened.Load(), closed.Load(), failed.Load(), most.Load())
	if e, ok := firstErr.Load().(string); ok {
		fmt.Printf(" (first failure: %s)", e)
	}
	fmt.Println()
}
