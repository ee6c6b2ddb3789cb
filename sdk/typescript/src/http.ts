import { NimbusError, NimbusNetworkError, problemError } from "./errors.js";
import type { RequestOptions } from "./types.js";

/** A fetch function (the global one, or one the caller gives). */
export type FetchLike = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

/** The token, or a function that returns a fresh one for each call. */
export type TokenSource = string | undefined | (() => string | undefined | Promise<string | undefined>);

/** What every request needs; shared by the sessions, files and channel helpers. */
export interface Transport {
  endpoint: string;
  fetch: FetchLike;
  timeoutMs: number;
  token(): Promise<string | undefined>;
}

/**
 * Runs fn with a signal that aborts on the caller's signal or after
 * timeoutMs, and turns a failure without an answer into a
 * NimbusNetworkError ("network" or "timeout"). A caller abort rejects with
 * the caller signal's reason.
 */
export async function withDeadline<T>(
  opts: RequestOptions | undefined,
  defaultTimeoutMs: number,
  what: string,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const callerSignal = opts?.signal;
  callerSignal?.throwIfAborted();
  const timeoutMs = opts?.timeoutMs ?? defaultTimeoutMs;
  const ctl = new AbortController();
  let timedOut = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (timeoutMs > 0) {
    timer = setTimeout(() => {
      timedOut = true;
      ctl.abort(new NimbusNetworkError("timeout", `${what}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
  }
  const onAbort = () => ctl.abort(callerSignal!.reason);
  callerSignal?.addEventListener("abort", onAbort, { once: true });
  try {
    return await fn(ctl.signal);
  } catch (err) {
    if (callerSignal?.aborted) throw callerSignal.reason;
    if (timedOut) throw ctl.signal.reason;
    if (err instanceof NimbusError) throw err;
    throw new NimbusNetworkError("network", `${what}: ${describe(err)}`, err);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    callerSignal?.removeEventListener("abort", onAbort);
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof Error && cause.message && cause.message !== err.message) return `${err.message} (${cause.message})`;
    return err.message;
  }
  return String(err);
}

/** Throws the NimbusError of a non-2xx answer (reading its body). */
export async function throwIfNotOk(res: Response): Promise<void> {
  if (res.ok) return;
  const body = await res.text().catch(() => "");
  throw problemError(res.status, res.headers, body);
}

/**
 * One JSON call of the API: body (undefined for none) as JSON, the answer's
 * JSON returned. A non-2xx answer throws its NimbusError.
 */
export async function callJson<T>(
  t: Transport,
  method: string,
  path: string,
  body: unknown,
  opts: RequestOptions | undefined,
): Promise<T> {
  return withDeadline(opts, t.timeoutMs, `${method} ${path}`, async (signal) => {
    const headers: Record<string, string> = { Accept: "application/json" };
    const token = await t.token();
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const init: RequestInit = { method, headers, signal };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    const res = await t.fetch(t.endpoint + path, init);
    await throwIfNotOk(res);
    const text = await res.text();
    return (text ? JSON.parse(text) : undefined) as T;
  });
}
