import { NimbusError } from "./errors.js";
import type { FetchLike } from "./http.js";
import { messageBytes, openWebSocket, type WebSocketConstructor, type WebSocketLike } from "./websocket.js";

/** The subprotocol of the stdio channel (SPEC §5.1). */
export const STDIO_PROTOCOL = "nimbus.stdio.v1";

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const CONTROL = 3;
/** The largest stdin message sent (the server takes up to 1 MiB). */
const STDIN_CHUNK = 32 * 1024;

/** A piece of the workload's output. */
export interface StdioChunk {
  stream: "stdout" | "stderr";
  data: Uint8Array;
}

/** The server's first message. */
export interface StdioHello {
  /** Whether the workload runs on a terminal (then stderr is merged into stdout). */
  tty: boolean;
  /** How many bytes of recent output are replayed first. */
  replayed: number;
}

/** How the workload ended. */
export interface StdioExit {
  code: number;
  /** The signal that killed it, e.g. "SIGKILL"; null when it exited by itself. */
  signal: string | null;
  /**
   * How it ended: "exited", "signaled", or "oom" when the kernel killed it
   * for going over its memory limit (a runc sandbox's cgroup).
   */
  reason: "exited" | "signaled" | "oom";
}

/**
 * How the connection ended: 1000 after the workload exited, 4408 session
 * expired, 4410 session closed, 4429 slow consumer, 4502 target
 * unavailable, 1001 gateway shutting down, 1006 dropped without a close.
 */
export interface StdioClose {
  code: number;
  reason: string;
}

export interface StdioAttachOptions {
  /** Called with every piece of output, in order. */
  onData?: ((chunk: StdioChunk) => void) | undefined;
  /** Aborts the attach (not the connection once attached). */
  signal?: AbortSignal | undefined;
  /** The WebSocket implementation (default: global WebSocket, else `ws`). */
  webSocket?: WebSocketConstructor | undefined;
  /** Used only to explain a refused connect in browsers. */
  fetch?: FetchLike | undefined;
}

type Events = {
  data: (chunk: StdioChunk) => void;
  exit: (exit: StdioExit) => void;
  close: (close: StdioClose) => void;
};

/**
 * An attached stdio connection (see `nimbus.stdio.attach`). Output can be
 * read three ways: the `onData` option, `on("data", fn)`, and
 * `for await (const c of conn.output)`. Output that arrives while there is
 * no reader at all (typically the replay, right after attach resolves) is
 * kept and handed to the first reader, so nothing is missed; a reader added
 * after another sees output from then on.
 */
export class StdioConnection {
  /** The server's hello: tty, and how many bytes of recent output are replayed. */
  readonly hello: StdioHello;
  /** Resolves when the workload exits; rejects (code "connection_closed") if the connection ends first. */
  readonly exited: Promise<StdioExit>;
  /** Resolves when the connection has ended, however it ended. */
  readonly closed: Promise<StdioClose>;
  /** The output, until the connection ends. One iteration at a time. */
  readonly output: AsyncIterable<StdioChunk>;

  readonly #ws: WebSocketLike;
  readonly #listeners: { [K in keyof Events]: Set<Events[K]> } = { data: new Set(), exit: new Set(), close: new Set() };
  readonly #encoder = new TextEncoder();
  #exit: StdioExit | undefined;
  #ended: StdioClose | undefined;
  /** Output that came while nobody read; given to the first reader. */
  #pending: StdioChunk[] = [];
  #iterating = false;
  #queue: StdioChunk[] = [];
  #wake: (() => void) | undefined;
  #resolveExit!: (e: StdioExit) => void;
  #rejectExit!: (e: unknown) => void;
  #resolveClosed!: (c: StdioClose) => void;

