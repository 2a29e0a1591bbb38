package server

import (
	"encoding/json"
	"testing"

	"github.com/vpnd/vpnd/internal/errs"
)

// FuzzDecode feeds arbitrary lines to the envelope decoder: it must never
// panic, must answer with a JSON-RPC error code of the protocol, and a
// line it accepts must really be a JSON-RPC 2.0 request.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"setUp","params":{"addresses":["10.8.0.2/24"]}}`,
		`{"jsonrpc":"2.0","method":"destroy"}`,
		`{"jsonrpc":"2.0","id":"x","method":"protect","params":{},"fds":1}`,
		`{"jsonrpc":"1.0","id":1,"method":"status"}`,
		`[1,2,3]`, `{`, "\xff", `{"id":{},"jsonrpc":"2.0","method":"status"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := decode(line, nil)
		if err != nil {
			switch errs.CodeOf(err) {
			case errs.CodeParse, errs.CodeInvalidRequest:
			default:
				t.Fatalf("decode error with code %d: %v", errs.CodeOf(err), err)
			}
			return
		}
		// Exact member names: encoding/json's struct matching would also
		// take "METHOD".
		var env map[string]json.RawMessage
		var version, method string
		if json.Unmarshal(line, &env) != nil || json.Unmarshal(env["jsonrpc"], &version) != nil ||
			json.Unmarshal(env["method"], &method) != nil || version != "2.0" || method == "" || method != req.method {
			t.Fatalf("accepted %q as %+v", line, req)
		}
		if !req.notifies && !json.Valid(req.id) {
			t.Fatalf("accepted an invalid id %q", req.id)
		}
		_ = emptyParams(req.params)
	})
}
