// The taskstream dashboard: who you are, the task list (filter, cancel),
// starting tickers and allow-listed commands, and following one task live
// with the browser's own EventSource.
//
// Served by taskstreamd under a strict Content-Security-Policy
// (default-src 'self'): no inline script, no eval, no innerHTML; everything
// a task prints reaches the page through textContent only.
//
// Credentials (docs/auth.md). GET /v1/me says who the browser is. A 401
// means the server wants a credential: the page asks for a token (an API key
// or a JWT), keeps it in sessionStorage (this tab only) and sends it as
// "Authorization: Bearer" on every fetch. A 200 without a token means a
// cookie (the user's own login) or a server without auth: fetch and
// EventSource send the cookie by themselves.
//
// EventSource cannot send headers, and the user's token must never be in a
// URL (logs, history, Referer). With a token the page asks GET
// /v1/tasks/{id} for a stream token (read-only, one task, short-lived) and
// opens the stream with ?access_token=<stream token>. A stream the server
// refuses (its token expired while the page was away) gets a fresh token
// and goes on with last_event_id.
//
// Exactly once across reconnects: EventSource resends the last id it saw as
// Last-Event-ID when it reconnects, and the server resumes right after it.
// Ids of one task are 1, 2, 3, ... in order, so the page also drops any event
// whose id is not above the highest one shown (counted as a duplicate) rather
// than trusting that every proxy on the way resumes correctly.
//
// After `end` the page keeps the EventSource: the server ends the response,
// the EventSource reconnects once with the end's id and gets 204 No Content,
// which is the protocol's way of saying "nothing more" and closes it for good.
'use strict';

