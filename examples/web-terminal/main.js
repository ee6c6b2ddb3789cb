// The page: asks its own server (serve.mjs) for a session, then attaches an
// xterm.js terminal to the session's stdio channel with the SDK. The tenant
// token stays on the server; the page only ever sees the session's signed
// stdio URL.
import { attachStdio } from "@nimbus/nimbus";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";

const term = new Terminal({ cursorBlink: true, fontSize: 14 });
const fit = new FitAddon();
term.loadAddon(fit);
term.open(document.getElementById("terminal"));
fit.fit();
term.focus();

const res = await fetch("/session", { method: "POST" });
if (!res.ok) throw new Error(`could not open a session: ${res.status} ${await res.text()}`);
const { stdio } = await res.json();

// onData from the start: the replayed recent output is written too.
const conn = await attachStdio(stdio, { onData: (chunk) => term.write(chunk.data) });
conn.resize(term.cols, term.rows);

term.onData((data) => conn.open && conn.write(data)); // keys → stdin
term.onResize(({ cols, rows }) => conn.open && conn.resize(cols, rows));
window.addEventListener("resize", () => fit.fit());

conn.exited.then(
  (exit) => term.write(`\r\n[exited with code ${exit.code}]\r\n`),
  () => {}, // the connection ended first: said below
);
conn.closed.then((c) => {
  if (c.code !== 1000) term.write(`\r\n[disconnected: ${c.code} ${c.reason}]\r\n`);
});

// For the example's test.
window.nimbusTerminal = { term, conn };
document.body.dataset.ready = "true";
