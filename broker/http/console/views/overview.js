// Per model and priority: jobs waiting and the oldest wait, arrivals,
// running jobs, nodes wanted beside nodes serving, and dead letters; with
// each model's queue over the minutes the page has been open, and the jobs
// that ended per minute over the last hour by outcome.

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

const OUTCOMES = ['succeeded', 'failed', 'timed_out', 'expired', 'cancelled'];

// Jobs ended per minute over the last hour, stacked by outcome.
function outcomeChart(summary) {
  const width = 720;
  const height = 90;
  const start = Date.parse(summary.since);
  const bar = (width - 20) / 60;
  const top = Math.max(1, ...summary.minutes.map((m) => OUTCOMES.reduce((n, o) => n + (m[o] ?? 0), 0)));
  const bars = summary.minutes.flatMap((m) => {
    const x = 10 + Math.floor((Date.parse(m.minute) - start) / 60000) * bar;
    let y = height - 14;
    return OUTCOMES.filter((o) => m[o]).map((o) => {
      const hgt = (m[o] / top) * (height - 24);
      y -= hgt;
      return svg('rect', { x: x.toFixed(1), y: y.toFixed(1), width: Math.max(1, bar - 1).toFixed(1), height: hgt.toFixed(1), class: o },
        svg('title', {}, `${m.minute}: ${m[o]} ${o}`));
    });
  });
  return svg('svg', { class: 'outcomes', id: 'outcomes', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' },
    svg('title', {}, 'Jobs ended per minute over the last hour, by outcome'),
    bars,
    svg('line', { x1: 10, y1: height - 14, x2: width - 10, y2: height - 14, class: 'axis' }),
    svg('text', { x: 10, y: height - 2 }, '1 h ago'),
    svg('text', { x: width - 10, y: height - 2, 'text-anchor': 'end' }, 'now'),
    svg('text', { x: width - 10, y: 10, 'text-anchor': 'end' }, `peak ${top}/min`));
}

// The outcome chart with its totals, refreshed every 10 s.
function outcomes(ctx) {
  const el = h('section', { class: 'card' });
  const stop = poll(async () => {
    try {
      const summary = await api('/v1/summary');
      const totals = OUTCOMES.filter((o) => summary.totals[o]).map((o) => `${summary.totals[o]} ${o}`);
      replace(el, h('h2', {}, 'Jobs ended, last hour'), outcomeChart(summary),
        h('p', { id: 'outcome-totals', class: 'muted' }, totals.join(' · ') || 'None.'));
    } catch (e) {
      ctx.error(el, e);
    }
  }, 10000);
  return { el, stop };
}

function operatorView(root, ctx) {
  const history = new Map();
  const summary = h('div', { class: 'cards' });
  const body = h('div');
  const chart = outcomes(ctx);
  replace(root, h('h1', {}, 'Overview'), summary, body, chart.el);
  const stop = poll(async () => {
    try {
      const [{ queues }, { nodes }, dead] = await Promise.all([
        api('/v1/queues'),
        api('/v1/nodes'),
        ctx.session.role === 'admin' ? api('/v1/admin/dead-letters?limit=1000') : Promise.resolve(null),
      ]);
      const live = nodes.filter((n) => n.state === 'ready').length;
      replace(summary,
        card('Queued', queues.reduce((s, q) => s + q.queued, 0), 'queued-total'),
        // A node serving several models counts its jobs under each model's
        // signal: the nodes' own counts add up to what runs.
        card('Running', nodes.reduce((s, n) => s + n.running, 0), 'running-total'),
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
  return () => {
    stop();
    chart.stop();
  };
}

function card(label, value, id) {
  return h('div', { class: 'card stat', id }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, String(value)));
}

// A tenant's key sees its own jobs only: how many wait and run now.
function tenantView(root, ctx) {
  const body = h('div', { class: 'cards' });
  const chart = outcomes(ctx);
  replace(root, h('h1', {}, 'Overview'), body, chart.el);
  const count = async (status) => {
    const page = await api(`/v1/jobs?status=${status}&limit=200`);
    return page.next_cursor ? '200+' : page.data.length;
  };
  const stop = poll(async () => {
    try {
      const [queued, assigned, running] = await Promise.all(['queued', 'assigned', 'running'].map(count));
      replace(body, card('Your jobs queued', queued, 'queued-total'), card('Assigned', assigned), card('Running', running));
    } catch (e) {
      ctx.error(root, e);
    }
  }, 3000);
  return () => {
    stop();
    chart.stop();
  };
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
