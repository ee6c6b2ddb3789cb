// Drives the example page in Debian's Chromium (playwright-core, no browser
// download) against a real gateway: types `echo hi` + Enter and sees `hi`
// in the terminal; resizes the page and sees the PTY size change (stty size).
import assert from "node:assert/strict";
import { execFile, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";
import { createTerminalServer } from "../serve.mjs";

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..", "..");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const cleanups = [];
let pageUrl;
let context;

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** The gateway binary: NIMBUS_GATEWAY_BIN, else built from the repo. */
async function gatewayBinary() {
  if (process.env.NIMBUS_GATEWAY_BIN) return process.env.NIMBUS_GATEWAY_BIN;
  const dir = await mkdtemp(join(tmpdir(), "nimbus-webterm-bin-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const bin = join(dir, "gateway");
  const env = { ...process.env, PATH: `${process.env.PATH ?? ""}:/usr/local/go/bin` };
  execFileSync(process.env.GO ?? "go", ["build", "-o", bin, "./cmd/gateway"], { cwd: repo, env, stdio: "inherit" });
  return bin;
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`);
  const bin = await gatewayBinary();
  const dataDir = await mkdtemp(join(tmpdir(), "nimbus-webterm-data-"));
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const gw = spawn(bin, ["serve", "--addr", `127.0.0.1:${port}`, "--data-dir", dataDir, "--log-level", "warn", "--metrics-addr", "off", "--sandbox-runtime", "process"], { stdio: ["ignore", "ignore", "pipe"] });
  let logs = "";
  gw.stderr.on("data", (b) => (logs += b));
  process.once("exit", () => gw.kill("SIGKILL")); // even if the test process dies
  cleanups.push(async () => {
    gw.kill("SIGTERM");
    await new Promise((r) => (gw.exitCode !== null ? r() : gw.once("exit", r)));
    await rm(dataDir, { recursive: true, force: true });
  });
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(`${endpoint}/readyz`);
      if (r.ok) break;
    } catch {}
    assert.ok(i < 400 && gw.exitCode === null, `gateway did not start:\n${logs}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const { stdout } = await run(bin, ["token", "mint", "--data-dir", dataDir, "--tenant", "demo", "--subject", "alice", "--service", "worker"]);

  const server = await createTerminalServer({ endpoint, tenantId: "demo", token: stdout.trim(), service: "worker" });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => new Promise((r) => server.close(r)));
  pageUrl = `http://127.0.0.1:${server.address().port}/`;

  const profile = await mkdtemp(join(tmpdir(), "nimbus-webterm-profile-"));
  cleanups.push(() => rm(profile, { recursive: true, force: true }));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 800, height: 500 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  cleanups.push(() => context.close());
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** The terminal's screen as text, as rendered in the DOM. */
const screenText = (page) => page.locator(".xterm-rows").innerText();

test("type echo hi, see hi; resize the page, the PTY follows", async () => {
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(pageUrl);
  await page.waitForSelector("body[data-ready=true]", { timeout: 15_000 });
  assert.deepEqual(errors, []);

  await page.locator("#terminal").click();
  await page.keyboard.type("echo hi");
  await page.keyboard.press("Enter");
  // The echoed command line, then hi alone on its line.
  await page.waitForFunction(() => /echo hi\s*\n\s*hi\s*\n/.test(document.querySelector(".xterm-rows").innerText), null, { timeout: 10_000 });

  const size = () => page.evaluate(() => ({ cols: window.nimbusTerminal.term.cols, rows: window.nimbusTerminal.term.rows }));
  const sttyShows = async ({ rows, cols }) => {
    await page.keyboard.type("stty size");
    await page.keyboard.press("Enter");
    await page.waitForFunction(
      (want) => document.querySelector(".xterm-rows").innerText.includes(want),
      `${rows} ${cols}`,
      { timeout: 10_000 },
    );
  };
  const before = await size();
  await sttyShows(before);
  await page.screenshot({ path: join(tmpdir(), "nimbus-web-terminal-before.png") });

  await page.setViewportSize({ width: 1200, height: 760 });
  await page.waitForFunction((b) => window.nimbusTerminal.term.cols !== b.cols && window.nimbusTerminal.term.rows !== b.rows, before);
  const afterResize = await size();
  assert.ok(afterResize.cols > before.cols && afterResize.rows > before.rows, JSON.stringify({ before, afterResize }));
  await sttyShows(afterResize); // a new size: the earlier output cannot match
  await page.screenshot({ path: join(tmpdir(), "nimbus-web-terminal-after.png") });
  assert.match(await screenText(page), new RegExp(`${afterResize.rows} ${afterResize.cols}`));
  assert.deepEqual(errors, []);
});
