// The cdp channel through the SDK: a browser session's own Chromium driven by
// Playwright (playwright-core, no downloaded browser: the gateway runs Debian's
// Chromium), with the ws:// URL and with the http:// discovery form.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { chromium, type Browser } from "playwright-core";
import { Nimbus, type Session } from "@nimbus/nimbus";
import { chromiumProcesses, startGateway, type Gateway } from "./helpers/gateway.js";

let gw: Gateway;
let nimbus: Nimbus;
let dataDir: string;

before(async () => {
  // No warm pool (the helper's default): each session starts its own Chromium.
  gw = await startGateway();
  dataDir = gw.dataDir;
  // adminToken carries the `browser` service grant (see helpers/gateway.ts).
  nimbus = new Nimbus({ endpoint: gw.endpoint, tenantId: "demo", token: gw.adminToken });
});
after(async () => {
  await gw?.stop();
  if (dataDir) assert.deepEqual(chromiumProcesses(dataDir), [], "Chromium processes outlived the gateway");
});

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function openBrowser(): Promise<Session> {
  return nimbus.sessions.open({ target: { service: { name: "browser" } }, channels: ["cdp"] });
}

/** Drives a page of the session's browser: content, title, evaluate, text. */
async function drive(browser: Browser, label: string): Promise<void> {
  const context = browser.contexts()[0] ?? (await browser.newContext());
  const page = context.pages()[0] ?? (await context.newPage());
  await page.setContent(`<title>nimbus ${label}</title><p id="x">hello ${label}</p>`);
  assert.equal(await page.title(), `nimbus ${label}`);
  assert.equal(await page.evaluate(() => 6 * 7), 42);
  assert.equal(await page.textContent("#x"), `hello ${label}`);
  assert.equal(await page.evaluate(() => navigator.userAgent.includes("Chrome")), true);
}

/**
 * Closes the session through the SDK and checks that Playwright sees the
 * disconnect within a few seconds and that the session's Chromium is gone.
 */
async function closeAndSeeDisconnect(session: Session, browser: Browser): Promise<void> {
  let disconnectedAt = 0;
  const disconnected = new Promise<void>((res) =>
    browser.once("disconnected", () => {
      disconnectedAt = Date.now();
      res();
    }),
  );
  const closing = Date.now();
  const closed = await nimbus.sessions.close(session);
  assert.equal(closed.status.state, "closed");
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    disconnected,
    new Promise<never>((_, rej) => {
      timer = setTimeout(() => rej(new Error("Playwright did not see the disconnect within 5 s")), 5000);
    }),
  ]).finally(() => clearTimeout(timer));
  assert.ok(disconnectedAt - closing < 5000);
  assert.equal(browser.isConnected(), false);
  await waitFor("the session's Chromium to be destroyed", () => chromiumProcesses(dataDir).length === 0);
}

describe("cdp", () => {
  test("Playwright connectOverCDP with nimbus.cdp.url (ws://)", async () => {
    const session = await openBrowser();
    assert.equal(session.spec.targetSnapshot.service, "browser");
    const url = await nimbus.cdp.url(session);
    assert.equal(url, session.status.connect!.cdp);
    assert.match(url, new RegExp(`^ws://127\\.0\\.0\\.1:${gw.port}/v1/connect/${session.metadata.id}/cdp\\?token=`));
    assert.ok(chromiumProcesses(dataDir).length > 0, "the session has a Chromium of its own");
    const browser = await chromium.connectOverCDP(url);
    try {
      await drive(browser, "ws");
      await closeAndSeeDisconnect(session, browser);
    } finally {
      await browser.close().catch(() => {});
      await nimbus.sessions.close(session).catch(() => {});
    }
  });

  test("Playwright connectOverCDP with nimbus.cdp.httpUrl (http://, /json/version discovery)", async () => {
    const session = await openBrowser();
    const url = await nimbus.cdp.httpUrl(session);
    assert.match(url, new RegExp(`^http://127\\.0\\.0\\.1:${gw.port}/v1/connect/${session.metadata.id}/cdp\\?token=`));
    // A session without URLs (from get, or a bare id) gets fresh ones minted.
    assert.match(await nimbus.cdp.httpUrl(session.metadata.id), /^http:\/\/.*\/cdp\?token=/);
    const browser = await chromium.connectOverCDP(url);
    try {
      await drive(browser, "http");
      await closeAndSeeDisconnect(session, browser);
    } finally {
      await browser.close().catch(() => {});
      await nimbus.sessions.close(session).catch(() => {});
    }
  });
});
