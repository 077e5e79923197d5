// #/ (every prompt, with its running rollout) and #/prompts/:slug (a prompt key's versions,
// a version's template, a diff of two versions, its history with "prod at", and for an
// admin: promote, roll back, start a rollout).
//
// The :slug of #/prompts/:slug is a prompt key as the API lists it, URL-encoded:
// [tier=|tenant=NAME/]SLUG[@VARIANT] (promptKey() in app.js splits it for the API).
//
// data-testids, list (#/): prompts-filter (search box), prompts-rollout-only (checkbox),
//   prompts-count, prompts-table, prompt-row (data-slug on each), prompt-link,
//   rollout-link (to #/rollouts/<key>), rollout-verdict (the running rollout's last verdict,
//   only with an analysis policy; data-result: pass, fail, inconclusive, pending (none yet)
//   or unknown (the analysis state could not be read)), tenants (details), tenants-table,
//   prompts-changed (the refresh found prompts added or removed: reload).
// data-testids, prompt (#/prompts/:slug): prompt-title, prompt-meta, prompt-base-link (on a
//   layered or variant key's page, the crumb back to its base), prompt-layers (the "Layers
//   and variants" line, drawn just after the page is ready; data-count, once drawn: how many
//   other keys of the slug), prompt-layer-link (one per other key, data-key),
//   prompt-layer-current (this key in that line), rollout-banner,
//   rollout-link, versions-table, version-row (data-version, data-status on each),
//   version-open (button per row), version-panel (data-version), version-template,
//   version-variables, version-params, diff-from, diff-to, diff-show, diff-output
//   (lines: .diff-line.diff-add / .diff-del / .diff-hunk / .diff-meta / .diff-context, each
//   with a .diff-sign "+", "−", " "), diff-empty, history-at (datetime-local), history-at-show,
//   history-served (the "vN was prod at" answer), history-table, audit-row.
//   Writes (admin only, absent for a read-only session): writes, promote-version (select),
//   promote-submit, promote-override-gates, promote-force, rollback-submit, rollback-hint,
//   rollout-form,
//   rollout-candidate, rollout-mode, rollout-percent, rollout-sticky, rollout-sticky-header,
//   rollout-analysis (checkbox), rollout-steps, rollout-interval, rollout-min-samples,
//   rollout-failure-limit, rollout-segment-tiers, rollout-segment-tenants (the segment's
//   "only tiers" and "only tenants", comma-separated; on a base or variant key only: an
//   override's rollout reaches its own tier or tenant), rollout-segment-hint (said instead
//   on an override's page), confirm-segment (who it reaches, in the start's confirmation),
//   rollout-override-gates, rollout-force, rollout-submit,
//   write-result (the last write's error, if any).

import {
  api,
  badge,
  confirmAction,
  dataTable,
  errorBox,
  fmt,
  h,
  navigate,
  pageReady,
  poll,
  promptKey,
  routeHash,
  session,
  toast,
} from './app.js';
import { auditTable } from './audit.js';

// -- the list ------------------------------------------------------------------------------------

function rolloutChip(rollout) {
  if (!rollout) return h('span', { class: 'muted', text: '—' });
  return h(
    'span',
    { class: 'rollout-chip' },
    badge(rollout.mode),
    h('span', { text: `v${rollout.candidate} at ${fmt.num(rollout.percent)}%` }),
    verdictBadge(rollout),
    h('a', { href: routeHash('rollouts', rollout.slug), testid: 'rollout-link', text: 'view rollout' }),
  );
}

// The last verdict of a rollout with an analysis policy, from the list's own answer
// (`analysis_summary`): pass, fail, inconclusive; pending before the first; unknown when
// the list could not read the analysis state (the key is absent then). A manual rollout
// has no verdicts, so nothing is shown. Times in the title are absolute, so a refresh
// redraws the badge only when a new verdict came.
function verdictBadge(rollout) {
  if (!rollout.analysis) return null;
  const summary = rollout.analysis_summary;
  let result;
  let title;
  if (!summary) {
    result = 'unknown';
    title = 'The analysis state could not be read: see the rollout’s page.';
  } else {
    result = summary.last_verdict || 'pending';
    const parts = [summary.last_at ? `Last verdict at ${fmt.time(summary.last_at)}` : 'No verdict yet'];
    if (summary.failures) parts.push(`${fmt.num(summary.failures)} failed so far`);
    parts.push(`next due at ${fmt.time(summary.next_at)}`);
    title = parts.join('; ');
  }
  const pill = badge(result);
  pill.setAttribute('data-testid', 'rollout-verdict');
  pill.setAttribute('data-result', result);
  pill.setAttribute('title', title);
  const failed = summary && summary.failures ? ` (${fmt.num(summary.failures)} failed)` : '';
  return h(
    'span',
    { class: 'rollout-verdict' },
    h('span', { class: 'visually-hidden', text: 'last verdict: ' }),
    pill,
    failed ? h('span', { class: 'muted', text: failed }) : null,
  );
}

function keyCell(prompt) {
  const key = promptKey(prompt.slug);
  const parts = [];
  if (key.layer) parts.push(key.layer.replace('=', ' '));
  if (key.variant) parts.push(`variant ${key.variant}`);
  return h(
    'span',
    null,
    h('a', { class: 'slug-link', href: routeHash('prompts', prompt.slug), testid: 'prompt-link', text: prompt.slug }),
    parts.length ? h('span', { class: 'key-layer', text: ` (${parts.join(', ')})` }) : null,
  );
}

const LIST_COLUMNS = [
  { label: 'Prompt', class: 'wrap', cell: keyCell },
  { label: 'Prod', class: 'num', cell: (p) => (p.prod_version ? `v${p.prod_version}` : h('span', { class: 'muted', text: 'none' })) },
  { label: 'Latest', class: 'num', cell: (p) => `v${p.latest_version}` },
  { label: 'Versions', class: 'num', cell: (p) => fmt.num(p.versions) },
  { label: 'Rollout', cell: (p) => rolloutChip(p.rollout) },
  { label: 'Updated', class: 'nowrap', cell: (p) => h('span', { title: fmt.time(p.updated_at), text: fmt.ago(p.updated_at) }) },
];

