package vpndtest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// The peer's link: vpnd's side and the peer's side of a veth pair, in a
// documentation prefix (RFC 5737) that no real network uses and that lies
// outside vpnd's default address pools.
var (
	vpndSideAddr = netip.MustParsePrefix("192.0.2.1/24")
	peerSideAddr = netip.MustParsePrefix("192.0.2.2/24")
	loopback     = netip.MustParseAddr("127.0.0.1")
)

// The veth pair's names, in vpnd's namespace and in the peer's.
const (
	vpndSideLink = "veth-peer"
	peerSideLink = "veth-vpnd"
)

// newNamespace makes a network namespace with lo up, deleted by Close.
func (e *Env) newNamespace(name string) (string, error) {
	if err := run("ip", "netns", "add", name); err != nil {
		return "", err
	}
	e.cleanup = append(e.cleanup, func() error { return run("ip", "netns", "del", name) })
	return name, ip(name, "link", "set", "lo", "up")
}

// addPeer makes the peer's namespace and joins it to vpnd's with a veth
// pair that is made inside vpnd's namespace (never in the caller's).
func (e *Env) addPeer() error {
	peer, err := e.newNamespace(e.ns + "-peer")
	if err != nil {
		return err
	}
	e.peerNS = peer
	for _, step := range []struct {
		ns   string
		args []string
	}{
		{e.ns, []string{"link", "add", vpndSideLink, "type", "veth", "peer", "name", peerSideLink, "netns", peer}},
		{e.ns, []string{"addr", "add", vpndSideAddr.String(), "dev", vpndSideLink}},
		{e.ns, []string{"link", "set", vpndSideLink, "up"}},
		{peer, []string{"addr", "add", peerSideAddr.String(), "dev", peerSideLink}},
		{peer, []string{"link", "set", peerSideLink, "up"}},
		{e.ns, []string{"route", "add", "default", "via", peerSideAddr.Addr().String()}},
	} {
		if err := ip(step.ns, step.args...); err != nil {
			return err
		}
	}
	return nil
}

// PeerAddr returns the peer's address, where an app's server side listens:
// 192.0.2.2 under the kernel backend, 127.0.0.1 under the sim backend. It
// panics without the Peer option.
func (e *Env) PeerAddr() netip.Addr {
	switch {
	case !e.s.peer:
		panic("vpndtest: PeerAddr needs the Peer option")
	case e.sim:
		return loopback
	}
	return peerSideAddr.Addr()
}

// PeerCommand returns a command that runs a program on the peer: as root in
// the peer's namespace (kernel), or as the caller (sim). Its Err is set
// without the Peer option.
func (e *Env) PeerCommand(name string, arg ...string) *exec.Cmd {
	switch {
	case !e.s.peer:
		cmd := exec.Command(name, arg...)
		cmd.Err = errors.New("vpndtest: PeerCommand needs the Peer option")
		return cmd
	case e.sim:
		return exec.Command(name, arg...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", e.peerNS, name}, arg...)...)
}

// haveIP reports whether ip (iproute2) is in PATH.
func haveIP() bool {
	_, err := exec.LookPath("ip")
	return err == nil
}

// ip runs `ip -n NS ARGS...`: every change vpndtest makes to a namespace
// goes through here, always with -n.
func ip(ns string, args ...string) error {
	if ns == "" {
		return errors.New("vpndtest: refusing to run ip without a namespace")
	}
	return run("ip", append([]string{"-n", ns}, args...)...)
}

func run(name string, args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
