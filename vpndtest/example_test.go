package vpndtest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/vpnd/vpnd/client"
	"github.com/vpnd/vpnd/protocol"
	"github.com/vpnd/vpnd/vpndtest"
)

// A vpnd of its own, outside a test: Start and Close (a test calls New,
// which closes it when the test ends). The sim backend runs for any user;
// the policy makes that user NORMAL, whoever it is.
func Example() {
	e, err := vpndtest.Start(vpndtest.Sim(), vpndtest.Accounts(`{"default":"normal"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close() // on every way out; a second Close does nothing
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c, err := client.Dial(ctx, e.Socket())
	if err != nil {
		fmt.Println(err)
		return
	}
	tun, info, err := c.SetUpRaw(ctx, json.RawMessage(`{"addresses":["10.8.0.2/24"]}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(info.Interface, "simulated:", info.Simulated)
	tun.Close()
	c.Close() // the end checks want every client gone

	// Close stops vpnd and says what the end checks found: nothing here.
	fmt.Println("checks:", e.Close())
	// Output:
	// vpn-tun simulated: true
	// checks: <nil>
}

// The end checks name what vpnd left behind, here a VPN whose client is
// still connected; in a test, New's cleanup fails the test with it.
func ExampleEnv_Close() {
	e, err := vpndtest.Start(vpndtest.Sim(), vpndtest.Accounts(`{"default":"normal"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close() // on every way out; a second Close does nothing
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, e.Socket())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	if _, _, err := c.SetUpRaw(ctx, json.RawMessage(`{"addresses":["10.8.0.2/24"]}`)); err != nil {
		fmt.Println(err)
		return
	}
	err = e.Close() // waits a few seconds for vpnd to become idle first
	fmt.Println(err != nil)
	// Output:
	// true
}

// Under the sim backend the peer is the loopback address, where
// PeerCommand runs the app's server side as the caller; under the kernel
// backend it is 192.0.2.2, in a namespace of its own behind a veth.
func ExampleEnv_PeerAddr() {
	e, err := vpndtest.Start(vpndtest.Sim(), vpndtest.Peer())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close()
	fmt.Println(e.PeerAddr())
	out, err := e.PeerCommand("echo", "the server side runs here").Output()
	fmt.Printf("%s%v\n", out, err)
	// Output:
	// 127.0.0.1
	// the server side runs here
	// <nil>
}

// Command runs a program (the app under test, built with Build) where the
// VPN's traffic is, as a user, with VPND_SOCKET naming vpnd's socket.
func ExampleEnv_Command() {
	e, err := vpndtest.Start(vpndtest.Sim())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close()
	out, err := e.Command(uint32(os.Getuid()), "sh", "-c", `test "$VPND_SOCKET" = "$0" && echo ok`, e.Socket()).Output()
	fmt.Printf("%s%v\n", out, err)
	// Output:
	// ok
	// <nil>
}

// A test of an app: its own vpnd, the app's client connected as the user
// the app runs as, and the end checks when the test returns.
func ExampleNew() {
	testAppSetsUpItsVPN := func(t *testing.T) {
		e := vpndtest.New(t)
		c := e.Dial(t, 4000) // skips the test where uid 4000 cannot be dialled
		addr, _ := protocol.ParseLinkAddress("10.8.0.2/24")
		tun, info, err := c.SetUp(t.Context(), protocol.VpnConfig{Addresses: []protocol.LinkAddress{addr}})
		if err != nil {
			t.Fatal(err)
		}
		defer tun.Close()
		if info.Simulated != e.Simulated() {
			t.Errorf("VpnInfo simulated %v", info.Simulated)
		}
		// ... the app's code on c and tun ...
	}
	_ = testAppSetsUpItsVPN
}

// A test that leaves lockdown on declares lockdown's rules and firewall,
// which stay after vpnd exits, and one that provokes an error line in
// vpnd's log declares that.
func ExampleEnv_ExpectLeftovers() {
	testLockdownStaysOn := func(t *testing.T) {
		e := vpndtest.New(t, vpndtest.Accounts(`{"default":"normal","users":{"root":"admin"}}`))
		admin := e.Dial(t, 0)
		if err := admin.SetLockdown(t.Context(), protocol.Lockdown{Enabled: true, Applications: []string{"4000"}}); err != nil {
			t.Fatal(err)
		}
		e.ExpectLeftovers(vpndtest.LockdownRule, vpndtest.Firewall)
		e.Rebase(t) // vpnd may keep more goroutines while lockdown is on

		e.ExpectLog("policy reload failed")
		e.SetAccounts(t, `{"default":"superuser"}`) // refused: the old policy stays
	}
	_ = testLockdownStaysOn
}
