package authn

import (
	"errors"
	"slices"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nimbus/gateway/problem"
)

// Causes reported by key lookup. They end up in problem.Error.Err (logged,
// never sent) and pick the detail a client sees.
var (
	errUnknownKID  = errors.New("kid names no configured key")
	errBadKID      = errors.New("kid header is not a non-empty string")
	errNoKID       = errors.New("kid header is required")
	errKeyMismatch = errors.New("kid names a key of another family than alg")
	errNoKey       = errors.New("no configured key fits alg")
	errTooLong     = errors.New("token exceeds the size limit")
)

// maxTokenLen bounds the work an unauthenticated caller can make us do:
// real tokens are well under 2 KiB, and a header of many MiB would otherwise
// be base64- and JSON-decoded before any signature is checked.
const maxTokenLen = 16 << 10

// unauthenticated is the single way verification fails: a short detail for
// the client and the cause for the log. Details are fixed strings, so a
// token (a bearer credential) can never leak into a response or a log line.
func unauthenticated(detail string, cause error) *problem.Error {
	return problem.Wrap(problem.Unauthenticated, cause, detail)
}

// rejectParse maps a jwt parse error to a problem. noun is "token" or
// "connect token"; tok and the claim checks come from the failed parse and
// may be partially filled; algs is the allow-list the parser used.
func rejectParse(noun string, tok *jwt.Token, err error, algs []string, hasExp, hasAud bool) *problem.Error {
	detail := noun + " is invalid"
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		detail = "malformed " + noun
	case tok == nil || tok.Method == nil || !slices.Contains(algs, tok.Method.Alg()):
		// jwt reports a disallowed alg as a bad signature and an unknown
		// one as unverifiable; both mean the same thing to a client.
		detail = noun + " algorithm not allowed"
	case errors.Is(err, errUnknownKID), errors.Is(err, errBadKID), errors.Is(err, errNoKID),
		errors.Is(err, errKeyMismatch), errors.Is(err, errNoKey):
		detail = noun + " signed with an unknown key"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		detail = noun + " signature is invalid"
	case !hasExp:
		detail = noun + " has no expiry"
	case errors.Is(err, jwt.ErrTokenExpired):
		detail = noun + " has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		detail = noun + " is not valid yet"
	case !hasAud, errors.Is(err, jwt.ErrTokenInvalidAudience):
		detail = noun + " is meant for another audience"
	}
	return unauthenticated(detail, err)
}
