// The dashboard's only way to the cluster: Skiff's Kubernetes API, with the user's bearer
// token, as kubectl uses it. Lists are list-then-watch (resumed from the last
// resourceVersion when a stream ends, relisted on 410 Gone), so every view is live
// without polling.
import { useState, useEffect } from '../vendor/preact-htm.js';

const KEY = 'skiff.token';

export const token = {
  get() { try { return sessionStorage.getItem(KEY) || ''; } catch { return ''; } },
  set(t) { forget(); sessionStorage.setItem(KEY, t); },
  clear() { forget(); try { sessionStorage.removeItem(KEY); } catch { /* storage off */ } },
};

// What one identity learnt is not kept for the next.
function forget() {
  canCache.clear();
  discoveryPromise = null;
  try { sessionStorage.removeItem(DISCOVERY_KEY); } catch { /* storage off */ }
}

/** An answer that was not 2xx, carrying the Kubernetes Status as the API said it. */
export class ApiError extends Error {
  constructor(status, body, fallback) {
    const st = body && typeof body === 'object' ? body : null;
    super((st && st.message) || fallback || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.body = st;
    this.reason = (st && st.reason) || '';
    this.details = (st && st.details) || {};
    this.causes = (this.details && this.details.causes) || [];
  }
}

// Where a 401 sends the user. main.js installs the router's navigation here.
let onUnauthorized = () => { location.assign('/ui/signin'); };
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

// The 401 that ended the session, for the sign-in page to say why (taken once).
let lastUnauthorized = null;
export function takeUnauthorized() { const e = lastUnauthorized; lastUnauthorized = null; return e; }

/** A 401 met outside request() (an XMLHttpRequest upload): end the session the same way. */
export function sessionEnded(err) { unauthorized(err); }

function unauthorized(err) {
  const had = !!token.get();
  token.clear();
  if (had) lastUnauthorized = err;
  onUnauthorized();
}

function url(path, query) {
  if (!query) return path;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? path + (path.includes('?') ? '&' : '?') + s : path;
}

function headers(extra) {
  const h = { Accept: 'application/json', ...extra };
  const t = token.get();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

async function errorFrom(res) {
  const text = await res.text().catch(() => '');
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  return new ApiError(res.status, body, text.trim() || `${res.status} ${res.statusText}`);
}

/** One API call. JSON in and out unless `raw` (then the Response is returned). */
export async function request(method, path, { body, contentType, query, signal, raw } = {}) {
  const h = {};
  let payload = body;
  if (body !== undefined && !(typeof body === 'string' || body instanceof Blob || body instanceof ArrayBuffer)) {
    payload = JSON.stringify(body);
  }
  if (body !== undefined) h['Content-Type'] = contentType || 'application/json';
  const res = await fetch(url(path, query), { method, headers: headers(h), body: payload, signal });
  if (res.status === 401) {
    const err = await errorFrom(res);
    unauthorized(err);
    throw err;
  }
  if (!res.ok) throw await errorFrom(res);
  if (raw) return res;
  if (res.status === 204) return null;
  const text = await res.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return text; }
}

export const get = (path, opts) => request('GET', path, opts);
export const post = (path, body, opts) => request('POST', path, { ...opts, body });
export const put = (path, body, opts) => request('PUT', path, { ...opts, body });
export const del = (path, opts) => request('DELETE', path, opts);
export const patch = (path, body, type = 'application/merge-patch+json') =>
  request('PATCH', path, { body, contentType: type });

// Objects per list page.
const PAGE = 500;

const sortKey = (o) => `${o.metadata?.namespace || ''}/${o.metadata?.name || ''}`;
const byName = (a, b) => { const x = sortKey(a), y = sortKey(b); return x < y ? -1 : x > y ? 1 : 0; };
const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

/**
 * List, then watch from the list's resourceVersion. Keeps a Map uid -> object and calls
 * onChange(items, complete) sorted by namespace/name, at most once per animation frame
 * (complete is false while the pages of the first list are still coming). A watch that
 * ends or drops resumes from the last resourceVersion seen; 410 Gone relists; failures back off.
 */
export function watchList(path, { onChange, onError, labelSelector, fieldSelector } = {}) {
  const ctl = new AbortController();
  const items = new Map();
  let frame = 0;
  let complete = false; // false while the pages of a first list are still coming
  const flush = () => {
    frame = 0;
    if (!ctl.signal.aborted && onChange) onChange([...items.values()].sort(byName), complete);
  };
  const schedule = () => {
    if (frame) return;
    frame = typeof requestAnimationFrame === 'function' && document.visibilityState !== 'hidden'
      ? requestAnimationFrame(flush) : setTimeout(flush, 16);
  };
  const sel = { labelSelector, fieldSelector };

  // The resourceVersion to watch from: the list's, then each event's (bookmarks too).
  // null means "list first". A watch that ends or drops resumes from it; only 410 Gone
  // (the version is too old) costs a relist.
  let rv = null;

  async function run() {
    let backoff = 500;
    while (!ctl.signal.aborted) {
      if (rv === null) {
        try {
          // In pages: the first rows show while the server still reads the rest (a list of
          // thousands can take seconds whole). The pages are one snapshot (the continue
          // token pins the first page's resourceVersion), watched from after they are in.
          // A relist keeps showing the old items until the new ones are all in.
          const first = items.size === 0;
          const fresh = first ? items : new Map();
          let cont;
          do {
            const list = await get(path, { query: { ...sel, limit: PAGE, continue: cont }, signal: ctl.signal });
            for (const o of list.items || []) fresh.set(o.metadata.uid || sortKey(o), o);
            cont = list.metadata?.continue || undefined;
            rv = list.metadata?.resourceVersion ?? '';
            if (first) { complete = !cont; schedule(); }
          } while (cont);
          if (!first) { items.clear(); for (const [k, o] of fresh) items.set(k, o); schedule(); }
          if (onError) onError(null);
        } catch (e) {
          rv = null;
          if (ctl.signal.aborted) return;
          if (onError) onError(e);
          const lasting = e instanceof ApiError && [400, 401, 403, 404, 422].includes(e.status);
          await sleep(lasting ? 10000 : backoff, ctl.signal); // lasting: not going to change soon
          backoff = Math.min(backoff * 2, 10000);
          continue;
        }
      }
      let events = 0;
      try {
        events = await watchStream();
        backoff = 500;
        await sleep(events ? 0 : 500, ctl.signal); // an empty end: do not spin
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e instanceof ApiError && e.status === 410) { rv = null; continue; }
        if (e instanceof ApiError && e.status >= 400 && e.status < 500) { rv = null; if (onError) onError(e); }
        await sleep(backoff, ctl.signal);
        backoff = Math.min(backoff * 2, 10000);
      }
    }
  }

