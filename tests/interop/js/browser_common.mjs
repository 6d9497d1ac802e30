// Shared by the real-browser drivers (browser_wss.mjs, browser_phone.mjs): launching
// Debian's Chromium through puppeteer-core, granting what a user would grant at
// a prompt, answering page requests from the test instead of the network.

import puppeteer from "puppeteer-core";

/** One JSON object per line on stdout: what the Python side reads. */
export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

/**
 * Headless Chromium that trusts exactly one extra certificate (by the base64
 * sha256 of its SubjectPublicKeyInfo) and nothing else unusual.
 * `media: true` adds the fake microphone/camera and the WebRTC switches a call
 * on loopback needs (the caller runs it in a loopback-only network namespace).
 */
export async function launchChromium({ chromium, userDataDir, spki, timeoutMs, media = false }) {
  const args = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ];
  if (spki) args.push(`--ignore-certificate-errors-spki-list=${spki}`);
  if (media) {
    args.push(
      "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      // WebRTC on 127.0.0.1: loopback candidates, real addresses instead of mDNS names.
      "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--autoplay-policy=no-user-gesture-required",
      // Two phones are two tabs, one of them in the background: keep its timers
      // (SIP.js's transaction timers, the page's polling) at full speed.
      "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
      "--disable-backgrounding-occluded-windows",
    );
  }
  return puppeteer.launch({
    executablePath: chromium,
    headless: true,
    userDataDir,
    timeout: timeoutMs,
    protocolTimeout: timeoutMs * 3,
    args,
  });
}

/**
 * Chromium's Local Network Access checks block a public page from reaching a
 * loopback address (ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS) unless the user
 * allows it at a prompt.  Grants what the user would, per origin, and nothing
 * more; returns the permission names this Chromium knew, by origin.
 */
export async function grantLocalNetwork(browser, origins) {
  const context = browser.defaultBrowserContext();
  const granted = {};
  for (const origin of origins) {
    granted[origin] = [];
    for (const name of ["loopback-network", "local-network-access"]) {
      try {
        await context.setPermission(origin, { permission: { name }, state: "granted" });
        granted[origin].push(name);
      } catch (e) {
        // not known to this Chromium: the others cover it
      }
    }
  }
  return granted;
}

/**
 * Answers the page's requests to `origin` with `respond(url, request)` (an object
 * for request.respond, or null for 404); every other request that is not
 * allowed by `passThrough(url)` is aborted, so nothing leaves the browser.
 */
export async function interceptOrigin(page, origin, respond, passThrough = () => false) {
  await page.setRequestInterception(true);
  page.on("request", (request) => {
    const url = new URL(request.url());
    if (url.origin === origin) {
      const answer = respond(url, request);
      request.respond(answer ?? { status: 404, contentType: "text/plain", body: "not here" });
    } else if (passThrough(url)) {
      request.continue();
    } else {
      request.abort("blockedbyclient");
    }
  });
}
