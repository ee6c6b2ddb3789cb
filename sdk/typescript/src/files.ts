import { NimbusError } from "./errors.js";
import { throwIfNotOk, withDeadline, type FetchLike } from "./http.js";
import type { RequestOptions, Session } from "./types.js";
import { messageBytes, openWebSocket, type WebSocketConstructor } from "./websocket.js";

/** The subprotocol of the files channel (SPEC §5.2). */
export const FILES_PROTOCOL = "nimbus.files.v1";

/** An entry of a directory listing. */
export interface FileInfo {
  name: string;
  /** "file", "dir" or "symlink" (as the server names them). */
  type: string;
  size: number;
  mode?: number | string;
  modTime?: string;
  [key: string]: unknown;
}

/** What can be uploaded. Strings are sent as UTF-8. */
export type UploadData = Uint8Array | ArrayBuffer | Blob | string | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;

export interface UploadOptions extends RequestOptions {
  /** Called as bytes are sent: the count so far, and the total when known. */
  onProgress?: ((sent: number, total: number | undefined) => void) | undefined;
}

export interface DownloadOptions extends RequestOptions {
  /** Only part of the file (an HTTP Range). */
  range?: { offset: number; length?: number | undefined } | undefined;
}

export interface UploadResult {
  path: string;
  /** Bytes sent. */
  size: number;
  /** The server's answer, when it sent JSON. */
  info?: Record<string, unknown>;
}

/** Where a files connect URL points: its HTTP base and token. */
interface FilesBase {
  http: string;
  ws: string;
  token: string;
}

const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === "string";
const UPLOAD_CHUNK = 64 * 1024;

/**
 * The files channel over its HTTP face (`PUT/GET/DELETE
 * /v1/connect/{sid}/files/{path}?token=…`), authorized by the session's
 * `files` connect URL. Files calls have no timeout unless one is given.
 */
export class FilesClient {
  readonly #fetch: FetchLike;
  readonly #resolve: (ref: FilesSessionRef, opts?: RequestOptions) => Promise<string>;
  readonly #webSocket: WebSocketConstructor | undefined;

  /** @internal */
  constructor(fetchFn: FetchLike, resolve: (ref: FilesSessionRef, opts?: RequestOptions) => Promise<string>, webSocket?: WebSocketConstructor) {
    this.#fetch = fetchFn;
    this.#resolve = resolve;
    this.#webSocket = webSocket;
  }

