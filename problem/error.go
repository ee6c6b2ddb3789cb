package problem

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Error is a failure with a catalog code. Packages below proxy return it so
// that proxy can answer with the right status without guessing from text.
type Error struct {
	Code   Code
	Detail string
	// Details is the machine-readable context of the problem+json body
	// (e.g. {"offered": ["stdio"]}); nil means none.
	Details map[string]any
	// RetryAfter, when positive, becomes a Retry-After header (seconds,
	// rounded up).
	RetryAfter time.Duration
	// Status, when not zero, is the HTTP status to answer instead of the
	// code's: the one code a client switches on, with the status HTTP
	// has for the case (507 Insufficient Storage for a resource_exhausted
	// full disk). Zero means the catalog's.
	Status int
	// Err is the underlying cause. It is logged, never sent to clients.
	Err error
}

// New returns an Error with a formatted detail.
func New(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Detail: fmt.Sprintf(format, args...)}
}

// Wrap returns an Error of code c whose cause is err.
func Wrap(c Code, err error, detail string) *Error {
	return &Error{Code: c, Detail: detail, Err: err}
}

// With returns e with key set in Details.
func (e *Error) With(key string, value any) *Error {
	if e.Details == nil {
		e.Details = map[string]any{}
	}
	e.Details[key] = value
	return e
}

// Error implements error.
func (e *Error) Error() string {
	s := string(e.Code)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// RetryAfterHeader is the Retry-After value for e, or "" for none.
func (e *Error) RetryAfterHeader() string {
	if e.RetryAfter <= 0 {
		return ""
	}
	secs := int64((e.RetryAfter + time.Second - 1) / time.Second)
	return strconv.FormatInt(secs, 10)
}

// From returns the *Error in err's chain, or an Internal error wrapping err
// when there is none.
func From(err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	return &Error{Code: Internal, Detail: "internal error", Err: err}
}

// HTTPStatus is the status to answer e with: Status, else the code's.
func (e *Error) HTTPStatus() int {
	if e.Status != 0 {
		return e.Status
	}
	return e.Code.Status()
}

// CodeOf returns the code of err ("" for nil).
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	return From(err).Code
}
