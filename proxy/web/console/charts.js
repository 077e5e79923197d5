// A small SVG line chart of our own (no chart library may be fetched or shipped): a few
// ticks on each axis, two or three series, a legend, and for screen readers a summary in
// the SVG's <title> plus a visually hidden table of every point.
//
// Nulls are gaps: a series is drawn as separate runs between missing points, and a point
// with no neighbour is a dot, so "no request in this step" never reads as zero.
//
// data-testid set here: chart-<name> (the figure; data-points = points with a value),
// chart-empty (shown in a chart with no value at all).

import { h, svg } from './app.js';

// The stylesheet of the rollout and shadow pages: index.html leaves it to the pages that
// use it, so the first of them adds the <link> (CSP style-src 'self' allows a same-origin
// stylesheet). Resolves once it applies, so a page marks itself ready styled.
export function useStyles() {
  let link = document.querySelector('link[href$="rollout.css"]');
  if (link && link.sheet) return Promise.resolve();
  if (!link) {
    link = h('link', { rel: 'stylesheet', href: 'rollout.css' });
    document.head.append(link);
  }
  return new Promise((resolve) => {
    // An error resolves too (the page works unstyled), and so does a link that failed
    // before we listened: no event would come.
    link.addEventListener('load', resolve, { once: true });
    link.addEventListener('error', resolve, { once: true });
    setTimeout(resolve, 3000);
  });
}

const W = 400;
const H = 170;
const PAD = { left: 54, right: 14, top: 10, bottom: 24 };

// 1, 2, 2.5, 5 times a power of ten: the tick step for about `count` ticks over `span`.
function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (raw <= m * power) return m * power;
  }
  return 10 * power;
}

