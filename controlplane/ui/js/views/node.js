// A node (/ui/nodes/NAME): conditions, taints, labels of note, its pods (live), its
// tunnel and heartbeat, CPU and memory; cordon, uncordon and drain for those allowed.
import { html, useState, useEffect, useRef, useMemo } from '../../vendor/preact-htm.js';
import { useObject, useList, useCan, request, patch, post, get } from '../api.js';
import { ErrorBox, Age, Badge, VirtualTable, Section, Confirm, quantity, bytes } from '../components.js';
import YamlEditor from '../yaml-editor.js';
import { LEASES, readiness, heartbeat, isEdge, roles, useNodeUsage, useTick, cores, percent } from './nodes.js';

/** How often the tunnel is probed (it has no object to watch). */
const PROBE_EVERY_MS = 10000;
/** How long a drain waits before asking again for a pod a disruption budget protects. */
const RETRY_REFUSED_MS = 5000;
/** Evictions in flight at once. */
const PARALLEL = 8;
/** Refused or failed evictions listed by name; the rest are counted. */
const SHOW_PROBLEMS = 50;

const nodePath = (name) => `/api/v1/nodes/${encodeURIComponent(name)}`;
const FACTS = 'display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0 0 16px';
const DT = 'font-size: 12px';

function Fact({ term, children }) {
  return html`<div><dt class="muted" style=${DT}>${term}</dt><dd style="margin: 0">${children}</dd></div>`;
}

/**
 * The reverse tunnel, probed through nodes/NAME/proxy/healthz, which the API server
 * sends only through the agent's tunnel: an answer means the tunnel is open to the
 * server that answered; "no tunnel open" means it is not.
 */
function useTunnelProbe(name, allowed) {
  const [probe, setProbe] = useState(null);
  useEffect(() => {
    if (!allowed) { setProbe(null); return undefined; }
    let live = true;
    let timer = 0;
    const run = async () => {
      const t0 = performance.now();
      try {
        await request('GET', `${nodePath(name)}/proxy/healthz`, { raw: true });
        if (live) setProbe({ open: true, ms: Math.round(performance.now() - t0), at: new Date().toISOString() });
      } catch (error) {
        if (live) setProbe({ open: false, error, at: new Date().toISOString() });
      }
      if (live) timer = setTimeout(run, PROBE_EVERY_MS);
    };
    run();
    return () => { live = false; clearTimeout(timer); };
  }, [name, allowed]);
  return probe;
}

function Tunnel({ node, lease, now, mayProxy }) {
  const probe = useTunnelProbe(node.metadata.name, mayProxy);
  const hb = heartbeat(node, lease, now);
  const ready = readiness(node).cond;
  const ip = (node.status?.addresses || []).find((a) => a.type === 'InternalIP')?.address;
  const port = node.status?.daemonEndpoints?.kubeletEndpoint?.Port;
  let state;
  if (mayProxy === false) state = html`<span class="muted">not shown: this identity may not use nodes/proxy</span>`;
  else if (!probe) state = html`<span class="muted" aria-busy="true">checking…</span>`;
  else if (probe.open) state = html`<span class="badge good">Connected</span> <span class="muted">round trip ${probe.ms} ms, checked <${Age} time=${probe.at} /> ago</span>`;
  else state = html`<span class="badge bad">Disconnected</span> <span class="muted">${probe.error.message}</span>`;
  return html`<dl style=${FACTS}>
    <${Fact} term="Tunnel">${state}<//>
    <${Fact} term="Heartbeat"><${Badge} state=${hb.word} />${hb.renew
      ? html` <span>last <${Age} time=${hb.renew} /> ago</span>` : html` <span class="muted">no lease</span>`}
      ${hb.word === 'Offline' && hb.since ? html` <span class="muted">(offline since <${Age} time=${hb.since} /> ago)</span>` : null}<//>
    <${Fact} term="Lease">${lease ? `${lease.spec?.leaseDurationSeconds ?? '?'} s, held by ${lease.spec?.holderIdentity || '–'}` : '–'}<//>
    <${Fact} term="Status last posted">${ready?.lastHeartbeatTime ? html`<${Age} time=${ready.lastHeartbeatTime} /> ago` : '–'}<//>
    <${Fact} term="Agent address">${ip ? `${ip}${port ? ':' + port : ''}` : '–'}<//>
  </dl>`;
}

