// Package errs is vpnd's error catalogue: every code of the error table (docs/protocol.md),
// with its exact message and OpenHarmony's description, causes and solution.
//
// It is the single source for the daemon, the public client package and
// `vpnctl explain`, so that a code means the same thing on both ends of the
// socket. One type, *Error, carries a code, a precise detail and an optional
// wrapped cause; errors.Is matches it against the exported sentinels by code.
package errs

import (
	"errors"
	"fmt"
	"sort"
)

// Code is a numeric error code as it travels in a JSON-RPC error object.
type Code int

// The codes of the error table. The first five come from
// OpenHarmony's Network Kit ("VPN Error Codes" and the universal codes);
// the last three are JSON-RPC 2.0's own.
const (
	CodeGuestDenied    Code = 2203001
	CodeVPNExists      Code = 2203002
	CodeInvalidFD      Code = 2203004
	CodeInvalidParam   Code = 19900001
	CodeInternal       Code = 19900002
	CodePermission     Code = 201
	CodeParse          Code = -32700
	CodeInvalidRequest Code = -32600
	CodeMethodNotFound Code = -32601
)

// Entry is one row of the catalogue.
type Entry struct {
	Code Code
	// Name is OpenHarmony's heading for the code, e.g. "VPN Already Exists".
	Name string
	// Message is the exact "message" member of the JSON-RPC error object.
	Message string
	// Description says when the code is reported.
	Description string
	// Cause and Solution are OpenHarmony's "Possible Causes" and "Solution".
	Cause    string
	Solution string
}

var catalogue = map[Code]Entry{
	CodeGuestDenied: {
		Code:        CodeGuestDenied,
		Name:        "Failed to Create a VPN",
		Message:     "VPN creation denied. Check the user type.",
		Description: "This error code is reported if a VPN fails to be created.",
		Cause:       "The login user does not have the operation permission. Specifically, the GUEST user does not have the permission to call the setUp API.",
		Solution:    "Check the type of the login user.",
	},
	CodeVPNExists: {
		Code:        CodeVPNExists,
		Name:        "VPN Already Exists",
		Message:     "VPN already exists.",
		Description: "This error code is reported if a VPN already exists.",
		Cause:       "The VPN has been created.",
		Solution:    "Call the destroy API to destroy the existing VPN, and then call the setUp API.",
	},
	CodeInvalidFD: {
		Code:        CodeInvalidFD,
		Name:        "Invalid Descriptor",
		Message:     "Invalid socket file descriptor.",
		Description: "This error code is reported if the socket file descriptor is invalid.",
		Cause:       "A TCP socket connection fails to be established.",
		Solution:    "Check whether a TCP socket connection is set up successfully.",
	},
	CodeInvalidParam: {
		Code:        CodeInvalidParam,
		Name:        "Invalid Parameter",
		Message:     "Invalid parameter value.",
		Description: "This error code is reported if one or more parameters are invalid.",
		Cause:       "The type or number of parameters is incorrect.",
		Solution:    "Check the type and number of parameters.",
	},
	CodeInternal: {
		Code:        CodeInternal,
		Name:        "System Internal Error",
		Message:     "System internal error.",
		Description: "This error code is reported if an internal system error occurs.",
		Cause:       "An internal error is probably due to a null pointer, memory allocation error, or IPC communication error.",
		Solution:    "Check whether the VPN service is normal.",
	},
	CodePermission: {
		Code:        CodePermission,
		Name:        "Permission Denied",
		Message:     "Permission denied.",
		Description: "This error code is reported if the caller is not allowed to perform the operation.",
		Cause:       "The caller neither owns the current VPN nor is an ADMIN account, is a GUEST calling protect, is not ADMIN and names other users in its application lists or uses VPN addresses outside its address pools or overlapping the host's networks, asks for offload where vpnd does not allow it to the caller, or calls setLockdown without being ADMIN.",
		Solution:    "Call the API as the user that owns the VPN, or as an ADMIN account.",
	},
	CodeParse: {
		Code:        CodeParse,
		Name:        "Parse Error",
		Message:     "Parse error.",
		Description: "This error code is reported if a message is not valid JSON.",
		Cause:       "The line is not a JSON value, is not valid UTF-8, or is longer than 4 MiB.",
		Solution:    "Send one compact JSON object per line, terminated by a newline.",
	},
	CodeInvalidRequest: {
		Code:        CodeInvalidRequest,
		Name:        "Invalid Request",
		Message:     "Invalid request.",
		Description: "This error code is reported if a message is JSON but not a JSON-RPC 2.0 request object.",
		Cause:       "The message is not a JSON object, its \"jsonrpc\" member is not \"2.0\", \"method\" is missing, empty or not a string, \"id\" is not a string, number or null, or \"fds\" does not match the descriptors sent.",
		Solution:    "Send a JSON-RPC 2.0 request object: \"jsonrpc\":\"2.0\", a method name, and \"fds\" only for descriptors really sent.",
	},
	CodeMethodNotFound: {
		Code:        CodeMethodNotFound,
		Name:        "Method Not Found",
		Message:     "Method not found.",
		Description: "This error code is reported if the method does not exist.",
		Cause:       "The method name is misspelt or not supported by this vpnd.",
		Solution:    "Use one of setUp, create, protect, destroy, status, subscribe or setLockdown.",
	},
}

