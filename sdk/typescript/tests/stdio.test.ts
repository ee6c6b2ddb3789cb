// The stdio channel (SPEC §5.1) through nimbus.stdio.attach, against real
// workloads of a real gateway.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { WebSocket as WsWebSocket } from "ws";
import {
  Nimbus,
  NimbusError,
  attachStdio,
  type Session,
  type StdioChunk,
  type StdioConnection,
  type WebSocketConstructor,
  type WebSocketLike,
} from "@nimbus/nimbus";
import { startGateway, type Gateway } from "./helpers/gateway.js";

let gw: Gateway;
let nimbus: Nimbus;
const dec = new TextDecoder();

before(async () => {
  gw = await startGateway();
  const sandboxes: [string, string[], boolean][] = [
    ["sbx-exit", ["/bin/sh", "-c", "read name; echo hi $name; echo oops >&2; exit 3"], false],
    ["sbx-exit2", ["/bin/sh", "-c", "read name; echo hi $name; echo oops >&2; exit 3"], false],
    ["sbx-cat", ["/bin/cat"], false],
    ["sbx-trap", ["/bin/sh", "-c", 'trap "echo got INT; exit 7" INT; echo ready; while :; do sleep 0.1; done'], false],
  ];
  for (const [id, command, tty] of sandboxes) {
    const r = await gw.admin("POST", "/v1/tenants/demo/sandboxes", { id, command, tty });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    assert.equal(r.body.state, "ready");
  }
  const token = await gw.mint([
    "--tenant", "demo", "--subject", "alice", "--service", "worker",
    "--sandbox", "sbx-worker", "--sandbox", "sbx-exit", "--sandbox", "sbx-exit2", "--sandbox", "sbx-cat", "--sandbox", "sbx-trap",
  ]);
  nimbus = new Nimbus({ endpoint: gw.endpoint, tenantId: "demo", token });
});
after(async () => {
  await gw?.stop();
});

function openOn(target: { sandbox: { id: string } } | { service: { name: string } }, requestedTtlMs?: number): Promise<Session> {
  return nimbus.sessions.open({ target, channels: ["stdio"], requestedTtlMs });
}

/** Reads output until the accumulated stdout text matches re. */
async function readUntil(conn: StdioConnection, re: RegExp, timeoutMs = 10_000): Promise<string> {
  let text = "";
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      conn.off("data", on);
      reject(new Error(`timeout waiting for ${re}; got ${JSON.stringify(text)}`));
    }, timeoutMs);
    const on = (c: StdioChunk) => {
      text += dec.decode(c.data);
      if (re.test(text)) {
        clearTimeout(t);
        conn.off("data", on);
        resolve(text);
      }
    };
    conn.on("data", on);
  });
}

