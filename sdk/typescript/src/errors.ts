/**
 * Errors of the SDK. Every failure of a call is a {@link NimbusError}:
 * switch on `code`, never on `message`.
 *
 * - An answer of the gateway (problem+json, RFC 9457) is a `NimbusError` with
 *   the server's `code`, `status`, `requestId` (= the `X-Request-Id` header),
 *   `details` and, for `resource_exhausted`, `retryAfter` in seconds.
 * - No answer at all (connection refused, DNS, TLS, reset) is a
 *   {@link NimbusNetworkError}: `code` `"network"`, `status` 0, the
 *   underlying error as `cause`.
 * - A call that ran over its `timeoutMs` is a `NimbusNetworkError` with
 *   `code` `"timeout"`.
 * - A call whose caller `signal` aborted rejects with the signal's reason
 *   (an `AbortError` `DOMException` unless the caller gave another), as
 *   `fetch` does.
 */

/** The error codes of the gateway (docs/errors.md), plus the SDK's own. */
export type ErrorCode =
  | "invalid_argument"
  | "unauthenticated"
  | "permission_denied"
  | "not_found"
  | "already_exists"
  | "sandbox_not_ready"
  | "channel_unsupported"
  | "target_changed"
  | "session_not_open"
  | "resource_exhausted"
  | "payload_too_large"
  | "method_not_allowed"
  | "bad_gateway"
  | "unavailable"
  | "internal"
  // The SDK's own codes:
  /** No answer from the gateway (see NimbusNetworkError). */
  | "network"
  /** The call ran over its timeoutMs. */
  | "timeout"
  /** The answer was not the problem+json the gateway sends (a proxy in between?). */
  | "unknown"
  /** A WebSocket channel ended, or was used after it ended. */
  | "connection_closed"
  /** The server broke a channel protocol. */
  | "protocol_error";

/** The fields of an RFC 9457 problem document as the gateway sends it. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  code?: string;
  detail?: string;
  requestId?: string;
  details?: Record<string, unknown>;
}

export interface NimbusErrorInit {
  code: ErrorCode | (string & {});
  status: number;
  message: string;
  title?: string | undefined;
  type?: string | undefined;
  requestId?: string | undefined;
  details?: Record<string, unknown> | undefined;
  retryAfter?: number | undefined;
  cause?: unknown;
}

/** A failed call. See the module comment for how each kind is told apart. */
export class NimbusError extends Error {
  override name = "NimbusError";
  /** Stable, machine-readable code (docs/errors.md), e.g. "sandbox_not_ready". */
  readonly code: ErrorCode | (string & {});
  /** HTTP status of the answer; 0 when there was no answer. */
  readonly status: number;
  /** The problem's title, e.g. "Sandbox not ready". */
  readonly title: string | undefined;
  /** The problem's type URI, e.g. "urn:nimbus:error:sandbox_not_ready". */
  readonly type: string | undefined;
  /** The request id (X-Request-Id): the gateway's log has the same id. */
  readonly requestId: string | undefined;
  /** Machine-readable context, e.g. `{offered: ["cdp", "page"]}`. */
  readonly details: Record<string, unknown> | undefined;
  /** Seconds to wait before trying again (Retry-After), when the server said. */
  readonly retryAfter: number | undefined;

  constructor(init: NimbusErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.code = init.code;
    this.status = init.status;
    this.title = init.title;
    this.type = init.type;
    this.requestId = init.requestId;
    this.details = init.details;
    this.retryAfter = init.retryAfter;
  }

  /** The problem document, as the server sent it (for logs). */
  toJSON(): Problem & { retryAfter?: number } {
    const o: Problem & { retryAfter?: number } = {
      type: this.type,
      title: this.title,
      status: this.status,
      code: this.code,
      detail: this.message,
      requestId: this.requestId,
      details: this.details,
    };
    if (this.retryAfter !== undefined) o.retryAfter = this.retryAfter;
    return o;
  }
}

/**
 * The gateway could not be reached or did not answer: connection refused,
 * reset, DNS or TLS failure (`code` "network"), or the call's `timeoutMs`
 * elapsed (`code` "timeout"). `status` is 0; `cause` is the underlying error.
 * Such a call may or may not have taken effect on the server.
 */
export class NimbusNetworkError extends NimbusError {
  override name = "NimbusNetworkError";
  constructor(code: "network" | "timeout", message: string, cause?: unknown) {
    super({ code, status: 0, message, cause });
  }
}

/** True when err is a NimbusError, and, if code is given, has that code. */
export function isNimbusError(err: unknown, code?: ErrorCode | (string & {})): err is NimbusError {
  return err instanceof NimbusError && (code === undefined || err.code === code);
}

/** Builds the NimbusError of a non-2xx answer whose body was text. */
export function problemError(status: number, headers: { get(name: string): string | null }, body: string): NimbusError {
  let p: Problem | undefined;
  try {
    const v: unknown = JSON.parse(body);
    if (v !== null && typeof v === "object" && typeof (v as Problem).code === "string") p = v as Problem;
  } catch {
    // not JSON: handled below
  }
  const requestId = p?.requestId || headers.get("x-request-id") || undefined;
  const ra = headers.get("retry-after");
  let retryAfter: number | undefined;
  if (ra !== null && ra.trim() !== "") {
    const n = Number(ra);
    if (Number.isFinite(n)) retryAfter = n;
    else {
      const t = Date.parse(ra);
      if (!Number.isNaN(t)) retryAfter = Math.max(0, Math.ceil((t - Date.now()) / 1000));
    }
  }
  if (p === undefined) {
    const text = body.trim().slice(0, 500);
    return new NimbusError({
      code: "unknown",
      status,
      message: `HTTP ${status}${text ? `: ${text}` : ""}`,
      requestId,
      retryAfter,
    });
  }
  return new NimbusError({
    code: p.code!,
    status: typeof p.status === "number" ? p.status : status,
    message: p.detail || p.title || p.code!,
    title: p.title,
    type: p.type,
    requestId,
    details: p.details,
    retryAfter,
  });
}
