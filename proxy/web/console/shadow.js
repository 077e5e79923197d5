// #/shadow/:slug — a rollout's shadow pairs side by side (the answer the caller got next to
// the shadow's, word differences marked), filters, and the noise-calibrated report.
//
// data-testid set here:
//   shadow-page, shadow-error, link-rollout, link-prompt, shadow-report,
//   shadow-verdict (data-result = pass|fail|inconclusive), shadow-measure (each measure
//   row; data-measure, data-result), shadow-filters, filter-diverging, filter-measure,
//   filter-kind, filter-threshold, filter-limit, pairs-count, shadow-pairs, shadow-none,
//   shadow-pair (each pair; data-kind, data-pair-id, data-diverging), pair-divergence
//   (each measure of a pair; data-measure), pair-primary, pair-shadow, pair-text (the
//   answer of an arm, with <del>/<ins>), diff-whole (textdiff.js).

import {
  ApiError, api, h, poll, fmt, errorBox, pageReady, badge, promptKey, routeHash,
} from './app.js';
import { useStyles } from './charts.js';
import { diffWords, renderSide } from './textdiff.js';

const REFRESH_MS = 5000;
const LIMITS = [50, 100, 200, 500];

function enc(slug) {
  return encodeURIComponent(slug);
}

// A p-value as a reader compares it with alpha: two digits, tiny ones as "< 0.0001".
function pText(p) {
  if (p === null || p === undefined) return '—';
  if (p < 0.0001) return '< 0.0001';
  return String(Number(p.toPrecision(2)));
}

function num(x, digits = 3) {
  if (x === null || x === undefined) return '—';
  if (typeof x !== 'number') return String(x);
  if (Number.isInteger(x)) return String(x);
  return String(Number(x.toFixed(digits)));
}

export function parsePairs(text) {
  const pairs = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue; // the follow mode's heartbeats, the final newline
    try {
      pairs.push(JSON.parse(line));
    } catch {
      // A line cut short (a sink rotating under the read) is skipped, not fatal.
    }
  }
  return pairs;
}

const KIND_LABELS = { candidate: 'candidate', stable: 'noise: stable rerun' };

// -- the report -----------------------------------------------------------------------------

function reportView(report) {
  if (!report) return h('p', { class: 'ro-muted', text: 'No report: this prompt has had no rollout.' });
  const p = report.pairs || {};
  return [
    h('p', { class: 'sh-verdict-line' },
      'Verdict: ',
      h('span', { testid: 'shadow-verdict', 'data-result': report.result }, badge(report.result)),
      ` — does the candidate diverge from stable more than stable from itself? Rollout `,
      h('code', { text: report.rollout_id }),
      report.rollout_running === true ? ' (running)' : report.rollout_running === false ? ' (ended)' : '',
      `, pairs since ${report.since}: ${p.candidate ?? 0} candidate, ${p.stable ?? 0} noise, ${p.skipped ?? 0} skipped. `,
      `alpha ${num(report.alpha)}, margin ${num(report.margin)}, at least ${report.min_pairs} pairs a side.`),
    h('div', { class: 'ro-table-wrap' },
      h('table', { class: 'sh-measures' },
        h('thead', {},
          h('tr', {},
            h('th', { scope: 'col', rowspan: '2', text: 'measure' }),
            h('th', { scope: 'col', rowspan: '2', text: 'result' }),
            h('th', { scope: 'colgroup', colspan: '4', text: 'noise (stable vs stable)' }),
            h('th', { scope: 'colgroup', colspan: '4', text: 'candidate (stable vs candidate)' }),
            h('th', { scope: 'col', rowspan: '2', text: 'p-value' }),
            h('th', { scope: 'col', rowspan: '2', text: 'effect' })),
          h('tr', {}, ['n', 'mean', 'p50', 'p95', 'n', 'mean', 'p50', 'p95'].map((c) => h('th', { scope: 'col', text: c })))),
        h('tbody', {}, (report.measures || []).map((m) =>
          h('tr', {
            testid: 'shadow-measure', 'data-measure': m.measure, 'data-result': m.result,
            // No pair measured it (no JSON answer, no tool call): every figure is a dash.
            class: !m.noise_n && !m.candidate_n ? 'sh-measure-empty' : null,
          },
            h('th', { scope: 'row', 'data-label': 'measure', text: m.measure }),
            h('td', { 'data-label': 'result' }, badge(m.result)),
            h('td', { 'data-label': 'noise n', text: num(m.noise_n) }),
            h('td', { 'data-label': 'noise mean', text: num(m.noise_mean) }),
            h('td', { 'data-label': 'noise p50', text: num(m.noise_p50) }),
            h('td', { 'data-label': 'noise p95', text: num(m.noise_p95) }),
            h('td', { 'data-label': 'candidate n', text: num(m.candidate_n) }),
            h('td', { 'data-label': 'candidate mean', text: num(m.candidate_mean) }),
            h('td', { 'data-label': 'candidate p50', text: num(m.candidate_p50) }),
            h('td', { 'data-label': 'candidate p95', text: num(m.candidate_p95) }),
            h('td', { 'data-label': 'p-value', text: pText(m.p_value) }),
            h('td', { 'data-label': 'effect', text: num(m.effect) })))))),
  ];
}

