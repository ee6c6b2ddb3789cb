import { NimbusError, NimbusNetworkError, problemError } from "./errors.js";
import type { FetchLike } from "./http.js";

/** The part of the WHATWG WebSocket the SDK uses (the `ws` package has it too). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  readonly bufferedAmount: number;
  binaryType: string;
  send(data: ArrayBufferLike | ArrayBufferView | string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (ev: any) => void, options?: { once?: boolean }): void;
  removeEventListener(type: string, listener: (ev: any) => void): void;
}

/** A WebSocket constructor: the global one, `ws`'s, or one the caller gives. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

let wsModule: Promise<WebSocketConstructor> | undefined;

/**
 * The WebSocket implementation: the caller's, else globalThis.WebSocket
 * (browsers, Node ≥ 22), else the `ws` package (Node 20).
 */
export async function webSocketImpl(given?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (given) return given;
  const g = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (g) return g;
  // A computed specifier keeps bundlers from pulling `ws` into browser builds.
  const name = "ws";
  wsModule ??= import(name).then(
    (m: { WebSocket?: WebSocketConstructor; default?: WebSocketConstructor }) => (m.WebSocket ?? m.default)!,
    (err: unknown) => {
      wsModule = undefined;
      throw new NimbusError({
        code: "unavailable",
        status: 0,
        message: "no WebSocket implementation: install the `ws` package or run on Node ≥ 22",
        cause: err,
      });
    },
  );
  return wsModule;
}

/**
 * Opens a WebSocket with the given subprotocol and resolves once it is
 * open. A refused upgrade rejects with the gateway's problem as a
 * NimbusError (e.g. `session_not_open`, 409); no answer at all with a
 * NimbusNetworkError.
 */
export async function openWebSocket(
  url: string,
  protocol: string,
  opts: {
    webSocket?: WebSocketConstructor | undefined;
    fetch?: FetchLike | undefined;
    signal?: AbortSignal | undefined;
    /**
     * Called synchronously when the socket opens, before any message is
     * dispatched: add message listeners here, or the first messages (which
     * may arrive with the handshake) are lost.
     */
    onOpen?: ((ws: WebSocketLike) => void) | undefined;
    /**
     * Called with the headers of the 101 answer, where they can be read
     * (the `ws` package; browsers hide them), before onOpen.
     */
    onUpgrade?: ((headers: { get(name: string): string | null }) => void) | undefined;
  },
): Promise<WebSocketLike> {
  opts.signal?.throwIfAborted();
  const Impl = await webSocketImpl(opts.webSocket);
  const ws = new Impl(url, protocol);
  ws.binaryType = "arraybuffer";
  return new Promise<WebSocketLike>((resolve, reject) => {
    let settled = false;
    const cleanup = () => {
      ws.removeEventListener("open", onOpen);
      ws.removeEventListener("error", onFail);
      ws.removeEventListener("close", onFail);
      opts.signal?.removeEventListener("abort", onAbort);
    };
    const onOpen = () => {
      if (settled) return;
      settled = true;
      cleanup();
      if (ws.protocol !== protocol) {
        ws.close(1002, `expected subprotocol ${protocol}`);
        reject(new NimbusError({ code: "protocol_error", status: 0, message: `the server chose subprotocol "${ws.protocol}", not ${protocol}` }));
        return;
      }
      opts.onOpen?.(ws);
      resolve(ws);
    };
    const onFail = (ev: unknown) => {
      if (settled) return;
      settled = true;
      cleanup();
      void explainFailure(url, opts.fetch, ev).then(reject, reject);
    };
    const onAbort = () => {
      if (settled) return;
      settled = true;
      cleanup();
      try {
        ws.close();
      } catch {
        // a socket still connecting may refuse close(); it is dropped anyway
      }
      reject(opts.signal!.reason);
    };
    // With `ws` the refused upgrade's answer can be read directly; browsers
    // hide it, so there explainFailure asks the URL again with a plain GET.
    const node = ws as unknown as { on?: (ev: string, fn: (...a: any[]) => void) => void };
    if (typeof node.on === "function") {
      // An EventEmitter throws an "error" nobody listens to: keep one listener for good.
      node.on("error", () => {});
      if (opts.onUpgrade) {
        const onUpgrade = opts.onUpgrade;
        node.on("upgrade", (res: any) => onUpgrade({ get: (n: string) => headerOf(res.headers ?? {}, n) }));
      }
      node.on("unexpected-response", (req: { destroy(): void }, res: any) => {
        const chunks: Uint8Array[] = [];
        let done = false;
        const finish = () => {
          if (done) return;
          done = true;
          req.destroy();
          if (settled) return;
          settled = true;
          cleanup();
          const body = new TextDecoder().decode(concat(chunks));
          reject(problemError(res.statusCode, { get: (n: string) => headerOf(res.headers, n) }, body));
        };
        res.on("data", (c: Uint8Array) => chunks.push(c));
        res.on("end", finish);
        res.on("error", finish);
        res.on("close", finish);
      });
    }
    ws.addEventListener("open", onOpen);
    ws.addEventListener("error", onFail);
    ws.addEventListener("close", onFail);
    opts.signal?.addEventListener("abort", onAbort, { once: true });
  });
}

async function explainFailure(url: string, fetchFn: FetchLike | undefined, ev: unknown): Promise<NimbusError> {
  const cause = (ev as { error?: unknown })?.error ?? ev;
  // The gateway checks a connect URL before upgrading and answers a plain
  // GET with the same problem+json, so ask it what was wrong.
  const f = fetchFn ?? (globalThis.fetch as FetchLike | undefined);
  if (f) {
    try {
      const res = await f(url.replace(/^ws/, "http"), { method: "GET", signal: AbortSignal.timeout(5000) });
      const ct = res.headers.get("content-type") ?? "";
      if (!res.ok && ct.includes("json")) return problemError(res.status, res.headers, await res.text());
      await res.body?.cancel();
    } catch {
      // unreachable: a network error below
    }
  }
  const msg = cause instanceof Error ? cause.message : "the WebSocket connection failed";
  return new NimbusNetworkError("network", `connect ${redact(url)}: ${msg}`, cause);
}

/** The URL without its token, for messages. */
export function redact(url: string): string {
  return url.replace(/([?&]token=)[^&]*/, "$1…");
}

function headerOf(headers: Record<string, string | string[] | undefined>, name: string): string | null {
  const v = headers[name.toLowerCase()];
  if (v === undefined) return null;
  return Array.isArray(v) ? v.join(", ") : v;
}

export function concat(chunks: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const c of chunks) n += c.byteLength;
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.byteLength;
  }
  return out;
}

/** The bytes of a binary WebSocket message (ArrayBuffer, view, or Node Buffer). */
export function messageBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) return concat(data as Uint8Array[]);
  return undefined;
}
