// Console benchmarks (BENCHMARKS.md, "Web console"): not a test, a script.
//
//   cargo build --release -p panorama-hub
//   cd crates/hub/tests/console && npm ci && node bench.mjs
//
// Starts its own `panorama-hub serve` (HUB_BIN, default the release build)
// on loopback with a fresh data directory, fills it through the REST API
// with the service key (a team, an owner, a machine, 10,000 jobs, a running
// stream-json run), and drives Debian's Chromium (CHROMIUM, default
// /usr/bin/chromium) headless:
//
// - cold load: a fresh browser context (empty cache) holding the owner's
//   session opens /#/jobs; navigation start → the first page of the
//   10,000-job history on screen (its count shown). COLD_LOADS times.
// - event → rendered: the run view is open; EVENTS `message` events are
//   inserted one at a time (every EVENT_GAP_MS); each one's `created_at`
//   (the hub's clock, set inside the inserting transaction) → the moment a
//   MutationObserver in the page sees its row (same machine clock).
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

const ROOT = resolve(import.meta.dirname, '../../../..');
const HUB_BIN = process.env.HUB_BIN || join(ROOT, 'target/release/panorama-hub');
const JOBS = Number(process.env.JOBS || 10000);
const COLD_LOADS = Number(process.env.COLD_LOADS || 10);
const EVENTS = Number(process.env.EVENTS || 300);
const EVENT_GAP_MS = Number(process.env.EVENT_GAP_MS || 20);
const PASSWORD = 'correct horse battery staple';

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const summary = (xs) => ({ n: xs.length, p50: pct(xs, 50), p99: pct(xs, 99), max: Math.max(...xs) });

// ---------------------------------------------------------------- the hub
const dataDir = mkdtempSync(join(tmpdir(), 'console-bench-'));
const hub = spawn(HUB_BIN, ['--json', 'serve', '--listen', '127.0.0.1:0'], {
  env: { ...process.env, PANORAMA_HUB_DATA_DIR: dataDir, PANORAMA_HUB_LOG: 'warn' },
  stdio: ['ignore', 'pipe', 'inherit'],
});
const ready = await new Promise((res, rej) => {
  createInterface({ input: hub.stdout }).once('line', (l) => res(JSON.parse(l)));
  hub.once('exit', (c) => rej(new Error(`panorama-hub exited (${c}) before it was ready; is ${HUB_BIN} built?`)));
});
const URL_ = ready.url;
const keys = JSON.parse(readFileSync(join(dataDir, 'keys.json'), 'utf8'));
const cleanup = () => { hub.kill(); rmSync(dataDir, { recursive: true, force: true }); };

