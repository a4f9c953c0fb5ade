// The browser tests' fixtures: a real `skiff dev` cluster on free loopback ports, a
// small API client over its TLS (trusting the cluster's own CA, as kubectl does),
// tokens, and Debian's system Chromium driven by playwright-core.
//
// Nothing here downloads a browser: Chromium is /usr/bin/chromium from Debian's
// `chromium` package (scripts/test installs it), or CHROMIUM when set.

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync, createWriteStream, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import https from 'node:https';
import http from 'node:http';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = join(HERE, '..');

/// The `skiff` binary under test: SKIFF_BIN (scripts/test points it at the debug build
/// cargo test made). Missing is an error, never a skip.
export function skiffBin() {
  const bin = process.env.SKIFF_BIN;
  if (!bin) throw new Error('SKIFF_BIN is not set: point it at a built skiff binary (scripts/test does)');
  if (!existsSync(bin)) throw new Error(`SKIFF_BIN=${bin} does not exist`);
  return bin;
}

/// The system Chromium. Missing is an error, never a skip.
export function chromiumPath() {
  const path = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(path)) {
    throw new Error(`${path} does not exist: install Debian's chromium package (scripts/test does)`);
  }
  return path;
}

/// Polls `check` until it returns a truthy value (returned), or throws after
/// `timeout` ms naming `what` and the last value or error seen.
export async function eventually(what, check, { timeout = 20_000, interval = 50 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/// A `skiff dev` cluster in a temporary directory. `start()` resolves once it printed
/// its `kubeconfig:` line (after `api:`); `stop()` ends it and removes the directory.
export class Cluster {
  constructor({ nodes = 1, env = {} } = {}) {
    this.nodes = nodes;
    this.env = env;
  }

  async start() {
    const bin = skiffBin();
    this.bin = bin;
    this.dir = mkdtempSync(join(tmpdir(), 'skiff-ui-test-'));
    const args = [
      'dev',
      '--nodes', String(this.nodes),
      '--data-dir', this.dir,
      '--listen', '127.0.0.1:0',
      '--gateway', '127.0.0.1:0',
      '--gateway-https', '127.0.0.1:0',
    ];
    this.logPath = join(this.dir, 'skiff.log');
    const log = createWriteStream(this.logPath);
    this.child = spawn(bin, args, {
      env: { ...process.env, RUST_LOG: process.env.SKIFF_TEST_LOG || 'warn', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stderr.pipe(log);
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    const printed = {};
    await new Promise((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error(`skiff dev printed no kubeconfig: line within 60 s; log: ${this.logPath}`)), 60_000);
      this.child.stdout.on('data', (chunk) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const m = /^([a-z][a-z ]*):\s+(\S+)/.exec(line);
          if (m) printed[m[1]] = m[2];
          if (m && m[1] === 'kubeconfig') {
            clearTimeout(timer);
            resolve();
          }
        }
      });
      this.child.once('exit', (code, signal) => {
        clearTimeout(timer);
        let tail = '';
        try { tail = readFileSync(this.logPath, 'utf8').slice(-2000); } catch {}
        reject(new Error(`skiff dev exited (${code ?? signal}) before it was ready:\n${tail}`));
      });
    });
    this.printed = printed;
    this.url = printed.api;
    this.gateway = printed.gateway;
    if (!this.url) throw new Error(`skiff dev printed no api: line (saw ${JSON.stringify(printed)})`);
    const kubeconfig = readFileSync(printed.kubeconfig, 'utf8');
    this.kubeconfig = printed.kubeconfig;
    this.adminToken = /^\s*token:\s*(\S+)\s*$/m.exec(kubeconfig)?.[1];
    const ca = /certificate-authority-data:\s*(\S+)/.exec(kubeconfig)?.[1];
    if (!this.adminToken || !ca) throw new Error(`no token or CA in ${printed.kubeconfig}`);
    this.ca = Buffer.from(ca, 'base64').toString();
    this.agent = new https.Agent({ ca: this.ca, keepAlive: true, maxSockets: 64 });
    this.admin = new Api(this, this.adminToken);
    return this;
  }

  /// A new token with `role` (viewer, admin), from `skiff token create`.
  async token(role) {
    const { stdout } = await promisify(execFile)(this.bin, ['token', 'create', '--role', role, '--kubeconfig', this.kubeconfig]);
    const token = stdout.trim().split('\n').pop().trim();
    if (!token) throw new Error(`skiff token create --role ${role} printed no token`);
    return token;
  }

  /// A new token for user `name` (RBAC decides what it may do), from `skiff token create`.
  async userToken(name) {
    const { stdout } = await promisify(execFile)(this.bin, ['token', 'create', '--user', name, '--kubeconfig', this.kubeconfig]);
    const token = stdout.trim().split('\n').pop().trim();
    if (!token) throw new Error(`skiff token create --user ${name} printed no token`);
    return token;
  }

  /// The last lines of the cluster's log, for failure messages.
  logTail(chars = 3000) {
    try { return readFileSync(this.logPath, 'utf8').slice(-chars); } catch { return ''; }
  }

  async stop() {
    if (this.agent) this.agent.destroy();
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const stopped = await Promise.race([this.exited, new Promise((r) => setTimeout(() => r(null), 15_000))]);
      if (!stopped) {
        this.child.kill('SIGKILL');
        await this.exited;
      }
    }
    if (this.dir && !process.env.SKIFF_UI_KEEP) rmSync(this.dir, { recursive: true, force: true });
  }
}

