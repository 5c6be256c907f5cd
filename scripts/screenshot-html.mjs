// Screenshot a local HTML file in headless Chromium (playwright-core, as tests/node):
//   node scripts/screenshot-html.mjs <file.html> <out.png> [width] [chromium]
// Used for the drill report's picture in docs/ (the report itself needs no browser).
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

const [file, out, widthArg, exeArg] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: exeArg || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: Number(widthArg || 1000), height: 800 } });
  await page.goto(pathToFileURL(resolve(file)).href);
  await page.screenshot({ path: out, fullPage: true });
} finally {
  await browser.close();
}
