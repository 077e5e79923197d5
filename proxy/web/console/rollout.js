// #/rollouts/:slug — the running rollout (or the last analysed one), its analysis policy,
// state and verdicts, live charts from the series route, and (admin only) the writes:
// move the percentage, promote, abort, roll back.
//
// data-testid set here:
//   rollout-page, rollout-error (refresh and write failures), rollout-stale (in it: how old
//   the figures shown during a failing refresh are), rollout-summary,
//   rollout-candidate, rollout-prod, rollout-mode, rollout-percent (text "25 %"; its
//   inner [data-percent] = 25), rollout-sticky, rollout-none (no rollout runs; says
//   "prod: vN"), link-prompt, link-shadow (shadow mode), percent-controls, step-<n> (one
//   per step percent, e.g. step-25), percent-slider, percent-input, percent-apply,
//   confirm-move (in the dialog: "from X % to Y %"), promote, abort, rollback, rollback-hint,
//   prod-actions, analysis-policy-section, analysis-policy, analysis-state-section,
//   analysis-state, next-step, failures, next-verdict, holder,
//   verdicts, verdict (each verdict; data-result = pass|fail|inconclusive, data-at),
//   verdict-check (each check; data-name, data-result), verdict-tier (data-tier,
//   data-result), charts, chart-<name> (charts.js; names: error-rate, p95-latency,
//   p95-ttft, length-share, answer-tokens, judge), charts-empty.

import {
  ApiError, api, session, h, confirmAction, poll, fmt, toast, errorBox, pageReady, badge,
  promptKey, routeHash,
} from './app.js';
import { lineChart, useStyles } from './charts.js';
import { rollbackTarget, rollbackHint } from './prompts.js';

const REFRESH_MS = 5000;
const DEFAULT_STEPS = [1, 5, 10, 25, 50, 100];

const ARM_LABELS = {
  stable: 'stable',
  canary: 'canary',
  shadow: 'shadow (candidate)',
  rerun: 'stable rerun (noise)',
};

function enc(slug) {
  return encodeURIComponent(slug);
}

// A route's prompt key (a slug, or tier=/tenant= layer and @variant) as the API takes it.
function keyOf(text) {
  const key = promptKey(text);
  return { ...key, path: `/prompts/${enc(key.slug)}` };
}

// Percents are 0..100 with at most two decimals (the registry's basis points).
export function percentText(p) {
  if (p === null || p === undefined) return '—';
  return `${Number(Number(p).toFixed(2))} %`;
}

// "in 42 s", "in 3 min", "due now" for a unix time, against this browser's clock.
export function untilText(unix, now = Date.now() / 1000) {
  if (unix === null || unix === undefined) return '—';
  const s = Math.round(unix - now);
  if (s <= 0) return s > -3 ? 'due now' : `due ${-s} s ago`;
  if (s < 120) return `in ${s} s`;
  if (s < 7200) return `in ${Math.round(s / 60)} min`;
  return `in ${Math.round(s / 3600)} h`;
}

// A p-value as a reader compares it with alpha: two digits, tiny ones as "< 0.0001".
function pText(p) {
  if (p === null || p === undefined) return '—';
  if (p < 0.0001) return '< 0.0001';
  return String(Number(p.toPrecision(2)));
}

function num(x) {
  if (x === null || x === undefined) return '—';
  if (typeof x !== 'number') return String(x);
  if (Number.isInteger(x)) return String(x);
  return String(Number(x.toPrecision(4)));
}

function dl(pairs, attrs = {}) {
  return h('dl', { class: 'ro-facts', ...attrs },
    pairs.filter(Boolean).map(([term, value, testid]) => [
      h('dt', { text: term }),
      h('dd', testid ? { testid } : {}, value === null || value === undefined ? '—' : value),
    ]));
}

function section(title, testid, ...children) {
  return h('section', { class: 'ro-section', testid, 'aria-label': title },
    h('h2', { text: title }), ...children);
}

// Re-render `el` only when its data changed, so a 5 s refresh does not move the reader's
// focus or close what they opened.
function update(el, data, build) {
  const key = JSON.stringify(data);
  if (el.dataset.key === key) return;
  el.dataset.key = key;
  el.replaceChildren(...[build(data)].flat().filter(Boolean));
}

