package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/go-json-experiment/json/jsontext"

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
// {"enabled":bool,"applications":[user...]}, as docs/protocol.md's
// Lockdown says; violations are *errs.Error with code 19900001 naming the
// member. params are read as a stream, member by member: an unknown or
// repeated member is reported even if the JSON is broken after it.
func ParseLockdown(params []byte, users UserResolver) (Lockdown, error) {
	var l Lockdown
	d := newDecoder(params)
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '{' {
		return l, invalidLockdown("params", "expected object")
	}
	var enabled, apps jsontext.Value
	for d.more() {
		name, val := d.next(), d.next()
		if d.broken {
			break
		}
		switch name := text(name); {
		case name == "enabled" && enabled == nil:
			enabled = val
		case name == "applications" && apps == nil:
			apps = val
		case name == "enabled" || name == "applications":
			return l, invalidLockdown("params."+name, "repeated member")
		default:
			return l, invalidLockdown(fmt.Sprintf("params.%.64s", name), "unknown member")
		}
	}
	if _, err := d.ReadToken(); err != nil || d.broken {
		return l, invalidLockdown("params", "invalid JSON")
	}
	if !d.end() {
		return l, invalidLockdown("params", "trailing data after the object")
	}
	l.Enabled = enabled.Kind() == 't'
	n := count(apps)
	switch {
	case absent(enabled):
		return l, invalidLockdown("enabled", "required")
	case !l.Enabled && enabled.Kind() != 'f':
		return l, invalidLockdown("enabled", "expected true or false")
	case !absent(apps) && apps.Kind() != '[':
		return l, invalidLockdown("applications", "expected an array of user names or uids")
	case !l.Enabled && n > 0:
		return l, invalidLockdown("applications", "must be empty when enabled is false")
	case l.Enabled && n == 0:
		return l, invalidLockdown("applications", "at least 1 entry required when enabled is true")
	case n > MaxApplications:
		return l, invalidLockdown("applications", "%d entries, at most %d", n, MaxApplications)
	case n == 0:
		return l, nil
	}
	err := elements(apps, func(i int, d *decoder) error {
		path, item := fmt.Sprintf("applications[%d]", i), d.next()
		var s string
		switch item.Kind() {
		case '"':
			s = text(item)
		case 'n': // an empty name, as encoding/json reads null into a string
		case '0':
			if _, err := strconv.ParseUint(string(item), 10, 32); err != nil {
				return invalidLockdown(path, "%s is not a uid", item)
			}
			s = string(item)
		default:
			return invalidLockdown(path, "expected a user name or uid")
		}
		u, err := users.ResolveUser(s)
		var coded *errs.Error
		switch {
		case errors.As(err, &coded):
			return coded // a broken user database keeps its code
		case err != nil:
			return invalidLockdown(path, "%v", err)
		case !slices.ContainsFunc(l.Users, func(had User) bool { return had.UID == u.UID }):
			l.Users = append(l.Users, u)
		}
		return nil
	})
	return l, err
}

func invalidLockdown(path, format string, args ...any) error {
	return errs.New(errs.CodeInvalidParam, "%s: %s", path, fmt.Sprintf(format, args...))
}
