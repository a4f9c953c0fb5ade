// Events: the cluster's events, live (list then watch), newest first, filterable by text
// and type.
import { html, useMemo } from '../../vendor/preact-htm.js';
import { useList } from '../api.js';
import { setQuery } from '../router.js';
import { ErrorBox, Age, Badge, VirtualTable } from '../components.js';
import { eventTime, involvedLink } from './overview.js';

const TYPES = ['All', 'Normal', 'Warning'];

export default function Events({ query }) {
  const type = TYPES.includes(query.get('type')) ? query.get('type') : 'All';
  const q = query.get('q') || '';
  const events = useList('/api/v1/events');
  const rows = useMemo(() => {
    const needle = q.trim().toLowerCase();
    return events.items
      .filter((e) => type === 'All' || e.type === type)
      .filter((e) => !needle || [e.reason, e.message, e.metadata.namespace, e.involvedObject?.kind,
        e.involvedObject?.name, e.source?.component, e.reportingComponent]
        .some((f) => f && String(f).toLowerCase().includes(needle)))
      .sort((a, b) => String(eventTime(b)).localeCompare(String(eventTime(a))));
  }, [events.items, type, q]);
  const columns = [
    { label: 'Last seen', render: (e) => html`<${Age} time=${eventTime(e)} />` },
    { label: 'Type', render: (e) => html`<${Badge} state=${e.type} />` },
    { label: 'Reason', render: (e) => e.reason },
    { label: 'Object', render: (e) => involvedLink(e.involvedObject) },
    { label: 'Namespace', render: (e) => e.metadata.namespace },
    { label: 'Message', class: 'msg', render: (e) => html`<span title=${e.message}>${e.message}</span>` },
    { label: 'Count', class: 'num', render: (e) => e.count ?? e.series?.count ?? 1 },
    { label: 'From', class: 'muted', render: (e) => e.source?.component || e.reportingComponent || '' },
  ];
  return html`<h1>Events</h1>
    <div class="toolbar" role="search">
      <label>Filter events<input value=${q} placeholder="reason, object, message" onInput=${(e) => setQuery({ q: e.currentTarget.value })} /></label>
      <label>Type<select value=${type} onChange=${(e) => setQuery({ type: e.currentTarget.value === 'All' ? '' : e.currentTarget.value })}>
        ${TYPES.map((t) => html`<option value=${t}>${t}</option>`)}</select></label>
      <span class="muted" aria-live="polite">${events.loading ? '' : `${rows.length} of ${events.items.length}, live`}</span>
    </div>
    <${ErrorBox} error=${events.error} />
    ${events.loading ? html`<p class="muted">Loading…</p>` : html`<${VirtualTable} label="Events" columns=${columns} rows=${rows}
      rowKey=${(e) => e.metadata.uid} empty="No events match." />`}`;
}