function segmentText(segment) {
  if (!segment) return 'every caller';
  const parts = [];
  if (segment.tiers && segment.tiers.length) parts.push(`tiers ${segment.tiers.join(', ')}`);
  if (segment.tenants && segment.tenants.length) parts.push(`tenants ${segment.tenants.join(', ')}`);
  return parts.join('; ') || 'every caller';
}

function summaryView(r, key) {
  const links = [
    h('a', { href: routeHash('prompts', key.text), testid: 'link-prompt', text: `Prompt ${key.text}` }),
    r.mode === 'shadow'
      ? h('a', { href: routeHash('shadow', key.text), testid: 'link-shadow', text: 'Shadow pairs side by side' })
      : null,
  ];
  return [
    dl([
      ['Candidate', `v${r.candidate}`, 'rollout-candidate'],
      ['Stable (prod)', r.prod_version === null ? 'none' : `v${r.prod_version}`, 'rollout-prod'],
      ['Mode', r.mode, 'rollout-mode'],
      ['Percent', h('span', { 'data-percent': String(r.percent), text: percentText(r.percent) }), 'rollout-percent'],
      ['Sticky key', r.sticky, 'rollout-sticky'],
      ['Started', `${fmt.time(r.started_at)} (${fmt.ago(r.started_at)})`],
      ['Last change', `${fmt.time(r.updated_at)} (${fmt.ago(r.updated_at)})`],
      ['By', r.actor],
      ['Segment', segmentText(r.segment)],
      ['Rollout id', h('code', { text: r.id })],
    ]),
    h('p', { class: 'ro-links' }, links),
  ];
}

function policyView(policy) {
  if (!policy) return h('p', { text: 'Manual rollout: no analysis policy. Nothing ramps, promotes or aborts by itself.' });
  const t = policy.thresholds || {};
  const limit = (v, f = num) => (v === null || v === undefined ? 'off' : f(v));
  return dl([
    ['Interval', `${num(policy.interval)} s`],
    ['Min samples', `${num(policy.min_samples)} per arm`],
    ['Failures tolerated', num(policy.failure_limit)],
    ['Steps', policy.steps && policy.steps.length ? policy.steps.map(percentText).join(' → ') : 'none (never ramps or promotes by itself)'],
    ['Alpha', num(policy.alpha)],
    ['Error rate increase', limit(t.error_rate_increase, (v) => `+${num(v * 100)} points`)],
    ['p95 latency ratio', limit(t.p95_latency_ratio, (v) => `× ${num(v)}`)],
    ['p95 TTFT ratio', limit(t.p95_ttft_ratio, (v) => `× ${num(v)}`)],
    ['Length finishes increase', limit(t.length_finish_increase, (v) => `+${num(v * 100)} points`)],
    ['Answer length drift', limit(t.answer_length_drift, (v) => `± ${num(v * 100)} %`)],
    ['Shadow divergence', t.shadow_divergence ? 'on (shadow mode)' : 'off'],
    t.feedback_drop ? ['Feedback drop', `${t.feedback_drop.name}: ${num(t.feedback_drop.max_drop)}`] : null,
    t.judge_drop ? ['Judge score drop', num(t.judge_drop.max_drop)] : null,
  ], { testid: 'analysis-policy' });
}

function nextStep(rollout) {
  const steps = (rollout.analysis && rollout.analysis.steps) || [];
  return steps.find((s) => s > rollout.percent + 1e-9);
}

function stateView(rollout) {
  const state = rollout.analysis_state;
  if (!state) return null;
  const policy = rollout.analysis;
  const next = nextStep(rollout);
  let stepText;
  if (!policy.steps.length) stepText = 'no steps: the analyser only holds or aborts';
  else if (next !== undefined) {
    const at = state.step === null ? 'before the first step' : `step ${state.step + 1} of ${policy.steps.length}`;
    stepText = `${at}; a pass ramps to ${percentText(next)}`;
  } else if (rollout.mode === 'shadow') stepText = 'last step reached; a pass is the cue to start a canary';
  else stepText = 'last step reached; a pass promotes the candidate';
  return dl([
    ['Next step', stepText, 'next-step'],
    ['Failures', `${state.failures} of ${policy.failure_limit} tolerated`, 'failures'],
    ['Next verdict', h('time', { datetime: new Date(state.next_at * 1000).toISOString(), title: fmt.time(state.next_at), text: untilText(state.next_at) }), 'next-verdict'],
    ['Lease holder', state.holder || 'none yet', 'holder'],
  ], { testid: 'analysis-state' });
}

