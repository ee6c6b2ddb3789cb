package proxy

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/nimbus/gateway/authn"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/targets"
)

// serviceJSON is a catalog service as the admin API shows it.
type serviceJSON struct {
	Name       string       `json:"name"`
	Kind       targets.Kind `json:"kind"`
	Sandbox    string       `json:"sandbox,omitempty"`
	URL        string       `json:"url,omitempty"`
	Dynamic    bool         `json:"dynamic"`
	Generation int64        `json:"generation"`
	UpdatedAt  string       `json:"updatedAt"`
}

func renderService(s targets.Service) serviceJSON {
	return serviceJSON{Name: s.Name, Kind: s.Kind, Sandbox: s.Sandbox, URL: s.URL, Dynamic: s.Dynamic,
		Generation: s.Generation, UpdatedAt: formatTime(s.UpdatedAt)}
}

// sandboxJSON is a sandbox as the admin API shows it. The file root is a
// path on the gateway's host and stays out of it.
type sandboxJSON struct {
	ID         string               `json:"id"`
	State      targets.SandboxState `json:"state"`
	Generation int64                `json:"generation"`
	Command    []string             `json:"command"`
	TTY        bool                 `json:"tty"`
	Env        []string             `json:"env,omitempty"`
	// Resources are the limits as asked for; an absent field is the
	// gateway's default.
	Resources targets.Resources `json:"resources"`
	Network   targets.Network   `json:"network"`
	Error     string            `json:"error,omitempty"`
	// Status is what the gateway observed of the workload (SPEC §9.2),
	// apart from the definition above.
	Status    sandboxStatusJSON `json:"status"`
	UpdatedAt string            `json:"updatedAt"`
}

// sandboxStatusJSON is a sandbox's status: how its workload last ended
// and what it uses now (only while it runs under cgroups).
type sandboxStatusJSON struct {
	Reason targets.ExitReason `json:"reason,omitempty"`
	Usage  *targets.Usage     `json:"usage,omitempty"`
}

func renderSandbox(sb targets.Sandbox) sandboxJSON {
	network := sb.Network
	if network == "" {
		network = targets.NetworkNone // what "" runs as (SPEC §9.3)
	}
	return sandboxJSON{ID: sb.ID, State: sb.State, Generation: sb.Generation, Command: sb.Command,
		TTY: sb.TTY, Env: sb.Env, Resources: sb.Resources, Network: network, Error: sb.Error,
		Status: sandboxStatusJSON{Reason: sb.Reason, Usage: sb.Usage}, UpdatedAt: formatTime(sb.UpdatedAt)}
}

// resourcesRequest is a sandbox's resources as a create request gives
// them. Memory is read by hand: encoding/json returns the error of
// Bytes.UnmarshalJSON bare, without the field's path, which would leave a
// client with "malformed JSON" and no field to fix.
type resourcesRequest struct {
	Memory json.RawMessage `json:"memory"`
	PIDs   int64           `json:"pids"`
	CPUs   float64         `json:"cpus"`
}

// resources returns the limits r asks for; a memory that is not a
// quantity is invalid_argument with details.field "resources.memory".
func (r resourcesRequest) resources() (targets.Resources, error) {
	out := targets.Resources{PIDs: r.PIDs, CPUs: r.CPUs}
	if len(r.Memory) > 0 {
		if err := out.Memory.UnmarshalJSON(r.Memory); err != nil {
			return targets.Resources{}, invalid("resources.memory", "resources.memory: "+err.Error())
		}
	}
	return out, nil
}

// eventJSON is an audit event with the API's time format.
type eventJSON struct {
	lease.Event
	Time string `json:"time"`
}

func renderEvents(evs []lease.Event) []eventJSON {
	out := make([]eventJSON, 0, len(evs))
	for _, e := range evs {
		out = append(out, eventJSON{Event: e, Time: formatTime(e.Time)})
	}
	return out
}

type itemsJSON[T any] struct {
	Items []T `json:"items"`
}

