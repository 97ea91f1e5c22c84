// Usage and cost per day, model and tenant over a period: a tenant's key
// sees its own; an admin or operator every tenant's, or one.

import { api, query } from '../api.js';
import { h, table, row, replace } from '../dom.js';

export default {
  name: 'usage',
  title: 'Usage',
  nav: 'usage',
  path: /^usage$/,
  render(root, { params }, ctx) {
    const days = Number(params.get('days') ?? 7);
    const tenant = h('input', { name: 'tenant', id: 'u-tenant', value: params.get('tenant') ?? '' });
    const period = h('select', { name: 'days', id: 'u-days' },
      [1, 7, 30, 90].map((d) => h('option', { value: d, selected: d === days }, `last ${d} day${d > 1 ? 's' : ''}`)));
    const form = h('form', { class: 'filters' },
      ctx.spansTenants() ? h('label', {}, 'Tenant ', tenant) : null,
      h('label', {}, 'Period ', period), h('button', { type: 'submit' }, 'Show'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      ctx.go(`#/usage${query({ tenant: tenant.value.trim(), days: period.value })}`);
    });
    const body = h('div');
    replace(root, h('h1', {}, 'Usage'), form, body);
    const since = new Date(Date.now() - days * 86400000).toISOString();
    api(`/v1/usage${query({ tenant: params.get('tenant'), since })}`).then((u) => {
      replace(body,
        h('p', { id: 'total-cost', class: 'now' }, `Total: $${u.total_cost_usd.toFixed(6)}`),
        table(['Day', 'Model', 'Tenant', 'Requests', 'Prompt tokens', 'Completion tokens', 'Engine time', 'Cost', 'Cache hits'],
          u.data.map((d) => row(d.day, d.model, d.tenant, d.requests, d.prompt_tokens, d.completion_tokens,
            `${(d.engine_ms / 1000).toFixed(1)} s`, `$${d.cost_usd.toFixed(6)}`, d.cache_hits)), { id: 'usage' }));
    }, (e) => ctx.error(root, e));
    return null;
  },
};
