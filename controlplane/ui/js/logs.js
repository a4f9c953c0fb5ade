// A pod's logs: followed live from pods/NAME/log?follow=true, the previous instance, one
// container of several, and a download of the whole log.
//
// The text is appended to the <pre> as text nodes, at most once per animation frame, and
// the oldest text is dropped past MAX_CHARS, so a chatty pod never makes the page slow.
// The view sticks to the bottom until the user scrolls up. Lines are always asked for with
// timestamps: when a followed stream ends while the pod still runs (the node's agent
// restarted, a proxy timed out) it is opened again from the last line's time, and the
// lines already shown at that instant are skipped, so nothing is lost or doubled.
import { html, useState, useEffect, useRef } from '../vendor/preact-htm.js';
import { streamText, request } from './api.js';
import { ErrorBox } from './components.js';

/** The most text the view keeps; older text is dropped (the download has all of it). */
const MAX_CHARS = 1 << 20;
/** Lines asked for when the view opens. */
const TAIL_LINES = 2000;

/** A checkbox's label: box and text on one line (the toolbar stacks labels over fields). */
const ROW = 'flex-direction: row; align-items: center; gap: 4px';

/** The API path of a pod's log with these query parameters. */
export function logPath(ns, name, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== false) q.set(k, String(v));
  return `/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}/log?${q}`;
}

/** Whether a pod may still write to its log, so a stream that ends is opened again. */
const stillRunning = (pod) => {
  const phase = pod?.status?.phase;
  return !pod?.metadata?.deletionTimestamp && (phase === 'Running' || phase === 'Pending');
};

/** The container the API picks by default: the annotation's, else the first. */
function defaultContainer(pod) {
  const names = (pod?.spec?.containers || []).map((c) => c.name);
  const wanted = pod?.metadata?.annotations?.['kubectl.kubernetes.io/default-container'];
  return names.includes(wanted) ? wanted : names[0] || '';
}