// Lookup returns the catalogue entry for c.
func Lookup(c Code) (Entry, bool) {
	e, ok := catalogue[c]
	return e, ok
}

// Codes returns every catalogued code in ascending order.
func Codes() []Code {
	cs := make([]Code, 0, len(catalogue))
	for c := range catalogue {
		cs = append(cs, c)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i] < cs[j] })
	return cs
}

// Message returns the exact message for c, or a generic text for
// a code the catalogue does not know (one a newer vpnd might send).
func (c Code) Message() string {
	if e, ok := catalogue[c]; ok {
		return e.Message
	}
	return fmt.Sprintf("error %d", int(c))
}

// Error is the one error type of vpnd. Code decides what the caller sees;
// Detail says precisely what was wrong ("routes[3]: prefix length 33 out of
// range 0-32"); Err, if set, is the underlying cause kept for logs and
// errors.Is/As.
type Error struct {
	Code   Code
	Detail string
	Err    error
}

// New returns an *Error with the given code and a formatted detail.
func New(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Detail: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error with code c that wraps err. The detail is
// err.Error() prefixed with context, if given.
func Wrap(c Code, err error, context string) *Error {
	d := err.Error()
	if context != "" {
		d = context + ": " + d
	}
	return &Error{Code: c, Detail: d, Err: err}
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("%d %s", int(e.Code), e.Code.Message())
	}
	return fmt.Sprintf("%d %s (%s)", int(e.Code), e.Code.Message(), e.Detail)
}

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, errs.ErrVPNExists) holds whatever the detail.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels, one per code, for errors.Is. They carry no detail.
var (
	ErrGuestDenied    = &Error{Code: CodeGuestDenied}
	ErrVPNExists      = &Error{Code: CodeVPNExists}
	ErrInvalidFD      = &Error{Code: CodeInvalidFD}
	ErrInvalidParam   = &Error{Code: CodeInvalidParam}
	ErrInternal       = &Error{Code: CodeInternal}
	ErrPermission     = &Error{Code: CodePermission}
	ErrParse          = &Error{Code: CodeParse}
	ErrInvalidRequest = &Error{Code: CodeInvalidRequest}
	ErrMethodNotFound = &Error{Code: CodeMethodNotFound}
)

// CodeOf returns the code of the first *Error in err's chain, and
// CodeInternal for any other non-nil error: an error vpnd did not classify
// is by definition an internal one.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
