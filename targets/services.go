package targets

import (
	"context"

	"go.uber.org/zap"
)

// PutService creates or replaces a service definition (admin API, SPEC
// §4.3) after validating it: InvalidArgument naming the field for a bad
// tenant, name or kind, a sandbox service without `sandbox`, an external
// one without an absolute http(s) `url`, or a field its kind does not take.
// The sandbox a service names need not exist yet (opens on it are NotFound
// until it does). Generation and UpdatedAt are assigned here and by the
// store: an unchanged definition keeps its generation, a changed one gets
// the next.
func (c *Catalog) PutService(ctx context.Context, s Service) (Service, error) {
	if err := validateService("", s); err != nil {
		return Service{}, err
	}
	s.Generation = 0
	s.UpdatedAt = c.now()
	saved, changed, err := c.store.PutService(ctx, s)
	if err != nil {
		return Service{}, err
	}
	if changed {
		c.log.Info("service defined", zap.String("tenant", saved.TenantID), zap.String("service", saved.Name),
			zap.String("kind", string(saved.Kind)), zap.Int64("generation", saved.Generation))
	}
	return saved, nil
}

// GetService returns a service; NotFound when the tenant has none of that
// name.
func (c *Catalog) GetService(ctx context.Context, tenantID, name string) (Service, error) {
	if err := checkName("tenant", tenantID); err != nil {
		return Service{}, err
	}
	if err := checkName("name", name); err != nil {
		return Service{}, err
	}
	return c.store.GetService(ctx, tenantID, name)
}

// ListServices returns the tenant's services by name (empty, not nil, for
// none).
func (c *Catalog) ListServices(ctx context.Context, tenantID string) ([]Service, error) {
	if err := checkName("tenant", tenantID); err != nil {
		return nil, err
	}
	svcs, err := c.store.ListServices(ctx, tenantID)
	if svcs == nil && err == nil {
		svcs = []Service{}
	}
	return svcs, err
}

// DeleteService removes a service; NotFound when it does not exist.
// Sessions already open on it are not affected.
func (c *Catalog) DeleteService(ctx context.Context, tenantID, name string) error {
	if err := checkName("tenant", tenantID); err != nil {
		return err
	}
	if err := checkName("name", name); err != nil {
		return err
	}
	if err := c.store.DeleteService(ctx, tenantID, name); err != nil {
		return err
	}
	c.log.Info("service deleted", zap.String("tenant", tenantID), zap.String("service", name))
	return nil
}
