// Preloaded (node --import) only when port 8080 is taken on this machine:
// sends the seed's requests for http://localhost:8080 to the test gateway
// at NIMBUS_SEED_ENDPOINT instead. Nothing else is changed.
const target = process.env["NIMBUS_SEED_ENDPOINT"];
const realFetch = globalThis.fetch;
if (target) {
  globalThis.fetch = ((input: string | URL | Request, init?: RequestInit) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    if (url.startsWith("http://localhost:8080")) input = target + url.slice("http://localhost:8080".length);
    return realFetch(input, init);
  }) as typeof fetch;
}
export {};
