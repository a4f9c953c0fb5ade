// The web dashboard in a real browser (issue 22): Debian's Chromium, headless, driven by
// playwright-core, against one real `skiff dev` cluster shared by the whole file.
//
// Elements are found by role and accessible name, the names the dashboard promises
// (docs/dashboard.md), never by CSS class. Every wait is on a condition with a deadline.
//
// Run: SKIFF_BIN=target/debug/skiff node --test ui-tests/dashboard.test.mjs (scripts/test
// does, after cargo test; see README.md). Screenshots go to ui-tests/screenshots/, or
// SKIFF_UI_SCREENSHOTS.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import {
  Cluster, eventually, workload, httpGet, pool, launchBrowser, dashboardContext, screenshotDir,
} from './harness.mjs';

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

// How long the UI gets to show what the API already has: generous for a loaded CI
// machine, short enough that a broken view fails fast.
const UI = 20_000;
const SHOTS = screenshotDir();
const NS = 'default';
const APPS = `/apis/skiff.dev/v1/namespaces/${NS}/apps`;

let cluster;
let browser;
let viewerToken;
const contexts = [];
// Uncaught exceptions in the app's pages, and anything the page's Content-Security-Policy
// refused (an inline script or style, a foreign connection): each test fails if its
// pages had any.
let pageErrors = [];

async function open(opts = {}) {
  const context = await dashboardContext(browser, cluster, opts);
  contexts.push(context);
  const page = await context.newPage();
  page.setDefaultTimeout(UI);
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) pageErrors.push(`${page.url()}: ${m.text()}`);
  });
  return page;
}

/// A page signed in as the admin (or `token`), at `path`.
async function signedIn(path = '/ui/', { token, colorScheme } = {}) {
  const page = await open({ token: token || cluster.adminToken, colorScheme });
  await page.goto(path);
  return page;
}

/// Marks the document so that a reload (a new document) is detectable: client-side
/// navigation and live updates keep the mark, a reload loses it.
async function markDocument(page) {
  await page.evaluate(() => { window.__skiffTestMark = 'same document'; });
}
async function assertSameDocument(page) {
  assert.equal(await page.evaluate(() => window.__skiffTestMark), 'same document', 'the page was reloaded');
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

/// The nodes table's row for `name` on the overview.
function nodeRow(page, name) {
  return page.getByRole('row').filter({ hasText: name }).filter({ hasText: 'Ready' });
}

/// The apps table's row for `name` (the one holding its URL link).
function appRow(page, name) {
  return page.getByRole('row').filter({ has: page.getByRole('link', { name: new RegExp(`/${NS}/${name}/$`) }) });
}

/// Deploys http-hello.wasm as App `name` through the API and waits until it serves.
async function deployApp(name, replicas) {
  const r = await cluster.admin.request('PUT', `${APPS}/${name}?replicas=${replicas}&wait=true`, {
    body: workload('http-hello.wasm'), contentType: 'application/wasm',
  });
  assert.ok(r.status === 200 || r.status === 201, `deploying ${name}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/// A running ticker pod printing `tick N` every `interval`.
async function tickerPod(name, interval = '200ms') {
  const image = await cluster.admin.upload(workload('ticker.wasm'));
  await cluster.admin.ok('POST', `/api/v1/namespaces/${NS}/pods`, {
    body: {
      apiVersion: 'v1', kind: 'Pod', metadata: { name },
      spec: { nodeName: 'dev-1', restartPolicy: 'Never', containers: [{ name: 'main', image, args: [interval] }] },
    },
  });
  await eventually(`pod ${name} running`, async () => {
    const { body } = await cluster.admin.get(`/api/v1/namespaces/${NS}/pods/${name}`);
    return body?.status?.phase === 'Running';
  }, { timeout: 30_000 });
}

/// App `name`, deployed through the API unless an earlier test made it (so each test
/// can run alone).
async function ensureApp(name, replicas) {
  const { status } = await cluster.admin.get(`${APPS}/${name}`);
  if (status === 404) await deployApp(name, replicas);
}

let tickerMade = null;
/// The shared ticker pod, made once.
function ticker() {
  tickerMade ||= tickerPod('ticker');
  return tickerMade;
}

let failed = false;
/// A test whose failure leaves a screenshot of each page it had open
/// (`failed-TEST-N.png` next to the others) and keeps the cluster's log.
function test(name, ...rest) {
  const fn = rest.pop();
  // No test waits longer than this for anything: a hang fails instead of stalling CI.
  it(name, { timeout: 90_000, ...rest[0] }, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      const slug = name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60);
      let n = 0;
      for (const context of contexts) {
        for (const page of context.pages()) {
          n += 1;
          await page.screenshot({ path: join(SHOTS, `failed-${slug}-${n}.png`), timeout: 5_000 }).catch(() => {});
        }
      }
      throw e;
    }
  });
}

before(async () => {
  cluster = await new Cluster().start();
  viewerToken = await cluster.token('viewer');
  browser = await launchBrowser();
});

afterEach(async () => {
  const errors = pageErrors;
  pageErrors = [];
  while (contexts.length) await contexts.pop().close();
  assert.deepEqual(errors, [], 'the dashboard threw uncaught exceptions or broke its CSP');
});

after(async () => {
  if (browser) await browser.close();
  if (cluster) {
    if (failed) {
      process.env.SKIFF_UI_KEEP = '1';
      console.log(`# a test failed: screenshots in ${SHOTS}, the cluster's log in ${cluster.logPath}`);
    }
    await cluster.stop();
  }
});

