// The console's frame: sign-in, the navigation, and a router that shows one
// view at a time. Views live in views/, one file each.

import { api, setCsrf, ApiError } from './api.js';
import { h, replace } from './dom.js';
import views from './views/index.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signOut = document.getElementById('sign-out');
let session = null;
let stop = null;

function spansTenants() {
  return session.role === 'admin' || session.role === 'operator';
}

const ctx = {
  get session() { return session; },
  spansTenants,
  can(role) {
    const r = session.role;
    if (r === 'admin') return true;
    if (role === 'reader') return true;
    return r === role;
  },
  go(hash) { window.location.hash = hash; },
  error(root, e) {
    if (e instanceof ApiError && e.status === 401) return showSignIn(e.message);
    root.prepend(h('p', { class: 'error', role: 'alert' }, `${e.code ?? 'error'}: ${e.message}`));
  },
};

function route() {
  if (!session) return;
  if (stop) stop();
  stop = null;
  const [path, search] = window.location.hash.replace(/^#\/?/, '').split('?');
  const params = new URLSearchParams(search ?? '');
  const shown = views.filter((v) => !v.needs || v.needs(ctx));
  let match = null;
  const view = shown.find((v) => (match = v.path.exec(path || 'overview')));
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('here', a.dataset.view === view?.name);
  if (!view) {
    replace(main, h('p', { class: 'error' }, 'No such page.'));
    return;
  }
  // Each view draws into an element of its own: whatever a view still
  // had in flight when the user moved on lands in a detached element.
  const root = h('div', { class: 'view' });
  replace(main, root);
  document.title = `${view.title} · Switchyard`;
  stop = view.render(root, { match, params }, ctx) ?? null;
}

function showNav() {
  const shown = views.filter((v) => v.nav && (!v.needs || v.needs(ctx)));
  replace(nav, shown.map((v) => h('a', { href: `#/${v.nav}`, 'data-view': v.name }, v.title)));
  who.textContent = `${session.role}${session.tenant ? ` · ${session.tenant}` : ''}`;
  signOut.hidden = false;
}

async function start() {
  try {
    session = await api('/console/session');
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) return showSignIn();
    replace(main, h('p', { class: 'error' }, `The broker did not answer: ${e.message}`));
    return;
  }
  setCsrf(session.csrf_token);
  showNav();
  route();
}

function showSignIn(message) {
  if (stop) stop();
  stop = null;
  session = null;
  replace(nav);
  who.textContent = '';
  signOut.hidden = true;
  const key = h('input', { id: 'key', type: 'password', autocomplete: 'off', placeholder: 'sy_…', required: true });
  const note = h('p', { class: 'error', role: 'alert', hidden: !message }, message ?? '');
  const form = h('form', { id: 'sign-in', class: 'card' },
    h('h1', {}, 'Sign in'),
    h('label', { for: 'key' }, 'API key'),
    key,
    h('button', { type: 'submit' }, 'Sign in'),
    note);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const response = await fetch('/console/session', {
        method: 'POST',
        headers: { Authorization: `Bearer ${key.value.trim()}` },
        credentials: 'same-origin',
      });
      key.value = '';
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        note.textContent = body?.error?.message ?? `Refused (${response.status})`;
        note.hidden = false;
        return;
      }
      await start();
    } catch (e) {
      note.textContent = e.message;
      note.hidden = false;
    }
  });
  replace(main, form);
  key.focus();
}

signOut.addEventListener('click', async () => {
  await fetch('/console/session', { method: 'DELETE', credentials: 'same-origin' });
  setCsrf(null);
  showSignIn();
});

window.addEventListener('hashchange', route);
start();