function Conditions({ node }) {
  const conds = node.status?.conditions || [];
  if (!conds.length) return html`<p class="muted">No conditions reported.</p>`;
  return html`<table>
    <thead><tr><th scope="col">Type</th><th scope="col">Status</th><th scope="col">Reason</th>
      <th scope="col">Message</th><th scope="col">Changed</th><th scope="col">Heartbeat</th></tr></thead>
    <tbody>${conds.map((c) => html`<tr key=${c.type}>
      <td>${c.type}</td><td><${Badge} state=${c.status} /></td><td>${c.reason || ''}</td><td class="wrap" style="overflow-wrap: anywhere">${c.message || ''}</td>
      <td><${Age} time=${c.lastTransitionTime} /></td><td><${Age} time=${c.lastHeartbeatTime} /></td>
    </tr>`)}</tbody>
  </table>`;
}

function Taints({ node }) {
  const taints = node.spec?.taints || [];
  if (!taints.length) return html`<p class="muted">No taints.</p>`;
  return html`<table>
    <thead><tr><th scope="col">Key</th><th scope="col">Value</th><th scope="col">Effect</th><th scope="col">Added</th></tr></thead>
    <tbody>${taints.map((t) => html`<tr key=${t.key + t.effect}>
      <td><code>${t.key}</code></td><td>${t.value || ''}</td><td>${t.effect}</td><td><${Age} time=${t.timeAdded} /></td>
    </tr>`)}</tbody>
  </table>`;
}

function Labels({ node }) {
  const labels = node.metadata?.labels || {};
  const keys = Object.keys(labels).sort();
  return html`<details>
    <summary>All labels (${keys.length})</summary>
    <ul style="margin: 6px 0 0; padding-left: 18px">${keys.map((k) => html`<li><code>${k}${labels[k] ? '=' + labels[k] : ''}</code></li>`)}</ul>
  </details>`;
}

const isDaemonSetPod = (p) => (p.metadata?.ownerReferences || []).some((r) => r.kind === 'DaemonSet' && r.controller);
const isMirrorPod = (p) => !!p.metadata?.annotations?.['kubernetes.io/config.mirror'];

/**
 * Drain as kubectl does: cordon, then evict every pod on the node except DaemonSets'
 * (their controller would put them back) and mirror pods, through policy/v1 Evictions
 * so disruption budgets are honoured. A refusal (429, a budget) is asked again every
 * few seconds until the budget allows it or the user stops.
 */
