// The files channel (docs/channels/files.md) through nimbus.files, against
// a real gateway: the demo `worker` service, whose sandbox sbx-worker has a
// file root.
import assert from "node:assert/strict";
import { createHash, randomFillSync } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, symlink } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Nimbus, NimbusError, type Session } from "@nimbus/nimbus";
import { recordingFetch, startGateway, type Gateway } from "./helpers/gateway.js";

let gw: Gateway;
let nimbus: Nimbus;
let session: Session;
const enc = new TextEncoder();
const dec = new TextDecoder();
const MiB = 1 << 20;

before(async () => {
  gw = await startGateway();
  const token = await gw.mint(["--tenant", "demo", "--subject", "alice", "--service", "worker"]);
  nimbus = new Nimbus({ endpoint: gw.endpoint, tenantId: "demo", token });
  session = await openFiles();
});
after(async () => {
  await gw?.stop();
});

function openFiles(): Promise<Session> {
  return nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio", "files"] });
}

// A full GC on demand, to see what the transfers hold (not garbage not yet collected).
setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

/** MiB held in ArrayBuffers after a full GC. */
function heldMiB(): number {
  gc();
  return process.memoryUsage().arrayBuffers / MiB;
}

/** The ws package shows the handshake's X-Request-Id; a global (WHATWG) WebSocket hides it. */
const wsRequestId = typeof (globalThis as { WebSocket?: unknown }).WebSocket === "undefined";

const sha256 = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");

/** Asserts that p rejects with a NimbusError of code and status, answered by the gateway (a request id). */
async function rejectsWith(p: Promise<unknown>, code: string, status: number, requestId = true): Promise<NimbusError> {
  const err = await p.then(
    () => assert.fail(`resolved; want ${code}`),
    (e: unknown) => e,
  );
  assert.ok(err instanceof NimbusError, `not a NimbusError: ${String(err)}`);
  assert.equal(err.code, code, err.message);
  assert.equal(err.status, status, err.message);
  if (requestId) assert.match(err.requestId ?? "", /^req_/, `no request id on ${err.code}`);
  return err;
}