// adminFunc is an admin handler: it runs after the admin token check and
// returns its failure for writeError.
type adminFunc func(w http.ResponseWriter, r *http.Request, p *authn.Principal) error

// admin wraps h with the admin check and the one error path.
func (s *Server) admin(h adminFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticateAdmin(r)
		if err == nil {
			err = h(w, r, p)
		}
		if err != nil {
			s.writeError(w, r, err)
		}
	}
}

func (s *Server) putService(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	var req struct {
		Kind    targets.Kind `json:"kind"`
		Sandbox string       `json:"sandbox"`
		URL     string       `json:"url"`
		Dynamic bool         `json:"dynamic"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	svc, err := s.catalog.PutService(r.Context(), targets.Service{
		TenantID: p.Tenant, Name: mux.Vars(r)["name"], Kind: req.Kind, Sandbox: req.Sandbox, URL: req.URL, Dynamic: req.Dynamic,
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderService(svc))
	return nil
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	svc, err := s.catalog.GetService(r.Context(), p.Tenant, mux.Vars(r)["name"])
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderService(svc))
	return nil
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	svcs, err := s.catalog.ListServices(r.Context(), p.Tenant)
	if err != nil {
		return err
	}
	out := itemsJSON[serviceJSON]{Items: make([]serviceJSON, 0, len(svcs))}
	for _, svc := range svcs {
		out.Items = append(out.Items, renderService(svc))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) deleteService(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	if err := s.catalog.DeleteService(r.Context(), p.Tenant, mux.Vars(r)["name"]); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	var req struct {
		ID        string           `json:"id"`
		Command   []string         `json:"command"`
		TTY       bool             `json:"tty"`
		Env       []string         `json:"env"`
		Resources resourcesRequest `json:"resources"`
		Network   targets.Network  `json:"network"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	res, err := req.Resources.resources()
	if err != nil {
		return err
	}
	sb, err := s.catalog.CreateSandbox(r.Context(), p.Tenant, targets.SandboxSpec{
		ID: req.ID, Command: req.Command, TTY: req.TTY, Env: req.Env, Resources: res, Network: req.Network,
	})
	if err != nil {
		return err
	}
	w.Header().Set("Location", r.URL.Path+"/"+sb.ID)
	writeJSON(w, http.StatusCreated, renderSandbox(sb))
	return nil
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	sb, err := s.catalog.GetSandbox(r.Context(), p.Tenant, mux.Vars(r)["id"])
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderSandbox(sb))
	return nil
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	sbs, err := s.catalog.ListSandboxes(r.Context(), p.Tenant)
	if err != nil {
		return err
	}
	out := itemsJSON[sandboxJSON]{Items: make([]sandboxJSON, 0, len(sbs))}
	for _, sb := range sbs {
		out.Items = append(out.Items, renderSandbox(sb))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	sb, err := s.catalog.DeleteSandbox(r.Context(), p.Tenant, mux.Vars(r)["id"])
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderSandbox(sb))
	return nil
}

// listAudit is GET /v1/tenants/{t}/audit?sessionId=&action=&pageSize=&pageToken=.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, p *authn.Principal) error {
	v := r.URL.Query()
	q := lease.AuditQuery{TenantID: p.Tenant, SessionID: v.Get("sessionId"), Action: lease.Action(v.Get("action"))}
	var err error
	if q.PageSize, err = pageSize(v); err != nil {
		return err
	}
	filter := q.SessionID + "|" + string(q.Action)
	if q.After, err = lease.DecodeCursor(v.Get("pageToken"), filter); err != nil {
		return err
	}
	items, next, err := s.sessions.ListAudit(r.Context(), q)
	if err != nil {
		return err
	}
	out := struct {
		Items         []eventJSON `json:"items"`
		NextPageToken string      `json:"nextPageToken,omitempty"`
	}{Items: renderEvents(items)}
	if next != nil {
		next.Filter = filter
		out.NextPageToken = next.Encode()
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