function samplesText(samples) {
  if (!samples) return '—';
  return Object.entries(samples).map(([arm, n]) => `${arm} ${n}`).join(', ');
}

// How a check's figures read: its name says what stable/candidate/limit measure
// (judge.py): shares, seconds, tokens, or scores; the limit is a difference or a ratio.
const points = (v) => `+${num(v * 100)} points`;
const CHECK_FORMATS = {
  error_rate: { value: (v) => fmt.pct(v), limit: points },
  length_finish: { value: (v) => fmt.pct(v), limit: points },
  p95_latency: { value: (v) => fmt.ms(v), limit: (v) => `× ${num(v)}` },
  p95_ttft: { value: (v) => fmt.ms(v), limit: (v) => `× ${num(v)}` },
  answer_length: { value: (v) => `${num(v)} tokens`, limit: (v) => `± ${num(v * 100)} %` },
};

function checkFormat(name) {
  return CHECK_FORMATS[name] || { value: num, limit: num };
}

function checksTable(checks) {
  if (!checks || !checks.length) return h('p', { class: 'ro-muted', text: 'No checks.' });
  return h('div', { class: 'ro-table-wrap' },
    h('table', { class: 'ro-checks' },
      h('thead', {}, h('tr', {}, ['check', 'result', 'stable', 'candidate', 'limit', 'p-value', 'note']
        .map((c) => h('th', { scope: 'col', text: c })))),
      h('tbody', {}, checks.map((c) => h('tr', { testid: 'verdict-check', 'data-name': c.name || '', 'data-result': c.result || '' },
        h('th', { scope: 'row', 'data-label': 'check', text: c.name || '—' }),
        h('td', { 'data-label': 'result' }, c.result ? badge(c.result) : '—'),
        h('td', { 'data-label': 'stable', text: c.stable === null || c.stable === undefined ? '—' : checkFormat(c.name).value(c.stable) }),
        h('td', { 'data-label': 'candidate', text: c.candidate === null || c.candidate === undefined ? '—' : checkFormat(c.name).value(c.candidate) }),
        h('td', { 'data-label': 'limit', text: c.limit === null || c.limit === undefined ? '—' : checkFormat(c.name).limit(c.limit) }),
        h('td', { 'data-label': 'p-value', text: pText(c.p_value) }),
        h('td', { 'data-label': 'note', class: 'ro-note', text: c.note || '' }))))));
}

function verdictView(v, open) {
  const at = v.at ?? 0;
  const window = v.window && v.window.start !== null && v.window.start !== undefined
    ? `${fmt.time(v.window.start)} – ${fmt.time(v.window.end)}` : '—';
  const tiers = v.tiers ? Object.entries(v.tiers) : [];
  const details = h('details', { class: `ro-verdict verdict-${v.verdict}`, testid: 'verdict', 'data-result': v.verdict || '', 'data-at': String(at) },
    h('summary', {},
      h('span', { class: 'ro-verdict-head' },
        badge(v.verdict || 'unknown'),
        h('time', { datetime: new Date(at * 1000).toISOString(), text: fmt.time(at) }),
        h('span', { text: `at ${percentText(v.percent)}` }),
        h('span', { text: samplesText(v.samples) }),
        v.action ? h('span', { class: 'ro-action', text: `→ ${v.action}` }) : null)),
    dl([
      ['Window', window],
      ['Samples per arm', samplesText(v.samples)],
      ['Action taken', v.action || 'none (hold)'],
      ['Actor', v.actor],
    ]),
    checksTable(v.checks),
    tiers.length
      ? h('div', { class: 'ro-tiers' }, h('h4', { text: 'Tiers' }),
          tiers.map(([tier, t]) => h('div', { class: 'ro-tier', testid: 'verdict-tier', 'data-tier': tier, 'data-result': t.verdict || '' },
            h('h5', {}, `${tier} `, badge(t.verdict || 'unknown'), ` ${samplesText(t.samples)}`),
            checksTable(t.checks))))
      : null);
  details.open = open;
  return details;
}