describe("files", () => {
  test("a 100 MiB file round trip: streamed both ways, equal sha256, onProgress up to the total", async (t) => {
    const total = 100 * MiB;
    const chunk = MiB;
    const sent = createHash("sha256");
    // The data is made chunk by chunk and hashed as it is handed over:
    // never held whole.
    async function* source(): AsyncGenerator<Uint8Array> {
      for (let o = 0; o < total; o += chunk) {
        const c = randomFillSync(new Uint8Array(chunk));
        sent.update(c);
        yield c;
      }
    }
    const progress: [number, number | undefined][] = [];
    const held0 = heldMiB();
    let peak = 0;
    const sample = (n: number) => {
      if (n % (10 * MiB) === 0) peak = Math.max(peak, heldMiB() - held0);
    };
    const res = await nimbus.files.upload(session, "/big/blob.bin", source(), {
      size: total,
      onProgress: (n, t) => (progress.push([n, t]), sample(n)),
    });
    const sentHex = sent.digest("hex");
    assert.equal(res.path, "/big/blob.bin");
    assert.equal(res.bytes, total);
    assert.equal(res.sha256, sentHex);
    assert.equal(res.created, true);
    assert.match(res.etag ?? "", /^".+"$/);
    assert.ok(progress.length > 10, `onProgress called ${progress.length} times`);
    for (let i = 1; i < progress.length; i++) assert.ok(progress[i]![0] >= progress[i - 1]![0], "progress goes backwards");
    assert.deepEqual(progress.at(-1), [total, total]);
    assert.ok(progress.every(([, t]) => t === total));

    const st = await nimbus.files.stat(session, "big/blob.bin");
    assert.equal(st.size, total);
    assert.equal(st.type, "file");

    t.diagnostic(`peak during the upload: ${peak.toFixed(1)} MiB`);
    const got = createHash("sha256");
    let n = 0;
    const stream = await nimbus.files.downloadStream(session, "big/blob.bin");
    for await (const c of stream as unknown as AsyncIterable<Uint8Array>) {
      got.update(c);
      const before = n;
      n += c.byteLength;
      if (Math.floor(n / (10 * MiB)) > Math.floor(before / (10 * MiB))) peak = Math.max(peak, heldMiB() - held0);
    }
    assert.equal(n, total);
    assert.equal(got.digest("hex"), sentHex);
    // Neither direction held the file: what is in flight, and buffers
    // whose release trails the GC (about 20 MiB at most; 100 if the file
    // were held).
    t.diagnostic(`peak ArrayBuffer memory held during the round trip: ${peak.toFixed(1)} MiB`);
    assert.ok(peak < 50, `${peak.toFixed(1)} MiB held during the transfer`);

    // A range of it, as bytes.
    const part = await nimbus.files.download(session, "big/blob.bin", { range: { offset: total - 10, length: 10 } });
    assert.equal(part.byteLength, 10);
    await nimbus.files.remove(session, "big", { recursive: true });
  });

  test("upload forms: bytes, string, Blob, ReadableStream; replace answers created false; mode", async () => {
    const a = await nimbus.files.upload(session, "forms/a.txt", enc.encode("hello"));
    assert.deepEqual({ ...a, etag: undefined }, { path: "/forms/a.txt", bytes: 5, sha256: sha256("hello"), created: true, etag: undefined });
    assert.equal(dec.decode(await nimbus.files.download(session, "forms/a.txt")), "hello");

    const seen: number[] = [];
    const b = await nimbus.files.upload(session, "/forms/a.txt", "hello, again", { mode: 0o600, onProgress: (n) => seen.push(n) });
    assert.equal(b.created, false);
    assert.equal(b.bytes, 12);
    assert.equal(seen.at(-1), 12);
    assert.equal((await nimbus.files.stat(session, "forms/a.txt")).mode, "0600");
    // A replace keeps the mode unless told.
    await nimbus.files.upload(session, "forms/a.txt", new Blob([enc.encode("blob")]));
    const st = await nimbus.files.stat(session, "forms/a.txt");
    assert.equal(st.mode, "0600");
    assert.equal(st.size, 4);

    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(enc.encode("one,"));
        c.enqueue(enc.encode("two"));
        c.close();
      },
    });
    const r = await nimbus.files.upload(session, "forms/s.txt", stream, { mode: "0640" });
    assert.equal(r.sha256, sha256("one,two"));
    assert.equal((await nimbus.files.stat(session, "forms/s.txt")).mode, "0640");
    assert.equal(dec.decode(await nimbus.files.download(session, "forms/s.txt")), "one,two");
    const empty = await nimbus.files.upload(session, "forms/empty", new Uint8Array(0));
    assert.equal(empty.bytes, 0);
    assert.equal((await nimbus.files.download(session, "forms/empty")).byteLength, 0);
  });

  test("with the caller's fetch, uploads go through it (streamed or whole)", async () => {
    const rec = recordingFetch();
    let calls = 0;
    const viaFetch = new Nimbus({
      endpoint: gw.endpoint,
      tenantId: "demo",
      token: await gw.mint(["--tenant", "demo", "--subject", "alice", "--service", "worker"]),
      fetch: (i, init) => (calls++, rec.fetch(i, init)),
    });
    async function* gen() {
      for (let i = 0; i < 8; i++) yield new Uint8Array(100_000).fill(i);
    }
    const seen: number[] = [];
    const r = await viaFetch.files.upload(session, "fetch/gen.bin", gen(), { onProgress: (n) => seen.push(n) });
    assert.equal(r.bytes, 800_000);
    assert.equal(seen.at(-1), 800_000);
    assert.ok(seen.length > 2);
    const whole = await viaFetch.files.upload(session, "fetch/whole.txt", "whole");
    assert.equal(whole.sha256, sha256("whole"));
    assert.equal(calls, 2);
    assert.match(rec.lastRequestId() ?? "", /^req_/);
    async function* short() {
      yield enc.encode("abc");
    }
    await assert.rejects(viaFetch.files.upload(session, "fetch/whole.txt", short(), { size: 10 }), { code: "invalid_argument" });
    assert.equal(dec.decode(await viaFetch.files.download(session, "fetch/whole.txt")), "whole");
    await rejectsWith(viaFetch.files.upload(session, "../fetch", gen()), "permission_denied", 403);
    await viaFetch.files.remove(session, "fetch", { recursive: true });
  });

  test("an upload aborted through its signal rejects with the reason and leaves nothing", async () => {
    const ctl = new AbortController();
    async function* endless() {
      for (;;) yield new Uint8Array(256 * 1024);
    }
    const p = nimbus.files.upload(session, "aborted.bin", endless(), {
      signal: ctl.signal,
      onProgress: (n) => n >= 4 * MiB && ctl.abort(),
    });
    await assert.rejects(p, { name: "AbortError" });
    await rejectsWith(nimbus.files.stat(session, "aborted.bin"), "not_found", 404);
  });

  test("a stream short of its announced size fails and leaves the file untouched", async () => {
    await nimbus.files.upload(session, "short.txt", "original");
    async function* short() {
      yield enc.encode("only part");
    }
    const err = await nimbus.files.upload(session, "short.txt", short(), { size: 100 }).then(
      () => assert.fail("resolved"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof NimbusError);
    assert.equal(err.code, "invalid_argument");
    assert.equal(dec.decode(await nimbus.files.download(session, "short.txt")), "original");
    const names = (await nimbus.files.list(session, "/")).map((e) => e.name);
    assert.ok(!names.some((n) => n.endsWith(".part")), `a temp file is left: ${names}`);
  });

  test("mkdir, list, stat, rename, remove", async () => {
    await nimbus.files.mkdir(session, "tree/sub/deep");
    await nimbus.files.mkdir(session, "tree/sub/deep"); // parents: an existing directory is fine
    await nimbus.files.upload(session, "tree/sub/f.txt", "data", { mode: 0o600 });
    await nimbus.files.upload(session, "tree/b.txt", "bb");

    const l = await nimbus.files.list(session, "tree/sub");
    assert.equal(l.truncated, false);
    assert.deepEqual(
      l.map((e) => [e.name, e.type]),
      [["deep", "dir"], ["f.txt", "file"]],
    );
    const f = l[1]!;
    assert.equal(f.size, 4);
    assert.equal(f.mode, "0600");
    assert.match(f.mtime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(Math.abs(Date.parse(f.mtime) - Date.now()) < 60_000);

    const d = await nimbus.files.stat(session, "/tree/sub/deep");
    assert.equal(d.name, "deep");
    assert.equal(d.type, "dir");
    assert.match(d.mode, /^[0-7]{4}$/);
    const root = await nimbus.files.stat(session, "/");
    assert.equal(root.name, "/");
    assert.equal(root.type, "dir");
    assert.ok((await nimbus.files.list(session, "")).some((e) => e.name === "tree" && e.type === "dir"));

    await nimbus.files.rename(session, "tree/sub/f.txt", "/tree/g.txt");
    await nimbus.files.rename(session, "tree/b.txt", "tree/g2.txt");
    assert.deepEqual(
      (await nimbus.files.list(session, "tree")).map((e) => e.name),
      ["g.txt", "g2.txt", "sub"],
    );
    // rename replaces a file at `to`.
    await nimbus.files.rename(session, "tree/g2.txt", "tree/g.txt");
    assert.equal(dec.decode(await nimbus.files.download(session, "tree/g.txt")), "bb");

    // mkdir without parents.
    await rejectsWith(nimbus.files.mkdir(session, "tree/sub", { parents: false }), "already_exists", 409, wsRequestId);
    await rejectsWith(nimbus.files.mkdir(session, "tree/x/y", { parents: false }), "not_found", 404, wsRequestId);
    await rejectsWith(nimbus.files.mkdir(session, "tree/g.txt"), "already_exists", 409, wsRequestId);
    await nimbus.files.mkdir(session, "tree/x", { parents: false });

    // remove: a file, an empty directory, a tree only with recursive.
    await nimbus.files.remove(session, "tree/g.txt");
    await nimbus.files.remove(session, "tree/x");
    await rejectsWith(nimbus.files.remove(session, "tree"), "invalid_argument", 400);
    await nimbus.files.remove(session, "tree", { recursive: true });
    await rejectsWith(nimbus.files.stat(session, "tree"), "not_found", 404);
    await rejectsWith(nimbus.files.remove(session, "tree"), "not_found", 404);
  });

  test("errors are NimbusErrors with the gateway's code, status and request id", async () => {
    // not_found, over each verb of the HTTP face.
    const nf = await rejectsWith(nimbus.files.stat(session, "no/such"), "not_found", 404);
    assert.match(nf.message, /no\/such/);
    await rejectsWith(nimbus.files.download(session, "no/such"), "not_found", 404);
    await rejectsWith(nimbus.files.downloadStream(session, "no/such"), "not_found", 404);
    await rejectsWith(nimbus.files.list(session, "no/such"), "not_found", 404);
    // Over the WebSocket protocol: code and status, and the connection's request id.
    await rejectsWith(nimbus.files.rename(session, "no/such", "x"), "not_found", 404, wsRequestId);

    // Leaving the root is refused by the server, not resolved by the URL.
    const pd = await rejectsWith(nimbus.files.stat(session, "../escape"), "permission_denied", 403);
    assert.match(pd.message, /leaves the sandbox root/);
    await rejectsWith(nimbus.files.download(session, "../escape"), "permission_denied", 403);
    await rejectsWith(nimbus.files.upload(session, "../escape", "x"), "permission_denied", 403);
    await rejectsWith(nimbus.files.remove(session, "a/../../escape"), "permission_denied", 403);
    await rejectsWith(nimbus.files.list(session, ".."), "permission_denied", 403);
    await rejectsWith(nimbus.files.mkdir(session, "../escape"), "permission_denied", 403, wsRequestId);
    await rejectsWith(nimbus.files.rename(session, "x", "../escape"), "permission_denied", 403, wsRequestId);
    // Inside the root, dot segments are cleaned by the server: a/../b is b.
    await nimbus.files.upload(session, "dots/a/../b.txt", "b");
    assert.equal(dec.decode(await nimbus.files.download(session, "dots/b.txt")), "b");
    assert.equal((await nimbus.files.stat(session, "./dots/./b.txt")).name, "b.txt");

    // Wrong kinds.
    await rejectsWith(nimbus.files.download(session, "dots"), "invalid_argument", 400);
    await rejectsWith(nimbus.files.list(session, "dots/b.txt"), "invalid_argument", 400);
    await rejectsWith(nimbus.files.upload(session, "dots", "x"), "invalid_argument", 400);
    await assert.rejects(nimbus.files.upload(session, "m", "x", { mode: 0o17777 }), { code: "invalid_argument" });
    await nimbus.files.remove(session, "dots", { recursive: true });
  });

  test("a symlink that points out of the root is reported as itself and refused", async () => {
    const root = join(gw.dataDir, "sandboxes", "demo", "sbx-worker");
    assert.ok(existsSync(root), `no sandbox root at ${root}`);
    await nimbus.files.upload(session, "links/in.txt", "inside");
    await symlink("/etc/hostname", join(root, "links", "out"));
    await symlink("in.txt", join(root, "links", "in"));
    assert.equal((await nimbus.files.stat(session, "links/out")).type, "symlink");
    await rejectsWith(nimbus.files.download(session, "links/out"), "permission_denied", 403);
    assert.equal(dec.decode(await nimbus.files.download(session, "links/in")), "inside");
    await nimbus.files.remove(session, "links/in"); // the link, not its target
    assert.equal(await readFile(join(root, "links", "in.txt"), "utf8"), "inside");
    await nimbus.files.remove(session, "links", { recursive: true });
  });

  test("a session from get, an id, or a connect URL works too", async () => {
    await nimbus.files.upload(session.metadata.id, "refs/by-id.txt", "id");
    const got = await nimbus.sessions.get({ id: session.metadata.id });
    assert.equal(dec.decode(await nimbus.files.download(got, "refs/by-id.txt")), "id");
    const url = session.status.connect!.files!;
    assert.deepEqual((await nimbus.files.list(url, "refs")).map((e) => e.name), ["by-id.txt"]);
    await nimbus.files.mkdir(url.replace(/^ws/, "http"), "refs/viahttp");
    await nimbus.files.remove(url, "refs", { recursive: true });
  });

  test("after the session is closed, files calls are session_not_open", async () => {
    const s = await openFiles();
    await nimbus.files.upload(s, "closing.txt", "x");
    await nimbus.sessions.close({ id: s.metadata.id, reason: "done" });
    const e = await rejectsWith(nimbus.files.stat(s, "closing.txt"), "session_not_open", 409);
    assert.equal(e.details?.["state"], "closed");
    await rejectsWith(nimbus.files.download(s, "closing.txt"), "session_not_open", 409);
    await rejectsWith(nimbus.files.upload(s, "closing.txt", "y"), "session_not_open", 409);
    await rejectsWith(nimbus.files.remove(s, "closing.txt"), "session_not_open", 409);
    await rejectsWith(nimbus.files.mkdir(s, "d"), "session_not_open", 409);
    // By id: minting fresh URLs is refused the same way.
    await rejectsWith(nimbus.files.list(s.metadata.id, "/"), "session_not_open", 409);
    // The file is still there for an open session of the same sandbox.
    assert.equal(dec.decode(await nimbus.files.download(session, "closing.txt")), "x");
    await nimbus.files.remove(session, "closing.txt");
  });

  test("a session without the files channel is channel_unsupported", async () => {
    const s = await nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio"] });
    await assert.rejects(nimbus.files.list(s, "/"), { code: "channel_unsupported" });
    await nimbus.sessions.close({ id: s.metadata.id });
  });
});
