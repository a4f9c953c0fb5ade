// The nodes (/ui/nodes): each node's readiness, whether it is an edge node and online,
// its last heartbeat (its Lease in kube-node-lease), pods, CPU and memory. Live: nodes,
// leases and pods are watched; usage (metrics.k8s.io, not watchable) is sampled.
import { html, useState, useEffect, useMemo } from '../../vendor/preact-htm.js';
import { useList, get } from '../api.js';
import { ErrorBox, Age, Badge, VirtualTable, quantity, bytes, activePodsPerNode } from '../components.js';

export const LEASES = '/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases';
/** How often node usage is sampled: the metrics server's default resolution. */
const USAGE_EVERY_MS = 15000;

export const condition = (node, type) => (node.status?.conditions || []).find((c) => c.type === type);

/** Ready, NotReady or Unknown (the control plane lost touch), as kubectl words it. */
export function readiness(node) {
  const c = condition(node, 'Ready');
  const word = !c ? 'Unknown' : c.status === 'True' ? 'Ready' : c.status === 'False' ? 'NotReady' : 'Unknown';
  return { word, since: c?.lastTransitionTime, cond: c };
}

/** Edge nodes: marked autonomous (they keep running offline) or given an edge role. */
export function isEdge(node) {
  const l = node.metadata?.labels || {};
  return l['skiff.dev/autonomous'] === 'true' || 'node-role.kubernetes.io/edge' in l || l['skiff.dev/edge'] === 'true';
}

/** The node-role.kubernetes.io/ROLE labels' roles. */
export const roles = (node) => Object.keys(node.metadata?.labels || {})
  .filter((k) => k.startsWith('node-role.kubernetes.io/')).map((k) => k.slice('node-role.kubernetes.io/'.length));

/**
 * Whether the node's agent still renews its Lease. Agents renew every quarter of the
 * lease's duration (10 s of 40 s by default), so a renewal older than half the duration
 * means at least one was missed: Late. Offline is the node lifecycle controller's word
 * (Ready=Unknown once the grace period passed), not this browser's clock, which may be
 * off by a few seconds.
 */
export function heartbeat(node, lease, now = Date.now()) {
  const renew = lease?.spec?.renewTime;
  const duration = (lease?.spec?.leaseDurationSeconds || 40) * 1000;
  const ready = readiness(node);
  if (ready.word === 'Unknown') return { word: 'Offline', since: ready.since, renew };
  if (!renew) return { word: 'Unknown', renew };
  const late = now - new Date(renew).getTime() > duration / 2;
  return { word: late ? 'Late' : 'Online', since: ready.since, renew };
}

/** Node usage from metrics.k8s.io, sampled: Map name -> { cpu (cores), memory (bytes) }. */
export function useNodeUsage(name) {
  const [usage, setUsage] = useState({ byNode: new Map(), error: null });
  useEffect(() => {
    let live = true;
    let timer = 0;
    // Always the list, even for one node: a node with no sample yet is simply absent
    // from it, where asking for it by name would be a 404 in the console every time.
    const sample = async () => {
      try {
        const r = await get('/apis/metrics.k8s.io/v1beta1/nodes');
        const items = (r.items || []).filter((m) => !name || m.metadata.name === name);
        const byNode = new Map(items.map((m) => [m.metadata.name, {
          cpu: quantity(m.usage?.cpu), memory: quantity(m.usage?.memory), time: m.timestamp,
        }]));
        if (live) setUsage({ byNode, error: null });
      } catch (error) {
        // 404: no sample yet (or no metrics): show nothing rather than an error.
        if (live) setUsage({ byNode: new Map(), error: error.status === 404 ? null : error });
      }
      if (live) timer = setTimeout(sample, USAGE_EVERY_MS);
    };
    sample();
    return () => { live = false; clearTimeout(timer); };
  }, [name]);
  return usage;
}

