package wgclient

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
	"github.com/vpnd/vpnd/protocol"
)

// fakeSetUp answers setUp calls in turn with errs (nil: success), and
// records the configs it was given.
type fakeSetUp struct {
	errs  []error
	calls []protocol.VpnConfig
}

func (f *fakeSetUp) SetUp(_ context.Context, cfg protocol.VpnConfig) (*os.File, *protocol.VpnInfo, error) {
	f.calls = append(f.calls, cfg)
	if err := f.errs[len(f.calls)-1]; err != nil {
		return nil, nil, err
	}
	return nil, &protocol.VpnInfo{Interface: "vpn-tun", Offload: cfg.Offload}, nil
}

// setUp asks for offload when told to; a vpnd that does not know the
// member (an older one), or does not allow it to the caller, gets the same
// config again without it, once, and the note says so. Other refusals are
// final.
func TestSetUpOffloadFallback(t *testing.T) {
	unknown := errs.New(errs.CodeInvalidParam, "offload: unknown member")
	notAllowed := errs.New(errs.CodePermission, "offload: this vpnd allows it to admin accounts only (--allow-offload admin); caller uid 1000 is normal")
	for _, tc := range []struct {
		name    string
		offload bool
		errs    []error
		calls   []bool // Offload of each call
		note    string // in the note; "" for none
		err     error
	}{
		{"offload accepted", true, []error{nil}, []bool{true}, "", nil},
		{"no offload asked", false, []error{nil}, []bool{false}, "", nil},
		{"an older vpnd", true, []error{unknown, nil}, []bool{true, false}, "vpnd refused offload (offload: unknown member)", nil},
		{"an older vpnd refuses the retry too", true, []error{unknown, errs.New(errs.CodeVPNExists, "vpn-tun is up")}, []bool{true, false},
			"vpnd refused offload", errs.ErrVPNExists},
		{"another parameter refused", true, []error{errs.New(errs.CodeInvalidParam, "addresses[0]: 127.0.0.1/8 is a loopback address")},
			[]bool{true}, "", errs.ErrInvalidParam},
		{"unknown member without offload asked", false, []error{unknown}, []bool{false}, "", errs.ErrInvalidParam},
		{"not a parameter error", true, []error{errs.New(errs.CodeInternal, "offload: unknown member")}, []bool{true}, "", errs.ErrInternal},
		{"not allowed to this user", true, []error{notAllowed, nil}, []bool{true, false}, "vpnd refused offload (offload: this vpnd allows it to admin accounts only", nil},
		{"another permission refusal", true, []error{errs.New(errs.CodePermission, "addresses[0]: 8.8.8.8/32 is outside the address pools")},
			[]bool{true}, "", errs.ErrPermission},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeSetUp{errs: tc.errs}
			vc := protocol.VpnConfig{Addresses: []protocol.LinkAddress{{Address: protocol.NetAddress{Address: "10.8.0.2"}, PrefixLength: 24}},
				Offload: tc.offload}
			_, info, note, err := setUp(context.Background(), f, vc)
			if len(f.calls) != len(tc.calls) {
				t.Fatalf("%d setUp calls, want %d", len(f.calls), len(tc.calls))
			}
			for i, c := range f.calls {
				if c.Offload != tc.calls[i] || len(c.Addresses) != 1 {
					t.Errorf("call %d: %+v, want offload %v and the same config", i, c, tc.calls[i])
				}
			}
			if (tc.note == "") != (note == "") || !strings.Contains(note, tc.note) {
				t.Errorf("note %q, want one saying %q", note, tc.note)
			}
			if tc.err == nil && (err != nil || info == nil) {
				t.Errorf("setUp: %v", err)
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("setUp: %v, want %v", err, tc.err)
			}
		})
	}
}
