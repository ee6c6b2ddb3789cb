// Every error the sessions API can produce, surfacing as NimbusError with
// the server's fields; network failures, timeouts and aborts told apart.
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { after, before, describe, test } from "node:test";
import { Nimbus, NimbusError, NimbusNetworkError, isNimbusError, type Channel, type Target } from "@nimbus/nimbus";
import { freePort, recordingFetch, startGateway, type Gateway } from "./helpers/gateway.js";

let gw: Gateway;
let rec: ReturnType<typeof recordingFetch>;
let nimbus: Nimbus;

before(async () => {
  // No browser pool on this gateway: opens on the browser service are 503.
  gw = await startGateway({ args: ["--chromium", "/nonexistent/chromium"] });
  rec = recordingFetch();
  nimbus = client(gw.adminToken);
});
after(async () => {
  await gw?.stop();
});

function client(token: string | undefined, tenantId = "demo", g: Gateway = gw): Nimbus {
  return new Nimbus({ endpoint: g.endpoint, tenantId, token, fetch: rec.fetch });
}

/** Asserts p rejects with a NimbusError of this status and code, whose requestId is the X-Request-Id. */
async function expectProblem(p: Promise<unknown>, status: number, code: string): Promise<NimbusError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof NimbusError, `expected a NimbusError ${code}, got ${String(err)}`);
  assert.ok(!(err instanceof NimbusNetworkError));
  assert.ok(err instanceof Error);
  assert.equal(err.name, "NimbusError");
  assert.equal(err.status, status, `status of ${err.code}: ${err.message}`);
  assert.equal(err.code, code, err.message);
  assert.equal(err.type, `urn:nimbus:error:${code}`);
  assert.ok(err.title && err.title.length > 0);
  assert.ok(err.message.length > 0);
  assert.match(err.requestId!, /^req_/);
  assert.equal(err.requestId, rec.lastRequestId(), "requestId equals the X-Request-Id header");
  assert.ok(isNimbusError(err, code));
  assert.equal(JSON.parse(JSON.stringify(err)).code, code);
  return err;
}

const worker: Target = { service: { name: "worker" } };

