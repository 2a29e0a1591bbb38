// Command leaksend sends the datagrams of the firewall tests as whatever
// uid runs it, in whatever network namespace it runs in:
//
//	leaksend PROBE...
//
// Each PROBE is one argument as firewalltest.Probe.Arg encodes it, for
// example "to=[ff02::1%veth-a]:9999 payload=tok1" or "to=255.255.255.255:9999
// dev=veth-a broadcast payload=tok2". It prints one line per probe, in
// order: "OK", or "ERR ERRNO detail" (ERRNO as EPERM).
package main

import (
	"fmt"
	"os"

	"github.com/vpnd/vpnd/internal/firewall/firewalltest"
)

func main() {
	os.Exit(firewalltest.SendMain(os.Args[1:], func(format string, a ...any) { fmt.Printf(format, a...) }))
}
