// The console's shell: the admin API client, the session and login, the hash router, DOM
// building, the confirmation dialog, formatting, polling and toasts. The contract the page
// modules build on is /work/notes/ui-contract.md (copied in docs/design-console.md); this file
// exports exactly that, plus a few additions marked "addition" below.
//
// data-testids drawn here: login-form, login-token, login-submit, login-error, whoami, role,
// logout, nav-prompts, nav-audit, nav-fleet, toast, error, confirm-dialog, confirm-summary,
// confirm-reason, confirm-cancel, confirm-ok, not-found; login-reason-kept (the login's note
// that the reason typed when the session ended is kept), confirm-reason-restored (the
// dialog's note that it filled that reason in).

const API = '/admin/v1';
const SESSION = '/console/session';

/** An error answer of the admin API (the OpenAI error shape). */
export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

/** Who is logged in; filled before any page renders. */
export const session = { name: '', role: 'read', canWrite: false };

// The shell's own state (one page, one shell): the CSRF value, the routes, the current
// navigation's generation (pollers and late renders of an earlier page check it).
const state = {
  csrf: null,
  routes: [],
  generation: 0,
  route: null,
  routeStart: 0,
  view: null,
  ready: false,
  loggedOut: false,
  // A write's reason must survive a session that ends mid-write, in this page's memory only
  // (never storage: a reason can name customers and incidents). `confirming`: the open
  // dialog; `confirmed`: the reason just given, until its write answers; `lostReason`:
  // {who, page, write, reason} kept when the session ended, for that write's dialog.
  confirming: null,
  confirmed: null,
  lostReason: null,
};

// The page a write's dialog belongs to: the route's path, without its ?query (the prompt
// page writes ?v= as a version is chosen).
function currentPage() {
  return (location.hash.replace(/^#/, '') || '/').split('?')[0];
}

// A session ended: keep the reason of the write under way, if any. An open dialog is
// closed (it would sit over the login form and keep it inert); a write refused with 401
// keeps the reason it was sent with.
function keepReason(sentReason) {
  const open = state.confirming;
  if (open) {
    const text = open.textarea.value.trim();
    if (text) state.lostReason = { who: open.who, page: open.page, write: open.write, reason: text };
    state.confirming = null;
    open.finish(null);
    return;
  }
  const given = state.confirmed;
  if (sentReason && given && given.reason === sentReason) state.lostReason = given;
}

function queryString(query) {
  if (!query) return '';
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null || value === '') continue;
    params.append(key, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let code = null;
  let param = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code ?? null;
      param = body.error.param ?? null;
    }
  } catch {
    // not JSON (a proxy in front, a crash): the status line says enough
  }
  return new ApiError(response.status, message, code, param);
}

// A prompt key from the address bar becomes a path segment; "." or ".." (or their
// percent-encodings, which the URL parser also folds) would walk up the API's path.
function dotSegment(path) {
  return path.split('/').some((part) => {
    try {
      const plain = decodeURIComponent(part);
      return plain === '.' || plain === '..';
    } catch {
      return true;
    }
  });
}