describe('the dashboard', { concurrency: 1 }, () => {
  test('signs in with a pasted token and the overview shows the nodes', async () => {
    const page = await open();
    await page.goto('/ui/');
    await page.waitForURL('**/ui/signin');

    // A wrong token: the API's refusal is shown and the tab stays signed out.
    await page.getByLabel('Token').fill('not-a-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').waitFor();
    assert.equal(new URL(page.url()).pathname, '/ui/signin');

    await page.getByLabel('Token').fill(cluster.adminToken);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL((u) => u.pathname === '/ui/');
    for (const heading of ['Nodes', 'Apps', 'Warnings', 'API']) {
      await page.getByRole('heading', { level: 2, name: heading, exact: true }).waitFor();
    }
    await nodeRow(page, 'dev-1').first().waitFor();
    const nav = page.getByRole('navigation', { name: 'Main' });
    for (const link of ['Overview', 'Apps', 'Workloads', 'Nodes', 'Events']) {
      await nav.getByRole('link', { name: link, exact: true }).waitFor();
    }
    // The token lives in this tab's session storage, nowhere in the address.
    assert.equal(await page.evaluate(() => sessionStorage.getItem('skiff.token')), cluster.adminToken);
    assert.ok(!page.url().includes(cluster.adminToken));

    // Signing out forgets it.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL('**/ui/signin');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('skiff.token')), null);
  });

  test('a sign-in link (/ui/#token=...) signs in and takes the token out of the address', async () => {
    const page = await open();
    await page.goto(`/ui/#token=${encodeURIComponent(cluster.adminToken)}`);
    await nodeRow(page, 'dev-1').first().waitFor();
    assert.equal(new URL(page.url()).hash, '');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('skiff.token')), cluster.adminToken);
  });

  test('the keyboard reaches the skip link and the main navigation, and Enter follows a link in place', async () => {
    const page = await signedIn('/ui/');
    await nodeRow(page, 'dev-1').first().waitFor();
    await markDocument(page);
    const focused = () => page.evaluate(() => ({
      text: document.activeElement?.textContent?.trim(),
      inNav: !!document.activeElement?.closest('nav[aria-label="Main"]'),
    }));
    await page.keyboard.press('Tab');
    assert.equal((await focused()).text, 'Skip to content', 'the first Tab stop is the skip link');
    // Tab on to the main navigation's Apps link (a few stops at most), then Enter.
    let at;
    for (let i = 0; i < 10; i += 1) {
      await page.keyboard.press('Tab');
      at = await focused();
      if (at.inNav && at.text === 'Apps') break;
    }
    assert.deepEqual(at, { text: 'Apps', inNav: true }, 'Tab reaches the Apps link of the main navigation');
    await page.keyboard.press('Enter');
    await page.waitForURL('**/ui/apps');
    const apps = page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Apps', exact: true });
    await eventually('the Apps link marked as the current page', async () => (await apps.getAttribute('aria-current')) === 'page');
    await assertSameDocument(page);
  });

  test('a .wasm dropped on the Apps page goes Ready and its URL answers', async () => {
    const page = await signedIn('/ui/');
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Apps', exact: true }).click();
    await page.waitForURL('**/ui/apps');
    const zone = page.getByLabel('Deploy a .wasm module');
    await zone.first().waitFor();

    // A real drop: a DataTransfer holding the file, dispatched as the browser would.
    const bytes = workload('http-hello.wasm');
    const dataTransfer = await page.evaluateHandle(({ b64, name }) => {
      const raw = atob(b64);
      const buf = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i += 1) buf[i] = raw.charCodeAt(i);
      const dt = new DataTransfer();
      dt.items.add(new File([buf], name, { type: 'application/wasm' }));
      return dt;
    }, { b64: bytes.toString('base64'), name: 'http-hello.wasm' });
    for (const type of ['dragenter', 'dragover', 'drop']) {
      await zone.first().dispatchEvent(type, { dataTransfer });
    }

    const appName = page.getByRole('textbox', { name: 'App name' });
    await appName.waitFor();
    assert.equal(await appName.inputValue(), 'http-hello', 'the name is prefilled from the file name');
    await appName.fill('web');
    await page.getByRole('spinbutton', { name: 'Replicas', exact: true }).fill('2');
    await shot(page, 'apps-deploy');
    await page.getByRole('button', { name: /^Deploy/ }).click();

    // Upload progress, then the rollout's: "Ready" once both replicas serve.
    const upload = page.getByRole('progressbar', { name: 'Upload' });
    await eventually('the upload progress at 100%', async () => (await upload.getAttribute('value')) === '1');
    await page.getByRole('status').filter({ hasText: /web: Ready/ }).waitFor({ timeout: 60_000 });
    const row = appRow(page, 'web');
    await row.getByText('2/2', { exact: true }).waitFor({ timeout: 60_000 });

    // The API agrees, and the URL the table links to serves the module.
    const { body: app } = await cluster.admin.get(`${APPS}/web`);
    assert.equal(app.spec.replicas, 2);
    assert.equal(app.status.readyReplicas, 2);
    const link = row.getByRole('link', { name: app.status.url });
    assert.equal(await link.getAttribute('href'), app.status.url);
    const answer = await httpGet(app.status.url);
    assert.equal(answer.status, 200, answer.body);
    assert.match(answer.body, /^hello from skiff/);
    // And in the browser, as a user following the link would see it.
    const tab = await page.context().newPage();
    await tab.goto(app.status.url);
    assert.match(await tab.locator('body').innerText(), /hello from skiff/);
    await tab.close();
    await shot(page, 'apps');

    // The keyboard's way in: the drop zone's file input takes a chosen file the same way.
    await page.getByLabel('Choose a .wasm file').setInputFiles({
      name: 'http-echo.wasm', mimeType: 'application/wasm', buffer: workload('http-echo.wasm'),
    });
    await eventually('the name prefilled from the chosen file', async () => (await appName.inputValue()) === 'http-echo');
  });

  test('scaling an app changes its replica count live, with no reload', async () => {
    await deployApp('scaled', 1);
    const page = await signedIn('/ui/apps');
    const row = appRow(page, 'scaled');
    await row.getByText('1/1', { exact: true }).waitFor();
    await markDocument(page);

    // From the dashboard: the App's spec changes and the row follows its status.
    await page.getByRole('spinbutton', { name: 'Replicas of scaled' }).fill('3');
    await page.getByRole('button', { name: 'Scale scaled' }).click();
    await row.getByText('3/3', { exact: true }).waitFor({ timeout: 60_000 });
    const { body: app } = await cluster.admin.get(`${APPS}/scaled`);
    assert.equal(app.spec.replicas, 3);

    // From elsewhere (the API, as kubectl would): the open page follows by its watch.
    await cluster.admin.ok('PATCH', `${APPS}/scaled`, {
      body: { spec: { replicas: 1 } }, contentType: 'application/merge-patch+json',
    });
    await row.getByText('1/1', { exact: true }).waitFor({ timeout: 60_000 });
    await assertSameDocument(page);

    // Delete, confirmed in the dialog: the row goes, and so does the App.
    await page.getByRole('button', { name: 'Delete scaled' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete', exact: true }).click();
    await row.waitFor({ state: 'detached' });
    await eventually('the App gone from the API', async () => (await cluster.admin.get(`${APPS}/scaled`)).status === 404);
    await assertSameDocument(page);
  });

  test('rolling an app back serves the previous module again', async () => {
    const v1 = await deployApp('rolled', 1);
    const r = await cluster.admin.request('PUT', `${APPS}/rolled?wait=true`, {
      body: workload('http-echo.wasm'), contentType: 'application/wasm',
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.notEqual(r.body.spec.module, v1.spec.module);
    assert.doesNotMatch((await httpGet(v1.status.url)).body, /^hello from skiff/);

    const page = await signedIn('/ui/apps');
    const row = appRow(page, 'rolled');
    await row.waitFor();
    const back = page.getByRole('button', { name: 'Roll back rolled' });
    await eventually('Roll back enabled (the earlier revision known)', () => back.isEnabled());
    await back.click();
    await eventually('the App back on its first module', async () => (await cluster.admin.get(`${APPS}/rolled`)).body.spec.module === v1.spec.module);
    await eventually('the first module serving again', async () => /^hello from skiff/.test((await httpGet(v1.status.url)).body), { timeout: 60_000 });
    // The row shows the module digest it now runs.
    const digest = v1.status.moduleDigest.replace(/^sha256:/, '');
    await row.getByText(new RegExp(digest.slice(0, 12))).waitFor({ timeout: 60_000 });
  });

  test("a pod's logs follow live", async () => {
    await ticker();
    const page = await signedIn(`/ui/pods/${NS}/ticker`);
    await page.getByRole('heading', { level: 1, name: 'ticker' }).waitFor();
    for (const h of ['Conditions', 'Containers', 'Events', 'Logs', 'YAML']) {
      await page.getByRole('heading', { name: h, exact: true }).first().waitFor();
    }
    const logs = page.getByRole('region', { name: 'Logs' });
    const follow = logs.getByRole('checkbox', { name: 'Follow' });
    assert.ok(await follow.isChecked(), 'logs follow by default');
    await markDocument(page);
    const output = logs.getByLabel('Log output');
    const ticks = async () => {
      const text = await output.innerText();
      return [...text.matchAll(/tick (\d+)/g)].map((m) => Number(m[1]));
    };
    const seen = await eventually('tick lines in the log view', async () => {
      const t = await ticks();
      return t.length > 0 && t;
    }, { timeout: UI });
    const highest = Math.max(...seen);
    // New lines arrive on the open stream: higher ticks appear with no reload.
    await eventually('newer ticks appended live', async () => {
      const t = await ticks();
      return Math.max(...t) >= highest + 3 && t.length >= seen.length + 3;
    }, { timeout: UI });
    await assertSameDocument(page);
    // The download holds the whole log from the start, as a file named after the pod.
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      logs.getByRole('link', { name: 'Download logs' }).click(),
    ]);
    assert.equal(download.suggestedFilename(), 'ticker.log');
    const saved = readFileSync(await download.path(), 'utf8');
    assert.match(saved, /^tick 1$/m);
    assert.ok(saved.split('\n').filter((l) => l.startsWith('tick ')).length >= seen.length + 3, 'the download has every tick seen');
    await logs.scrollIntoViewIfNeeded();
    await shot(page, 'pod-logs');
  });

  test('an invalid YAML edit shows the API error with its causes', async () => {
    await tickerPod('edited', '1s');
    const page = await signedIn(`/ui/pods/${NS}/edited`);
    const yaml = page.getByRole('textbox', { name: 'YAML', exact: true });
    await eventually('the pod YAML loaded', async () => (await yaml.inputValue()).includes('name: edited'));
    const original = await yaml.inputValue();
    // A label value Kubernetes forbids: the API answers 422 Invalid, with a cause.
    const edited = original.replace(/^metadata:\n/m, 'metadata:\n  labels:\n    broken: "not a valid value!"\n');
    assert.notEqual(edited, original);
    // A labels: map already there would make this a duplicate key; the pod has none.
    assert.ok(!/^ {2}labels:/m.test(original), 'the test pod has no labels');
    await yaml.fill(edited);
    await page.getByRole('button', { name: 'Apply', exact: true }).click();

    // What the API says to the same edit (dry run): the page shows exactly that.
    const { body: pod } = await cluster.admin.get(`/api/v1/namespaces/${NS}/pods/edited`);
    pod.metadata.labels = { broken: 'not a valid value!' };
    const dry = await cluster.admin.put(`/api/v1/namespaces/${NS}/pods/edited?dryRun=All`, pod);
    assert.equal(dry.status, 422, JSON.stringify(dry.body));
    const causes = dry.body.details.causes;
    assert.ok(causes.length > 0, 'the API gave causes');

    const alert = page.getByRole('alert').filter({ hasText: 'is invalid' });
    await alert.waitFor();
    const text = await alert.innerText();
    assert.ok(text.includes(dry.body.message.split(':')[0]), `the alert shows the Status message: ${text}`);
    for (const cause of causes) {
      assert.ok(text.includes(cause.field), `the alert names ${cause.field}: ${text}`);
      assert.ok(text.includes(cause.message.slice(0, 40)), `the alert says ${cause.message}: ${text}`);
    }
    // The user's text is kept for fixing, and nothing changed in the cluster.
    assert.equal(await yaml.inputValue(), edited);
    const { body: after } = await cluster.admin.get(`/api/v1/namespaces/${NS}/pods/edited`);
    assert.equal(after.metadata.labels?.broken, undefined);
    await shot(page, 'yaml-error');
  });

  test('a YAML edit of an object changed meanwhile is refused as a conflict that keeps the edit', async () => {
    await tickerPod('conflicted', '1s');
    const page = await signedIn(`/ui/pods/${NS}/conflicted`);
    const yaml = page.getByRole('textbox', { name: 'YAML', exact: true });
    await eventually('the pod YAML loaded', async () => (await yaml.inputValue()).includes('name: conflicted'));
    const original = await yaml.inputValue();
    assert.ok(!/^ {2}labels:/m.test(original), 'the test pod has no labels');
    const edited = original.replace(/^metadata:\n/m, 'metadata:\n  labels:\n    mine: "yes"\n');
    await yaml.fill(edited);
    // Someone else changes the pod before Apply.
    await cluster.admin.ok('PATCH', `/api/v1/namespaces/${NS}/pods/conflicted`, {
      body: { metadata: { labels: { theirs: 'yes' } } }, contentType: 'application/merge-patch+json',
    });
    await page.getByRole('button', { name: 'Apply', exact: true }).click();
    await page.getByRole('alert').filter({ hasText: 'changed since you loaded it' }).waitFor();
    assert.equal(await yaml.inputValue(), edited, "the user's text is kept");
    const { body: pod } = await cluster.admin.get(`/api/v1/namespaces/${NS}/pods/conflicted`);
    assert.deepEqual(pod.metadata.labels, { theirs: 'yes' }, 'the conflicting edit was not applied');
    // Reload shows the current object, with the edit kept beside it.
    await page.getByRole('button', { name: 'Reload', exact: true }).click();
    await eventually('the reloaded YAML', async () => (await yaml.inputValue()).includes('theirs:'));
    assert.equal(await page.getByRole('textbox', { name: 'Your edit' }).inputValue(), edited);
  });

  test('events arrive live and filter by text and type', async () => {
    const page = await signedIn('/ui/events');
    await page.getByRole('heading', { level: 1, name: 'Events' }).waitFor();
    const table = page.getByRole('main').getByRole('table');
    await table.waitFor();
    await markDocument(page);
    const event = (name, type, reason) => cluster.admin.ok('POST', `/api/v1/namespaces/${NS}/events`, {
      body: {
        apiVersion: 'v1', kind: 'Event', metadata: { name },
        involvedObject: { apiVersion: 'v1', kind: 'Pod', namespace: NS, name: 'ticker' },
        type, reason, message: `${reason} from the browser test`,
        source: { component: 'ui-test' }, count: 1,
        firstTimestamp: new Date().toISOString(), lastTimestamp: new Date().toISOString(),
      },
    });
    await event('ui-test-warning', 'Warning', 'UiTestWarning');
    await event('ui-test-normal', 'Normal', 'UiTestNormal');
    const row = (reason) => table.getByRole('row').filter({ hasText: reason });
    await row('UiTestWarning').waitFor();
    await row('UiTestNormal').waitFor();

    await page.getByRole('combobox', { name: 'Type' }).selectOption('Warning');
    await row('UiTestNormal').waitFor({ state: 'detached' });
    assert.equal(await row('UiTestWarning').count(), 1);
    await page.getByRole('combobox', { name: 'Type' }).selectOption('All');
    await page.getByRole('textbox', { name: 'Filter events' }).fill('UiTestNormal');
    await row('UiTestWarning').waitFor({ state: 'detached' });
    assert.equal(await row('UiTestNormal').count(), 1);
    assert.equal(Number(await table.getAttribute('aria-rowcount')), 2, 'only the matching event is listed');
    // Deleted, it leaves the open list too.
    await cluster.admin.ok('DELETE', `/api/v1/namespaces/${NS}/events/ui-test-normal`);
    await row('UiTestNormal').waitFor({ state: 'detached' });
    await cluster.admin.ok('DELETE', `/api/v1/namespaces/${NS}/events/ui-test-warning`);
    await assertSameDocument(page);
  });

  test('a node page shows its conditions, pods and tunnel, and cordons', async () => {
    const page = await signedIn('/ui/nodes/dev-1');
    await page.getByRole('heading', { level: 1, name: 'dev-1' }).waitFor();
    for (const h of ['Conditions', 'Taints', 'Pods', 'Tunnel']) {
      await page.getByRole('heading', { name: h, exact: true }).first().waitFor();
    }
    await page.getByRole('button', { name: 'Drain' }).waitFor();
    await shot(page, 'node');

    // Cordon and uncordon: the Node's spec changes, and the page follows it live.
    await markDocument(page);
    const unschedulable = async () => (await cluster.admin.get('/api/v1/nodes/dev-1')).body.spec?.unschedulable === true;
    await page.getByRole('button', { name: 'Cordon', exact: true }).click();
    await eventually('dev-1 cordoned', unschedulable);
    await page.getByRole('button', { name: 'Uncordon', exact: true }).click();
    await eventually('dev-1 uncordoned', async () => !(await unschedulable()));
    await page.getByRole('button', { name: 'Cordon', exact: true }).waitFor();
    await assertSameDocument(page);
  });

  test('a viewer sees no write controls, and the API refuses its writes', async () => {
    await ensureApp('web', 2);
    await ticker();
    // The same pages an admin can write on.
    await pageHasWriteControls();

    const page = await open();
    await page.goto(`/ui/#token=${encodeURIComponent(viewerToken)}`);
    await nodeRow(page, 'dev-1').first().waitFor();
    await page.getByText('read-only', { exact: true }).waitFor();

    const none = async (what, locator) => assert.equal(await locator.count(), 0, `a viewer sees ${what}`);
    await page.goto('/ui/apps');
    await appRow(page, 'web').waitFor();
    await page.getByText('read-only', { exact: true }).waitFor();
    await none('the deploy drop zone', page.getByLabel('Deploy a .wasm module'));
    await none('a Scale button', page.getByRole('button', { name: /^Scale / }));
    await none('a replicas field', page.getByRole('spinbutton'));
    await none('a Roll back button', page.getByRole('button', { name: /^Roll back / }));
    await none('a Delete button', page.getByRole('button', { name: /^Delete / }));

    await page.goto(`/ui/pods/${NS}/ticker`);
    await page.getByRole('heading', { level: 1, name: 'ticker' }).waitFor();
    await eventually('the pod YAML loaded', async () => (await page.getByRole('textbox', { name: 'YAML', exact: true }).inputValue()).includes('name: ticker'));
    await page.getByText('read-only', { exact: true }).waitFor();
    await none('an Apply button', page.getByRole('button', { name: 'Apply', exact: true }));

    await page.goto('/ui/nodes/dev-1');
    await page.getByRole('heading', { level: 1, name: 'dev-1' }).waitFor();
    await page.getByRole('heading', { name: 'Conditions', exact: true }).first().waitFor();
    await page.getByText('read-only', { exact: true }).waitFor();
    await none('a Cordon button', page.getByRole('button', { name: /^(Cordon|Uncordon)$/ }));
    await none('a Drain button', page.getByRole('button', { name: 'Drain' }));

    // The token the tab holds cannot write, whatever the page would send.
    const { body: before } = await cluster.admin.get(`${APPS}/web`);
    const refused = await page.evaluate(async (path) => {
      const res = await fetch(path, {
        method: 'PATCH',
        headers: {
          Authorization: 'Bearer ' + sessionStorage.getItem('skiff.token'),
          'Content-Type': 'application/merge-patch+json',
        },
        body: JSON.stringify({ spec: { replicas: 5 } }),
      });
      return { status: res.status, body: await res.json() };
    }, `${APPS}/web`);
    assert.equal(refused.status, 403, JSON.stringify(refused.body));
    assert.equal(refused.body.reason, 'Forbidden');
    const { body: app } = await cluster.admin.get(`${APPS}/web`);
    assert.equal(app.spec.replicas, before.spec.replicas);
    assert.equal(app.metadata.generation, before.metadata.generation);
  });

  test('a user who may edit one namespace only picks it on the Apps page and scales there', async () => {
    const team = 'team-a';
    const teamApps = `/apis/skiff.dev/v1/namespaces/${team}/apps`;
    await cluster.admin.ok('POST', '/api/v1/namespaces', { body: { metadata: { name: team } } });
    await cluster.admin.ok('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${team}/rolebindings`, {
      body: {
        metadata: { name: 'alice-edit' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'edit' },
        subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'alice' }],
      },
    });
    const r = await cluster.admin.request('PUT', `${teamApps}/tapp?replicas=1&wait=true`, {
      body: workload('http-hello.wasm'), contentType: 'application/wasm',
    });
    assert.ok(r.status === 200 || r.status === 201, `deploying tapp: ${r.status} ${JSON.stringify(r.body)}`);
    const alice = await cluster.userToken('alice');

    // Every namespace's apps are refused to her, with the API's words, and she is asked
    // for one; in hers she has the controls RBAC gives her.
    const page = await signedIn('/ui/apps', { token: alice });
    await page.getByRole('alert').filter({ hasText: 'forbidden' }).first().waitFor();
    await page.getByRole('textbox', { name: 'Namespace', exact: true }).fill(team);
    await page.getByRole('button', { name: 'Show', exact: true }).click();
    await eventually('the URL names the namespace', async () => page.url().endsWith(`/ui/apps?ns=${team}`));
    const row = page.getByRole('row').filter({ has: page.getByRole('link', { name: new RegExp(`/${team}/tapp/$`) }) });
    await row.waitFor();
    await page.getByRole('spinbutton', { name: 'Replicas of tapp', exact: true }).fill('2');
    await page.getByRole('button', { name: 'Scale tapp', exact: true }).click();
    await eventually('tapp scaled to 2 in the API', async () => (await cluster.admin.get(`${teamApps}/tapp`)).body?.spec?.replicas === 2);
    await row.filter({ hasText: '2/2' }).waitFor();
  });

  test('has no serious or critical accessibility violations (axe-core), light and dark', async () => {
    await ensureApp('web', 2);
    await ticker();
    // A pod that is not running yet (its log empty) as well as a running one.
    await cluster.admin.ok('POST', `/api/v1/namespaces/${NS}/pods`, {
      body: {
        apiVersion: 'v1', kind: 'Pod', metadata: { name: 'waiting' },
        spec: { nodeName: 'nowhere', containers: [{ name: 'main', image: 'sha256:' + '0'.repeat(64) }] },
      },
    });
    const pages = ['/ui/', '/ui/apps', '/ui/workloads', `/ui/pods/${NS}/ticker`, `/ui/pods/${NS}/waiting`, '/ui/nodes/dev-1', '/ui/nodes', '/ui/events'];
    const found = [];
    for (const colorScheme of ['light', 'dark']) {
      const page = await open({ colorScheme });
      await page.goto('/ui/signin');
      await page.getByLabel('Token').waitFor();
      found.push(...await axe(page, 'signin', colorScheme));
      if (colorScheme === 'light') await shot(page, 'signin');
      await page.evaluate((t) => sessionStorage.setItem('skiff.token', t), cluster.adminToken);
      for (const path of pages) {
        await page.goto(path);
        await settled(page, path);
        found.push(...await axe(page, path, colorScheme));
      }
      // The overview with an app and pods on it, in each theme.
      await page.goto('/ui/');
      await settled(page, '/ui/');
      await appRow(page, 'web').waitFor();
      await shot(page, colorScheme === 'dark' ? 'overview-dark' : 'overview');
    }
    assert.ok(found.length === 0, `axe found serious or critical violations:\n${found.join('\n')}`);
  });

  test('5,000 pods render, virtualised, and scroll', { timeout: 120_000 }, async () => {
    const ns = 'bulk';
    await cluster.admin.ok('POST', '/api/v1/namespaces', {
      body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } },
    });
    // Bound to a node that does not exist: stored and listed like any pod, run by nobody.
    const names = Array.from({ length: 5000 }, (_, i) => `p-${String(i).padStart(4, '0')}`);
    const started = Date.now();
    await pool(names, 32, (name) => cluster.admin.ok('POST', `/api/v1/namespaces/${ns}/pods`, {
      body: {
        apiVersion: 'v1', kind: 'Pod', metadata: { name, labels: { load: 'bulk' } },
        spec: { nodeName: 'nowhere', containers: [{ name: 'main', image: 'sha256:' + '0'.repeat(64) }] },
      },
    }));
    const created = Date.now() - started;

    const page = await signedIn('/ui/workloads');
    await markDocument(page);
    // Chosen as a user would: the kinds come from discovery.
    await page.getByRole('combobox', { name: 'Kind' }).selectOption({ label: 'Pod' });
    await page.getByRole('combobox', { name: 'Namespace' }).selectOption({ label: ns });
    const shown = Date.now();
    const table = page.getByRole('main').getByRole('table');
    await table.getByRole('link', { name: 'p-0000', exact: true }).waitFor({ timeout: 60_000 });
    await eventually('all 5,000 pods counted', async () => Number(await table.getAttribute('aria-rowcount')) === 5001, { timeout: 60_000 });
    const rendered = Date.now() - shown;
    const url = new URL(page.url());
    assert.equal(url.searchParams.get('kind'), 'v1/pods');
    assert.equal(url.searchParams.get('ns'), ns);
    await page.getByText('5000 of 5000').waitFor();
    const rows = await table.getByRole('row').count();
    assert.ok(rows < 300, `the table holds ${rows} rows in the DOM for 5,000 pods: not virtualised`);
    await shot(page, 'workloads-5000-pods');

    // Scroll to the end: the last pods come into the DOM, the first leave it.
    await table.evaluate((t) => {
      const box = t.closest('[role=region]') || t.parentElement;
      box.scrollTop = box.scrollHeight;
    });
    await table.getByRole('link', { name: 'p-4999', exact: true }).waitFor();
    assert.equal(await table.getByRole('link', { name: 'p-0000', exact: true }).count(), 0);
    assert.ok(await table.getByRole('row').count() < 300);

    // Live at this size: a new pod appears without a reload.
    await cluster.admin.ok('POST', `/api/v1/namespaces/${ns}/pods`, {
      body: {
        apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p-5000' },
        spec: { nodeName: 'nowhere', containers: [{ name: 'main', image: 'sha256:' + '0'.repeat(64) }] },
      },
    });
    await eventually('the 5,001st pod counted', async () => Number(await table.getAttribute('aria-rowcount')) === 5002, { timeout: UI });
    await table.getByRole('link', { name: 'p-5000', exact: true }).waitFor();

    // Search narrows the 5,001 to one.
    await page.getByRole('textbox', { name: 'Search' }).fill('p-4321');
    await page.getByText('1 of 5001').waitFor();
    await table.getByRole('link', { name: 'p-4321', exact: true }).waitFor();
    assert.equal(Number(await table.getAttribute('aria-rowcount')), 2);
    await assertSameDocument(page);
    console.log(`# 5,000 pods: created in ${created} ms, shown in ${rendered} ms, ${rows} rows in the DOM`);
  });
});

