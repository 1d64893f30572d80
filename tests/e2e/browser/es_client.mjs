// Follows one event stream with Node's `eventsource` package (npm), an
// independent SSE client with its own parser and its own reconnect logic,
// and prints one JSON line per thing it sees:
//
//   {"kind": "open", "t_ms": ...}
//   {"kind": "event", "type": "tick", "id": "3", "data": "{...}", "t_ms": ...}
//   {"kind": "error", "code": 204, "message": "...", "ready_state": 2, "t_ms": ...}
//   {"kind": "done", "reason": "closed" | "timeout"}
//
// It exits once the EventSource is closed for good (after `end` the server
// answers the reconnect with 204) or after MAX_SECONDS.
//
// Usage: node es_client.mjs URL MAX_SECONDS [EVENT_NAME...]
import { EventSource } from 'eventsource';

const [url, maxSecondsArg, ...names] = process.argv.slice(2);
if (!url) {
  process.stderr.write('usage: node es_client.mjs URL MAX_SECONDS [EVENT_NAME...]\n');
  process.exit(2);
}
const maxSeconds = Number(maxSecondsArg || 30);
const types = names.length ? names : ['tick', 'output', 'end', 'gap', 'draining', 'message'];
const t0 = Date.now();

function out(obj) {
  process.stdout.write(JSON.stringify({ ...obj, t_ms: Date.now() - t0 }) + '\n');
}

const es = new EventSource(url);
let finished = false;

function finish(reason) {
  if (finished) return;
  finished = true;
  es.close();
  out({ kind: 'done', reason });
  clearTimeout(timer);
}

const timer = setTimeout(() => finish('timeout'), maxSeconds * 1000);

es.addEventListener('open', () => out({ kind: 'open' }));
es.addEventListener('error', (e) => {
  out({ kind: 'error', code: e.code ?? null, message: e.message ?? null, ready_state: es.readyState });
  if (es.readyState === es.CLOSED) finish('closed');
});
for (const type of types) {
  es.addEventListener(type, (e) => out({ kind: 'event', type, id: e.lastEventId || null, data: e.data }));
}
