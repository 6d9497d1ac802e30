// Headless Chromium (Debian's /usr/bin/chromium, puppeteer-core) driving the
// example phone page (examples/phone) as a user would: typing into its fields,
// clicking its buttons, reading the state it shows (window.phone, data-*).
//
// Usage: node browser_phone.mjs CONFIG_JSON
//   CONFIG_JSON: {"chromium": path, "userDataDir": dir, "spki": base64 sha256 of the
//   test certificate's SPKI (or ""), "timeoutMs": bound on each step}
//
// Then one command per line on stdin, one answer per line on stdout:
//   {"id": n, "cmd": "open", "page": name, "url": url, "serve": {"origin", "root"}?}
//   {"id": n, "cmd": "fill", "page": name, "values": {elementId: text}}
//   {"id": n, "cmd": "click", "page": name, "element": elementId}
//   {"id": n, "cmd": "wait", "page": name, "expr": js expression, "timeoutMs"?}
//   {"id": n, "cmd": "eval", "page": name, "expr": js expression (may be a promise)}
//   {"id": n, "cmd": "console", "page": name}
//   {"id": n, "cmd": "close", "page": name}
//   {"id": n, "cmd": "quit"}
// answered {"id": n, "ok": true, "result": ...} or {"id": n, "ok": false, "error": text}.
// First line out: {"browser": version, "browserPid": pid} (the test kills that
// process group by its id if this driver hangs); last: {"done": true}.

import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import readline from "node:readline";

import { emit, grantLocalNetwork, interceptOrigin, launchChromium } from "./browser_common.mjs";

const config = JSON.parse(process.argv[2]);
const timeoutMs = config.timeoutMs ?? 10000;
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
  ".json": "application/json", ".css": "text/css" };

const browser = await launchChromium({
  chromium: config.chromium, userDataDir: config.userDataDir, spki: config.spki, timeoutMs, media: true,
});
emit({ browser: await browser.version(), browserPid: browser.process().pid });

const pages = new Map();

/** Files of `root` answered for `origin` (a page from an origin sipws does not serve). */
async function serveDirectory(page, origin, root) {
  // Interception answers from a synchronous handler: read the files first.
  const files = new Map();
  const walk = async (dir) => {
    for (const entry of await readdir(path.join(root, dir), { withFileTypes: true })) {
      const relative = path.posix.join(dir, entry.name);
      if (entry.isDirectory()) await walk(relative);
      else if (/\.(m?js|html|css|json)$/.test(entry.name)) files.set(relative, await readFile(path.join(root, relative)));
    }
  };
  await walk("/");
  await interceptOrigin(page, origin, (url) => {
    const relative = path.posix.normalize(decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname));
    const body = files.get(relative);
    return body ? { status: 200, contentType: TYPES[path.extname(relative)] ?? "application/octet-stream", body } : null;
  });
}

function pageOf(name) {
  const entry = pages.get(name);
  if (!entry) throw new Error(`no page ${name}`);
  return entry;
}

async function run(command) {
  switch (command.cmd) {
    case "open": {
      const page = await browser.newPage();
      const consoleLines = [];
      page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
      page.on("pageerror", (error) => consoleLines.push(`pageerror: ${error.message}`));
      pages.set(command.page, { page, console: consoleLines });
      const url = new URL(command.url);
      const granted = await grantLocalNetwork(browser, [url.origin]);
      if (command.serve) await serveDirectory(page, command.serve.origin, command.serve.root);
      await page.goto(command.url, { waitUntil: "load", timeout: timeoutMs });
      await page.waitForFunction(() => window.phone && window.phone.log.length > 0, { timeout: timeoutMs });
      return {
        granted,
        origin: await page.evaluate(() => location.origin),
        secureContext: await page.evaluate(() => window.isSecureContext),
      };
    }
    case "fill": {
      // The user switches to the tab, clears the field and types.
      const { page } = pageOf(command.page);
      await page.bringToFront();
      for (const [id, value] of Object.entries(command.values)) {
        await page.$eval(`#${id}`, (element) => { element.value = ""; });
        await page.type(`#${id}`, value);
      }
      return null;
    }
    case "click": {
      const { page } = pageOf(command.page);
      await page.bringToFront();
      await page.waitForSelector(`#${command.element}:not([disabled])`, { timeout: command.timeoutMs ?? timeoutMs });
      await page.click(`#${command.element}`);
      return null;
    }
    case "wait": {
      const { page } = pageOf(command.page);
      const handle = await page.waitForFunction(command.expr, { timeout: command.timeoutMs ?? timeoutMs, polling: 100 });
      return await handle.jsonValue();
    }
    case "eval": {
      const { page } = pageOf(command.page);
      return await page.evaluate(command.expr);
    }
    case "console":
      return pageOf(command.page).console;
    case "close": {
      const { page } = pageOf(command.page);
      pages.delete(command.page);
      await page.close();
      return null;
    }
    default:
      throw new Error(`unknown command ${command.cmd}`);
  }
}

/** A command's promise, or an error once its step bound (plus a margin) has passed. */
function bounded(promise, command) {
  const ms = (command.timeoutMs ?? timeoutMs) + 2000;
  let timer;
  const expiry = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${command.cmd} took over ${ms} ms`)), ms);
  });
  return Promise.race([promise, expiry]).finally(() => clearTimeout(timer));
}

const input = readline.createInterface({ input: process.stdin });
try {
  for await (const line of input) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.cmd === "quit") {
      emit({ id: command.id, ok: true, result: null });
      break;
    }
    try {
      emit({ id: command.id, ok: true, result: await bounded(run(command), command) });
    } catch (error) {
      emit({ id: command.id, ok: false, error: String(error && error.message || error) });
    }
  }
} finally {
  await browser.close();
}
emit({ done: true });
process.exit(0);
