package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/vpnd/vpnd/internal/errs"
)

// Lockdown is a validated setLockdown request.
type Lockdown struct {
	Enabled bool
	// Users are the users whose traffic may leave only through a VPN, in
	// the order given, duplicates merged. Empty when !Enabled.
	Users []User
}

// ParseLockdown validates setLockdown's params,
// {"enabled":bool,"applications":[user...]}, with the rules of the
// application lists of a VpnConfig: user names or decimal uids (strings or
// numbers), names must exist, at most MaxApplications, duplicates merged.
// enabled is required. applications is required and non-empty when
// enabled is true, and must be absent, null or empty when it is false (a
// list that would be ignored is more likely a mistake than a wish). Unknown
// and repeated members are rejected. Violations are *errs.Error with code
// 19900001 naming the member.
func ParseLockdown(params json.RawMessage, users UserResolver) (Lockdown, error) {
	var l Lockdown
	if len(bytes.TrimSpace(params)) == 0 || bytes.Equal(bytes.TrimSpace(params), []byte("null")) {
		return l, invalidLockdown("params", "expected object")
	}
	dec := json.NewDecoder(bytes.NewReader(params))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return l, invalidLockdown("params", "expected object")
	}
	var enabled, apps json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return l, invalidLockdown("params", "invalid JSON")
		}
		name, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return l, invalidLockdown("params", "invalid JSON")
		}
		switch name {
		case "enabled":
			if enabled != nil {
				return l, invalidLockdown("params.enabled", "repeated member")
			}
			enabled = raw
		case "applications":
			if apps != nil {
				return l, invalidLockdown("params.applications", "repeated member")
			}
			apps = raw
		default:
			return l, invalidLockdown(fmt.Sprintf("params.%.64s", name), "unknown member")
		}
	}
	if _, err := dec.Token(); err != nil {
		return l, invalidLockdown("params", "invalid JSON")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return l, invalidLockdown("params", "trailing data after the object")
	}
	if enabled == nil || bytes.Equal(enabled, []byte("null")) {
		return l, invalidLockdown("enabled", "required")
	}
	if err := json.Unmarshal(enabled, &l.Enabled); err != nil {
		return l, invalidLockdown("enabled", "expected true or false")
	}
	var items []json.RawMessage
	if apps != nil && !bytes.Equal(apps, []byte("null")) {
		if err := json.Unmarshal(apps, &items); err != nil {
			return l, invalidLockdown("applications", "expected an array of user names or uids")
		}
	}
	switch {
	case !l.Enabled && len(items) > 0:
		return l, invalidLockdown("applications", "must be empty when enabled is false")
	case l.Enabled && len(items) == 0:
		return l, invalidLockdown("applications", "at least 1 entry required when enabled is true")
	case len(items) > MaxApplications:
		return l, invalidLockdown("applications", "%d entries, at most %d", len(items), MaxApplications)
	}
	seen := make(map[uint32]bool, len(items))
	for i, item := range items {
		path := fmt.Sprintf("applications[%d]", i)
		var s string
		var n json.Number
		switch {
		case json.Unmarshal(item, &s) == nil:
		case json.Unmarshal(item, &n) == nil:
			if _, err := strconv.ParseUint(n.String(), 10, 32); err != nil {
				return l, invalidLockdown(path, "%s is not a uid", n)
			}
			s = n.String()
		default:
			return l, invalidLockdown(path, "expected a user name or uid")
		}
		u, err := users.ResolveUser(s)
		if err != nil {
			var e *errs.Error
			if errors.As(err, &e) {
				return l, err // a broken user database keeps its code
			}
			return l, invalidLockdown(path, "%v", err)
		}
		if !seen[u.UID] {
			seen[u.UID] = true
			l.Users = append(l.Users, u)
		}
	}
	return l, nil
}

func invalidLockdown(path, format string, args ...any) error {
	return errs.New(errs.CodeInvalidParam, "%s: %s", path, fmt.Sprintf(format, args...))
}