function useDrain(name) {
  const [drain, setDrain] = useState(null); // { running, total, states: {key: {state, message}} , error }
  const stop = useRef(null);
  const start = async () => {
    const ctl = { stopped: false };
    stop.current = ctl;
    const states = {};
    // Thousands of evictions: draw their states at most once a frame.
    let frame = 0;
    const update = () => {
      if (frame) return;
      frame = requestAnimationFrame(() => { frame = 0; setDrain((d) => ({ ...d, states: { ...states } })); });
    };
    setDrain({ running: true, total: 0, states: {}, error: null, phase: 'Cordoning' });
    try {
      await patch(nodePath(name), { spec: { unschedulable: true } });
      const list = await get('/api/v1/pods', { query: { fieldSelector: `spec.nodeName=${name}` } });
      const targets = (list.items || []).filter((p) => !isDaemonSetPod(p) && !isMirrorPod(p));
      for (const p of targets) states[`${p.metadata.namespace}/${p.metadata.name}`] = { state: 'pending' };
      const skipped = (list.items || []).length - targets.length;
      setDrain((d) => ({ ...d, total: targets.length, skipped, states: { ...states }, phase: 'Evicting' }));
      const queue = [...targets];
      const evictOne = async (p) => {
        const key = `${p.metadata.namespace}/${p.metadata.name}`;
        for (;;) {
          if (ctl.stopped) { states[key] = { state: 'stopped' }; update(); return; }
          try {
            await post(`/api/v1/namespaces/${encodeURIComponent(p.metadata.namespace)}/pods/${encodeURIComponent(p.metadata.name)}/eviction`, {
              apiVersion: 'policy/v1', kind: 'Eviction',
              metadata: { name: p.metadata.name, namespace: p.metadata.namespace },
            });
            states[key] = { state: 'evicted' };
            update();
            return;
          } catch (e) {
            if (e.status === 404) { states[key] = { state: 'evicted', message: 'already gone' }; update(); return; }
            if (e.status === 429) {
              states[key] = { state: 'refused', message: e.message };
              update();
              await new Promise((r) => setTimeout(r, RETRY_REFUSED_MS));
              continue;
            }
            states[key] = { state: 'failed', message: e.message, error: e };
            update();
            return;
          }
        }
      };
      const worker = async () => { while (queue.length) await evictOne(queue.shift()); };
      await Promise.all(Array.from({ length: Math.min(PARALLEL, queue.length) }, worker));
      cancelAnimationFrame(frame);
      setDrain((d) => ({ ...d, states: { ...states }, running: false, phase: ctl.stopped ? 'Stopped' : 'Evicted' }));
    } catch (error) {
      setDrain((d) => ({ ...d, running: false, error, phase: 'Failed' }));
    }
  };
  const halt = () => { if (stop.current) stop.current.stopped = true; };
  useEffect(() => halt, [name]);
  return { drain, start, halt };
}

/** What a drain would do to the pods on the node now, for the confirmation. */
function DrainPlan({ name, pods }) {
  const evict = pods.filter((p) => !isDaemonSetPod(p) && !isMirrorPod(p));
  const stay = pods.length - evict.length;
  const bare = evict.filter((p) => !(p.metadata.ownerReferences || []).some((r) => r.controller)).length;
  const local = evict.filter((p) => (p.spec?.volumes || []).some((v) => v.emptyDir)).length;
  return html`<p>Mark ${name} unschedulable, then evict ${evict.length} pod${evict.length === 1 ? '' : 's'} through the
    Eviction API (disruption budgets are honoured; refused pods are asked again until you stop).</p>
    ${(stay > 0 || bare > 0 || local > 0) && html`<ul>
      ${stay > 0 && html`<li>${stay} DaemonSet or mirror pod${stay === 1 ? '' : 's'} stay.</li>`}
      ${bare > 0 && html`<li><strong>${bare} pod${bare === 1 ? ' has' : 's have'} no controller</strong> and will not be recreated elsewhere.</li>`}
      ${local > 0 && html`<li>${local} pod${local === 1 ? ' loses' : 's lose'} emptyDir data.</li>`}
    </ul>`}`;
}

function DrainProgress({ drain, podsLeft }) {
  const entries = Object.entries(drain.states);
  const evicted = entries.filter(([, s]) => s.state === 'evicted').length;
  const problems = entries.filter(([, s]) => s.state === 'refused' || s.state === 'failed');
  const gone = entries.filter(([k, s]) => s.state === 'evicted' && !podsLeft.has(k)).length;
  let summary;
  if (drain.phase === 'Cordoning') summary = 'Cordoning…';
  else if (drain.total === 0 && !drain.running && !drain.error) summary = 'Drained: no pods to evict.';
  else if (drain.running) summary = `Evicting: ${evicted} of ${drain.total} evicted${problems.length ? `, ${problems.length} refused or failed` : ''}.`;
  else if (drain.phase === 'Stopped') summary = `Stopped: ${evicted} of ${drain.total} evicted.`;
  else if (evicted === drain.total && gone === drain.total) summary = `Drained: all ${drain.total} pods evicted and gone.`;
  else if (evicted === drain.total) summary = `All ${drain.total} pods evicted; ${drain.total - gone} still terminating.`;
  else summary = `Done: ${evicted} of ${drain.total} evicted, ${drain.total - evicted} not.`;
  return html`<div class="drain">
    ${drain.error && html`<${ErrorBox} error=${drain.error} title="Drain" />`}
    ${drain.total > 0 && html`<progress aria-label="Drain" max=${drain.total} value=${evicted}></progress>`}
    <p role="status">${summary}${drain.skipped ? ` ${drain.skipped} DaemonSet or mirror pod${drain.skipped > 1 ? 's' : ''} left in place.` : ''}</p>
    ${problems.length > 0 && html`<ul aria-label="Drain refusals">${problems.slice(0, SHOW_PROBLEMS).map(([k, s]) => html`<li key=${k}>
      <a href=${`/ui/pods/${k}`}>${k}</a>: ${s.state === 'refused' ? 'refused (retrying)' : 'failed'}: ${s.message}</li>`)}
      ${problems.length > SHOW_PROBLEMS && html`<li class="muted">and ${problems.length - SHOW_PROBLEMS} more</li>`}</ul>`}
  </div>`;
}

