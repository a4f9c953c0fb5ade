// The dashboard's entry: sign-in link handling, the header, and the routes.
import { html, render, useState, useEffect, useErrorBoundary } from '../vendor/preact-htm.js';
import { token, setUnauthorizedHandler, can, post } from './api.js';
import { startRouter, navigate, useRoute, match } from './router.js';
import { ErrorBox } from './components.js';
import Overview from './views/overview.js';
import Apps from './views/apps.js';
import Workloads from './views/workloads.js';
import Events from './views/events.js';
import Signin from './views/signin.js';

// A sign-in link is /ui/#token=TOKEN: the fragment never reaches the server. Keep the
// token in this tab's session storage and take it out of the address bar at once.
function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  token.set(decodeURIComponent(m[1]));
  history.replaceState(null, '', location.pathname === '/ui/signin' ? '/ui/' : location.pathname + location.search);
}

// UI-B's views load on first use: each module's default export is the view component
// (props: params, query).
function lazy(load) {
  let mod = null;
  let failed = null;
  let pending = null;
  const start = () => {
    if (!mod && !failed && !pending) {
      pending = load().then((m) => { mod = m; }, (e) => { failed = e; }).finally(() => { pending = null; });
    }
    return pending;
  };
  function Lazy(props) {
    const [, bump] = useState(0);
    start();
    // Drawn as loading: draw again once loaded, even if that happened before this effect.
    const drawnLoading = !mod && !failed;
    useEffect(() => { if (drawnLoading) Promise.resolve(start()).then(() => bump((n) => n + 1)); }, []);
    if (failed) return html`<${ErrorBox} error=${failed} title="This page could not be loaded" />`;
    if (!mod) return html`<p class="muted" aria-busy="true">Loading…</p>`;
    const View = mod.default || Object.values(mod).find((v) => typeof v === 'function');
    return html`<${View} ...${props} />`;
  }
  Lazy.preload = () => { start(); };
  return Lazy;
}
const Pod = lazy(() => import('./views/pod.js'));
const Node = lazy(() => import('./views/node.js'));
const Nodes = lazy(() => import('./views/nodes.js'));

const ROUTES = [
  ['/ui/', Overview],
  ['/ui/apps', Apps],
  ['/ui/workloads', Workloads],
  ['/ui/events', Events],
  ['/ui/nodes', Nodes],
  ['/ui/nodes/:name', Node],
  ['/ui/pods/:namespace/:name', Pod],
];

const NAV = [['/ui/', 'Overview'], ['/ui/apps', 'Apps'], ['/ui/workloads', 'Workloads'], ['/ui/nodes', 'Nodes'], ['/ui/events', 'Events']];

function Header({ path }) {
  const [who, setWho] = useState(null);
  const [readOnly, setReadOnly] = useState(false);
  useEffect(() => {
    // Read-only: may not create apps or patch deployments in the default namespace.
    Promise.all([
      can('create', 'apps', { group: 'skiff.dev', namespace: 'default' }),
      can('patch', 'deployments', { group: 'apps', namespace: 'default' }),
    ]).then(([a, b]) => setReadOnly(!a && !b), () => {});
    fetchWho().then(setWho, () => {});
  }, []);
  const active = (href) => (href === '/ui/' ? path === '/ui/' : path.startsWith(href));
  return html`<header class="top">
    <a class="brand" href="/ui/">Skiff</a>
    <nav aria-label="Main">
      ${NAV.map(([href, label]) => html`<a href=${href} aria-current=${active(href) ? 'page' : undefined}>${label}</a>`)}
    </nav>
    <div class="who">
      ${readOnly ? html`<span class="badge warn" title="This identity may not change anything">read-only</span>` : null}
      ${who ? html`<span class="muted user" title=${(who.groups || []).join(', ')}>${who.username}</span>` : null}
      <button type="button" onClick=${() => { token.clear(); navigate('/ui/signin'); }}>Sign out</button>
    </div>
  </header>`;
}

async function fetchWho() {
  const r = await post('/apis/authentication.k8s.io/v1/selfsubjectreviews', {
    apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview',
  });
  return r?.status?.userInfo || null;
}

// A view that throws while drawing shows the error (and the header stays), never a blank page.
function Boundary({ children }) {
  const [error, reset] = useErrorBoundary((e) => console.error(e));
  if (!error) return children;
  return html`<${ErrorBox} error=${error} title="This page failed" />
    <button type="button" onClick=${reset}>Try again</button>`;
}

const TITLES = [['/ui/apps', 'Apps'], ['/ui/workloads', 'Workloads'], ['/ui/nodes', 'Nodes'], ['/ui/events', 'Events'],
  ['/ui/pods/', 'Pod'], ['/ui/signin', 'Sign in']];

function App() {
  const { path, query } = useRoute();
  useEffect(() => {
    const t = TITLES.find(([p]) => path.startsWith(p));
    const name = path.startsWith('/ui/pods/') || path.startsWith('/ui/nodes/') ? decodeURIComponent(path.split('/').pop()) : null;
    document.title = `${name || (t ? t[1] : 'Overview')} · Skiff`;
  }, [path]);
  const signedIn = !!token.get();
  useEffect(() => {
    if (!signedIn && path !== '/ui/signin') navigate('/ui/signin', { replace: true });
  }, [signedIn, path]);
  if (path === '/ui/signin' || !signedIn) {
    return html`<main id="main" class="signin-page"><${Signin} /></main>`;
  }
  let view = null;
  for (const [pattern, View] of ROUTES) {
    const params = match(pattern, path);
    if (params) { view = html`<${View} params=${params} query=${query} />`; break; }
  }
  if (!view) view = html`<h1>Not found</h1><p>No page at <code>${path}</code>. <a href="/ui/">Go to the overview</a>.</p>`;
  return html`<${Header} path=${path} />
    <main id="main" key=${token.get()}><${Boundary} key=${path}>${view}</${Boundary}></main>`;
}

takeTokenFromFragment();
if (location.pathname === '/ui') history.replaceState(null, '', '/ui/');
setUnauthorizedHandler(() => navigate('/ui/signin'));
startRouter();
render(html`<${App} />`, document.getElementById('app'));
// Once the first view is up, fetch the other pages' modules while idle, so opening a pod or
// a node later does not wait on its imports one level at a time.
(window.requestIdleCallback || ((f) => setTimeout(f, 1500)))(() => { Pod.preload(); Node.preload(); Nodes.preload(); });