describe("API errors", () => {
  test("unauthenticated: no token, and a malformed token", async () => {
    await expectProblem(client(undefined).sessions.list(), 401, "unauthenticated");
    await expectProblem(client("not-a-jwt").sessions.open({ target: worker, channels: ["stdio"] }), 401, "unauthenticated");
    await expectProblem(client(undefined).sessions.get("ses_x"), 401, "unauthenticated");
  });

  test("permission_denied: no grant for the service, no reach to the sandbox", async () => {
    const noWorker = await gw.mint(["--tenant", "demo", "--subject", "bob", "--service", "browser", "--service", "Worker", "--service", "work"]);
    const e = await expectProblem(client(noWorker).sessions.open({ target: worker, channels: ["stdio"] }), 403, "permission_denied");
    assert.equal(e.retryAfter, undefined);
    await expectProblem(
      client(noWorker).sessions.open({ target: { sandbox: { id: "sbx-worker" } }, channels: ["stdio"] }),
      403,
      "permission_denied",
    );
    // Close and connect need the grant too.
    const s = await nimbus.sessions.open({ target: worker, channels: ["stdio"] });
    await expectProblem(client(noWorker).sessions.close({ id: s.metadata.id, reason: "x" }), 403, "permission_denied");
    await expectProblem(client(noWorker).sessions.connect(s.metadata.id), 403, "permission_denied");
  });

  test("permission_denied: a token of another tenant", async () => {
    const other = await gw.mint(["--tenant", "other", "--subject", "eve", "--service", "worker", "--admin"]);
    await expectProblem(client(other).sessions.open({ target: worker, channels: ["stdio"] }), 403, "permission_denied");
    await expectProblem(client(other).sessions.list({ state: "open" }), 403, "permission_denied");
    // And the demo token on the other tenant's routes.
    await expectProblem(client(gw.adminToken, "other").sessions.list(), 403, "permission_denied");
  });

  test("invalid_argument: bad TTL, no channels, unknown or duplicate channel, both targets, bad page token", async () => {
    const e = await expectProblem(nimbus.sessions.open({ target: worker, channels: ["stdio"], requestedTtlMs: 10 }), 400, "invalid_argument");
    assert.equal(e.details?.["field"], "requestedTtlMs");
    await expectProblem(nimbus.sessions.open({ target: worker, channels: [] }), 400, "invalid_argument");
    await expectProblem(nimbus.sessions.open({ target: worker, channels: ["ssh" as Channel] }), 400, "invalid_argument");
    await expectProblem(nimbus.sessions.open({ target: worker, channels: ["stdio", "stdio"] }), 400, "invalid_argument");
    const both = { service: { name: "worker" }, sandbox: { id: "sbx-worker" } } as unknown as Target;
    await expectProblem(nimbus.sessions.open({ target: both, channels: ["stdio"] }), 400, "invalid_argument");
    await expectProblem(nimbus.sessions.open({ target: {} as Target, channels: ["stdio"] }), 400, "invalid_argument");
    await expectProblem(nimbus.sessions.list({ pageSize: 100000 }), 400, "invalid_argument");
    await expectProblem(nimbus.sessions.list({ pageToken: "garbage!" }), 400, "invalid_argument");
  });

  test("not_found: unknown service, unknown sandbox, unknown session", async () => {
    const t = await gw.mint(["--tenant", "demo", "--subject", "alice", "--service", "nope", "--sandbox", "sbx-nope"]);
    await expectProblem(client(t).sessions.open({ target: { service: { name: "nope" } }, channels: ["stdio"] }), 404, "not_found");
    await expectProblem(client(t).sessions.open({ target: { sandbox: { id: "sbx-nope" } }, channels: ["stdio"] }), 404, "not_found");
    await expectProblem(nimbus.sessions.get("ses_doesnotexist"), 404, "not_found");
    await expectProblem(nimbus.sessions.close({ id: "ses_doesnotexist", reason: "x" }), 404, "not_found");
  });

  test("sandbox_not_ready: a sandbox whose command failed", async () => {
    const created = await gw.admin("POST", "/v1/tenants/demo/sandboxes", { id: "sbx-broken", command: ["/nonexistent/command"], tty: false });
    assert.equal(created.status, 201);
    assert.equal(created.body.state, "failed");
    const t = await gw.mint(["--tenant", "demo", "--subject", "alice", "--sandbox", "sbx-broken"]);
    const e = await expectProblem(
      client(t).sessions.open({ target: { sandbox: { id: "sbx-broken" } }, channels: ["stdio"] }),
      409,
      "sandbox_not_ready",
    );
    assert.equal(e.details?.["state"], "failed");
  });

  test("channel_unsupported: details.offered", async () => {
    const e = await expectProblem(nimbus.sessions.open({ target: worker, channels: ["stdio", "cdp"] }), 400, "channel_unsupported");
    assert.deepEqual([...(e.details?.["offered"] as string[])].sort(), ["files", "stdio"]);
    const pg = await expectProblem(nimbus.sessions.open({ target: { service: { name: "pg" } }, channels: ["stdio"] }), 400, "channel_unsupported");
    assert.deepEqual(pg.details?.["offered"], []);
    const br = await expectProblem(nimbus.sessions.open({ target: { service: { name: "browser" } }, channels: ["files"] }), 400, "channel_unsupported");
    assert.deepEqual([...(br.details?.["offered"] as string[])].sort(), ["cdp", "page"]);
  });

  test("session_not_open: close and connect an expired session", async () => {
    const s = await nimbus.sessions.open({ target: worker, channels: ["stdio"], requestedTtlMs: 1000 });
    await new Promise((r) => setTimeout(r, 1300));
    assert.equal((await nimbus.sessions.get(s.metadata.id)).status.state, "expired");
    const e = await expectProblem(nimbus.sessions.close({ id: s.metadata.id, reason: "late" }), 409, "session_not_open");
    assert.equal(e.details?.["state"], "expired");
    await expectProblem(nimbus.sessions.connect(s.metadata.id), 409, "session_not_open");
    // Connect on a closed session.
    const c = await nimbus.sessions.open({ target: worker, channels: ["stdio"] });
    await nimbus.sessions.close({ id: c.metadata.id, reason: "done" });
    const ce = await expectProblem(nimbus.sessions.connect(c.metadata.id), 409, "session_not_open");
    assert.equal(ce.details?.["state"], "closed");
  });

  test("payload_too_large: a body over 1 MiB", async () => {
    await expectProblem(
      nimbus.sessions.open({ target: { service: { name: "x".repeat(1100 * 1024) } }, channels: ["stdio"] }),
      413,
      "payload_too_large",
    );
  });

  test("unavailable: the browser service with no browser pool", async () => {
    await expectProblem(nimbus.sessions.open({ target: { service: { name: "browser" } }, channels: ["cdp"] }), 503, "unavailable");
  });

  test("resource_exhausted: over --max-sessions-per-tenant, with retryAfter", async () => {
    const small = await startGateway({ args: ["--max-sessions-per-tenant", "1"] });
    try {
      const n = client(small.adminToken, "demo", small);
      const first = await n.sessions.open({ target: worker, channels: ["stdio"] });
      const e = await expectProblem(n.sessions.open({ target: worker, channels: ["stdio"] }), 429, "resource_exhausted");
      assert.equal(typeof e.retryAfter, "number");
      assert.ok(e.retryAfter! >= 0);
      // Closing frees the slot.
      await n.sessions.close({ id: first.metadata.id, reason: "done" });
      await n.sessions.open({ target: worker, channels: ["stdio"] });
    } finally {
      await small.stop();
    }
  });
});

