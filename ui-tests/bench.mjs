// The dashboard's first-view benchmark (run by hand, not by CI):
//
//   SKIFF_BIN=target/release/skiff node ui-tests/bench.mjs [--runs N]
//
// Starts a `skiff dev` cluster on free ports and Debian's Chromium (headless), then N
// times: a fresh browser context (empty cache, nothing from the previous run), already
// signed in (the token put in session storage before the page's first script, as the
// sign-in page leaves it), navigates to /ui/ and records the moment the overview's nodes
// table holds a row for dev-1 that says Ready. The time is the page's own clock,
// `performance.now()`, which counts from navigation start (`performance.timeOrigin`), so
// it includes the HTML, every module, the API calls (list, then watch) and the render.
// A MutationObserver installed before the page runs notes the DOM moment; the next
// animation frame after it approximates when it is on screen.
//
// A first navigation before the timed ones is reported apart: the server gzips each
// embedded file once, on first use, and that one-time cost is not the first view's.
//
// It also reports the bytes on the wire: what the first view fetched (from Resource
// Timing), and every file of the dashboard (controlplane/ui/) fetched gzip-encoded as a
// browser asks for it, lazily loaded views included. Prints one JSON object.

import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import https from 'node:https';
import { gunzipSync } from 'node:zlib';
import { Cluster, REPO, launchBrowser, dashboardContext } from './harness.mjs';

const args = process.argv.slice(2);
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || 10;

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const rank = (p) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)];
  const r = (x) => Math.round(x * 10) / 10;
  return { median: r(s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2), p90: r(rank(0.9)), min: r(s[0]), max: r(s[s.length - 1]), all: xs.map(r) };
};

// Runs in the page before any of its scripts: note when the nodes table first shows
// dev-1 as Ready, and the frame after.
function watchForNodes() {
  const seen = () => [...document.querySelectorAll('tr')].some((tr) => {
    const cells = [...tr.cells].map((c) => c.textContent);
    return cells.some((c) => /\bdev-1\b/.test(c)) && cells.some((c) => /\bReady\b/.test(c));
  });
  const observer = new MutationObserver(() => {
    if (window.__nodesAt === undefined && seen()) {
      window.__nodesAt = performance.now();
      observer.disconnect();
      requestAnimationFrame(() => { window.__paintedAt = performance.now(); });
    }
  });
  observer.observe(document, { childList: true, subtree: true, characterData: true });
}

async function firstView(browser, cluster) {
  const context = await dashboardContext(browser, cluster, { token: cluster.adminToken });
  await context.addInitScript(watchForNodes);
  const page = await context.newPage();
  await page.goto('/ui/', { waitUntil: 'commit' });
  await page.waitForFunction(() => window.__paintedAt !== undefined, null, { timeout: 30_000 });
  const m = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const assets = [nav, ...performance.getEntriesByType('resource')]
      .filter((e) => new URL(e.name).pathname.startsWith('/ui'))
      .map((e) => ({ path: new URL(e.name).pathname, transfer: e.transferSize, encoded: e.encodedBodySize, decoded: e.decodedBodySize, startMs: Math.round(e.startTime), endMs: Math.round(e.responseEnd) }));
    // The API calls the first view makes, with when they were answered (watches stay
    // open, so their responseEnd is 0 until they end).
    const api = performance.getEntriesByType('resource').filter((e) => !new URL(e.name).pathname.startsWith('/ui'))
      .map((e) => ({ path: new URL(e.name).pathname + new URL(e.name).search, startMs: Math.round(e.startTime), endMs: Math.round(e.responseEnd) }));
    return {
      nodesAt: window.__nodesAt,
      paintedAt: window.__paintedAt,
      responseEnd: nav.responseEnd,
      domContentLoaded: nav.domContentLoadedEventEnd,
      load: nav.loadEventEnd,
      assets,
      apiRequests: api,
    };
  });
  await context.close();
  return m;
}

// Every file of controlplane/ui, fetched as the browser would (Accept-Encoding: gzip).
async function allAssets(cluster) {
  const root = join(REPO, 'controlplane', 'ui');
  const files = [];
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path); else files.push(relative(root, path));
    }
  };
  walk(root);
  let wire = 0;
  let raw = 0;
  const each = [];
  for (const file of files.sort()) {
    const { status, encoding, body } = await new Promise((resolve, reject) => {
      https.get(new URL(`/ui/${file}`, cluster.url), { agent: cluster.agent, headers: { 'accept-encoding': 'gzip' } }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, encoding: res.headers['content-encoding'], body: Buffer.concat(chunks) }));
      }).on('error', reject);
    });
    if (status !== 200) throw new Error(`/ui/${file}: ${status}`);
    const size = encoding === 'gzip' ? gunzipSync(body).length : body.length;
    wire += body.length;
    raw += size;
    each.push({ file, wire: body.length, raw: size });
  }
  return { files: files.length, wireBytes: wire, rawBytes: raw, each };
}

const cluster = await new Cluster().start();
const browser = await launchBrowser();
try {
  const warm = await firstView(browser, cluster);
  const views = [];
  for (let i = 0; i < runs; i += 1) views.push(await firstView(browser, cluster));
  const last = views[views.length - 1];
  const all = await allAssets(cluster);
  const sum = (xs, k) => xs.reduce((s, x) => s + x[k], 0);
  console.log(JSON.stringify({
    what: 'first view: cold navigation (fresh context, empty cache, signed in) to /ui/ until the overview nodes table shows dev-1 Ready; ms from navigation start',
    runs,
    firstViewMs: stats(views.map((v) => v.nodesAt)),
    firstViewPaintedMs: stats(views.map((v) => v.paintedAt)),
    htmlResponseEndMs: stats(views.map((v) => v.responseEnd)),
    domContentLoadedMs: stats(views.map((v) => v.domContentLoaded)),
    serverFirstEverMs: Math.round(warm.nodesAt * 10) / 10,
    firstViewAssets: {
      requests: last.assets.length,
      transferBytes: sum(last.assets, 'transfer'),
      bodyBytesOnWire: sum(last.assets, 'encoded'),
      bodyBytesDecoded: sum(last.assets, 'decoded'),
      apiRequests: last.apiRequests.length,
    },
    // The last run's timeline, to see what the first view waits for.
    lastRun: { assets: last.assets.map(({ path, startMs, endMs, encoded }) => ({ path, startMs, endMs, bytes: encoded })), api: last.apiRequests, nodesAt: Math.round(last.nodesAt) },
    allAssets: { files: all.files, gzipBytes: all.wireBytes, rawBytes: all.rawBytes, largest: all.each.sort((a, b) => b.wire - a.wire).slice(0, 5) },
    skiff: process.env.SKIFF_BIN,
    uiDir: process.env.SKIFF_UI_DIR || '(embedded)',
    chromium: browser.version(),
  }, null, 2));
} finally {
  await browser.close();
  await cluster.stop();
}
