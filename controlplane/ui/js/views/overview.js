// Overview: nodes (ready, edge online/offline and since when, pods, CPU and memory), apps,
// recent Warning events and the API's health. Lists are live (watched); node usage and
// health are not watchable and are re-read every 15 s.
import { html, useState, useEffect, useMemo } from '../../vendor/preact-htm.js';
import { useList, get, request } from '../api.js';
import { ErrorBox, Age, Badge, Section, VirtualTable, quantity, bytes, activePodsPerNode } from '../components.js';

const EDGE_LABEL = 'skiff.dev/autonomous';

export function readyCondition(node) {
  return (node.status?.conditions || []).find((c) => c.type === 'Ready') || null;
}

function nodeState(node) {
  const c = readyCondition(node);
  const s = !c ? 'Unknown' : c.status === 'True' ? 'Ready' : c.status === 'False' ? 'NotReady' : 'Unknown';
  return node.spec?.unschedulable ? [s, 'Cordoned'] : [s];
}

/** Polls a non-watchable read (metrics, health) every `ms` while mounted. */
export function usePoll(fn, ms, deps = []) {
  const [state, setState] = useState({ value: null, error: null });
  useEffect(() => {
    let live = true;
    const tick = () => fn().then((value) => live && setState({ value, error: null }),
      (error) => live && setState((s) => ({ value: s.value, error })));
    tick();
    const t = setInterval(tick, ms);
    return () => { live = false; clearInterval(t); };
  }, deps);
  return state;
}

function Nodes({ nodes, pods, usage, leases }) {
  const renew = useMemo(() => new Map((leases.value?.items || []).map((l) => [l.metadata.name, l.spec?.renewTime])), [leases.value]);
  const podCount = useMemo(() => activePodsPerNode(pods.items), [pods.items]);
  const use = useMemo(() => new Map((usage.value?.items || []).map((m) => [m.metadata.name, m.usage])), [usage.value]);
  const columns = [
    { label: 'Name', render: (n) => html`<a href=${'/ui/nodes/' + encodeURIComponent(n.metadata.name)}>${n.metadata.name}</a>
      ${n.metadata.labels?.[EDGE_LABEL] ? html` <span class="badge warn" title="An autonomous edge node">edge</span>` : null}` },
    { label: 'Status', render: (n) => nodeState(n).map((s) => html`<${Badge} state=${s} /> `) },
    { label: 'Online', render: (n) => {
      const c = readyCondition(n);
      const on = c?.status === 'True';
      return html`<span>${on ? 'online' : 'offline'} since <${Age} time=${c?.lastTransitionTime} /></span>`;
    } },
    { label: 'Heartbeat', render: (n) => {
      if (!leases.value) return html`<span class="muted">…</span>`;
      const t = renew.get(n.metadata.name) || readyCondition(n)?.lastHeartbeatTime;
      return t ? html`<${Age} time=${t} /> ago` : '–';
    } },
    { label: 'Pods', class: 'num', render: (n) => `${pods.loading || pods.partial ? '…' : podCount.get(n.metadata.name) || 0} / ${n.status?.allocatable?.pods ?? '–'}` },
    { label: 'CPU', class: 'num', render: (n) => {
      const u = use.get(n.metadata.name);
      const cap = quantity(n.status?.allocatable?.cpu);
      if (!u) return '–';
      const c = quantity(u.cpu);
      return html`<span title=${`${(c * 1000).toFixed(0)}m of ${cap} cores`}>${(c * 1000).toFixed(0)}m${cap ? ` (${((c / cap) * 100).toFixed(1)}%)` : ''}</span>`;
    } },
    { label: 'Memory', class: 'num', render: (n) => {
      const u = use.get(n.metadata.name);
      return u ? bytes(quantity(u.memory)) : '–';
    } },
  ];
  return html`<${Section} title="Nodes" id="h-nodes" wide=${true}>
    <${ErrorBox} error=${nodes.error} />
    <${ErrorBox} error=${usage.error} title="Node usage" />
    ${nodes.loading ? html`<p class="muted">Loading…</p>` : html`<${VirtualTable} label="Nodes" columns=${columns}
      rows=${nodes.items} rowKey=${(n) => n.metadata.uid} maxHeight="360px" empty="No nodes." />`}
  </${Section}>`;
}

function appReady(a) {
  const c = (a.status?.conditions || []).find((x) => x.type === 'Ready');
  return c ? (c.status === 'True' ? 'Ready' : c.reason || 'NotReady') : 'Pending';
}

function Apps({ apps }) {
  const columns = [
    { label: 'Name', render: (a) => html`<a href=${'/ui/apps?ns=' + encodeURIComponent(a.metadata.namespace)}>${a.metadata.name}</a>` },
    { label: 'Namespace', render: (a) => a.metadata.namespace },
    { label: 'Status', render: (a) => html`<${Badge} state=${appReady(a)} />` },
    { label: 'Ready', class: 'num', render: (a) => `${a.status?.readyReplicas ?? 0}/${a.spec?.replicas ?? 0}` },
    { label: 'URL', render: (a) => (a.status?.url ? html`<a href=${a.status.url} target="_blank" rel="noopener">${a.status.url}</a>` : '–') },
  ];
  return html`<${Section} title="Apps" id="h-apps">
    <${ErrorBox} error=${apps.error} />
    ${apps.loading ? html`<p class="muted">Loading…</p>` : html`<${VirtualTable} label="Apps" columns=${columns}
      rows=${apps.items} rowKey=${(a) => a.metadata.uid} maxHeight="360px" empty="No apps yet: drop a .wasm on the Apps page." />`}
  </${Section}>`;
}

