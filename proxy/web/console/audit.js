// #/audit: the audit log of every prompt, newest first, paged with before=<seq>, filtered by
// slug (#/audit?slug=NAME). Also exports the audit table the prompt page reuses.
//
// data-testids: audit-filter (slug input), audit-apply, audit-clear, audit-table, audit-row
// (data-seq on each), audit-older, audit-end.

import { api, badge, dataTable, errorBox, fmt, h, pageReady, promptKey, routeHash } from './app.js';

const PAGE = 50;

function scalar(value) {
  if (value === null || value === undefined) return '—';
  if (typeof value === 'object') {
    const text = JSON.stringify(value);
    return text.length > 60 ? `${text.slice(0, 57)}…` : text;
  }
  return String(value);
}

/** A one-line summary of an audit entry's detail: the rollout facts first, then the rest. */
export function detailSummary(detail) {
  if (!detail || typeof detail !== 'object') return '';
  const parts = [];
  const seen = new Set();
  const take = (key, text) => {
    if (detail[key] === undefined || detail[key] === null) return;
    seen.add(key);
    parts.push(text);
  };
  take('mode', String(detail.mode));
  if (detail.from_percent !== undefined && detail.from_percent !== null) {
    seen.add('from_percent');
    seen.add('percent');
    parts.push(`${detail.from_percent}% → ${detail.percent}%`);
  } else take('percent', `${detail.percent}%`);
  take('sticky', `sticky ${detail.sticky}`);
  if (detail.analysis && Array.isArray(detail.analysis.steps)) {
    seen.add('analysis');
    parts.push(detail.analysis.steps.length ? `steps ${detail.analysis.steps.join(', ')}` : 'analysis, no steps');
  }
  take('ended_rollout', detail.ended_rollout ? 'ended the rollout' : 'rollout kept');
  take('rollout_id', `rollout ${detail.rollout_id}`);
  for (const [key, value] of Object.entries(detail)) {
    if (seen.has(key) || value === null || value === undefined) continue;
    parts.push(`${key.replace(/_/g, ' ')}: ${scalar(value)}`);
  }
  return parts.join(' · ');
}

function fromTo(entry) {
  if (!entry.from_status && !entry.to_status) return '—';
  return h(
    'span',
    { class: 'from-to' },
    entry.from_status ? badge(entry.from_status) : h('span', { class: 'muted', text: 'new' }),
    ' → ',
    entry.to_status ? badge(entry.to_status) : '—',
  );
}

/** The columns of an audit table; the slug column is left out on a prompt's own page. */
export function auditColumns({ showSlug = true } = {}) {
  return [
    { label: 'Seq', class: 'num', cell: (e) => String(e.seq) },
    { label: 'Time', class: 'nowrap', cell: (e) => h('time', { datetime: new Date(e.at * 1000).toISOString(), title: fmt.ago(e.at), text: fmt.time(e.at) }) },
    { label: 'Actor', cell: (e) => e.actor },
    { label: 'Action', cell: (e) => h('code', { text: e.action }) },
    showSlug
      ? { label: 'Prompt', class: 'wrap', cell: (e) => h('a', { href: routeHash('prompts', e.slug), text: e.slug }) }
      : null,
    { label: 'Version', class: 'num', cell: (e) => (e.version === null || e.version === undefined ? '—' : `v${e.version}`) },
    { label: 'From → to', cell: fromTo },
    { label: 'Reason', class: 'wrap', cell: (e) => e.reason || '—' },
    { label: 'Detail', class: 'wrap', cell: (e) => detailSummary(e.detail) || '—' },
  ].filter(Boolean);
}

/** An audit table (a prompt's history, or a page of the whole log). */
export function auditTable(entries, { showSlug = true, testid = 'audit-table', empty = 'No audit entries.' } = {}) {
  return dataTable({
    columns: auditColumns({ showSlug }),
    rows: entries,
    testid,
    rowTestid: () => 'audit-row',
    caption: 'Audit entries, newest first',
    empty,
  });
}

function markSeq(wrap, entries) {
  const rows = wrap.querySelectorAll('tbody tr');
  entries.forEach((entry, i) => rows[i]?.setAttribute('data-seq', String(entry.seq)));
}

async function render(view, params) {
  const slug = params.query.get('slug') || '';
  const input = h('input', {
    id: 'audit-slug',
    type: 'search',
    name: 'slug',
    value: slug,
    placeholder: 'support-reply',
    autocomplete: 'off',
    list: 'audit-slugs',
    testid: 'audit-filter',
  });
  const slugs = h('datalist', { id: 'audit-slugs' });
  const form = h(
    'form',
    { class: 'filters', role: 'search' },
    h('div', { class: 'field' }, h('label', { for: 'audit-slug', text: 'Prompt (slug)' }), input),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'button button-primary', text: 'Filter', testid: 'audit-apply' }),
      slug ? h('a', { class: 'button', href: '#/audit', text: 'Show all', testid: 'audit-clear' }) : null,
    ),
    slugs,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = input.value.trim();
    location.hash = value ? `#/audit?slug=${encodeURIComponent(value)}` : '#/audit';
  });
  const list = h('div', { class: 'audit-list' });
  const pager = h('div', { class: 'pager' });
  view.append(
    h('div', { class: 'page-head' }, h('h1', { text: 'Audit log' }), h('span', { class: 'meta', text: slug ? `entries of ${slug}, newest first` : 'every prompt, newest first' })),
    form,
    list,
    pager,
  );

  // The slug suggestions are a nicety: they never hold the page up.
  api
    .get('/prompts')
    .then((answer) => {
      const names = [...new Set(answer.data.map((p) => promptKey(p.slug).slug))];
      slugs.replaceChildren(...names.map((name) => h('option', { value: name })));
    })
    .catch(() => {});

  let table = null;
  const loadPage = async (before) => {
    const answer = await api.get('/audit', { limit: PAGE, before, slug: slug || undefined });
    const entries = answer.data;
    if (!table) {
      table = auditTable(entries, { empty: slug ? `No audit entries for ${slug}.` : 'No audit entries.' });
      list.append(table);
      markSeq(table, entries);
    } else {
      const more = auditTable(entries);
      const body = table.querySelector('tbody');
      const rows = [...more.querySelectorAll('tbody tr')];
      entries.forEach((entry, i) => rows[i].setAttribute('data-seq', String(entry.seq)));
      body.append(...rows);
    }
    pager.replaceChildren();
    if (entries.length === PAGE) {
      const last = entries[entries.length - 1].seq;
      const older = h('button', { type: 'button', class: 'button', text: 'Older entries', testid: 'audit-older' });
      older.addEventListener('click', async () => {
        older.disabled = true;
        older.textContent = 'Loading…';
        try {
          await loadPage(last);
          // Keep keyboard users in place: focus the first row's link or the next pager button.
          pager.querySelector('button')?.focus();
        } catch (err) {
          pager.replaceChildren(errorBox(err));
        }
      });
      pager.append(older);
    } else if (table.querySelectorAll('tbody tr').length) {
      pager.append(h('span', { class: 'muted', testid: 'audit-end', text: 'The oldest entry is shown.' }));
    }
  };
  await loadPage(undefined);
  pageReady(view);
}

export const routes = [{ path: '/audit', title: 'Audit log', render }];