/// A JSON client for the cluster's API with one bearer token.
export class Api {
  constructor(cluster, token) {
    this.cluster = cluster;
    this.token = token;
  }

  /// `{ status, body }`: body parsed as JSON when it is JSON, else text.
  request(method, path, { body, contentType = 'application/json' } = {}) {
    const url = new URL(path, this.cluster.url);
    let data;
    if (body !== undefined) {
      data = Buffer.isBuffer(body) || body instanceof Uint8Array ? body : Buffer.from(JSON.stringify(body));
    }
    return new Promise((resolve, reject) => {
      const req = https.request(url, {
        method,
        agent: this.cluster.agent,
        headers: {
          authorization: `Bearer ${this.token}`,
          accept: 'application/json',
          ...(data ? { 'content-type': contentType, 'content-length': data.length } : {}),
        },
      }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let parsed = text;
          try { parsed = JSON.parse(text); } catch {}
          resolve({ status: res.statusCode, body: parsed });
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      if (data) req.write(data);
      req.end();
    });
  }

  get(path) { return this.request('GET', path); }
  post(path, body) { return this.request('POST', path, { body }); }
  put(path, body) { return this.request('PUT', path, { body }); }
  del(path) { return this.request('DELETE', path); }
  patch(path, body) { return this.request('PATCH', path, { body, contentType: 'application/merge-patch+json' }); }

  /// Like `request`, but a status outside 2xx throws with the API's answer.
  async ok(method, path, opts) {
    const r = await this.request(method, path, opts);
    if (r.status < 200 || r.status > 299) {
      throw new Error(`${method} ${path}: ${r.status} ${typeof r.body === 'string' ? r.body : JSON.stringify(r.body)}`);
    }
    return r.body;
  }

  /// Stores a Wasm module; returns its digest (the image pods name).
  async upload(bytes) {
    const module = await this.ok('POST', '/apis/skiff.dev/v1/modules', { body: bytes, contentType: 'application/wasm' });
    return module.digest;
  }
}

/// A committed guest from workloads/bin.
export function workload(name) {
  return readFileSync(join(REPO, 'workloads', 'bin', name));
}

/// GET over plain HTTP (the gateway): `{ status, body }` as text.
export function httpGet(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

/// Runs `fn` over `items` with at most `limit` at once; resolves to the results in order.
export async function pool(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/// Debian's Chromium, headless.
export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    // In containers and CI runners Chromium's sandbox often cannot start (no user
    // namespaces); the pages it loads are our own.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

/// A browser context for the cluster's dashboard: its own session storage, the
/// cluster's self-signed TLS accepted, a fixed viewport so screenshots are comparable.
/// With `token`, the tab starts signed in (the token put in session storage before any
/// of the app's scripts run, as the sign-in page would leave it).
export async function dashboardContext(browser, cluster, { token, colorScheme = 'light' } = {}) {
  const context = await browser.newContext({
    baseURL: cluster.url,
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 800 },
    deviceScaleFactor: 1,
    colorScheme,
  });
  if (token) {
    await context.addInitScript((t) => {
      if (!sessionStorage.getItem('skiff.token')) sessionStorage.setItem('skiff.token', t);
    }, token);
  }
  return context;
}

/// Where screenshots go: SKIFF_UI_SCREENSHOTS, or ui-tests/screenshots (ignored by git).
export function screenshotDir() {
  const dir = process.env.SKIFF_UI_SCREENSHOTS || join(HERE, 'screenshots');
  mkdirSync(dir, { recursive: true });
  return dir;
}