  /**
   * Uploads data to path (parents are created; the file appears only when
   * complete). session is a Session, a session id, or a files connect URL.
   */
  async upload(session: FilesSessionRef, path: string, data: UploadData, opts: UploadOptions = {}): Promise<UploadResult> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `upload ${path}`, async (signal) => {
      const { body, total, sent } = await uploadBody(data, opts.onProgress);
      const init: RequestInit & { duplex?: string } = { method: "PUT", body, signal };
      if (body instanceof ReadableStream) init.duplex = "half";
      const res = await this.#fetch(fileUrl(base, path), init);
      await throwIfNotOk(res);
      const text = await res.text();
      const result: UploadResult = { path, size: sent() };
      if (total !== undefined) opts.onProgress?.(total, total);
      if (text && (res.headers.get("content-type") ?? "").includes("json")) result.info = JSON.parse(text);
      return result;
    });
  }

  /** Downloads a file whole. */
  async download(session: FilesSessionRef, path: string, opts: DownloadOptions = {}): Promise<Uint8Array> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `download ${path}`, async (signal) => {
      const res = await this.#get(base, path, opts, signal);
      return new Uint8Array(await res.arrayBuffer());
    });
  }

  /**
   * Downloads a file as a stream (memory stays flat). The timeout and
   * signal cover the whole transfer.
   */
  async downloadStream(session: FilesSessionRef, path: string, opts: DownloadOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `download ${path}`, async (signal) => {
      const res = await this.#get(base, path, opts, signal);
      return res.body ?? new ReadableStream({ start: (c) => c.close() });
    });
  }

  /** Lists a directory ("" or "/" for the root). */
  async list(session: FilesSessionRef, path = "", opts: RequestOptions = {}): Promise<FileInfo[]> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `list ${path}`, async (signal) => {
      const res = await this.#fetch(fileUrl(base, path), { method: "GET", signal, headers: { Accept: "application/json" } });
      await throwIfNotOk(res);
      const ct = res.headers.get("content-type") ?? "";
      if (!ct.includes("json")) {
        await res.body?.cancel();
        throw new NimbusError({ code: "invalid_argument", status: 0, message: `${path} is not a directory`, details: { path } });
      }
      const v = (await res.json()) as FileInfo[] | { items?: FileInfo[]; entries?: FileInfo[] };
      return Array.isArray(v) ? v : (v.items ?? v.entries ?? []);
    });
  }

  /** Information on one file or directory (not_found when absent). */
  async stat(session: FilesSessionRef, path: string, opts: RequestOptions = {}): Promise<FileInfo> {
    const parts = splitPath(path);
    if (parts.length === 0) return { name: "", type: "dir", size: 0 };
    const name = parts.pop()!;
    const entries = await this.list(session, parts.join("/"), opts);
    const e = entries.find((x) => x.name === name);
    if (!e) throw new NimbusError({ code: "not_found", status: 404, message: `${path} does not exist`, details: { path } });
    return e;
  }

  /** Removes a file, or a directory (with recursive for a non-empty one). */
  async remove(session: FilesSessionRef, path: string, opts: RequestOptions & { recursive?: boolean } = {}): Promise<void> {
    const base = await this.#base(session, opts);
    return withDeadline(opts, 0, `remove ${path}`, async (signal) => {
      const url = fileUrl(base, path) + (opts.recursive ? "&recursive=true" : "");
      const res = await this.#fetch(url, { method: "DELETE", signal });
      await throwIfNotOk(res);
      await res.body?.cancel();
    });
  }

  /** Makes a directory (and its parents, unless parents is false). Over the WebSocket protocol. */
  async mkdir(session: FilesSessionRef, path: string, opts: RequestOptions & { parents?: boolean } = {}): Promise<void> {
    const base = await this.#base(session, opts);
    await this.#request(base, { op: "mkdir", path: cleanPath(path), parents: opts.parents ?? true }, opts);
  }

  /** Renames from → to inside the file root. Over the WebSocket protocol. */
  async rename(session: FilesSessionRef, from: string, to: string, opts: RequestOptions = {}): Promise<void> {
    const base = await this.#base(session, opts);
    await this.#request(base, { op: "rename", path: cleanPath(from), to: cleanPath(to) }, opts);
  }

  async #base(session: FilesSessionRef, opts: RequestOptions): Promise<FilesBase> {
    const url = await this.#resolve(session, opts);
    const u = new URL(url);
    const token = u.searchParams.get("token") ?? "";
    u.search = "";
    const ws = u.toString().replace(/\/$/, "");
    return { ws: url, http: ws.replace(/^ws/, "http"), token };
  }

  async #get(base: FilesBase, path: string, opts: DownloadOptions, signal: AbortSignal): Promise<Response> {
    const headers: Record<string, string> = {};
    if (opts.range) {
      const end = opts.range.length === undefined ? "" : String(opts.range.offset + opts.range.length - 1);
      headers["Range"] = `bytes=${opts.range.offset}-${end}`;
    }
    const res = await this.#fetch(fileUrl(base, path), { method: "GET", headers, signal });
    await throwIfNotOk(res);
    return res;
  }

  /** One request of the WebSocket protocol on a connection of its own. */
  async #request(base: FilesBase, req: Record<string, unknown>, opts: RequestOptions): Promise<Record<string, unknown>> {
    return withDeadline(opts, 30_000, `files ${String(req["op"])}`, async (signal) => {
      const ws = await openWebSocket(base.ws, FILES_PROTOCOL, { webSocket: this.#webSocket, fetch: this.#fetch, signal });
      try {
        return await new Promise<Record<string, unknown>>((resolve, reject) => {
          signal.addEventListener("abort", () => reject(signal.reason), { once: true });
          ws.addEventListener("message", (ev: { data: unknown }) => {
            const text = typeof ev.data === "string" ? ev.data : new TextDecoder().decode(messageBytes(ev.data));
            let m: Record<string, unknown>;
            try {
              m = JSON.parse(text);
            } catch {
              return; // data frames: not for this request
            }
            if (m["id"] !== 1) return;
            const err = m["error"];
            if (err !== undefined && err !== null) {
              const e = (typeof err === "object" ? err : { message: String(err) }) as Record<string, unknown>;
              reject(
                new NimbusError({
                  code: String(e["code"] ?? "unknown"),
                  status: Number(e["status"] ?? 0),
                  message: String(e["detail"] ?? e["message"] ?? e["code"] ?? "files request failed"),
                  details: e["details"] as Record<string, unknown> | undefined,
                }),
              );
            } else resolve(m);
          });
          ws.addEventListener("close", (ev: { code?: number; reason?: string }) =>
            reject(new NimbusError({ code: "connection_closed", status: 0, message: `files: connection ended (${ev.code} ${ev.reason ?? ""})` })),
          );
          ws.send(JSON.stringify({ id: 1, ...req }));
        });
      } finally {
        ws.close(1000, "");
      }
    });
  }
}

