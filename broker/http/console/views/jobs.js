// Jobs newest first, filtered by status, model, tenant and creation time,
// a page at a time with the API's cursor; an id goes straight to its job.

import { api, query } from '../api.js';
import { h, table, link, badge, time, replace } from '../dom.js';

const STATUSES = ['', 'queued', 'assigned', 'running', 'succeeded', 'failed', 'expired', 'timed_out', 'cancelled'];
const FIELDS = ['status', 'model', 'tenant', 'since', 'until'];

// datetime-local (the browser's zone) to RFC 3339, and back.
const toRfc3339 = (local) => (local ? new Date(local).toISOString() : '');
const toLocal = (iso) => {
  if (!iso) return '';
  const d = new Date(iso);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
};

function form(params, ctx) {
  const input = (name, attrs = {}) => h('input', { name, id: `f-${name}`, value: params.get(name) ?? '', ...attrs });
  const status = h('select', { name: 'status', id: 'f-status' },
    STATUSES.map((s) => h('option', { value: s, selected: s === (params.get('status') ?? '') }, s || 'any status')));
  const since = input('since', { type: 'datetime-local', value: toLocal(params.get('since')) });
  const until = input('until', { type: 'datetime-local', value: toLocal(params.get('until')) });
  const el = h('form', { id: 'job-filter', class: 'filters' },
    h('label', {}, 'Id ', input('id', { placeholder: 'job id' })),
    h('label', {}, 'Status ', status),
    h('label', {}, 'Model ', input('model')),
    ctx.spansTenants() ? h('label', {}, 'Tenant ', input('tenant')) : null,
    h('label', {}, 'From ', since),
    h('label', {}, 'Until ', until),
    h('button', { type: 'submit' }, 'Search'));
  el.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(el);
    const id = String(data.get('id') ?? '').trim();
    if (id) return ctx.go(`#/jobs/${encodeURIComponent(id)}`);
    const next = new URLSearchParams();
    for (const name of FIELDS) {
      let value = String(data.get(name) ?? '').trim();
      if (name === 'since' || name === 'until') value = toRfc3339(value);
      if (value) next.set(name, value);
    }
    ctx.go(`#/jobs?${next}`);
  });
  return el;
}

function jobRow(j) {
  return h('tr', { 'data-job': j.id },
    h('td', {}, time(j.created_at)),
    h('td', { class: 'mono' }, link(`#/jobs/${encodeURIComponent(j.id)}`, j.id)),
    h('td', {}, j.model),
    h('td', {}, j.tenant),
    h('td', {}, j.priority),
    h('td', {}, badge(j.status)),
    h('td', {}, String(j.attempt)),
    h('td', {}, j.node ?? '–'));
}

export default {
  name: 'jobs',
  title: 'Jobs',
  nav: 'jobs',
  path: /^jobs$/,
  render(root, { params }, ctx) {
    const rows = h('tbody');
    const more = h('button', { type: 'button', id: 'older', hidden: true }, 'Older jobs');
    replace(root, h('h1', {}, 'Jobs'), form(params, ctx),
      table(['Created', 'Id', 'Model', 'Tenant', 'Priority', 'Status', 'Attempt', 'Node'], [], { id: 'jobs' }),
      more);
    const list = root.querySelector('#jobs');
    list.querySelector('tbody').replaceWith(rows);
    const filter = Object.fromEntries(FIELDS.map((f) => [f, params.get(f)]));
    // What the rows answer, for whoever reads the page (and its tests).
    list.dataset.filter = query(filter);
    let cursor = null;
    const load = async () => {
      try {
        const page = await api(`/v1/jobs${query({ ...filter, cursor, limit: 50 })}`);
        rows.append(...page.data.map(jobRow));
        if (!rows.children.length) rows.append(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No jobs match.')));
        cursor = page.next_cursor;
        more.hidden = !cursor;
        list.dataset.loaded = 'true';
      } catch (e) {
        ctx.error(root, e);
      }
    };
    more.addEventListener('click', load);
    load();
    return null;
  },
};
