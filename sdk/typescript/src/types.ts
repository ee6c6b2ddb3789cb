/** The resources of the gateway's HTTP API (SPEC §3, docs/http-api.md). */

/** A channel of a session: what flows over its connect URL. */
export type Channel = "stdio" | "files" | "cdp" | "page";

/** All channels, in the order the docs list them. */
export const CHANNELS: readonly Channel[] = ["stdio", "files", "cdp", "page"];

/** `open`, `closed` (explicitly, with a reason) or `expired` (past `expiresAt`). */
export type SessionState = "open" | "closed" | "expired";

/** A session target that names a service of the tenant's catalog. */
export interface ServiceTarget {
  service: { name: string };
  sandbox?: never;
}

/** A session target that names a sandbox of the tenant's catalog. */
export interface SandboxTarget {
  sandbox: { id: string };
  service?: never;
}

/** What a session attaches to: exactly one service (by name) or one sandbox (by id). */
export type Target = ServiceTarget | SandboxTarget;

/** What the session attached to at open time. */
export interface TargetSnapshot {
  /** The service name, for a service target. */
  service?: string;
  /** The sandbox id (of the target, or the one a sandbox service runs in). */
  sandbox?: string;
  /** Generation of the service (service target) or sandbox (sandbox target). */
  generation: number;
  /** The backend: `local:<pid>` for a local sandbox, the browser instance for a browser. */
  backend?: string;
}

export interface SessionMetadata {
  /** `ses_` followed by an opaque string. */
  id: string;
  tenantId: string;
  /** RFC 3339 UTC with milliseconds. */
  createdAt: string;
  /** The principal (token `sub`) that opened it. */
  createdBy: string;
}

export interface SessionSpec {
  target: Target;
  channels: Channel[];
  /** What the open asked for; null when it named none. */
  requestedTtlMs: number | null;
  /** What was granted (defaults to 15 minutes, capped at one hour). */
  ttlMs: number;
  /** createdAt + ttlMs, RFC 3339 UTC with milliseconds. */
  expiresAt: string;
  targetSnapshot: TargetSnapshot;
}

/** The connect URLs of a session, one per channel it was opened with. */
export type ConnectUrls = Partial<Record<Channel, string>>;

export interface SessionStatus {
  state: SessionState;
  closedAt: string | null;
  closeReason: string | null;
  closedBy: string | null;
  /**
   * Signed WebSocket URLs, one per channel: only in the answers of
   * `sessions.open` and `sessions.connect`, never of get or list.
   */
  connect?: ConnectUrls;
}

/** The session resource. */
export interface Session {
  metadata: SessionMetadata;
  spec: SessionSpec;
  status: SessionStatus;
}

/** The body of an open. */
export interface OpenSessionRequest {
  target: Target;
  /** One or more channels, no duplicates; validated against what the target offers. */
  channels: Channel[];
  /** Optional, an integer ≥ 1000. Absent: the server's default (15 minutes). */
  requestedTtlMs?: number | undefined;
}

export interface ListSessionsRequest {
  /** Only sessions in this state (as read now). */
  state?: SessionState | undefined;
  /** 1–500; the server's default is 50. */
  pageSize?: number | undefined;
  /** The `nextPageToken` of the previous page (bound to the same `state`). */
  pageToken?: string | undefined;
}

/** A session id, or an object that names one. */
export type SessionRef = string | { id: string } | Session;

export interface CloseSessionRequest {
  id: string;
  /** At most 100 bytes; the server's default is "closed". */
  reason?: string | undefined;
}

/** Options every call takes. */
export interface RequestOptions {
  /** Aborts the call; it then rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
  /** Overrides the client's timeoutMs for this call (0: no timeout). */
  timeoutMs?: number | undefined;
}

/** The id a SessionRef names. */
export function sessionId(ref: SessionRef): string {
  if (typeof ref === "string") return ref;
  if ("metadata" in ref && ref.metadata) return ref.metadata.id;
  return (ref as { id: string }).id;
}