// The verdicts, newest first, as a list that only ever adds and drops items: a refresh
// never rebuilds (so never closes, or takes the focus from) a verdict being read. The
// newest opens by itself, and closes again when a newer one comes, unless the operator
// toggled it.
function verdictList() {
  const list = h('ol', { class: 'ro-verdicts' });
  const empty = h('p', { class: 'ro-muted', text: 'No verdict yet.' });
  const el = h('div', {}, empty, list);
  const items = new Map();
  const touched = new Set();
  let auto = null;
  function set(verdicts) {
    verdicts = verdicts || [];
    empty.hidden = verdicts.length > 0;
    const keys = verdicts.map((v) => `${v.rollout_id}:${v.at}`);
    const wanted = new Set(keys);
    for (const [k, li] of items) {
      if (!wanted.has(k)) { li.remove(); items.delete(k); }
    }
    keys.forEach((k, i) => {
      let li = items.get(k);
      if (!li) {
        const details = verdictView(verdicts[i], false);
        details.querySelector('summary').addEventListener('click', () => touched.add(k));
        li = h('li', {}, details);
        items.set(k, li);
      }
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    });
    const newest = keys[0];
    if (newest && newest !== auto) {
      if (auto && items.has(auto) && !touched.has(auto)) items.get(auto).firstChild.open = false;
      if (!touched.has(newest)) items.get(newest).firstChild.open = true;
      auto = newest;
    }
  }
  return { el, set };
}

// -- charts ---------------------------------------------------------------------------------

const CHARTS = [
  { name: 'error-rate', field: 'error_rate', title: 'Error rate', format: (v) => fmt.pct(v), yMaxAtLeast: 0.05 },
  { name: 'p95-latency', field: 'p95_latency', title: 'p95 latency', format: (v) => fmt.ms(v) },
  { name: 'p95-ttft', field: 'p95_ttft', title: 'p95 time to first token', format: (v) => fmt.ms(v) },
  { name: 'length-share', field: 'length_share', title: 'Answers cut by length', format: (v) => fmt.pct(v), yMaxAtLeast: 0.05 },
  { name: 'answer-tokens', field: 'answer_tokens', title: 'Answer length (mean output tokens)', format: (v) => num(v) },
  { name: 'judge', field: 'judge', title: 'Judge score', format: (v) => num(v), optional: true },
];

function chartsView(series) {
  if (!series || !series.points || !series.points.length) {
    return h('p', { class: 'ro-muted', testid: 'charts-empty', text: 'No traffic counted in the last 15 minutes.' });
  }
  const arms = series.arms || [];
  const domain = [series.start, series.end];
  const out = [];
  for (const c of CHARTS) {
    const lines = arms.map((arm) => ({
      key: arm,
      label: ARM_LABELS[arm] || arm,
      points: series.points.map((p) => {
        const a = p.arms && p.arms[arm];
        const v = a ? a[c.field] : null;
        return [p.at, v === undefined ? null : v];
      }),
    }));
    if (c.optional && !lines.some((l) => l.points.some((p) => p[1] !== null))) continue;
    out.push(lineChart({ name: c.name, title: c.title, series: lines, format: c.format, domain, yMaxAtLeast: c.yMaxAtLeast || 0 }));
  }
  return h('div', { class: 'chart-grid' }, out);
}

// -- writes ---------------------------------------------------------------------------------

