// One job: every transition on a time axis, each attempt with its node and
// error, where it is now or where it stopped, its input (as stored, after
// masking) and its result or error, tokens, cost and each attempt's ledger
// line, webhook deliveries, a link to its trace, and a cancel button while
// it can still be cancelled.

import { api } from '../api.js';
import { h, svg, table, row, badge, millis, time, replace } from '../dom.js';

const FINAL = new Set(['succeeded', 'failed', 'expired', 'timed_out', 'cancelled']);
const LIFECYCLE = ['queued', 'assigned', 'running', 'retrying', 'requeued', ...FINAL];

// The steps as the job record tells them: its latest attempt only.
function fromRecord(job) {
  return job.transitions.map((t) => ({ event: t.status, at: t.at, node: t.node, attempt: job.attempt }));
}

function describe(step) {
  const parts = [step.event];
  if (step.attempt) parts.push(`attempt ${step.attempt}`);
  if (step.node) parts.push(`on ${step.node}`);
  if (step.error) parts.push(`${step.error.class ?? step.error.code}: ${step.error.message}`);
  return parts.join(' · ');
}

// Each attempt a row on one time axis: waiting in the queue, assigned to
// its node, running, and how it ended.
function attempts(steps, final) {
  const rows = [];
  let from = steps[0].at;
  for (const s of steps) {
    let row = rows[rows.length - 1];
    if (s.event === 'queued') continue;
    if (!row || row.end) {
      row = { attempt: s.attempt ?? rows.length + 1, from, node: s.node };
      rows.push(row);
    }
    if (s.event === 'assigned') { row.assigned = s.at; row.node = s.node; }
    if (s.event === 'running') row.running = s.at;
    if (['retrying', 'requeued'].includes(s.event) || FINAL.has(s.event)) {
      row.end = s.at;
      row.how = s.event;
      from = s.at;
    }
  }
  if (!rows.length) rows.push({ attempt: 1, from, how: final ? steps[steps.length - 1].event : null });
  return rows;
}

function axis(steps, final) {
  const rows = attempts(steps, final);
  const left = 150;
  const width = 760;
  const height = 30 + rows.length * 26;
  const t0 = Date.parse(steps[0].at);
  const end = final ? Date.parse(steps[steps.length - 1].at) : Date.now();
  const span = Math.max(1, end - t0);
  const x = (at) => left + ((Date.parse(at) - t0) / span) * (width - left - 10);
  const bar = (y, a, b, cls) => (a && b && Date.parse(b) >= Date.parse(a)
    ? svg('rect', { x: x(a), y, width: Math.max(2, x(b) - x(a)), height: 14, class: cls }) : null);
  const now = new Date(end).toISOString();
  return svg('svg', { class: 'timeline', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' },
    svg('title', {}, 'Each attempt in time: waiting, assigned, running, and how it ended'),
    rows.map((r, i) => {
      const y = 8 + i * 26;
      const stop = r.end ?? now;
      return svg('g', { class: `attempt ${r.how ?? 'ongoing'}` },
        svg('text', { x: 4, y: y + 11 }, `attempt ${r.attempt}${r.node ? ` · ${r.node}` : ''}`),
        bar(y, r.from, r.assigned ?? stop, 'waiting'),
        bar(y, r.assigned, r.running ?? stop, 'assigned'),
        bar(y, r.running, stop, 'running'));
    }),
    svg('line', { x1: left, y1: height - 18, x2: width - 10, y2: height - 18, class: 'axis' }),
    svg('text', { x: left, y: height - 4 }, '0'),
    svg('text', { x: width - 10, y: height - 4, 'text-anchor': 'end' }, `+${millis(span)}${final ? '' : ' (now)'}`));
}

function whereNow(job, steps) {
  const last = steps[steps.length - 1];
  if (job.status === 'succeeded') return `Finished: succeeded on attempt ${job.attempt}${job.node ? ` on ${job.node}` : ''}.`;
  if (FINAL.has(job.status)) {
    const why = job.error ? ` ${job.error.code}: ${job.error.message}` : '';
    return `Stopped: ${job.status} at attempt ${job.attempt}${job.node ? ` on ${job.node}` : ''}.${why}`;
  }
  return `Now: ${job.status}${job.node ? ` on ${job.node}` : ''}, for ${millis(Date.now() - Date.parse(last.at))}.`;
}

// Its trace in the tracing UI the broker names (`broker.trace_link`),
// when traces are exported.
function trace(job, ctx) {
  const template = ctx.session.trace_link;
  if (!template || !job.trace_id) return null;
  const href = template.replace('{trace_id}', encodeURIComponent(job.trace_id));
  return h('p', {}, h('a', { id: 'trace', href, target: '_blank', rel: 'noopener noreferrer' }, `Trace ${job.trace_id}`));
}

function render(root, job, steps, { deliveries, usage, input }, ctx, reload) {
  const final = FINAL.has(job.status);
  const t0 = Date.parse(steps[0].at);
  const cancel = !final && ctx.can('submitter')
    ? h('button', { type: 'button', id: 'cancel', class: 'danger', onclick: async (event) => {
      event.target.disabled = true;
      try {
        await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: 'POST' });
        reload();
      } catch (e) {
        ctx.error(root, e);
      }
    } }, 'Cancel job')
    : null;
  const meta = Object.entries(job.metadata ?? {});
  replace(root,
    h('h1', {}, 'Job ', h('span', { class: 'mono', id: 'job-id' }, job.id), ' ', badge(job.status)),
    h('p', { id: 'where', class: final && job.status !== 'succeeded' ? 'stopped' : 'now' }, whereNow(job, steps)),
    cancel,
    h('dl', { class: 'facts' },
      [['Model', job.alias ? `${job.model} (alias ${job.alias})` : job.model], ['Tenant', job.tenant],
      ['Priority', job.priority], ['Source', job.source], ['Attempt', job.attempt], ['Created', time(job.created_at)],
      ['Tokens', job.usage ? `${job.usage.prompt_tokens} in, ${job.usage.completion_tokens} out` : '–'],
      ['Cost', usage.data.length ? `$${usage.cost_usd.toFixed(6)}` : '–']]
      .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))])),
    trace(job, ctx),
    h('h2', {}, 'Timeline'),
    axis(steps, final),
    h('p', { class: 'legend' }, 'Grey: waiting in the queue · yellow: assigned, not started · blue: running (green: succeeded, red: failed).'),
    h('ol', { id: 'steps', class: 'steps' }, steps.map((s, i) => {
      const waited = i && s.event === 'assigned' && steps[i - 1].event === 'retrying'
        ? ` (backoff ${millis(Date.parse(s.at) - Date.parse(steps[i - 1].at))})` : '';
      return h('li', { class: s.event }, h('span', { class: 'offset' }, `+${millis(Date.parse(s.at) - t0)}`), ` ${describe(s)}${waited}`);
    })),
    meta.length ? [h('h2', {}, 'Metadata'), table(['Key', 'Value'], meta.map(([k, v]) => row(k, v)), { id: 'metadata' })] : null,
    input !== undefined && input !== null ? [h('h2', {}, 'Input'), h('pre', { id: 'input' }, JSON.stringify(input, null, 2))] : null,
    job.error ? [h('h2', {}, 'Error'), h('pre', { id: 'error' }, `${job.error.code}: ${job.error.message}`)] : null,
    job.result !== undefined ? [h('h2', {}, 'Result'), h('pre', { id: 'result' }, JSON.stringify(job.result, null, 2))] : null,
    job.result_expired ? h('p', { class: 'muted' }, 'The result was dropped at the end of its retention.') : null,
    usage.data.length ? [h('h2', {}, 'Usage by attempt'),
      table(['Attempt', 'Node', 'Tokens', 'Engine time', 'Cost', 'Billed'], usage.data.map((u) => h('tr', { 'data-attempt': u.attempt },
        h('td', {}, String(u.attempt)), h('td', {}, u.node), h('td', {}, `${u.prompt_tokens} in, ${u.completion_tokens} out`),
        h('td', {}, millis(u.engine_ms)), h('td', {}, `$${u.cost_usd.toFixed(6)}`),
        h('td', {}, u.charged ? (u.cache_hit ? 'charged (cache hit)' : 'charged') : 'waste'))), { id: 'usage' })] : null,
    h('h2', {}, 'Webhook deliveries'),
    table(['Event', 'URL', 'State', 'Attempts', 'Last answer'], deliveries.map((d) => {
      const last = d.attempts[d.attempts.length - 1];
      return row(d.event, d.url, badge(d.state), String(d.attempts.length), last ? `${last.status ?? last.error ?? '–'} at ${time(last.at)}` : '–');
    }), { id: 'webhooks' }));
}