export function eventTime(e) {
  return e.lastTimestamp || e.eventTime || e.series?.lastObservedTime || e.firstTimestamp || e.metadata?.creationTimestamp;
}

export function involvedLink(o) {
  if (!o) return '–';
  const text = `${o.kind}/${o.name}`;
  if (o.kind === 'Pod' && o.namespace) return html`<a href=${`/ui/pods/${encodeURIComponent(o.namespace)}/${encodeURIComponent(o.name)}`}>${text}</a>`;
  if (o.kind === 'Node') return html`<a href=${'/ui/nodes/' + encodeURIComponent(o.name)}>${text}</a>`;
  if (o.kind === 'App' && o.namespace) return html`<a href=${'/ui/apps?ns=' + encodeURIComponent(o.namespace)}>${text}</a>`;
  return text;
}

function Warnings({ events }) {
  // The same warning about the same object, repeated as separate Events, is one row with
  // the total count and the latest time.
  const recent = useMemo(() => {
    const groups = new Map();
    for (const e of events.items) {
      const o = e.involvedObject || {};
      const k = [o.kind, o.namespace, o.name, e.reason, e.message].join('\u0000');
      const g = groups.get(k);
      const n = e.count || e.series?.count || 1;
      if (!g) groups.set(k, { ...e, count: n });
      else {
        g.count += n;
        if (String(eventTime(e)) > String(eventTime(g))) { g.lastTimestamp = eventTime(e); g.metadata = e.metadata; }
      }
    }
    return [...groups.values()].sort((a, b) => String(eventTime(b)).localeCompare(String(eventTime(a)))).slice(0, 10);
  }, [events.items]);
  return html`<${Section} title="Warnings" id="h-warnings" wide=${true} actions=${html`<a href="/ui/events?type=Warning">Show all warnings</a>`}>
    <${ErrorBox} error=${events.error} />
    ${recent.length === 0 ? html`<p class="muted">${events.loading ? 'Loading…' : 'No warnings. All quiet.'}</p>` : html`
    <table class="fixed" aria-label="Recent warnings"><colgroup><col style="width:64px" /><col style="width:28%" /><col style="width:150px" /><col /></colgroup>
      <thead><tr><th scope="col">Age</th><th scope="col">Object</th><th scope="col">Reason</th><th scope="col">Message</th></tr></thead>
      <tbody>${recent.map((e) => html`<tr key=${e.metadata.uid}>
        <td><${Age} time=${eventTime(e)} /></td><td>${involvedLink(e.involvedObject)}</td>
        <td><${Badge} state=${e.reason} /></td><td class="wrap"><span class="clamp" title=${e.message}>${e.count > 1 ? html`<span class="muted">×${e.count} </span>` : null}${e.message}</span></td>
      </tr>`)}</tbody></table>`}
  </${Section}>`;
}

async function health() {
  const read = async (path) => {
    try {
      const res = await request('GET', path, { raw: true });
      return { ok: true, text: (await res.text()).trim() };
    } catch (e) {
      return { ok: false, text: e.message };
    }
  };
  const [readyz, livez, version] = await Promise.all([read('/readyz?verbose'), read('/livez'), get('/version').catch(() => null)]);
  return { readyz, livez, version };
}

function Health({ h }) {
  const v = h.value;
  const checks = v ? v.readyz.text.split('\n').filter((l) => l.startsWith('[')) : [];
  return html`<${Section} title="API" id="h-api">
    <${ErrorBox} error=${h.error} />
    ${!v ? html`<p class="muted">Checking…</p>` : html`
      <div>
        <span class="stat"><span class="muted">Ready</span><${Badge} state=${v.readyz.ok ? 'ok' : 'failed'} title=${v.readyz.text} /></span>
        <span class="stat"><span class="muted">Live</span><${Badge} state=${v.livez.ok ? 'ok' : 'failed'} title=${v.livez.text} /></span>
        ${v.version ? html`<span class="stat"><span class="muted">Version</span><code>${v.version.gitVersion}</code></span>` : null}
      </div>
      ${checks.length ? html`<ul class="checks">${checks.map((c) => html`<li><code>${c}</code></li>`)}</ul>` : null}
      ${!v.readyz.ok ? html`<pre>${v.readyz.text}</pre>` : null}`}
  </${Section}>`;
}

export default function Overview() {
  // The small reads start together (no waterfall). All pods, only for the per-node counts,
  // can be megabytes that keep the server busy for seconds: they are asked for once the
  // rest of the first view is in.
  const nodes = useList('/api/v1/nodes');
  const apps = useList('/apis/skiff.dev/v1/apps');
  const events = useList('/api/v1/events', { fieldSelector: 'type=Warning' });
  const firstViewIn = !nodes.loading && !apps.loading && !events.loading;
  const allPods = useList(firstViewIn ? '/api/v1/pods' : null);
  const pods = firstViewIn ? allPods : { items: [], loading: true, error: null };
  // Heartbeats (Lease renewals, every few seconds) are read with the node usage rather
  // than watched: the API speaks HTTP/1.1 and a browser opens only six connections per
  // host, so each view keeps its watches to four.
  const leases = usePoll(() => get('/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases'), 15000);
  const usage = usePoll(() => get('/apis/metrics.k8s.io/v1beta1/nodes'), 15000);
  const h = usePoll(health, 15000);
  return html`<h1 class="visually-hidden">Overview</h1>
    <div class="grid">
      <${Nodes} nodes=${nodes} pods=${pods} usage=${usage} leases=${leases} />
      <${Apps} apps=${apps} />
      <${Health} h=${h} />
      <${Warnings} events=${events} />
    </div>`;
}
