package store

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// serviceLock is the first key of the advisory lock of one service; the
// second is hashtext(serviceKey), and a collision only makes two services
// wait for each other. PutService and DeleteService hold it exclusively:
// their read-then-write of the row and its tombstone must not interleave
// across replicas, or two replicas could give one generation to two
// definitions. Opens with a precondition hold it shared (see
// CreateSession). ("svc" in ASCII.)
const serviceLock int32 = 0x737663

// PutService implements targets.Store, as SQLite's. UpdatedAt is set to the
// time of the write; an unchanged definition is not written and keeps its
// UpdatedAt.
func (s *Postgres) PutService(ctx context.Context, svc targets.Service) (targets.Service, bool, error) {
	if s.closed() {
		return targets.Service{}, false, errClosed()
	}
	var (
		saved   targets.Service
		changed bool
	)
	now := lease.Millis(s.now())
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockService(ctx, tx, svc.TenantID, svc.Name); err != nil {
			return err
		}
		old, err := scanService(tx.QueryRow(ctx, `SELECT `+serviceColumns+` FROM services
			WHERE tenant_id = $1 AND name = $2`, svc.TenantID, svc.Name))
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			var last int64
			err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(generation), 0) FROM service_tombstones
				WHERE tenant_id = $1 AND name = $2`, svc.TenantID, svc.Name).Scan(&last)
			if err != nil {
				return err
			}
			svc.Generation = last + 1
		case err != nil:
			return err
		case old.SameDefinition(svc):
			saved, changed = old, false
			return nil
		default:
			svc.Generation = old.Generation + 1
		}
		svc.UpdatedAt = now
		if _, err := tx.Exec(ctx, `INSERT INTO services (`+serviceColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (tenant_id, name) DO UPDATE SET kind = excluded.kind, sandbox = excluded.sandbox,
				url = excluded.url, dynamic = excluded.dynamic, generation = excluded.generation,
				updated_at = excluded.updated_at`,
			svc.TenantID, svc.Name, string(svc.Kind), svc.Sandbox, svc.URL, svc.Dynamic, svc.Generation, ms(now)); err != nil {
			return err
		}
		saved, changed = svc, true
		return nil
	})
	if err != nil {
		return targets.Service{}, false, pgErr(err, "put service "+svc.Name)
	}
	return saved, changed, nil
}