function controls(ctx) {
  // Built once per rollout; `set(rollout)` follows the refreshes without overwriting a
  // value the operator is editing.
  let rollout = null;
  let dirty = false;
  const current = h('span', { class: 'ro-current' });
  const slider = h('input', {
    type: 'range', min: '0', max: '100', step: '1', id: 'percent-slider',
    testid: 'percent-slider', 'aria-describedby': 'percent-current',
  });
  const input = h('input', {
    type: 'number', min: '0', max: '100', step: '0.01', id: 'percent-input',
    testid: 'percent-input', inputmode: 'decimal', class: 'ro-number',
  });
  const apply = h('button', { type: 'button', testid: 'percent-apply', class: 'button button-primary', text: 'Apply…' });
  const steps = h('div', { class: 'ro-steps', role: 'group', 'aria-label': 'Step to a percentage' });
  const status = h('p', { id: 'percent-current', tabindex: '-1', class: 'ro-status' }, 'Now at ', current, '. Pick a step, or set a percentage and apply it; every change asks for a reason first.');

  const value = () => Number(input.value);
  const valid = (p) => Number.isFinite(p) && p >= 0 && p <= 100 && Math.abs(p * 100 - Math.round(p * 100)) < 1e-6;
  const refreshApply = () => {
    const p = value();
    apply.disabled = !rollout || input.value === '' || !valid(p) || Math.abs(p - rollout.percent) < 1e-9;
  };
  slider.addEventListener('input', () => { input.value = slider.value; dirty = true; refreshApply(); });
  input.addEventListener('input', () => {
    if (valid(value())) slider.value = String(value());
    dirty = true;
    refreshApply();
  });
  apply.addEventListener('click', () => move(value()));
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter' && !apply.disabled) { e.preventDefault(); move(value()); } });

  async function move(target) {
    if (!rollout) return;
    const from = rollout.percent;
    const summary = h('div', {},
      h('p', { class: 'ro-confirm-move', testid: 'confirm-move', text: `${rollout.mode} of v${rollout.candidate}: from ${percentText(from)} to ${percentText(target)}` }),
      target < from ? h('p', { text: 'Lowering the percentage moves the newest callers back to stable.' }) : null,
      target === 100 && rollout.mode === 'canary' ? h('p', { text: 'At 100 % no stable traffic is left to compare with: the analysis holds until you promote or lower it.' }) : null);
    const done = await ctx.act({
      title: `Move ${ctx.key.text} to ${percentText(target)}`,
      summary,
      confirmLabel: `Move to ${percentText(target)}`,
      run: (reason) => api.write('PUT', `${ctx.key.path}/rollout`, {
        body: { candidate: rollout.candidate, mode: rollout.mode, percent: target },
        query: ctx.key.query,
        reason,
      }),
      ok: `${ctx.key.text}: ${rollout.mode} moved from ${percentText(from)} to ${percentText(target)}`,
      // The line that says the new percentage (the step that opened the move is now disabled).
      focusAfter: status,
    });
    if (done) dirty = false;
  }

  const promote = h('button', { type: 'button', testid: 'promote', class: 'button button-primary', text: 'Promote…' });
  const abort = h('button', { type: 'button', testid: 'abort', class: 'button button-danger', text: 'Abort…' });
  promote.addEventListener('click', () => ctx.act({
    title: `Promote v${rollout.candidate} of ${ctx.key.text}`,
    summary: h('div', {},
      h('p', { text: `v${rollout.candidate} becomes prod (now ${rollout.prod_version === null ? 'none' : `v${rollout.prod_version}`}, which becomes deprecated) and the ${rollout.mode} rollout at ${percentText(rollout.percent)} ends.` }),
      rollout.mode === 'shadow'
        ? h('p', { text: 'This is a shadow: no caller has been served the candidate yet. A canary first is the careful way.' })
        : null),
    confirmLabel: 'Promote',
    run: (reason) => api.write('POST', `${ctx.key.path}/rollout/promote`, { body: {}, query: ctx.key.query, reason }),
    ok: `${ctx.key.text}: v${rollout.candidate} promoted to prod`,
  }));
  abort.addEventListener('click', () => ctx.act({
    title: `Abort the rollout of ${ctx.key.text}`,
    summary: `All traffic goes back to stable v${rollout.prod_version}; v${rollout.candidate} gets back the status it had before (now at ${percentText(rollout.percent)}).`,
    confirmLabel: 'Abort rollout',
    danger: true,
    run: (reason) => api.write('DELETE', `${ctx.key.path}/rollout`, { query: ctx.key.query, reason }),
    ok: `${ctx.key.text}: rollout aborted, all traffic on stable`,
  }));

  const el = h('section', { class: 'ro-section ro-controls', testid: 'percent-controls', 'aria-label': 'Change the rollout' },
    h('h2', { text: 'Change the rollout' }),
    status,
    steps,
    h('div', { class: 'ro-percent' },
      h('label', { for: 'percent-slider', text: 'Percentage' }),
      slider,
      h('label', { for: 'percent-input', class: 'vh', text: 'Percentage (number)' }),
      input, h('span', { 'aria-hidden': 'true', text: '%' }),
      apply),
    h('div', { class: 'ro-actions' }, promote, abort));

  function set(r) {
    const stepsChanged = !rollout || JSON.stringify(rollout.analysis && rollout.analysis.steps) !== JSON.stringify(r.analysis && r.analysis.steps);
    rollout = r;
    current.textContent = percentText(r.percent);
    if (stepsChanged) {
      const list = r.analysis && r.analysis.steps && r.analysis.steps.length ? [...r.analysis.steps] : [...DEFAULT_STEPS];
      steps.replaceChildren(...list.map((p) => {
        const b = h('button', { type: 'button', class: 'button ro-step', testid: `step-${p}`, text: percentText(p), 'data-percent': String(p) });
        b.addEventListener('click', () => move(p));
        return b;
      }));
    }
    for (const b of steps.children) {
      const p = Number(b.dataset.percent);
      const here = Math.abs(p - r.percent) < 1e-9;
      b.disabled = here;
      b.setAttribute('aria-pressed', here ? 'true' : 'false');
    }
    if (!dirty) {
      input.value = String(r.percent);
      slider.value = String(r.percent);
    }
    refreshApply();
  }
  return { el, set };
}

