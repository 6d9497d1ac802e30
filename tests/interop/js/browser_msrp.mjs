// Headless Chromium (Debian's /usr/bin/chromium) driven by puppeteer-core: a page
// from a secure origin opens two wss:// WebSockets to sipws with the "msrp"
// subprotocol (RFC 7977), AUTHs both, and sends MSRP from one to the other
// through sipws: a text chunk (text frame) with a success report, then a binary
// chunk (binary frame).  The page speaks MSRP itself (no MSRP library for
// browsers is available from the registries this project uses).
//
// Usage: node browser_msrp.mjs CONFIG_JSON
//   CONFIG_JSON: {"chromium", "userDataDir", "spki", "wssUrl", "origin", "timeoutMs"}
// Prints JSON lines: {"browser", "browserPid"}, {"granted"}, {"case": "msrp", ...}, {"done": true}.

import { emit, grantLocalNetwork, interceptOrigin, launchChromium } from "./browser_common.mjs";

const config = JSON.parse(process.argv[2]);
const timeoutMs = config.timeoutMs ?? 10000;

// Runs inside the page.
async function inPage({ wssUrl, timeoutMs }) {
  const seen = { origin: location.origin, secureContext: window.isSecureContext };
  const rnd = () => Math.random().toString(36).slice(2, 12);
  const latin1 = (bytes) => { let s = ""; for (const b of bytes) s += String.fromCharCode(b); return s; };
  const bytesOf = (text) => Uint8Array.from(text, (c) => c.charCodeAt(0));

  function build(start, tid, headers, body) {           // body: a string of UTF-8 text, or Uint8Array
    let head = `MSRP ${tid} ${start}\r\n` + headers.map(([n, v]) => `${n}: ${v}\r\n`).join("");
    const end = `-------${tid}$\r\n`;
    if (body === undefined) return head + end;
    if (typeof body === "string") return head + "\r\n" + body + "\r\n" + end;
    const prefix = bytesOf(head + "\r\n"), suffix = bytesOf("\r\n" + end);
    const out = new Uint8Array(prefix.length + body.length + suffix.length);
    out.set(prefix, 0); out.set(body, prefix.length); out.set(suffix, prefix.length + body.length);
    return out;
  }
  function parse(raw) {                                   // raw: string (text frame) or latin1 string (binary)
    const firstEnd = raw.indexOf("\r\n");
    const [, tid, what, ...rest] = raw.slice(0, firstEnd).split(" ");
    const endAt = raw.lastIndexOf(`\r\n-------${tid}`);
    const blank = raw.indexOf("\r\n\r\n", firstEnd);
    const headEnd = blank >= 0 && blank < endAt ? blank : endAt;
    const headers = {};
    for (const line of raw.slice(firstEnd + 2, headEnd).split("\r\n")) {
      const at = line.indexOf(":");
      if (at > 0) headers[line.slice(0, at).toLowerCase()] = line.slice(at + 1).trim();
    }
    const body = blank >= 0 && blank < endAt ? raw.slice(blank + 4, endAt) : "";
    const status = /^\d{3}$/.test(what) ? Number(what) : null;
    return { tid, method: status === null ? what : null, status, comment: rest.join(" "), headers, body };
  }

  function client(name) {
    const ws = new WebSocket(wssUrl, "msrp");
    ws.binaryType = "arraybuffer";
    const c = { ws, name, uri: `msrp://${rnd()}.invalid:2855/${rnd()};ws`, inbox: [], frames: [], closed: null, waiter: null };
    const wake = () => { if (c.waiter) { const w = c.waiter; c.waiter = null; w(); } };
    ws.onopen = () => { c.opened = true; wake(); };
    ws.onclose = (e) => { c.closed = { code: e.code, reason: e.reason }; wake(); };
    ws.onerror = () => { c.errored = true; wake(); };
    ws.onmessage = (e) => {
      const binary = typeof e.data !== "string";
      c.frames.push(binary ? "binary" : "text");
      c.inbox.push(parse(binary ? latin1(new Uint8Array(e.data)) : e.data));
      wake();
    };
    c.until = (predicate, what) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name}: timeout waiting for ${what}`)), timeoutMs);
      const check = () => {
        const found = predicate();
        if (found !== undefined) { clearTimeout(timer); resolve(found); } else { c.waiter = check; }
      };
      check();
    });
    c.next = (test, what) => c.until(() => {
      const at = c.inbox.findIndex(test);
      return at >= 0 ? c.inbox.splice(at, 1)[0] : (c.closed ? null : undefined);
    }, what);
    return c;
  }

  const alice = client("alice"), bob = client("bob");
  try {
    for (const c of [alice, bob]) {
      await c.until(() => (c.opened || c.closed) ? true : undefined, "open");
      if (!c.opened) throw new Error(`${c.name}: not opened (${JSON.stringify(c.closed)})`);
    }
    seen.protocols = [alice.ws.protocol, bob.ws.protocol];
    const relay = `msrps://${new URL(wssUrl).host};tcp`;
    for (const c of [alice, bob]) {
      const tid = rnd();
      c.ws.send(build("AUTH", tid, [["To-Path", relay], ["From-Path", c.uri]]));
      const answer = await c.next((m) => m.tid === tid, "AUTH answer");
      c.usePath = answer && answer.headers["use-path"];
      seen[`${c.name}Auth`] = answer && { status: answer.status, usePath: c.usePath, expires: answer.headers["expires"] };
    }
    // What each would put in its SDP: a=path:USE-PATH OWN-URI.  Alice sends along bob's.
    const toBob = [alice.usePath, bob.usePath, bob.uri].join(" ");
    const text = "Hello Bob ☺, from a browser";
    const textBytes = new TextEncoder().encode(text).length;
    alice.ws.send(build("SEND", rnd(), [["To-Path", toBob], ["From-Path", alice.uri], ["Message-ID", "m1"],
      ["Success-Report", "yes"], ["Byte-Range", `1-${textBytes}/${textBytes}`], ["Content-Type", "text/plain"]], text));
    const send = await bob.next((m) => m.method === "SEND", "SEND at bob");
    const fromPath = send.headers["from-path"];
    seen.bobGot = { text: send.body, fromPath, toPath: send.headers["to-path"], frame: bob.frames[bob.frames.length - 1] };
    bob.ws.send(build("200 OK", send.tid, [["To-Path", fromPath.split(" ")[0]], ["From-Path", bob.uri]]));
    bob.ws.send(build("REPORT", rnd(), [["To-Path", fromPath], ["From-Path", bob.uri], ["Message-ID", "m1"],
      ["Byte-Range", `1-${textBytes}/${textBytes}`], ["Status", "000 200 OK"]]));
    const relayed200 = await alice.next((m) => m.status !== null, "200 at alice");
    const report = await alice.next((m) => m.method === "REPORT", "REPORT at alice");
    seen.aliceGot = { status: relayed200 && relayed200.status, report: report && report.headers["status"] };
    // A binary chunk: bytes that are not UTF-8 go in a binary frame, and arrive in one.
    const data = new Uint8Array(4096);
    crypto.getRandomValues(data);
    data[0] = 0xff;
    alice.ws.send(build("SEND", rnd(), [["To-Path", toBob], ["From-Path", alice.uri], ["Message-ID", "f1"],
      ["Byte-Range", `1-${data.length}/${data.length}`], ["Content-Type", "application/octet-stream"]], data));
    const chunk = await bob.next((m) => m.method === "SEND", "binary SEND at bob");
    seen.binary = { same: chunk.body === latin1(data), length: chunk.body.length, frame: bob.frames[bob.frames.length - 1] };
    bob.ws.send(build("200 OK", chunk.tid, [["To-Path", chunk.headers["from-path"].split(" ")[0]], ["From-Path", bob.uri]]));
    for (const c of [alice, bob]) c.ws.close(1000, "page done");
    for (const c of [alice, bob]) await c.until(() => c.closed ? true : undefined, "close");
    seen.closed = [alice.closed, bob.closed];
  } catch (e) {
    seen.failure = String(e.message || e);
    for (const c of [alice, bob]) { try { c.ws.close(1000, "page gives up"); } catch (_) { /* closing */ } }
  }
  return seen;
}

const browser = await launchChromium({
  chromium: config.chromium, userDataDir: config.userDataDir, spki: config.spki, timeoutMs,
});
try {
  emit({ browser: await browser.version(), browserPid: browser.process().pid });
  const granted = await grantLocalNetwork(browser, [config.origin]);
  emit({ granted });
  const page = await browser.newPage();
  const console = [];
  page.on("console", (msg) => console.push(`${msg.type()}: ${msg.text()}`));
  await interceptOrigin(page, config.origin, (url, request) => request.resourceType() === "document"
    ? { status: 200, contentType: "text/html; charset=utf-8",
        body: "<!doctype html><html><head><meta charset=\"utf-8\"><title>chat</title></head><body>chat</body></html>" }
    : null);
  const result = { case: "msrp" };
  try {
    await page.goto(`${config.origin}/`, { waitUntil: "load", timeout: timeoutMs });
    Object.assign(result, await page.evaluate(inPage, { wssUrl: config.wssUrl, timeoutMs }));
  } catch (e) {
    result.failure = String(e.message || e);
  }
  result.console = console;
  emit(result);
  await page.close();
} finally {
  await browser.close();
}
emit({ done: true });