  /** @internal Use nimbus.stdio.attach. */
  constructor(ws: WebSocketLike, hello: StdioHello, onData: ((chunk: StdioChunk) => void) | undefined) {
    this.#ws = ws;
    this.hello = hello;
    if (onData) this.#listeners.data.add(onData);
    this.exited = new Promise<StdioExit>((res, rej) => {
      this.#resolveExit = res;
      this.#rejectExit = rej;
    });
    this.exited.catch(() => {}); // not awaiting it is fine
    this.closed = new Promise<StdioClose>((res) => (this.#resolveClosed = res));
    const self = this;
    this.output = {
      [Symbol.asyncIterator]: () => self.#iterate(),
    };
    ws.addEventListener("message", (ev: { data: unknown }) => this.#onMessage(ev.data));
    ws.addEventListener("close", (ev: { code?: number; reason?: string }) => this.#onClose(ev.code ?? 1006, ev.reason ?? ""));
  }

  /** Whether the connection is still open. */
  get open(): boolean {
    return this.#ended === undefined;
  }

  /** Bytes queued to send but not yet sent. */
  get bufferedAmount(): number {
    return this.#ws.bufferedAmount;
  }

  /** Sends data to the workload's stdin (a string is sent as UTF-8). */
  write(data: string | Uint8Array): void {
    const bytes = typeof data === "string" ? this.#encoder.encode(data) : data;
    for (let o = 0; o < bytes.byteLength; o += STDIN_CHUNK) {
      this.#send(STDIN, bytes.subarray(o, Math.min(o + STDIN_CHUNK, bytes.byteLength)));
    }
  }

  /** Sets the terminal size (ignored by the server when the workload runs on pipes). */
  resize(cols: number, rows: number): void {
    this.#control({ type: "resize", cols, rows });
  }

  /** Sends a signal to the workload, e.g. "SIGINT". */
  signal(name: string): void {
    this.#control({ type: "signal", signal: name });
  }

  /** Closes the workload's stdin (on a terminal: sends the EOF character). */
  end(): void {
    this.#control({ type: "eof" });
  }

  /** Leaves (the workload keeps running); resolves when the connection has ended. */
  close(code = 1000, reason = ""): Promise<StdioClose> {
    if (this.#ended === undefined) {
      try {
        this.#ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    return this.closed;
  }

  /** Adds a listener: "data" (each output chunk), "exit" (the workload ended), "close" (the connection ended). */
  on<K extends keyof Events>(event: K, fn: Events[K]): this {
    this.#listeners[event].add(fn);
    if (event === "data" && this.#pending.length > 0) {
      const held = this.#pending;
      this.#pending = [];
      // After on() returns, and before any later message is dispatched.
      queueMicrotask(() => {
        for (const c of held) for (const f of this.#listeners.data) f(c);
      });
    }
    return this;
  }

  /** Removes a listener added with on. */
  off<K extends keyof Events>(event: K, fn: Events[K]): this {
    this.#listeners[event].delete(fn);
    return this;
  }

  #control(msg: Record<string, unknown>): void {
    this.#send(CONTROL, this.#encoder.encode(JSON.stringify(msg)));
  }

  #send(stream: number, payload: Uint8Array): void {
    if (this.#ended !== undefined || this.#ws.readyState !== 1) {
      throw new NimbusError({ code: "connection_closed", status: 0, message: "the stdio connection has ended" });
    }
    const msg = new Uint8Array(payload.byteLength + 1);
    msg[0] = stream;
    msg.set(payload, 1);
    this.#ws.send(msg);
  }

  #onMessage(data: unknown): void {
    const b = messageBytes(data);
    if (b === undefined || b.byteLength === 0) return; // text frames are not part of v1
    const kind = b[0];
    if (kind === STDOUT || kind === STDERR) {
      // Copy: the buffer may be reused by the WebSocket implementation.
      this.#emitData({ stream: kind === STDOUT ? "stdout" : "stderr", data: b.slice(1) });
    } else if (kind === CONTROL) {
      let m: { type?: string; code?: number; signal?: string | null; reason?: StdioExit["reason"] };
      try {
        m = JSON.parse(new TextDecoder().decode(b.subarray(1)));
      } catch {
        return;
      }
      if (m.type === "exit") {
        const signal = m.signal ?? null;
        this.#exit = { code: m.code ?? 0, signal, reason: m.reason ?? (signal === null ? "exited" : "signaled") };
        this.#resolveExit(this.#exit);
        for (const fn of this.#listeners.exit) fn(this.#exit);
      }
      // Other control messages are for later versions: skipped.
    }
  }

  #emitData(chunk: StdioChunk): void {
    if (this.#iterating) {
      this.#queue.push(chunk);
      this.#wake?.();
    } else if (this.#listeners.data.size === 0) {
      this.#pending.push(chunk);
    }
    for (const fn of this.#listeners.data) fn(chunk);
  }

  #onClose(code: number, reason: string): void {
    if (this.#ended !== undefined) return;
    this.#ended = { code, reason };
    if (this.#exit === undefined) {
      this.#rejectExit(
        new NimbusError({
          code: "connection_closed",
          status: 0,
          message: `the stdio connection ended (${code}${reason ? ` ${reason}` : ""}) before the workload exited`,
          details: { closeCode: code, closeReason: reason },
        }),
      );
    }
    this.#resolveClosed(this.#ended);
    this.#wake?.();
    for (const fn of this.#listeners.close) fn(this.#ended);
  }

  async *#iterate(): AsyncGenerator<StdioChunk> {
    if (this.#iterating) throw new Error("stdio output is already being iterated");
    this.#iterating = true;
    this.#queue.push(...this.#pending);
    this.#pending = [];
    try {
      for (;;) {
        const c = this.#queue.shift();
        if (c !== undefined) {
          yield c;
          continue;
        }
        if (this.#ended !== undefined) return;
        await new Promise<void>((res) => (this.#wake = res));
        this.#wake = undefined;
      }
    } finally {
      this.#iterating = false;
      this.#queue.length = 0;
    }
  }
}

/**
 * Attaches to a stdio connect URL and resolves after the server's hello.
 * A refused connect rejects with the gateway's NimbusError (e.g.
 * `session_not_open` for a closed or expired session).
 */
export async function attachStdio(url: string, opts: StdioAttachOptions = {}): Promise<StdioConnection> {
  let resolveHello!: (c: StdioConnection) => void;
  let rejectHello!: (e: unknown) => void;
  const hello = new Promise<StdioConnection>((res, rej) => {
    resolveHello = res;
    rejectHello = rej;
  });
  const setup = (ws: WebSocketLike) => {
    const onFirst = (ev: { data: unknown }) => {
      ws.removeEventListener("message", onFirst);
      ws.removeEventListener("close", onClose);
      const b = messageBytes(ev.data);
      let h: { type?: string; tty?: boolean; replayed?: number } | undefined;
      if (b && b[0] === CONTROL) {
        try {
          h = JSON.parse(new TextDecoder().decode(b.subarray(1)));
        } catch {
          h = undefined;
        }
      }
      if (h?.type !== "hello") {
        ws.close(1002, "expected hello");
        rejectHello(new NimbusError({ code: "protocol_error", status: 0, message: "stdio: the server did not start with hello" }));
        return;
      }
      // Made synchronously in this message's dispatch, so the messages
      // right behind it (the replay) reach the connection.
      resolveHello(new StdioConnection(ws, { tty: h.tty === true, replayed: h.replayed ?? 0 }, opts.onData));
    };
    const onClose = (ev: { code?: number; reason?: string }) => {
      ws.removeEventListener("message", onFirst);
      rejectHello(
        new NimbusError({
          code: "connection_closed",
          status: 0,
          message: `stdio: the connection ended before hello (${ev.code ?? 1006} ${ev.reason ?? ""})`,
          details: { closeCode: ev.code, closeReason: ev.reason },
        }),
      );
    };
    ws.addEventListener("message", onFirst);
    ws.addEventListener("close", onClose);
  };
  await openWebSocket(url, STDIO_PROTOCOL, { ...opts, onOpen: setup });
  return hello;
}
