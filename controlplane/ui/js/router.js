// Client-side routes under /ui/ with the history API. Links are real <a href="/ui/...">
// (so middle-click and "open in new tab" work); a plain left click on one is taken over
// here and becomes a pushState.
import { useState, useEffect } from '../vendor/preact-htm.js';

const subs = new Set();

function current() {
  return { path: location.pathname, query: new URLSearchParams(location.search), hash: location.hash };
}

function notify() {
  const r = current();
  subs.forEach((f) => f(r));
}

/** Go to a /ui/ path (with optional query), adding a history entry unless `replace`. */
export function navigate(to, { replace = false } = {}) {
  const url = new URL(to, location.origin);
  if (url.pathname + url.search === location.pathname + location.search && !replace) return;
  history[replace ? 'replaceState' : 'pushState'](null, '', url.pathname + url.search + url.hash);
  notify();
  if (!replace) window.scrollTo(0, 0);
}

/** Change query parameters of the current route in place (filters), without a new entry. */
export function setQuery(params) {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') q.delete(k); else q.set(k, v);
  }
  const s = q.toString();
  history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
  notify();
}

/** The current route, re-rendering on every change. */
export function useRoute() {
  const [r, setR] = useState(current);
  useEffect(() => { subs.add(setR); return () => subs.delete(setR); }, []);
  return r;
}

/** Match `/ui/pods/:ns/:name` style patterns; returns params or null. */
export function match(pattern, path) {
  const p = pattern.split('/').filter(Boolean);
  const s = path.split('/').filter(Boolean);
  if (p.length !== s.length) return null;
  const params = {};
  for (let i = 0; i < p.length; i += 1) {
    if (p[i].startsWith(':')) params[p[i].slice(1)] = decodeURIComponent(s[i]);
    else if (p[i] !== s[i]) return null;
  }
  return params;
}

export function startRouter() {
  window.addEventListener('popstate', notify);
  document.addEventListener('click', (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = e.target.closest && e.target.closest('a[href]');
    if (!a || a.target || a.hasAttribute('download')) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || !url.pathname.startsWith('/ui/')) return;
    if (/\.[a-z0-9]+$/i.test(url.pathname)) return; // a file, not a route
    if (url.hash && url.pathname === location.pathname && url.search === location.search) return; // in-page
    e.preventDefault();
    navigate(url.pathname + url.search + url.hash);
  });
}
