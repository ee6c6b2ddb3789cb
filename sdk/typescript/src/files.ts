import { NimbusError } from "./errors.js";
import { throwIfNotOk, withDeadline, type FetchLike } from "./http.js";
import type { RequestOptions, Session } from "./types.js";
import { concat, openWebSocket, type WebSocketConstructor, type WebSocketLike } from "./websocket.js";

/** The subprotocol of the files channel (docs/channels/files.md). */
export const FILES_PROTOCOL = "nimbus.files.v1";

/** The kind of a file entry; `other` is a device, pipe or socket. */
export type FileType = "file" | "dir" | "symlink" | "other";

/**
 * A file's entry, as `stat` and `list` answer it. A symlink is reported as
 * itself (`type: "symlink"`), never followed.
 */
export interface FileInfo {
  /** The last path component; the root's own entry is named "/". */
  name: string;
  type: FileType;
  /** Bytes (for a directory, what the file system says). */
  size: number;
  /** Permission bits (with setuid 4000, setgid 2000, sticky 1000) as a four-digit octal string, e.g. "0644". */
  mode: string;
  /** Modification time, RFC 3339 UTC with milliseconds, e.g. "2026-11-28T12:00:00.000Z". */
  mtime: string;
}

/**
 * A directory's entries, sorted by name: an array, plus `truncated`, true
 * when the directory holds more than the server lists (10 000).
 */
export type FileListing = FileInfo[] & { truncated: boolean };

/** What can be uploaded. Strings are sent as UTF-8. */
export type UploadData = Uint8Array | ArrayBuffer | Blob | string | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;

export interface UploadOptions extends RequestOptions {
  /**
   * Called as bytes are handed to the connection: the count so far, and the
   * total when known (the data's size, or `size`). Its last call, after the
   * server's answer, has the final count.
   */
  onProgress?: ((sent: number, total: number | undefined) => void) | undefined;
  /** The new file's permission bits: an octal string ("0600") or a number (0o600). Default: the replaced file's, else 0644. */
  mode?: string | number | undefined;
  /**
   * The size of a stream or iterable, when known: shown to onProgress, and
   * checked — data that ends short of it, or runs past it, fails the upload
   * with `invalid_argument` and the file is left untouched.
   */
  size?: number | undefined;
}

export interface DownloadOptions extends RequestOptions {
  /** Only part of the file (an HTTP Range): from offset, length bytes (default: to the end). */
  range?: { offset: number; length?: number | undefined } | undefined;
}

/** The server's account of an upload. */
export interface UploadResult {
  /** The file's path from the root, e.g. "/data/input.csv". */
  path: string;
  /** Bytes stored. */
  bytes: number;
  /** Hex SHA-256 of the bytes stored. */
  sha256: string;
  /** True when the file is new, false when it replaced one. */
  created: boolean;
  /** The new file's ETag, for conditional downloads. */
  etag?: string | undefined;
}

/** A Session, a session id, or a files connect URL. */
export type FilesSessionRef = Session | string;

/** Where a files connect URL points: its HTTP base and token. */
interface FilesBase {
  http: string;
  ws: string;
  token: string;
}

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === "string";
const UPLOAD_CHUNK = 64 * 1024;

/** The HTTP status of each catalog code (docs/errors.md), for errors of the WebSocket protocol, which carry none. */
const STATUS: Record<string, number> = {
  invalid_argument: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  already_exists: 409,
  sandbox_not_ready: 409,
  channel_unsupported: 400,
  target_changed: 409,
  session_not_open: 409,
  resource_exhausted: 429,
  payload_too_large: 413,
  method_not_allowed: 405,
  bad_gateway: 502,
  unavailable: 503,
  internal: 500,
};

/**
 * The files channel, authorized by the session's `files` connect URL.
 * upload, download, list, stat and remove go over its HTTP face
 * (`PUT/GET/DELETE /v1/connect/{sid}/files/{path}?token=…`); mkdir and rename
 * over its WebSocket protocol (`nimbus.files.v1`). Paths are inside the
 * sandbox's file root ("/a/b" and "a/b" are the same file; "" and "/" are
 * the root); a path that leaves it is `permission_denied`. Files calls have
 * no timeout unless one is given.
 */
export class FilesClient {
  readonly #fetch: FetchLike;
  readonly #resolve: (ref: FilesSessionRef, opts?: RequestOptions) => Promise<string>;
  readonly #webSocket: WebSocketConstructor | undefined;
  readonly #nodeUploads: boolean;

