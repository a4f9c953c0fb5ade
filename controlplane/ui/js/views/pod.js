// A pod (/ui/pods/NS/NAME): phase and conditions, each container's state, the events
// about it, its logs and its YAML, all live.
import { html, useState, useEffect, useRef } from '../../vendor/preact-htm.js';
import { useObject, useList, discovery } from '../api.js';
import { ErrorBox, Age, Badge, Section } from '../components.js';
import Logs from '../logs.js';
import YamlEditor from '../yaml-editor.js';

const podPath = (ns, name) => `/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}`;

/** The Workloads view's link for an owner (kind from discovery, filtered by name). */
function useOwnerLink(ns, ref) {
  const [href, setHref] = useState(null);
  useEffect(() => {
    if (!ref) { setHref(null); return; }
    let live = true;
    const [group, version] = ref.apiVersion.includes('/') ? ref.apiVersion.split('/') : ['', ref.apiVersion];
    discovery().then((all) => {
      const r = all.find((x) => x.group === group && x.kind === ref.kind);
      if (!live || !r) return;
      const kind = `${group ? group + '/' : ''}${r.version}/${r.resource}`;
      setHref(`/ui/workloads?${new URLSearchParams({ kind, ns, q: ref.name, open: `${ns}/${ref.name}` })}`);
    }, () => {});
    return () => { live = false; };
  }, [ns, ref?.uid]);
  return href;
}

/** What a container is doing: a word (Running, the waiting or terminated reason), details and since when. */
export function containerState(state) {
  if (!state) return { word: 'Unknown', detail: '' };
  if (state.running) return { word: 'Running', detail: '', since: state.running.startedAt };
  if (state.waiting) return { word: state.waiting.reason || 'Waiting', detail: state.waiting.message || '' };
  if (state.terminated) {
    const t = state.terminated;
    return {
      word: t.reason || 'Terminated',
      detail: `exit code ${t.exitCode}${t.signal ? `, signal ${t.signal}` : ''}${t.message ? `: ${t.message}` : ''}`,
      since: t.finishedAt,
    };
  }
  return { word: 'Unknown', detail: '' };
}

function StateCell({ state }) {
  const s = containerState(state);
  return html`<${Badge} state=${s.word} />${s.detail ? html` <span>${s.detail}</span>` : null}${s.since
    ? html` <span class="muted">(<${Age} time=${s.since} /> ago)</span>` : null}`;
}

function Containers({ pod }) {
  const statuses = new Map();
  for (const s of [...(pod.status?.initContainerStatuses || []), ...(pod.status?.containerStatuses || [])]) {
    statuses.set(s.name, s);
  }
  const rows = [
    ...(pod.spec?.initContainers || []).map((c) => ({ c, init: true })),
    ...(pod.spec?.containers || []).map((c) => ({ c, init: false })),
  ];
  return html`<table>
    <thead><tr><th scope="col">Name</th><th scope="col">Image</th><th scope="col">State</th>
      <th scope="col">Ready</th><th scope="col">Restarts</th><th scope="col">Last state</th></tr></thead>
    <tbody>${rows.map(({ c, init }) => {
      const s = statuses.get(c.name) || {};
      const hasLast = s.lastState && Object.keys(s.lastState).length > 0;
      return html`<tr key=${c.name}>
        <td>${c.name}${init ? html` <span class="muted">(init)</span>` : null}</td>
        <td><code title=${c.image}>${shortImage(c.image)}</code></td>
        <td class="wrap" style="overflow-wrap: anywhere"><${StateCell} state=${s.state} /></td>
        <td>${s.ready ? 'yes' : 'no'}</td>
        <td>${s.restartCount ?? 0}</td>
        <td class="wrap" style="overflow-wrap: anywhere">${hasLast ? html`<${StateCell} state=${s.lastState} />` : html`<span class="muted">–</span>`}</td>
      </tr>`;
    })}</tbody>
  </table>`;
}

/** Ready containers of all, as kubectl's READY column. */
const readyCount = (pod) => `${(pod.status?.containerStatuses || []).filter((c) => c.ready).length}/${(pod.spec?.containers || []).length}`;

/** `sha256:abcdef…` images are long: show the first 12 hex digits. */
const shortImage = (image = '') => (/^sha256:[0-9a-f]{64}$/.test(image) ? image.slice(0, 19) + '…' : image);

function Conditions({ pod }) {
  const conds = pod.status?.conditions || [];
  if (!conds.length) return html`<p class="muted">No conditions reported yet.</p>`;
  return html`<table>
    <thead><tr><th scope="col">Type</th><th scope="col">Status</th><th scope="col">Reason</th>
      <th scope="col">Message</th><th scope="col">Changed</th></tr></thead>
    <tbody>${conds.map((c) => html`<tr key=${c.type}>
      <td>${c.type}</td><td><${Badge} state=${c.status} /></td><td>${c.reason || ''}</td>
      <td class="wrap" style="overflow-wrap: anywhere">${c.message || ''}</td><td><${Age} time=${c.lastTransitionTime} /></td>
    </tr>`)}</tbody>
  </table>`;
}

const eventTime = (e) => e.lastTimestamp || e.eventTime || e.series?.lastObservedTime || e.firstTimestamp || e.metadata?.creationTimestamp || '';