/** A Session, a session id, or a files connect URL. */
export type FilesSessionRef = Session | string;

function cleanPath(path: string): string {
  return splitPath(path).join("/");
}

function splitPath(path: string): string[] {
  return path.split("/").filter((s) => s !== "" && s !== ".");
}

function fileUrl(base: FilesBase, path: string): string {
  const p = splitPath(path).map(encodeURIComponent).join("/");
  return `${base.http}/${p}?token=${encodeURIComponent(base.token)}`;
}

async function uploadBody(
  data: UploadData,
  onProgress: UploadOptions["onProgress"],
): Promise<{ body: BodyInit; total: number | undefined; sent: () => number }> {
  let sent = 0;
  if (typeof data === "string") data = new TextEncoder().encode(data);
  if (data instanceof ArrayBuffer) data = new Uint8Array(data);
  const total = data instanceof Uint8Array ? data.byteLength : typeof Blob !== "undefined" && data instanceof Blob ? data.size : undefined;
  if (!isNode || (!onProgress && (data instanceof Uint8Array || (typeof Blob !== "undefined" && data instanceof Blob)))) {
    // Browsers stream request bodies only over HTTP/2, so there a stream is
    // gathered first; known-size bodies go as they are.
    if (data instanceof Uint8Array || (typeof Blob !== "undefined" && data instanceof Blob)) {
      return { body: data as BodyInit, total, sent: () => total ?? 0 };
    }
    const parts: Uint8Array[] = [];
    for await (const c of iterate(data)) {
      parts.push(c);
      sent += c.byteLength;
      onProgress?.(sent, undefined);
    }
    const blob = new Blob(parts as BlobPart[]);
    return { body: blob, total: blob.size, sent: () => sent };
  }
  const source = data;
  const chunks = iterate(source)[Symbol.asyncIterator]();
  const body = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      const r = await chunks.next();
      if (r.done) {
        ctl.close();
        return;
      }
      for (let o = 0; o < r.value.byteLength; o += UPLOAD_CHUNK) {
        const c = r.value.subarray(o, o + UPLOAD_CHUNK);
        ctl.enqueue(c);
        sent += c.byteLength;
      }
      onProgress?.(sent, total);
    },
    async cancel(reason) {
      await chunks.return?.(reason);
    },
  });
  return { body, total, sent: () => sent };
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
