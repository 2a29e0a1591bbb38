// Command dialas opens connections to vpnd for the integration tests as
// whatever uid it runs under, and hands them to the test process. The
// test starts it with SysProcAttr.Credential and one end of a Unix socket
// pair as fd 3:
//
//	dialas SOCKET N
//
// It connects N times to SOCKET and sends the N connected sockets over fd
// 3 as SCM_RIGHTS, at most 200 to a message, one byte each, then exits.
// vpnd learns a connection's peer credentials at connect time, so the
// connections keep this process's uid after it is gone, while the test
// drives many of them at wire speed from its own goroutines.
package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

const perMessage = 200

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: dialas SOCKET N")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "dialas: bad count %q\n", os.Args[2])
		os.Exit(2)
	}
	var batch []int
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := unix.Sendmsg(3, []byte{'c'}, unix.UnixRights(batch...), nil, 0); err != nil {
			fmt.Fprintf(os.Stderr, "dialas: hand over: %v\n", err)
			os.Exit(1)
		}
		for _, fd := range batch {
			unix.Close(fd)
		}
		batch = batch[:0]
	}
	for i := 0; i < n; i++ {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dialas: socket: %v\n", err)
			os.Exit(1)
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: os.Args[1]}); err != nil {
			fmt.Fprintf(os.Stderr, "dialas: connect %d: %v\n", i, err)
			os.Exit(1)
		}
		batch = append(batch, fd)
		if len(batch) == perMessage {
			flush()
		}
	}
	flush()
}