// -- a pair ---------------------------------------------------------------------------------

function armFacts(arm) {
  const facts = [
    ['status', arm.status],
    ['finish', arm.finish_reason],
    ['latency', arm.latency_ms === null || arm.latency_ms === undefined ? null : fmt.ms(arm.latency_ms / 1000)],
    ['TTFT', arm.ttft_ms === null || arm.ttft_ms === undefined ? null : fmt.ms(arm.ttft_ms / 1000)],
    ['tokens in/out', arm.input_tokens === undefined && arm.output_tokens === undefined ? null : `${arm.input_tokens ?? '—'} / ${arm.output_tokens ?? '—'}`],
    ['model', arm.model],
    arm.error_class ? ['error', arm.error_class] : null,
    arm.truncated ? ['cut', 'text cut at the sink limit'] : null,
    arm.layers ? ['layers', arm.layers] : null,
  ].filter(Boolean);
  return h('dl', { class: 'sh-arm-facts' },
    facts.map(([k, v]) => h('div', {}, h('dt', { text: k }), h('dd', { text: v === null || v === undefined ? '—' : String(v) }))));
}

function toolCalls(arm) {
  if (!arm.tool_calls || !arm.tool_calls.length) return null;
  return h('ul', { class: 'sh-tools', 'aria-label': 'tool calls' },
    arm.tool_calls.map((t) => h('li', {}, h('code', { text: `${t.name ?? '?'}(${t.arguments ?? ''})` }))));
}

function armView(pair, side, diff) {
  const arm = pair[side];
  const isPrimary = side === 'primary';
  const role = isPrimary ? 'Primary: the caller got' : pair.kind === 'stable' ? 'Shadow: stable rerun' : 'Shadow: candidate';
  const title = h('h3', {}, role, arm && arm.version !== null && arm.version !== undefined ? ` (v${arm.version})` : '');
  if (!arm) {
    return h('div', { class: `sh-arm sh-${side}`, testid: `pair-${side}` }, title,
      h('p', { class: 'ro-muted', text: isPrimary ? 'The primary never reported in time.' : 'No shadow answer.' }));
  }
  const text = arm.text || '';
  const body = diff
    ? renderSide(diff, side)
    : [text];
  return h('div', { class: `sh-arm sh-${side}`, testid: `pair-${side}` },
    title,
    armFacts(arm),
    h('div', { class: 'sh-text', testid: 'pair-text', tabindex: '0', role: 'region', 'aria-label': isPrimary ? 'primary answer' : 'shadow answer' },
      text ? body : h('span', { class: 'ro-muted', text: '(no text)' })),
    toolCalls(arm));
}

function maxDivergence(pair) {
  const values = Object.values(pair.divergence || {}).filter((v) => typeof v === 'number');
  return values.length ? Math.max(...values) : null;
}