function PodsTable({ name, pods: { items, error, loading } }) {
  const columns = [
    {
      label: 'Name',
      render: (p) => html`<a href=${`/ui/pods/${encodeURIComponent(p.metadata.namespace)}/${encodeURIComponent(p.metadata.name)}`}>${p.metadata.name}</a>`,
    },
    { label: 'Namespace', render: (p) => p.metadata.namespace },
    { label: 'Phase', render: (p) => html`<${Badge} state=${p.metadata.deletionTimestamp ? 'Terminating' : p.status?.phase || 'Pending'} />` },
    {
      label: 'Ready',
      class: 'num',
      render: (p) => `${(p.status?.containerStatuses || []).filter((c) => c.ready).length}/${(p.spec?.containers || []).length}`,
    },
    { label: 'Restarts', class: 'num', render: (p) => (p.status?.containerStatuses || []).reduce((n, c) => n + (c.restartCount || 0), 0) },
    { label: 'Owner', render: (p) => { const o = (p.metadata.ownerReferences || [])[0]; return o ? `${o.kind}/${o.name}` : ''; } },
    { label: 'Age', render: (p) => html`<${Age} time=${p.metadata.creationTimestamp} />` },
  ];
  return html`${error && html`<${ErrorBox} error=${error} />`}
    ${loading ? html`<p class="muted" aria-busy="true">Loading…</p>` : html`<${VirtualTable} label=${`Pods on ${name}`}
      columns=${columns} rows=${items} empty="No pods on this node." />`}`;
}

/** One node's page; another node is a fresh page (no drain or error carried over). */
export default function NodePage({ params }) {
  return html`<${Node} key=${params.name} params=${params} />`;
}

