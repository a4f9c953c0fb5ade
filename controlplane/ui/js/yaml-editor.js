// An object as YAML, editable, applied with a PUT at the resourceVersion it was loaded at.
//
// - The text follows the live object while the user has not edited it; once edited it
//   stays as typed, and a note says when the object has changed underneath.
// - YAML that does not parse is reported with its line and column, and never sent.
// - A 409 Conflict says the object changed since it was loaded and offers Reload; the
//   user's text stays in the editor, and after Reload it is kept beside the fresh
//   object so nothing typed is lost.
// - Any other refusal (422 Invalid, 400) shows the API's Status message and causes.
// - Apply is hidden for identities that may not update the object.
import { html, useState, useEffect, useRef } from '../vendor/preact-htm.js';
import { load, dump } from '../vendor/js-yaml.mjs';
import { get, put, useCan, ApiError } from './api.js';
import { ErrorBox } from './components.js';

/**
 * The object as YAML, without managedFields (as kubectl shows it): they are the server's
 * bookkeeping, and an update that leaves them out keeps them.
 */
export function toYaml(obj) {
  const { managedFields, ...metadata } = obj.metadata || {};
  return dump({ ...obj, metadata }, { noRefs: true, lineWidth: -1 });
}

/** The text parsed, or a syntax error saying where. */
export function parseYaml(text) {
  try {
    const obj = load(text);
    if (!obj || typeof obj !== 'object' || Array.isArray(obj)) {
      return { error: new Error('The YAML must be one object (a mapping with apiVersion, kind and metadata).') };
    }
    return { obj };
  } catch (e) {
    const mark = e.mark || {};
    const where = mark.line !== undefined ? ` at line ${mark.line + 1}, column ${mark.column + 1}` : '';
    const err = new Error(`YAML syntax error${where}: ${e.reason || e.message}`);
    err.position = mark.position;
    return { error: err };
  }
}

/**
 * props: path (the object's API path), object (the live object, if the caller watches
 * it; otherwise it is fetched), resource, group, namespace, name (for the access check).
 */
export default function YamlEditor({ path, object, resource, group = '', namespace, name }) {
  const [loaded, setLoaded] = useState(null); // { text, rv }
  const [text, setText] = useState('');
  const [error, setError] = useState(null);
  const [conflict, setConflict] = useState(false);
  const [kept, setKept] = useState(''); // the user's text from before a Reload after a conflict
  const [note, setNote] = useState('');
  const [busy, setBusy] = useState(false);
  const area = useRef(null);
  const notices = useRef(null);
  const mayUpdate = useCan('update', resource, { group, namespace, name });
  const dirty = loaded !== null && text !== loaded.text;

  const take = (obj) => {
    const t = toYaml(obj);
    setLoaded({ text: t, rv: obj.metadata?.resourceVersion });
    setText(t);
  };

  // First load, and following the live object while the text is untouched.
  useEffect(() => {
    if (object) {
      if (!loaded || (!dirty && object.metadata?.resourceVersion !== loaded.rv)) take(object);
      return undefined;
    }
    if (loaded) return undefined;
    let live = true;
    get(path).then((o) => live && take(o), (e) => live && setError(e));
    return () => { live = false; };
  }, [path, object]);

  // An answer to Apply is shown under the buttons: bring it into view.
  useEffect(() => {
    if (error && notices.current) notices.current.scrollIntoView({ block: 'nearest' });
  }, [error]);

  const changedUnderneath = dirty && object && object.metadata?.resourceVersion !== loaded.rv;

  const reload = async () => {
    setBusy(true);
    try {
      const fresh = await get(path);
      if (dirty) setKept(text);
      take(fresh);
      setError(null);
      setConflict(false);
      setNote(`Reloaded at resourceVersion ${fresh.metadata?.resourceVersion}.`);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  const apply = async () => {
    setNote('');
    const parsed = parseYaml(text);
    if (parsed.error) {
      setError(parsed.error);
      setConflict(false);
      if (parsed.error.position !== undefined && area.current) {
        area.current.focus();
        area.current.setSelectionRange(parsed.error.position, parsed.error.position);
      }
      return;
    }
    const obj = parsed.obj;
    obj.metadata = { ...(obj.metadata || {}), resourceVersion: loaded.rv };
    setBusy(true);
    try {
      const saved = await put(path, obj);
      take(saved);
      setError(null);
      setConflict(false);
      setKept('');
      setNote(`Applied: resourceVersion ${saved.metadata?.resourceVersion}.`);
    } catch (e) {
      setConflict(e instanceof ApiError && e.status === 409);
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  if (!loaded) {
    return html`<div>${error ? html`<${ErrorBox} error=${error} />` : html`<p class="muted">Loading…</p>`}</div>`;
  }
  const rows = Math.min(40, Math.max(10, text.split('\n').length + 1));
  // Errors and notes go under the buttons, where the eye is after Apply, not above a long text.
  return html`
    <div class="yaml-editor">
      <textarea ref=${area} aria-label="YAML" spellcheck="false" autocapitalize="off" rows=${rows}
        value=${text} onInput=${(e) => { setText(e.currentTarget.value); if (note) setNote(''); }}
        onKeyDown=${(e) => { if (mayUpdate && (e.ctrlKey || e.metaKey) && e.key === 'Enter') { e.preventDefault(); apply(); } }}
        aria-describedby=${mayUpdate ? 'yaml-hint' : undefined}
        readonly=${mayUpdate === false}
        style="width: 100%; font-family: var(--mono, monospace); font-size: 0.85rem"></textarea>
      <div class="toolbar">
        ${mayUpdate && html`<button type="button" onClick=${apply} disabled=${busy}>Apply</button>`}
        <button type="button" onClick=${reload} disabled=${busy}>Reload</button>
        <span role="status" class="muted">${note}${dirty && !note ? 'Edited' : ''}</span>
        ${mayUpdate && html`<span id="yaml-hint" class="muted">Ctrl+Enter applies.</span>`}
      </div>
      <div ref=${notices}>
        ${error && html`<${ErrorBox} error=${error}
          title=${conflict ? `The object changed since you loaded it (at resourceVersion ${loaded.rv})` : undefined} />`}
        ${conflict && html`<p>Your text is kept. Reload to see the current object, with your edit beside it to copy from.</p>`}
        ${changedUnderneath && !conflict && html`<p class="muted">The object has changed since you loaded it; Apply will be refused unless you Reload.</p>`}
      </div>
      ${kept && html`<details open>
        <summary>Your edit from before the reload</summary>
        <textarea aria-label="Your edit" readonly rows="12" value=${kept}
          style="width: 100%; font-family: var(--mono, monospace); font-size: 0.85rem"></textarea>
        <button type="button" onClick=${() => setKept('')}>Discard your edit</button>
      </details>`}
    </div>`;
}