function tenantsDisclosure() {
  const details = h('details', { class: 'disclosure panel', testid: 'tenants' }, h('summary', { text: 'Tenants' }));
  let loaded = false;
  details.addEventListener('toggle', async () => {
    if (!details.open || loaded) return;
    loaded = true;
    const body = h('div', null, h('p', { class: 'muted', text: 'Loading…' }));
    details.append(body);
    try {
      const answer = await api.get('/tenants');
      body.replaceChildren(
        dataTable({
          columns: [
            { label: 'Tenant', cell: (t) => h('code', { text: t.id }) },
            { label: 'Tier', cell: (t) => t.tier },
            { label: 'API keys', class: 'num', cell: (t) => fmt.num(t.api_keys) },
            { label: 'Key prefixes', class: 'wrap', cell: (t) => (t.api_key_prefixes.length ? t.api_key_prefixes.join(', ') : '—') },
            { label: 'Updated', class: 'nowrap', cell: (t) => fmt.time(t.updated_at) },
          ],
          rows: answer.data,
          testid: 'tenants-table',
          caption: 'Tenant records',
          empty: 'No tenant records.',
        }),
        h('p', { class: 'hint', text: 'Overrides of a tenant or tier are listed above as tenant=NAME/slug and tier=NAME/slug.' }),
      );
    } catch (err) {
      loaded = false;
      body.replaceChildren(errorBox(err));
    }
  });
  return details;
}

// How often the list follows the registry (two small reads).
const LIST_REFRESH_MS = 10000;

