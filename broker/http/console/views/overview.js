// Per model and priority: jobs waiting and the oldest wait, arrivals,
// running jobs, nodes wanted beside nodes serving, and dead letters; with
// each model's queue over the minutes the page has been open.

import { api, poll } from '../api.js';
import { h, svg, table, millis, replace } from '../dom.js';

const HISTORY = 150; // samples: five minutes at one every 2 s

function sparkline(points) {
  const width = 160;
  const height = 28;
  const top = Math.max(1, ...points);
  const step = width / Math.max(1, HISTORY - 1);
  const start = width - step * (points.length - 1);
  const path = points.map((v, i) => `${i ? 'L' : 'M'}${(start + i * step).toFixed(1)},${(height - (v / top) * (height - 2) - 1).toFixed(1)}`).join(' ');
  return svg('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' },
    svg('title', {}, `queued, last ${points.length} samples; peak ${top}`),
    svg('path', { d: path || 'M0,0' }));
}

function operatorView(root, ctx) {
  const history = new Map();
  const summary = h('div', { class: 'cards' });
  const body = h('div');
  replace(root, h('h1', {}, 'Overview'), summary, body);
  return poll(async () => {
    try {
      const [{ queues }, { nodes }, dead] = await Promise.all([
        api('/v1/queues'),
        api('/v1/nodes'),
        ctx.session.role === 'admin' ? api('/v1/admin/dead-letters?limit=1000') : Promise.resolve(null),
      ]);
      const live = nodes.filter((n) => n.state === 'ready').length;
      replace(summary,
        card('Queued', queues.reduce((s, q) => s + q.queued, 0), 'queued-total'),
        card('Running', queues.reduce((s, q) => s + q.running, 0)),
        card('Nodes ready', `${live} of ${nodes.length}`),
        dead ? card('Dead letters', dead.dead_letters.length, 'dead-total') : null);
      const rows = [];
      for (const q of queues) {
        const points = history.get(q.model) ?? [];
        points.push(q.queued);
        if (points.length > HISTORY) points.shift();
        history.set(q.model, points);
        const lanes = (q.priorities ?? []).filter((p) => p.queued > 0);
        rows.push(h('tr', { class: 'model', 'data-model': q.model },
          h('td', {}, h('a', { href: `#/jobs?model=${encodeURIComponent(q.model)}` }, q.model)),
          h('td', {}, lanes.length ? lanes.map((p) => h('div', {}, `${p.priority}: ${p.queued}, oldest ${millis(p.oldest_ms)}`)) : '–'),
          h('td', { class: 'queued' }, String(q.queued)),
          h('td', {}, String(q.running)),
          h('td', {}, q.arrivals_per_s.toFixed(1)),
          h('td', {}, `${q.live_nodes} / ${q.desired_nodes}`),
          h('td', {}, sparkline(points))));
      }
      replace(body, table(['Model', 'Waiting by priority', 'Queued', 'Running', 'Arrivals/s', 'Nodes live / wanted', 'Queued, last minutes'], rows, { id: 'queues' }));
    } catch (e) {
      ctx.error(root, e);
    }
  });
}

function card(label, value, id) {
  return h('div', { class: 'card stat', id }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, String(value)));
}

// A tenant's key sees its own jobs only: how many wait and run now.
function tenantView(root, ctx) {
  const body = h('div', { class: 'cards' });
  replace(root, h('h1', {}, 'Overview'), body);
  const count = async (status) => {
    const page = await api(`/v1/jobs?status=${status}&limit=200`);
    return page.next_cursor ? '200+' : page.data.length;
  };
  return poll(async () => {
    try {
      const [queued, assigned, running] = await Promise.all(['queued', 'assigned', 'running'].map(count));
      replace(body, card('Your jobs queued', queued, 'queued-total'), card('Assigned', assigned), card('Running', running));
    } catch (e) {
      ctx.error(root, e);
    }
  }, 3000);
}

export default {
  name: 'overview',
  title: 'Overview',
  nav: 'overview',
  path: /^overview$/,
  render(root, _, ctx) {
    return ctx.spansTenants() ? operatorView(root, ctx) : tenantView(root, ctx);
  },
};
