// Sign in with a bearer token (pasted, or from a `skiff dashboard` link: /ui/#token=...).
import { html, useState } from '../../vendor/preact-htm.js';
import { token, get, takeUnauthorized } from '../api.js';
import { navigate } from '../router.js';
import { ErrorBox } from '../components.js';

export default function Signin() {
  const [value, setValue] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [ended] = useState(takeUnauthorized);
  async function submit(e) {
    e.preventDefault();
    const t = value.trim();
    if (!t) { setError(new Error('Paste a token first.')); return; }
    setBusy(true);
    setError(null);
    token.set(t);
    try {
      // Any authenticated read proves the token; /api answers every signed-in identity.
      await get('/api');
      navigate('/ui/', { replace: true });
    } catch (err) {
      takeUnauthorized(); // this attempt's 401 is said below, not as an ended session
      token.clear();
      setError(err);
      history.replaceState(null, '', '/ui/signin');
    } finally {
      setBusy(false);
    }
  }
  return html`<form class="card signin" onSubmit=${submit}>
    <h1>Skiff</h1>
    ${ended ? html`<p role="status">Your session ended: the API answered <em>${ended.message}</em>. Sign in again.</p>` : null}
    <p class="muted">Sign in with a bearer token: the admin token from your kubeconfig, one from${' '}
      <code>skiff token create</code>, or open the link <code>skiff dashboard</code> prints.${' '}
      The token stays in this tab only.</p>
    <label for="token">Token</label>
    <input id="token" type="password" autocomplete="off" spellcheck="false" value=${value}
      onInput=${(e) => setValue(e.currentTarget.value)} autofocus />
    <${ErrorBox} error=${error} />
    <button type="submit" class="primary" disabled=${busy}>Sign in</button>
  </form>`;
}
