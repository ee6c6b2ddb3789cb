package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// Catalog writes go through the same writer as session writes: it is what
// makes CreateSession's generation check atomic with respect to PutService.

// PutService implements targets.Store. UpdatedAt is set to the time of the
// write; an unchanged definition is not written and keeps its UpdatedAt.
func (s *SQLite) PutService(ctx context.Context, svc targets.Service) (targets.Service, bool, error) {
	var (
		saved   targets.Service
		changed bool
	)
	now := lease.Millis(s.now())
	err := s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		old, err := scanService(tx.QueryRowContext(ctx, `SELECT `+serviceColumns+` FROM services
			WHERE tenant_id = ? AND name = ?`, svc.TenantID, svc.Name))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			var last int64
			err := tx.QueryRowContext(ctx, `SELECT generation FROM service_tombstones WHERE tenant_id = ? AND name = ?`,
				svc.TenantID, svc.Name).Scan(&last)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return storeErr(err, "read service tombstone "+svc.Name)
			}
			svc.Generation = last + 1
		case err != nil:
			return storeErr(err, "read service "+svc.Name)
		case old.SameDefinition(svc):
			saved, changed = old, false
			return nil
		default:
			svc.Generation = old.Generation + 1
		}
		svc.UpdatedAt = now
		if _, err := tx.ExecContext(ctx, `INSERT INTO services (`+serviceColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant_id, name) DO UPDATE SET kind = excluded.kind, sandbox = excluded.sandbox,
				url = excluded.url, dynamic = excluded.dynamic, generation = excluded.generation,
				updated_at = excluded.updated_at`,
			svc.TenantID, svc.Name, string(svc.Kind), svc.Sandbox, svc.URL, svc.Dynamic, svc.Generation, ms(now)); err != nil {
			return storeErr(err, "put service "+svc.Name)
		}
		saved, changed = svc, true
		return nil
	})
	if err != nil {
		return targets.Service{}, false, err
	}
	return saved, changed, nil
}

// GetService implements targets.Store.
func (s *SQLite) GetService(ctx context.Context, tenantID, name string) (targets.Service, error) {
	if s.closed() {
		return targets.Service{}, errClosed()
	}
	svc, err := scanService(s.queryRow(ctx, `SELECT `+serviceColumns+` FROM services
		WHERE tenant_id = ? AND name = ?`, tenantID, name))
	if errors.Is(err, sql.ErrNoRows) {
		return targets.Service{}, problem.New(problem.NotFound, "service %s not found", name)
	}
	if err != nil {
		return targets.Service{}, storeErr(err, "get service "+name)
	}
	return svc, nil
}

// ListServices implements targets.Store.
func (s *SQLite) ListServices(ctx context.Context, tenantID string) ([]targets.Service, error) {
	if s.closed() {
		return nil, errClosed()
	}
	rows, err := s.query(ctx, `SELECT `+serviceColumns+` FROM services
		WHERE tenant_id = ? ORDER BY name`, tenantID)
	if err != nil {
		return nil, storeErr(err, "list services")
	}
	defer rows.Close()
	out, err := scanRows(rows, scanService)
	if err != nil {
		return nil, storeErr(err, "list services")
	}
	return out, nil
}

// DeleteService implements targets.Store.
func (s *SQLite) DeleteService(ctx context.Context, tenantID, name string) error {
	return s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO service_tombstones (tenant_id, name, generation)
			SELECT tenant_id, name, generation FROM services WHERE tenant_id = ? AND name = ?
			ON CONFLICT (tenant_id, name) DO UPDATE SET generation = excluded.generation`, tenantID, name); err != nil {
			return storeErr(err, "delete service "+name)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM services WHERE tenant_id = ? AND name = ?`, tenantID, name)
		if err != nil {
			return storeErr(err, "delete service "+name)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err != nil {
				return storeErr(err, "delete service "+name)
			}
			return problem.New(problem.NotFound, "service %s not found", name)
		}
		return nil
	})
}

// CreateSandbox implements targets.Store. An empty State is stored as
// pending; UpdatedAt is set to the time of the write.
func (s *SQLite) CreateSandbox(ctx context.Context, sb targets.Sandbox) (targets.Sandbox, error) {
	command, err := json.Marshal(sb.Command)
	if err != nil {
		return targets.Sandbox{}, storeErr(err, "encode command")
	}
	env, err := json.Marshal(sb.Env)
	if err != nil {
		return targets.Sandbox{}, storeErr(err, "encode env")
	}
	if sb.State == "" {
		sb.State = targets.Pending
	}
	sb.Reason, sb.Usage = "", nil // neither is the caller's to store
	sb.UpdatedAt = lease.Millis(s.now())
	err = s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		var state string
		var gen int64
		var uid uint32
		err := tx.QueryRowContext(ctx, `SELECT state, generation, uid FROM sandboxes WHERE tenant_id = ? AND id = ?`,
			sb.TenantID, sb.ID).Scan(&state, &gen, &uid)
		sb.UID = uid // a replaced stopped sandbox keeps its id: the upsert leaves it
		switch {
		case errors.Is(err, sql.ErrNoRows):
			sb.Generation = 1
		case err != nil:
			return storeErr(err, "read sandbox "+sb.ID)
		case targets.SandboxState(state) == targets.Stopped:
			sb.Generation = gen + 1
		default:
			return problem.New(problem.AlreadyExists, "sandbox %s already exists", sb.ID).With("state", state)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO sandboxes (`+sandboxColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, '')
			ON CONFLICT (tenant_id, id) DO UPDATE SET state = excluded.state, generation = excluded.generation,
				command = excluded.command, tty = excluded.tty, env = excluded.env, root = excluded.root,
				error = excluded.error, updated_at = excluded.updated_at,
				memory_bytes = excluded.memory_bytes, pids = excluded.pids, cpus = excluded.cpus,
				network = excluded.network, reason = excluded.reason`,
			sb.TenantID, sb.ID, string(sb.State), sb.Generation, string(command), sb.TTY, string(env),
			sb.Root, sb.Error, ms(sb.UpdatedAt),
			int64(sb.Resources.Memory), sb.Resources.PIDs, sb.Resources.CPUs, string(sb.Network))
		return storeErr(err, "create sandbox "+sb.ID)
	})
	if err != nil {
		return targets.Sandbox{}, err
	}
	return sb, nil
}

// SetSandboxState implements targets.Store. reason is kept as Error only
// for failed; any other state clears Error. Reason is cleared. UpdatedAt is
// set to now.
func (s *SQLite) SetSandboxState(ctx context.Context, tenantID, id string, state targets.SandboxState, reason string) (targets.Sandbox, error) {
	if state != targets.Failed {
		reason = ""
	}
	return s.setSandboxStatus(ctx, tenantID, id, state, reason, "")
}

// SetSandboxExit implements targets.Store. UpdatedAt is set to now.
func (s *SQLite) SetSandboxExit(ctx context.Context, tenantID, id string, errMsg string, reason targets.ExitReason) (targets.Sandbox, error) {
	return s.setSandboxStatus(ctx, tenantID, id, targets.Failed, errMsg, reason)
}

// setSandboxStatus writes a sandbox's state, error and exit reason
// together: SetSandboxState and SetSandboxExit are one write each.
func (s *SQLite) setSandboxStatus(ctx context.Context, tenantID, id string, state targets.SandboxState, errMsg string, reason targets.ExitReason) (targets.Sandbox, error) {
	now := lease.Millis(s.now())
	var out targets.Sandbox
	err := s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		sb, err := scanSandbox(tx.QueryRowContext(ctx, `UPDATE sandboxes SET state = ?, error = ?, reason = ?, updated_at = ?
			WHERE tenant_id = ? AND id = ? RETURNING `+sandboxColumns,
			string(state), errMsg, string(reason), ms(now), tenantID, id))
		if errors.Is(err, sql.ErrNoRows) {
			return sandboxNotFound(id)
		}
		if err != nil {
			return storeErr(err, "set sandbox state "+id)
		}
		out = sb
		return nil
	})
	if err != nil {
		return targets.Sandbox{}, err
	}
	return out, nil
}

// SetSandboxUID implements targets.Store. The writer runs one transaction
// at a time, so the check for another holder and the write are atomic; the
// unique index backs it.
func (s *SQLite) SetSandboxUID(ctx context.Context, tenantID, id string, uid uint32) (targets.Sandbox, error) {
	var out targets.Sandbox
	err := s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		if uid != 0 {
			var holder string
			err := tx.QueryRowContext(ctx, `SELECT tenant_id || '/' || id FROM sandboxes
				WHERE uid = ? AND NOT (tenant_id = ? AND id = ?)`, uid, tenantID, id).Scan(&holder)
			if err == nil {
				return uidTaken(uid)
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return storeErr(err, "read sandbox uid "+id)
			}
		}
		sb, err := scanSandbox(tx.QueryRowContext(ctx, `UPDATE sandboxes SET uid = ?
			WHERE tenant_id = ? AND id = ? RETURNING `+sandboxColumns, uid, tenantID, id))
		if errors.Is(err, sql.ErrNoRows) {
			return sandboxNotFound(id)
		}
		if err != nil {
			return storeErr(err, "set sandbox uid "+id)
		}
		out = sb
		return nil
	})
	if err != nil {
		return targets.Sandbox{}, err
	}
	return out, nil
}

// GetSandbox implements targets.Store.
func (s *SQLite) GetSandbox(ctx context.Context, tenantID, id string) (targets.Sandbox, error) {
	if s.closed() {
		return targets.Sandbox{}, errClosed()
	}
	sb, err := scanSandbox(s.queryRow(ctx, `SELECT `+sandboxColumns+` FROM sandboxes
		WHERE tenant_id = ? AND id = ?`, tenantID, id))
	if errors.Is(err, sql.ErrNoRows) {
		return targets.Sandbox{}, sandboxNotFound(id)
	}
	if err != nil {
		return targets.Sandbox{}, storeErr(err, "get sandbox "+id)
	}
	return sb, nil
}

// ListSandboxes implements targets.Store: by id, and with tenantID "" by
// tenant then id.
func (s *SQLite) ListSandboxes(ctx context.Context, tenantID string) ([]targets.Sandbox, error) {
	if s.closed() {
		return nil, errClosed()
	}
	query := `SELECT ` + sandboxColumns + ` FROM sandboxes WHERE tenant_id = ? ORDER BY id`
	args := []any{tenantID}
	if tenantID == "" {
		query, args = `SELECT `+sandboxColumns+` FROM sandboxes ORDER BY tenant_id, id`, nil
	}
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, storeErr(err, "list sandboxes")
	}
	defer rows.Close()
	out, err := scanRows(rows, scanSandbox)
	if err != nil {
		return nil, storeErr(err, "list sandboxes")
	}
	return out, nil
}

const (
	serviceColumns = `tenant_id, name, kind, sandbox, url, dynamic, generation, updated_at`
	sandboxColumns = `tenant_id, id, state, generation, command, tty, env, root, error, updated_at, uid,
		memory_bytes, pids, cpus, network, reason`
)

func scanService(row rowScanner) (targets.Service, error) {
	var (
		svc       targets.Service
		kind      string
		updatedAt int64
	)
	if err := row.Scan(&svc.TenantID, &svc.Name, &kind, &svc.Sandbox, &svc.URL, &svc.Dynamic,
		&svc.Generation, &updatedAt); err != nil {
		return targets.Service{}, err
	}
	svc.Kind, svc.UpdatedAt = targets.Kind(kind), fromMs(updatedAt)
	return svc, nil
}

func scanSandbox(row rowScanner) (targets.Sandbox, error) {
	var (
		sb                     targets.Sandbox
		state                  string
		command, env           string
		updatedAt, memoryBytes int64
		network, reason        string
	)
	if err := row.Scan(&sb.TenantID, &sb.ID, &state, &sb.Generation, &command, &sb.TTY, &env,
		&sb.Root, &sb.Error, &updatedAt, &sb.UID,
		&memoryBytes, &sb.Resources.PIDs, &sb.Resources.CPUs, &network, &reason); err != nil {
		return targets.Sandbox{}, err
	}
	sb.Resources.Memory, sb.Network, sb.Reason = targets.Bytes(memoryBytes), targets.Network(network), targets.ExitReason(reason)
	if err := json.Unmarshal([]byte(command), &sb.Command); err != nil {
		return targets.Sandbox{}, fmt.Errorf("sandbox %s: command: %w", sb.ID, err)
	}
	if err := json.Unmarshal([]byte(env), &sb.Env); err != nil {
		return targets.Sandbox{}, fmt.Errorf("sandbox %s: env: %w", sb.ID, err)
	}
	sb.State, sb.UpdatedAt = targets.SandboxState(state), fromMs(updatedAt)
	return sb, nil
}

func sandboxNotFound(id string) error {
	return problem.New(problem.NotFound, "sandbox %s not found", id)
}

// uidTaken is SetSandboxUID's answer when another sandbox holds uid.
func uidTaken(uid uint32) error {
	return problem.New(problem.AlreadyExists, "user id %d is another sandbox's", uid)
}
