/**
 * Starts a real gateway binary for a test file: a fresh data directory, a
 * free loopback port, the demo catalog. The binary is NIMBUS_GATEWAY_BIN
 * (scripts/test.mjs builds it once), else it is built here from the repo.
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
/** /work/main (the repo root): dist-test/helpers → sdk/typescript → sdk → repo. */
export const repoRoot = resolve(here, "..", "..", "..", "..");

let built: Promise<string> | undefined;

/** The gateway binary: NIMBUS_GATEWAY_BIN, or built once per process. */
export function gatewayBinary(): Promise<string> {
  const fromEnv = process.env["NIMBUS_GATEWAY_BIN"];
  if (fromEnv) return Promise.resolve(fromEnv);
  built ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), "nimbus-gw-bin-"));
    const out = join(dir, "gateway");
    const go = process.env["GO"] ?? "go";
    const env = { ...process.env, PATH: `${process.env["PATH"] ?? ""}:/usr/local/go/bin` };
    await run(go, ["build", "-o", out, "./cmd/gateway"], { cwd: repoRoot, env });
    return out;
  })();
  return built;
}

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

export interface Gateway {
  endpoint: string;
  port: number;
  dataDir: string;
  bin: string;
  /** The admin token of tenant demo with every grant (worker, browser, pg, billing, sbx-worker). */
  adminToken: string;
  /** Mints a token: `token mint --data-dir … <args>`. */
  mint(args: string[]): Promise<string>;
  /** A JSON call with the admin token (catalog changes). */
  admin(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  stop(): Promise<void>;
  /** What the gateway wrote on stderr (for failing tests). */
  logs(): string;
}

export interface StartOptions {
  /**
   * Extra `serve` flags, after the defaults (so they win): no warm Chromium
   * pool (`--browser-warm -1`); a browser session still starts its own
   * Chromium on open.
   */
  args?: string[];
  /** Listen on this port (default: a free one). */
  port?: number;
}

export async function startGateway(opts: StartOptions = {}): Promise<Gateway> {
  const bin = await gatewayBinary();
  const dataDir = await mkdtemp(join(tmpdir(), "nimbus-gw-data-"));
  const port = opts.port ?? (await freePort());
  const endpoint = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    bin,
    [
      "serve", "--addr", `127.0.0.1:${port}`, "--data-dir", dataDir, "--log-level", "warn",
      "--browser-warm", "-1",
      // Several gateways run at once: none takes the fixed default metrics port.
      "--metrics-addr", "off",
      // Child-process sandboxes: under runc every gateway here would claim
      // the same default block of sandbox ids and kill the others'
      // containers at start (the Go e2e suite gives each its own block).
      "--sandbox-runtime", "process",
      ...(opts.args ?? []),
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => {
    stderr += b.toString();
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
  });
  child.stdout!.resume();
  // A test process that dies (timeout, crash) must not leave its gateway behind.
  const reap = () => child.kill("SIGKILL");
  process.once("exit", reap);
  let exited = false;
  const exit = new Promise<void>((res) => child.once("exit", () => ((exited = true), res())));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error(`gateway exited at start:\n${stderr}`);
    try {
      const r = await fetch(`${endpoint}/readyz`);
      await r.body?.cancel();
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`gateway not ready within 20 s:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const mint = async (args: string[]) => {
    const { stdout } = await run(bin, ["token", "mint", "--data-dir", dataDir, ...args]);
    return stdout.trim();
  };
  const adminToken = await mint([
    "--tenant", "demo", "--subject", "alice",
    "--service", "worker", "--service", "browser", "--service", "pg", "--service", "billing",
    "--sandbox", "sbx-worker", "--admin",
  ]);
  return {
    endpoint,
    port,
    dataDir,
    bin,
    adminToken,
    mint,
    async admin(method, path, body) {
      const init: RequestInit = { method, headers: { Authorization: `Bearer ${adminToken}` } };
      if (body !== undefined) init.body = JSON.stringify(body);
      const r = await fetch(endpoint + path, init);
      const text = await r.text();
      return { status: r.status, body: text ? JSON.parse(text) : undefined };
    },
    async stop() {
      if (!exited) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exit;
        clearTimeout(t);
      }
      process.removeListener("exit", reap);
      await rm(dataDir, { recursive: true, force: true });
    },
    logs: () => stderr,
  };
}

/**
 * The pids of the Chromium processes (any process, in fact) whose command
 * line names this gateway's data directory: its browsers keep their
 * profiles under `<data-dir>/browsers`. Linux only (/proc).
 */
export function chromiumProcesses(dataDir: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${name}/cmdline`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    // The gateway itself also names the data directory: only its children count.
    if (cmdline.includes(join(dataDir, "browsers"))) pids.push(Number(name));
  }
  return pids;
}

/** A fetch that remembers the last response's X-Request-Id. */
export function recordingFetch(): { fetch: typeof fetch; lastRequestId(): string | null } {
  let last: string | null = null;
  return {
    fetch: async (input, init) => {
      const res = await fetch(input, init);
      last = res.headers.get("x-request-id");
      return res;
    },
    lastRequestId: () => last,
  };
}