describe("stdio", () => {
  test("pipes: stdout and stderr apart, then the exit code, then close 1000", async () => {
    const s = await openOn({ sandbox: { id: "sbx-exit" } });
    const conn = await nimbus.stdio.attach(s);
    assert.deepEqual(conn.hello, { tty: false, replayed: 0 });
    conn.write("bob\n");
    const chunks: StdioChunk[] = [];
    for await (const c of conn.output) chunks.push(c);
    const out = (stream: string) => chunks.filter((c) => c.stream === stream).map((c) => dec.decode(c.data)).join("");
    assert.equal(out("stdout"), "hi bob\n");
    assert.equal(out("stderr"), "oops\n");
    assert.deepEqual(await conn.exited, { code: 3, signal: null, reason: "exited" });
    const closed = await conn.closed;
    assert.equal(closed.code, 1000);
    assert.equal(conn.open, false);
    assert.throws(() => conn.write("x"), (e: unknown) => e instanceof NimbusError && e.code === "connection_closed");

    // Attaching after the exit: the tail of the output, the exit, 1000.
    const again = await nimbus.stdio.attach(s);
    assert.equal(again.hello.replayed, "hi bob\noops\n".length);
    assert.equal((await again.exited).code, 3);
    assert.equal((await again.closed).code, 1000);
  });

  test("tty: a shell echoes, resize changes stty size, onData and on('data') both see output", async () => {
    const s = await openOn({ service: { name: "worker" } });
    const seen: string[] = [];
    const conn = await nimbus.stdio.attach(s, { onData: (c) => seen.push(dec.decode(c.data)) });
    assert.equal(conn.hello.tty, true);
    conn.resize(100, 30);
    conn.write("echo hi-$((40+2))\n");
    await readUntil(conn, /hi-42/);
    conn.write("stty size\n");
    await readUntil(conn, /30 100/);
    conn.resize(132, 43);
    conn.write("stty size\n");
    await readUntil(conn, /43 132/);
    assert.match(seen.join(""), /hi-42[\s\S]*30 100[\s\S]*43 132/);
    assert.equal((await conn.close()).code, 1000);
    // The workload keeps running: a new attachment gets the replay of recent output.
    const next = await nimbus.stdio.attach(s.metadata.id);
    assert.ok(next.hello.replayed > 0);
    const replay = await readUntil(next, /43 132/);
    assert.match(replay, /hi-42/);
    await next.close();
  });

  test("several clients: all get the output, any may write", async () => {
    const s = await openOn({ service: { name: "worker" } });
    const a = await nimbus.stdio.attach(s);
    const b = await nimbus.stdio.attach(s);
    const both = Promise.all([readUntil(a, /from-b-7/), readUntil(b, /from-b-7/)]);
    b.write("echo from-b-$((3+4))\n");
    await both;
    await Promise.all([a.close(), b.close()]);
  });

  test("eof ends stdin; a signal reaches the workload", async () => {
    const cat = await nimbus.stdio.attach(await openOn({ sandbox: { id: "sbx-cat" } }));
    const got = readUntil(cat, /abc/);
    cat.write(new TextEncoder().encode("abc"));
    await got;
    cat.end();
    assert.deepEqual(await cat.exited, { code: 0, signal: null, reason: "exited" });

    const trap = await nimbus.stdio.attach(await openOn({ sandbox: { id: "sbx-trap" } }));
    await readUntil(trap, /ready/);
    const exit = new Promise((r) => trap.on("exit", r));
    trap.signal("SIGINT");
    const text = await readUntil(trap, /got INT/);
    assert.match(text, /got INT/);
    assert.deepEqual(await exit, { code: 7, signal: null, reason: "exited" });
    assert.equal((await trap.closed).code, 1000);
  });

  test("a large write is chunked and arrives whole", async () => {
    // A fresh cat: the one of the previous test has exited.
    await gw.admin("POST", "/v1/tenants/demo/sandboxes", { id: "sbx-cat2", command: ["/bin/sh", "-c", "wc -c"], tty: false });
    const t = await gw.mint(["--tenant", "demo", "--subject", "alice", "--sandbox", "sbx-cat2"]);
    const n = new Nimbus({ endpoint: gw.endpoint, tenantId: "demo", token: t });
    const conn = await n.stdio.attach(await n.sessions.open({ target: { sandbox: { id: "sbx-cat2" } }, channels: ["stdio"] }));
    const big = new Uint8Array(300 * 1024).fill(97);
    conn.write(big);
    conn.end();
    const out = await readUntil(conn, /\d+\s*$/);
    assert.equal(out.trim(), String(big.byteLength));
    assert.equal((await conn.exited).code, 0);
  });

  test("closing the session disconnects with 4410; exited rejects", async () => {
    const s = await openOn({ service: { name: "worker" } });
    const conn = await nimbus.stdio.attach(s);
    const closes: number[] = [];
    conn.on("close", (c) => closes.push(c.code));
    await nimbus.sessions.close({ id: s.metadata.id, reason: "bye" });
    const closed = await conn.closed;
    assert.equal(closed.code, 4410);
    assert.match(closed.reason, /session closed: bye/);
    assert.deepEqual(closes, [4410]);
    await assert.rejects(conn.exited, (e: unknown) => e instanceof NimbusError && e.code === "connection_closed" && e.details?.["closeCode"] === 4410);
  });

  test("expiry disconnects with 4408", async () => {
    const s = await openOn({ service: { name: "worker" } }, 1000);
    const conn = await nimbus.stdio.attach(s);
    const t0 = Date.now();
    const closed = await conn.closed;
    assert.equal(closed.code, 4408);
    assert.ok(Date.now() - t0 < 3000);
  });

  test("a refused connect is the gateway's NimbusError (ws, and a WHATWG WebSocket)", async () => {
    const s = await openOn({ service: { name: "worker" } });
    const url = s.status.connect!.stdio!;
    await nimbus.sessions.close({ id: s.metadata.id, reason: "done" });
    const viaWs = await attachStdio(url).then(() => undefined, (e: unknown) => e);
    assert.ok(viaWs instanceof NimbusError, String(viaWs));
    assert.equal(viaWs.code, "session_not_open");
    assert.equal(viaWs.status, 409);
    assert.match(viaWs.requestId!, /^req_/);
    assert.equal(viaWs.details?.["state"], "closed");
    // A browser-like WebSocket hides the answer: the SDK asks again with a GET.
    const viaWhatwg = await attachStdio(url, { webSocket: WhatwgOnly }).then(() => undefined, (e: unknown) => e);
    assert.ok(viaWhatwg instanceof NimbusError, String(viaWhatwg));
    assert.equal(viaWhatwg.code, "session_not_open");
    // A bad token.
    const bad = url.replace(/token=[^&]+/, "token=garbage");
    await assert.rejects(attachStdio(bad), { code: "unauthenticated", status: 401 });
    // Nothing listening: a network error.
    await assert.rejects(attachStdio("ws://127.0.0.1:1/v1/connect/ses_x/stdio?token=t"), { name: "NimbusNetworkError", code: "network" });
  });

  test("a WHATWG WebSocket (as in browsers) works for a whole exchange", async () => {
    const s = await openOn({ sandbox: { id: "sbx-exit2" } });
    const conn = await nimbus.stdio.attach(s, { webSocket: WhatwgOnly });
    conn.write("bob\n");
    assert.equal((await conn.exited).code, 3);
    const chunks = await collect(conn);
    // Two pipes: the order between stdout and stderr is not defined.
    const of = (stream: string) => chunks.filter((c) => c.stream === stream).map((c) => dec.decode(c.data)).join("");
    assert.equal(of("stdout"), "hi bob\n");
    assert.equal(of("stderr"), "oops\n");
  });
});

