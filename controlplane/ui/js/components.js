// Small shared pieces: errors as the API said them, a virtualised table, ages, badges,
// a confirm dialog and sparklines.
import { html, useState, useEffect, useRef, useLayoutEffect } from '../vendor/preact-htm.js';

/** An error as the API said it: the Status message, then each cause `field: message`. */
export function ErrorBox({ error, title }) {
  if (!error) return null;
  const causes = error.causes || [];
  const msg = error.message || String(error);
  return html`<div class="error" role="alert">
    ${title ? html`<strong>${title}: </strong>` : null}<span>${msg}</span>
    ${error.status ? html` <span class="muted">(${error.status}${error.reason ? ' ' + error.reason : ''})</span>` : null}
    ${causes.length ? html`<ul>${causes.map((c) => html`<li><code>${c.field || c.reason || ''}</code>${c.field || c.reason ? ': ' : ''}${c.message}</li>`)}</ul>` : null}
  </div>`;
}

// One shared clock so thousands of ages re-render from one timer.
const clockSubs = new Set();
let clockTimer = 0;
function useNow(everyMs = 5000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    clockSubs.add(setNow);
    if (!clockTimer) clockTimer = setInterval(() => { const t = Date.now(); clockSubs.forEach((f) => f(t)); }, everyMs);
    return () => { clockSubs.delete(setNow); if (!clockSubs.size) { clearInterval(clockTimer); clockTimer = 0; } };
  }, []);
  return now;
}

