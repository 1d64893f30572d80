// A headless Chromium driven over stdin/stdout, for the pytest browser tests.
//
// Debian's /usr/bin/chromium is the browser; playwright-core (npm, no
// browser download) only speaks the DevTools protocol to it. The Python test
// sends one JSON command per line and reads one JSON answer per line:
//
//   {"op": "goto", "url": "..."}                       -> {"ok": true}
//   {"op": "fill", "selector": "#x", "value": "5"}
//   {"op": "click", "selector": "#x"}
//   {"op": "wait", "selector": "#x", "state": "visible", "timeout_ms": 5000}
//   {"op": "wait_for", "expr": "() => ...", "arg": ..., "timeout_ms": 5000}
//   {"op": "eval", "expr": "() => ...", "arg": ...}     -> {"ok": true, "value": ...}
//   {"op": "screenshot", "path": "/abs/file.png"}
//   {"op": "log"}      -> {"ok": true, "value": [console messages, page errors, failed requests]}
//   {"op": "select", "selector": "#x", "value": "v"}   (a <select>'s option by value)
//   {"op": "viewport", "width": 400, "height": 860}
//   {"op": "add_cookies", "cookies": [{"name": ..., "value": ..., "url": ...}]}  (context.addCookies)
//   {"op": "close"}
//
// A failed command answers {"ok": false, "error": "..."} and the driver goes
// on. `expr` is a function source evaluated in the page with `arg`.
//
// Usage: node driver.mjs USER_DATA_DIR
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const userDataDir = process.argv[2];
if (!userDataDir) {
  process.stderr.write('usage: node driver.mjs USER_DATA_DIR\n');
  process.exit(2);
}

const log = [];
const t0 = Date.now();
function note(kind, text, url) {
  const entry = { t_ms: Date.now() - t0, kind, text };
  if (url) entry.url = url; // where a console message comes from (the resource, for a failed load)
  log.push(entry);
}

function answer(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: FLAGS,
  viewport: { width: 1280, height: 860 },
  timeout: 60000,
});
const page = context.pages()[0] || (await context.newPage());
page.on('console', (m) => note(`console.${m.type()}`, m.text(), m.location() && m.location().url));
page.on('pageerror', (e) => note('pageerror', String(e)));
page.on('requestfailed', (r) => note('requestfailed', `${r.method()} ${r.url()} ${r.failure() ? r.failure().errorText : ''}`));
page.on('response', (r) => note('response', `${r.status()} ${r.request().method()} ${r.url()}`));

function fn(src) {
  // eslint-disable-next-line no-new-func
  return new Function(`return (${src});`)();
}

async function run(cmd) {
  const timeout = cmd.timeout_ms ?? 10000;
  switch (cmd.op) {
    case 'goto':
      await page.goto(cmd.url, { waitUntil: 'load', timeout });
      return null;
    case 'fill':
      await page.fill(cmd.selector, String(cmd.value), { timeout });
      return null;
    case 'click':
      await page.click(cmd.selector, { timeout });
      return null;
    case 'wait':
      await page.waitForSelector(cmd.selector, { state: cmd.state || 'visible', timeout });
      return null;
    case 'wait_for': {
      const h = await page.waitForFunction(fn(cmd.expr), cmd.arg ?? null, { timeout, polling: 50 });
      return await h.jsonValue();
    }
    case 'eval':
      return await page.evaluate(fn(cmd.expr), cmd.arg ?? null);
    case 'screenshot':
      await page.screenshot({ path: cmd.path, fullPage: true });
      return null;
    case 'log':
      return log;
    case 'select':
      await page.selectOption(cmd.selector, String(cmd.value), { timeout });
      return null;
    case 'viewport':
      await page.setViewportSize({ width: cmd.width, height: cmd.height ?? 860 });
      return null;
    case 'add_cookies':
      await context.addCookies(cmd.cookies);
      return null;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

answer({ ok: true, ready: true, version: context.browser() ? context.browser().version() : null });

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    answer({ ok: false, error: `bad command: ${e.message}` });
    continue;
  }
  if (cmd.op === 'close') break;
  try {
    const value = await run(cmd);
    answer({ ok: true, value });
  } catch (e) {
    answer({ ok: false, error: String(e && e.message ? e.message : e) });
  }
}
rl.close();
await context.close();
answer({ ok: true, closed: true });
// stdin may still be open: do not wait for it.
process.exit(0);
