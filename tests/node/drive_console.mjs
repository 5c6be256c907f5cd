// Drives Debian's Chromium headless (playwright-core) through the ad-ops console:
// opens the page, types the admin token, waits for the channel and its upcoming
// break, clicks "Insert break now", waits until the console shows that break on
// air, takes a screenshot, and prints a JSON report on stdout.
//
// Usage: node drive_console.mjs <console url> <token> <channel> <screenshot> [timeout s] [chromium]
// Exit status 0 whenever a report was produced: the Python test judges it.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [url, token, channel, screenshot, timeoutArg, exeArg] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg || "60") * 1000;
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "console-e2e-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: exeArg || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1100, height: 800 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const report = { console: [], pageErrors: [], requestFailures: [], steps: [] };
const step = (name, extra) => report.steps.push({ name, t: Date.now() / 1000, ...extra });
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeoutMs);
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      report.console.push({ type: msg.type(), text: msg.text() });
    }
  });
  page.on("pageerror", (err) => report.pageErrors.push(String(err && err.stack || err)));
  page.on("requestfailed", (req) => report.requestFailures.push(
    { url: req.url(), failure: req.failure() && req.failure().errorText }));
  await page.goto(url, { waitUntil: "load" });
  step("loaded", { loginVisible: await page.isVisible("#login") });
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  const card = `[data-channel="${channel}"]`;
  await page.waitForSelector(card);
  step("channel", { text: await page.textContent(`${card} h2`) });
  const next = await page.waitForSelector(`${card} .break.next[data-break]`);
  report.upcoming = await next.getAttribute("data-break");
  report.upcomingText = await next.textContent();
  report.originHealth = await page.textContent(`${card} [data-health=origin]`);
  step("upcoming", { id: report.upcoming });
  await page.fill(`${card} .duration`, "10");
  await page.click(`${card} .insert-break`);
  await page.waitForFunction(
    (sel) => /inserted/.test(document.querySelector(sel)?.textContent || ""),
    `${card} .message`);
  report.message = await page.textContent(`${card} .message`);
  step("inserted", { message: report.message });
  const current = await page.waitForSelector(`${card} .break.current[data-break]`);
  report.current = await current.getAttribute("data-break");
  report.currentText = await current.textContent();
  step("on air", { id: report.current });
  await page.screenshot({ path: screenshot, fullPage: true });
  report.done = true;
} catch (err) {
  report.driverError = String(err && err.stack || err);
} finally {
  await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(report));