async function renderList(view, params) {
  const [prompts, rollouts] = await Promise.all([api.get('/prompts'), api.get('/rollouts')]);
  const running = new Map(rollouts.data.map((r) => [r.slug, r]));
  const rows = prompts.data.map((p) => ({ ...p, rollout: running.get(p.slug) || null }));

  const search = h('input', {
    id: 'prompts-filter',
    type: 'search',
    placeholder: 'Filter by slug',
    autocomplete: 'off',
    spellcheck: 'false',
    value: params.query.get('q') || '',
    testid: 'prompts-filter',
  });
  const onlyRollouts = h('input', {
    id: 'prompts-rollout-only',
    type: 'checkbox',
    checked: params.query.get('rollouts') === '1',
    testid: 'prompts-rollout-only',
  });
  const count = h('span', { class: 'muted', testid: 'prompts-count', 'aria-live': 'polite' });
  const table = dataTable({
    columns: LIST_COLUMNS,
    rows,
    testid: 'prompts-table',
    rowTestid: () => 'prompt-row',
    caption: 'Prompts',
    empty: 'No prompts yet: push one with promptproxy push.',
  });
  const trs = [...table.querySelectorAll('tbody tr')];
  trs.forEach((tr, i) => {
    tr.setAttribute('data-slug', rows[i].slug);
    if (rows[i].rollout) tr.setAttribute('data-rollout', rows[i].rollout.mode);
  });

  const apply = () => {
    const needle = search.value.trim().toLowerCase();
    const only = onlyRollouts.checked;
    let shown = 0;
    trs.forEach((tr, i) => {
      const row = rows[i];
      const visible = (!needle || row.slug.toLowerCase().includes(needle)) && (!only || row.rollout !== null);
      tr.hidden = !visible;
      if (visible) shown += 1;
    });
    count.textContent = shown === rows.length ? `${rows.length} prompts` : `${shown} of ${rows.length} prompts`;
    // Keep the filter in the address (without a new history entry or a re-render).
    const query = new URLSearchParams();
    if (search.value.trim()) query.set('q', search.value.trim());
    if (only) query.set('rollouts', '1');
    const text = query.toString();
    // Only while the list is shown: a refresh (or the first draw) finishing after the
    // operator moved on must not write the list's address over the page they went to.
    if (!view.isConnected || (location.hash.replace(/^#/, '') || '/').split('?')[0] !== '/') return;
    history.replaceState(null, '', text ? `#/?${text}` : '#/');
  };
  search.addEventListener('input', apply);
  onlyRollouts.addEventListener('change', apply);

  // During an incident the analyser promotes and aborts by itself: follow the prod versions
  // and the running rollouts. A row is redrawn only when its data changed (so the focus and
  // the filter stay), a cell at a time; a prompt added or removed asks for a reload rather
  // than reorder the rows under the reader.
  const meta = h('span', { class: 'meta', text: runningText(rollouts.data.length) });
  const changed = h('p', { class: 'hint list-changed', testid: 'prompts-changed', 'aria-live': 'polite' });
  const rowKeys = rows.map((row) => JSON.stringify(row));
  const bySlug = new Map(rows.map((row, i) => [row.slug, i]));
  let first = true;
  const refresh = async () => {
    if (first) { first = false; return; } // drawn from this very answer
    let fresh;
    try {
      const [p, r] = await Promise.all([api.get('/prompts'), api.get('/rollouts')]);
      fresh = { prompts: p.data, rollouts: r.data };
    } catch {
      return; // the next round tries again; the rollout page says more about an outage
    }
    const now = new Map(fresh.rollouts.map((r) => [r.slug, r]));
    meta.textContent = runningText(fresh.rollouts.length);
    let added = 0;
    for (const p of fresh.prompts) {
      const i = bySlug.get(p.slug);
      if (i === undefined) { added += 1; continue; }
      const row = { ...p, rollout: now.get(p.slug) || null };
      const key = JSON.stringify(row);
      if (key === rowKeys[i]) continue;
      const tds = trs[i].children;
      LIST_COLUMNS.forEach((column, c) => {
        if (c === 0) return; // the slug does not change
        const before = column.cell(rows[i]);
        const after = column.cell(row);
        // The markup, not only the text: a verdict's time is in its badge's title.
        const drawn = (n) => (typeof n === 'string' ? n : n.outerHTML);
        if (drawn(before) !== drawn(after)) {
          // A new verdict redraws the cell: the link an operator tabbed to keeps the focus.
          const focused = tds[c].contains(document.activeElement) ? document.activeElement.dataset.testid : null;
          tds[c].replaceChildren(after);
          if (focused) tds[c].querySelector(`[data-testid="${focused}"]`)?.focus();
        }
      });
      rows[i] = row;
      rowKeys[i] = key;
      if (row.rollout) trs[i].setAttribute('data-rollout', row.rollout.mode);
      else trs[i].removeAttribute('data-rollout');
    }
    const removed = rows.length - (fresh.prompts.length - added);
    const note = added || removed ? `The list has changed (${added} added, ${removed} removed): reload to see it.` : '';
    if (changed.textContent !== note) changed.textContent = note;
    apply();
  };

  view.append(
    h(
      'div',
      { class: 'page-head' },
      h('h1', { text: 'Prompts' }),
      meta,
    ),
    h(
      'div',
      { class: 'filters', role: 'search' },
      h('label', { for: 'prompts-filter', class: 'visually-hidden', text: 'Filter prompts by slug' }),
      search,
      h('label', { class: 'field-inline', for: 'prompts-rollout-only' }, onlyRollouts, 'In rollout only'),
      count,
    ),
    changed,
    table,
    tenantsDisclosure(),
  );
  apply();
  pageReady(view);
  poll(LIST_REFRESH_MS, refresh, view);
}

function runningText(n) {
  return `${n} running rollout${n === 1 ? '' : 's'}`;
}

// -- one prompt ----------------------------------------------------------------------------------

function shortHash(sha) {
  return h('code', { title: sha, text: sha ? sha.slice(0, 12) : '—' });
}

function versionLabel(v) {
  return `v${v.version} (${v.status})`;
}

function variablesTable(variables) {
  return dataTable({
    columns: [
      { label: 'Name', cell: (v) => h('code', { text: v.name }) },
      { label: 'Type', cell: (v) => v.type || 'any' },
      {
        label: 'Default',
        class: 'wrap',
        cell: (v) => ('default' in v ? h('code', { text: JSON.stringify(v.default) }) : h('span', { class: 'muted', text: 'required' })),
      },
    ],
    rows: variables,
    testid: 'version-variables',
    caption: 'Variables',
    empty: 'No variables.',
  });
}

function jsonBlock(value, testid) {
  return h('pre', { class: 'code', testid, text: JSON.stringify(value, null, 2) });
}

function hasKeys(value) {
  if (Array.isArray(value)) return value.length > 0;
  return value && typeof value === 'object' && Object.keys(value).length > 0;
}

function versionPanel(v) {
  const panel = h(
    'section',
    { class: 'panel', testid: 'version-panel', 'data-version': String(v.version), 'aria-labelledby': 'version-heading' },
    h('div', { class: 'panel-head' }, h('h2', { id: 'version-heading', text: `Version ${v.version}` }), badge(v.status)),
    h(
      'dl',
      { class: 'facts' },
      h('dt', { text: 'Author' }),
      h('dd', { text: v.author }),
      h('dt', { text: 'Created' }),
      h('dd', { text: `${fmt.time(v.created_at)} (${fmt.ago(v.created_at)})` }),
      h('dt', { text: 'Changelog' }),
      h('dd', { text: v.changelog || '—' }),
      h('dt', { text: 'SHA-256' }),
      h('dd', null, h('code', { text: v.sha256 })),
      h('dt', { text: 'Model' }),
      h('dd', null, v.model ? h('code', { text: v.model }) : h('span', { class: 'muted', text: 'the request’s' })),
      h('dt', { text: 'Caller’s system messages' }),
      h('dd', { text: v.caller_system === 'after' ? 'kept after the prompt' : 'dropped' }),
    ),
    h('h3', { text: 'Template' }),
    h('div', { class: 'message-role', text: 'system' }),
    v.template
      ? h('pre', { class: 'template', testid: 'version-template', text: v.template })
      : h('p', { class: 'muted', testid: 'version-template', text: 'No template of its own (an override: see its fills).' }),
    h('h3', { text: 'Variables' }),
    variablesTable(v.variables || []),
    h('h3', { text: 'Parameters' }),
    hasKeys(v.params) ? jsonBlock(v.params, 'version-params') : h('p', { class: 'muted', testid: 'version-params', text: 'None: the request’s own.' }),
  );
  const extras = [
    ['Blocks', v.blocks, 'version-blocks'],
    ['Parameter bounds', v.param_bounds, 'version-param-bounds'],
    ['Fills', v.fills, 'version-fills'],
    ['Variable defaults', v.defaults, 'version-defaults'],
    ['Models matched', v.match, 'version-match'],
  ];
  for (const [title, value, testid] of extras) {
    if (hasKeys(value)) panel.append(h('h3', { text: title }), jsonBlock(value, testid));
  }
  return panel;
}

function diffLines(text) {
  const out = h('div', { class: 'diff', testid: 'diff-output', role: 'region', 'aria-label': 'Diff', tabindex: '0' });
  const lines = text.replace(/\n$/, '').split('\n');
  for (const line of lines) {
    let kind = 'context';
    let sign = ' ';
    let body = line;
    if (line.startsWith('+++') || line.startsWith('---')) {
      kind = 'meta';
      sign = '';
    } else if (line.startsWith('@@')) {
      kind = 'hunk';
      sign = '';
    } else if (line.startsWith('+')) {
      kind = 'add';
      sign = '+';
      body = line.slice(1);
    } else if (line.startsWith('-')) {
      kind = 'del';
      sign = '−';
      body = line.slice(1);
    } else if (line.startsWith(' ')) {
      body = line.slice(1);
    }
    const label = kind === 'add' ? 'added: ' : kind === 'del' ? 'removed: ' : '';
    out.append(
      h(
        'div',
        { class: `diff-line diff-${kind}` },
        h('span', { class: 'diff-sign', 'aria-hidden': 'true', text: sign }),
        h('span', { class: 'diff-text' }, label ? h('span', { class: 'visually-hidden', text: label }) : null, body || ' '),
      ),
    );
  }
  return out;
}

function diffPanel(key, versions, prod) {
  const numbers = versions.map((v) => v.version);
  const latest = numbers[numbers.length - 1];
  const defaultTo = latest;
  const defaultFrom = prod && prod !== latest ? prod : numbers.length > 1 ? numbers[numbers.length - 2] : latest;
  const select = (id, testid, chosen) =>
    h(
      'select',
      { id, testid },
      versions
        .slice()
        .reverse()
        .map((v) => h('option', { value: String(v.version), selected: v.version === chosen, text: versionLabel(v) })),
    );
  const from = select('diff-from', 'diff-from', defaultFrom);
  const to = select('diff-to', 'diff-to', defaultTo);
  const output = h('div', { 'aria-live': 'polite' });
  const show = async () => {
    output.replaceChildren(h('p', { class: 'muted', text: 'Loading…' }));
    try {
      const answer = await api.get(`/prompts/${encodeURIComponent(key.slug)}/diff`, { ...key.query, from: from.value, to: to.value });
      output.replaceChildren(
        answer.diff
          ? diffLines(answer.diff)
          : h('p', { class: 'muted', testid: 'diff-empty', text: `v${from.value} and v${to.value} have the same content.` }),
      );
    } catch (err) {
      output.replaceChildren(errorBox(err));
    }
  };
  const form = h(
    'form',
    { class: 'toolbar' },
    h('div', { class: 'field' }, h('label', { for: 'diff-from', text: 'From' }), from),
    h('div', { class: 'field' }, h('label', { for: 'diff-to', text: 'To' }), to),
    h('button', { type: 'submit', class: 'button', text: 'Show diff', testid: 'diff-show' }),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    show();
  });
  from.addEventListener('change', show);
  to.addEventListener('change', show);
  const panel = h(
    'section',
    { class: 'panel', 'aria-labelledby': 'diff-heading' },
    h('h2', { id: 'diff-heading', text: 'Diff' }),
    form,
    output,
  );
  if (numbers.length > 1) show();
  else output.append(h('p', { class: 'muted', text: 'Only one version so far.' }));
  return panel;
}

function servedAtText(answer) {
  const when = fmt.time(Date.parse(answer.at) / 1000);
  const prod = answer.prod_version ? `v${answer.prod_version} was prod at ${when}` : `No version was prod at ${when}`;
  const r = answer.rollout;
  if (!r) return `${prod}; no rollout was running.`;
  const parts = [`${r.mode || 'a'} rollout of ${r.candidate ? `v${r.candidate}` : 'a candidate'}`];
  if (r.percent !== null && r.percent !== undefined) parts.push(`at ${fmt.num(r.percent)}%`);
  if (r.sticky) parts.push(`sticky ${r.sticky}`);
  parts.push(`started ${fmt.time(r.started_at)}`);
  if (r.segment) {
    const seg = [...(r.segment.tiers || []).map((t) => `tier ${t}`), ...(r.segment.tenants || []).map((t) => `tenant ${t}`)];
    if (seg.length) parts.push(`reaching ${seg.join(', ')}`);
  }
  return `${prod}; ${parts.join(', ')}.`;
}

function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function historyPanel(key, entries) {
  const at = h('input', { id: 'history-at', type: 'datetime-local', step: '1', value: localInputValue(new Date()), testid: 'history-at' });
  const served = h('div', { 'aria-live': 'polite' });
  const form = h(
    'form',
    { class: 'toolbar' },
    h('div', { class: 'field' }, h('label', { for: 'history-at', text: 'What was served at (your local time)' }), at),
    h('button', { type: 'submit', class: 'button', text: 'Show', testid: 'history-at-show' }),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const moment = new Date(at.value);
    if (!at.value || Number.isNaN(moment.getTime())) {
      served.replaceChildren(h('p', { class: 'field-error', role: 'alert', text: 'Choose a date and time.' }));
      return;
    }
    try {
      const answer = await api.get(`/prompts/${encodeURIComponent(key.slug)}/history`, { ...key.query, at: moment.toISOString() });
      served.replaceChildren(h('p', { class: 'served-at', testid: 'history-served', text: servedAtText(answer) }));
    } catch (err) {
      served.replaceChildren(errorBox(err));
    }
  });
  return h(
    'section',
    { class: 'panel', 'aria-labelledby': 'history-heading' },
    h('h2', { id: 'history-heading' }, 'History and audit ', h('span', { class: 'count', text: `(${entries.length} newest)` })),
    form,
    served,
    auditTable(entries, { showSlug: false, testid: 'history-table', empty: 'No audit entries.' }),
  );
}

// -- writes (admin only) ----------------------------------------------------------------------------

function servedNote(answer) {
  const fleet = answer && answer.served && answer.served.fleet;
  if (!fleet) return '';
  if (fleet.complete) return ` Served by ${fleet.confirmed} of ${fleet.replicas} live replicas.`;
  return ` ${fleet.confirmed} of ${fleet.replicas} live replicas serve it so far.`;
}

function checkbox(id, testid, label, hint) {
  const input = h('input', { id, type: 'checkbox', testid });
  return { input, element: h('label', { class: 'field-inline', for: id, title: hint }, input, label) };
}

// A tier or tenant name as the API takes it in a segment (admin_models.SLUG_REGEX).
const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

// "pro, enterprise" → ['pro', 'enterprise'] (each once, in the order written); throws with a
// message naming the first name the API would refuse.
function parseNames(text, what) {
  const names = [...new Set(text.split(',').map((n) => n.trim()).filter(Boolean))];
  const bad = names.find((n) => !NAME_RE.test(n));
  if (bad !== undefined) {
    throw new Error(`“${bad}” is not a ${what} name: letters, digits, “.”, “_” and “-”, at most 64, separated by commas.`);
  }
  return names;
}

function segmentText(segment) {
  if (!segment) return 'every caller';
  const parts = [];
  if (segment.tiers.length) parts.push(`tier${segment.tiers.length === 1 ? '' : 's'} ${segment.tiers.join(', ')}`);
  if (segment.tenants.length) parts.push(`tenant${segment.tenants.length === 1 ? '' : 's'} ${segment.tenants.join(', ')}`);
  return `only ${parts.join(' and ')} (everyone else stays on stable)`;
}

function parseSteps(text) {
  const parts = text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
  const steps = parts.map(Number);
  if (steps.some((n) => !Number.isFinite(n))) throw new Error('Steps are percents separated by commas, e.g. 10, 25, 50.');
  return steps;
}

// What a rollback would restore, replayed from the audit as the registry does
// (lifecycle.prod_stack): each promote moves its version to the top of the prod stack, a
// rollback pops the top first. `entries` are history entries, newest first; `complete`
// says they are the whole history. Answers a version number, null when the history shows
// there is no former prod (the API would refuse with 409), or undefined when a partial
// history cannot tell.
export function rollbackTarget(entries, prod, complete) {
  const stack = [];
  for (const e of [...entries].reverse()) {
    if (e.action !== 'promote' && e.action !== 'rollback') continue;
    if (e.action === 'rollback' && stack.length) stack.pop();
    const i = stack.indexOf(e.version);
    if (i >= 0) stack.splice(i, 1);
    stack.push(e.version);
  }
  if (prod !== null && prod !== undefined && stack[stack.length - 1] !== prod) {
    // A registry restored from a snapshot starts its history at the restore (as the store does).
    const i = stack.indexOf(prod);
    if (i >= 0) stack.splice(i, 1);
    stack.push(prod);
  }
  if (stack.length >= 2) return stack[stack.length - 2];
  return complete ? null : undefined;
}

// The rollback control's explanation: what it restores, or why it is off.
export function rollbackHint(target, prod) {
  if (prod === null || prod === undefined) return 'Nothing to roll back: no version is prod.';
  if (target === null) return `Nothing to roll back to: v${prod} is the only version that has been prod.`;
  if (target === undefined) return 'The last former prod version becomes prod again.';
  return `v${target}, the last former prod, becomes prod again (v${prod} is deprecated).`;
}

function writesPanel(key, prompt, running, refresh, history) {
  const versions = prompt.data;
  const prod = prompt.prod_version;
  const result = h('div', { testid: 'write-result' });
  const fail = (err) => {
    result.replaceChildren(errorBox(err));
    toast(err.message, 'error');
    result.scrollIntoView({ block: 'nearest' });
  };
  const apiPath = (suffix) => `/prompts/${encodeURIComponent(key.slug)}${suffix}`;

  // Promote a version.
  const candidates = versions.filter((v) => v.version !== prod).reverse();
  const promoteSelect = h(
    'select',
    { id: 'promote-version', testid: 'promote-version' },
    candidates.map((v) => h('option', { value: String(v.version), text: versionLabel(v) })),
  );
  const promoteGates = checkbox('promote-override-gates', 'promote-override-gates', 'Override gates', 'Go ahead although the version has not passed its gates (audited)');
  const promoteForce = checkbox('promote-force', 'promote-force', 'Force', 'Go ahead although it breaks overrides in use (audited)');
  const promoteButton = h('button', { type: 'submit', class: 'button button-primary', text: 'Promote…', testid: 'promote-submit', disabled: !candidates.length });
  const promoteForm = h(
    'form',
    { class: 'stack', 'aria-labelledby': 'promote-heading' },
    h('div', { class: 'field' }, h('label', { for: 'promote-version', text: 'Version' }), promoteSelect),
    h('div', { class: 'actions' }, promoteGates.element, promoteForce.element),
    h('div', { class: 'actions' }, promoteButton),
  );
  promoteForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const version = Number(promoteSelect.value);
    if (!version) return;
    const reason = await confirmAction({
      title: `Promote v${version}`,
      summary: h(
        'p',
        null,
        `Make v${version} of ${key.text} prod`,
        prod ? ` (now v${prod}, which becomes deprecated)` : '',
        '. Every request for it gets v',
        String(version),
        ' once the replicas have it.',
      ),
      confirmLabel: `Promote v${version}`,
    });
    if (reason === null) return;
    promoteButton.disabled = true;
    try {
      const answer = await api.write('POST', apiPath('/promote'), {
        body: { version, override_gates: promoteGates.input.checked || undefined, force: promoteForce.input.checked || undefined },
        query: key.query,
        reason,
      });
      toast(`v${version} of ${key.text} is prod.${servedNote(answer)}`, 'ok');
      refresh();
    } catch (err) {
      promoteButton.disabled = false;
      // Disabled while the write ran, it lost the focus: give it back with the refusal.
      promoteButton.focus();
      fail(err);
    }
  });

  // Roll back.
  const target = rollbackTarget(history.entries, prod, history.complete);
  const rollbackButton = h('button', {
    type: 'button', class: 'button button-danger', text: 'Roll back…', testid: 'rollback-submit',
    disabled: !prod || target === null, 'aria-describedby': 'rollback-hint',
  });
  rollbackButton.addEventListener('click', async () => {
    const reason = await confirmAction({
      title: 'Roll back',
      summary: h('p', null, target
        ? `Make v${target} of ${key.text} prod again (v${prod} is prod now and becomes deprecated).`
        : `Make the last former prod of ${key.text} prod again (v${prod} is prod now).`),
      confirmLabel: 'Roll back',
      danger: true,
    });
    if (reason === null) return;
    rollbackButton.disabled = true;
    try {
      const answer = await api.write('POST', apiPath('/rollback'), { body: {}, query: key.query, reason });
      toast(`${key.text} rolled back to v${answer.version}.${servedNote(answer)}`, 'ok');
      refresh();
    } catch (err) {
      rollbackButton.disabled = false;
      // Disabled while the write ran, it lost the focus: give it back with the refusal.
      rollbackButton.focus();
      fail(err);
    }
  });

  const panel = h(
    'section',
    { class: 'panel writes', testid: 'writes', 'aria-labelledby': 'writes-heading' },
    h('h2', { id: 'writes-heading', text: 'Change' }),
    h('h3', { id: 'promote-heading', text: 'Promote a version' }),
    candidates.length ? promoteForm : h('p', { class: 'muted', text: 'No other version to promote.' }),
    h('h3', { text: 'Roll back' }),
    h('p', { class: 'hint', id: 'rollback-hint', testid: 'rollback-hint', text: rollbackHint(target, prod) }),
    h('div', { class: 'actions' }, rollbackButton),
    h('h3', { text: 'Start a rollout' }),
    running
      ? h('p', null, `A ${running.mode} rollout of v${running.candidate} is running: `, h('a', { href: routeHash('rollouts', key.text), text: 'manage it on its page' }), '.')
      : rolloutForm(key, versions, prod, fail, apiPath),
    result,
  );
  return panel;
}

