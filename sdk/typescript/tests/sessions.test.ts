// Every sessions call of the SDK against a real gateway.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Nimbus, SessionPage, type Session } from "@nimbus/nimbus";
import { recordingFetch, startGateway, type Gateway } from "./helpers/gateway.js";

let gw: Gateway;
let nimbus: Nimbus;

before(async () => {
  gw = await startGateway();
  nimbus = new Nimbus({ endpoint: gw.endpoint, tenantId: "demo", token: gw.adminToken });
});
after(async () => {
  await gw?.stop();
});

const RFC3339_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

describe("sessions", () => {
  test("open a service target returns the session with connect URLs", async () => {
    const s = await nimbus.sessions.open({
      target: { service: { name: "worker" } },
      channels: ["stdio", "files"],
      requestedTtlMs: 10 * 60 * 1000,
    });
    assert.match(s.metadata.id, /^ses_[a-z0-9]+$/);
    assert.equal(s.metadata.tenantId, "demo");
    assert.equal(s.metadata.createdBy, "alice");
    assert.match(s.metadata.createdAt, RFC3339_MS);
    assert.deepEqual(s.spec.target, { service: { name: "worker" } });
    assert.deepEqual(s.spec.channels, ["stdio", "files"]);
    assert.equal(s.spec.requestedTtlMs, 600000);
    assert.equal(s.spec.ttlMs, 600000);
    assert.equal(Date.parse(s.spec.expiresAt) - Date.parse(s.metadata.createdAt), 600000);
    assert.equal(s.spec.targetSnapshot.service, "worker");
    assert.equal(s.spec.targetSnapshot.sandbox, "sbx-worker");
    assert.ok(s.spec.targetSnapshot.generation >= 1);
    assert.equal(s.status.state, "open");
    assert.equal(s.status.closedAt, null);
    assert.equal(s.status.closeReason, null);
    assert.equal(s.status.closedBy, null);
    const host = new URL(gw.endpoint).host;
    assert.match(s.status.connect!.stdio!, new RegExp(`^ws://${host}/v1/connect/${s.metadata.id}/stdio\\?token=.+`));
    assert.match(s.status.connect!.files!, new RegExp(`^ws://${host}/v1/connect/${s.metadata.id}/files\\?token=.+`));
  });

  test("open a sandbox target, default and capped TTL", async () => {
    const s = await nimbus.sessions.open({ target: { sandbox: { id: "sbx-worker" } }, channels: ["files"] });
    assert.deepEqual(s.spec.target, { sandbox: { id: "sbx-worker" } });
    assert.equal(s.spec.requestedTtlMs, null);
    assert.equal(s.spec.ttlMs, 15 * 60 * 1000);
    assert.equal(s.spec.targetSnapshot.sandbox, "sbx-worker");
    const capped = await nimbus.sessions.open({
      target: { service: { name: "worker" } },
      channels: ["stdio"],
      requestedTtlMs: 5 * 60 * 60 * 1000,
    });
    assert.equal(capped.spec.requestedTtlMs, 5 * 60 * 60 * 1000);
    assert.equal(capped.spec.ttlMs, 60 * 60 * 1000);
  });

  test("get by object and by string id, without connect URLs", async () => {
    const s = await nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio"] });
    const byObj = await nimbus.sessions.get({ id: s.metadata.id });
    const byStr = await nimbus.sessions.get(s.metadata.id);
    const bySession = await nimbus.sessions.get(s);
    for (const g of [byObj, byStr, bySession]) {
      assert.equal(g.metadata.id, s.metadata.id);
      assert.equal(g.status.state, "open");
      assert.equal(g.status.connect, undefined);
      assert.equal(g.spec.expiresAt, s.spec.expiresAt);
    }
  });

  test("list: await gives a page, for await gives every session of every page", async () => {
    // A gateway of its own, so the count is known.
    const own = await startGateway();
    try {
      const n = new Nimbus({ endpoint: own.endpoint, tenantId: "demo", token: own.adminToken });
      const opened: Session[] = [];
      for (let i = 0; i < 5; i++) {
        opened.push(await n.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio"] }));
      }
      await n.sessions.close({ id: opened[0]!.metadata.id, reason: "done" });

      const page = await n.sessions.list({ pageSize: 2 });
      assert.ok(page instanceof SessionPage);
      assert.equal(page.items.length, 2);
      assert.ok(page.hasNextPage());
      assert.equal(typeof page.nextPageToken, "string");
      // Newest first.
      assert.deepEqual(page.items.map((s) => s.metadata.id), [opened[4]!.metadata.id, opened[3]!.metadata.id]);
      assert.deepEqual(JSON.parse(JSON.stringify(page)), { items: JSON.parse(JSON.stringify(page.items)), nextPageToken: page.nextPageToken });

      const second = await n.sessions.list({ pageSize: 2, pageToken: page.nextPageToken });
      assert.deepEqual(second.items.map((s) => s.metadata.id), [opened[2]!.metadata.id, opened[1]!.metadata.id]);
      const third = await second.nextPage();
      assert.ok(third);
      assert.deepEqual(third.items.map((s) => s.metadata.id), [opened[0]!.metadata.id]);
      assert.equal(third.hasNextPage(), false);
      assert.equal(third.nextPageToken, undefined);
      assert.equal(await third.nextPage(), null);

      const all: string[] = [];
      for await (const s of n.sessions.list({ pageSize: 2 })) all.push(s.metadata.id);
      assert.deepEqual(all, opened.map((s) => s.metadata.id).reverse());

      const fromPage: string[] = [];
      for await (const s of second) fromPage.push(s.metadata.id);
      assert.deepEqual(fromPage, [opened[2], opened[1], opened[0]].map((s) => s!.metadata.id));

      const open: string[] = [];
      for await (const s of n.sessions.list({ state: "open", pageSize: 1 })) {
        assert.equal(s.status.state, "open");
        open.push(s.metadata.id);
      }
      assert.deepEqual(open, opened.slice(1).map((s) => s.metadata.id).reverse());

      const closed = await n.sessions.list({ state: "closed" });
      assert.deepEqual(closed.items.map((s) => s.metadata.id), [opened[0]!.metadata.id]);
      assert.equal(closed.items[0]!.status.connect, undefined);

      const everything = await n.sessions.listAll({ pageSize: 3 });
      assert.equal(everything.length, 5);
      assert.equal((await n.sessions.listAll({ state: "expired" })).length, 0);

      // .then/.catch/.finally behave like a promise.
      const viaThen = await n.sessions.list({ state: "closed" }).then((p) => p.items.length);
      assert.equal(viaThen, 1);
      let finallyRan = false;
      await n.sessions.list().finally(() => (finallyRan = true));
      assert.ok(finallyRan);
    } finally {
      await own.stop();
    }
  });

  test("close records reason, closedBy, closedAt and is idempotent", async () => {
    const s = await nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio"] });
    const c = await nimbus.sessions.close({ id: s.metadata.id, reason: "done" });
    assert.equal(c.status.state, "closed");
    assert.equal(c.status.closeReason, "done");
    assert.equal(c.status.closedBy, "alice");
    assert.match(c.status.closedAt!, RFC3339_MS);
    const again = await nimbus.sessions.close({ id: s.metadata.id, reason: "second" });
    assert.deepEqual(again.status, c.status);
    assert.equal((await nimbus.sessions.get(s.metadata.id)).status.state, "closed");
    // Without a reason: the server's default.
    const s2 = await nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio"] });
    const c2 = await nimbus.sessions.close(s2.metadata.id);
    assert.equal(c2.status.closeReason, "closed");
  });

  test("connect mints fresh URLs for an open session", async () => {
    const s = await nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio", "files"] });
    const fresh = await nimbus.sessions.connect({ id: s.metadata.id });
    assert.equal(fresh.metadata.id, s.metadata.id);
    assert.ok(fresh.status.connect?.stdio);
    assert.ok(fresh.status.connect?.files);
    assert.notEqual(fresh.status.connect.stdio, s.status.connect!.stdio);
    const byString = await nimbus.sessions.connect(s.metadata.id);
    assert.ok(byString.status.connect?.stdio);
  });

  test("connect URL helpers: cdp.url, cdp.httpUrl, connectUrl", async () => {
    const s = await nimbus.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio", "files"] });
    assert.equal(await nimbus.connectUrl(s, "stdio"), s.status.connect!.stdio);
    // A session from get has no URLs: fresh ones are minted.
    const got = await nimbus.sessions.get(s.metadata.id);
    const minted = await nimbus.connectUrl(got, "files");
    assert.match(minted, new RegExp(`/v1/connect/${s.metadata.id}/files\\?token=`));
    assert.equal(await nimbus.connectUrl("ws://x/v1/connect/ses_1/stdio?token=t", "stdio"), "ws://x/v1/connect/ses_1/stdio?token=t");
    // cdp URL transforms (on a fake session object: the browser pool is not needed for them).
    const fake = { ...s, status: { ...s.status, connect: { cdp: "ws://h:1/v1/connect/ses_x/cdp?token=abc" } } } as Session;
    assert.equal(await nimbus.cdp.url(fake), "ws://h:1/v1/connect/ses_x/cdp?token=abc");
    assert.equal(await nimbus.cdp.httpUrl(fake), "http://h:1/v1/connect/ses_x/cdp?token=abc");
    const tls = { ...s, status: { ...s.status, connect: { cdp: "wss://h/v1/connect/ses_x/cdp?token=abc" } } } as Session;
    assert.equal(await nimbus.cdp.httpUrl(tls), "https://h/v1/connect/ses_x/cdp?token=abc");
    // A channel the session was not opened with.
    await assert.rejects(nimbus.cdp.url(s), { name: "NimbusError", code: "channel_unsupported" });
  });

  test("token as a function is called per request; endpoint trailing slash is fine", async () => {
    let calls = 0;
    const rec = recordingFetch();
    const n = new Nimbus({
      endpoint: gw.endpoint + "/",
      tenantId: "demo",
      token: async () => {
        calls++;
        return gw.adminToken;
      },
      fetch: rec.fetch,
    });
    const s = await n.sessions.open({ target: { service: { name: "worker" } }, channels: ["stdio"] });
    await n.sessions.get(s.metadata.id);
    assert.equal(calls, 2);
    assert.match(rec.lastRequestId()!, /^req_/);
  });

  test("constructor validates its options", () => {
    assert.throws(() => new Nimbus({ endpoint: "", tenantId: "demo" }), TypeError);
    assert.throws(() => new Nimbus({ endpoint: "http://x", tenantId: "" }), TypeError);
  });
});
