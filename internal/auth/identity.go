package auth

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strconv"
)

// Identity is a caller as the policy sees it: the uid and gid from its
// peer credentials and what the user database says about them.
type Identity struct {
	UID, GID uint32
	// User is the user name of UID, "" if the database has none.
	User string
	// Groups holds GID first, then the user's groups from the group
	// database (the passwd primary group and the supplementary ones),
	// without duplicates.
	Groups []uint32
	// GroupNames holds the names of those Groups that have one.
	GroupNames []string
}

// Lookup builds the Identity of a caller from the user database. A uid or
// gid the database does not know is not an error, it just has no name; a
// database that cannot be read leaves the names it could not get empty.
// Use LookupIdentity to see that error.
func Lookup(uid, gid uint32) Identity {
	id, _ := LookupIdentity(uid, gid)
	return id
}

// LookupIdentity is Lookup, and also reports a user database that could
// not be read (not an unknown uid or gid). The Identity is filled as far
// as possible either way. A caller may want to refuse such a request
// rather than decide on a partial identity: if a policy makes a user a
// guest by name, a lookup that fails would make them normal.
//
// Nothing is cached here, so changes to /etc/passwd and /etc/group apply
// to the next lookup. A lookup walks NSS and may take hundreds of
// microseconds; IdentityCache keeps the answers until the databases change.
func LookupIdentity(uid, gid uint32) (Identity, error) {
	id := Identity{UID: uid, GID: gid, Groups: []uint32{gid}}
	var errList []error
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	var unknownUser user.UnknownUserIdError
	switch {
	case err == nil:
		id.User = u.Username
		gids, err := u.GroupIds()
		if err != nil {
			errList = append(errList, fmt.Errorf("groups of user %s: %w", u.Username, err))
		}
		for _, s := range gids {
			g, err := strconv.ParseUint(s, 10, 32)
			if err == nil && !slices.Contains(id.Groups, uint32(g)) {
				id.Groups = append(id.Groups, uint32(g))
			}
		}
	case errors.As(err, &unknownUser):
	default:
		errList = append(errList, fmt.Errorf("look up uid %d: %w", uid, err))
	}
	for _, g := range id.Groups {
		grp, err := user.LookupGroupId(strconv.FormatUint(uint64(g), 10))
		var unknownGroup user.UnknownGroupIdError
		switch {
		case err == nil:
			id.GroupNames = append(id.GroupNames, grp.Name)
		case errors.As(err, &unknownGroup):
		default:
			errList = append(errList, fmt.Errorf("look up gid %d: %w", g, err))
		}
	}
	return id, errors.Join(errList...)
}
