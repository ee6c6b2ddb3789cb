// The example's server: serves the page, xterm.js from node_modules and the
// SDK's dist/ (no bundler), and opens sessions for the page with the
// tenant token, which never reaches the browser.
//
//   NIMBUS_ENDPOINT=http://localhost:8080 NIMBUS_TOKEN=… node serve.mjs [port]
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const sdkDist = resolve(here, "..", "..", "sdk", "typescript", "dist");
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
};

/**
 * Returns an http.Server (not listening) for the page.
 * opts: {endpoint, tenantId, token, service} of the sessions to open.
 */
export async function createTerminalServer(opts) {
  const { Nimbus } = await import(pathToFileURL(join(sdkDist, "index.js")).href);
  const nimbus = new Nimbus({ endpoint: opts.endpoint, tenantId: opts.tenantId ?? "demo", token: opts.token });
  return createServer(async (req, res) => {
    try {
      const url = new URL(req.url ?? "/", "http://x");
      if (url.pathname === "/session" && req.method === "POST") {
        const session = await nimbus.sessions.open({
          target: { service: { name: opts.service ?? "worker" } },
          channels: ["stdio"],
          requestedTtlMs: 10 * 60 * 1000,
        });
        res.writeHead(200, { "Content-Type": "application/json", "Cache-Control": "no-store" });
        res.end(JSON.stringify({ id: session.metadata.id, stdio: session.status.connect.stdio }));
        return;
      }
      const file = resolveFile(url.pathname);
      if (!file) {
        res.writeHead(404).end("not found");
        return;
      }
      const body = await readFile(file);
      res.writeHead(200, { "Content-Type": types[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch (err) {
      const status = err?.code === "ENOENT" ? 404 : err?.status || 500;
      res.writeHead(status, { "Content-Type": "text/plain" }).end(String(err?.message ?? err));
    }
  });
}

/** Maps a URL path to a file under the example, its node_modules or the SDK's dist; null outside them. */
function resolveFile(pathname) {
  const p = decodeURIComponent(pathname);
  if (p === "/") return join(here, "index.html");
  let root = here;
  let rel = p;
  if (p.startsWith("/sdk/")) {
    root = sdkDist;
    rel = p.slice("/sdk".length);
  } else if (!(p === "/main.js" || p.startsWith("/node_modules/"))) {
    return null;
  }
  const file = normalize(join(root, rel));
  return file.startsWith(root + sep) ? file : null;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const port = Number(process.argv[2] ?? 3000);
  const server = await createTerminalServer({
    endpoint: process.env.NIMBUS_ENDPOINT ?? "http://localhost:8080",
    tenantId: process.env.NIMBUS_TENANT ?? "demo",
    token: process.env.NIMBUS_TOKEN,
    service: process.env.NIMBUS_SERVICE ?? "worker",
  });
  server.listen(port, "127.0.0.1", () => console.log(`web terminal on http://127.0.0.1:${port}/`));
}