// The history entries read to tell whether a rollback has a former prod to restore.
const HISTORY_LIMIT = 100;

// What a rollback of `key` would restore (see rollbackTarget); undefined when unknown.
async function readRollbackTarget(key, prod) {
  if (prod === null || prod === undefined) return null;
  try {
    const answer = await api.get(`${key.path}/history`, { ...key.query, limit: HISTORY_LIMIT });
    const entries = answer.data || [];
    return rollbackTarget(entries, prod, entries.length < HISTORY_LIMIT);
  } catch {
    // The button stays offered; the API answers a rollback it cannot do with a 409.
    return undefined;
  }
}

function rollbackButton(ctx, prod, target) {
  const slug = ctx.key.text;
  const b = h('button', {
    type: 'button', testid: 'rollback', class: 'button button-danger', text: 'Roll back prod…',
    disabled: prod === null || target === null, 'aria-describedby': 'rollback-hint',
  });
  const hint = h('p', { class: 'ro-muted', id: 'rollback-hint', testid: 'rollback-hint', text: rollbackHint(target, prod) });
  b.addEventListener('click', () => ctx.act({
    title: `Roll back ${slug}`,
    summary: `The prod version of ${slug}${prod ? ` (now v${prod})` : ''} goes back to ${target ? `v${target}, ` : ''}the previous prod. A running rollout keeps going and then compares its candidate with the restored prod.`,
    confirmLabel: 'Roll back',
    danger: true,
    run: (reason) => api.write('POST', `${ctx.key.path}/rollback`, { body: {}, query: ctx.key.query, reason }),
    ok: `${slug}: prod rolled back`,
  }));
  return [hint, b];
}

// -- the page -------------------------------------------------------------------------------