// GetService implements targets.Store.
func (s *Postgres) GetService(ctx context.Context, tenantID, name string) (targets.Service, error) {
	if s.closed() {
		return targets.Service{}, errClosed()
	}
	svc, err := scanService(s.pool.QueryRow(ctx, `SELECT `+serviceColumns+` FROM services
		WHERE tenant_id = $1 AND name = $2`, tenantID, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return targets.Service{}, problem.New(problem.NotFound, "service %s not found", name)
	}
	if err != nil {
		return targets.Service{}, pgErr(err, "get service "+name)
	}
	return svc, nil
}

// ListServices implements targets.Store.
func (s *Postgres) ListServices(ctx context.Context, tenantID string) ([]targets.Service, error) {
	if s.closed() {
		return nil, errClosed()
	}
	rows, err := s.pool.Query(ctx, `SELECT `+serviceColumns+` FROM services
		WHERE tenant_id = $1 ORDER BY name`, tenantID)
	if err != nil {
		return nil, pgErr(err, "list services")
	}
	defer rows.Close()
	out, err := scanRows(rows, scanService)
	if err != nil {
		return nil, pgErr(err, "list services")
	}
	return out, nil
}

// DeleteService implements targets.Store: the service's last generation is
// kept as a tombstone, in the same transaction.
func (s *Postgres) DeleteService(ctx context.Context, tenantID, name string) error {
	if s.closed() {
		return errClosed()
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockService(ctx, tx, tenantID, name); err != nil {
			return err
		}
		var gen int64
		err := tx.QueryRow(ctx, `DELETE FROM services WHERE tenant_id = $1 AND name = $2 RETURNING generation`,
			tenantID, name).Scan(&gen)
		if errors.Is(err, pgx.ErrNoRows) {
			return problem.New(problem.NotFound, "service %s not found", name)
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO service_tombstones (tenant_id, name, generation) VALUES ($1, $2, $3)
			ON CONFLICT (tenant_id, name) DO UPDATE SET generation = excluded.generation`, tenantID, name, gen)
		return err
	})
	return pgErr(err, "delete service "+name)
}

// lockService takes the service's advisory lock exclusively until tx ends:
// opens checking the service's generation wait (see CreateSession).
func lockService(ctx context.Context, tx pgx.Tx, tenantID, name string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, serviceLock, serviceKey(tenantID, name))
	return err
}

// pgLockServiceShared takes the service's advisory lock shared until the
// transaction ends.
const pgLockServiceShared = `SELECT pg_advisory_xact_lock_shared($1, hashtext($2))`

// serviceKey is what the second key of a service's advisory lock hashes.
func serviceKey(tenantID, name string) string { return tenantID + "/" + name }

// pgCreateSandbox inserts a sandbox at generation 1, or replaces a stopped
// one at its generation plus one, atomically: it returns no row when a live
// sandbox has the id. Two replicas creating one id at once cannot both
// succeed: ON CONFLICT waits for the other insert and then sees its row.
// A replaced stopped sandbox keeps its uid (the update leaves it).
const pgCreateSandbox = `INSERT INTO sandboxes AS sb (` + sandboxColumns + `)
	VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $13, '')
	ON CONFLICT (tenant_id, id) DO UPDATE SET state = excluded.state, generation = sb.generation + 1,
		command = excluded.command, tty = excluded.tty, env = excluded.env, root = excluded.root,
		error = excluded.error, updated_at = excluded.updated_at,
		memory_bytes = excluded.memory_bytes, pids = excluded.pids, cpus = excluded.cpus,
		network = excluded.network, reason = excluded.reason
	WHERE sb.state = 'stopped'
	RETURNING generation, uid`

// CreateSandbox implements targets.Store. An empty State is stored as
// pending; UpdatedAt is set to the time of the write.
func (s *Postgres) CreateSandbox(ctx context.Context, sb targets.Sandbox) (targets.Sandbox, error) {
	if s.closed() {
		return targets.Sandbox{}, errClosed()
	}
	command, err := json.Marshal(sb.Command)
	if err != nil {
		return targets.Sandbox{}, pgErr(err, "encode command")
	}
	env, err := json.Marshal(sb.Env)
	if err != nil {
		return targets.Sandbox{}, pgErr(err, "encode env")
	}
	if sb.State == "" {
		sb.State = targets.Pending
	}
	sb.Reason, sb.Usage = "", nil // neither is the caller's to store
	sb.UpdatedAt = lease.Millis(s.now())
	err = s.pool.QueryRow(ctx, pgCreateSandbox, sb.TenantID, sb.ID, string(sb.State), string(command), sb.TTY,
		string(env), sb.Root, sb.Error, ms(sb.UpdatedAt),
		int64(sb.Resources.Memory), sb.Resources.PIDs, sb.Resources.CPUs, string(sb.Network)).Scan(&sb.Generation, &sb.UID)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || pgCode(err) == "23505": // unique_violation: a live one exists
		var state string
		if err := s.pool.QueryRow(ctx, `SELECT state FROM sandboxes WHERE tenant_id = $1 AND id = $2`,
			sb.TenantID, sb.ID).Scan(&state); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return targets.Sandbox{}, pgErr(err, "read sandbox "+sb.ID)
		}
		return targets.Sandbox{}, problem.New(problem.AlreadyExists, "sandbox %s already exists", sb.ID).With("state", state)
	case err != nil:
		return targets.Sandbox{}, pgErr(err, "create sandbox "+sb.ID)
	}
	return sb, nil
}

// SetSandboxState implements targets.Store. reason is kept as Error only
// for failed; any other state clears Error. Reason is cleared. UpdatedAt is
// set to now.
func (s *Postgres) SetSandboxState(ctx context.Context, tenantID, id string, state targets.SandboxState, reason string) (targets.Sandbox, error) {
	if state != targets.Failed {
		reason = ""
	}
	return s.setSandboxStatus(ctx, tenantID, id, state, reason, "")
}

// SetSandboxExit implements targets.Store. UpdatedAt is set to now.
func (s *Postgres) SetSandboxExit(ctx context.Context, tenantID, id string, errMsg string, reason targets.ExitReason) (targets.Sandbox, error) {
	return s.setSandboxStatus(ctx, tenantID, id, targets.Failed, errMsg, reason)
}

// setSandboxStatus writes a sandbox's state, error and exit reason in one
// statement, as SQLite's.
func (s *Postgres) setSandboxStatus(ctx context.Context, tenantID, id string, state targets.SandboxState, errMsg string, reason targets.ExitReason) (targets.Sandbox, error) {
	if s.closed() {
		return targets.Sandbox{}, errClosed()
	}
	now := lease.Millis(s.now())
	sb, err := scanSandbox(s.pool.QueryRow(ctx, `UPDATE sandboxes SET state = $1, error = $2, reason = $3, updated_at = $4
		WHERE tenant_id = $5 AND id = $6 RETURNING `+sandboxColumns,
		string(state), errMsg, string(reason), ms(now), tenantID, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return targets.Sandbox{}, sandboxNotFound(id)
	}
	if err != nil {
		return targets.Sandbox{}, pgErr(err, "set sandbox state "+id)
	}
	return sb, nil
}

// SetSandboxUID implements targets.Store. The unique index decides between
// replicas racing for one id: the loser gets AlreadyExists.
func (s *Postgres) SetSandboxUID(ctx context.Context, tenantID, id string, uid uint32) (targets.Sandbox, error) {
	if s.closed() {
		return targets.Sandbox{}, errClosed()
	}
	sb, err := scanSandbox(s.pool.QueryRow(ctx, `UPDATE sandboxes SET uid = $1
		WHERE tenant_id = $2 AND id = $3 RETURNING `+sandboxColumns, int64(uid), tenantID, id))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return targets.Sandbox{}, sandboxNotFound(id)
	case pgCode(err) == "23505": // unique_violation
		return targets.Sandbox{}, uidTaken(uid)
	case err != nil:
		return targets.Sandbox{}, pgErr(err, "set sandbox uid "+id)
	}
	return sb, nil
}

// GetSandbox implements targets.Store.
func (s *Postgres) GetSandbox(ctx context.Context, tenantID, id string) (targets.Sandbox, error) {
	if s.closed() {
		return targets.Sandbox{}, errClosed()
	}
	sb, err := scanSandbox(s.pool.QueryRow(ctx, `SELECT `+sandboxColumns+` FROM sandboxes
		WHERE tenant_id = $1 AND id = $2`, tenantID, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return targets.Sandbox{}, sandboxNotFound(id)
	}
	if err != nil {
		return targets.Sandbox{}, pgErr(err, "get sandbox "+id)
	}
	return sb, nil
}

// ListSandboxes implements targets.Store: by id, and with tenantID "" by
// tenant then id.
func (s *Postgres) ListSandboxes(ctx context.Context, tenantID string) ([]targets.Sandbox, error) {
	if s.closed() {
		return nil, errClosed()
	}
	query := `SELECT ` + sandboxColumns + ` FROM sandboxes WHERE tenant_id = $1 ORDER BY id`
	args := []any{tenantID}
	if tenantID == "" {
		query, args = `SELECT `+sandboxColumns+` FROM sandboxes ORDER BY tenant_id, id`, nil
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, pgErr(err, "list sandboxes")
	}
	defer rows.Close()
	out, err := scanRows(rows, scanSandbox)
	if err != nil {
		return nil, pgErr(err, "list sandboxes")
	}
	return out, nil
}