  /**
   * @internal nodeUploads: on Node, upload with node:http instead of fetch
   * (true unless the caller gave its own fetch).
   */
  constructor(
    fetchFn: FetchLike,
    resolve: (ref: FilesSessionRef, opts?: RequestOptions) => Promise<string>,
    webSocket?: WebSocketConstructor,
    nodeUploads = false,
  ) {
    this.#fetch = fetchFn;
    this.#resolve = resolve;
    this.#webSocket = webSocket;
    this.#nodeUploads = nodeUploads;
  }

  /**
   * Uploads data to path, creating missing parent directories. The file
   * appears only when complete: an upload that fails or is cut off leaves
   * the previous file (or nothing). session is a Session, a session id, or
   * a files connect URL.
   */
  async upload(session: FilesSessionRef, path: string, data: UploadData, opts: UploadOptions = {}): Promise<UploadResult> {
    const base = await this.#base(session, opts);
    const extra: Record<string, string> = {};
    if (opts.mode !== undefined) extra["mode"] = octal(opts.mode);
    return withDeadline(opts, 0, `upload ${path}`, async (signal) => {
      const src = uploadSource(data, opts.size, opts.onProgress);
      const url = fileUrl(base, path, extra);
      const headers: Record<string, string> = { "Content-Type": "application/octet-stream" };
      let res: Response;
      try {
        if (isNode && this.#nodeUploads) {
          if (src.total !== undefined) headers["Content-Length"] = String(src.total);
          res = await nodePut(url, headers, src.chunks, signal);
        } else {
          const body = await fetchBody(src, opts.onProgress !== undefined);
          const init: RequestInit & { duplex?: string } = { method: "PUT", body, signal, headers };
          if (body instanceof ReadableStream) init.duplex = "half";
          res = await this.#fetch(url, init);
        }
      } catch (err) {
        // The SDK's own check of `size` failed the body: report that, not the network error.
        throw src.failure() ?? err;
      }
      await throwIfNotOk(res);
      const v = (await res.json()) as { path: string; bytes: number; sha256: string };
      opts.onProgress?.(v.bytes, src.total ?? v.bytes);
      return { path: v.path, bytes: v.bytes, sha256: v.sha256, created: res.status === 201, etag: res.headers.get("etag") ?? undefined };
    });
  }

