// Tenants and their API keys, for an admin: each tenant's limits in force,
// links to its jobs and usage, and its keys (never their secrets), which
// can be revoked here.

import { api, query } from '../api.js';
import { h, table, link, badge, time, replace } from '../dom.js';

const LIMITS = [
  ['requests_per_minute', 'requests/min'],
  ['tokens_per_minute', 'tokens/min'],
  ['burst_requests', 'burst requests'],
  ['burst_tokens', 'burst tokens'],
  ['max_queued_jobs', 'queued at most'],
  ['max_running_jobs', 'running at most'],
];

function limits(l) {
  const set = LIMITS.filter(([field]) => l && l[field] != null).map(([field, name]) => `${name} ${l[field]}`);
  return set.length ? set.join(', ') : 'none';
}

function state(key) {
  if (key.revoked_at) return 'revoked';
  if (key.expires_at && new Date(key.expires_at) < new Date()) return 'expired';
  return 'active';
}

function tenantRow(t, keys) {
  const own = keys.filter((k) => k.tenant === t.name && state(k) === 'active').length;
  const name = encodeURIComponent(t.name);
  return h('tr', { 'data-tenant': t.name },
    h('td', {}, t.name),
    h('td', {}, t.source),
    h('td', {}, limits(t.limits)),
    h('td', {}, link(`#/tenants${query({ tenant: t.name })}`, `${own} active`)),
    h('td', {}, link(`#/jobs?tenant=${name}`, 'jobs'), ' · ', link(`#/usage?tenant=${name}`, 'usage')));
}

export default {
  name: 'tenants',
  title: 'Tenants',
  nav: 'tenants',
  path: /^tenants$/,
  needs: (ctx) => ctx.session.role === 'admin',
  render(root, { params }, ctx) {
    const tenant = params.get('tenant');
    const body = h('div');
    replace(root, h('h1', {}, 'Tenants'), body);
    const revoke = async (id) => {
      try {
        await api(`/v1/admin/keys/${encodeURIComponent(id)}/revoke`, { method: 'POST' });
      } catch (e) {
        ctx.error(root, e);
      }
      await load();
    };
    const keyRow = (k) => h('tr', { 'data-key': k.id },
      h('td', { class: 'mono' }, k.id),
      h('td', {}, k.name || '–'),
      h('td', {}, k.tenant ?? 'every tenant'),
      h('td', {}, k.role),
      h('td', {}, limits(k.limits)),
      h('td', {}, time(k.created_at)),
      h('td', {}, time(k.expires_at)),
      h('td', {}, badge(state(k))),
      h('td', {}, state(k) === 'active'
        ? h('button', { type: 'button', class: 'danger revoke', onclick: () => revoke(k.id) }, 'Revoke') : null));
    const load = async () => {
      try {
        const [{ data: tenants }, { data: keys }] = await Promise.all([
          api('/v1/admin/tenants'), api('/v1/admin/keys')]);
        const shown = tenant ? keys.filter((k) => k.tenant === tenant) : keys;
        replace(body,
          table(['Tenant', 'Source', 'Limits', 'Keys', ''], tenants.map((t) => tenantRow(t, keys)), { id: 'tenants' }),
          h('h2', {}, tenant ? `Keys of ${tenant}` : 'Keys'),
          tenant ? h('p', {}, link('#/tenants', 'Every key')) : null,
          table(['Key', 'Name', 'Tenant', 'Role', 'Limits', 'Made', 'Expires', 'State', ''],
            shown.map(keyRow), { id: 'keys', 'data-tenant': tenant ?? '' }));
      } catch (e) {
        ctx.error(root, e);
      }
    };
    load();
    return null;
  },
};