async function render(view, params) {
  const styled = useStyles();
  const key = keyOf(params.slug);
  const slug = key.text;
  const canWrite = Boolean(session && session.canWrite);
  const verdictItems = verdictList();
  const errorSlot = h('div', { testid: 'rollout-error', class: 'ro-error', 'aria-live': 'polite' });
  // Focusable by script: where the focus goes after a write that removed its control.
  const summary = h('div', { tabindex: '-1', class: 'ro-focus-target' });
  const controlsSlot = h('div');
  const policy = h('div');
  const state = h('div');
  const charts = h('div');
  const verdicts = verdictItems.el;
  const rollbackSlot = h('div', { class: 'ro-actions' });
  const heading = h('h1', {}, 'Rollout ', h('span', { class: 'ro-slug', text: slug }));
  const main = h('div', { class: 'ro-main' });
  view.replaceChildren(h('div', { class: 'ro-page', testid: 'rollout-page' }, heading, errorSlot, main));

  let ctl = null;
  let ctlId = null;
  let ready = false;
  let lastProd = null;
  let lastAnalysis;

  const ctx = {
    key,
    async act({ title, summary: text, confirmLabel, danger = false, run, ok, focusAfter = null }) {
      const reason = await confirmAction({ title, summary: text, confirmLabel, danger });
      if (reason === null) return false;
      try {
        await run(reason);
      } catch (err) {
        toast(err.message || String(err), 'error');
        delete errorSlot.dataset.failure;
        errorSlot.replaceChildren(errorBox(err));
        return false;
      }
      errorSlot.replaceChildren();
      toast(ok, 'ok');
      await load();
      // The redraw disables (a step, Apply) or removes (Promote, Abort: the page now says no
      // rollout runs) the control that had the focus, and Chromium drops it to the document,
      // so a keyboard user would start again from the top: give it to what says the outcome.
      const f = document.activeElement;
      if (!f || f === document.body || f.disabled || !f.isConnected) (focusAfter || summary).focus();
      return true;
    },
  };

  const layoutRunning = () => {
    main.replaceChildren(
      section('Rollout', 'rollout-summary', summary),
      section('Analysis state', 'analysis-state-section', state),
      canWrite ? controlsSlot : null,
      h('section', { class: 'ro-section', testid: 'charts', 'aria-label': 'Live charts' },
        h('h2', {}, 'Live, last 15 minutes ', h('span', { class: 'ro-muted', text: '(every replica, refreshed every 5 s)' })),
        charts),
      section('Verdicts', 'verdicts', h('p', { class: 'ro-muted', text: 'Newest first.' }), verdicts),
      section('Analysis policy', 'analysis-policy-section', policy),
      canWrite ? section('Prod', 'prod-actions', rollbackSlot) : null);
  };
  const layoutNone = () => {
    main.replaceChildren(
      section('No rollout running', 'rollout-none', summary),
      section('Live, last 15 minutes', 'charts', charts),
      section('Verdicts of the last analysed rollout', 'verdicts', h('p', { class: 'ro-muted', text: 'Newest first.' }), verdicts),
      canWrite ? section('Prod', 'prod-actions', rollbackSlot) : null);
  };
  let layout = null;

  async function getOr404(path, query) {
    try {
      return await api.get(path, query);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }
  }

  // A refresh that fails (the proxy restarting, a store outage) says so once, not with a new
  // alert every 5 s, and says how old the figures still shown are.
  let lastRead = null;
  function refreshFailed(err) {
    const failure = `${err.status}|${err.code}|${err.message}`;
    const stale = lastRead === null ? null
      : `Still showing what was read at ${fmt.time(lastRead)}; trying again every ${REFRESH_MS / 1000} s.`;
    if (errorSlot.dataset.failure === failure) {
      const note = errorSlot.querySelector('.ro-stale');
      if (note && stale) note.textContent = stale;
      return;
    }
    errorSlot.dataset.failure = failure;
    errorSlot.replaceChildren(errorBox(err), stale ? h('p', { class: 'ro-muted ro-stale', testid: 'rollout-stale', text: stale }) : null);
  }

  let busy = false;
  async function refresh() {
    // A slow answer must not stack refreshes on top of each other.
    if (busy) return;
    busy = true;
    try {
      await load();
    } finally {
      busy = false;
    }
  }

  // A write's own load (ctx.act) can start while a poll's is still waiting for answers:
  // only the newest may draw, or the older one would put back the state before the write.
  let loadSeq = 0;
  async function load() {
    const seq = ++loadSeq;
    let rollout;
    let analysis = null;
    let series = null;
    try {
      if (layout === 'none') {
        // While none runs, ask the (short) list of running rollouts rather than collect a
        // 404 (and a console error in the browser) every 5 s.
        const running = await api.get('/rollouts');
        const found = (running.data || []).some((r) => r.slug === key.text);
        rollout = found ? await getOr404(`${key.path}/rollout`, key.query) : null;
      } else {
        rollout = await getOr404(`${key.path}/rollout`, key.query);
      }
      if (!rollout) {
        // The last analysis of an ended rollout does not change: read it once.
        if (layout !== 'none' || lastAnalysis === undefined) {
          lastAnalysis = await getOr404(`${key.path}/analysis`, key.query);
        }
        analysis = lastAnalysis;
        // Not a 404 here: an unknown prompt is an error worth showing.
        const prompt = await api.get(key.path, key.query);
        lastProd = prompt.prod_version;
      }
    } catch (err) {
      refreshFailed(err);
      if (!ready) { ready = true; await styled; pageReady(view); }
      return;
    }
    try {
      series = await getOr404(`${key.path}/rollout/series`, { ...key.query, since: '15m' });
    } catch (err) {
      series = { error: err.message || String(err) };
    }
    if (seq !== loadSeq) return;
    errorSlot.replaceChildren();
    delete errorSlot.dataset.failure;
    lastRead = Date.now() / 1000;

    if (rollout) {
      if (layout !== 'running') { layout = 'running'; layoutRunning(); }
      // The minute in the key keeps "(3 min ago)" current without redrawing every 5 s.
      update(summary, { ...rollout, analysis_state: null, minute: Math.floor(Date.now() / 60000) }, (r) => summaryView(r, key));
      update(policy, rollout.analysis, policyView);
      // The countdown changes every refresh, so the state is redrawn each time; it holds
      // nothing focusable.
      state.replaceChildren(stateView(rollout) || h('p', { class: 'ro-muted', text: 'No analysis: the rollout is manual.' }));
      verdictItems.set(rollout.analysis_state ? rollout.analysis_state.verdicts : []);
      if (canWrite) {
        if (!ctl || ctlId !== rollout.id) {
          ctl = controls(ctx);
          ctlId = rollout.id;
          controlsSlot.replaceChildren(ctl.el);
        }
        ctl.set(rollout);
      }
      lastProd = rollout.prod_version;
    } else {
      if (layout !== 'none') { layout = 'none'; layoutNone(); ctl = null; ctlId = null; }
      update(summary, { analysis, lastProd }, ({ analysis: a }) => [
        h('p', {}, `${slug} has no rollout running (prod: ${lastProd === null ? 'none' : `v${lastProd}`}). `,
          h('a', { href: routeHash('prompts', key.text), testid: 'link-prompt', text: `Back to prompt ${slug}` }),
          ' to start one.'),
        a ? dl([
          ['Last analysed rollout', h('code', { text: a.rollout_id })],
          ['Failed verdicts', num(a.failures)],
          a.verdicts && a.verdicts.length ? ['Last verdict', `${a.verdicts[0].verdict} at ${fmt.time(a.verdicts[0].at)}${a.verdicts[0].action ? `, action ${a.verdicts[0].action}` : ''}`] : null,
        ]) : h('p', { class: 'ro-muted', text: 'No analysed rollout is on record (verdicts expire, and the embedded store forgets them on restart).' }),
      ]);
      verdictItems.set(analysis ? analysis.verdicts : []);
    }
    if (canWrite && rollbackSlot.dataset.prod !== String(lastProd)) {
      rollbackSlot.dataset.prod = String(lastProd);
      // One history read per prod change, not per refresh.
      const target = await readRollbackTarget(key, lastProd);
      rollbackSlot.replaceChildren(...rollbackButton(ctx, lastProd, target));
    }
    if (series && series.error) {
      charts.dataset.key = '';
      charts.replaceChildren(h('p', { class: 'ro-error', text: `Charts unavailable: ${series.error}` }));
    } else {
      update(charts, series, chartsView);
    }
    if (!ready) { ready = true; await styled; pageReady(view); }
  }

  poll(REFRESH_MS, refresh, view);
}

export const routes = [{ path: '/rollouts/:slug', title: 'Rollout', render }];
