// Apps: deploy by dropping a .wasm (upload progress, then rollout progress by watching the
// App), and a live table with URL, ready replicas, module digest, request and error rate
// sparklines (custom metrics sampled every 5 s), scale, roll back and delete.
import { html, useState, useEffect, useMemo, useRef } from '../../vendor/preact-htm.js';
import { useList, useObject, can, get, patch, del, token, ApiError, sessionEnded } from '../api.js';
import { ErrorBox, Age, Badge, VirtualTable, Confirm, Sparkline, quantity } from '../components.js';
import { navigate } from '../router.js';

const APPS = '/apis/skiff.dev/v1';
const appPath = (ns, name) => `${APPS}/namespaces/${encodeURIComponent(ns)}/apps/${encodeURIComponent(name)}`;
const REVISION = 'deployment.kubernetes.io/revision';
const SAMPLES = 24; // two minutes at one sample per 5 s

/** A DNS-1123 label from a file name: "Hello_HTTP.wasm" -> "hello-http". */
export function appNameFrom(file) {
  return file.replace(/\.wasm$/i, '').toLowerCase().replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '').slice(0, 63) || 'app';
}

const shortDigest = (d) => (d ? d.replace(/^sha256:/, '').slice(0, 12) : '');

/** PUT the module with XMLHttpRequest, for upload progress (fetch has none). */
function upload(ns, name, replicas, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', `${appPath(ns, name)}?replicas=${replicas}`);
    xhr.setRequestHeader('Content-Type', 'application/wasm');
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.setRequestHeader('Authorization', 'Bearer ' + token.get());
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) { resolve(body); return; }
      const err = new ApiError(xhr.status, body, xhr.responseText || `HTTP ${xhr.status}`);
      if (xhr.status === 401) sessionEnded(err);
      reject(err);
    };
    xhr.onerror = () => reject(new Error('The upload failed: the connection to the API was lost.'));
    xhr.send(file);
  });
}

function readyCond(app) {
  return (app?.status?.conditions || []).find((c) => c.type === 'Ready');
}

/** Done when the controller has seen this generation and says Ready with all replicas. */
export function rolledOut(app) {
  const c = readyCond(app);
  const gen = app?.metadata?.generation ?? 0;
  const seen = Math.max(app?.status?.observedGeneration ?? 0, c?.observedGeneration ?? 0);
  return !!c && c.status === 'True' && seen >= gen && (app.status?.readyReplicas ?? 0) === (app.spec?.replicas ?? 0);
}

function Rollout({ ns, name, onDone }) {
  const { object: app, error } = useObject(appPath(ns, name));
  const done = app && rolledOut(app);
  useEffect(() => { if (done && onDone) onDone(); }, [done]);
  if (error) return html`<${ErrorBox} error=${error} />`;
  if (!app) return html`<p role="status" class="status-line">Waiting for the app…</p>`;
  const c = readyCond(app);
  const s = app.status || {};
  return html`<p role="status" class="status-line">
    ${done ? html`<${Badge} state="Ready" /> ${name}: Ready, ${s.readyReplicas}/${app.spec.replicas} replicas serve ${shortDigest(s.moduleDigest)}.
      ${s.url ? html` Open <a href=${s.url} target="_blank" rel="noopener">${s.url}</a>` : null}`
    : html`<${Badge} state="Rolling out" /> <span title=${c?.message}>${name}: ${s.updatedReplicas ?? 0} of ${app.spec.replicas} updated, ${s.readyReplicas ?? 0} up</span>`}
  </p>`;
}

