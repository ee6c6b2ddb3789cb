package targets

import (
	"context"
	"slices"
	"strings"
	"sync"

	"github.com/nimbus/gateway/problem"
)

// memStore is an in-memory Store for the tests, with the contract's
// generation and error rules.
type memStore struct {
	mu        sync.Mutex
	services  map[[2]string]Service
	sandboxes map[[2]string]Sandbox
}

var _ Store = (*memStore)(nil)

func newMemStore() *memStore {
	return &memStore{services: map[[2]string]Service{}, sandboxes: map[[2]string]Sandbox{}}
}

func (m *memStore) PutService(_ context.Context, s Service) (Service, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{s.TenantID, s.Name}
	old, ok := m.services[k]
	switch {
	case !ok:
		s.Generation = 1
	case old.SameDefinition(s):
		return old, false, nil
	default:
		s.Generation = old.Generation + 1
	}
	m.services[k] = s
	return s, true, nil
}

func (m *memStore) GetService(_ context.Context, tenantID, name string) (Service, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.services[[2]string{tenantID, name}]
	if !ok {
		return Service{}, problem.New(problem.NotFound, "no service %q", name)
	}
	return s, nil
}

func (m *memStore) ListServices(_ context.Context, tenantID string) ([]Service, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Service
	for k, s := range m.services {
		if k[0] == tenantID {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b Service) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (m *memStore) DeleteService(_ context.Context, tenantID, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{tenantID, name}
	if _, ok := m.services[k]; !ok {
		return problem.New(problem.NotFound, "no service %q", name)
	}
	delete(m.services, k)
	return nil
}

func (m *memStore) CreateSandbox(_ context.Context, sb Sandbox) (Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{sb.TenantID, sb.ID}
	sb.Generation, sb.UID, sb.Reason, sb.Usage = 1, 0, "", nil
	if old, ok := m.sandboxes[k]; ok {
		if old.State != Stopped {
			return Sandbox{}, problem.New(problem.AlreadyExists, "sandbox %q exists", sb.ID)
		}
		sb.Generation, sb.UID = old.Generation+1, old.UID
	}
	m.sandboxes[k] = sb
	return sb, nil
}

func (m *memStore) SetSandboxUID(_ context.Context, tenantID, id string, uid uint32) (Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{tenantID, id}
	sb, ok := m.sandboxes[k]
	if !ok {
		return Sandbox{}, problem.New(problem.NotFound, "no sandbox %q", id)
	}
	for ok, o := range m.sandboxes {
		if uid != 0 && o.UID == uid && ok != k {
			return Sandbox{}, problem.New(problem.AlreadyExists, "uid %d is %s's", uid, o.ID)
		}
	}
	sb.UID = uid
	m.sandboxes[k] = sb
	return sb, nil
}

func (m *memStore) SetSandboxState(_ context.Context, tenantID, id string, state SandboxState, reason string) (Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{tenantID, id}
	sb, ok := m.sandboxes[k]
	if !ok {
		return Sandbox{}, problem.New(problem.NotFound, "no sandbox %q", id)
	}
	sb.State, sb.Error, sb.Reason = state, "", ""
	if state == Failed {
		sb.Error = reason
	}
	m.sandboxes[k] = sb
	return sb, nil
}

func (m *memStore) SetSandboxExit(_ context.Context, tenantID, id string, errMsg string, reason ExitReason) (Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{tenantID, id}
	sb, ok := m.sandboxes[k]
	if !ok {
		return Sandbox{}, problem.New(problem.NotFound, "no sandbox %q", id)
	}
	sb.State, sb.Error, sb.Reason = Failed, errMsg, reason
	m.sandboxes[k] = sb
	return sb, nil
}

func (m *memStore) GetSandbox(_ context.Context, tenantID, id string) (Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, ok := m.sandboxes[[2]string{tenantID, id}]
	if !ok {
		return Sandbox{}, problem.New(problem.NotFound, "no sandbox %q", id)
	}
	return sb, nil
}

func (m *memStore) ListSandboxes(_ context.Context, tenantID string) ([]Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Sandbox
	for k, sb := range m.sandboxes {
		if tenantID == "" || k[0] == tenantID {
			out = append(out, sb)
		}
	}
	slices.SortFunc(out, func(a, b Sandbox) int {
		if c := strings.Compare(a.TenantID, b.TenantID); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}