export default {
  name: 'job',
  title: 'Job',
  path: /^jobs\/(.+)$/,
  render(root, { match }, ctx) {
    const id = decodeURIComponent(match[1]);
    let source = null;
    let timer = null;
    let events = [];
    let job = null;
    let extras = { deliveries: [], usage: { data: [] } };
    let pending = null;
    const show = () => {
      if (!job) return;
      let steps = events.length ? [...events] : fromRecord(job);
      // A cancelled job has no result event: its record says when it ended.
      const end = fromRecord(job).find((s) => FINAL.has(s.event));
      if (end && !steps.some((s) => FINAL.has(s.event))) steps.push(end);
      steps = steps.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
      render(root, job, steps, extras, ctx, load);
    };
    // A replay brings several events at once: one reload for them all.
    const reloadSoon = () => {
      clearTimeout(pending);
      pending = setTimeout(load, 150);
    };
    const load = async () => {
      try {
        const path = `/v1/jobs/${encodeURIComponent(id)}`;
        let deliveries;
        let usage;
        let input;
        [job, { data: deliveries }, usage, { input }] = await Promise.all(
          [api(path), api(`${path}/webhooks`), api(`${path}/usage`), api(`${path}/input`)]);
        extras = { deliveries, usage, input };
        show();
        if (FINAL.has(job.status) && source && !timer) {
          // A job that ended without a result event (cancelled): the
          // stream has told all it will.
          timer = setTimeout(() => source?.close(), 3000);
        }
      } catch (e) {
        replace(root, h('h1', {}, 'Job ', h('span', { class: 'mono' }, id)));
        ctx.error(root, e);
      }
    };
    // Every attempt, live: the job's lifecycle events, replayed from the
    // start and followed until it ends.
    source = new EventSource(`/v1/jobs/${encodeURIComponent(id)}/events`);
    for (const name of LIFECYCLE) {
      source.addEventListener(name, (message) => {
        const data = JSON.parse(message.data);
        events.push({ event: name, at: data.at, node: data.node, attempt: data.attempt, error: data.error });
        if (FINAL.has(name)) source.close();
        reloadSoon();
      });
    }
    source.onerror = () => {
      // Refused (too many streams) or gone: the record alone tells it.
      source.close();
    };
    load();
    return () => {
      source?.close();
      clearTimeout(timer);
      clearTimeout(pending);
    };
  },
};