describe("network errors, timeouts, aborts", () => {
  let hang: Server;
  let hangPort: number;
  const sockets = new Set<Socket>();
  before(async () => {
    // Accepts connections and never answers: a gateway that hangs.
    hang = createServer((s) => {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    });
    await new Promise<void>((r) => hang.listen(0, "127.0.0.1", r));
    hangPort = (hang.address() as { port: number }).port;
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => hang.close(r));
  });

  test("a closed port is a NimbusNetworkError, code network", async () => {
    const port = await freePort();
    const n = new Nimbus({ endpoint: `http://127.0.0.1:${port}`, tenantId: "demo", token: "t" });
    let err: unknown;
    try {
      await n.sessions.open({ target: worker, channels: ["stdio"] });
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof NimbusNetworkError);
    assert.ok(err instanceof NimbusError, "a network error is still a NimbusError");
    assert.equal(err.code, "network");
    assert.equal(err.status, 0);
    assert.equal(err.requestId, undefined);
    assert.ok(err.cause, "the underlying error is kept as cause");
    assert.match(err.message, /POST \/v1\/tenants\/demo\/sessions/);
  });

  test("a gateway that does not answer within timeoutMs: code timeout", async () => {
    const n = new Nimbus({ endpoint: `http://127.0.0.1:${hangPort}`, tenantId: "demo", token: "t", timeoutMs: 200 });
    const t0 = Date.now();
    await assert.rejects(n.sessions.list(), (e: unknown) => e instanceof NimbusNetworkError && e.code === "timeout" && e.status === 0);
    assert.ok(Date.now() - t0 < 5000);
    // Per call override.
    const slow = new Nimbus({ endpoint: `http://127.0.0.1:${hangPort}`, tenantId: "demo", token: "t" });
    await assert.rejects(slow.sessions.get("ses_x", { timeoutMs: 100 }), { name: "NimbusNetworkError", code: "timeout" });
  });

  test("a caller signal aborts the call with its reason", async () => {
    const n = new Nimbus({ endpoint: `http://127.0.0.1:${hangPort}`, tenantId: "demo", token: "t" });
    const ctl = new AbortController();
    const p = n.sessions.list({ state: "open" }, { signal: ctl.signal });
    setTimeout(() => ctl.abort(), 50);
    await assert.rejects(p, (e: unknown) => e instanceof DOMException && e.name === "AbortError");
    const reason = new Error("stop now");
    const ctl2 = new AbortController();
    const p2 = n.sessions.close({ id: "ses_x", reason: "x" }, { signal: ctl2.signal });
    ctl2.abort(reason);
    await assert.rejects(p2, (e: unknown) => e === reason);
    // Already aborted: against the real gateway, nothing is sent.
    const real = client(gw.adminToken);
    await assert.rejects(real.sessions.open({ target: worker, channels: ["stdio"] }, { signal: AbortSignal.abort() }), { name: "AbortError" });
    // AbortSignal.timeout works as a caller signal too.
    await assert.rejects(n.sessions.get("ses_x", { signal: AbortSignal.timeout(50) }), { name: "TimeoutError" });
  });
});