function pairView(pair, diverging) {
  const both = pair.primary && pair.shadow;
  const diff = both ? diffWords(pair.primary.text || '', pair.shadow.text || '') : null;
  const divergence = Object.entries(pair.divergence || {});
  return h('article', {
    class: `sh-pair${diverging ? ' sh-diverging' : ''}`,
    testid: 'shadow-pair',
    'data-kind': pair.kind || '',
    'data-pair-id': pair.pair_id,
    'data-diverging': diverging ? 'true' : 'false',
  },
  h('header', { class: 'sh-pair-head' },
    h('span', { class: `sh-kind sh-kind-${pair.kind}`, text: KIND_LABELS[pair.kind] || pair.kind || 'unknown kind' }),
    h('time', { datetime: new Date(pair.ts * 1000).toISOString(), text: fmt.time(pair.ts) }),
    pair.tenant ? h('span', { text: `tenant ${pair.tenant}` }) : null,
    pair.stream ? h('span', { text: 'stream' }) : null,
    pair.request_id ? h('code', { class: 'sh-reqid', title: 'request id', text: pair.request_id }) : null),
  divergence.length
    ? h('ul', { class: 'sh-divergence', 'aria-label': 'divergence per measure (0 same, 1 all different)' },
        divergence.map(([m, v]) => h('li', {
          testid: 'pair-divergence', 'data-measure': m,
          class: typeof v === 'number' && v > 0 ? 'sh-div-on' : 'sh-div-off',
        }, h('span', { class: 'sh-div-name', text: m }), ' ', h('strong', { text: v === null ? 'n/a' : num(v) }))))
    : h('p', { class: 'ro-muted', text: 'No divergence measured (a half failed or is missing).' }),
  diff && diff.whole
    ? h('p', { class: 'sh-note', testid: 'diff-whole', text: 'Too long or too different to diff word by word: each answer is marked as a whole.' })
    : null,
  diff && !diff.whole && diff.changed === 0 && (pair.primary.text || '') === (pair.shadow.text || '')
    ? h('p', { class: 'sh-note', text: 'Same text.' })
    : null,
  h('div', { class: 'sh-arms' }, armView(pair, 'primary', diff), armView(pair, 'shadow', diff)));
}

// -- the page -------------------------------------------------------------------------------