function rolloutForm(key, versions, prod, fail, apiPath) {
  const choices = versions.filter((v) => v.version !== prod).reverse();
  if (!choices.length) return h('p', { class: 'muted', text: 'No version other than prod to try.' });
  const candidate = h(
    'select',
    { id: 'rollout-candidate', testid: 'rollout-candidate', required: true },
    choices.map((v) => h('option', { value: String(v.version), text: versionLabel(v) })),
  );
  const mode = h(
    'select',
    { id: 'rollout-mode', testid: 'rollout-mode' },
    h('option', { value: 'canary', text: 'canary' }),
    h('option', { value: 'shadow', text: 'shadow' }),
  );
  const percent = h('input', { id: 'rollout-percent', type: 'number', min: '0', max: '100', step: '0.01', value: '10', required: true, inputmode: 'decimal', testid: 'rollout-percent' });
  const sticky = h(
    'select',
    { id: 'rollout-sticky', testid: 'rollout-sticky' },
    h('option', { value: 'none', text: 'none' }),
    h('option', { value: 'user', text: 'user' }),
    h('option', { value: 'tenant', text: 'tenant' }),
    h('option', { value: 'header', text: 'a header…' }),
  );
  const stickyHeader = h('input', { id: 'rollout-sticky-header', type: 'text', value: 'x-user-id', autocomplete: 'off', spellcheck: 'false', disabled: true, testid: 'rollout-sticky-header' });
  const stickyHeaderField = h('div', { class: 'field', hidden: true }, h('label', { for: 'rollout-sticky-header', text: 'Header' }), stickyHeader);
  sticky.addEventListener('change', () => {
    stickyHeader.disabled = sticky.value !== 'header';
    stickyHeaderField.hidden = stickyHeader.disabled;
  });
  const analysis = checkbox('rollout-analysis', 'rollout-analysis', 'Automated analysis', 'Verdicts every interval; ramps through the steps and promotes when they pass');
  const steps = h('input', { id: 'rollout-steps', type: 'text', value: '10, 25, 50', inputmode: 'decimal', autocomplete: 'off', testid: 'rollout-steps' });
  const interval = h('input', { id: 'rollout-interval', type: 'number', min: '1', max: '3600', step: '1', value: '60', testid: 'rollout-interval' });
  const minSamples = h('input', { id: 'rollout-min-samples', type: 'number', min: '1', step: '1', value: '100', testid: 'rollout-min-samples' });
  const failureLimit = h('input', { id: 'rollout-failure-limit', type: 'number', min: '0', step: '1', value: '0', testid: 'rollout-failure-limit' });
  const analysisFields = h(
    'div',
    { class: 'form-grid' },
    h('div', { class: 'field' }, h('label', { for: 'rollout-steps', text: 'Steps (%)' }), steps),
    h('div', { class: 'field' }, h('label', { for: 'rollout-interval', text: 'Interval (s)' }), interval),
    h('div', { class: 'field' }, h('label', { for: 'rollout-min-samples', text: 'Min samples' }), minSamples),
    h('div', { class: 'field' }, h('label', { for: 'rollout-failure-limit', text: 'Failures allowed' }), failureLimit),
  );
  const setAnalysis = () => {
    for (const input of [steps, interval, minSamples, failureLimit]) input.disabled = !analysis.input.checked;
  };
  analysis.input.addEventListener('change', setAnalysis);
  setAnalysis();
  // Who the rollout reaches: a base's (or a variant's) may be kept to some tiers and
  // tenants; an override's reaches its own tier or tenant and takes no segment (the API
  // would refuse one).
  const segmentTiers = h('input', { id: 'rollout-segment-tiers', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. pro, enterprise', 'aria-describedby': 'rollout-segment-help', testid: 'rollout-segment-tiers' });
  const segmentTenants = h('input', { id: 'rollout-segment-tenants', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. acme, initech', 'aria-describedby': 'rollout-segment-help', testid: 'rollout-segment-tenants' });
  const segmentFields = key.layer
    ? h('p', { class: 'hint', testid: 'rollout-segment-hint', text: `Reaches: ${key.layer.replace('=', ' ')} only (an override’s rollout takes no segment).` })
    : h(
        'fieldset',
        { class: 'segment' },
        h('legend', { text: 'Reaches (optional)' }),
        h(
          'div',
          { class: 'form-grid' },
          h('div', { class: 'field' }, h('label', { for: 'rollout-segment-tiers', text: 'Only tiers' }), segmentTiers),
          h('div', { class: 'field' }, h('label', { for: 'rollout-segment-tenants', text: 'Only tenants' }), segmentTenants),
        ),
        h('p', { class: 'hint', id: 'rollout-segment-help', text: 'Comma-separated names. Empty: every caller. Otherwise only the tenants of these tiers and these tenants get the rollout and count in its analysis; fixed for the rollout’s life.' }),
      );
  const gates = checkbox('rollout-override-gates', 'rollout-override-gates', 'Override gates', 'Start although the candidate has not passed its gates (audited)');
  const force = checkbox('rollout-force', 'rollout-force', 'Force', 'Start although it breaks overrides in use (audited)');
  const submit = h('button', { type: 'submit', class: 'button button-primary', text: 'Start rollout…', testid: 'rollout-submit' });
  const problem = h('p', { class: 'field-error', role: 'alert' });
  const form = h(
    'form',
    { class: 'rollout-form', testid: 'rollout-form', novalidate: true },
    h(
      'div',
      { class: 'form-grid' },
      h('div', { class: 'field' }, h('label', { for: 'rollout-candidate', text: 'Candidate' }), candidate),
      h('div', { class: 'field' }, h('label', { for: 'rollout-mode', text: 'Mode' }), mode),
      h('div', { class: 'field' }, h('label', { for: 'rollout-percent', text: 'Percent' }), percent),
      h('div', { class: 'field' }, h('label', { for: 'rollout-sticky', text: 'Sticky on' }), sticky),
      stickyHeaderField,
    ),
    h('p', { class: 'hint', text: 'Canary: that share of requests is served the candidate. Shadow: copies go to the candidate and the answers are compared; callers get stable. Sticky: the same user, tenant or header value keeps its arm.' }),
    h(
      'fieldset',
      { class: 'analysis' },
      h('legend', null, analysis.element),
      analysisFields,
      h('p', { class: 'hint', text: 'Min samples: requests per arm in a window before a verdict can pass or fail. Steps: the percents it ramps through, then promotes.' }),
    ),
    segmentFields,
    h('div', { class: 'actions' }, gates.element, force.element),
    problem,
    h('div', { class: 'actions' }, submit),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    problem.textContent = '';
    const body = { candidate: Number(candidate.value), mode: mode.value, percent: Number(percent.value) };
    if (percent.value === '' || !Number.isFinite(body.percent) || body.percent < 0 || body.percent > 100) {
      problem.textContent = 'The percent is a number from 0 to 100.';
      percent.focus();
      return;
    }
    if (sticky.value === 'header') {
      const name = stickyHeader.value.trim();
      if (!name) {
        problem.textContent = 'Name the header the rollout sticks on.';
        stickyHeader.focus();
        return;
      }
      body.sticky = `header:${name}`;
    } else body.sticky = sticky.value;
    if (analysis.input.checked) {
      try {
        body.analysis = {
          steps: parseSteps(steps.value),
          interval: Number(interval.value),
          min_samples: Number(minSamples.value),
          failure_limit: Number(failureLimit.value),
        };
      } catch (err) {
        problem.textContent = err.message;
        steps.focus();
        return;
      }
    }
    if (!key.layer) {
      let tiers;
      let tenants;
      try {
        tiers = parseNames(segmentTiers.value, 'tier');
      } catch (err) {
        problem.textContent = err.message;
        segmentTiers.focus();
        return;
      }
      try {
        tenants = parseNames(segmentTenants.value, 'tenant');
      } catch (err) {
        problem.textContent = err.message;
        segmentTenants.focus();
        return;
      }
      if (tiers.length || tenants.length) body.segment = { tiers, tenants };
    }
    if (gates.input.checked) body.override_gates = true;
    if (force.input.checked) body.force = true;
    const reason = await confirmAction({
      title: `Start a ${body.mode} rollout`,
      summary: h(
        'dl',
        { class: 'facts' },
        h('dt', { text: 'Prompt' }),
        h('dd', { text: key.text }),
        h('dt', { text: 'Candidate' }),
        h('dd', { text: `v${body.candidate} against ${prod ? `v${prod}` : 'no prod'}` }),
        h('dt', { text: 'Mode' }),
        h('dd', { text: body.mode }),
        h('dt', { text: 'Percent' }),
        h('dd', { text: `${body.percent}%` }),
        h('dt', { text: 'Sticky' }),
        h('dd', { text: body.sticky }),
        h('dt', { text: 'Reaches' }),
        h('dd', { testid: 'confirm-segment', text: key.layer ? `${key.layer.replace('=', ' ')} only` : segmentText(body.segment) }),
        h('dt', { text: 'Analysis' }),
        h('dd', { text: body.analysis ? `every ${body.analysis.interval} s, steps ${body.analysis.steps.join(', ') || 'none'}` : 'none (you ramp and promote)' }),
      ),
      confirmLabel: 'Start rollout',
    });
    if (reason === null) return;
    submit.disabled = true;
    try {
      const answer = await api.write('PUT', apiPath('/rollout'), { body, query: key.query, reason });
      toast(`${body.mode} rollout of v${body.candidate} started at ${body.percent}%.${servedNote(answer)}`, 'ok');
      navigate(routeHash('rollouts', key.text));
    } catch (err) {
      submit.disabled = false;
      // Disabled while the write ran, it lost the focus: give it back with the refusal.
      submit.focus();
      fail(err);
    }
  });
  return form;
}

// -- the page --------------------------------------------------------------------------------------

// The history entries a prompt's page reads (newest first).
const HISTORY_LIMIT = 50;

// Where a key sorts in its slug's "Layers and variants" line: the base lines first, then
// the tiers', then the tenants' overrides, each by name, a variant after its default line.
function layerOrder(key) {
  const rank = key.layer ? (key.layer.startsWith('tier=') ? 1 : 2) : 0;
  return [rank, key.layer || '', key.variant || ''];
}

function compareKeys(a, b) {
  const x = layerOrder(a);
  const y = layerOrder(b);
  for (let i = 0; i < x.length; i += 1) {
    if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
  }
  return 0;
}

function layerLabel(key) {
  const parts = [];
  if (key.layer) parts.push(key.layer.replace('=', ' '));
  if (key.variant) parts.push(`variant ${key.variant}`);
  return parts.length ? parts.join(', ') : 'base';
}

// Every key of this prompt's slug (its base, variants, tier and tenant overrides), from the
// list answer the prompts page reads too: one request whatever the registry's size. Asked
// once the page is drawn, so the page is as quick as before; `fill` draws the answer, or
// null (the list could not be read: the line goes, the page is worth showing without it).
function layersLine(key) {
  const nav = h(
    'nav',
    { class: 'layers', 'aria-labelledby': 'layers-heading', 'aria-busy': 'true', testid: 'prompt-layers' },
    h('span', { id: 'layers-heading', class: 'layers-title', text: 'Layers and variants:' }),
    h('span', { class: 'muted', text: '…' }),
  );
  const fill = (listed) => {
    if (!listed) {
      nav.remove();
      return;
    }
    const keys = listed
      .map((p) => ({ prompt: p, key: promptKey(p.slug) }))
      .filter((k) => k.key.slug === key.slug)
      .sort((a, b) => compareKeys(a.key, b.key));
    const others = keys.filter((k) => k.key.text !== key.text);
    const items = keys.map(({ prompt, key: k }) => {
      const prod = prompt.prod_version ? `prod v${prompt.prod_version}` : 'no prod';
      const note = h('span', { class: 'key-layer', text: ` (${layerLabel(k)}, ${prod})` });
      if (k.text === key.text) {
        return h('li', null, h('span', { class: 'layer-current', 'aria-current': 'page', testid: 'prompt-layer-current', text: k.text }), note);
      }
      return h('li', null, h('a', { href: routeHash('prompts', k.text), testid: 'prompt-layer-link', 'data-key': k.text, text: k.text }), note);
    });
    nav.replaceChildren(
      nav.firstChild,
      others.length
        ? h('ul', { class: 'layers-list' }, items)
        : h('span', { class: 'muted', text: 'none (no model variant, no tier or tenant override).' }),
    );
    nav.setAttribute('data-count', String(others.length));
    nav.removeAttribute('aria-busy');
  };
  return { element: nav, fill };
}

async function renderPrompt(view, params) {
  const key = promptKey(params.slug);
  const path = `/prompts/${encodeURIComponent(key.slug)}`;
  // "." or ".." would walk up the API's path: the shell refuses the key's own read without
  // a request (and its message is the page's answer), so the other reads must not go out.
  if (key.slug === '.' || key.slug === '..') await api.get(path, key.query);
  const [prompt, rollouts, audit] = await Promise.all([
    api.get(path, key.query),
    api.get('/rollouts'),
    api.get(`${path}/history`, { ...key.query, limit: HISTORY_LIMIT }),
  ]);
  const running = rollouts.data.find((r) => r.slug === key.text) || null;
  const versions = prompt.data;
  const byNumber = new Map(versions.map((v) => [v.version, v]));
  const wanted = Number(params.query.get('v'));
  let selected = byNumber.get(wanted) || byNumber.get(prompt.prod_version) || versions[versions.length - 1];

  const layers = layersLine(key);
  const refresh = () => navigate(`${routeHash('prompts', key.text)}${selected ? `?v=${selected.version}` : ''}`);

  const head = h(
    'div',
    null,
    h(
      'nav',
      { class: 'crumbs', 'aria-label': 'Breadcrumb' },
      h('a', { href: '#/', text: 'Prompts' }),
      ' / ',
      // A layer's or a variant's page: back to the base prompt it belongs to.
      key.layer || key.variant
        ? [h('a', { href: routeHash('prompts', key.slug), testid: 'prompt-base-link', text: key.slug }), ' / ']
        : null,
    ),
    h(
      'div',
      { class: 'page-head' },
      h('h1', { testid: 'prompt-title', text: key.text }),
      h(
        'span',
        { class: 'meta', testid: 'prompt-meta' },
        `prod ${prompt.prod_version ? `v${prompt.prod_version}` : 'none'} · latest v${prompt.latest_version} · ${prompt.versions} version${prompt.versions === 1 ? '' : 's'} · updated ${fmt.ago(prompt.updated_at)}`,
      ),
    ),
    key.layer || key.variant
      ? h('p', { class: 'hint', text: `${key.layer ? `The ${key.layer.replace('=', ' ')} override` : 'The base'}${key.variant ? ` of variant ${key.variant}` : ''} of ${key.slug}.` })
      : null,
    layers.element,
    running
      ? h(
          'div',
          { class: 'banner banner-warn', testid: 'rollout-banner' },
          `A ${running.mode} rollout of v${running.candidate} is running at ${fmt.num(running.percent)}% (sticky ${running.sticky}, since ${fmt.time(running.started_at)}, by ${running.actor}). `,
          h('a', { href: routeHash('rollouts', key.text), testid: 'rollout-link', text: 'View the rollout' }),
        )
      : null,
  );

  const detail = h('div');
  const table = dataTable({
    columns: [
      {
        label: 'Version',
        cell: (v) =>
          h('button', {
            type: 'button',
            class: 'button button-small',
            testid: 'version-open',
            'aria-controls': 'version-detail',
            text: `v${v.version}`,
            on: { click: () => select(v) },
          }),
      },
      { label: 'Status', cell: (v) => badge(v.status) },
      { label: 'Author', cell: (v) => v.author },
      { label: 'Changelog', class: 'wrap', cell: (v) => v.changelog || '—' },
      { label: 'Hash', cell: (v) => shortHash(v.sha256) },
      { label: 'Created', class: 'nowrap', cell: (v) => h('span', { title: fmt.ago(v.created_at), text: fmt.time(v.created_at) }) },
    ],
    rows: versions.slice().reverse(),
    testid: 'versions-table',
    rowTestid: () => 'version-row',
    caption: 'Versions, newest first',
  });
  const rows = [...table.querySelectorAll('tbody tr')];
  const newestFirst = versions.slice().reverse();
  rows.forEach((tr, i) => {
    tr.setAttribute('data-version', String(newestFirst[i].version));
    tr.setAttribute('data-status', newestFirst[i].status);
  });

  function select(v) {
    selected = v;
    rows.forEach((tr, i) => {
      const on = newestFirst[i].version === v.version;
      tr.classList.toggle('selected', on);
      tr.querySelector('button')?.setAttribute('aria-pressed', on ? 'true' : 'false');
    });
    detail.replaceChildren(versionPanel(v));
    history.replaceState(null, '', `${routeHash('prompts', key.text)}?v=${v.version}`);
  }

  const versionsPanel = h(
    'section',
    { class: 'panel', 'aria-labelledby': 'versions-heading' },
    h('h2', { id: 'versions-heading', text: 'Versions' }),
    h('p', { class: 'hint', text: 'Choose a version to read its template, variables and parameters.' }),
    table,
  );
  view.append(
    head,
    session.canWrite
      ? h('div', { class: 'split split-2' }, versionsPanel, writesPanel(key, prompt, running, refresh, { entries: audit.data || [], complete: (audit.data || []).length < HISTORY_LIMIT }))
      : versionsPanel,
    h('div', { id: 'version-detail' }, detail),
    diffPanel(key, versions, prompt.prod_version),
    historyPanel(key, audit.data || []),
  );
  if (selected) select(selected);
  pageReady(view);
  // A failure (a 401 aside, which the shell handles) leaves the line out, not the page.
  api.get('/prompts').then((answer) => layers.fill(answer.data), () => layers.fill(null));
}

export const routes = [
  { path: '/', title: 'Prompts', render: renderList },
  { path: '/prompts/:slug', title: 'Prompt', render: renderPrompt },
];
