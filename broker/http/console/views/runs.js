// Workflow runs newest first, filtered by workflow and status, a page at a
// time; a run id goes straight to the run.

import { query } from '../api.js';
import { h, link, badge, replace } from '../dom.js';
import { pagedTable } from '../paged.js';

const STATUSES = ['', 'running', 'succeeded', 'failed', 'cancelled', 'failed_compensation'];

function runRow(r) {
  return h('tr', { 'data-run': r.id },
    h('td', {}, new Date(r.started_at_ms).toLocaleString()),
    h('td', { class: 'mono' }, link(`#/runs/${encodeURIComponent(r.id)}`, r.id)),
    h('td', {}, `${r.workflow} v${r.version}`),
    h('td', {}, r.tenant),
    h('td', {}, badge(r.status)),
    h('td', {}, typeof r.error === 'string' ? r.error : (r.error ? JSON.stringify(r.error) : '–')));
}

export default {
  name: 'runs',
  title: 'Runs',
  nav: 'runs',
  path: /^runs$/,
  render(root, { params }, ctx) {
    const workflow = h('input', { name: 'workflow', id: 'r-workflow', value: params.get('workflow') ?? '' });
    const status = h('select', { name: 'status', id: 'r-status' },
      STATUSES.map((s) => h('option', { value: s, selected: s === (params.get('status') ?? '') }, s || 'any status')));
    const id = h('input', { name: 'id', id: 'r-id', placeholder: 'run id' });
    const form = h('form', { class: 'filters', id: 'run-filter' },
      h('label', {}, 'Id ', id), h('label', {}, 'Workflow ', workflow), h('label', {}, 'Status ', status),
      h('button', { type: 'submit' }, 'Search'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (id.value.trim()) return ctx.go(`#/runs/${encodeURIComponent(id.value.trim())}`);
      ctx.go(`#/runs${query({ workflow: workflow.value.trim(), status: status.value })}`);
    });
    const { list, more } = pagedTable({
      id: 'runs',
      headings: ['Started', 'Run', 'Workflow', 'Tenant', 'Status', 'Error'],
      path: (cursor) => `/v1/workflows/runs${query({ workflow: params.get('workflow'), status: params.get('status'), cursor })}`,
      row: runRow,
      empty: 'No runs match.',
      older: 'Older runs',
    }, ctx, root);
    replace(root, h('h1', {}, 'Workflow runs'), form, list, more);
    return null;
  },
};
