// Package tun is vpnd's only contact with the kernel's network stack: it
// creates the TUN device and configures addresses, routes and policy rules
// through netlink, watches the link, and checks and marks the
// sockets that clients protect.
//
// Everything acts on the network namespace of the calling process. vpnd runs
// as a whole process inside the namespace it serves; tests do the same by
// re-executing themselves in a fresh namespace (see internal/netnstest), so
// that no thread ever has to switch namespaces.
//
// Netlink implements the manager's Kernel interface; tuntest.Fake is its
// in-memory twin for unit tests, and one scenario table runs against both.
package tun
