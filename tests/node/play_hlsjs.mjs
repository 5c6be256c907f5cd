// Drives Debian's Chromium headless (playwright-core, pinned in package.json) to
// open tests/node/hlsjs_page.html, which plays a stitched live stream with the
// pinned hls.js, and prints the page's JSON report on stdout.
//
// Usage: node play_hlsjs.mjs <page url> [timeout seconds] [chromium path]
// The report is the page's window.__report plus `console` (console messages of
// level warning/error), `pageErrors` (uncaught exceptions), `requestFailures`
// (requests the browser gave up on, e.g. blocked by CORS), `timedOut` and
// `userAgent`. Exit status 0 whenever a report was produced: the Python test
// judges it.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [pageUrl, timeoutArg, exeArg] = process.argv.slice(2);
if (!pageUrl) {
  process.stderr.write("usage: play_hlsjs.mjs <page url> [timeout s] [chromium]\n");
  process.exit(2);
}
const timeoutMs = Number(timeoutArg || "75") * 1000;
const executablePath = exeArg || "/usr/bin/chromium";

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "hlsjs-e2e-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
  ],
});
const extra = { console: [], pageErrors: [], requestFailures: [], timedOut: false };
let report = null;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      extra.console.push({ type: msg.type(), text: msg.text() });
    }
  });
  page.on("pageerror", (err) => extra.pageErrors.push(String(err && err.stack || err)));
  page.on("requestfailed", (req) => {
    extra.requestFailures.push({ url: req.url(), method: req.method(),
                                 failure: req.failure() && req.failure().errorText });
  });
  extra.userAgent = await page.evaluate(() => navigator.userAgent).catch(() => null);
  await page.goto(pageUrl, { waitUntil: "load" });
  const started = Date.now();
  const done = await page.evaluate(
    (ms) => Promise.race([
      window.__done.then(() => true),
      new Promise((r) => setTimeout(() => r(false), ms)),
    ]),
    timeoutMs,
  );
  extra.timedOut = !done;
  extra.driverSeconds = (Date.now() - started) / 1000;
  report = await page.evaluate(() => window.__report);
} catch (err) {
  extra.driverError = String(err && err.stack || err);
} finally {
  await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify({ ...(report || {}), ...extra }));