async function request(method, path, { query, body, headers, reason } = {}) {
  if (dotSegment(path)) {
    throw new ApiError(400, `Not a prompt key: ${path}`, 'invalid_slug');
  }
  let response;
  try {
    response = await fetch(API + path + queryString(query), {
      method,
      credentials: 'same-origin',
      headers: { Accept: 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `The proxy did not answer (${err.message}).`, 'network_error');
  }
  if (!response.ok) {
    const err = await failure(response);
    if (response.status === 401) sessionEnded(reason);
    throw err;
  }
  return response;
}

export const api = {
  /** GET a JSON answer; `path` is relative to /admin/v1. */
  async get(path, query) {
    const response = await request('GET', path, { query });
    return response.json();
  },
  /** A write: CSRF header, reason (body for POST/PUT, query for DELETE), wait=5. */
  async write(method, path, { body, query, reason } = {}) {
    const verb = method.toUpperCase();
    const sendQuery = { ...query, wait: 5 };
    let sendBody = body === undefined ? undefined : { ...body };
    if (reason !== undefined && reason !== null) {
      if (verb === 'DELETE') sendQuery.reason = reason;
      else sendBody = { ...sendBody, reason };
    }
    const headers = { 'Content-Type': 'application/json' };
    if (state.csrf) headers['X-CSRF-Token'] = state.csrf;
    let response;
    try {
      response = await request(verb, path, { query: sendQuery, body: sendBody, headers, reason });
    } finally {
      // Answered (or refused): the reason is no longer under way.
      if (state.confirmed && state.confirmed.reason === reason) state.confirmed = null;
    }
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  },
  /** GET a raw text answer (NDJSON shadow pairs). */
  async text(path, query) {
    const response = await request('GET', path, { query });
    return response.text();
  },
};

// -- DOM --------------------------------------------------------------------------------------

function build(element, attrs, children) {
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') element.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
      else if (key === 'text') element.textContent = String(value);
      else if (key === 'testid') element.setAttribute('data-testid', value);
      else if (key === 'on') {
        for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
      } else if (value === true) element.setAttribute(key, '');
      else element.setAttribute(key, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.append(child);
    else element.append(document.createTextNode(String(child)));
  }
}

/** An element: h('a', {href: '#/', class: 'x', text: 'Home', testid: 'home', on: {click}}, ...children). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The same in the SVG namespace. */
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** A status pill: draft, candidate, prod, deprecated, pass, fail, inconclusive, canary, ... */
export function badge(status) {
  const text = status === null || status === undefined ? '—' : String(status);
  const kind = text.toLowerCase().replace(/[^a-z0-9-]/g, '-');
  return h('span', { class: `badge badge-${kind}`, 'data-status': text, text });
}

/** An error answer (or any error) as an alert box. */
export function errorBox(err) {
  const message = err && err.message ? err.message : String(err);
  const code = err instanceof ApiError && err.code ? err.code : null;
  return h(
    'div',
    { class: 'error-box', role: 'alert', testid: 'error' },
    h('strong', { text: err instanceof ApiError && err.status ? `Error ${err.status}` : 'Error' }),
    code ? h('code', { class: 'error-code', text: code }) : null,
    h('p', { class: 'error-message', text: message }),
  );
}

/** A polite message in the live region; errors stay longer. */
export function toast(message, kind = 'ok') {
  const region = document.getElementById('toasts');
  if (!region) return;
  // A write the ended session refused: the login form says so, and the API's "missing
  // admin token" would only confuse.
  if (kind === 'error' && state.loggedOut) return;
  const item = h(
    'div',
    { class: `toast toast-${kind === 'error' ? 'error' : 'ok'}`, testid: 'toast', 'data-kind': kind },
    h('span', { text: message }),
    h('button', {
      type: 'button',
      class: 'toast-close',
      'aria-label': 'Dismiss',
      on: { click: () => item.remove() },
    }),
  );
  region.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 12000 : 6000);
}

/**
 * The confirmation of a write: a modal dialog with a summary and a required reason.
 * Resolves to the trimmed reason, or null when cancelled (Cancel, Escape).
 */
export function confirmAction({ title, summary, confirmLabel = 'Confirm', danger = false }) {
  // The write this dialog confirms, as the operator reads it: the same words on the same
  // page are the same change (a summary that moved on, say "from 25 % to 50 %" after the
  // analyser ramped, is another one and gets no kept reason).
  const summaryText = summary instanceof Node ? summary.textContent : String(summary ?? '');
  const write = JSON.stringify([title || 'Confirm', confirmLabel, summaryText]);
  const page = currentPage();
  const lost = state.lostReason;
  const restored = lost && lost.who === session.name && lost.page === page && lost.write === write ? lost.reason : null;
  if (restored !== null) state.lostReason = null;
  return new Promise((resolve) => {
    const reason = h('textarea', {
      id: 'confirm-reason',
      name: 'reason',
      rows: 3,
      required: true,
      autocomplete: 'off',
      testid: 'confirm-reason',
      'aria-describedby': 'confirm-hint',
    });
    if (restored !== null) reason.value = restored;
    const hint = h('p', { id: 'confirm-hint', class: 'hint', text: 'Kept in the audit log with your name.' });
    const restoredNote =
      restored !== null
        ? h('p', {
            id: 'confirm-restored',
            class: 'notice',
            role: 'status',
            testid: 'confirm-reason-restored',
            text: 'Your session ended while you were confirming this change: the reason you had typed is filled in. Read it before you confirm.',
          })
        : null;
    if (restoredNote) reason.setAttribute('aria-describedby', 'confirm-restored confirm-hint');
    const problem = h('p', { class: 'field-error', role: 'alert' });
    const cancel = h('button', { type: 'button', class: 'button', text: 'Cancel', testid: 'confirm-cancel' });
    const ok = h('button', {
      type: 'submit',
      class: danger ? 'button button-danger' : 'button button-primary',
      text: confirmLabel,
      testid: 'confirm-ok',
    });
    const form = h(
      'form',
      { class: 'confirm-form', method: 'dialog', novalidate: true },
      h('h2', { id: 'confirm-title', text: title || 'Confirm' }),
      h('div', { class: 'confirm-summary', testid: 'confirm-summary' }, summary ?? null),
      restoredNote,
      h('label', { for: 'confirm-reason', text: 'Reason (required)' }),
      reason,
      hint,
      problem,
      h('div', { class: 'actions' }, cancel, ok),
    );
    const dialog = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title', testid: 'confirm-dialog' }, form);
    let answer = null;
    const finish = (value) => {
      answer = value;
      if (dialog.open) dialog.close();
    };
    const open = { who: session.name, page, write, textarea: reason, finish };
    state.confirming = open;
    cancel.addEventListener('click', () => finish(null));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = reason.value.trim();
      if (!text) {
        problem.textContent = 'Say why: the reason goes into the audit log.';
        reason.setAttribute('aria-invalid', 'true');
        reason.focus();
        return;
      }
      finish(text);
    });
    // Escape fires "cancel" and closes the dialog; "close" settles the promise once.
    dialog.addEventListener('cancel', () => {
      answer = null;
    });
    const opener = document.activeElement;
    dialog.addEventListener('close', () => {
      if (state.confirming === open) state.confirming = null;
      // Kept until its write answers, in case that answer is "session ended".
      if (answer !== null) state.confirmed = { who: open.who, page, write, reason: answer };
      dialog.remove();
      // Back to the control that opened it (if the page did not redraw it away).
      if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    reason.focus();
    // At the end of a kept reason, ready to add to it.
    if (restored !== null) reason.setSelectionRange(reason.value.length, reason.value.length);
  });
}

// -- formatting ---------------------------------------------------------------------------------

const DASH = '—';
const missing = (x) => x === null || x === undefined || (typeof x === 'number' && !Number.isFinite(x));
const pad = (n) => String(n).padStart(2, '0');
const trim = (text) => (text.includes('.') ? text.replace(/0+$/, '').replace(/\.$/, '') : text);

export const fmt = {
  /** Local date and time of unix seconds: 2026-12-06 19:20:31. */
  time(unix) {
    if (missing(unix)) return DASH;
    const d = new Date(unix * 1000);
    return (
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
    );
  },
  /** How long ago (or in how long) unix seconds are: 12 s ago, in 3 min. */
  ago(unix) {
    if (missing(unix)) return DASH;
    const seconds = Date.now() / 1000 - unix;
    const size = Math.abs(seconds);
    let text;
    if (size < 1) return 'now';
    if (size < 60) text = `${Math.round(size)} s`;
    else if (size < 3600) text = `${Math.round(size / 60)} min`;
    else if (size < 86400) text = `${trim((size / 3600).toFixed(1))} h`;
    else text = `${trim((size / 86400).toFixed(1))} d`;
    return seconds >= 0 ? `${text} ago` : `in ${text}`;
  },
  /** A share 0..1 as a percentage: 0.125 → 12.5%. */
  pct(x) {
    if (missing(x)) return DASH;
    const value = x * 100;
    const digits = Math.abs(value) >= 10 ? 1 : 2;
    return `${trim(value.toFixed(digits))}%`;
  },
  /** Seconds as milliseconds (or seconds when long): 0.412 → 412 ms, 2.5 → 2.5 s. */
  ms(seconds) {
    if (missing(seconds)) return DASH;
    if (Math.abs(seconds) >= 10) return `${trim(seconds.toFixed(1))} s`;
    const ms = seconds * 1000;
    return `${trim(ms.toFixed(ms >= 100 ? 0 : 1))} ms`;
  },
  /** A number with thousands separators and at most 3 decimals. */
  num(x) {
    if (missing(x)) return DASH;
    return new Intl.NumberFormat('en-US', { maximumFractionDigits: 3 }).format(x);
  },
};

// -- navigation, polling, readiness --------------------------------------------------------------

/** Go to a route, e.g. navigate('#/rollouts/support-reply'). */
export function navigate(hash) {
  const target = hash.startsWith('#') ? hash : `#${hash}`;
  if (location.hash === target) {
    // A page redrawn in place (after a write) removes the control that had the focus: keep
    // the focus in the page, as a hashchange does, rather than drop it to the document.
    render();
    document.getElementById('main')?.focus({ preventScroll: true });
  } else location.hash = target;
}

/**
 * Call fn now and every ms while the current route is shown (stopped on navigation). The
 * next call waits for the previous one to finish. Addition: an optional `view`; the poller
 * also stops when that element leaves the document.
 */
export function poll(ms, fn, view) {
  const generation = state.generation;
  let timer = null;
  const alive = () =>
    generation === state.generation && !state.loggedOut && (!view || view.isConnected);
  let first = true;
  const tick = async () => {
    if (!alive()) return;
    // A hidden tab asks nothing after the first call; it catches up within `ms` of being shown.
    if (document.hidden && !first) {
      timer = setTimeout(tick, ms);
      return;
    }
    first = false;
    try {
      await fn();
    } catch (err) {
      // An API refusal is the page's to draw; anything else is a defect in the page, and
      // an error (not a warning) so the browser tests' watch fails on it.
      if (!(err instanceof ApiError)) console.error('poll:', err);
      else if (err.status !== 401) console.warn('poll:', err);
    }
    if (alive()) timer = setTimeout(tick, ms);
  };
  tick();
  return () => clearTimeout(timer);
}

/**
 * A page calls this once its first data is drawn: body[data-ready] = the route's path
 * pattern (e.g. "/prompts/:slug") and window.__consoleTimings[route] = performance.now().
 * Addition: an optional `view`; a late call from a page already left is ignored.
 */
export function pageReady(view) {
  if (!state.route || state.ready) return;
  if (view && view !== state.view) return;
  state.ready = true;
  const now = performance.now();
  const route = state.route.path;
  window.__consoleTimings = window.__consoleTimings || {};
  window.__consoleTimings[route] = now;
  // Addition: from the navigation that showed the route (differs after in-page navigation).
  window.__consoleRouteTimings = window.__consoleRouteTimings || {};
  window.__consoleRouteTimings[route] = now - state.routeStart;
  document.body.dataset.ready = route;
}

// -- additions: prompt keys and tables shared by the pages ----------------------------------------

/**
 * Addition. A prompt key as the API lists it, [tier=|tenant=NAME/]SLUG[@VARIANT], split into
 * the path slug and the layer query every {slug} route takes: promptKey('tenant=acme/x@claude')
 * → {text, slug: 'x', query: {tenant: 'acme', variant: 'claude'}, layer: 'tenant=acme', variant: 'claude'}.
 */
export function promptKey(text) {
  const match = /^(?:(tier|tenant)=([^/]+)\/)?([^@/]+)(?:@(.+))?$/.exec(text || '');
  if (!match) return { text, slug: text, query: {}, layer: null, variant: null };
  const [, kind, name, slug, variant] = match;
  const query = {};
  if (kind) query[kind] = name;
  if (variant) query.variant = variant;
  return { text, slug, query, layer: kind ? `${kind}=${name}` : null, variant: variant || null };
}

/** Addition. The hash of a route with a prompt key in it: routeHash('prompts', key). */
export function routeHash(page, key) {
  return `#/${page}/${encodeURIComponent(key)}`;
}

/**
 * Addition. A table that becomes a list of cards on narrow screens: columns are
 * {label, cell(row) → Node|string|null, class?}; each cell carries data-label for the card view.
 */
export function dataTable({ columns, rows, testid, rowTestid, caption, empty = 'Nothing yet.' }) {
  const body = h('tbody');
  for (const row of rows) {
    const tr = h('tr', { testid: rowTestid ? rowTestid(row) : null });
    for (const column of columns) {
      tr.append(h('td', { class: column.class, 'data-label': column.label }, column.cell(row)));
    }
    body.append(tr);
  }
  const table = h(
    'table',
    { class: 'data', testid },
    caption ? h('caption', { class: 'visually-hidden', text: caption }) : null,
    h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.class, text: c.label })))),
    body,
  );
  if (!rows.length) return h('div', { class: 'table-wrap' }, table, h('p', { class: 'empty', text: empty }));
  return h('div', { class: 'table-wrap' }, table);
}

