// The taskstream dashboard: lists tasks, starts tickers and commands, and
// follows one task live with the browser's own EventSource.
//
// Served by taskstreamd under a strict Content-Security-Policy
// (default-src 'self'): no inline script, no eval, no innerHTML; everything
// a task prints reaches the page through textContent only.
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
  // "message".
  const TASK_EVENTS = ['tick', 'output', 'output_limit', 'stopped', 'count', 'progress', 'result', 'log', 'message'];
  const MAX_ROWS = 2000; // rendered rows kept; counters count everything
  const TASK_REFRESH_MS = 2000;

  const $ = (id) => document.getElementById(id);

  let follow = null; // the followed task's stream state
  let refreshing = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  async function api(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' } };
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
    return { status: resp.status, headers: resp.headers, json };
  }

  function describeError(r) {
    const j = r.json || {};
    let text = `${r.status} ${j.error || 'error'}: ${j.message || 'no details'}`;
    const retry = r.headers.get('Retry-After');
    if (retry) text += ` (retry after ${retry} s)`;
    return text;
  }

  function shortTime(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
  }

  // ---- task list ----

  function renderTasks(tasks) {
    const body = $('task-rows');
    tasks.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    body.replaceChildren();
    for (const t of tasks) {
      const tr = el('tr');
      tr.dataset.id = t.id;
      tr.dataset.state = t.state;
      if (follow && follow.id === t.id) tr.className = 'followed';
      const idCell = el('td', 'mono', t.id.slice(0, 12));
      idCell.title = t.id;
      tr.append(idCell, el('td', null, t.kind), el('td', `state state-${t.state}`, t.state),
        el('td', 'num', t.events), el('td', null, shortTime(t.created_at)));
      const td = el('td');
      const b = el('button', 'small follow', 'follow');
      b.type = 'button';
      b.addEventListener('click', () => followTask(t.id));
      td.append(b);
      tr.append(td);
      body.append(tr);
    }
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
      const cell = tr.querySelector('td.state');
      cell.textContent = `unknown (was ${state})`;
      cell.className = 'state state-unknown';
    }
  }

  async function refreshTasks() {
    if (refreshing) return;
    refreshing = true;
    try {
      const r = await api('GET', '/v1/tasks');
      if (r.status === 200 && r.json && Array.isArray(r.json.tasks)) {
        renderTasks(r.json.tasks);
        $('server-note').textContent = '';
      } else if (r.status >= 502 && r.status <= 504) {
        markStale(`${r.status} from a proxy`); // the server behind it is gone
      } else {
        $('server-note').textContent = `task list: ${describeError(r)}`;
      }
    } catch (e) {
      markStale(e.message);
    } finally {
      refreshing = false;
    }
  }

  // ---- starting tasks ----

  async function submit(body) {
    const out = $('submit-result');
    out.className = 'result';
    out.textContent = 'starting...';
    try {
      const r = await api('POST', '/v1/tasks', body);
      if (r.status === 202 && r.json) {
        out.textContent = `started ${r.json.kind} task ${r.json.id}`;
        out.dataset.taskId = r.json.id;
        followTask(r.json.id);
        refreshTasks();
      } else {
        out.className = 'result error';
        out.textContent = describeError(r);
      }
    } catch (e) {
      out.className = 'result error';
      out.textContent = e.message;
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

  function onCommand(ev) {
    ev.preventDefault();
    let params;
    try {
      params = JSON.parse($('command-params').value || '{}');
    } catch (e) {
      $('submit-result').className = 'result error';
      $('submit-result').textContent = `params: not JSON: ${e.message}`;
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
    if (type === 'output' && typeof d.line === 'string') return `${d.stream || 'out'}: ${d.line}`;
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

  function followTask(id) {
    if (follow) follow.es.close();
    $('events').replaceChildren();
    $('task-result').textContent = '-';
    delete $('task-result').dataset.status;
    $('follow-task').textContent = id;
    history.replaceState(null, '', `#task=${encodeURIComponent(id)}`);

    const f = { id, lastId: 0, events: 0, duplicates: 0, connections: 0, ended: false, drainingShown: false };
    f.es = new EventSource(`/v1/tasks/${encodeURIComponent(id)}/events`);
    follow = f;
    setState('connecting');
    updateCounters();

    f.es.addEventListener('open', () => {
      if (follow !== f) return;
      f.connections++;
      setState('open', f.connections > 1 ? `open (resumed after id ${f.lastId})` : 'open');
      updateCounters();
    });
    f.es.addEventListener('error', () => {
      if (follow !== f) return;
      if (f.es.readyState === EventSource.CLOSED) {
        // 204 after end, or a 404/other refusal: EventSource gave up.
        setState('closed', f.ended ? 'closed: finished' : 'closed: the server refused the stream');
      } else if (!f.ended) {
        setState('reconnecting', `reconnecting (will resume after id ${f.lastId})`);
      }
    });
    for (const type of TASK_EVENTS) f.es.addEventListener(type, (e) => onTaskEvent(f, type, e));
    f.es.addEventListener('end', (e) => onTaskEvent(f, 'end', e));
    f.es.addEventListener('gap', (e) => onGap(f, e));
    f.es.addEventListener('draining', (e) => onDraining(f, e));
    for (const row of document.querySelectorAll('#task-rows tr')) {
      row.classList.toggle('followed', row.dataset.id === id);
    }
  }

  function start() {
    $('ticker-form').addEventListener('submit', onTicker);
    $('command-form').addEventListener('submit', onCommand);
    $('tasks-refresh').addEventListener('click', refreshTasks);
    const m = /^#task=([0-9a-f]{32})$/.exec(location.hash);
    if (m) followTask(m[1]);
    refreshTasks();
    setInterval(refreshTasks, TASK_REFRESH_MS);
    document.body.dataset.ready = 'true';
  }

  start();
})();
