package config

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"strings"

	"github.com/vpnd/vpnd/internal/errs"
)

// SystemUsers returns a UserResolver backed by the system's user database
// (os/user: /etc/passwd, or NSS when built with cgo).
//
// A string of decimal digits is a uid and is accepted even without a passwd
// entry (Name is then ""), since the kernel's uid ranges do not need one.
// Anything else is a user name and must exist.
func SystemUsers() UserResolver { return systemUsers{} }

type systemUsers struct{}

func (systemUsers) ResolveUser(nameOrUID string) (User, error) {
	if nameOrUID != "" && isDigits(nameOrUID) {
		uid, err := strconv.ParseUint(nameOrUID, 10, 32)
		if err != nil || uid > maxUID {
			return User{}, fmt.Errorf("uid %s out of range 0-%d", nameOrUID, maxUID)
		}
		u := User{UID: uint32(uid)}
		if pw, err := user.LookupId(nameOrUID); err == nil {
			u.Name = pw.Username
		}
		return u, nil
	}
	// A NUL would cut the name short in the C library's lookup, and ':' or
	// a newline cannot be in a passwd name.
	if nameOrUID == "" || strings.ContainsAny(nameOrUID, "\x00:\n") {
		return User{}, fmt.Errorf("unknown user %q", nameOrUID)
	}
	pw, err := user.Lookup(nameOrUID)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return User{}, fmt.Errorf("unknown user %q", nameOrUID)
		}
		return User{}, errs.Wrap(errs.CodeInternal, err, fmt.Sprintf("look up user %q", nameOrUID))
	}
	uid, err := strconv.ParseUint(pw.Uid, 10, 32)
	if err != nil || uid > maxUID {
		return User{}, errs.New(errs.CodeInternal, "user %q has an unusable uid %q", nameOrUID, pw.Uid)
	}
	return User{Name: pw.Username, UID: uint32(uid)}, nil
}
