import { NimbusError } from "./errors.js";
import { FilesClient } from "./files.js";
import type { FetchLike, TokenSource, Transport } from "./http.js";
import { Sessions } from "./sessions.js";
import { attachStdio, type StdioAttachOptions, type StdioConnection } from "./stdio.js";
import { sessionId, type Channel, type RequestOptions, type Session } from "./types.js";
import type { WebSocketConstructor } from "./websocket.js";

export interface NimbusOptions {
  /** The gateway's base URL, e.g. "http://localhost:8080". */
  endpoint: string;
  /** The tenant of every call, e.g. "demo". */
  tenantId: string;
  /**
   * The tenant token (a JWT), or a function returning a fresh one for each
   * call. Without one, calls fail with `unauthenticated`; connect URLs need none.
   */
  token?: TokenSource;
  /** Timeout of each API call in ms (default 30000; 0: none). Files transfers have none unless given per call. */
  timeoutMs?: number | undefined;
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: FetchLike | undefined;
  /** The WebSocket to use (default: globalThis.WebSocket, else the `ws` package). */
  webSocket?: WebSocketConstructor | undefined;
}

/** A session, a session id ("ses_…"), or a connect URL ("ws://…?token=…"). */
export type ConnectRef = Session | string;

/**
 * A client of one gateway for one tenant.
 *
 *     const nimbus = new Nimbus({ endpoint: "http://localhost:8080", tenantId: "demo", token });
 *     const session = await nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio"] });
 */
export class Nimbus {
  /** Open, get, list, close sessions, and mint connect URLs. */
  readonly sessions: Sessions;
  /** The `stdio` channel: attach to a workload's terminal or pipes. */
  readonly stdio: {
    /** Attaches to the session's stdio channel; resolves after the server's hello. */
    attach(session: ConnectRef, opts?: StdioAttachOptions): Promise<StdioConnection>;
  };
  /** The `files` channel: upload, download, list, stat, remove, mkdir. */
  readonly files: FilesClient;
  /** The `cdp` and `page` channels: URLs for Playwright, Puppeteer, chromedp. */
  readonly cdp: {
    /** The ws:// URL of the browser-level CDP endpoint (Playwright connectOverCDP, Puppeteer browserWSEndpoint). */
    url(session: ConnectRef, opts?: RequestOptions): Promise<string>;
    /** The http:// form ending in /cdp?token=… (connectOverCDP discovery via /json/version). */
    httpUrl(session: ConnectRef, opts?: RequestOptions): Promise<string>;
    /** The ws:// URL of the session's own page target (the `page` channel). */
    pageUrl(session: ConnectRef, opts?: RequestOptions): Promise<string>;
  };
  readonly #t: Transport;

  constructor(opts: NimbusOptions) {
    if (!opts || typeof opts.endpoint !== "string" || opts.endpoint === "") throw new TypeError("Nimbus: endpoint is required");
    if (typeof opts.tenantId !== "string" || opts.tenantId === "") throw new TypeError("Nimbus: tenantId is required");
    const fetchFn = opts.fetch ?? (globalThis.fetch?.bind(globalThis) as FetchLike | undefined);
    if (!fetchFn) throw new TypeError("Nimbus: no fetch available; pass options.fetch");
    const token = opts.token;
    this.#t = {
      endpoint: opts.endpoint.replace(/\/+$/, ""),
      fetch: fetchFn,
      timeoutMs: opts.timeoutMs ?? 30_000,
      token: async () => (typeof token === "function" ? await token() : token),
    };
    this.sessions = new Sessions(this.#t, opts.tenantId);
    const webSocket = opts.webSocket;
    this.stdio = {
      attach: async (session, o = {}) =>
        attachStdio(await this.connectUrl(session, "stdio", o), { webSocket, fetch: fetchFn, ...o }),
    };
    // Uploads on Node go through node:http unless a fetch was given (see files.ts, nodePut).
    this.files = new FilesClient(fetchFn, (ref, o) => this.connectUrl(ref, "files", o), webSocket, opts.fetch === undefined);
    this.cdp = {
      url: (session, o) => this.connectUrl(session, "cdp", o),
      httpUrl: async (session, o) => (await this.connectUrl(session, "cdp", o)).replace(/^ws/, "http"),
      pageUrl: (session, o) => this.connectUrl(session, "page", o),
    };
  }

  /**
   * The connect URL of one channel: a URL is returned as it is; a session
   * with `status.connect` (from open or connect) gives its own; a session
   * from get/list or a bare id gets fresh URLs minted (`sessions.connect`).
   */
  async connectUrl(session: ConnectRef, channel: Channel, opts?: RequestOptions): Promise<string> {
    if (typeof session === "string" && /^(wss?|https?):\/\//.test(session)) return session;
    let url = typeof session === "object" ? session.status?.connect?.[channel] : undefined;
    if (url === undefined) {
      const fresh = await this.sessions.connect(sessionId(session), opts);
      url = fresh.status.connect?.[channel];
    }
    if (url === undefined) {
      throw new NimbusError({
        code: "channel_unsupported",
        status: 0,
        message: `the session was not opened with the ${channel} channel`,
        details: { channel },
      });
    }
    return url;
  }
}
