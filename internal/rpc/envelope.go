package rpc

import (
	"bytes"
	"encoding/json"
	"errors"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Envelope is what the wire and the server need of a line: whether it is
// JSON at all, whether it is an object, and the raw values of the
// JSON-RPC members.
type Envelope struct {
	// JSON reports whether the line is valid JSON.
	JSON bool
	// Object reports whether it is a JSON object; the members below are
	// nil otherwise.
	Object bool
	// The raw values of "jsonrpc", "id", "method", "params" and "fds",
	// nil when absent. As with encoding/json, the last of repeated
	// members wins and keys are compared after unescaping; unlike
	// encoding/json's struct fields, exactly (case-sensitive). Other
	// members are skipped.
	JSONRPC, ID, Method, Params, FDs json.RawMessage
}

// envelopeMembers are the members an Envelope holds, as encoding/json/v2
// (go-json-experiment/json) decodes them: names matched exactly, the
// others skipped without building anything, so that a 4 MiB line of
// 340,000 members costs a scan (decoding it into a map took ten times
// the line).
type envelopeMembers struct {
	JSONRPC jsontext.Value `json:"jsonrpc"`
	ID      jsontext.Value `json:"id"`
	Method  jsontext.Value `json:"method"`
	Params  jsontext.Value `json:"params"`
	FDs     jsontext.Value `json:"fds"`
}

// envelopeOptions make v2 accept what encoding/json accepts: repeated
// names (the last wins) and invalid UTF-8 (the server refuses it with
// its own error; the fds of such a line are still claimed).
var envelopeOptions = jsonv2.JoinOptions(jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))

// ParseEnvelope finds line's envelope.
func ParseEnvelope(line []byte) Envelope {
	var m envelopeMembers
	err := jsonv2.Unmarshal(line, &m, envelopeOptions)
	if err != nil {
		// Not JSON, or JSON but not an object.
		var syntax *jsontext.SyntacticError
		return Envelope{JSON: !errors.As(err, &syntax) && json.Valid(line)}
	}
	if bytes.TrimLeft(line, " \t\r\n")[0] != '{' {
		return Envelope{JSON: true} // null, which v2 decodes into a struct as nothing
	}
	return Envelope{JSON: true, Object: true,
		JSONRPC: json.RawMessage(m.JSONRPC), ID: json.RawMessage(m.ID), Method: json.RawMessage(m.Method),
		Params: json.RawMessage(m.Params), FDs: json.RawMessage(m.FDs)}
}
