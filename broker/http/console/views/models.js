// The live registry for an admin: models, aliases with their weights, and
// each alias's latest rollout; a running rollout can be rolled back here.

import { api, poll } from '../api.js';
import { h, table, row, badge, millis, replace } from '../dom.js';

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
  const by = r.rolled_back_by;
  return h('tr', { 'data-alias': r.alias },
    h('td', {}, r.alias),
    h('td', {}, `${r.from} → ${r.to}`),
    h('td', {}, badge(r.status)),
    h('td', {}, `${r.steps[r.step]}% (step ${r.step + 1} of ${r.steps.length}), every ${r.every}`),
    h('td', {}, r.status === 'running' ? `${millis(Date.now() - r.step_started_at_ms)} into the step` : new Date(r.ended_at_ms).toLocaleString()),
    h('td', {}, by ? `${by.guard}: new ${by.new} vs old ${by.old} (limit ${by.limit}; ${by.new_jobs} and ${by.old_jobs} jobs)` : '–'),
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
          table(['Alias', 'Versions', 'Status', 'Share of the new version', 'When', 'Rolled back by', ''],
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
