// Package signaltest interrupts a test's system calls with signals, to
// check that code takes EINTR for what it is.
package signaltest

import (
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Storm sends this process SIGURG as fast as it can until the test ends.
// Go's runtime sends its own threads SIGURG to preempt goroutines and
// handles it, so the storm changes nothing but that system calls which
// would wait, or which find nothing ready, fail with EINTR far more often
// than they do in production, where it happens too.
func Storm(t testing.TB) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				unix.Kill(os.Getpid(), unix.SIGURG)
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
}