function Deploy({ namespaces, existing }) {
  const [file, setFile] = useState(null);
  const [name, setName] = useState('');
  const [ns, setNs] = useState(namespaces.includes('default') ? 'default' : namespaces[0]);
  const [replicas, setReplicas] = useState(1);
  const [over, setOver] = useState(false);
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const [deployed, setDeployed] = useState(null);
  const input = useRef(null);
  const choose = (f) => {
    if (!f) return;
    if (!/\.wasm$/i.test(f.name)) { setError(new Error(`${f.name} is not a .wasm file.`)); return; }
    setFile(f); setName(appNameFrom(f.name)); setError(null); setDeployed(null); setProgress(null);
  };
  const onDrop = (e) => { e.preventDefault(); setOver(false); choose(e.dataTransfer?.files?.[0]); };
  async function deploy(e) {
    e.preventDefault();
    if (!file) { setError(new Error('Choose or drop a .wasm file first.')); return; }
    setError(null); setDeployed(null); setProgress(0);
    try {
      await upload(ns, name, replicas, file, setProgress);
      setProgress(1);
      setDeployed({ ns, name, at: Date.now() });
    } catch (err) {
      setProgress(null);
      setError(err);
    }
  }
  return html`<form class="card" onSubmit=${deploy}>
    <div role="group" aria-label="Deploy a .wasm module" class=${over ? 'drop over' : 'drop'}
      onDragOver=${(e) => { e.preventDefault(); setOver(true); }} onDragLeave=${() => setOver(false)} onDrop=${onDrop}>
      <p class="hint"><strong>Deploy a .wasm module:</strong> drop a WebAssembly HTTP component here, or${' '}
        <label class="linklike">choose one<input ref=${input} type="file" accept=".wasm,application/wasm"
          aria-label="Choose a .wasm file" class="visually-hidden" onChange=${(e) => choose(e.currentTarget.files[0])} /></label>.
        ${file ? html` <span class="muted">${file.name}, ${(file.size / 1024).toFixed(0)} KiB</span>` : null}</p>
      <label class="field">App name<input value=${name} required pattern="[a-z0-9]+(-[a-z0-9]+)*" maxlength="63"
        onInput=${(e) => setName(e.currentTarget.value)} /></label>
      <label class="field">Namespace<select value=${ns} onChange=${(e) => setNs(e.currentTarget.value)}>
        ${namespaces.map((n) => html`<option value=${n}>${n}</option>`)}</select></label>
      <label class="field">Replicas<input type="number" min="0" max="1000" value=${replicas}
        onInput=${(e) => setReplicas(Math.max(0, parseInt(e.currentTarget.value, 10) || 0))} /></label>
      <button type="submit" class="primary" disabled=${!file || (progress !== null && progress < 1)}>Deploy</button>
      ${existing.has(`${ns}/${name}`) && !deployed ? html`<p class="hint muted">${name} exists in ${ns}: deploying rolls it to this module.</p>` : null}
    </div>
    ${progress !== null ? html`<progress aria-label="Upload" max="1" value=${progress}></progress>` : null}
    <${ErrorBox} error=${error} />
    ${deployed ? html`<${Rollout} key=${deployed.at} ns=${deployed.ns} name=${deployed.name} />` : null}
  </form>`;
}

/** Samples the App metrics of each namespace every 5 s: { 'ns/name': { rps: [], err: [] } }. */
function useAppMetrics(namespaces) {
  const [series, setSeries] = useState({});
  const [missing, setMissing] = useState({});
  const key = namespaces.join(',');
  const histRef = useRef({}); // kept when the namespaces change, so charts keep their past
  useEffect(() => {
    let live = true;
    const hist = histRef.current;
    // Ask only for the metrics the server lists (a missing one would be a 404 each time).
    const served = get('/apis/custom.metrics.k8s.io/v1beta2').then(
      (l) => new Set((l.resources || []).map((r) => r.name)), () => new Set());
    // One read per namespace and metric for all its apps (the `*` name).
    const read = async (ns, metric) => {
      if (!(await served).has('apps.skiff.dev/' + metric)) {
        setMissing((m) => (m[metric] ? m : { ...m, [metric]: true }));
        return [];
      }
      try {
        const l = await get(`/apis/custom.metrics.k8s.io/v1beta2/namespaces/${encodeURIComponent(ns)}/apps.skiff.dev/*/${metric}`);
        return (l.items || []).map((i) => [`${ns}/${i.describedObject.name}`, quantity(i.value)]);
      } catch (e) {
        // A metric the server does not serve is "not available"; other errors: no sample.
        if (e.status === 404 && e.details?.kind === 'metrics') setMissing((m) => ({ ...m, [metric]: true }));
        return [];
      }
    };
    const tick = async () => {
      const per = await Promise.all(namespaces.flatMap((ns) => [
        read(ns, 'http_requests_per_second').then((l) => ['rps', l]),
        read(ns, 'http_errors_per_second').then((l) => ['err', l]),
      ]));
      if (!live) return;
      const now = { rps: new Map(), err: new Map() };
      for (const [which, l] of per) for (const [k, v] of l) now[which].set(k, v);
      const keys = new Set([...Object.keys(hist), ...now.rps.keys(), ...now.err.keys()]);
      for (const k of keys) {
        hist[k] = hist[k] || { rps: [], err: [] };
        // No sample this round (no traffic measured) reads as 0.
        for (const which of ['rps', 'err']) hist[k][which] = [...hist[k][which], now[which].get(k) ?? 0].slice(-SAMPLES);
      }
      setSeries({ ...hist });
    };
    tick();
    const t = setInterval(tick, 5000);
    return () => { live = false; clearInterval(t); };
  }, [key]);
  return { series, missing };
}

