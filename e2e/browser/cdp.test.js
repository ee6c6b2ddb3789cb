// End-to-end: real CDP clients (Playwright, Puppeteer) drive the session's
// own Chromium through the gateway's cdp channel. They only connect: the
// gateway runs the browsers.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { inflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import { browserProfiles, chromiumProcesses, closeSession, openSession, startGateway } from './gateway.js';

const WARM = 2;
let gw;

before(async () => { gw = await startGateway({ warm: WARM }); });

after(async () => {
  if (!gw) return;
  const dataDir = gw.dataDir;
  await gw.stop();
  assert.equal(chromiumProcesses(dataDir), 0, 'Chromium processes outlived the gateway');
});

/** waitFor polls cond for up to ms. */
async function waitFor(what, cond, ms = 10000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Only the warm pool is left running once every session has ended. */
async function onlyWarmPoolLeft() {
  await waitFor('the session browsers to be destroyed', () => browserProfiles(gw.dataDir) === WARM);
}

test('Playwright connectOverCDP with the ws:// URL', async () => {
  const s = await openSession(gw);
  const browser = await chromium.connectOverCDP(s.status.connect.cdp);
  try {
    const ctx = browser.contexts()[0];
    // The page the gateway created for the session is there.
    assert.ok(ctx.pages().length >= 1);
    const page = await ctx.newPage();
    await page.goto('data:text/html,<title>nimbus</title><p id="x">hello</p>');
    assert.equal(await page.title(), 'nimbus');
    assert.equal(await page.evaluate(() => 1 + 1), 2);
    assert.equal(await page.textContent('#x'), 'hello');
  } finally {
    await browser.close();
    await closeSession(gw, s.metadata.id);
  }
  await onlyWarmPoolLeft();
});

test('Playwright connectOverCDP with the http:// URL (discovery)', async () => {
  const s = await openSession(gw, { channels: ['cdp'] });
  const httpURL = s.status.connect.cdp.replace(/^ws/, 'http');
  const browser = await chromium.connectOverCDP(httpURL);
  try {
    const page = await browser.contexts()[0].newPage();
    assert.equal(await page.evaluate(() => 6 * 7), 42);
  } finally {
    await browser.close();
    await closeSession(gw, s.metadata.id);
  }
});

test('Puppeteer connect with browserWSEndpoint', async () => {
  const s = await openSession(gw);
  const browser = await puppeteer.connect({ browserWSEndpoint: s.status.connect.cdp, defaultViewport: null });
  try {
    const pages = await browser.pages();
    assert.ok(pages.length >= 1);
    const page = await browser.newPage();
    await page.goto('data:text/html,<h1>puppeteer</h1>');
    assert.equal(await page.$eval('h1', (e) => e.textContent), 'puppeteer');
    assert.equal(await page.evaluate(() => 1 + 1), 2);
  } finally {
    await browser.disconnect();
    await closeSession(gw, s.metadata.id);
  }
});

/** pngCheck parses a PNG fully: signature, IHDR, and every IDAT byte inflated. */
function pngCheck(buf) {
  assert.deepEqual([...buf.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], 'PNG signature');
  let off = 8;
  let width = 0, height = 0, bpp = 0;
  const idat = [];
  for (;;) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4);
      bpp = { 2: 3, 6: 4 }[data[9]];
    }
    if (type === 'IDAT') idat.push(data);
    off += 12 + len;
    if (type === 'IEND') break;
  }
  assert.equal(off, buf.length, 'PNG ends with IEND');
  // zlib checks its adler32: any corrupted byte fails here.
  const raw = inflateSync(Buffer.concat(idat));
  assert.equal(raw.length, height * (1 + width * bpp), 'decoded size');
  return { width, height };
}

test('a full-page screenshot over 10 MB arrives intact', async (t) => {
  const s = await openSession(gw);
  const browser = await chromium.connectOverCDP(s.status.connect.cdp);
  try {
    const page = await browser.contexts()[0].newPage();
    await page.setViewportSize({ width: 2000, height: 1000 });
    await page.setContent(`<body style="margin:0"><canvas id="c" width="2000" height="4000"></canvas><script>
      const c = document.getElementById('c').getContext('2d');
      const img = c.createImageData(2000, 4000);
      for (let i = 0; i < img.data.length; i++) img.data[i] = Math.random() * 256 | 0;
      for (let i = 3; i < img.data.length; i += 4) img.data[i] = 255;
      c.putImageData(img, 0, 0);
    </script></body>`);
    const png = await page.screenshot({ fullPage: true, timeout: 120000 });
    t.diagnostic(`screenshot: ${png.length} bytes`);
    assert.ok(png.length > 10 * 1024 * 1024, `screenshot is only ${png.length} bytes`);
    const { width, height } = pngCheck(png);
    assert.equal(width, 2000);
    assert.equal(height, 4000);
  } finally {
    await browser.close();
    await closeSession(gw, s.metadata.id);
  }
});

test('expiry mid-navigation disconnects Playwright within 1 s', async (t) => {
  // A page whose load never finishes.
  const slow = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.write('<html><body>loading');
  });
  await new Promise((r) => slow.listen(0, '127.0.0.1', r));
  try {
    const s = await openSession(gw, { requestedTtlMs: 3000 });
    const expiresAt = Date.parse(s.spec.expiresAt);
    const browser = await chromium.connectOverCDP(s.status.connect.cdp);
    const disconnected = new Promise((r) => browser.once('disconnected', () => r(Date.now())));
    const page = await browser.contexts()[0].newPage();
    const nav = page.goto(`http://127.0.0.1:${slow.address().port}/`, { timeout: 60000 }).catch((e) => e);
    const at = await disconnected;
    t.diagnostic(`disconnected ${at - expiresAt} ms after expiresAt`);
    assert.ok(at - expiresAt <= 1000, `disconnected ${at - expiresAt} ms after expiresAt`);
    assert.ok(at >= expiresAt - 50, `disconnected ${expiresAt - at} ms before expiresAt`);
    assert.ok((await nav) instanceof Error, 'the navigation was cut');
  } finally {
    slow.closeAllConnections();
    slow.close();
  }
  await onlyWarmPoolLeft();
});