export default function Logs({ pod }) {
  const ns = pod.metadata.namespace;
  const name = pod.metadata.name;
  const containers = (pod.spec?.containers || []).map((c) => c.name);
  const [container, setContainer] = useState(defaultContainer(pod));
  const [follow, setFollow] = useState(true);
  const [previous, setPrevious] = useState(false);
  const [stamps, setStamps] = useState(false);
  const [state, setState] = useState({ note: '', error: null, dropped: false });
  const [stuck, setStuck] = useState(true);
  const [downloading, setDownloading] = useState(false);
  const [downloadError, setDownloadError] = useState(null);
  const pre = useRef(null);
  const podRef = useRef(pod);
  podRef.current = pod;
  const stick = useRef(true);
  const kick = useRef(null);

  useEffect(() => {
    const out = pre.current;
    out.textContent = '';
    stick.current = true;
    setStuck(true);
    let stopped = false;
    let stream = null;
    let timer = 0;
    let frame = 0;
    let pending = '';
    let shown = 0;
    let partial = '';
    // Resuming: the time of the last line shown, and how many lines had that time.
    let lastTime = '';
    let atLastTime = 0;
    let skip = 0;
    let backoff = 1000;
    const live = follow && !previous;

    const flush = () => {
      frame = 0;
      if (!pending) return;
      out.appendChild(document.createTextNode(pending));
      shown += pending.length;
      pending = '';
      if (shown > MAX_CHARS) {
        // Drop whole chunks from the front, then cut the first one, down to 3/4 of the cap;
        // a reader scrolled up keeps looking at the same lines.
        const height = stick.current ? 0 : out.scrollHeight;
        while (shown > MAX_CHARS * 0.75 && out.firstChild) {
          const first = out.firstChild;
          const over = shown - MAX_CHARS * 0.75;
          if (first.data.length <= over) { shown -= first.data.length; first.remove(); } else {
            const cut = first.data.indexOf('\n', over);
            const n = cut < 0 ? first.data.length : cut + 1;
            first.data = first.data.slice(n);
            shown -= n;
          }
        }
        if (height) out.scrollTop -= height - out.scrollHeight;
        setState((s) => (s.dropped ? s : { ...s, dropped: true }));
      }
      if (stick.current) out.scrollTop = out.scrollHeight;
    };
    const show = (text) => {
      pending += text;
      // A hidden tab gets no animation frames: keep only what could be shown anyway.
      if (pending.length > MAX_CHARS) {
        const cut = pending.indexOf('\n', pending.length - MAX_CHARS * 0.75);
        pending = pending.slice(cut < 0 ? pending.length - MAX_CHARS * 0.75 : cut + 1);
        setState((s) => (s.dropped ? s : { ...s, dropped: true }));
      }
      if (!frame) frame = requestAnimationFrame(flush);
    };
    const line = (l) => {
      const sp = l.indexOf(' ');
      const time = sp > 0 ? l.slice(0, sp) : '';
      if (skip > 0 && time === lastTime) { skip--; return; }
      skip = 0;
      backoff = 1000;
      if (time === lastTime) atLastTime++; else { lastTime = time; atLastTime = 1; }
      show((stamps || sp < 0 ? l : l.slice(sp + 1)) + '\n');
    };
    const onText = (text) => {
      partial += text;
      let nl;
      while ((nl = partial.indexOf('\n')) >= 0) {
        line(partial.slice(0, nl));
        partial = partial.slice(nl + 1);
      }
    };
    const open = () => {
      if (stopped) return;
      const resume = !!lastTime;
      skip = resume ? atLastTime : 0;
      const path = logPath(ns, name, {
        container: containers.length > 1 ? container : undefined,
        follow: live, previous, timestamps: true,
        tailLines: resume ? undefined : TAIL_LINES,
        sinceTime: resume ? lastTime : undefined,
      });
      setState((s) => ({ ...s, note: live ? 'Following' : 'Loading', error: null }));
      stream = streamText(path, {
        onText,
        onEnd: () => {
          if (partial) { line(partial); partial = ''; }
          ended();
        },
        onError: (error) => {
          setState((s) => ({ ...s, error }));
          ended(error);
        },
      });
    };
    // A stream ended or failed: open it again while the pod may still write.
    const ended = (error) => {
      if (stopped) return;
      if (live && stillRunning(podRef.current)) {
        const wait = backoff;
        backoff = Math.min(backoff * 2, 15000);
        setState((s) => ({ ...s, note: `Stream ended; reconnecting in ${Math.round(wait / 1000)} s` }));
        timer = setTimeout(() => { timer = 0; open(); }, wait);
      } else {
        setState((s) => ({ ...s, note: error ? '' : 'End of log' }));
      }
    };
    // Not started yet: nothing to read until the pod says it started.
    let waiting = false;
    // The container started (again): the pod changed, so open the stream now, not at the timer.
    kick.current = () => {
      if (timer || waiting) { clearTimeout(timer); timer = 0; waiting = false; backoff = 1000; open(); }
    };
    setState({ note: '', error: null, dropped: false });
    const st = (podRef.current.status?.containerStatuses || []).find((c) => c.name === container);
    if (previous && !st?.lastState?.terminated) {
      // No earlier instance to read: say so rather than ask for a 400.
      setState({ note: 'No previous instance: this container has not restarted.', error: null, dropped: false });
    } else if (!previous && !st?.state?.running && !st?.state?.terminated && !st?.lastState?.terminated) {
      waiting = true;
      setState({ note: 'Waiting for the container to start…', error: null, dropped: false });
    } else {
      open();
    }
    return () => {
      kick.current = null;
      stopped = true;
      clearTimeout(timer);
      if (frame) cancelAnimationFrame(frame);
      if (stream) stream.stop();
    };
  }, [ns, name, container, follow, previous, stamps]);

  // What changes when the chosen container starts again.
  const status = (pod.status?.containerStatuses || []).find((c) => c.name === container);
  const started = `${status?.restartCount}/${status?.state?.running?.startedAt || ''}`;
  const lastStarted = useRef(started);
  useEffect(() => {
    if (lastStarted.current === started) return;
    lastStarted.current = started;
    if (kick.current) kick.current();
  }, [started]);

  const onScroll = (e) => {
    const el = e.currentTarget;
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
    if (atEnd !== stick.current) { stick.current = atEnd; setStuck(atEnd); }
  };
  const toEnd = () => {
    const el = pre.current;
    stick.current = true;
    setStuck(true);
    el.scrollTop = el.scrollHeight;
  };

  // The whole log as a file: fetched afresh (not what the view kept) and handed over as a Blob.
  const download = async (e) => {
    e.preventDefault();
    if (downloading) return;
    setDownloading(true);
    setDownloadError(null);
    try {
      const res = await request('GET', logPath(ns, name, {
        container: containers.length > 1 ? container : undefined, previous, timestamps: stamps,
      }), { raw: true });
      const blob = new Blob([await res.arrayBuffer()], { type: 'text/plain;charset=utf-8' });
      const href = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = href;
      a.download = `${name}${containers.length > 1 ? '-' + container : ''}${previous ? '-previous' : ''}.log`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(href), 60000);
    } catch (err) {
      setDownloadError(err);
    } finally {
      setDownloading(false);
    }
  };

  return html`
    <section aria-label="Logs" class="logs">
      <h2>Logs</h2>
      <div class="toolbar">
        ${containers.length > 1 && html`
          <span class="field"><label for=${`log-container-${pod.metadata.uid}`}>Container</label>
            <select id=${`log-container-${pod.metadata.uid}`} value=${container}
              onChange=${(e) => setContainer(e.currentTarget.value)}>
              ${containers.map((c) => html`<option value=${c}>${c}</option>`)}
            </select>
          </span>`}
        <label style=${ROW}><input type="checkbox" checked=${follow && !previous} disabled=${previous}
          onChange=${(e) => setFollow(e.currentTarget.checked)} /> Follow</label>
        <label style=${ROW}><input type="checkbox" checked=${previous}
          onChange=${(e) => setPrevious(e.currentTarget.checked)} /> Previous instance</label>
        <label style=${ROW}><input type="checkbox" checked=${stamps}
          onChange=${(e) => setStamps(e.currentTarget.checked)} /> Timestamps</label>
        <a href="#" style="align-self: center" onClick=${download} aria-busy=${downloading ? 'true' : 'false'}>Download logs</a>
        <span role="status" class="muted" style="align-self: center">${downloading ? 'Preparing download…' : state.note}</span>
      </div>
      ${state.error && html`<${ErrorBox} error=${state.error} />`}
      ${downloadError && html`<${ErrorBox} error=${downloadError} />`}
      ${state.dropped && html`<p class="muted">Older lines were dropped from this view; the download has the whole log.</p>`}
      <pre ref=${pre} class="log" role="log" aria-live="off" aria-label="Log output" tabindex="0" onScroll=${onScroll}
        style="max-height: 32rem; overflow: auto; overflow-anchor: none; white-space: pre-wrap; word-break: break-all; margin: 0"></pre>
      ${!stuck && html`<button type="button" onClick=${toEnd}>Scroll to end</button>`}
    </section>`;
}