  /** Downloads a file whole (or the part `range` says). A directory is `invalid_argument`. */
  async download(session: FilesSessionRef, path: string, opts: DownloadOptions = {}): Promise<Uint8Array> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `download ${path}`, async (signal) => {
      const res = await this.#get(base, path, opts, signal);
      return new Uint8Array(await res.arrayBuffer());
    });
  }

  /**
   * Downloads a file as a stream: memory stays flat whatever its size. The
   * timeout and signal cover the whole transfer.
   */
  async downloadStream(session: FilesSessionRef, path: string, opts: DownloadOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `download ${path}`, async (signal) => {
      const res = await this.#get(base, path, opts, signal);
      return res.body ?? new ReadableStream({ start: (c) => c.close() });
    });
  }

  /** Lists a directory ("" or "/" for the root), sorted by name. A file is `invalid_argument`. */
  async list(session: FilesSessionRef, path = "", opts: RequestOptions = {}): Promise<FileListing> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `list ${path}`, async (signal) => {
      const res = await this.#fetch(fileUrl(base, path), { method: "GET", signal, headers: { Accept: "application/json" } });
      await throwIfNotOk(res);
      if (!isJson(res)) {
        await res.body?.cancel();
        throw localError("invalid_argument", 400, `${path}: not a directory`, res, { path });
      }
      const v = (await res.json()) as { entries?: FileInfo[] | null; truncated?: boolean };
      return Object.assign(v.entries ?? [], { truncated: v.truncated === true });
    });
  }

  /** The entry of path itself (a final symlink is not followed); `not_found` when absent. */
  async stat(session: FilesSessionRef, path: string, opts: RequestOptions = {}): Promise<FileInfo> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `stat ${path}`, async (signal) => {
      const res = await this.#fetch(fileUrl(base, path, { stat: "true" }), { method: "GET", signal, headers: { Accept: "application/json" } });
      await throwIfNotOk(res);
      return (await res.json()) as FileInfo;
    });
  }

  /**
   * Removes a file, symlink (never its target) or empty directory; with
   * `recursive`, a whole tree. A non-empty directory without it is
   * `invalid_argument`; something missing is `not_found`.
   */
  async remove(session: FilesSessionRef, path: string, opts: RequestOptions & { recursive?: boolean } = {}): Promise<void> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `remove ${path}`, async (signal) => {
      const res = await this.#fetch(fileUrl(base, path, opts.recursive ? { recursive: "true" } : {}), { method: "DELETE", signal });
      await throwIfNotOk(res);
      await res.body?.cancel();
    });
  }

  /**
   * Makes a directory, and its missing parents unless `parents` is false
   * (then missing parents are `not_found` and an existing name is
   * `already_exists`). With parents an existing directory is fine; an
   * existing file is `already_exists`.
   */
  async mkdir(session: FilesSessionRef, path: string, opts: RequestOptions & { parents?: boolean } = {}): Promise<void> {
    const base = await this.#base(session, opts);
    await this.#request(base, { op: "mkdir", path, parents: opts.parents ?? true }, opts);
  }

  /** Renames from → to inside the file root, replacing a file at `to` (like rename(2)). */
  async rename(session: FilesSessionRef, from: string, to: string, opts: RequestOptions = {}): Promise<void> {
    const base = await this.#base(session, opts);
    await this.#request(base, { op: "rename", from, to }, opts);
  }

  async #base(session: FilesSessionRef, opts: RequestOptions): Promise<FilesBase> {
    const url = await this.#resolve(session, opts);
    const u = new URL(url);
    const token = u.searchParams.get("token") ?? "";
    u.search = "";
    u.hash = "";
    const path = u.toString().replace(/\/+$/, "");
    return { ws: url.replace(/^http/, "ws"), http: path.replace(/^ws/, "http"), token };
  }

  async #get(base: FilesBase, path: string, opts: DownloadOptions, signal: AbortSignal): Promise<Response> {
    const headers: Record<string, string> = {};
    if (opts.range) {
      const { offset, length } = opts.range;
      headers["Range"] = `bytes=${offset}-${length === undefined ? "" : String(offset + length - 1)}`;
    }
    const res = await this.#fetch(fileUrl(base, path), { method: "GET", headers, signal });
    await throwIfNotOk(res);
    if (isJson(res)) {
      // A directory answers its listing.
      await res.body?.cancel();
      throw localError("invalid_argument", 400, `${path}: is a directory`, res, { path });
    }
    return res;
  }

  /** One request of the WebSocket protocol, on a connection of its own. */
  async #request(base: FilesBase, req: Record<string, unknown>, opts: RequestOptions): Promise<Record<string, unknown>> {
    const op = String(req["op"]);
    return withDeadline(opts, 30_000, `files ${op}`, async (signal) => {
      let requestId: string | undefined;
      let settle: ((m: Record<string, unknown>) => void) | undefined;
      let fail: ((e: unknown) => void) | undefined;
      const answer = new Promise<Record<string, unknown>>((res, rej) => ((settle = res), (fail = rej)));
      const attach = (ws: WebSocketLike) => {
        ws.addEventListener("message", (ev: { data: unknown }) => {
          if (typeof ev.data !== "string") return; // data messages: none for these ops
          let m: Record<string, unknown>;
          try {
            m = JSON.parse(ev.data);
          } catch {
            fail!(new NimbusError({ code: "protocol_error", status: 0, message: `files ${op}: an answer that is not JSON`, requestId }));
            return;
          }
          if (m["id"] !== 1) return;
          if (m["ok"] === true) {
            settle!(m);
            return;
          }
          const e = (m["error"] ?? {}) as { code?: unknown; message?: unknown };
          const code = typeof e.code === "string" && e.code ? e.code : "unknown";
          fail!(
            new NimbusError({
              code,
              status: STATUS[code] ?? 0,
              message: typeof e.message === "string" && e.message ? e.message : `files ${op} failed: ${code}`,
              requestId,
              details: { op },
            }),
          );
        });
        ws.addEventListener("close", (ev: { code?: number; reason?: string }) =>
          fail!(
            new NimbusError({
              code: "connection_closed",
              status: 0,
              message: `files ${op}: the connection closed (${ev.code ?? 0}${ev.reason ? ` ${ev.reason}` : ""}) before the answer`,
              requestId,
              details: { closeCode: ev.code, closeReason: ev.reason },
            }),
          ),
        );
      };
      const ws = await openWebSocket(base.ws, FILES_PROTOCOL, {
        webSocket: this.#webSocket,
        fetch: this.#fetch,
        signal,
        onUpgrade: (h) => (requestId = h.get("x-request-id") ?? undefined),
        onOpen: attach,
      });
      const onAbort = () => fail!(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      try {
        ws.send(JSON.stringify({ id: 1, ...req }));
        return await answer;
      } finally {
        signal.removeEventListener("abort", onAbort);
        try {
          ws.close(1000, "");
        } catch {
          // already closed
        }
      }
    });
  }
}

