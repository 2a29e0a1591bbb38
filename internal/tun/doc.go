// Package tun is vpnd's only contact with the kernel's network stack: it
// creates the TUN device, reads and changes links, addresses, routes and
// policy rules through rtnetlink (with vishvananda/netlink), keeps vpnd's
// firewall table, announces changes that vpnd did not make, and marks the
// sockets that clients protect. It decides nothing: the manager's
// reconciler says what to read and what to change, in the manager's own
// terms (manager.Kernel).
//
// Everything acts on the network namespace of the calling process. vpnd runs
// as a whole process inside the namespace it serves; tests do the same by
// re-executing themselves in a fresh namespace (see internal/netnstest), so
// that no thread ever has to switch namespaces.
//
// tuntest.Fake is Netlink's in-memory twin for unit tests (internal/sim
// with fault injection), and one scenario table runs against both.
package tun
