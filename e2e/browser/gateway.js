// Starts a gateway with the browser service for the tests, on a free
// loopback port with a fresh data dir, and helps open sessions on it.
//
// It runs the real binary: `go build ./cmd/gateway`, `gateway serve`,
// `gateway token mint`.
import { spawn, execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createServer } from 'node:net';

const repo = resolve(import.meta.dirname, '../..');

/** Builds the gateway once per test file and returns the binary's path. */
function build(tmp) {
  const bin = join(tmp, 'gateway');
  execFileSync('go', ['build', '-o', bin, './cmd/gateway'], { cwd: repo, stdio: 'inherit' });
  return bin;
}

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
    s.on('error', rej);
  });
}

/**
 * startGateway returns {url, token, dataDir, stop()}. stop() ends the
 * gateway and resolves once it has exited.
 */
export async function startGateway({ warm = 2 } = {}) {
  const tmp = mkdtempSync(join(tmpdir(), 'nimbus-e2e-'));
  // The browsers' own users must reach <data>/browsers, where the process
  // counts below look; from a 0700 folder the gateway would put the
  // profiles in a folder of its own under $TMPDIR instead.
  chmodSync(tmp, 0o711);
  const dataDir = join(tmp, 'data');
  const bin = build(tmp);
  const port = await freePort();
  const config = join(tmp, 'catalog.yaml');
  writeFileSync(config, 'tenants:\n  - id: demo\n    services:\n      - {name: browser, kind: browser}\n');
  const child = spawn(bin, ['serve', '--addr', `127.0.0.1:${port}`, '--data-dir', dataDir, '--config', config,
    '--browser-warm', String(warm > 0 ? warm : -1), '--metrics-addr', 'off', '--sandbox-runtime', 'process'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const url = `http://127.0.0.1:${port}`;
  await waitReady(url);
  const token = execFileSync(bin, ['token', 'mint', '--data-dir', dataDir, '--tenant', 'demo', '--subject', 't', '--service', 'browser'])
    .toString().trim();
  const exited = new Promise((res) => child.once('exit', res));
  return {
    url, token, dataDir,
    async stop() {
      child.kill('SIGTERM');
      await exited;
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

async function waitReady(url) {
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('gateway not ready');
}

/** openSession opens a browser session and returns the session resource. */
export async function openSession(gw, { channels = ['cdp', 'page'], requestedTtlMs } = {}) {
  const body = { target: { service: { name: 'browser' } }, channels };
  if (requestedTtlMs) body.requestedTtlMs = requestedTtlMs;
  const resp = await fetch(`${gw.url}/v1/tenants/demo/sessions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await resp.json();
  if (resp.status !== 201) throw new Error(`open: ${resp.status} ${JSON.stringify(json)}`);
  return json;
}

export async function closeSession(gw, id) {
  await fetch(`${gw.url}/v1/tenants/demo/sessions/${id}/close`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.token}`, 'content-type': 'application/json' },
    body: '{"reason":"test done"}',
  });
}

/** chromiumProcesses counts the live Chromium processes of a data dir. */
export function chromiumProcesses(dataDir) {
  const needle = `--user-data-dir=${join(dataDir, 'browsers')}/`;
  let n = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').some((a) => a.startsWith(needle))) n++;
    } catch { /* gone meanwhile */ }
  }
  return n;
}

/** browserGroups counts the distinct browsers (profile dirs) running. */
export function browserProfiles(dataDir) {
  const needle = `--user-data-dir=${join(dataDir, 'browsers')}/`;
  const dirs = new Set();
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const arg = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').find((a) => a.startsWith(needle));
      if (arg) dirs.add(arg);
    } catch { /* gone meanwhile */ }
  }
  return dirs.size;
}
