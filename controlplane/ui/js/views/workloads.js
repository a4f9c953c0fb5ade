// Workloads: any listable kind the server serves (read from discovery, so new kinds appear
// without dashboard changes), live, with namespace, label-selector and name filters. Pods
// and nodes link to their pages; any other object opens its YAML, read-only, in a panel.
import { html, useState, useEffect, useMemo } from '../../vendor/preact-htm.js';
import { useList, useObject, discovery, discoveryCached, resourcePath } from '../api.js';
import { setQuery } from '../router.js';
import { ErrorBox, Age, Badge, VirtualTable } from '../components.js';

const DEFAULT_KIND = 'apps/v1/deployments';
const kindId = (r) => [r.group, r.version, r.resource].filter(Boolean).join('/');
// Kinds that come first in the list: what people look for on a workloads page.
const FIRST = ['apps/v1/deployments', 'apps/v1/replicasets', 'apps/v1/daemonsets', 'apps/v1/statefulsets',
  'batch/v1/jobs', 'batch/v1/cronjobs', 'v1/pods', 'skiff.dev/v1/apps'];

/** A short "is it fine" text for any object, from the fields most kinds share. */
export function readiness(o) {
  const s = o.status || {};
  const spec = o.spec || {};
  if (o.kind === 'Pod' || (s.phase && Array.isArray(s.containerStatuses))) {
    const cs = s.containerStatuses || [];
    const waiting = cs.map((c) => c.state?.waiting?.reason || c.state?.terminated?.reason).find(Boolean);
    const state = o.metadata.deletionTimestamp ? 'Terminating' : waiting || s.phase || 'Pending';
    return { text: `${cs.filter((c) => c.ready).length}/${cs.length || spec.containers?.length || 0}`, state };
  }
  if (s.desiredNumberScheduled !== undefined) {
    const ok = (s.numberReady ?? 0) === s.desiredNumberScheduled;
    return { text: `${s.numberReady ?? 0}/${s.desiredNumberScheduled}`, state: ok ? 'Ready' : 'Progressing' };
  }
  if (typeof spec.replicas === 'number' && o.kind !== 'Job') {
    const ready = s.readyReplicas ?? 0;
    return { text: `${ready}/${spec.replicas}`, state: ready === spec.replicas ? 'Ready' : 'Progressing' };
  }
  if (o.kind === 'Job' || spec.completions !== undefined) {
    const done = (s.conditions || []).find((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');
    return { text: `${s.succeeded ?? 0}/${spec.completions ?? 1}`, state: done ? done.type : s.active ? 'Running' : 'Pending' };
  }
  const cond = (s.conditions || []).find((c) => ['Ready', 'Available', 'Established', 'Accepted', 'Programmed'].includes(c.type));
  if (cond) return { text: '', state: cond.status === 'True' ? cond.type : cond.reason || `Not${cond.type}` };
  if (s.phase) return { text: '', state: s.phase };
  return null;
}

function parseKind(id, resources) {
  return resources.find((r) => kindId(r) === id) || null;
}

/** Workloads' link to the pods an object selects (spec.selector.matchLabels), if any. */
function podsLink(o) {
  const m = o?.spec?.selector?.matchLabels || (o?.kind === 'Service' ? o.spec?.selector : null);
  if (!m || !Object.keys(m).length || !o.metadata.namespace) return null;
  const labels = Object.entries(m).map(([k, v]) => `${k}=${v}`).join(',');
  return `/ui/workloads?${new URLSearchParams({ kind: 'v1/pods', ns: o.metadata.namespace, labels })}`;
}

function YamlPanel({ res, ns, name, onClose }) {
  const path = `${resourcePath(res, ns)}/${encodeURIComponent(name)}`;
  const { object, error } = useObject(path);
  // js-yaml (100 KB) loads only when a panel first opens, not with the first view.
  const [yaml, setYaml] = useState(null);
  useEffect(() => { import('../../vendor/js-yaml.mjs').then(setYaml); }, []);
  const text = useMemo(() => {
    if (!object || !yaml) return '';
    const o = { ...object, metadata: { ...object.metadata } };
    delete o.metadata.managedFields;
    return yaml.dump(o, { noRefs: true, lineWidth: 120 });
  }, [object, yaml]);
  useEffect(() => {
    const onKey = (e) => { if (e.key === 'Escape') onClose(); };
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, []);
  return html`<aside class="side" aria-label=${`${res.kind} ${name}`}>
    <div class="card-head"><h2>${res.kind} ${ns ? html`<span class="muted">${ns}/</span>` : null}${name}</h2>
      <button type="button" onClick=${onClose} autofocus>Close</button></div>
    <${ErrorBox} error=${error} />
    ${podsLink(object) ? html`<p><a href=${podsLink(object)}>Its pods</a></p>` : null}
    ${object && text ? html`<pre role="region" aria-label=${`YAML of ${name}`} tabindex="0">${text}</pre>` : error ? null : html`<p class="muted">Loading…</p>`}
  </aside>`;
}

function useDebounced(value, ms) {
  const [v, setV] = useState(value);
  useEffect(() => { const t = setTimeout(() => setV(value), ms); return () => clearTimeout(t); }, [value]);
  return v;
}

export default function Workloads({ query }) {
  // Draw from the tab's last discovery at once, then from a fresh one (new kinds appear).
  const [resources, setResources] = useState(() => discoveryCached() || []);
  const [discError, setDiscError] = useState(null);
  useEffect(() => { discovery(true).then(setResources, setDiscError); }, []);
  const kind = query.get('kind') || DEFAULT_KIND;
  const ns = query.get('ns') || '';
  const q = query.get('q') || '';
  const open = query.get('open') || '';
  // The selector in use is the address's (links and history set it at once); typing in
  // the field puts it there after a pause.
  const labelSelector = (query.get('labels') || '').trim();
  const [labels, setLabels] = useState(labelSelector);
  const typed = useDebounced(labels.trim(), 400);
  useEffect(() => { if (typed !== labelSelector) setQuery({ labels: typed }); }, [typed]);
  useEffect(() => { if (labelSelector !== labels.trim()) setLabels(labelSelector); }, [labelSelector]);

  const listable = useMemo(() => {
    const l = resources.filter((r) => r.verbs.includes('list') && r.verbs.includes('watch'));
    // One entry per group/resource: discovery gives each group's preferred version.
    return l.sort((a, b) => {
      const fa = FIRST.indexOf(kindId(a)), fb = FIRST.indexOf(kindId(b));
      if (fa !== fb) return (fa < 0 ? 99 : fa) - (fb < 0 ? 99 : fb);
      return a.kind.localeCompare(b.kind) || a.group.localeCompare(b.group);
    });
  }, [resources]);
  const res = parseKind(kind, listable);
  const namespaces = useList('/api/v1/namespaces');
  const path = res ? resourcePath(res, ns) : null;
  const list = useList(path, { labelSelector: labelSelector || undefined });
  const rows = useMemo(() => {
    const needle = q.trim().toLowerCase();
    return needle ? list.items.filter((o) => `${o.metadata.namespace || ''}/${o.metadata.name}`.toLowerCase().includes(needle)) : list.items;
  }, [list.items, q]);

  const link = (o) => {
    const n = o.metadata.name;
    const nsOf = o.metadata.namespace;
    if (res.group === '' && res.resource === 'pods') return `/ui/pods/${encodeURIComponent(nsOf)}/${encodeURIComponent(n)}`;
    if (res.group === '' && res.resource === 'nodes') return `/ui/nodes/${encodeURIComponent(n)}`;
    const p = new URLSearchParams(location.search);
    p.set('open', nsOf ? `${nsOf}/${n}` : n);
    return `/ui/workloads?${p}`;
  };
  const columns = res ? [
    { label: 'Name', render: (o) => html`<a href=${link(o)}>${o.metadata.name}</a>` },
    ...(res.namespaced ? [{ label: 'Namespace', render: (o) => o.metadata.namespace }] : []),
    { label: 'Status', render: (o) => {
      const r = readiness(o);
      return r ? html`${r.state ? html`<${Badge} state=${r.state} />` : null} ${r.text}` : html`<span class="muted">–</span>`;
    } },
    { label: 'Labels', class: 'muted', render: (o) => {
      const l = Object.entries(o.metadata.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');
      return html`<span title=${l}>${l}</span>`;
    } },
    { label: 'Age', render: (o) => html`<${Age} time=${o.metadata.creationTimestamp} />` },
  ] : [];
  const [openNs, openName] = open.includes('/') ? open.split('/', 2) : ['', open];

  return html`<h1>Workloads</h1>
    <${ErrorBox} error=${discError} title="Discovery" />
    <div class="toolbar" role="search">
      <label>Kind<select value=${kind} onChange=${(e) => setQuery({ kind: e.currentTarget.value, open: '' })}>
        ${!res && listable.length ? html`<option value=${kind}>${kind} (not served)</option>` : null}
        ${listable.map((r) => html`<option value=${kindId(r)}>${r.kind}${r.group ? ` (${r.group})` : ''}</option>`)}
      </select></label>
      <label>Namespace<select value=${ns} disabled=${res && !res.namespaced} onChange=${(e) => setQuery({ ns: e.currentTarget.value, open: '' })}>
        <option value="">All namespaces</option>
        ${namespaces.items.map((n) => html`<option value=${n.metadata.name}>${n.metadata.name}</option>`)}
        ${ns && !namespaces.items.some((n) => n.metadata.name === ns) ? html`<option value=${ns}>${ns}</option>` : null}
      </select></label>
      <label>Search<input value=${q} placeholder="name" onInput=${(e) => setQuery({ q: e.currentTarget.value })} /></label>
      <label>Label selector<input value=${labels} placeholder="app=web,tier!=db" spellcheck="false"
        onInput=${(e) => setLabels(e.currentTarget.value)} /></label>
      <span class="muted" aria-live="polite">${res && !list.loading ? `${rows.length} of ${list.items.length}${list.partial ? ', loading more…' : ''}` : ''}</span>
    </div>
    <${ErrorBox} error=${list.error} />
    ${!res ? (listable.length ? html`<p>The server does not serve <code>${kind}</code>.</p>` : html`<p class="muted">Loading kinds…</p>`)
      : list.loading ? html`<p class="muted">Loading…</p>`
      : html`<${VirtualTable} key=${kind} label=${res.kind + ' list'} columns=${columns} rows=${rows}
        rowKey=${(o) => o.metadata.uid || o.metadata.name} empty=${`No ${res.resource} here.`} />`}
    ${res && openName ? html`<${YamlPanel} key=${open} res=${res} ns=${res.namespaced ? openNs : ''} name=${openName}
      onClose=${() => setQuery({ open: '' })} />` : null}`;
}