/** The container image (module) of the revision before the current one, if any. */
function previousModule(app, replicasets) {
  const own = replicasets.filter((rs) => rs.metadata.namespace === app.metadata.namespace
    && (rs.metadata.ownerReferences || []).some((o) => o.kind === 'Deployment' && o.name === app.metadata.name))
    .map((rs) => ({ rev: parseInt(rs.metadata.annotations?.[REVISION] || '0', 10),
      image: rs.spec?.template?.spec?.containers?.[0]?.image }))
    .sort((a, b) => b.rev - a.rev);
  const current = app.spec?.module;
  const prev = own.find((r) => r.image && r.image !== current && r.rev < (own[0]?.rev ?? 0))
    || own.find((r) => r.image && r.image !== current);
  return prev ? prev.image : null;
}

/** { namespace: allowed } for a verb on Apps, from SelfSubjectAccessReviews (cached per tab). */
function useAllowed(verb, namespaces) {
  const [allowed, setAllowed] = useState({});
  const key = namespaces.join(',');
  useEffect(() => {
    let live = true;
    Promise.all(namespaces.map((n) => can(verb, 'apps', { group: 'skiff.dev', namespace: n }).then((ok) => [n, ok], () => [n, false])))
      .then((pairs) => live && setAllowed(Object.fromEntries(pairs)));
    return () => { live = false; };
  }, [verb, key]);
  return allowed;
}

function Controls({ app, previous, mayPatch, mayDelete, onError, onDelete }) {
  const name = app.metadata.name;
  const [n, setN] = useState(app.spec?.replicas ?? 0);
  const [busy, setBusy] = useState(false);
  useEffect(() => setN(app.spec?.replicas ?? 0), [app.spec?.replicas]);
  const run = async (fn) => {
    setBusy(true); onError(null);
    try { await fn(); } catch (e) { onError(e); } finally { setBusy(false); }
  };
  const path = appPath(app.metadata.namespace, name);
  return html`<span class="controls">${mayPatch ? html`
    <input type="number" min="0" max="1000" class="small" aria-label=${'Replicas of ' + name} value=${n}
      onInput=${(e) => setN(parseInt(e.currentTarget.value, 10) || 0)}
      onKeyDown=${(e) => { if (e.key === 'Enter') run(() => patch(path, { spec: { replicas: n } })); }} />
    <button type="button" class="small" aria-label=${'Scale ' + name} disabled=${busy}
      onClick=${() => run(() => patch(path, { spec: { replicas: n } }))}>Scale</button>
    <button type="button" class="small" aria-label=${'Roll back ' + name} disabled=${busy || !previous}
      title=${previous ? `Back to ${shortDigest(previous)}` : 'No earlier revision'}
      onClick=${() => run(() => patch(path, { spec: { module: previous } }))}>Roll back</button>` : null}
    ${mayDelete ? html`<button type="button" class="small danger" aria-label=${'Delete ' + name} disabled=${busy}
      onClick=${() => onDelete(app)}>Delete</button>` : null}
  </span>`;
}

// For an identity RBAC lets list Apps in some namespaces only (a RoleBinding to `edit`
// in one, say): the all-namespaces list is refused, so it names a namespace to look in.
function NamespacePicker() {
  const [ns, setNs] = useState('');
  return html`<form class="card" onSubmit=${(e) => { e.preventDefault(); if (ns.trim()) navigate('/ui/apps?ns=' + encodeURIComponent(ns.trim())); }}>
    <p>You may not list apps in every namespace. Which namespace's apps?</p>
    <label>Namespace <input value=${ns} onInput=${(e) => setNs(e.currentTarget.value)} required /></label>
    <button type="submit">Show</button>
  </form>`;
}