export const cores = (n) => (Number.isFinite(n) ? (n < 1 ? `${Math.round(n * 1000)}m` : n.toFixed(2)) : '–');
export const percent = (used, total) => (Number.isFinite(used) && total > 0 ? ` (${Math.round((used / total) * 100)}%)` : '');

export function cpuText(node, u) {
  return u ? `${cores(u.cpu)}${percent(u.cpu, quantity(node.status?.allocatable?.cpu))}` : '–';
}
export function memoryText(node, u) {
  return u ? `${bytes(u.memory)}${percent(u.memory, quantity(node.status?.allocatable?.memory))}` : '–';
}

/** Re-render every few seconds so heartbeat ages and Late/Online stay true. */
export function useTick(ms = 5000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => { const t = setInterval(() => setNow(Date.now()), ms); return () => clearInterval(t); }, [ms]);
  return now;
}

export default function Nodes() {
  const nodes = useList('/api/v1/nodes');
  const leases = useList(LEASES);
  // All pods, only to count them per node: asked for once the nodes are in, since a list
  // of thousands keeps the server busy for a while and would hold the table back.
  const pods = useList(nodes.loading ? null : '/api/v1/pods');
  const usage = useNodeUsage();
  const now = useTick();
  const leaseOf = useMemo(() => new Map(leases.items.map((l) => [l.metadata.name, l])), [leases.items]);
  const podsOn = useMemo(() => activePodsPerNode(pods.items), [pods.items]);

  const columns = [
    { label: 'Name', render: (n) => html`<a href=${`/ui/nodes/${encodeURIComponent(n.metadata.name)}`}>${n.metadata.name}</a>` },
    {
      label: 'Status',
      render: (n) => {
        const r = readiness(n);
        return html`<${Badge} state=${r.word} />${n.spec?.unschedulable ? html` <${Badge} state="Cordoned" />` : null}${r.word !== 'Ready' && r.since
          ? html` <span class="muted">for <${Age} time=${r.since} /></span>` : null}`;
      },
    },
    {
      label: 'Heartbeat',
      render: (n) => {
        const h = heartbeat(n, leaseOf.get(n.metadata.name), now);
        return html`<${Badge} state=${h.word} />${h.renew ? html` <span class="muted"><${Age} time=${h.renew} /> ago</span>` : null}`;
      },
    },
    { label: 'Kind', render: (n) => [isEdge(n) ? 'edge' : 'local', ...roles(n)].join(', ') },
    { label: 'Pods', class: 'num', render: (n) => `${pods.loading ? '…' : podsOn.get(n.metadata.name) || 0}/${n.status?.allocatable?.pods ?? '–'}` },
    { label: 'CPU', class: 'num', render: (n) => cpuText(n, usage.byNode.get(n.metadata.name)) },
    { label: 'Memory', class: 'num', render: (n) => memoryText(n, usage.byNode.get(n.metadata.name)) },
    { label: 'Arch/OS', render: (n) => `${n.metadata.labels?.['kubernetes.io/arch'] || n.status?.nodeInfo?.architecture || '?'}/${n.metadata.labels?.['kubernetes.io/os'] || n.status?.nodeInfo?.operatingSystem || '?'}` },
    { label: 'Version', render: (n) => html`<span class="muted">${n.status?.nodeInfo?.kubeletVersion || ''}</span>` },
    { label: 'Age', render: (n) => html`<${Age} time=${n.metadata.creationTimestamp} />` },
  ];
  return html`
    <h1>Nodes</h1>
    ${nodes.error && html`<${ErrorBox} error=${nodes.error} />`}
    ${usage.error && html`<${ErrorBox} error=${usage.error} title="Usage" />`}
    <section class="card">
      ${nodes.loading ? html`<p class="muted" aria-busy="true">Loading…</p>` : html`<${VirtualTable}
        label="Nodes" columns=${columns} rows=${nodes.items} rowKey=${(n) => n.metadata.uid || n.metadata.name}
        empty="No nodes have joined." />`}
    </section>`;
}