  // Streams watch events from `rv` until the server ends the stream (returns how many
  // came) or says 410 Gone (throws it).
  async function watchStream() {
    const res = await request('GET', path, {
      query: { ...sel, watch: 'true', resourceVersion: rv, allowWatchBookmarks: 'true' },
      signal: ctl.signal, raw: true,
    });
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let n = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return n;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const ev = JSON.parse(line);
        const o = ev.object || {};
        if (ev.type === 'ERROR') throw new ApiError(o.code || 500, o);
        n += 1;
        if (o.metadata?.resourceVersion) rv = o.metadata.resourceVersion;
        if (ev.type === 'BOOKMARK') continue;
        const key = o.metadata?.uid || sortKey(o);
        if (ev.type === 'DELETED') items.delete(key); else items.set(key, o);
        schedule();
      }
    }
  }

  run();
  return {
    stop() {
      ctl.abort();
      if (frame) { cancelAnimationFrame(frame); clearTimeout(frame); }
    },
  };
}

/**
 * Preact hook over watchList. `path` null means nothing to watch (yet). `partial` is true
 * while the pages of the first list are still coming in.
 */
export function useList(path, opts = {}) {
  const [state, setState] = useState({ items: [], error: null, loading: !!path, partial: false });
  const { labelSelector, fieldSelector } = opts;
  useEffect(() => {
    if (!path) { setState({ items: [], error: null, loading: false, partial: false }); return undefined; }
    setState({ items: [], error: null, loading: true, partial: false });
    const w = watchList(path, {
      labelSelector, fieldSelector,
      onChange: (items, complete) => setState((s) => ({ ...s, items, loading: false, partial: !complete })),
      onError: (error) => setState((s) => (s.error === error ? s : { ...s, error, loading: error ? false : s.loading })),
    });
    return () => w.stop();
  }, [path, labelSelector, fieldSelector]);
  return state;
}

