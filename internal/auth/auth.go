// Package auth decides who is calling vpnd: it turns a
// caller's peer credentials into an account type, admin, normal or guest,
// through the account policy.
//
// The policy is parsed once and never changes afterwards; a SIGHUP reload
// parses a new one and swaps it into a Holder, so a request sees one
// policy from start to end. A caller's identity comes from the system's
// user database; vpnd asks it through an IdentityCache, which drops what
// it holds when /etc/passwd, /etc/group or the other sources change, so
// that an edit of /etc/group takes effect within a quarter of a second.
package auth

import (
	"fmt"
	"sync/atomic"
)

// Type is an account type. The order is one of privilege, Guest < Normal
// < Admin, and the zero value is Guest, so that a Type nobody set denies
// rather than grants.
type Type int

// The account types, named as OpenHarmony's AccountType.
const (
	// Guest may not set up or destroy a VPN, nor protect sockets
	// (2203001, 201). It may call status and subscribe.
	Guest Type = iota
	// Normal may set up a VPN that carries only its own traffic and
	// manage the VPN it owns.
	Normal
	// Admin may set up a VPN for every user, name other users in the
	// application lists and destroy or protect against anyone's VPN.
	Admin
)

var typeNames = [...]string{Guest: "guest", Normal: "normal", Admin: "admin"}

// String returns the policy file's spelling: "admin", "normal" or "guest".
func (t Type) String() string {
	if t < 0 || int(t) >= len(typeNames) {
		return fmt.Sprintf("Type(%d)", int(t))
	}
	return typeNames[t]
}

// ParseType parses the policy file's spelling of a type. Only the exact
// lower-case names are accepted.
func ParseType(s string) (Type, error) {
	for t, name := range typeNames {
		if s == name {
			return Type(t), nil
		}
	}
	return Guest, fmt.Errorf("unknown account type %q (want admin, normal or guest)", s)
}

// MarshalText implements encoding.TextMarshaler, for JSON and logs.
func (t Type) MarshalText() ([]byte, error) {
	if t < 0 || int(t) >= len(typeNames) {
		return nil, fmt.Errorf("invalid account type %d", int(t))
	}
	return []byte(typeNames[t]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseType.
func (t *Type) UnmarshalText(b []byte) error {
	v, err := ParseType(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// Holder holds the policy in force. vpnd reads it once per request and
// replaces it on SIGHUP; both may happen at once from any goroutine.
// The zero Holder holds the default policy.
type Holder struct {
	p atomic.Pointer[Policy]
}

// NewHolder returns a Holder holding p (the default policy if p is nil).
func NewHolder(p *Policy) *Holder {
	h := new(Holder)
	h.Store(p)
	return h
}

// Load returns the policy in force, never nil.
func (h *Holder) Load() *Policy {
	if p := h.p.Load(); p != nil {
		return p
	}
	return DefaultPolicy()
}

// Store puts p in force; nil puts the default policy back.
func (h *Holder) Store(p *Policy) { h.p.Store(p) }

// Reload loads the policy at path ("" for the default) and puts it in
// force. If it cannot be loaded, the policy in force stays and the error
// is returned for the caller to log.
func (h *Holder) Reload(path string) error {
	p, err := LoadPolicy(path)
	if err != nil {
		return err
	}
	h.Store(p)
	return nil
}