// -- session, login, the shell ---------------------------------------------------------------------

function setSession(answer) {
  session.name = answer.name || 'anonymous';
  session.role = answer.role === 'admin' ? 'admin' : 'read';
  session.canWrite = session.role === 'admin';
  state.csrf = answer.csrf || null;
}

async function loadSession() {
  let response;
  try {
    response = await fetch(SESSION, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  } catch (err) {
    throw new ApiError(0, `The proxy did not answer (${err.message}).`, 'network_error');
  }
  if (response.status === 401) return false;
  // No login route (the files served by something else, e.g. while developing): reads are
  // anonymous, as when no token is configured.
  if (response.status === 404) {
    setSession({ name: 'anonymous', role: 'read', csrf: null });
    return true;
  }
  if (!response.ok) throw await failure(response);
  setSession(await response.json());
  return true;
}

// `sentReason`: the reason of the write the 401 answered, if a write's.
function sessionEnded(sentReason) {
  if (state.loggedOut) return;
  keepReason(sentReason);
  showLogin('Your session has ended (expired, logged out elsewhere, or the token changed): log in again.', null, { kept: state.lostReason !== null });
}

function drawHeader() {
  const who = document.getElementById('who');
  if (!who) return;
  const parts = [
    h('span', { class: 'whoami', testid: 'whoami', title: 'Logged in as', text: session.name }),
    session.canWrite ? null : h('span', { class: 'badge badge-read', testid: 'role', text: 'read-only' }),
    // No CSRF value: no session to end (no token is configured, reads are anonymous).
    state.csrf
      ? h('button', { type: 'button', class: 'button button-small', testid: 'logout', text: 'Log out', on: { click: logout } })
      : null,
  ];
  who.replaceChildren(...parts.filter(Boolean));
}

async function logout() {
  try {
    await fetch(SESSION, {
      method: 'DELETE',
      credentials: 'same-origin',
      headers: { 'X-CSRF-Token': state.csrf || '', Accept: 'application/json' },
    });
  } catch {
    // the cookie may stay until it expires; the page forgets the session either way
  }
  state.csrf = null;
  session.name = '';
  session.canWrite = false;
  // Logging out on purpose leaves nothing behind for whoever logs in next.
  state.lostReason = null;
  state.confirmed = null;
  showLogin(null, 'You are logged out.');
}

function showLogin(problem, notice, { kept = false } = {}) {
  // A dialog still open would sit over the login form and keep it inert.
  state.confirming?.finish(null);
  state.confirming = null;
  state.loggedOut = true;
  state.generation += 1;
  state.route = null;
  document.body.classList.add('logged-out');
  delete document.body.dataset.ready;
  document.getElementById('who')?.replaceChildren();
  const main = document.getElementById('main');
  const token = h('input', {
    id: 'login-token',
    name: 'token',
    type: 'password',
    autocomplete: 'off',
    required: true,
    spellcheck: 'false',
    testid: 'login-token',
  });
  const error = h('p', { class: 'field-error', role: 'alert', testid: 'login-error' }, problem);
  const submit = h('button', { type: 'submit', class: 'button button-primary', text: 'Log in', testid: 'login-submit' });
  const form = h(
    'form',
    // method=post: were the script ever bypassed, a submit still never puts the token in a URL.
    { class: 'login card', testid: 'login-form', novalidate: true, method: 'post' },
    h('h1', { text: 'Log in' }),
    notice ? h('p', { class: 'notice', role: 'status', text: notice }) : null,
    kept
      ? h('p', {
          class: 'notice',
          testid: 'login-reason-kept',
          text: 'The reason you had typed for a change is kept in this page (not stored anywhere): log in again as the same operator and open the same change on the same page to find it filled in.',
        })
      : null,
    h('label', { for: 'login-token', text: 'Admin API token' }),
    token,
    h('p', { class: 'hint', text: 'A token of admin.tokens in the proxy’s config. It is sent once; the session it opens lives in an HttpOnly cookie.' }),
    error,
    h('div', { class: 'actions' }, submit),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = token.value.trim();
    if (!value) {
      error.textContent = 'Paste a token.';
      token.focus();
      return;
    }
    submit.disabled = true;
    error.textContent = '';
    try {
      const response = await fetch(SESSION, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ token: value }),
      });
      if (!response.ok) throw await failure(response);
      setSession(await response.json());
      token.value = '';
      enterApp();
    } catch (err) {
      error.textContent = err.status === 401 ? 'That token is not valid.' : err.message;
      submit.disabled = false;
      token.focus();
    }
  });
  document.title = 'Log in · promptproxy';
  main.replaceChildren(form);
  token.focus();
}

