package config

import (
	"errors"
	"os/user"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
)

func TestSystemUsers(t *testing.T) {
	root, err := user.LookupId("0")
	if err != nil {
		t.Skipf("no passwd entry for uid 0: %v", err)
	}
	users := SystemUsers()
	tests := []struct {
		in   string
		want User
	}{
		{root.Username, User{Name: root.Username, UID: 0}},
		{"0", User{Name: root.Username, UID: 0}},
		{"4294967294", User{UID: 4294967294}}, // no passwd entry: still a uid
	}
	for _, tt := range tests {
		got, err := users.ResolveUser(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ResolveUser(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"no-such-user-vpnd", root.Username + "\x00x", "", "4294967295"} {
		u, err := users.ResolveUser(in)
		if err == nil {
			t.Errorf("ResolveUser(%q) = %+v, want an error", in, u)
		}
		var e *errs.Error
		if errors.As(err, &e) {
			t.Errorf("ResolveUser(%q): %v is a coded error, want a plain one", in, err)
		}
	}
	if _, err := users.ResolveUser("no-such-user-vpnd"); err == nil || err.Error() != `unknown user "no-such-user-vpnd"` {
		t.Errorf("unknown user error = %v", err)
	}
}
