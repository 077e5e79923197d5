// #/fleet: every replica on the fleet board and whether the last change reached them all,
// refreshed every 2 s.
//
// data-testids: fleet-banner (data-state="complete"|"behind"|"none"), fleet-table, fleet-row
// (data-replica, data-live, data-healthy on each), fleet-updated, fleet-error.

import { api, badge, dataTable, errorBox, fmt, h, pageReady, poll } from './app.js';

const EVERY_MS = 2000;

function isBehind(replica, fleet) {
  if (replica.behind === null || replica.behind === undefined) return true;
  if (replica.behind > 0) return true;
  return fleet.revision !== null && replica.revision < fleet.revision;
}

function banner(fleet) {
  const live = fleet.data.filter((r) => r.live);
  const behind = live.filter((r) => isBehind(r, fleet));
  const revision = fleet.revision === null || fleet.revision === undefined ? '—' : fleet.revision;
  if (!live.length) {
    return h('div', { class: 'banner banner-bad', role: 'status', testid: 'fleet-banner', 'data-state': 'none', text: 'No live replica on the fleet board.' });
  }
  if (!behind.length) {
    const text =
      live.length === 1
        ? `The last change (revision ${revision}) has reached the live replica.`
        : `The last change (revision ${revision}) has reached all ${live.length} live replicas.`;
    return h('div', { class: 'banner banner-ok', role: 'status', testid: 'fleet-banner', 'data-state': 'complete', text });
  }
  return h('div', {
    class: 'banner banner-warn',
    role: 'status',
    testid: 'fleet-banner',
    'data-state': 'behind',
    text: `${behind.length} of ${live.length} live replicas behind (revision ${revision}).`,
  });
}

function yesNo(value, yes, no) {
  return badge(value ? yes : no);
}

const COLUMNS = [
  {
    label: 'Replica',
    class: 'wrap',
    cell: (r) => h('span', null, h('code', { text: r.replica }), r.this ? h('span', { class: 'muted', text: ' (this one)' }) : null),
  },
  { label: 'Version', cell: (r) => r.version },
  { label: 'Revision', class: 'num', cell: (r) => fmt.num(r.revision) },
  {
    label: 'Behind',
    class: 'num',
    cell: (r) => (r.behind === null || r.behind === undefined ? h('span', { title: 'serves another generation than the store holds', text: 'other generation' }) : fmt.num(r.behind)),
  },
  { label: 'State', cell: (r) => badge(r.state) },
  { label: 'Prompts', class: 'num', cell: (r) => fmt.num(r.prompts) },
  { label: 'Staleness', class: 'num', cell: (r) => fmt.ms(r.staleness_seconds) },
  { label: 'Heartbeat', class: 'num', cell: (r) => `${fmt.ms(r.heartbeat_age_seconds)} ago` },
  { label: 'Healthy', cell: (r) => yesNo(r.healthy, 'healthy', 'unhealthy') },
  { label: 'Live', cell: (r) => yesNo(r.live, 'live', 'down') },
];

function table(fleet) {
  const wrap = dataTable({
    columns: COLUMNS,
    rows: fleet.data,
    testid: 'fleet-table',
    rowTestid: () => 'fleet-row',
    caption: 'Replicas',
    empty: 'No replica has a heartbeat on the board.',
  });
  const rows = wrap.querySelectorAll('tbody tr');
  fleet.data.forEach((replica, i) => {
    rows[i].setAttribute('data-replica', replica.replica);
    rows[i].setAttribute('data-live', String(replica.live));
    rows[i].setAttribute('data-healthy', String(replica.healthy));
  });
  return wrap;
}

async function render(view) {
  const head = h('div', { class: 'page-head' }, h('h1', { text: 'Fleet' }));
  const updated = h('span', { class: 'meta', testid: 'fleet-updated', 'aria-live': 'off' });
  head.append(updated);
  const top = h('div');
  const body = h('div');
  const problem = h('div', { testid: 'fleet-error' });
  view.append(head, top, problem, body);
  let first = true;
  poll(
    EVERY_MS,
    async () => {
      let fleet;
      try {
        fleet = await api.get('/fleet');
      } catch (err) {
        problem.replaceChildren(errorBox(err));
        if (first) {
          first = false;
          pageReady(view);
        }
        return;
      }
      problem.replaceChildren();
      // Only a changed banner is replaced, so a screen reader does not repeat it every 2 s.
      const next = banner(fleet);
      const current = top.firstElementChild;
      if (!current || current.textContent !== next.textContent) top.replaceChildren(next);
      body.replaceChildren(
        table(fleet),
        h(
          'p',
          { class: 'hint' },
          `Store generation `,
          h('code', { text: fleet.generation ?? '—' }),
          `, revision ${fleet.revision ?? '—'}; answered by `,
          h('code', { text: fleet.replica }),
          '.',
        ),
      );
      updated.textContent = `updated ${fmt.time(Date.now() / 1000)}, every ${EVERY_MS / 1000} s`;
      if (first) {
        first = false;
        pageReady(view);
      }
    },
    view,
  );
}

export const routes = [{ path: '/fleet', title: 'Fleet', render }];
