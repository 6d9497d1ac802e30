// Headless Chromium (Debian's /usr/bin/chromium) driven by puppeteer-core: pages
// served from secure origins open wss:// to sipws, as a user's browser would.
//
// Usage: node browser_wss.mjs CONFIG_JSON
//   CONFIG_JSON: {"chromium": path, "userDataDir": dir, "spki": base64 sha256 of the
//   server's SPKI, "wssUrl": "wss://127.0.0.1:PORT/", "wsUrl": a ws:// URL on a
//   non-loopback name (mixed-content check; Chromium exempts loopback from it), "cases": [{"name", "origin", "sip": bool}], "timeoutMs": n}
//
// Prints one JSON object per line: {"case": name, ...what the page saw...}, then
// {"done": true}.  Every wait is bounded by timeoutMs; the browser is closed at the
// end whatever happened (and the test kills this process by pid if it hangs).

import { emit, grantLocalNetwork, interceptOrigin, launchChromium } from "./browser_common.mjs";

const config = JSON.parse(process.argv[2]);
const timeoutMs = config.timeoutMs ?? 10000;

// The page each origin serves: nothing in it but a title; the test's script runs
// in it through page.evaluate, with the page's origin (so the browser sets Origin).
function pageFor(origin) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>sipws phone at ${origin}</title></head>` +
    `<body><p>phone</p></body></html>`;
}

// Runs inside the page.  Opens wss, checks the subprotocol, optionally sends a SIP
// OPTIONS and a CRLF keep-alive, then closes with 1000.  Returns what it saw.
async function inPage({ wssUrl, wsUrl, sip, timeoutMs }) {
  const seen = { events: [], secureContext: window.isSecureContext, origin: location.origin };
  // An https page may not open plain ws:// (mixed content): the constructor throws.
  if (wsUrl) {
    try {
      const insecure = new WebSocket(wsUrl, "sip");
      seen.insecure = "opened?";
      insecure.close();
    } catch (e) {
      seen.insecure = e.name;
    }
  }
  const ws = new WebSocket(wssUrl, "sip");
  const messages = [];
  let waiter = null;
  const wake = () => { if (waiter) { const w = waiter; waiter = null; w(); } };
  const until = (predicate, what) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout waiting for ${what}`)), timeoutMs);
    const check = () => {
      const found = predicate();
      if (found !== undefined) { clearTimeout(timer); resolve(found); } else { waiter = check; }
    };
    check();
  });
  let opened = false, closed = null, errored = false;
  ws.onopen = () => { opened = true; seen.events.push("open"); wake(); };
  ws.onerror = () => { errored = true; seen.events.push("error"); wake(); };
  ws.onclose = (e) => { closed = { code: e.code, reason: e.reason, wasClean: e.wasClean }; seen.events.push("close"); wake(); };
  ws.onmessage = (e) => { messages.push(typeof e.data === "string" ? e.data : "<binary>"); wake(); };
  try {
    await until(() => (opened || closed) ? true : undefined, "open or close");
    seen.protocol = ws.protocol;
    seen.extensions = ws.extensions;
    if (opened && sip) {
      const branch = "z9hG4bK" + Math.random().toString(36).slice(2, 12);
      const tag = Math.random().toString(36).slice(2, 10);
      const callId = Math.random().toString(36).slice(2, 14);
      const host = Math.random().toString(36).slice(2, 14) + ".invalid";
      const options = [
        "OPTIONS sip:bob@sipws.test SIP/2.0",
        `Via: SIP/2.0/WSS ${host};branch=${branch}`,
        "Max-Forwards: 69",
        "To: <sip:bob@sipws.test>",
        `From: <sip:alice@sipws.test>;tag=${tag}`,
        `Call-ID: ${callId}`,
        "CSeq: 1 OPTIONS",
        `Contact: <sip:alice@${host};transport=ws>`,
        "Supported: outbound",
        "User-Agent: sipws browser test",
        "Content-Length: 0",
        "", "",
      ].join("\r\n");
      ws.send(options);
      seen.response = await until(
        () => messages.find((m) => /^SIP\/2\.0 [2-6]\d\d/.test(m) && m.includes(callId)), "a final SIP response");
      seen.responseLine = seen.response.split("\r\n")[0];
      const before = messages.length;
      ws.send("\r\n\r\n");
      seen.keepalive = await until(() => messages.slice(before).find((m) => m === "\r\n"), "CRLF keep-alive answer");
      ws.close(1000, "page done");
    }
    await until(() => closed ? true : undefined, "close");
  } catch (e) {
    seen.failure = String(e.message || e);
    try { ws.close(1000, "page gives up"); } catch (_) { /* already closing */ }
  }
  seen.opened = opened;
  seen.errored = errored;
  seen.closed = closed;
  return seen;
}

const browser = await launchChromium({
  chromium: config.chromium, userDataDir: config.userDataDir, spki: config.spki, timeoutMs,
});
try {
  // The test kills this process group by its id if the driver hangs.
  emit({ browser: await browser.version(), browserPid: browser.process().pid });
  // Local Network Access: sipws listens on 127.0.0.1 here, where a deployment's
  // is public; the test grants the prompt's permission per origin (browser_common.mjs).
  const granted = await grantLocalNetwork(browser, config.cases.map((item) => item.origin));
  emit({ granted });
  for (const item of config.cases) {
    const page = await browser.newPage();
    const console = [];
    page.on("console", (msg) => console.push(`${msg.type()}: ${msg.text()}`));
    // The document for the case's origin; favicon and anything else: aborted.
    await interceptOrigin(page, item.origin, (url, request) => request.resourceType() === "document"
      ? { status: 200, contentType: "text/html; charset=utf-8", body: pageFor(item.origin) } : null);
    const result = { case: item.name };
    try {
      await page.goto(`${item.origin}/`, { waitUntil: "load", timeout: timeoutMs });
      Object.assign(result, await page.evaluate(inPage, {
        wssUrl: config.wssUrl, wsUrl: item.sip ? config.wsUrl : null, sip: item.sip, timeoutMs,
      }));
    } catch (e) {
      result.failure = String(e.message || e);
    }
    await new Promise((resolve) => setTimeout(resolve, 200)); // late console messages
    result.console = console;
    emit(result);
    await page.close();
  }
} finally {
  await browser.close();
}
emit({ done: true });
