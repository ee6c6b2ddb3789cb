package targets

import "context"

// Store persists the catalog. Errors are *problem.Error: NotFound for an
// unknown service or sandbox, AlreadyExists for a duplicate sandbox id,
// Unavailable when the store cannot write. Safe for concurrent use.
type Store interface {
	// PutService creates or replaces a service definition. It assigns the
	// generation: 1 when new, the old one plus one when the definition
	// changed, the old one when it did not (changed reports which). A
	// service re-created after a delete continues from the deleted one's
	// generation, so a generation never names two definitions.
	PutService(ctx context.Context, s Service) (saved Service, changed bool, err error)
	GetService(ctx context.Context, tenantID, name string) (Service, error)
	// ListServices returns the tenant's services by name.
	ListServices(ctx context.Context, tenantID string) ([]Service, error)
	DeleteService(ctx context.Context, tenantID, name string) error

	// CreateSandbox stores a new sandbox at generation 1 (or replaces a
	// stopped one, at its generation plus one); AlreadyExists otherwise.
	// Its Resources and Network are stored as given (a replaced sandbox's
	// are replaced). Reason and Usage are not stored: a new sandbox's
	// workload has not ended, and usage is read live; the sandbox returned
	// has neither.
	CreateSandbox(ctx context.Context, sb Sandbox) (Sandbox, error)
	// SetSandboxUID records the user id of the sandbox's own (Options.UIDs);
	// 0 gives it up. AlreadyExists when another sandbox holds uid: the store
	// keeps the ids unique, so no two sandboxes ever share one. NotFound
	// for an unknown sandbox. CreateSandbox ignores Sandbox.UID: a new
	// sandbox has none, and one that replaces a stopped sandbox keeps the
	// stopped one's (the files in its root are still that id's).
	SetSandboxUID(ctx context.Context, tenantID, id string, uid uint32) (Sandbox, error)
	// SetSandboxState records a state change and, for failed, why (as
	// Error; any other state clears Error). It clears Reason whatever the
	// state: a sandbox restarted after an OOM kill must not go on showing
	// "oom" once it runs again, or fails for another cause. The generation
	// is unchanged.
	SetSandboxState(ctx context.Context, tenantID, id string, state SandboxState, reason string) (Sandbox, error)
	// SetSandboxExit records that the sandbox's workload ended: state
	// failed with errMsg as Error, as SetSandboxState(…, Failed, errMsg)
	// does, and with how it ended as Reason (SPEC §9.2 status.reason), in
	// one write so no reader sees the state without its reason.
	SetSandboxExit(ctx context.Context, tenantID, id string, errMsg string, reason ExitReason) (Sandbox, error)
	GetSandbox(ctx context.Context, tenantID, id string) (Sandbox, error)
	// ListSandboxes returns the tenant's sandboxes by id; tenantID "" lists
	// every tenant's (used to restart workloads at start).
	ListSandboxes(ctx context.Context, tenantID string) ([]Sandbox, error)
}
