// A word-level diff of two answers (shadow pairs), our own: Myers' O((N+M)D) algorithm on
// word tokens, after trimming the common head and tail.
//
// Bounded, because answers can be long and the page diffs many pairs at once: beyond
// MAX_TOKENS tokens on a side, or MAX_EDITS edits, the whole texts are marked as changed
// (`whole: true`) instead of spending seconds and memory on one pair.
//
// No data-testid here: shadow.js marks its elements (the <del>/<ins> come from renderSide).

import { h } from './app.js';

export const MAX_TOKENS = 4000;
export const MAX_EDITS = 600;

// Words (letters, digits, underscore, apostrophes inside words), runs of white space, and
// single other characters, so punctuation changes do not swallow the neighbouring word.
const TOKEN = /\s+|[\p{L}\p{N}_]+(?:['’][\p{L}\p{N}_]+)*|[^\s\p{L}\p{N}_]/gu;

export function tokenize(text) {
  return text ? text.match(TOKEN) || [] : [];
}

// Myers' greedy forward search, keeping for each d only the diagonals -d..d it reached
// (the trace is O(D^2), not O(D*(N+M))). Returns the edit script, or null beyond maxEdits.
function myers(a, b, maxEdits) {
  const n = a.length;
  const m = b.length;
  const trace = [];
  let v = new Int32Array(1);
  for (let d = 0; d <= Math.min(maxEdits, n + m); d++) {
    const next = new Int32Array(2 * d + 1);
    // `v` holds the furthest x on diagonals -(d-1)..(d-1): diagonal k at index k + d - 1.
    const prev = v;
    const off = d - 1;
    for (let k = -d; k <= d; k += 2) {
      let x;
      if (d === 0) {
        x = 0;
      } else if (k === -d || (k !== d && prev[k - 1 + off] < prev[k + 1 + off])) {
        x = prev[k + 1 + off]; // down: an insertion from b
      } else {
        x = prev[k - 1 + off] + 1; // right: a deletion from a
      }
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      next[k + d] = x;
      if (x >= n && y >= m) {
        trace.push(next);
        return backtrack(trace, a, b);
      }
    }
    trace.push(next);
    v = next;
  }
  return null;
}

function backtrack(trace, a, b) {
  const ops = [];
  let x = a.length;
  let y = b.length;
  for (let d = trace.length - 1; d > 0; d--) {
    const prev = trace[d - 1];
    const off = d - 1;
    const k = x - y;
    let prevK;
    if (k === -d || (k !== d && prev[k - 1 + off] < prev[k + 1 + off])) {
      prevK = k + 1;
    } else {
      prevK = k - 1;
    }
    const prevX = prev[prevK + off];
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) {
      ops.push(['eq', a[x - 1]]);
      x--;
      y--;
    }
    if (x === prevX) {
      ops.push(['ins', b[y - 1]]);
      y--;
    } else {
      ops.push(['del', a[x - 1]]);
      x--;
    }
  }
  while (x > 0 && y > 0) {
    ops.push(['eq', a[x - 1]]);
    x--;
    y--;
  }
  return ops.reverse();
}

// Join neighbouring operations of one kind into runs: [{op, text}].
function runs(ops) {
  const out = [];
  for (const [op, text] of ops) {
    const last = out[out.length - 1];
    if (last && last.op === op) last.text += text;
    else out.push({ op, text });
  }
  return out;
}

// Absorb white space lying between two changes into them, so "a b c" -> "x y z" reads as
// one removed phrase and one added phrase rather than three of each.
function tidy(list) {
  const out = [];
  for (let i = 0; i < list.length; i++) {
    const r = list[i];
    const before = out[out.length - 1];
    const after = list[i + 1];
    if (
      r.op === 'eq' && /^\s+$/.test(r.text) && before && after &&
      before.op !== 'eq' && after.op !== 'eq'
    ) {
      // Give the space to both sides: it was in both texts.
      out.push({ op: 'del', text: r.text }, { op: 'ins', text: r.text });
      continue;
    }
    out.push({ ...r });
  }
  // Regroup: within a changed stretch, all deletions then all insertions.
  const grouped = [];
  let dels = '';
  let inss = '';
  const flush = () => {
    if (dels) grouped.push({ op: 'del', text: dels });
    if (inss) grouped.push({ op: 'ins', text: inss });
    dels = '';
    inss = '';
  };
  for (const r of out) {
    if (r.op === 'del') dels += r.text;
    else if (r.op === 'ins') inss += r.text;
    else {
      flush();
      grouped.push(r);
    }
  }
  flush();
  return grouped;
}

// The word diff of `a` (before: the primary's answer) and `b` (after: the shadow's).
// Returns {runs: [{op: 'eq'|'del'|'ins', text}], whole: boolean, changed: number}, where
// `whole` says the texts were too long or too different to diff and are marked entirely.
export function diffWords(a, b, { maxTokens = MAX_TOKENS, maxEdits = MAX_EDITS } = {}) {
  a = a || '';
  b = b || '';
  if (a === b) return { runs: a ? [{ op: 'eq', text: a }] : [], whole: false, changed: 0 };
  const ta = tokenize(a);
  const tb = tokenize(b);
  const whole = () => ({
    runs: [
      ...(a ? [{ op: 'del', text: a }] : []),
      ...(b ? [{ op: 'ins', text: b }] : []),
    ],
    whole: true,
    changed: ta.length + tb.length,
  });
  if (ta.length > maxTokens || tb.length > maxTokens) return whole();
  let head = 0;
  while (head < ta.length && head < tb.length && ta[head] === tb[head]) head++;
  let tail = 0;
  while (
    tail < ta.length - head && tail < tb.length - head &&
    ta[ta.length - 1 - tail] === tb[tb.length - 1 - tail]
  ) tail++;
  const midA = ta.slice(head, ta.length - tail);
  const midB = tb.slice(head, tb.length - tail);
  const script = myers(midA, midB, maxEdits);
  if (script === null) return whole();
  const ops = [
    ...ta.slice(0, head).map((t) => ['eq', t]),
    ...script,
    ...ta.slice(ta.length - tail).map((t) => ['eq', t]),
  ];
  const changed = script.filter(([op, t]) => op !== 'eq' && !/^\s+$/.test(t)).length;
  return { runs: tidy(runs(ops)), whole: false, changed };
}

// One side of a diff as elements: the primary side shows what is common and what the
// shadow removed (<del>), the shadow side what is common and what it added (<ins>).
// Besides their colour and line (strike-through, underline) each change carries visually
// hidden words for screen readers, so colour is never the only signal.
export function renderSide(diff, side) {
  const keep = side === 'primary' ? 'del' : 'ins';
  const children = [];
  for (const r of diff.runs) {
    if (r.op === 'eq') {
      children.push(r.text);
    } else if (r.op === keep) {
      const label = keep === 'del' ? 'only in the primary' : 'only in the shadow';
      children.push(
        h(keep, { class: `diff-${keep}` },
          h('span', { class: 'vh', text: `[${label}: ` }),
          r.text,
          h('span', { class: 'vh', text: ']' })),
      );
    }
  }
  return children;
}