/** Preact hook: one object, live (a watch on its collection with a name field selector). */
export function useObject(path) {
  const [state, setState] = useState({ object: null, error: null, loading: !!path });
  useEffect(() => {
    if (!path) { setState({ object: null, error: null, loading: false }); return undefined; }
    setState({ object: null, error: null, loading: true });
    const i = path.lastIndexOf('/');
    const collection = path.slice(0, i);
    const name = decodeURIComponent(path.slice(i + 1));
    let seen = false;
    const w = watchList(collection, {
      fieldSelector: 'metadata.name=' + name,
      onChange: (items) => {
        if (items.length) { seen = true; setState({ object: items[0], error: null, loading: false }); return; }
        if (seen) {
          seen = false;
          setState({ object: null, loading: false,
            error: new ApiError(404, { message: `${name} was deleted`, reason: 'NotFound', code: 404 }) });
          return;
        }
        // Not there: ask for it directly so the error says what the API says (404 ...).
        get(path).then(
          (object) => setState({ object, error: null, loading: false }),
          (error) => setState({ object: null, error, loading: false }),
        );
      },
      onError: (error) => { if (error) setState((s) => ({ ...s, error, loading: false })); },
    });
    return () => w.stop();
  }, [path]);
  return state;
}

// can() answers, per tab (cleared when the token changes).
const canCache = new Map();

/** SelfSubjectAccessReview: may the signed-in identity do this? */
export async function can(verb, resource, { group = '', namespace, name, subresource } = {}) {
  const key = JSON.stringify([token.get(), verb, resource, group, namespace, name, subresource]);
  if (!canCache.has(key)) {
    const p = post('/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SelfSubjectAccessReview',
      spec: { resourceAttributes: { verb, resource, group, namespace, name, subresource } },
    }).then((r) => !!r?.status?.allowed, (e) => { canCache.delete(key); throw e; });
    canCache.set(key, p);
  }
  return canCache.get(key);
}

/** Preact hook over can(): undefined while asking, then true or false. */
export function useCan(verb, resource, opts = {}) {
  const [ok, setOk] = useState(undefined);
  const dep = JSON.stringify([verb, resource, opts]);
  useEffect(() => {
    let live = true;
    can(verb, resource, opts).then((v) => live && setOk(v), () => live && setOk(false));
    return () => { live = false; };
  }, [dep]);
  return ok;
}

let discoveryPromise = null;
const DISCOVERY_KEY = 'skiff.discovery';

/** The last discovery this tab saw (sessionStorage), to draw at once while discovery() runs. */
export function discoveryCached() {
  try { return JSON.parse(sessionStorage.getItem(DISCOVERY_KEY) || 'null'); } catch { return null; }
}

/**
 * Every resource the server serves: [{group, version, resource, kind, namespaced, verbs}].
 * Asked once per tab unless `fresh` (the Workloads page asks afresh, so a new CRD shows).
 */
export function discovery(fresh = false) {
  if (!discoveryPromise || fresh) {
    discoveryPromise = (async () => {
      const [core, groups] = await Promise.all([get('/api'), get('/apis')]);
      const gvs = [
        ...(core.versions || []).map((v) => ({ group: '', version: v, path: `/api/${v}` })),
        ...(groups.groups || []).map((g) => ({
          group: g.name,
          version: (g.preferredVersion || g.versions[0]).version,
          path: `/apis/${(g.preferredVersion || g.versions[0]).groupVersion}`,
        })),
      ];
      const lists = await Promise.all(gvs.map((gv) => get(gv.path).then((l) => [gv, l], () => [gv, { resources: [] }])));
      const out = [];
      for (const [gv, l] of lists) {
        for (const r of l.resources || []) {
          if (r.name.includes('/')) continue; // subresources
          out.push({ group: gv.group, version: gv.version, resource: r.name, kind: r.kind,
            namespaced: !!r.namespaced, verbs: r.verbs || [] });
        }
      }
      try { sessionStorage.setItem(DISCOVERY_KEY, JSON.stringify(out)); } catch { /* full or off */ }
      return out;
    })();
    discoveryPromise.catch(() => { discoveryPromise = null; });
  }
  return discoveryPromise;
}

/** The API path of a discovered resource's collection, optionally in a namespace. */
export function resourcePath({ group, version, resource, namespaced }, namespace) {
  const base = group ? `/apis/${group}/${version}` : `/api/${version}`;
  return namespaced && namespace ? `${base}/namespaces/${namespace}/${resource}` : `${base}/${resource}`;
}

/** Text streamed as it arrives (pod logs with follow=true). Returns { stop() }. */
export function streamText(path, { onText, onEnd, onError, signal } = {}) {
  const ctl = new AbortController();
  if (signal) signal.addEventListener('abort', () => ctl.abort(), { once: true });
  (async () => {
    try {
      const res = await request('GET', path, { signal: ctl.signal, raw: true });
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (onText) onText(dec.decode(value, { stream: true }));
      }
      if (onEnd) onEnd();
    } catch (e) {
      if (ctl.signal.aborted) return;
      if (onError) onError(e);
    }
  })();
  return { stop() { ctl.abort(); } };
}
