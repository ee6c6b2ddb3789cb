package client

import (
	"errors"
	"net/url"
	"strings"
)

// redactedError is an error whose text had a signed URL's query replaced;
// it unwraps to the cause below the *url.Error, so errors.Is still finds
// context.Canceled, a *net.OpError and the like.
type redactedError struct {
	msg   string
	cause error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.cause }

// redactURLError keeps a connect URL's bearer token out of an error from
// net/http or the WebSocket dialer: their text quotes the request URL,
// query included, and callers print it (the CLI writes it to stderr).
func redactURLError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(err.Error(), ue.URL, redactURL(ue.URL)), cause: ue.Err}
}

// redactURL replaces the value of every query parameter of raw with
// "REDACTED": a connect URL's only parameter is its token.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	if u.RawQuery == "" {
		return raw
	}
	q := u.Query()
	for k := range q {
		q.Set(k, "REDACTED")
	}
	u.RawQuery = q.Encode()
	return u.String()
}