async function call(path, { method = 'GET', token = keys.service_key, body, prefer = 'return=representation' } = {}) {
  const res = await fetch(URL_ + path, {
    method,
    headers: { apikey: token === keys.service_key ? keys.service_key : keys.anon_key, authorization: `Bearer ${token}`, 'content-type': 'application/json', prefer },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

try {
  const [team] = await call('/rest/v1/teams', { method: 'POST', body: { name: 'bench' } });
  await call('/auth/v1/admin/users', { method: 'POST', body: { email: 'owner@bench.test', password: PASSWORD, email_confirm: true } });
  const invitation = await call('/rest/v1/rpc/create_team_invitation', { method: 'POST', body: { p_team_id: team.id, p_email: 'owner@bench.test', p_role: 'owner' } });
  const session = await call('/auth/v1/token?grant_type=password', { method: 'POST', token: keys.anon_key, body: { email: 'owner@bench.test', password: PASSWORD } });
  await call('/rest/v1/rpc/accept_team_invitation', { method: 'POST', token: session.access_token, body: { p_code: invitation.code } });
  const [gw] = await call('/rest/v1/team_gateways', { method: 'POST', body: { team_id: team.id, device_name: 'bench-box', status: 'ready', last_seen_at: new Date().toISOString() } });
  const t0 = Date.now();
  for (let i = 0; i < JOBS; i += 1000) {
    const rows = Array.from({ length: Math.min(1000, JOBS - i) }, (_, k) => ({
      team_id: team.id, gateway_id: gw.id, job_type: ['diagnostic', 'shell_exec', 'model_run'][(i + k) % 3],
      status: 'completed', payload: { n: i + k }, result: { success: true, stdout: 'ok\n' },
    }));
    await call('/rest/v1/gateway_jobs', { method: 'POST', body: rows, prefer: 'return=minimal' });
  }
  console.error(`${JOBS} jobs inserted in ${Date.now() - t0} ms`);
  const subagentId = crypto.randomUUID();
  await call('/rest/v1/subagents', { method: 'POST', body: { id: subagentId, team_id: team.id, gateway_id: gw.id, subagent_type: 'claude_code_gateway', status: 'running', config: { output_format: 'stream-json' } } });
  const [run] = await call('/rest/v1/subagent_runs', { method: 'POST', body: { subagent_id: subagentId, team_id: team.id, gateway_id: gw.id, run_sequence: 1, status: 'running', prompt: 'bench', started_at: new Date().toISOString() } });

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // supabase-js keeps its session under sb-<first label of the host>-auth-token.
  const storageKey = `sb-${new URL(URL_).hostname.split('.')[0]}-auth-token`;
  const signedIn = async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 820 } });
    await ctx.addInitScript(([k, v]) => localStorage.setItem(k, v), [storageKey, JSON.stringify(session)]);
    return ctx;
  };

  // ---------------------------------------------------------------- cold load
  const loads = [];
  for (let i = 0; i < COLD_LOADS; i++) {
    const ctx = await signedIn();
    const page = await ctx.newPage();
    const start = Date.now();
    await page.goto(`${URL_}/#/jobs`);
    await page.waitForFunction((n) => document.querySelector('#page-info')?.textContent.includes(`(${n} jobs)`), JOBS, { timeout: 30000 });
    loads.push(Date.now() - start);
    await ctx.close();
  }

  // ---------------------------------------------------------------- event → rendered
  const ctx = await signedIn();
  const page = await ctx.newPage();
  await page.goto(`${URL_}/#/runs/${run.id}`);
  await page.waitForSelector('#events', { state: 'attached' });
  await page.waitForTimeout(1000); // the realtime channel joins
  await page.evaluate(() => {
    window.__seen = {};
    new MutationObserver((records) => {
      const now = Date.now();
      for (const r of records) for (const n of r.addedNodes) if (n.dataset?.seq && !(n.dataset.seq in window.__seen)) window.__seen[n.dataset.seq] = now;
    }).observe(document.getElementById('events'), { childList: true });
  });
  const created = {};
  for (let seq = 1; seq <= EVENTS; seq++) {
    const [row] = await call('/rest/v1/subagent_run_events', {
      method: 'POST',
      body: { run_id: run.id, subagent_id: subagentId, team_id: team.id, gateway_id: gw.id, sequence: seq, event_type: 'message', payload: { role: 'assistant', content: `Step **${seq}**: reading \`src/main.rs\` and\n\n- one\n- two` } },
    });
    created[seq] = Date.parse(row.created_at);
    await new Promise((r) => setTimeout(r, EVENT_GAP_MS));
  }
  await page.waitForFunction((n) => Object.keys(window.__seen).length >= n, EVENTS, { timeout: 30000 });
  const seen = await page.evaluate(() => window.__seen);
  const lat = Object.entries(created).map(([seq, t]) => seen[seq] - t);
  await browser.close();

  const result = {
    jobs_in_history: JOBS,
    cold_load_ms: summary(loads),
    event_to_render_ms: summary(lat),
    goals: { cold_load_ms: 1000, event_to_render_p99_ms: 250 },
  };
  result.met = { cold_load: result.cold_load_ms.max <= 1000, event_to_render_p99: result.event_to_render_ms.p99 <= 250 };
  console.log(JSON.stringify(result, null, 2));
} finally {
  cleanup();
}
