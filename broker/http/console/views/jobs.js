// Jobs newest first, filtered by status, model, priority, node, tenant and
// creation time, a page at a time with the API's cursor; an id goes
// straight to its job.

import { query } from '../api.js';
import { h, link, badge, time, replace } from '../dom.js';
import { pagedTable } from '../paged.js';

const STATUSES = ['', 'queued', 'assigned', 'running', 'succeeded', 'failed', 'expired', 'timed_out', 'cancelled'];
const PRIORITIES = ['', 'critical', 'high', 'normal', 'batch'];
const FIELDS = ['status', 'model', 'priority', 'node', 'tenant', 'since', 'until'];

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
  const priority = h('select', { name: 'priority', id: 'f-priority' },
    PRIORITIES.map((p) => h('option', { value: p, selected: p === (params.get('priority') ?? '') }, p || 'any priority')));
  const since = input('since', { type: 'datetime-local', value: toLocal(params.get('since')) });
  const until = input('until', { type: 'datetime-local', value: toLocal(params.get('until')) });
  const el = h('form', { id: 'job-filter', class: 'filters' },
    h('label', {}, 'Id ', input('id', { placeholder: 'job id' })),
    h('label', {}, 'Status ', status),
    h('label', {}, 'Model ', input('model')),
    h('label', {}, 'Priority ', priority),
    h('label', {}, 'Node ', input('node')),
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
    const filter = Object.fromEntries(FIELDS.map((f) => [f, params.get(f)]));
    const { list, more } = pagedTable({
      id: 'jobs',
      headings: ['Created', 'Id', 'Model', 'Tenant', 'Priority', 'Status', 'Attempt', 'Node'],
      path: (cursor) => `/v1/jobs${query({ ...filter, cursor, limit: 50 })}`,
      row: jobRow,
      empty: 'No jobs match.',
      older: 'Older jobs',
    }, ctx, root);
    // What the rows answer, for whoever reads the page (and its tests).
    list.dataset.filter = query(filter);
    replace(root, h('h1', {}, 'Jobs'), form(params, ctx), list, more);
    return null;
  },
};