function Node({ params }) {
  const { name } = params;
  const { object: node, error, loading } = useObject(nodePath(name));
  const { object: lease } = useObject(`${LEASES}/${encodeURIComponent(name)}`);
  const usage = useNodeUsage(name);
  const now = useTick();
  const mayPatch = useCan('patch', 'nodes', { name });
  const mayEvict = useCan('create', 'pods', { subresource: 'eviction' });
  const mayProxy = useCan('get', 'nodes', { name, subresource: 'proxy' });
  const pods = useList('/api/v1/pods', { fieldSelector: `spec.nodeName=${name}` });
  const { drain, start, halt } = useDrain(name);
  const [actionError, setActionError] = useState(null);
  const [confirmDrain, setConfirmDrain] = useState(false);
  const [busy, setBusy] = useState(false);
  const podsLeft = useMemo(() => new Set(pods.items.map((p) => `${p.metadata.namespace}/${p.metadata.name}`)), [pods.items]);

  if (!node) {
    return html`<h1>${name}</h1>
      ${error ? html`<${ErrorBox} error=${error} />` : loading ? html`<p class="muted" aria-busy="true">Loading…</p>` : null}`;
  }
  const cordoned = !!node.spec?.unschedulable;
  const setCordon = async (on) => {
    setBusy(true);
    setActionError(null);
    try { await patch(nodePath(name), { spec: { unschedulable: on ? true : null } }); } catch (e) { setActionError(e); }
    setBusy(false);
  };
  const labels = node.metadata.labels || {};
  const u = usage.byNode.get(name);
  const alloc = node.status?.allocatable || {};
  const ready = readiness(node);
  return html`
    <h1>${name}</h1>
    ${error && html`<${ErrorBox} error=${error} />`}
    <dl class="card" style=${FACTS}>
      <${Fact} term="Status"><${Badge} state=${ready.word} />${cordoned ? html` <${Badge} state="Cordoned" />` : null}
        ${ready.since ? html` <span class="muted">since <${Age} time=${ready.since} /> ago</span>` : null}<//>
      <${Fact} term="Kind">${[isEdge(node) ? 'edge' : 'local', ...roles(node)].join(', ')}${labels['skiff.dev/autonomous'] === 'true' ? ' (autonomous: keeps its pods offline)' : ''}<//>
      <${Fact} term="Arch/OS">${labels['kubernetes.io/arch'] || node.status?.nodeInfo?.architecture || '?'}/${labels['kubernetes.io/os'] || node.status?.nodeInfo?.operatingSystem || '?'}<//>
      <${Fact} term="Runtime">${node.status?.nodeInfo?.containerRuntimeVersion || '–'}<//>
      <${Fact} term="Version">${node.status?.nodeInfo?.kubeletVersion || '–'}<//>
      <${Fact} term="CPU">${u ? `${cores(u.cpu)} of ${alloc.cpu ?? '?'}${percent(u.cpu, quantity(alloc.cpu))}` : html`<span class="muted">no sample yet</span>`}<//>
      <${Fact} term="Memory">${u ? `${bytes(u.memory)} of ${bytes(quantity(alloc.memory))}${percent(u.memory, quantity(alloc.memory))}` : html`<span class="muted">no sample yet</span>`}<//>
      <${Fact} term="Pods">${pods.items.filter((p) => p.status?.phase !== 'Succeeded' && p.status?.phase !== 'Failed').length} of ${alloc.pods ?? '?'}<//>
      <${Fact} term="Age"><${Age} time=${node.metadata.creationTimestamp} /><//>
    </dl>
    ${mayPatch && html`<div class="toolbar">
      ${cordoned
        ? html`<button type="button" disabled=${busy} onClick=${() => setCordon(false)}>Uncordon</button>`
        : html`<button type="button" disabled=${busy} onClick=${() => setCordon(true)}>Cordon</button>`}
      ${mayEvict && (drain?.running
        ? html`<button type="button" onClick=${halt}>Stop drain</button>`
        : html`<button type="button" class="danger" onClick=${() => setConfirmDrain(true)}
            title="Cordon the node, then evict every pod except DaemonSets' (disruption budgets are honoured)">Drain</button>`)}
    </div>`}
    ${mayPatch && mayEvict && html`<${Confirm} open=${confirmDrain} title=${`Drain ${name}?`} confirmLabel="Evict pods"
      onCancel=${() => setConfirmDrain(false)} onConfirm=${() => { setConfirmDrain(false); start(); }}>
      ${confirmDrain && html`<${DrainPlan} name=${name} pods=${pods.items} />`}
    <//>`}
    ${actionError && html`<${ErrorBox} error=${actionError} />`}
    ${drain && html`<${DrainProgress} drain=${drain} podsLeft=${podsLeft} />`}
    <${Section} id="node-conditions" title="Conditions"><${Conditions} node=${node} /><//>
    <${Section} id="node-taints" title="Taints"><${Taints} node=${node} /><//>
    <${Section} id="node-tunnel" title="Tunnel"><${Tunnel} node=${node} lease=${lease} now=${now} mayProxy=${mayProxy} /><//>
    <${Section} id="node-pods" title="Pods"><${PodsTable} name=${name} pods=${pods} /><//>
    <${Section} id="node-labels" title="Labels"><${Labels} node=${node} /><//>
    <section class="card"><div class="card-head"><h2>YAML</h2></div>
      <${YamlEditor} key=${node.metadata.uid} path=${nodePath(name)} object=${node} resource="nodes" name=${name} />
    </section>`;
}