async function render(view, params) {
  const styled = useStyles();
  const key = promptKey(params.slug);
  const slug = key.text;
  const path = `/prompts/${enc(key.slug)}/shadow`;
  const errorSlot = h('div', { testid: 'shadow-error', class: 'ro-error', 'aria-live': 'polite' });
  const reportSlot = h('div');
  const list = h('div', { class: 'sh-pairs', testid: 'shadow-pairs' });
  const count = h('p', { class: 'ro-muted', testid: 'pairs-count', 'aria-live': 'polite' });

  const diverging = h('input', { type: 'checkbox', id: 'filter-diverging', testid: 'filter-diverging' });
  const measure = h('select', { id: 'filter-measure', testid: 'filter-measure' },
    h('option', { value: '', text: 'any measure' }));
  const kind = h('select', { id: 'filter-kind', testid: 'filter-kind' },
    h('option', { value: '', text: 'both kinds' }),
    h('option', { value: 'candidate', text: 'candidate' }),
    h('option', { value: 'stable', text: 'noise (stable rerun)' }));
  const threshold = h('input', {
    type: 'number', id: 'filter-threshold', testid: 'filter-threshold', min: '0', max: '1',
    step: '0.05', value: '0', class: 'ro-number', inputmode: 'decimal',
  });
  const limit = h('select', { id: 'filter-limit', testid: 'filter-limit' },
    LIMITS.map((n) => h('option', { value: String(n), text: `last ${n}` })));

  const filters = h('form', { class: 'sh-filters', testid: 'shadow-filters', 'aria-label': 'Filter pairs' },
    // Each label holds its control, so the two stay together when the row wraps.
    h('label', { class: 'sh-check' }, diverging, ' diverging only'),
    h('label', { class: 'sh-field' }, h('span', { text: 'by measure' }), measure),
    h('label', { class: 'sh-field' }, h('span', { text: 'above' }), threshold),
    h('label', { class: 'sh-field' }, h('span', { text: 'kind' }), kind),
    h('label', { class: 'sh-field' }, h('span', { text: 'pairs' }), limit));
  filters.addEventListener('submit', (e) => e.preventDefault());

  view.replaceChildren(h('div', { class: 'sh-page', testid: 'shadow-page' },
    h('h1', {}, 'Shadow pairs ', h('span', { class: 'ro-slug', text: slug })),
    h('p', { class: 'ro-links' },
      h('a', { href: routeHash('rollouts', slug), testid: 'link-rollout', text: 'Rollout and verdicts' }),
      h('a', { href: routeHash('prompts', slug), testid: 'link-prompt', text: `Prompt ${slug}` })),
    errorSlot,
    h('section', { class: 'ro-section', testid: 'shadow-report', 'aria-label': 'Report' },
      h('h2', { text: 'Report: noise against candidate' }), reportSlot),
    h('section', { class: 'ro-section', 'aria-label': 'Pairs' },
      h('h2', {}, 'Pairs ', h('span', { class: 'ro-muted', text: '(newest first; the primary\'s words the shadow dropped are struck through, the shadow\'s new words underlined)' })),
      filters, count, list)));

  let pairs = [];
  let none = false;
  let ready = false;
  let busy = false;
  let reportKey = '';
  let pairsKey = '';
  let tick = 0;

  function measureValue(pair) {
    if (!measure.value) return maxDivergence(pair);
    const v = (pair.divergence || {})[measure.value];
    return typeof v === 'number' ? v : null;
  }

  function drawPairs() {
    if (none) {
      list.replaceChildren(h('p', { testid: 'shadow-none', class: 'ro-muted', text: `${slug} has had no rollout, so there are no shadow pairs.` }));
      count.textContent = '';
      return;
    }
    const min = Number(threshold.value) || 0;
    const shown = [];
    for (const pair of pairs) {
      if (kind.value && pair.kind !== kind.value) continue;
      const v = measureValue(pair);
      const isDiverging = v !== null && v > min;
      if (diverging.checked && !isDiverging) continue;
      if (measure.value && !diverging.checked && v === null) continue;
      shown.push([pair, isDiverging]);
    }
    count.textContent = `Showing ${shown.length} of ${pairs.length} pairs.`;
    list.replaceChildren(...(shown.length
      ? shown.map(([pair, d]) => pairView(pair, d))
      : [h('p', { class: 'ro-muted', text: pairs.length ? 'No pair matches the filters.' : 'No pair recorded yet for this rollout.' })]));
  }

  function syncMeasures() {
    const names = new Set();
    for (const p of pairs) for (const m of Object.keys(p.divergence || {})) names.add(m);
    const have = [...measure.options].map((o) => o.value).filter(Boolean);
    const want = [...names].sort();
    if (JSON.stringify(have) === JSON.stringify(want)) return;
    const chosen = measure.value;
    measure.replaceChildren(h('option', { value: '', text: 'any measure' }),
      ...want.map((m) => h('option', { value: m, text: m })));
    measure.value = want.includes(chosen) ? chosen : '';
  }

  for (const el of [diverging, measure, kind, threshold]) {
    el.addEventListener(el === threshold ? 'input' : 'change', drawPairs);
  }
  limit.addEventListener('change', () => { pairsKey = ''; load(true); });

  async function loadPairs() {
    try {
      const text = await api.text(`${path}/pairs`, { ...key.query, rollout: 'latest', limit: limit.value });
      none = false;
      return parsePairs(text).reverse();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) { none = true; return []; }
      throw err;
    }
  }

  async function loadReport() {
    try {
      return await api.get(`${path}/report`, { ...key.query, rollout: 'latest' });
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }
  }

  async function load(force = false) {
    if (busy && !force) return;
    busy = true;
    try {
      // The report reads every pair of the rollout: every other tick is often enough.
      const wantReport = force || tick % 2 === 0;
      tick++;
      const [fresh, report] = await Promise.all([loadPairs(), wantReport ? loadReport() : Promise.resolve(undefined)]);
      errorSlot.replaceChildren();
      if (report !== undefined) {
        const key = JSON.stringify(report);
        if (key !== reportKey) {
          reportKey = key;
          reportSlot.replaceChildren(...[reportView(report)].flat());
        }
      }
      const key = `${none}:${fresh.length}:${fresh.length ? fresh[0].pair_id : ''}:${fresh.length ? fresh[fresh.length - 1].pair_id : ''}`;
      if (key !== pairsKey) {
        pairsKey = key;
        pairs = fresh;
        syncMeasures();
        drawPairs();
      }
    } catch (err) {
      errorSlot.replaceChildren(errorBox(err));
    } finally {
      busy = false;
      if (!ready) { ready = true; await styled; pageReady(view); }
    }
  }

  poll(REFRESH_MS, () => load(), view);
}

export const routes = [{ path: '/shadow/:slug', title: 'Shadow pairs', render }];