/** "3s", "5m", "2h", "4d" as kubectl prints ages. */
export function age(time, now = Date.now()) {
  if (!time) return '';
  const s = Math.max(0, Math.floor((now - new Date(time).getTime()) / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 120) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.floor(h / 24)}d`;
}

export function Age({ time }) {
  const now = useNow();
  if (!time) return html`<span class="muted">–</span>`;
  return html`<time datetime=${time} title=${new Date(time).toLocaleString()}>${age(time, now)}</time>`;
}

const GOOD = /^(ready|running|true|succeeded|complete|completed|normal|online|available|ok|active|bound)$/i;
const BAD = /^(failed|error|warning|notready|false|unknown|offline|crashloopbackoff|lost|evicted|oomkilled|imagepullbackoff|errimagepull|terminating|cordoned)$/i;

/** A state word with a colour: good, bad or in between. */
export function Badge({ state, title }) {
  const s = String(state ?? '');
  const tone = GOOD.test(s) ? 'good' : BAD.test(s) ? 'bad' : 'warn';
  return html`<span class=${'badge ' + tone} title=${title}>${s || '–'}</span>`;
}

/**
 * A real <table> that renders only the rows in view (plus a margin), so thousands of rows
 * scroll smoothly. Rows have a fixed height. columns: [{ key, label, render(row), class }].
 */
export function VirtualTable({ columns, rows, rowKey, rowHeight = 34, label, maxHeight = '70vh', empty = 'Nothing here.' }) {
  const box = useRef(null);
  const [scroll, setScroll] = useState(0);
  const [view, setView] = useState(800);
  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    setView(el.clientHeight || 800);
    const ro = new ResizeObserver(() => setView(el.clientHeight || 800));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  const raf = useRef(0);
  useEffect(() => () => cancelAnimationFrame(raf.current), []);
  const onScroll = (e) => {
    const el = e.currentTarget;
    if (raf.current) return; // one update per frame, with the latest position
    raf.current = requestAnimationFrame(() => { raf.current = 0; setScroll(el.scrollTop); });
  };
  const overscan = 10;
  const first = Math.max(0, Math.floor(scroll / rowHeight) - overscan);
  const last = Math.min(rows.length, Math.ceil((scroll + view) / rowHeight) + overscan);
  const visible = rows.slice(first, last);
  const key = typeof rowKey === 'function' ? rowKey : (r) => r.metadata?.uid || r[rowKey];
  return html`<div class="vtable" ref=${box} onScroll=${onScroll} style=${{ maxHeight }}
      tabindex="0" role="region" aria-label=${`${label} (scrollable)`}>
    <table aria-label=${label} aria-rowcount=${rows.length + 1}>
      <thead><tr aria-rowindex="1">${columns.map((c) => html`<th scope="col" class=${c.class}>${c.label}</th>`)}</tr></thead>
      <tbody>
        ${first > 0 ? html`<tr class="spacer" aria-hidden="true" style=${{ height: first * rowHeight + 'px' }}><td colspan=${columns.length}></td></tr>` : null}
        ${visible.map((r, i) => html`<tr key=${key(r)} aria-rowindex=${first + i + 2} style=${{ height: rowHeight + 'px' }}>
          ${columns.map((c) => html`<td class=${c.class}>${c.render ? c.render(r) : r[c.key]}</td>`)}
        </tr>`)}
        ${last < rows.length ? html`<tr class="spacer" aria-hidden="true" style=${{ height: (rows.length - last) * rowHeight + 'px' }}><td colspan=${columns.length}></td></tr>` : null}
      </tbody>
    </table>
    ${rows.length === 0 ? html`<p class="muted empty">${empty}</p>` : null}
  </div>`;
}

/**
 * A confirmation in a native modal <dialog>: open it with `open`, answer with onConfirm or
 * onCancel (Escape cancels).
 */
export function Confirm({ open, title, children, confirmLabel = 'OK', danger = true, onConfirm, onCancel }) {
  const ref = useRef(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return html`<dialog ref=${ref} class="confirm" aria-label=${title} onCancel=${(e) => { e.preventDefault(); onCancel && onCancel(); }}>
    <form method="dialog" onSubmit=${(e) => { e.preventDefault(); onConfirm && onConfirm(); }}>
      <h2>${title}</h2>
      <div>${children}</div>
      <div class="actions">
        <button type="button" onClick=${() => onCancel && onCancel()}>Cancel</button>
        <button type="submit" class=${danger ? 'danger' : 'primary'}>${confirmLabel}</button>
      </div>
    </form>
  </dialog>`;
}

/** A small line chart of the last values, labelled with the last one for screen readers. */
const compact = (v) => (v === 0 ? '0' : Math.abs(v) < 10 ? v.toFixed(2) : Math.abs(v) < 100 ? v.toFixed(1) : v.toFixed(0));

export function Sparkline({ points, label, width = 90, height = 22, format = compact }) {
  let vals = (points || []).filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
  if (vals.length === 1) vals = [vals[0], vals[0]];
  if (!vals.length) return html`<span class="muted" aria-label=${label + ': no data'}>–</span>`;
  const max = Math.max(...vals, 1e-9);
  const n = Math.max(vals.length - 1, 1);
  const d = vals.map((v, i) => `${i ? 'L' : 'M'}${((i / n) * (width - 2) + 1).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`).join('');
  const lastV = vals[vals.length - 1];
  return html`<span class="spark"><svg role="img" aria-label=${`${label}: ${format(lastV)}`} width=${width} height=${height} viewBox=${`0 0 ${width} ${height}`}>
      <path d=${d} fill="none" stroke="currentColor" stroke-width="1.5" />
    </svg><span class="spark-value" aria-hidden="true">${format(lastV)}</span></span>`;
}

/** A Kubernetes Quantity ("1500m", "2", "512Mi") as a number. */
export function quantity(q) {
  if (q === undefined || q === null) return NaN;
  const m = /^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$/.exec(String(q).trim());
  if (!m) return NaN;
  const units = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
    Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, Pi: 1024 ** 5, Ei: 1024 ** 6 };
  return parseFloat(m[1]) * (units[m[2]] ?? NaN);
}

/** Bytes in binary units, compact. */
export function bytes(n) {
  if (!Number.isFinite(n)) return '–';
  const u = ['B', 'Ki', 'Mi', 'Gi', 'Ti'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i += 1; }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${u[i]}`;
}

/** A titled section with an h2 (the tests find sections by these headings). */
export function Section({ title, children, actions, id, wide }) {
  return html`<section class=${wide ? 'card wide' : 'card'} aria-labelledby=${id}>
    <div class="card-head"><h2 id=${id}>${title}</h2>${actions}</div>
    ${children}
  </section>`;
}

/** How many pods that have not finished each node runs, from a list of pods. */
export function activePodsPerNode(pods) {
  const m = new Map();
  for (const p of pods) {
    const n = p.spec?.nodeName;
    if (n && p.status?.phase !== 'Succeeded' && p.status?.phase !== 'Failed') m.set(n, (m.get(n) || 0) + 1);
  }
  return m;
}