function enterApp() {
  // Another operator's words are not theirs to sign: the audit would name the new one.
  if (state.lostReason && state.lostReason.who !== session.name) state.lostReason = null;
  state.loggedOut = false;
  document.body.classList.remove('logged-out');
  drawHeader();
  render();
}

function match(path) {
  const parts = path.split('/').filter(Boolean);
  for (const route of state.routes) {
    const pattern = route.path.split('/').filter(Boolean);
    if (pattern.length !== parts.length) continue;
    const params = {};
    let ok = true;
    for (let i = 0; i < pattern.length && ok; i += 1) {
      if (pattern[i].startsWith(':')) {
        try {
          params[pattern[i].slice(1)] = decodeURIComponent(parts[i]);
        } catch {
          ok = false;
        }
      } else ok = pattern[i] === parts[i];
    }
    if (ok) return { route, params };
  }
  return null;
}

function markNav(path) {
  for (const link of document.querySelectorAll('.nav a')) {
    const section = link.dataset.section;
    const current =
      section === '/' ? path === '/' || path.startsWith('/prompts/') || path.startsWith('/rollouts/') || path.startsWith('/shadow/') : path.startsWith(section);
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function render() {
  if (state.loggedOut) return;
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = raw.split('?');
  // A kept reason is for its page: going elsewhere drops it.
  if (state.lostReason && state.lostReason.page !== path) state.lostReason = null;
  state.generation += 1;
  const generation = state.generation;
  state.routeStart = performance.now();
  state.ready = false;
  delete document.body.dataset.ready;
  markNav(path);
  const main = document.getElementById('main');
  // A fresh element per navigation: a page still drawing after it was left draws nowhere.
  const view = h('div', { class: 'view' });
  state.view = view;
  main.replaceChildren(view);
  const found = match(path);
  if (!found) {
    state.route = { path: '*', title: 'Not found' };
    document.title = 'Not found · promptproxy';
    view.append(
      h('h1', { text: 'Not found' }),
      h('p', { testid: 'not-found' }, 'No page at ', h('code', { text: raw }), '. ', h('a', { href: '#/', text: 'All prompts' })),
    );
    pageReady(view);
    return;
  }
  state.route = found.route;
  document.title = `${found.route.title} · promptproxy`;
  const params = { ...found.params, query: new URLSearchParams(search) };
  try {
    await found.route.render(view, params);
  } catch (err) {
    if (generation !== state.generation) return;
    if (err instanceof ApiError && err.status === 401) return;
    // An API refusal is the page's answer (the browser logged its status already); anything
    // else is a bug worth a console line.
    if (!(err instanceof ApiError)) console.error(err);
    view.append(errorBox(err));
  }
}

/**
 * Addition (used by main.js): start the shell with the routes of the page modules (an array
 * or a promise of one, so the session and the modules load at once).
 */
export async function start(routes) {
  document.querySelector('.skip-link')?.addEventListener('click', (event) => {
    event.preventDefault();
    const main = document.getElementById('main');
    main.focus();
    main.scrollIntoView();
  });
  window.addEventListener('hashchange', () => {
    render();
    // After an in-page navigation, focus the new content for screen readers and keyboards.
    document.getElementById('main')?.focus({ preventScroll: true });
  });
  const main = document.getElementById('main');
  let signedIn;
  try {
    [signedIn, state.routes] = await Promise.all([loadSession(), Promise.resolve(routes)]);
  } catch (err) {
    main.replaceChildren(errorBox(err));
    return;
  }
  if (!signedIn) {
    showLogin(null);
    return;
  }
  enterApp();
}