(function () {
  // EventSource delivers a named event only to listeners for that name.
  // These are the kinds this server knows; unnamed events arrive as
  // "message". `resumed` (cluster mode) has an id like a task event.
  const TASK_EVENTS = ['tick', 'output', 'output_limit', 'stopped', 'count', 'progress', 'result', 'log',
    'message', 'resumed'];
  const MAX_ROWS = 2000; // rendered rows kept; counters count everything
  const TASK_REFRESH_MS = 2000;
  const TASK_LIST_LIMIT = 200;
  const RETRY_MS = 2000;
  const MAX_RENEWALS = 3; // stream tokens fetched in a row without the stream opening
  const TOKEN_KEY = 'taskstream.token';

  const $ = (id) => document.getElementById(id);

  const auth = { token: sessionStorage.getItem(TOKEN_KEY), me: null };
  let follow = null; // the followed task's stream state
  let refreshing = false;
  let refreshAgain = false; // asked for while a refresh was on its way
  let refreshTimer = null;
  let commands = new Map(); // name -> what GET /v1/commands said

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function show(node, text, isError) {
    node.textContent = text;
    node.classList.toggle('error', Boolean(isError));
  }

  // ---- the API ----

  async function api(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
    const token = auth.token;
    if (token) init.headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let json = null;
    try {
      json = await resp.json();
    } catch (e) {
      json = null;
    }
    const r = { status: resp.status, headers: resp.headers, json };
    // The credential that worked stopped working (expired, key rotated):
    // back to the login form, saying why. (Not for an answer to a
    // credential the page no longer holds.)
    if (r.status === 401 && auth.me && token === auth.token) loggedOut(`logged out: ${describeError(r)}`, true);
    return r;
  }

  function describeError(r) {
    const j = r.json || {};
    let text = `${r.status} ${j.error || 'error'}: ${j.message || 'no details'}`;
    const retry = r.headers.get('Retry-After');
    if (retry) text += ` (retry after ${retry} s)`;
    return text;
  }

  // ---- who you are ----

  function describeMe(me) {
    const via = auth.token ? 'token' : 'cookie';
    switch (me.auth) {
      case 'open': return 'auth off: the API is open';
      case 'key': return `API key (${via}): every right`;
      case 'stream': return `stream token for task ${me.task}: read only`;
      case 'jwt': {
        const parts = [`${me.sub || '?'} (JWT, ${via})`];
        if (me.admin) {
          parts.push('admin');
        } else {
          parts.push(me.see === 'all' ? 'sees all tasks' : 'sees own tasks');
          const kinds = Array.isArray(me.kinds) ? me.kinds : [];
          parts.push(kinds.length ? `may start ${kinds.join(', ')}` : 'may start nothing');
        }
        if (me.expires_at) parts.push(`until ${new Date(me.expires_at).toLocaleString()}`);
        return parts.join(' · ');
      }
      default: return String(me.auth);
    }
  }

  // Asks the server who we are; shows the app, or the login form with
  // `message` if it wants a credential.
  async function checkAuth(message = '', isError = false) {
    let r;
    try {
      r = await api('GET', '/v1/me');
    } catch (e) {
      $('server-note').textContent = `the server is not answering (${e.message}); trying again`;
      setTimeout(() => checkAuth(message, isError), RETRY_MS);
      return;
    }
    if (r.status === 200 && r.json) {
      if (r.json.auth === 'open' && auth.token) forgetToken(); // not needed: auth is off
      showApp(r.json);
    } else if (r.status === 404) {
      showApp({ auth: 'open' }); // a server from before /v1/me: no auth
    } else if (r.status === 401) {
      if (auth.token) {
        forgetToken();
        showLogin(`the token was refused: ${describeError(r)}`, true);
      } else {
        showLogin(message, isError);
      }
    } else {
      $('server-note').textContent = `who am I: ${describeError(r)}; trying again`;
      setTimeout(() => checkAuth(message, isError), RETRY_MS);
    }
  }

  function forgetToken() {
    auth.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
  }

  function showApp(me) {
    auth.me = me;
    document.body.dataset.auth = me.auth;
    $('login').hidden = true;
    $('app').hidden = false;
    const who = $('whoami');
    who.hidden = false;
    who.textContent = describeMe(me);
    who.dataset.auth = me.auth;
    who.dataset.via = me.auth === 'open' ? 'none' : auth.token ? 'token' : 'cookie';
    $('logout').hidden = !auth.token;
    $('server-note').textContent = '';

    if (me.auth === 'stream') {
      // A stream token can only read its one task.
      $('start').hidden = true;
      $('tasks').hidden = true;
      followTask(me.task);
      document.body.dataset.ready = 'true';
      return;
    }
    $('start').hidden = false;
    $('tasks').hidden = false;
    loadCommands();
    refreshTasks();
    if (refreshTimer === null) refreshTimer = setInterval(refreshTasks, TASK_REFRESH_MS);
    const m = /^#task=([0-9a-f]{32})$/.exec(location.hash);
    if (m && !follow) followTask(m[1]);
    document.body.dataset.ready = 'true';
  }

  function showLogin(message, isError) {
    stopApp();
    document.body.dataset.auth = 'login';
    $('app').hidden = true;
    $('whoami').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    show($('login-error'), message, isError);
    $('login-token').value = '';
    $('login-token').focus();
    document.body.dataset.ready = 'true';
  }

  // Forget everything the last credential could see.
  function stopApp() {
    auth.me = null;
    if (refreshTimer !== null) clearInterval(refreshTimer);
    refreshTimer = null;
    if (follow) {
      if (follow.es) follow.es.close();
      follow = null;
    }
    $('task-rows').replaceChildren();
    $('events').replaceChildren();
    $('follow-task').textContent = '';
    setState('idle');
  }

  function loggedOut(message, isError) {
    forgetToken();
    stopApp();
    checkAuth(message, isError); // a cookie may still let us in
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const token = $('login-token').value.trim();
    if (!token) return;
    auth.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    show($('login-error'), 'checking...', false);
    await checkAuth();
  }

  // ---- task list ----

  function shortTime(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
  }

  function formatDuration(ms) {
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
  }

  // Run time: start to finish, or to now while it runs.
  function duration(t) {
    const start = Date.parse(t.started_at);
    if (Number.isNaN(start)) return '';
    const stop = t.finished_at ? Date.parse(t.finished_at) : Date.now();
    return Number.isNaN(stop) ? '' : formatDuration(Math.max(0, stop - start));
  }

  // What the task was asked to do: "greet who=Ada", "count=10 interval_ms=500".
  function describeTask(t) {
    const params = t.params && typeof t.params === 'object' ? t.params : {};
    const args = Object.entries(params).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
    return t.command ? [t.command, ...args].join(' ') : args.join(' ');
  }

  function cell(label, cls, text) {
    const td = el('td', cls, text);
    td.dataset.label = label;
    return td;
  }

  function renderTasks(tasks) {
    const body = $('task-rows');
    tasks.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    body.replaceChildren();
    for (const t of tasks) {
      const tr = el('tr');
      tr.dataset.id = t.id;
      tr.dataset.state = t.state;
      if (follow && follow.id === t.id) tr.className = 'followed';
      const idCell = cell('id', 'mono', t.id.slice(0, 12));
      idCell.title = t.id;
      const what = cell('task', 'what');
      what.append(el('span', 'kind', t.kind));
      const args = describeTask(t);
      if (args) what.append(' ', el('span', 'mono args', args));
      tr.append(idCell, what, cell('state', `state state-${t.state}`, t.state),
        cell('exit', 'num exit', t.exit_code ?? ''), cell('duration', 'num duration', duration(t)),
        cell('reason', 'reason', t.reason ?? ''), cell('by', 'by', t.submitted_by ?? ''),
        cell('events', 'num', t.events), cell('created', 'created', shortTime(t.created_at)));
      const td = cell('', 'actions');
      const b = el('button', 'small follow', 'follow');
      b.type = 'button';
      b.addEventListener('click', () => followTask(t.id));
      td.append(b);
      if (t.state === 'running' || t.state === 'queued') {
        const c = el('button', 'small danger cancel', 'cancel');
        c.type = 'button';
        c.addEventListener('click', () => cancelTask(t.id, c));
        td.append(c);
      }
      tr.append(td);
      body.append(tr);
    }
    const filtered = $('tasks-state').value !== '';
    $('tasks-empty').textContent = filtered ? 'No tasks in this state.' : 'No tasks yet.';
    $('tasks-empty').hidden = tasks.length > 0;
  }

  // The server did not answer: what the list shows is only what it last
  // said. Unfinished tasks may have ended, or been cut, since: say so rather
  // than show them as running.
  function markStale(why) {
    $('server-note').textContent = `the server is not answering (${why}): states below are the last known`;
    for (const tr of document.querySelectorAll('#task-rows tr')) {
      const state = tr.dataset.state;
      if (tr.dataset.stale || !(state === 'running' || state === 'queued')) continue;
      tr.dataset.stale = 'true';
      const c = tr.querySelector('td.state');
      c.textContent = `unknown (was ${state})`;
      c.className = 'state state-unknown';
      for (const b of tr.querySelectorAll('button.cancel')) b.disabled = true;
    }
  }

  async function refreshTasks() {
    if (!auth.me || auth.me.auth === 'stream') return;
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    const state = $('tasks-state').value;
    let path = `/v1/tasks?limit=${TASK_LIST_LIMIT}`;
    if (state) path += `&state=${encodeURIComponent(state)}`;
    try {
      const r = await api('GET', path);
      if (!auth.me || state !== $('tasks-state').value) return; // logged out, or the filter changed
      if (r.status === 200 && r.json && Array.isArray(r.json.tasks)) {
        renderTasks(r.json.tasks);
        $('server-note').textContent = follow && follow.drainingShown ? 'this server is draining' : '';
      } else if (r.status >= 502 && r.status <= 504) {
        markStale(`${r.status} from a proxy`); // the server behind it is gone
      } else if (r.status !== 401) {
        $('server-note').textContent = `task list: ${describeError(r)}`;
      }
    } catch (e) {
      markStale(e.message);
    } finally {
      refreshing = false;
      if (refreshAgain) {
        refreshAgain = false;
        refreshTasks();
      }
    }
  }

  async function cancelTask(id, button) {
    const out = $('tasks-note');
    button.disabled = true;
    show(out, `cancelling ${id.slice(0, 12)}...`, false);
    try {
      const r = await api('DELETE', `/v1/tasks/${encodeURIComponent(id)}`);
      if (r.status === 202) show(out, `cancel sent to task ${id}`, false);
      else if (r.status !== 401) show(out, `cancel ${id.slice(0, 12)}: ${describeError(r)}`, true);
    } catch (e) {
      show(out, `cancel ${id.slice(0, 12)}: ${e.message}`, true);
    }
    refreshTasks();
  }

  // ---- starting tasks ----

  async function submit(body) {
    const out = $('submit-result');
    show(out, 'starting...', false);
    try {
      const r = await api('POST', '/v1/tasks', body);
      if (r.status === 202 && r.json) {
        show(out, `started ${r.json.kind} task ${r.json.id}`, false);
        out.dataset.taskId = r.json.id;
        // The answer carries a stream token: no need to ask for one.
        followTask(r.json.id, r.json.stream_token ? { token: r.json.stream_token } : null);
        refreshTasks();
      } else {
        show(out, describeError(r), true);
      }
    } catch (e) {
      show(out, e.message, true);
    }
  }

  function onTicker(ev) {
    ev.preventDefault();
    submit({
      kind: 'ticker',
      count: Number($('ticker-count').value),
      interval_ms: Number($('ticker-interval').value),
    });
  }

  // The command form: the name picks a command of GET /v1/commands, whose
  // parameters become fields. The fields and the JSON text say the same
  // thing; the JSON is what is sent (a command the server did not list can
  // still be tried, and the server's answer is shown).
  async function loadCommands() {
    const info = $('command-info');
    try {
      const r = await api('GET', '/v1/commands');
      if (r.status === 200 && r.json && Array.isArray(r.json.commands)) {
        commands = new Map(r.json.commands.map((c) => [c.name, c]));
        const list = $('command-list');
        list.replaceChildren();
        for (const c of commands.values()) {
          const o = el('option');
          o.value = c.name;
          if (c.description) o.label = c.description;
          list.append(o);
        }
        if (commands.size === 0) {
          show(info, auth.me && auth.me.auth === 'jwt' ? 'no command you may run' : 'no commands on this server', false);
        } else {
          onCommandName();
        }
      } else if (r.status !== 401) {
        show(info, `commands: ${describeError(r)}`, true);
      }
    } catch (e) {
      show(info, `commands: ${e.message}`, true);
    }
  }

  function paramsFromText() {
    try {
      const v = JSON.parse($('command-params').value || '{}');
      return v && typeof v === 'object' && !Array.isArray(v) ? v : null;
    } catch (e) {
      return null;
    }
  }

  function onCommandName() {
    const c = commands.get($('command-name').value.trim());
    const fields = $('command-fields');
    fields.replaceChildren();
    if (!c) {
      if (commands.size) show($('command-info'), `commands: ${[...commands.keys()].join(', ')}`, false);
      return;
    }
    const facts = [c.description, c.timeout_ms ? `time limit ${formatDuration(c.timeout_ms)}` : '',
      c.max_concurrent ? `at most ${c.max_concurrent} at once` : '', c.restartable ? 'restartable' : ''];
    show($('command-info'), facts.filter(Boolean).join(' · '), false);
    const given = paramsFromText() || {};
    for (const [name, p] of Object.entries(c.params || {})) {
      const label = el('label', null, name);
      const input = el('input', 'param');
      input.type = 'text';
      input.dataset.param = name;
      input.spellcheck = false;
      input.placeholder = p.default != null ? `default: ${p.default}` : 'required';
      input.title = [p.description, `pattern ${p.pattern}`].filter(Boolean).join(' · ');
      if (typeof given[name] === 'string') input.value = given[name];
      input.addEventListener('input', onParamField);
      label.append(input);
      if (p.description) label.append(el('small', null, p.description));
      fields.append(label);
    }
  }

  // A field changed: the JSON follows (empty fields are left out, so the
  // server applies the default).
  function onParamField() {
    const params = {};
    for (const input of document.querySelectorAll('#command-fields input.param')) {
      if (input.value !== '') params[input.dataset.param] = input.value;
    }
    $('command-params').value = JSON.stringify(params);
  }

  // The JSON changed: the fields follow.
  function onParamText() {
    const given = paramsFromText();
    if (!given) return;
    for (const input of document.querySelectorAll('#command-fields input.param')) {
      const v = given[input.dataset.param];
      input.value = typeof v === 'string' ? v : '';
    }
  }

  function onCommand(ev) {
    ev.preventDefault();
    let params;
    try {
      params = JSON.parse($('command-params').value || '{}');
    } catch (e) {
      show($('submit-result'), `params: not JSON: ${e.message}`, true);
      return;
    }
    submit({ kind: 'command', command: $('command-name').value.trim(), params });
  }

  // ---- following a task ----

  function setState(state, text) {
    const s = $('stream-state');
    s.dataset.state = state;
    s.textContent = text || state;
  }

  function updateCounters() {
    $('count-events').textContent = follow.events;
    $('last-id').textContent = follow.lastId > 0 ? follow.lastId : '-';
    $('count-connections').textContent = follow.connections;
    $('count-duplicates').textContent = follow.duplicates;
  }

  function addRow(li) {
    const list = $('events');
    // Follow the tail unless the reader scrolled up to look at something.
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    list.append(li);
    while (list.childElementCount > MAX_ROWS) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function parse(data) {
    try {
      return JSON.parse(data);
    } catch (e) {
      return null;
    }
  }

  function summary(type, d, raw) {
    if (d === null) return raw;
    if (type === 'tick' && typeof d.sent_us === 'number') {
      const ms = Date.now() - d.sent_us / 1000;
      return `${d.n} of ${d.count} (${Math.max(0, ms).toFixed(0)} ms after it was sent)`;
    }
    if (type === 'output' && typeof d.line === 'string') {
      return `${d.stream || 'out'}: ${d.line}${d.truncated ? ' [cut]' : ''}`;
    }
    if (type === 'stopped') return `${d.cause}: ${d.how} ${d.after_ms} ms after SIGTERM (grace ${d.grace_ms} ms)`;
    if (type === 'output_limit') return `the output passed ${d.max_output_bytes} bytes: the command is stopped`;
    if (type === 'resumed') return `attempt ${d.attempt}: the task runs again, after replica ${d.from_replica}`;
    if (type === 'end') {
      let s = d.status;
      if (d.reason) s += ` (${d.reason})`;
      if (d.exit_code !== null && d.exit_code !== undefined) s += `, exit code ${d.exit_code}`;
      if (d.signal) s += `, signal ${d.signal}`;
      return s;
    }
    return raw;
  }

  function onTaskEvent(f, type, e) {
    if (follow !== f) return;
    const id = Number(e.lastEventId);
    if (!Number.isSafeInteger(id) || id <= f.lastId) {
      f.duplicates++;
      updateCounters();
      return;
    }
    f.lastId = id;
    f.events++;
    const d = parse(e.data);
    const li = el('li', `ev ev-${type}`);
    li.dataset.id = String(id);
    li.dataset.type = type;
    li.append(el('span', 'id', id), el('span', 'type', type), el('span', 'data', summary(type, d, e.data)));
    addRow(li);
    if (type === 'end') {
      f.ended = true;
      const r = $('task-result');
      r.textContent = summary('end', d, e.data);
      r.dataset.status = d && d.status ? d.status : 'unknown';
      setState('ended', `finished: ${r.textContent}`);
      refreshTasks();
    }
    updateCounters();
  }

  function notice(f, type, text) {
    const li = el('li', `notice notice-${type}`);
    li.dataset.type = type;
    li.append(el('span', 'id', ''), el('span', 'type', type), el('span', 'data', text));
    addRow(li);
  }

  function onGap(f, e) {
    if (follow !== f) return;
    const d = parse(e.data) || {};
    notice(f, 'gap', `events ${d.first_missing} to ${d.last_missing} are no longer held by the server and were skipped`);
  }

  function onDraining(f, e) {
    if (follow !== f) return;
    // Every stream of a draining server says so; once per task is enough.
    if (f.drainingShown) return;
    f.drainingShown = true;
    const d = parse(e.data) || {};
    notice(f, 'draining', `the server is draining (${d.reason || 'unknown reason'}): this task goes on; new tasks go to another instance`);
    $('server-note').textContent = 'this server is draining';
  }

  // A stream token for the task: GET /v1/tasks/{id} with our token.
  // Returns {token} ({token: null} from a server without them), or null
  // after showing why there is none.
  async function streamGrant(f) {
    let r;
    try {
      r = await api('GET', `/v1/tasks/${encodeURIComponent(f.id)}`);
    } catch (e) {
      if (follow !== f) return null;
      setState('reconnecting', `cannot get a stream token (${e.message}); trying again`);
      setTimeout(() => { if (follow === f) connect(f); }, RETRY_MS);
      return null;
    }
    if (follow !== f) return null;
    if (r.status === 200 && r.json) {
      return { token: r.json.stream_token || null };
    }
    if (r.status === 404) setState('closed', 'closed: no such task (or not one you may see)');
    else if (r.status !== 401) setState('closed', `closed: ${describeError(r)}`);
    return null;
  }

  // Opens (or reopens) the stream of f, after the last event shown.
  async function connect(f, grant) {
    const params = new URLSearchParams();
    if (auth.me && auth.me.auth === 'stream') {
      params.set('access_token', auth.token); // it is a stream token itself
    } else if (auth.token) {
      const g = grant || (await streamGrant(f));
      if (!g) return;
      if (g.token) params.set('access_token', g.token);
    }
    if (f.lastId > 0) params.set('last_event_id', String(f.lastId));
    const query = params.toString();
    const es = new EventSource(`/v1/tasks/${encodeURIComponent(f.id)}/events${query ? `?${query}` : ''}`);
    f.es = es;
    f.viaToken = params.has('access_token');

    es.addEventListener('open', () => {
      if (follow !== f || f.es !== es) return;
      f.connections++;
      f.renewals = 0;
      setState('open', f.connections > 1 ? `open (resumed after id ${f.lastId})` : 'open');
      updateCounters();
    });
    es.addEventListener('error', () => {
      if (follow !== f || f.es !== es) return;
      if (es.readyState !== EventSource.CLOSED) {
        if (!f.ended) setState('reconnecting', `reconnecting (will resume after id ${f.lastId})`);
      } else if (f.ended) {
        setState('closed', 'closed: finished'); // the 204 after end
      } else if (f.viaToken && auth.token && auth.me.auth !== 'stream' && f.renewals < MAX_RENEWALS) {
        // Refused: most likely the stream token expired while we were away.
        f.renewals++;
        setState('reconnecting', `renewing the stream token (will resume after id ${f.lastId})`);
        connect(f);
      } else {
        setState('closed', 'closed: the server refused the stream');
      }
    });
    for (const type of TASK_EVENTS) es.addEventListener(type, (e) => onTaskEvent(f, type, e));
    es.addEventListener('end', (e) => onTaskEvent(f, 'end', e));
    es.addEventListener('gap', (e) => onGap(f, e));
    es.addEventListener('draining', (e) => onDraining(f, e));
  }

  function followTask(id, grant) {
    if (follow && follow.es) follow.es.close();
    $('events').replaceChildren();
    $('task-result').textContent = '-';
    delete $('task-result').dataset.status;
    $('follow-task').textContent = id;
    history.replaceState(null, '', `#task=${encodeURIComponent(id)}`);

    const f = {
      id, es: null, lastId: 0, events: 0, duplicates: 0, connections: 0, renewals: 0,
      ended: false, drainingShown: false, viaToken: false,
    };
    follow = f;
    setState('connecting');
    updateCounters();
    for (const row of document.querySelectorAll('#task-rows tr')) {
      row.classList.toggle('followed', row.dataset.id === id);
    }
    connect(f, grant);
  }

  function start() {
    $('login-form').addEventListener('submit', onLogin);
    $('logout').addEventListener('click', () => loggedOut('logged out'));
    $('ticker-form').addEventListener('submit', onTicker);
    $('command-form').addEventListener('submit', onCommand);
    $('command-name').addEventListener('input', onCommandName);
    $('command-params').addEventListener('input', onParamText);
    $('tasks-refresh').addEventListener('click', refreshTasks);
    $('tasks-state').addEventListener('change', refreshTasks);
    checkAuth();
  }

  start();
})();
