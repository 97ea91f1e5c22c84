// Jobs that failed every attempt, with each attempt's error; replay one or
// many once the cause is fixed.

import { api } from '../api.js';
import { h, table, link, millis, replace } from '../dom.js';

function failures(letter) {
  return h('ol', { class: 'failures' }, letter.failures.map((f) => h('li', {},
    `attempt ${f.attempt} on ${f.node}, ${new Date(f.at_ms).toLocaleString()}: ${f.error.class}: ${f.error.message}`)));
}

export default {
  name: 'dead-letters',
  title: 'Dead letters',
  nav: 'dead-letters',
  path: /^dead-letters$/,
  needs: (ctx) => ctx.session.role === 'admin',
  render(root, _, ctx) {
    const note = h('p', { id: 'replayed', role: 'status' });
    const body = h('div');
    const replaySelected = h('button', { type: 'button', id: 'replay-selected' }, 'Replay selected');
    replace(root, h('h1', {}, 'Dead letters'), note, body, replaySelected);
    const replay = async (ids) => {
      const done = [];
      for (const id of ids) {
        try {
          const answer = await api(`/v1/admin/dead-letters/${encodeURIComponent(id)}/replay`, { method: 'POST' });
          done.push(`${answer.id} (attempt ${answer.attempt})`);
        } catch (e) {
          ctx.error(root, e);
        }
      }
      note.textContent = done.length ? `Queued again: ${done.join(', ')}` : '';
      await load();
    };
    const load = async () => {
      try {
        const { dead_letters: letters } = await api('/v1/admin/dead-letters?limit=1000');
        const now = Date.now();
        replace(body, table(['', 'Job', 'Model', 'Priority', 'Attempts', 'Dead for', 'Each attempt', ''],
          letters.map((l) => h('tr', { 'data-job': l.job_id },
            h('td', {}, h('input', { type: 'checkbox', class: 'pick', value: l.job_id, 'aria-label': `select ${l.job_id}` })),
            h('td', { class: 'mono' }, link(`#/jobs/${encodeURIComponent(l.job_id)}`, l.job_id)),
            h('td', {}, l.model),
            h('td', {}, l.priority),
            h('td', {}, String(l.attempts)),
            h('td', {}, millis(now - l.dead_at_ms)),
            h('td', {}, failures(l)),
            h('td', {}, h('button', { type: 'button', class: 'replay', onclick: () => replay([l.job_id]) }, 'Replay')))),
          { id: 'dead-letters' }));
        replaySelected.hidden = !letters.length;
      } catch (e) {
        ctx.error(root, e);
      }
    };
    replaySelected.addEventListener('click', () => {
      const ids = [...body.querySelectorAll('input.pick:checked')].map((c) => c.value);
      if (ids.length) replay(ids);
    });
    load();
    return null;
  },
};
