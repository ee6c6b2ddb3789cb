// Runs the user page's code samples (tests/seed/open-sessions.ts, verbatim)
// against a real gateway. The samples talk to http://localhost:8080: the
// gateway listens there when the port is free; otherwise on a free port,
// with the samples' fetches sent there by a preload (tests/seed/redirect.ts).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Nimbus } from "@nimbus/nimbus";
import { startGateway } from "./helpers/gateway.js";

const run = promisify(execFile);
const seedDir = join(dirname(fileURLToPath(import.meta.url)), "seed");

async function portFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createServer();
    s.once("error", () => res(false));
    s.listen(port, "127.0.0.1", () => s.close(() => res(true)));
  });
}

test("the seed page's samples run unchanged", async () => {
  const on8080 = await portFree(8080);
  const gw = await startGateway(on8080 ? { port: 8080 } : {});
  try {
    const token = await gw.mint(["--tenant", "demo", "--subject", "alice", "--service", "worker"]);
    const env: NodeJS.ProcessEnv = { ...process.env, NIMBUS_TOKEN: token };
    const args = [join(seedDir, "open-sessions.js")];
    if (!on8080) {
      env["NIMBUS_SEED_ENDPOINT"] = gw.endpoint;
      args.unshift("--import", join(seedDir, "redirect.js"));
    }
    const { stdout } = await run(process.execPath, args, { env, timeout: 30_000 });
    const m = /^(ses_[a-z0-9]+) (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)\n$/.exec(stdout);
    assert.ok(m, `unexpected output: ${JSON.stringify(stdout)}`);
    const nimbus = new Nimbus({ endpoint: gw.endpoint, tenantId: "demo", token });
    const s = await nimbus.sessions.get(m[1]!);
    assert.equal(s.spec.expiresAt, m[2]);
    assert.equal(s.spec.ttlMs, 10 * 60 * 1000);
    assert.deepEqual(s.spec.channels, ["stdio"]);
    assert.equal(s.status.state, "closed");
    assert.equal(s.status.closeReason, "done");
    assert.equal(s.status.closedBy, "alice");
    // The list of the sample was made: it is in the audit trail.
    const audit = await gw.admin("GET", "/v1/tenants/demo/audit?action=session.list");
    assert.ok(audit.body.items.some((e: { principal: string; outcome: string }) => e.principal === "alice" && e.outcome === "success"));
  } finally {
    await gw.stop();
  }
});
