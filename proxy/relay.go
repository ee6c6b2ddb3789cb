package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
)

// Connects to a session whose backends run on another replica (its owner)
// are relayed there: the client's connect URL works on any replica behind
// the load balancer. The relay authenticates itself to the owner with a
// short-lived token signed by the shared connect keys, for the pseudo
// channel "relay" — useless as a connect token — so the owner knows the
// request was relayed and never relays it again.

const (
	relayChannel = "relay"
	relayHeader  = "X-Nimbus-Relay"
	relayTTL     = time.Minute
	// maxRelayMessage matches the largest message of any channel (CDP).
	maxRelayMessage = 256 << 20
)

// isRemote reports whether sess's backends run on another replica.
func (s *Server) isRemote(sess *lease.Session) bool {
	return sess.Owner != "" && sess.Owner != s.publicURL
}

// relayed reports whether r came from another replica's relay, with a
// valid relay token for this session.
func (s *Server) relayed(r *http.Request, sessionID string) bool {
	tok := r.Header.Get(relayHeader)
	if tok == "" {
		return false
	}
	_, err := s.connectKeys.VerifyFor(tok, sessionID, relayChannel)
	return err == nil
}

func (s *Server) relayToken(sess *lease.Session) (string, error) {
	exp := s.now().Add(relayTTL)
	if sess.ExpiresAt.Before(exp) {
		exp = sess.ExpiresAt
	}
	return s.connectKeys.Sign(authn.ConnectClaims{SessionID: sess.ID, Tenant: sess.TenantID, Channel: relayChannel, ExpiresAt: exp})
}

// attachRelay dials the owner's connect endpoint for the same request,
// before the client is upgraded: an owner that refuses answers the client
// with its own problem, and an unreachable one is 502.
func (s *Server) attachRelay(r *http.Request, sess *lease.Session) (backend, error) {
	if s.relayed(r, sess.ID) {
		// A relayed request for a session this replica does not own: the
		// replicas disagree about who owns what. Never relay twice.
		return nil, problem.New(problem.BadGateway, "session %s is owned by %s, not this replica", sess.ID, sess.Owner)
	}
	tok, err := s.relayToken(sess)
	if err != nil {
		return nil, problem.Wrap(problem.Internal, err, "signing a relay token failed")
	}
	target := wsURL(sess.Owner) + r.URL.RequestURI()
	h := http.Header{}
	h.Set(relayHeader, tok)
	var protos []string
	for _, p := range strings.Split(r.Header.Get("Sec-WebSocket-Protocol"), ",") {
		if p = strings.TrimSpace(p); p != "" {
			protos = append(protos, p)
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	up, resp, err := websocket.Dial(ctx, target, &websocket.DialOptions{
		HTTPHeader: h, Subprotocols: protos, CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil {
			if pe := ownerProblem(resp); pe != nil {
				return nil, pe
			}
		}
		return nil, problem.Wrap(problem.BadGateway, dialCause(err), "the replica that runs this session's target is unreachable").
			With("owner", sess.Owner)
	}
	up.SetReadLimit(maxRelayMessage)
	return &relayBackend{up: up}, nil
}

// ownerProblem turns the owner's problem+json refusal into ours, so the
// client sees the same code, and Retry-After, as if it had reached the
// owner directly.
func ownerProblem(resp *http.Response) *problem.Error {
	if resp.Body == nil {
		return nil
	}
	defer resp.Body.Close()
	var body struct {
		Code    problem.Code   `json:"code"`
		Detail  string         `json:"detail"`
		Details map[string]any `json:"details"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &body) != nil || body.Code == "" {
		return nil
	}
	pe := &problem.Error{Code: body.Code, Detail: body.Detail, Details: body.Details}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
		pe.RetryAfter = time.Duration(secs) * time.Second
	}
	return pe
}

// relayBackend carries a client's connection to the owner's: a
// channels.Pipe, frame by frame both ways, that passes the owner's close
// code through.
type relayBackend struct {
	up *websocket.Conn
}

func (b *relayBackend) protocols() []string {
	if p := b.up.Subprotocol(); p != "" {
		return []string{p}
	}
	return nil
}

func (b *relayBackend) release() { _ = b.up.CloseNow() }

func (b *relayBackend) serve(ctx context.Context, conn *websocket.Conn) error {
	conn.SetReadLimit(maxRelayMessage)
	return channels.Pipe(ctx, conn, channels.WebSocketFar(b.up), channels.PipeOptions{})
}

// proxyToOwner forwards a plain HTTP request of a session (the files
// channel's HTTP face, CDP discovery) to the replica that owns it.
func (s *Server) proxyToOwner(w http.ResponseWriter, r *http.Request, sess *lease.Session) {
	if s.relayed(r, sess.ID) {
		s.writeError(w, r, problem.New(problem.BadGateway, "session %s is owned by %s, not this replica", sess.ID, sess.Owner))
		return
	}
	owner, err := url.Parse(sess.Owner)
	if err != nil {
		s.writeError(w, r, problem.Wrap(problem.Internal, err, "bad owner URL"))
		return
	}
	tok, err := s.relayToken(sess)
	if err != nil {
		s.writeError(w, r, problem.Wrap(problem.Internal, err, "signing a relay token failed"))
		return
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(owner)
			pr.Out.URL.Path, pr.Out.URL.RawPath = r.URL.Path, r.URL.RawPath
			pr.Out.Header.Set(relayHeader, tok)
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.writeError(w, r, problem.Wrap(problem.BadGateway, dialCause(err), "the replica that runs this session's target is unreachable"))
		},
	}
	rp.ServeHTTP(w, r)
}

// dialCause strips the *url.Error layer off a failed dial to the owner:
// its text quotes the connect URL, token included, and a problem's cause
// may be logged.
func dialCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("dial owner replica: %w", ue.Err)
	}
	return err
}
