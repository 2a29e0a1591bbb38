// Package vpndtest runs a vpnd of a test's own, for testing VPN apps, as
// net/http/httptest runs an HTTP server for testing HTTP clients.
//
// New starts vpnd for one test and stops it when the test ends:
//
//	func TestMyApp(t *testing.T) {
//		e := vpndtest.New(t)
//		c := e.Dial(t, 4000) // a client.Client, connected as uid 4000
//		tun, info, err := c.SetUp(ctx, cfg)
//		...
//	}
//
// # Backends
//
// The kernel backend runs vpnd as root in a network namespace made for the
// test (`ip netns add`), so that its TUN, addresses, routes and rules are
// real and the host's network is never touched. It needs root, a
// /dev/net/tun, and ip (iproute2) and setpriv (util-linux) in PATH; where
// one is missing, Kernel skips the test and says which.
//
// The sim backend runs `vpnd --sim` as the calling user: no privilege, and
// nothing changes in the kernel. The socket, peer credentials, account
// types, errors and lifetime events are those of the real vpnd; setUp
// hands out one end of a SOCK_SEQPACKET socket pair instead of a TUN, on
// which vpnd answers ICMP and ICMPv6 echo requests sent to the VPN's own
// addresses and drops every other packet. As root, vpndtest still runs
// the simulated vpnd in a namespace of its own.
//
// Without Kernel or Sim, New picks the kernel backend where it can run and
// the sim backend elsewhere; the environment variable VPNDTEST_BACKEND
// (kernel or sim) picks one for every test that names none, so that CI
// can run an app's tests on both.
//
// # The checks when a test ends
//
// Once the test and its cleanups are done, vpndtest checks, while vpnd
// still runs, that the VPN's objects are gone from the namespace and that
// vpnd is back to the descriptors and goroutines it had right after
// start (it asks vpnd for its goroutine count with SIGUSR1). Then it stops
// vpnd with SIGTERM and requires exit status 0, nothing of vpnd's left in
// the namespace (see Kind), and no error-level line in vpnd's log that
// the test did not declare with ExpectLog. Any failure fails the test, and
// the test's output then ends with vpnd's log. Clients from Dial are
// closed before these checks; processes a test started itself must end
// before them, so stop them in a t.Cleanup registered after New.
//
// # The peer
//
// With the Peer option, the kernel backend adds a second namespace joined
// to vpnd's by a veth pair: vpnd's side is 192.0.2.1/24, with the default
// route through the peer, and the peer is 192.0.2.2/24 (PeerAddr). An
// app's server side runs there with PeerCommand, so that the app's
// protected tunnel socket reaches it while the app's VPN really carries
// the traffic that enters its TUN. Under the sim backend the peer is the
// loopback address 127.0.0.1 of the caller's namespace, where PeerCommand
// and Command both run.
//
// # Building vpnd
//
// vpndtest builds vpnd once per test binary, into a temporary directory,
// from the vpnd module the test's own module requires (with `go build`, in
// that module's directory, with vpnd's own go.mod: the daemon as that
// version of vpnd ships it). VPNDTEST_VPND=/path/to/vpnd uses that binary
// instead. A later test binary removes the directories of earlier ones
// that have exited. Build builds the test's own programs the same way.
//
// # Parallel tests
//
// Each Env has its own vpnd, namespace, socket and state directory, so
// tests that call t.Parallel each get their own.
//
// Start and Close run a vpnd without a testing.TB, for a TestMain or an
// example: Close returns what the end-of-test checks found.
package vpndtest
