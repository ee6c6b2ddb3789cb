// The code samples of the user page shared/seed/open-sessions.txt ("Open
// sessions"), copied verbatim: the first sample, then the second. It must
// type-check and run unchanged; tests/seed.test.ts runs it.
import { Nimbus } from "@nimbus/nimbus";
const nimbus = new Nimbus({
endpoint: "http://localhost:8080",
tenantId: "demo",
token: process.env.NIMBUS_TOKEN,
});
const session = await nimbus.sessions.open({
target: { service: { name: "worker" } }, // or { sandbox: { id: "..." } }
channels: ["stdio"], // "cdp" | "page" | "stdio" | "files"
requestedTtlMs: 10 * 60 * 1000,
});
console.log(session.metadata.id, session.spec.expiresAt);
const open = await nimbus.sessions.list({ state: "open" });
await nimbus.sessions.close({ id: session.metadata.id, reason: "done" });