export default function Apps({ query }) {
  const filterNs = query?.get('ns') || '';
  // One namespace when the page is asked for one (so a namespace-bound identity can
  // use it), else all of them.
  const scope = filterNs ? `/namespaces/${encodeURIComponent(filterNs)}` : '';
  const apps = useList(`${APPS}${scope}/apps`);
  const rs = useList(`/apis/apps/v1${scope}/replicasets`, { labelSelector: 'app.skiff.dev/name' });
  const nsList = useList('/api/v1/namespaces');
  // Namespaces to ask about: all of them, or (for an identity that may not list them)
  // those its apps are in, and default.
  const allNs = useMemo(() => [...new Set([...nsList.items.map((n) => n.metadata.name),
    ...apps.items.map((a) => a.metadata.namespace), 'default'])].sort(), [nsList.items, apps.items]);
  // What this identity may do, per namespace (RBAC may grant one namespace only).
  const mayCreate = useAllowed('create', allNs);
  const mayPatch = useAllowed('patch', allNs);
  const mayDelete = useAllowed('delete', allNs);
  const canWrite = Object.values(mayPatch).some(Boolean) || Object.values(mayDelete).some(Boolean);
  const createIn = allNs.filter((n) => mayCreate[n]);
  const [actionError, setActionError] = useState(null);
  const [deleting, setDeleting] = useState(null);
  const rows = useMemo(() => apps.items.filter((a) => !filterNs || a.metadata.namespace === filterNs), [apps.items, filterNs]);
  const namespaces = useMemo(() => [...new Set(apps.items.map((a) => a.metadata.namespace))].sort(), [apps.items]);
  const { series, missing } = useAppMetrics(namespaces);
  const columns = [
    { label: 'Name', render: (a) => html`<strong>${a.metadata.name}</strong>` },
    { label: 'Namespace', render: (a) => a.metadata.namespace },
    { label: 'URL', render: (a) => (a.status?.url ? html`<a href=${a.status.url} target="_blank" rel="noopener">${a.status.url}</a>` : html`<span class="muted">–</span>`) },
    { label: 'Ready', class: 'num', render: (a) => html`<span title=${readyCond(a)?.message}>${a.status?.readyReplicas ?? 0}/${a.spec?.replicas ?? 0}</span>` },
    { label: 'Module', render: (a) => html`<code title=${a.status?.moduleDigest || a.spec?.module}>${shortDigest(a.status?.moduleDigest || a.spec?.module)}</code>` },
    { label: 'Requests/s', render: (a) => html`<${Sparkline} label=${`Requests per second of ${a.metadata.name}`} points=${series[`${a.metadata.namespace}/${a.metadata.name}`]?.rps} />` },
    { label: 'Errors/s', render: (a) => (missing.http_errors_per_second && !series[`${a.metadata.namespace}/${a.metadata.name}`]?.err?.some((v) => v)
      ? html`<span class="muted" title="The server does not report errors per second">n/a</span>`
      : html`<${Sparkline} label=${`Errors per second of ${a.metadata.name}`} points=${series[`${a.metadata.namespace}/${a.metadata.name}`]?.err} />`) },
    { label: 'Age', render: (a) => html`<${Age} time=${a.metadata.creationTimestamp} />` },
    ...(canWrite ? [{ label: 'Actions', render: (a) => html`<${Controls} app=${a} previous=${previousModule(a, rs.items)}
      mayPatch=${mayPatch[a.metadata.namespace]} mayDelete=${mayDelete[a.metadata.namespace]}
      onError=${setActionError} onDelete=${setDeleting} />` }] : []),
  ];
  async function confirmDelete() {
    const a = deleting;
    setDeleting(null);
    try { await del(appPath(a.metadata.namespace, a.metadata.name)); } catch (e) { setActionError(e); }
  }
  return html`<h1>Apps</h1>
    ${createIn.length ? html`<${Deploy} namespaces=${createIn} existing=${new Set(apps.items.map((a) => `${a.metadata.namespace}/${a.metadata.name}`))} />` : null}
    <${ErrorBox} error=${actionError} />
    <${ErrorBox} error=${apps.error} />
    ${apps.error?.status === 403 && !filterNs ? html`<${NamespacePicker} />` : null}
    ${filterNs ? html`<p class="muted">Namespace ${filterNs} · <a href="/ui/apps">all namespaces</a></p>` : null}
    ${apps.loading ? html`<p class="muted">Loading…</p>` : html`<${VirtualTable} label="Apps" columns=${columns} rows=${rows}
      rowKey=${(a) => a.metadata.uid} rowHeight=${40} empty="No apps yet. Drop a .wasm above to deploy one." />`}
    <${Confirm} open=${!!deleting} title=${deleting ? `Delete app ${deleting.metadata.name}?` : 'Delete'} confirmLabel="Delete"
      onConfirm=${confirmDelete} onCancel=${() => setDeleting(null)}>
      <p>This deletes the app, its Deployment, Service and pods${deleting ? html` in <code>${deleting.metadata.namespace}</code>` : ''}.</p>
    </${Confirm}>`;
}
