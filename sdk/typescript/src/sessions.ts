import { callJson, type Transport } from "./http.js";
import {
  sessionId,
  type CloseSessionRequest,
  type ListSessionsRequest,
  type OpenSessionRequest,
  type RequestOptions,
  type Session,
  type SessionRef,
} from "./types.js";

interface PageBody {
  items?: Session[];
  nextPageToken?: string;
}

/**
 * One page of a session listing, newest first. It is also an async
 * iterable over every session from this page on, fetching the next pages
 * as it goes:
 *
 *     const page = await nimbus.sessions.list({ state: "open" });
 *     page.items;                       // this page
 *     for await (const s of page) {}    // this page and the ones after it
 */
export class SessionPage implements AsyncIterable<Session> {
  /** The sessions of this page. */
  readonly items: Session[];
  /** The token of the next page; undefined on the last page. */
  readonly nextPageToken: string | undefined;
  readonly #fetchPage: (pageToken: string, opts?: RequestOptions) => Promise<SessionPage>;

  constructor(body: PageBody, fetchPage: (pageToken: string, opts?: RequestOptions) => Promise<SessionPage>) {
    this.items = body.items ?? [];
    this.nextPageToken = body.nextPageToken || undefined;
    this.#fetchPage = fetchPage;
  }

  /** Whether there is a page after this one. */
  hasNextPage(): boolean {
    return this.nextPageToken !== undefined;
  }

  /** The next page, or null after the last one. */
  async nextPage(opts?: RequestOptions): Promise<SessionPage | null> {
    return this.nextPageToken === undefined ? null : this.#fetchPage(this.nextPageToken, opts);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Session> {
    let page: SessionPage | null = this;
    while (page) {
      yield* page.items;
      page = await page.nextPage();
    }
  }

  toJSON(): PageBody {
    return this.nextPageToken === undefined ? { items: this.items } : { items: this.items, nextPageToken: this.nextPageToken };
  }
}

/**
 * What `sessions.list` returns: await it for the first page, or iterate it
 * with `for await` for every session of every page. The first request is
 * sent when it is first awaited or iterated.
 */
export class SessionList implements Promise<SessionPage>, AsyncIterable<Session> {
  readonly [Symbol.toStringTag] = "SessionList";
  #first: Promise<SessionPage> | undefined;
  readonly #load: () => Promise<SessionPage>;

  constructor(load: () => Promise<SessionPage>) {
    this.#load = load;
  }

  #page(): Promise<SessionPage> {
    return (this.#first ??= this.#load());
  }

  then<R1 = SessionPage, R2 = never>(
    onfulfilled?: ((value: SessionPage) => R1 | PromiseLike<R1>) | null,
    onrejected?: ((reason: unknown) => R2 | PromiseLike<R2>) | null,
  ): Promise<R1 | R2> {
    return this.#page().then(onfulfilled, onrejected);
  }

  catch<R = never>(onrejected?: ((reason: unknown) => R | PromiseLike<R>) | null): Promise<SessionPage | R> {
    return this.#page().catch(onrejected);
  }

  finally(onfinally?: (() => void) | null): Promise<SessionPage> {
    return this.#page().finally(onfinally);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Session> {
    yield* await this.#page();
  }
}

/** `nimbus.sessions`: open, read, list, close sessions and mint connect URLs. */
export class Sessions {
  readonly #t: Transport;
  readonly #path: string;

  /** @internal */
  constructor(t: Transport, tenantId: string) {
    this.#t = t;
    this.#path = `/v1/tenants/${encodeURIComponent(tenantId)}/sessions`;
  }

  /**
   * Opens a session on one target with the given channels. The answer
   * carries `status.connect`, one signed URL per channel.
   */
  open(req: OpenSessionRequest, opts?: RequestOptions): Promise<Session> {
    const body: Record<string, unknown> = { target: req.target, channels: req.channels };
    if (req.requestedTtlMs !== undefined) body["requestedTtlMs"] = req.requestedTtlMs;
    return callJson<Session>(this.#t, "POST", this.#path, body, opts);
  }

  /** Reads a session (without connect URLs). */
  get(ref: SessionRef, opts?: RequestOptions): Promise<Session> {
    return callJson<Session>(this.#t, "GET", this.#sessionPath(ref), undefined, opts);
  }

  /**
   * Lists sessions, newest first. `await` it for one page
   * (`{items, nextPageToken}`), or iterate it with `for await` for every
   * session of every page.
   */
  list(req: ListSessionsRequest = {}, opts?: RequestOptions): SessionList {
    return new SessionList(() => this.#listPage(req, req.pageToken, opts));
  }

  /** Every session of every page (matching req.state), newest first. */
  async listAll(req: Omit<ListSessionsRequest, "pageToken"> = {}, opts?: RequestOptions): Promise<Session[]> {
    const all: Session[] = [];
    let page: SessionPage | null = await this.#listPage(req, undefined, opts);
    while (page) {
      all.push(...page.items);
      page = await page.nextPage(opts);
    }
    return all;
  }

  /**
   * Closes a session with a reason (default "closed"). Closing a closed
   * session returns it unchanged; an expired one is `session_not_open`.
   */
  close(req: CloseSessionRequest | SessionRef, opts?: RequestOptions): Promise<Session> {
    const reason = typeof req === "object" && "reason" in req ? req.reason : undefined;
    const body = reason === undefined ? {} : { reason };
    return callJson<Session>(this.#t, "POST", `${this.#sessionPath(req as SessionRef)}/close`, body, opts);
  }

  /** Mints fresh connect URLs (`status.connect`) for an open session. */
  connect(ref: SessionRef, opts?: RequestOptions): Promise<Session> {
    return callJson<Session>(this.#t, "POST", `${this.#sessionPath(ref)}/connect`, {}, opts);
  }

  #sessionPath(ref: SessionRef): string {
    const id = sessionId(ref);
    if (typeof id !== "string" || id === "") throw new TypeError("a session id is required");
    return `${this.#path}/${encodeURIComponent(id)}`;
  }

  #listPage(req: ListSessionsRequest, pageToken: string | undefined, opts: RequestOptions | undefined): Promise<SessionPage> {
    const q = new URLSearchParams();
    if (req.state !== undefined) q.set("state", req.state);
    if (req.pageSize !== undefined) q.set("pageSize", String(req.pageSize));
    if (pageToken !== undefined) q.set("pageToken", pageToken);
    const qs = q.toString();
    return callJson<PageBody>(this.#t, "GET", qs ? `${this.#path}?${qs}` : this.#path, undefined, opts).then(
      (body) => new SessionPage(body, (next, o) => this.#listPage(req, next, o ?? opts)),
    );
  }
}
