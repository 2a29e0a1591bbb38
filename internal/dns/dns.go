// Package dns makes the host's resolver follow the VPN: it implements
// manager.DNS with systemd-resolved over D-Bus (Resolved), with a
// rewritten resolv.conf (File), or not at all (None), and picks one at
// start (Open).
package dns

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/vpnd/vpnd/internal/manager"
	"github.com/vpnd/vpnd/internal/state"
)

// Backend names, as --dns-backend takes them and VpnInfo's dnsBackend
// reports them ("auto" is never reported: it becomes one of the others).
const (
	Auto        = "auto"
	NameResolve = "resolved"
	NameFile    = "file"
	NameNone    = "none"
)

// Backends lists the values of --dns-backend.
var Backends = []string{Auto, NameResolve, NameFile, NameNone}

// DefaultResolvConf is the file backend's default file.
const DefaultResolvConf = "/etc/resolv.conf"

// Config says which backend to use and what it needs.
type Config struct {
	// Backend is one of Backends.
	Backend string
	// ResolvConf is the file backend's file (DefaultResolvConf if empty).
	ResolvConf string
	// State keeps the file backend's record of the file it replaced.
	State *state.Dir
	Log   *zap.Logger
}

// Open returns the backend c asks for, checking at start what it needs,
// so that a backend that cannot work fails vpnd's start instead of every
// setUp:
//   - "resolved": systemd-resolved must answer on the system bus
//     (DBUS_SYSTEM_BUS_ADDRESS, or the standard socket).
//   - "file": see NewFile.
//   - "auto": "resolved" if it answers, otherwise "none".
//   - "none": nothing to check.
func Open(c Config) (manager.DNS, error) {
	log := c.Log
	if log == nil {
		log = zap.NewNop()
	}
	switch c.Backend {
	case NameNone:
		return None{}, nil
	case NameFile:
		path := c.ResolvConf
		if path == "" {
			path = DefaultResolvConf
		}
		return NewFile(path, c.State, log.Named("file"))
	case NameResolve, Auto:
		r := NewResolved(log.Named("resolved"))
		err := r.Probe()
		if err == nil {
			return r, nil
		}
		if c.Backend == NameResolve {
			return nil, fmt.Errorf("--dns-backend resolved: systemd-resolved does not answer on the system bus: %w", err)
		}
		log.Info("systemd-resolved does not answer on the system bus; vpn dns settings are reported only", zap.Error(err))
		return None{}, nil
	}
	return nil, fmt.Errorf("unknown DNS backend %q (want auto, resolved, file or none)", c.Backend)
}

// None applies nothing: a VPN's DNS settings are validated and reported
// only. It is the backend for hosts (and simulations) whose resolver vpnd
// must not touch.
type None struct{}

var _ manager.DNS = None{}

// Name is "none".
func (None) Name() string { return NameNone }

// Apply does nothing.
func (None) Apply(manager.DNSLink, manager.DNSSettings) error { return nil }

// Revert does nothing.
func (None) Revert(manager.DNSLink) error { return nil }
