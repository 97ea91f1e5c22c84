// One workflow run: its steps as a graph coloured by state, the failed step
// and its error, compensations, and each model step's job.

import { api, poll } from '../api.js';
import { h, svg, table, link, badge, millis, replace } from '../dom.js';

const ENDED = new Set(['succeeded', 'failed', 'cancelled', 'failed_compensation']);

// Columns by depth along `needs`, in the definition's order within each.
function layout(steps) {
  const depth = new Map();
  const of = (s) => {
    if (!depth.has(s.id)) {
      depth.set(s.id, 0);
      const needs = (s.needs ?? []).map((n) => steps.find((x) => x.id === n)).filter(Boolean);
      depth.set(s.id, needs.length ? 1 + Math.max(...needs.map(of)) : 0);
    }
    return depth.get(s.id);
  };
  const columns = [];
  for (const s of steps) (columns[of(s)] ??= []).push(s);
  const at = new Map();
  columns.forEach((col, x) => col.forEach((s, y) => at.set(s.id, { x, y })));
  return { at, columns };
}

function graph(steps) {
  const { at, columns } = layout(steps);
  const [w, hgt, gapX, gapY] = [170, 44, 50, 22];
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const width = columns.length * (w + gapX) + 20;
  const height = rows * (hgt + gapY) + 20;
  const box = (id) => {
    const p = at.get(id);
    return { x: 10 + p.x * (w + gapX), y: 10 + p.y * (hgt + gapY) };
  };
  const edges = steps.flatMap((s) => (s.needs ?? []).filter((n) => at.has(n)).map((n) => {
    const a = box(n);
    const b = box(s.id);
    return svg('line', { x1: a.x + w, y1: a.y + hgt / 2, x2: b.x, y2: b.y + hgt / 2, class: 'edge' });
  }));
  const nodes = steps.map((s) => {
    const p = box(s.id);
    // A compensation that ran shows in the step's status once it ends.
    const compensating = (s.attempts ?? []).some((a) => a.compensation) && !String(s.status).includes('compensat');
    return svg('g', { class: `step ${s.status ?? 'pending'}`, 'data-step': s.id },
      svg('rect', { x: p.x, y: p.y, width: w, height: hgt, rx: 6 }),
      svg('text', { x: p.x + 8, y: p.y + 18 }, s.id),
      svg('text', { x: p.x + 8, y: p.y + 34, class: 'sub' }, `${s.kind ?? ''} · ${s.status ?? 'pending'}${compensating ? ' · compensation ran' : ''}`));
  });
  return svg('svg', { class: 'graph', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' },
    svg('title', {}, 'The run\'s steps and what each needs'), edges, nodes);
}

function attemptRows(steps) {
  return steps.flatMap((s) => (s.attempts ?? []).map((a) => h('tr', { class: a.outcome, 'data-step': s.id },
    h('td', {}, s.id),
    h('td', {}, `${a.compensation ? 'compensation ' : ''}${a.attempt}`),
    h('td', {}, badge(a.outcome)),
    h('td', {}, a.started_at_ms && a.ended_at_ms ? millis(a.ended_at_ms - a.started_at_ms) : '–'),
    h('td', {}, a.error ? `${a.error.class}: ${a.error.message}` : '–'),
    h('td', { class: 'mono' }, a.job ? link(`#/jobs/${encodeURIComponent(a.effect_id)}`, `${a.effect_id} (${a.job.status}${a.job.node ? ` on ${a.job.node}` : ''})`) : '–'))));
}

export default {
  name: 'run',
  title: 'Run',
  path: /^runs\/(.+)$/,
  render(root, { match }, ctx) {
    const id = decodeURIComponent(match[1]);
    const path = `/v1/workflows/runs/${encodeURIComponent(id)}`;
    let ended = false;
    const act = async (url, button) => {
      button.disabled = true;
      try {
        await api(url, { method: 'POST' });
      } catch (e) {
        ctx.error(root, e);
      }
    };
    return poll(async () => {
      if (ended) return;
      try {
        const run = await api(path);
        ended = ENDED.has(run.status);
        const failed = run.steps.find((s) => ['failed', 'compensation_failed'].includes(s.status));
        const cancel = !ended && ctx.can('submitter')
          ? h('button', { type: 'button', id: 'cancel-run', class: 'danger', onclick: (e) => act(`${path}/cancel`, e.target) }, 'Cancel run') : null;
        const replay = ['failed', 'failed_compensation'].includes(run.status) && ctx.session.role === 'admin'
          ? h('button', { type: 'button', id: 'replay-run', onclick: (e) => { ended = false; act(`/v1/admin/workflows/runs/${encodeURIComponent(id)}/replay`, e.target); } }, 'Replay run') : null;
        replace(root,
          h('h1', {}, 'Run ', h('span', { class: 'mono', id: 'run-id' }, run.id), ' ', badge(run.status)),
          h('p', { id: 'where', class: ended && run.status !== 'succeeded' ? 'stopped' : 'now' },
            failed ? `Stopped at step ${failed.id}: ${typeof run.error === 'string' ? run.error : JSON.stringify(run.error)}`
              : ended ? `Ended ${run.status}.` : 'Running.'),
          cancel, replay,
          h('dl', { class: 'facts' }, [['Workflow', `${run.workflow} v${run.version}`], ['Tenant', run.tenant],
            ['Priority', run.priority], ['Started', new Date(run.started_at_ms).toLocaleString()],
            ['Took', run.finished_at_ms ? millis(run.finished_at_ms - run.started_at_ms) : '–'],
            ['Cost', `$${(run.cost_usd ?? 0).toFixed(6)}`], ['Replays', run.replays]]
            .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))])),
          h('h2', {}, 'Steps'),
          graph(run.steps),
          h('h2', {}, 'Attempts and compensations'),
          table(['Step', 'Attempt', 'Outcome', 'Took', 'Error', 'Job'], attemptRows(run.steps), { id: 'attempts' }),
          run.output !== undefined && run.output !== null ? [h('h2', {}, 'Output'), h('pre', { id: 'output' }, JSON.stringify(run.output, null, 2))] : null);
      } catch (e) {
        ended = true;
        replace(root, h('h1', {}, 'Run ', h('span', { class: 'mono' }, id)));
        ctx.error(root, e);
      }
    });
  },
};
