// Browser test of the interactive docs: headless Chromium (Debian's package) loads /docs from a
// live instance, waits for the operations to render, authorises with a read token, runs
// "Try it out" on GET /v1/products/{sku}/size for a seeded SKU and checks the rendered 200.
// It fails if the page asks for anything outside the instance (the docs must work offline) or
// breaks its Content-Security-Policy, and saves a screenshot. Then it loads the page again
// through a reverse proxy that serves the instance under a path prefix, as an ingress may:
// every request must stay under the prefix.
//
// Environment: PSS_BASE_URL, PSS_READ_TOKEN, PSS_SKU, PSS_SCREENSHOT, CHROMIUM (optional).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

const base = process.env.PSS_BASE_URL ?? 'http://127.0.0.1:8080';
const token = process.env.PSS_READ_TOKEN ?? 'dev-read-token';
const sku = process.env.PSS_SKU ?? 'SHOE-42-BLK';
const screenshot = process.env.PSS_SCREENSHOT ?? 'docs/screenshots/docs-try-it-out.png';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
// Serves the instance under /prefix/, as an ingress with a path prefix does.
const upstream = new URL(base);
const proxy = http.createServer((request, response) => {
  if (!request.url.startsWith('/prefix/')) {
    response.writeHead(404).end();
    return;
  }
  const forward = http.request({
    host: upstream.hostname,
    port: upstream.port,
    path: request.url.slice('/prefix'.length),
    method: request.method,
    headers: request.headers,
  }, (answer) => {
    response.writeHead(answer.statusCode, answer.headers);
    answer.pipe(response);
  });
  forward.on('error', () => response.writeHead(502).end());
  request.pipe(forward);
});
await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
const prefixed = `http://127.0.0.1:${proxy.address().port}/prefix`;

// A page that records requests not starting with `allowed` and the CSP violations it reports.
async function watchedPage(allowed) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1500 } });
  const outside = [];
  const violations = [];
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(allowed) && !url.startsWith('data:')) outside.push(url);
  });
  page.on('console', (message) => {
    if (message.text().includes('Content Security Policy')) violations.push(message.text());
  });
  return { page, outside, violations };
}

try {
  const { page, outside, violations } = await watchedPage(base);
  const docs = await page.goto(`${base}/docs`);
  assert.match(docs.headers()['content-security-policy'] ?? '', /script-src 'self'/);
  await page.locator('.opblock').first().waitFor({ timeout: 30_000 });

  await page.locator('button.authorize').first().click();
  const modal = page.locator('.modal-ux');
  await modal.locator('input[type="text"], input[type="password"]').first().fill(token);
  await modal.locator('button.authorize').click();
  await modal.locator('button.btn-done').click();

  const operation = page.locator('#operations-sizes-get_size');
  await operation.locator('.opblock-summary').click();
  await operation.locator('button.try-out__btn').click();
  await operation.locator('input[placeholder="sku"]').fill(sku);
  await operation.locator('button.execute').click();

  const status = operation.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor({ timeout: 30_000 });
  await operation.scrollIntoViewIfNeeded();
  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: false });
  assert.equal((await status.innerText()).trim(), '200', 'the rendered response status');
  const body = await operation.locator('.live-responses-table .response .microlight').first().innerText();
  assert.ok(body.includes(sku), `the rendered body names ${sku}`);
  assert.deepEqual(outside, [], 'the docs page loads nothing from outside the instance');
  assert.deepEqual(violations, [], 'the docs page keeps to its Content-Security-Policy');
  console.log(`docs page in a browser: ok (screenshot: ${screenshot})`);

  const behind = await watchedPage(`${prefixed}/`);
  await behind.page.goto(`${prefixed}/docs`);
  await behind.page.locator('#operations-sizes-get_size').waitFor({ timeout: 30_000 });
  assert.deepEqual(behind.outside, [], 'behind a path prefix, every request stays under it');
  assert.deepEqual(behind.violations, [], 'behind a path prefix, the CSP holds');
  console.log('docs page behind a path prefix: ok');
} finally {
  await browser.close();
  proxy.close();
}