async function collect(conn: StdioConnection): Promise<StdioChunk[]> {
  const out: StdioChunk[] = [];
  for await (const c of conn.output) out.push(c);
  return out;
}

/** ws behind only the WHATWG surface (no EventEmitter `on`), like a browser's WebSocket. */
const WhatwgOnly: WebSocketConstructor = class implements WebSocketLike {
  #ws: WsWebSocket;
  constructor(url: string, protocols?: string | string[]) {
    this.#ws = new WsWebSocket(url, protocols);
    this.#ws.on("error", () => {});
  }
  get readyState() { return this.#ws.readyState; }
  get protocol() { return this.#ws.protocol; }
  get bufferedAmount() { return this.#ws.bufferedAmount; }
  get binaryType() { return this.#ws.binaryType; }
  set binaryType(v: string) { this.#ws.binaryType = v as "arraybuffer"; }
  send(d: ArrayBufferLike | ArrayBufferView | string) { this.#ws.send(d); }
  close(code?: number, reason?: string) { this.#ws.close(code, reason); }
  addEventListener(type: string, fn: (ev: any) => void, o?: { once?: boolean }) { this.#ws.addEventListener(type as "message", fn, o); }
  removeEventListener(type: string, fn: (ev: any) => void) { this.#ws.removeEventListener(type as "message", fn); }
};
