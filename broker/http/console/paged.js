// A list read a page at a time with the API's cursor.

import { api } from './api.js';
import { h, table } from './dom.js';

// A cursor-paged list: the table with `headings`, the first page now and
// the next at each click of its "Older" button. `path(cursor)` names a
// page; `row` draws an item. The table is marked `data-loaded` once a page
// is in, for whoever reads the page (and its tests).
export function pagedTable({ id, headings, path, row, empty, older }, ctx, root) {
  const rows = h('tbody');
  const list = table(headings, [], { id });
  list.querySelector('tbody').replaceWith(rows);
  const more = h('button', { type: 'button', id: 'older', hidden: true }, older);
  let cursor = null;
  const load = async () => {
    try {
      const page = await api(path(cursor));
      rows.append(...page.data.map(row));
      if (!rows.children.length) rows.append(h('tr', {}, h('td', { colspan: headings.length, class: 'muted' }, empty)));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      list.dataset.loaded = 'true';
    } catch (e) {
      ctx.error(root, e);
    }
  };
  more.addEventListener('click', load);
  load();
  return { list, more };
}