function isJson(res: Response): boolean {
  return (res.headers.get("content-type") ?? "").split(";")[0]!.trim() === "application/json";
}

function localError(code: string, status: number, message: string, res: Response, details: Record<string, unknown>): NimbusError {
  return new NimbusError({ code, status, message, requestId: res.headers.get("x-request-id") ?? undefined, details });
}

/** A mode as the server takes it: a four-digit octal string. */
function octal(mode: string | number): string {
  if (typeof mode === "number") {
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
      throw new NimbusError({ code: "invalid_argument", status: 0, message: `mode ${mode} is not a permission mode (0 to 0o7777)`, details: { field: "mode" } });
    }
    return mode.toString(8).padStart(4, "0");
  }
  return mode;
}

/**
 * The URL of path on the HTTP face. WHATWG URLs resolve "." and ".."
 * segments (also as %2e), so a path holding one is sent as a single
 * segment with its slashes as %2F: the server cleans it and refuses one
 * that leaves the root, instead of the client quietly resolving it
 * against the URL.
 */
function fileUrl(base: FilesBase, path: string, extra: Record<string, string> = {}): string {
  const p = path.replace(/^\/+/, "");
  const segs = p.split("/");
  let enc: string;
  if (segs.some((s) => s === "." || s === "..")) {
    enc = encodeURIComponent(p);
    if (enc === "." || enc === "..") enc = `.%2F${enc}`;
  } else {
    enc = segs.map(encodeURIComponent).join("/");
  }
  const q = new URLSearchParams({ token: base.token, ...extra });
  return `${base.http}/${enc}?${q.toString()}`;
}

/** Upload data as chunks, with its size when known. */
interface Source {
  chunks: AsyncIterable<Uint8Array>;
  /** The bytes, when known (a Uint8Array, a Blob, or `size`). */
  total: number | undefined;
  /** The data as it is, when fetch can send it whole (a Uint8Array or Blob). */
  whole: Uint8Array | Blob | undefined;
  /** The SDK's own reason for failing the upload (a size mismatch), if it did. */
  failure(): NimbusError | undefined;
}

/**
 * The upload's chunks: each handed over once the previous one was taken
 * (written), so onProgress counts bytes given to the connection; a size
 * mismatch with `size` fails the data.
 */
function uploadSource(data: UploadData, size: number | undefined, onProgress: UploadOptions["onProgress"]): Source {
  if (typeof data === "string") data = new TextEncoder().encode(data);
  if (data instanceof ArrayBuffer) data = new Uint8Array(data);
  const whole = data instanceof Uint8Array || (typeof Blob !== "undefined" && data instanceof Blob) ? data : undefined;
  const known = whole instanceof Uint8Array ? whole.byteLength : whole?.size;
  if (known !== undefined && size !== undefined && known !== size) {
    throw new NimbusError({ code: "invalid_argument", status: 0, message: `size ${size} but the data holds ${known} bytes`, details: { field: "size" } });
  }
  const total = known ?? size;
  let failure: NimbusError | undefined;
  const check = (n: number, done: boolean) => {
    if (size === undefined || (n <= size && (!done || n === size))) return;
    failure = new NimbusError({
      code: "invalid_argument",
      status: 0,
      message: n < size ? `the data ended after ${n} of the ${size} bytes announced` : `the data runs past the ${size} bytes announced`,
      details: { field: "size" },
    });
    throw failure;
  };
  const src = data;
  async function* chunks(): AsyncGenerator<Uint8Array> {
    let sent = 0;
    for await (const c of iterate(src)) {
      for (let o = 0; o < c.byteLength; o += UPLOAD_CHUNK) {
        const part = c.subarray(o, o + UPLOAD_CHUNK);
        check(sent + part.byteLength, false);
        yield part;
        sent += part.byteLength;
        onProgress?.(sent, total);
      }
    }
    check(sent, true);
  }
  return { chunks: chunks(), total, whole, failure: () => failure };
}