function yTicks(lo, hi) {
  if (hi <= lo) hi = lo + (lo === 0 ? 1 : Math.abs(lo));
  const step = niceStep(hi - lo, 4);
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = start; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function clock(unix) {
  const d = new Date(unix * 1000);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
}

function xTicks(lo, hi) {
  const span = Math.max(1, hi - lo);
  // Whole minutes when the span allows it, so labels read as clock times.
  const candidates = [15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  const step = candidates.find((s) => span / s <= 5) || niceStep(span, 4);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) ticks.push(t);
  return ticks;
}

// Split a series' points into runs of consecutive non-null values.
function segments(points) {
  const out = [];
  let run = [];
  for (const [x, y] of points) {
    if (y === null || y === undefined || !Number.isFinite(y)) {
      if (run.length) out.push(run);
      run = [];
    } else {
      run.push([x, y]);
    }
  }
  if (run.length) out.push(run);
  return out;
}

function summary(series, format) {
  return series
    .map((s) => {
      const values = s.points.map((p) => p[1]).filter((v) => v !== null && v !== undefined);
      if (!values.length) return `${s.label}: no data`;
      const last = values[values.length - 1];
      return `${s.label}: latest ${format(last)}, highest ${format(Math.max(...values))}`;
    })
    .join('; ');
}

/**
 * lineChart({name, title, series, format, unit}) → <figure>.
 * series: [{key, label, points: [[unixSeconds, number|null], ...]}]; `key` picks the CSS
 * class (series-<key>: colour and dash pattern). format(value) → string for ticks, legend,
 * table. `domain` optionally fixes [xmin, xmax].
 */
export function lineChart({ name, title, series, format = String, domain = null, yMin = 0, yMaxAtLeast = 0 }) {
  const titleId = `chart-${name}-title`;
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]).filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  const [x0, x1] = domain || [Math.min(...xs), Math.max(...xs)];
  const lo = Math.min(yMin, ...ys);
  // yMaxAtLeast keeps a flat line of zeros (no errors) at the bottom of a modest scale
  // rather than of 0-100 %.
  const ticksY = yTicks(lo, Math.max(yMaxAtLeast, ...(ys.length ? ys : [1])));
  const y0 = ticksY[0];
  const y1 = ticksY[ticksY.length - 1];
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const sx = (x) => PAD.left + (x1 > x0 ? ((x - x0) / (x1 - x0)) * plotW : plotW / 2);
  const sy = (y) => PAD.top + plotH - ((y - y0) / (y1 - y0 || 1)) * plotH;
  const r = (v) => Math.round(v * 10) / 10;

  const grid = ticksY.map((t) =>
    svg('g', { class: 'chart-tick' },
      svg('line', { x1: PAD.left, x2: W - PAD.right, y1: r(sy(t)), y2: r(sy(t)), class: 'chart-grid' }),
      svg('text', { x: PAD.left - 6, y: r(sy(t)) + 4, 'text-anchor': 'end', class: 'chart-label' }, format(t))));
  const timeTicks = xs.length && x1 > x0 ? xTicks(x0, x1) : [];
  const xaxis = timeTicks.map((t) =>
    svg('g', { class: 'chart-tick' },
      svg('line', { x1: r(sx(t)), x2: r(sx(t)), y1: PAD.top + plotH, y2: PAD.top + plotH + 4, class: 'chart-axis' }),
      svg('text', { x: r(sx(t)), y: H - 8, 'text-anchor': 'middle', class: 'chart-label' }, clock(t))));

  const lines = series.map((s) => {
    const runs = segments(s.points);
    return svg('g', { class: `chart-series series-${s.key}` },
      runs.map((run) =>
        run.length === 1
          ? svg('circle', { cx: r(sx(run[0][0])), cy: r(sy(run[0][1])), r: 2.5, class: 'chart-dot' })
          : svg('path', {
              class: 'chart-line',
              d: run.map(([x, y], i) => `${i ? 'L' : 'M'}${r(sx(x))},${r(sy(y))}`).join(''),
            })));
  });

  const text = `${title}. ${ys.length ? summary(series, format) : 'No data yet.'}`;
  const chart = svg('svg', {
    viewBox: `0 0 ${W} ${H}`,
    class: 'chart-svg',
    role: 'img',
    'aria-labelledby': titleId,
    preserveAspectRatio: 'xMidYMid meet',
  },
    svg('title', { id: titleId }, text),
    grid,
    svg('line', { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: PAD.top + plotH, class: 'chart-axis' }),
    svg('line', { x1: PAD.left, x2: W - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH, class: 'chart-axis' }),
    xaxis,
    lines,
    ys.length ? null : svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'chart-empty', testid: 'chart-empty' }, 'no data yet'));

  const legend = h('ul', { class: 'chart-legend' },
    series.map((s) => {
      const values = s.points.map((p) => p[1]).filter((v) => v !== null && v !== undefined);
      const last = values.length ? format(values[values.length - 1]) : '—';
      return h('li', { class: `series-${s.key}` },
        h('span', { class: 'chart-swatch', 'aria-hidden': 'true' }),
        h('span', { class: 'chart-legend-name', text: s.label }),
        h('span', { class: 'chart-legend-value', text: last }));
    }));

  // The same numbers as a table, for screen readers (visually hidden).
  const rows = [...new Set(xs)].sort((a, b) => a - b);
  const byKey = series.map((s) => new Map(s.points.map(([x, y]) => [x, y])));
  // Wrapped: a table ignores the 1px width of .vh and would widen the page on a phone.
  const table = h('div', { class: 'vh' }, h('table', {},
    h('caption', { text: `${title}, per time step` }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'time' }),
      series.map((s) => h('th', { scope: 'col', text: s.label })))),
    h('tbody', {}, rows.map((x) => h('tr', {},
      h('th', { scope: 'row', text: clock(x) }),
      byKey.map((m) => {
        const v = m.get(x);
        return h('td', { text: v === null || v === undefined ? 'no data' : format(v) });
      }))))));

  const points = ys.length;
  return h('figure', { class: 'chart', testid: `chart-${name}`, 'data-points': String(points) },
    h('figcaption', { class: 'chart-title', text: title }),
    chart,
    legend,
    table);
}
