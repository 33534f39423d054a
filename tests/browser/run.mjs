// Opens a page in headless Chromium, waits for the page to leave its results in
// `window.__results`, and prints them, the requests the page made to the API (and the HTTP version
// of each answer) and the browser's console messages as one JSON object.
// Usage: node run.mjs URL CHROMIUM_EXECUTABLE TIMEOUT_MS
import { chromium } from "playwright-core";

const [url, executablePath, timeout] = process.argv.slice(2);
const wait = Number(timeout);
// --no-sandbox: Chromium's sandbox refuses to start as root (CI runs as root)
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"], timeout: wait });
try {
  // the API may be https with a self-signed certificate (HTTP/2 needs TLS in a browser)
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const messages = [];
  page.on("console", (message) => messages.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => messages.push(`pageerror: ${error.message}`));
  // what the browser sent to the API: method and content type of each request (Playwright does not
  // report CORS preflights)
  const requests = [];
  page.on("request", (request) => {
    const path = new URL(request.url()).pathname;
    if (path.includes("ConformanceService")) {
      requests.push({ method: request.method(), path, contentType: request.headers()["content-type"] ?? null });
    }
  });
  // the HTTP version of each answer from the API ("http/1.1", "h2"), as Chromium's network layer saw it
  const protocols = [];
  const devtools = await context.newCDPSession(page);
  devtools.on("Network.responseReceived", ({ response }) => {
    if (new URL(response.url).pathname.includes("ConformanceService")) protocols.push(response.protocol);
  });
  await devtools.send("Network.enable");
  await page.goto(url, { timeout: wait });
  let results = null;
  try {
    await page.waitForFunction(() => window.__results !== undefined, null, { timeout: wait });
    results = await page.evaluate(() => window.__results);
  } catch (error) {
    messages.push(`timeout: ${error.message}`);
  }
  const version = browser.version();
  process.stdout.write(JSON.stringify({ results, requests, protocols, messages, version }));
} finally {
  await browser.close();
}