/** The body for fetch: the data whole when it can be, else a stream (gathered first in browsers). */
async function fetchBody(src: Source, progress: boolean): Promise<BodyInit> {
  if (src.whole !== undefined && !progress) return src.whole as BodyInit;
  if (!isNode) {
    // Browsers stream request bodies only over HTTP/2: gather a stream
    // first; a known-size body goes as it is.
    if (src.whole !== undefined) return src.whole as BodyInit;
    const parts: Uint8Array[] = [];
    for await (const c of src.chunks) parts.push(c);
    return new Blob(parts as BlobPart[]);
  }
  const it = src.chunks[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(ctl) {
      const r = await it.next();
      if (r.done) ctl.close();
      else ctl.enqueue(r.value);
    },
    async cancel(reason) {
      await it.return?.(reason);
    },
  });
}

type NodeHttp = {
  request(
    url: string,
    opts: { method: string; headers: Record<string, string>; signal?: AbortSignal },
  ): NodeRequest;
};
type NodeRequest = {
  destroyed: boolean;
  writableEnded: boolean;
  write(chunk: Uint8Array): boolean;
  end(): void;
  destroy(err?: Error): void;
  on(ev: string, fn: (...a: any[]) => void): void;
  off(ev: string, fn: (...a: any[]) => void): void;
};

const nodeModules = new Map<string, Promise<NodeHttp>>();

/** node:http or node:https (a computed specifier keeps bundlers from pulling them into browser builds). */
function nodeHttp(scheme: "http" | "https"): Promise<NodeHttp> {
  let m = nodeModules.get(scheme);
  if (!m) {
    const name = `node:${scheme}`;
    m = import(name) as Promise<NodeHttp>;
    nodeModules.set(scheme, m);
  }
  return m;
}

/**
 * PUT with node:http, writing each chunk as the socket takes it. Node's
 * fetch (undici) keeps every chunk of a streamed request body until the
 * request ends (nodejs/undici#4058): a 16 GiB upload would need 16 GiB.
 * An answer that comes before the body is sent (an error) ends the
 * writing; the answer is returned as a Response.
 */
async function nodePut(url: string, headers: Record<string, string>, chunks: AsyncIterable<Uint8Array>, signal: AbortSignal): Promise<Response> {
  const http = await nodeHttp(url.startsWith("https:") ? "https" : "http");
  return new Promise<Response>((resolve, reject) => {
    let answered = false;
    const req = http.request(url, { method: "PUT", headers, signal });
    req.on("error", (err: Error) => {
      if (!answered) reject(err);
    });
    req.on("response", (res: any) => {
      answered = true;
      const parts: Uint8Array[] = [];
      res.on("data", (c: Uint8Array) => parts.push(c));
      res.on("error", reject);
      res.on("end", () => {
        if (!req.writableEnded) req.destroy(); // the body was cut short: the connection cannot be reused
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers as Record<string, string | string[] | undefined>)) {
          if (v !== undefined) h.set(k, Array.isArray(v) ? v.join(", ") : v);
        }
        const status: number = res.statusCode;
        const nullBody = status === 204 || status === 205 || status === 304;
        resolve(new Response(nullBody ? null : (concat(parts) as BodyInit), { status, headers: h }));
      });
      res.on("close", () => reject(new Error("the answer was cut off")));
    });
    const ready = () =>
      new Promise<void>((r) => {
        const done = () => {
          req.off("drain", done);
          req.off("close", done);
          req.off("response", done);
          r();
        };
        req.on("drain", done);
        req.on("close", done);
        req.on("response", done);
      });
    void (async () => {
      try {
        for await (const c of chunks) {
          if (answered || req.destroyed) return;
          if (!req.write(c)) await ready();
        }
        if (!answered && !req.destroyed) req.end();
      } catch (err) {
        req.destroy(err instanceof Error ? err : new Error(String(err)));
      }
    })();
  });
}

async function* iterate(data: Uint8Array | Blob | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  if (data instanceof Uint8Array) {
    for (let o = 0; o < data.byteLength; o += UPLOAD_CHUNK) yield data.subarray(o, o + UPLOAD_CHUNK);
    return;
  }
  if (typeof Blob !== "undefined" && data instanceof Blob) data = data.stream() as ReadableStream<Uint8Array>;
  if (data instanceof ReadableStream) {
    const reader = (data as ReadableStream<Uint8Array>).getReader();
    try {
      for (;;) {
        const r = await reader.read();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      reader.releaseLock();
    }
  }
  for await (const c of data as AsyncIterable<Uint8Array>) yield c;
}