function Events({ pod }) {
  const ns = pod.metadata.namespace;
  const { items, error } = useList(`/api/v1/namespaces/${encodeURIComponent(ns)}/events`, {
    fieldSelector: `involvedObject.kind=Pod,involvedObject.name=${pod.metadata.name}`,
  });
  // A pod of the same name that was deleted and created again has another uid.
  const events = items.filter((e) => !e.involvedObject?.uid || e.involvedObject.uid === pod.metadata.uid)
    .sort((a, b) => (eventTime(a) === eventTime(b)
      ? Number(b.metadata.resourceVersion) - Number(a.metadata.resourceVersion)
      : eventTime(a) < eventTime(b) ? 1 : -1));
  return html`${error && html`<${ErrorBox} error=${error} />`}
    ${events.length === 0 ? html`<p class="muted">No events about this pod.</p>` : html`<table>
      <thead><tr><th scope="col">Type</th><th scope="col">Reason</th><th scope="col">Message</th>
        <th scope="col">Count</th><th scope="col">Last seen</th><th scope="col">From</th></tr></thead>
      <tbody>${events.map((e) => html`<tr key=${e.metadata.uid}>
        <td><${Badge} state=${e.type} /></td><td>${e.reason}</td><td class="wrap" style="overflow-wrap: anywhere">${e.message}</td>
        <td>${e.count || e.series?.count || 1}</td><td><${Age} time=${eventTime(e)} /></td>
        <td class="muted">${e.source?.component || e.reportingComponent || ''}</td>
      </tr>`)}</tbody>
    </table>`}`;
}

/**
 * A card with an h2 but no accessible name of its own: the Containers and YAML sections
 * hold controls labelled "Container" and "YAML", which a labelled region would shadow.
 */
function Card({ title, children }) {
  return html`<section class="card"><div class="card-head"><h2>${title}</h2></div>${children}</section>`;
}

/** Facts in a row: each a small muted term over its value. */
const FACTS = 'display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0 0 16px';

function Fact({ term, children }) {
  return html`<div><dt class="muted" style="font-size: 12px">${term}</dt><dd style="margin: 0">${children}</dd></div>`;
}

/** One pod's page; another pod is a fresh page (no logs or edits carried over). */
export default function PodPage({ params }) {
  return html`<${Pod} key=${`${params.namespace}/${params.name}`} params=${params} />`;
}

function Pod({ params }) {
  const { namespace: ns, name } = params;
  const path = podPath(ns, name);
  const { object: live, error, loading } = useObject(path);
  // A pod deleted while open stays on the page as last seen, marked gone, so its state
  // and logs can still be read; nothing is retried or editable any more.
  const last = useRef(null);
  if (live) last.current = live;
  const gone = !live && !!last.current && error?.status === 404;
  const pod = live || (gone ? {
    ...last.current,
    metadata: { ...last.current.metadata, deletionTimestamp: last.current.metadata.deletionTimestamp || new Date().toISOString() },
  } : null);
  const owner = (pod?.metadata?.ownerReferences || []).find((r) => r.controller) || pod?.metadata?.ownerReferences?.[0];
  const ownerHref = useOwnerLink(ns, owner);

  if (!pod) {
    return html`<h1>${name}</h1>
      ${error ? html`<${ErrorBox} error=${error} />` : loading ? html`<p class="muted" aria-busy="true">Loading…</p>` : null}`;
  }
  const phase = gone ? 'Deleted' : pod.metadata.deletionTimestamp ? 'Terminating' : pod.status?.phase || 'Pending';
  const node = pod.spec?.nodeName;
  return html`
    <h1>${name}</h1>
    ${gone ? html`<p role="status">This pod was deleted: what follows is how it was last seen.</p>`
      : error && html`<${ErrorBox} error=${error} />`}
    <dl class="card facts" style=${FACTS}>
      <${Fact} term="Namespace">${ns}<//>
      <${Fact} term="Phase"><${Badge} state=${phase} />${pod.status?.reason ? html` ${pod.status.reason}` : null}
        ${pod.status?.message ? html` <span class="muted">${pod.status.message}</span>` : null}<//>
      <${Fact} term="Node">${node ? html`<a href=${`/ui/nodes/${encodeURIComponent(node)}`}>${node}</a>` : html`<span class="muted">not scheduled</span>`}<//>
      <${Fact} term="Owner">${owner
        ? (ownerHref ? html`<a href=${ownerHref}>${owner.kind} ${owner.name}</a>` : `${owner.kind} ${owner.name}`)
        : html`<span class="muted">none</span>`}<//>
      <${Fact} term="Ready">${readyCount(pod)}<//>
      <${Fact} term="Restarts">${(pod.status?.containerStatuses || []).reduce((n, c) => n + (c.restartCount || 0), 0)}<//>
      <${Fact} term="Pod IP">${pod.status?.podIP || html`<span class="muted">–</span>`}<//>
      <${Fact} term="Created"><${Age} time=${pod.metadata.creationTimestamp} /> ago<//>
    </dl>
    <${Section} id="pod-conditions" title="Conditions"><${Conditions} pod=${pod} /><//>
    <${Card} title="Containers"><${Containers} pod=${pod} /><//>
    <${Section} id="pod-events" title="Events"><${Events} pod=${pod} /><//>
    <div class="card"><${Logs} key=${pod.metadata.uid} pod=${pod} /></div>
    <${Card} title="YAML">
      ${gone ? html`<p class="muted">The pod is gone: there is nothing to edit.</p>`
        : html`<${YamlEditor} key=${pod.metadata.uid} path=${path} object=${pod} resource="pods" namespace=${ns} name=${name} />`}
    <//>`;
}