/// Checks that the write controls the viewer test expects to be absent do exist for an
/// admin, so the viewer test cannot pass by looking for the wrong names.
async function pageHasWriteControls() {
  const page = await signedIn('/ui/apps');
  await appRow(page, 'web').waitFor();
  await page.getByLabel('Deploy a .wasm module').first().waitFor();
  await page.getByRole('button', { name: 'Scale web' }).waitFor();
  await page.getByRole('button', { name: 'Roll back web' }).waitFor();
  await page.getByRole('button', { name: 'Delete web' }).waitFor();
  await page.goto(`/ui/pods/${NS}/ticker`);
  await page.getByRole('button', { name: 'Apply', exact: true }).waitFor();
  await page.goto('/ui/nodes/dev-1');
  await page.getByRole('button', { name: 'Drain' }).waitFor();
  await page.context().close();
  contexts.splice(contexts.indexOf(page.context()), 1);
}

/// Waits until a page shows its data (not a loading placeholder).
async function settled(page, path) {
  await page.getByRole('navigation', { name: 'Main' }).waitFor();
  if (path === '/ui/') await nodeRow(page, 'dev-1').first().waitFor();
  else if (path.startsWith('/ui/pods/') || path.startsWith('/ui/nodes/')) await page.getByRole('heading', { level: 1 }).waitFor();
  // A running pod's page is steady once its log shows lines.
  if (path.endsWith('/ticker')) await eventually('log lines', async () => /tick \d+/.test(await page.getByLabel('Log output').innerText()));
  else if (path === '/ui/apps') await appRow(page, 'web').waitFor();
  await eventually(`${path} done loading`, async () => (await page.locator('[aria-busy=true]').count()) === 0, { timeout: UI });
}

/// axe-core's serious and critical violations on the page as it is, one line each.
async function axe(page, where, scheme) {
  // Evaluated through the DevTools protocol, which the page's CSP does not restrict.
  await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      // Where, and axe's own account of why (for colour contrast: the colours and ratio).
      nodes: v.nodes.slice(0, 3).map((n) => `${n.target.join(' ')} (${[...n.any, ...n.all, ...n.none].map((c) => c.message).join('; ')})`),
      more: Math.max(0, v.nodes.length - 3),
    }));
  });
  return violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${where} (${scheme}): ${v.impact} ${v.id}: ${v.help}\n    at ${v.nodes.join('\n    at ')}${v.more ? `\n    and ${v.more} more` : ''}`);
}
