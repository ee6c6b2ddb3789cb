// Builds the gateway once (go build ./cmd/gateway from the repo root) into a
// temporary directory, then runs the compiled tests with node --test.
// NIMBUS_GATEWAY_BIN set: that binary is used and nothing is built.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const sdk = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repo = resolve(sdk, "..", "..");
let tmp;
if (!process.env.NIMBUS_GATEWAY_BIN) {
  tmp = mkdtempSync(join(tmpdir(), "nimbus-sdk-test-"));
  const bin = join(tmp, "gateway");
  const go = process.env.GO || "go";
  const env = { ...process.env, PATH: `${process.env.PATH ?? ""}:/usr/local/go/bin` };
  console.log(`building the gateway: ${go} build -o ${bin} ./cmd/gateway (in ${repo})`);
  execFileSync(go, ["build", "-o", bin, "./cmd/gateway"], { cwd: repo, env, stdio: "inherit" });
  process.env.NIMBUS_GATEWAY_BIN = bin;
}
// Explicit files: `node --test <dir>` is read differently across Node versions.
const given = process.argv.slice(2);
const files = given.length
  ? given
  : readdirSync(join(sdk, "dist-test")).filter((f) => f.endsWith(".test.js")).map((f) => join("dist-test", f));
const r = spawnSync(process.execPath, ["--test", ...files], {
  cwd: sdk,
  stdio: "inherit",
  env: process.env,
});
if (tmp) rmSync(tmp, { recursive: true, force: true });
process.exit(r.status ?? 1);
