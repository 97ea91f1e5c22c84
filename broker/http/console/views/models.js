// The live registry for an admin: models, aliases with their weights, and
// each alias's latest rollout with the figures its guards judge it by; a
// running rollout can be rolled back here.

import { api, poll } from '../api.js';
import { h, table, row, badge, millis, replace } from '../dom.js';

function usd(micros) {
  return micros === undefined || micros === null ? '–' : `$${(micros / 1e6).toFixed(6)}`;
}

// A running rollout: each guard's figure for both versions beside its
// limit, and the samples each version needs before any guard decides. An
// ended one: what sent it back, if anything did.
function guards(r) {
  const by = r.rolled_back_by;
  if (by) return `${by.guard}: new ${by.new} vs old ${by.old} (limit ${by.limit}; ${by.new_jobs} and ${by.old_jobs} jobs)`;
  const f = r.figures;
  if (!f) return '–';
  const g = r.guards;
  const rate = (v) => (v.jobs ? `${((100 * v.failed) / v.jobs).toFixed(1)}%` : '–');
  const lines = [`jobs: new ${f.new.jobs}, old ${f.old.jobs} (${g.min_samples} each before judging)`];
  if (g.max_error_rate_increase != null) {
    lines.push(`error rate: new ${rate(f.new)}, old ${rate(f.old)} (at most ${(100 * g.max_error_rate_increase).toFixed(1)} points more)`);
  }
  if (g.max_p95_latency_ratio != null) {
    lines.push(`p95 engine time: new ${millis(f.new.p95_engine_ms)}, old ${millis(f.old.p95_engine_ms)} (at most ×${g.max_p95_latency_ratio})`);
  }
  if (g.max_cost_ratio != null) {
    lines.push(`mean cost: new ${usd(f.new.mean_cost_micros)}, old ${usd(f.old.mean_cost_micros)} (at most ×${g.max_cost_ratio})`);
  }
  return h('ul', { class: 'guards' }, lines.map((l) => h('li', {}, l)));
}

function rolloutRow(r, ctx, root) {
  const back = r.status === 'running'
    ? h('button', { type: 'button', class: 'danger roll-back', onclick: async (e) => {
      e.target.disabled = true;
      try {
        await api(`/v1/admin/aliases/${encodeURIComponent(r.alias)}/rollback`, { method: 'POST' });
      } catch (err) {
        ctx.error(root, err);
      }
    } }, 'Roll back') : null;
  return h('tr', { 'data-alias': r.alias },
    h('td', {}, r.alias),
    h('td', {}, `${r.from} → ${r.to}`),
    h('td', {}, badge(r.status)),
    h('td', {}, `${r.steps[r.step]}% (step ${r.step + 1} of ${r.steps.length}), every ${r.every}`),
    h('td', {}, r.status === 'running' ? `${millis(Date.now() - r.step_started_at_ms)} into the step` : new Date(r.ended_at_ms).toLocaleString()),
    h('td', {}, guards(r)),
    h('td', {}, back));
}

export default {
  name: 'models',
  title: 'Models',
  nav: 'models',
  path: /^models$/,
  needs: (ctx) => ctx.session.role === 'admin',
  render(root, _, ctx) {
    const body = h('div');
    replace(root, h('h1', {}, 'Models'), body);
    return poll(async () => {
      try {
        const reg = await api('/v1/admin/models');
        replace(body,
          h('p', { class: 'muted' }, `Registry revision ${reg.revision}`),
          h('h2', {}, 'Aliases'),
          table(['Alias', 'Targets', 'Sticky'], reg.aliases.map((a) => row(a.name,
            a.targets.map((t) => `${t.model} ${t.weight}%`).join(', '), a.sticky ?? 'request')), { id: 'aliases' }),
          h('h2', {}, 'Rollouts'),
          table(['Alias', 'Versions', 'Status', 'Share of the new version', 'When', 'Guards', ''],
            reg.rollouts.map((r) => rolloutRow(r, ctx, root)), { id: 'rollouts' }),
          h('h2', {}, 'Models'),
          table(['Model', 'Kind', 'Price per 1k (in / out)', 'Max attempts'], reg.models.map((m) => row(m.name, m.kind,
            m.price ? `$${m.price.prompt_per_1k ?? 0} / $${m.price.completion_per_1k ?? 0}` : '–', m.max_attempts ?? '–')), { id: 'models' }));
      } catch (e) {
        ctx.error(root, e);
      }
    }, 5000);
  },
};
