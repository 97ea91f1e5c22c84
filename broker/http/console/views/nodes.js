// Every GPU node: its state, models (warm and loadable), slots, the
// engine's own queue and KV cache, and each GPU as NVML reads it.

import { api, poll } from '../api.js';
import { h, table, link, millis, bytes, badge, replace } from '../dom.js';

function gpu(g) {
  const parts = [`#${g.index} ${g.name}`];
  if (g.utilization_pct !== undefined) parts.push(`${g.utilization_pct}% busy`);
  if (g.memory_total_bytes !== undefined) parts.push(`${bytes(g.memory_used_bytes)} / ${bytes(g.memory_total_bytes)}`);
  if (g.temperature_c !== undefined) parts.push(`${g.temperature_c} °C`);
  if (g.power_mw !== undefined) parts.push(`${(g.power_mw / 1000).toFixed(0)} W`);
  return h('div', { class: 'gpu' }, parts.join(' · '));
}

function node(n) {
  const kv = n.engine?.kv_cache_usage;
  return h('tr', { class: `node ${n.state}`, 'data-node': n.node },
    h('td', {}, link(`#/jobs?node=${encodeURIComponent(n.node)}`, n.node)),
    h('td', {}, badge(n.state), n.state === 'lost' ? h('div', { class: 'muted' }, `${millis(n.seen_ms_ago)} ago`) : null),
    h('td', {}, n.models.join(', ') || '–'),
    h('td', {}, (n.loadable ?? []).join(', ') || '–'),
    h('td', {}, `${n.running} / ${n.slots_total}`),
    h('td', {}, String(n.queued)),
    h('td', {}, millis(n.service_ms)),
    h('td', {}, n.engine?.queue_depth ?? '–'),
    h('td', {}, kv === undefined ? '–' : `${Math.round(kv * 100)}%`),
    h('td', {}, (n.gpus ?? []).length ? n.gpus.map(gpu) : h('span', { class: 'muted' }, 'no NVIDIA GPU')));
}

export default {
  name: 'nodes',
  title: 'Nodes',
  nav: 'nodes',
  path: /^nodes$/,
  needs: (ctx) => ctx.spansTenants(),
  render(root, _, ctx) {
    const body = h('div');
    replace(root, h('h1', {}, 'GPU nodes'), body);
    return poll(async () => {
      try {
        const { nodes } = await api('/v1/nodes');
        replace(body, table(
          ['Node', 'State', 'Models', 'Loadable', 'Slots used', 'Waiting on node', 'Service time', 'Engine queue', 'KV cache', 'GPUs'],
          nodes.map(node), { id: 'nodes' }));
      } catch (e) {
        ctx.error(root, e);
      }
    });
  },
};
