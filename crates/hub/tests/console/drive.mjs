// Drives Debian's Chromium (headless, through playwright-core) through the
// hub's web console, as three people would: the owner of team alpha, a
// person the owner invites, and the owner of team beta. Started by
// tests/console.rs, which made the hub, the teams and the people; it reads
// `PAIR_COMMAND …` from our stdout and runs it on a real gateway.
// Exits non-zero on the first failed step, saying which.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const HUB = env('HUB_URL');
const PASSWORD = env('PASSWORD');
const OWNER = env('OWNER_EMAIL');
const INVITEE = env('INVITEE_EMAIL');
const OTHER = env('OTHER_EMAIL');
const SHOTS = env('SCREENSHOT_DIR');
const TEAM = env('TEAM_NAME');
mkdirSync(SHOTS, { recursive: true });

const started = Date.now();
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);
let step = 'start';
const stepTo = (s) => { step = s; log(s); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // playwright adds --headless and a fresh temporary --user-data-dir itself.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

/** Every request a page makes must stay on the hub's origin. */
const offOrigin = [];
async function person() {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 820 } });
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: HUB });
  const page = await ctx.newPage();
  page.on('request', (r) => { if (!r.url().startsWith(HUB) && !r.url().startsWith('data:')) offOrigin.push(r.url()); });
  page.on('pageerror', (e) => log(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') log(`page console ${m.type()}: ${m.text()}`); });
  page.setDefaultTimeout(20000);
  return { ctx, page };
}
const shot = (page, name) => page.screenshot({ path: join(SHOTS, `${name}.png`) });

async function signInByKeyboard(page, email) {
  await page.goto(HUB + '/');
  await page.waitForSelector('#sign-in');
  // Keyboard only: the email field has focus on load.
  await page.keyboard.type(email);
  await page.keyboard.press('Tab');
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#sign-out');
}

try {
  // ------------------------------------------------------------ owner signs in
  stepTo('owner signs in with the keyboard');
  const owner = await person();
  const p = owner.page;
  await p.goto(HUB + '/');
  await p.waitForSelector('#sign-in');
  await shot(p, 'sign-in');
  await signInByKeyboard(p, OWNER);
  await p.waitForSelector('h1:has-text("Machines")');

  // ------------------------------------------------------------ invite
  stepTo('owner invites a member');
  await p.goto(HUB + '/#/teams');
  await p.fill('#invite input[name=email]', INVITEE);
  await p.selectOption('#invite select[name=role]', 'member');
  await p.click('#invite button[type=submit]');
  const code = (await p.textContent('#invitation-code')).trim();
  if (!code) throw new Error('no invitation code shown');

  stepTo('the invited person accepts and signs in');
  const invitee = await person();
  const q = invitee.page;
  await q.goto(HUB + '/');
  await q.fill('#accept-invitation input[name=code]', code);
  await q.fill('#accept-invitation input[name=email]', INVITEE);
  await q.fill('#accept-invitation input[name=password]', PASSWORD);
  await q.click('#accept-invitation button[type=submit]');
  await q.waitForSelector('#sign-out');
  await q.waitForSelector(`#team-select option:has-text("${TEAM} (member)")`, { state: 'attached' });
  await q.click('#sign-out');
  await q.waitForSelector('#sign-in');
  await invitee.ctx.close();
  await p.reload();
  await p.waitForSelector(`#members td:has-text("${INVITEE}")`);
  await shot(p, 'team');

  // ------------------------------------------------------------ pair
  stepTo('owner creates a pairing code');
  await p.goto(HUB + '/#/pair');
  await p.click('#create-code');
  const command = (await p.textContent('#pair-command')).trim();
  if (!command.startsWith('panorama-gateway pair ')) throw new Error(`unexpected pair command: ${command}`);
  await p.focus('#copy-command');
  await p.keyboard.press('Enter');
  const copied = await p.evaluate(() => navigator.clipboard.readText().catch((e) => `clipboard: ${e}`));
  if (copied !== command) throw new Error(`the copy button copied ${JSON.stringify(copied)}`);
  console.log(`PAIR_COMMAND ${command}`);
  stepTo('the machine pairs and appears live');
  await p.waitForSelector('#paired li[data-gateway]', { timeout: 60000 });
  const gatewayId = await p.getAttribute('#paired li[data-gateway]', 'data-gateway');
  await shot(p, 'pair');

  // ------------------------------------------------------------ machines
  stepTo('the machine is online with its providers');
  await p.goto(HUB + '/#/machines');
  const row = `#machines-body tr[data-gateway="${gatewayId}"]`;
  await p.waitForSelector(`${row}[data-status=ready]`, { timeout: 60000 });
  await p.waitForSelector(`${row} .providers li:has-text("claude_code 2.0.14")`, { timeout: 30000 });
  await p.click(`${row} button:has-text("turn on")`);
  await p.waitForSelector(`${row} a:has-text("Terminal")`, { timeout: 30000 });
  await shot(p, 'machines');

  // ------------------------------------------------------------ dispatch + live events
  stepTo('dispatch a stream-json run; events arrive while it runs');
  await p.goto(HUB + `/#/dispatch/${gatewayId}`);
  await p.selectOption('#dispatch select[name=format]', 'stream-json');
  await p.fill('#dispatch textarea[name=prompt]', 'Summarize the README');
  await shot(p, 'dispatch');
  await p.click('#dispatch button[type=submit]');
  await p.waitForSelector('#events li.event', { timeout: 30000 });
  const whileRunning = await p.textContent('#run-status');
  if (!/running/.test(whileRunning)) throw new Error(`the first event showed while the run was ${whileRunning}, not running`);
  await p.waitForSelector('#events li.e-message .md', { timeout: 30000 });
  await shot(p, 'run-streaming');
  await p.waitForSelector('#run-status :text("completed")', { timeout: 60000 });
  await p.click('#events li.e-tool_call summary').catch(() => {});
  await shot(p, 'run');

  stepTo('cancel a second run');
  await p.goto(HUB + `/#/dispatch/${gatewayId}`);
  await p.selectOption('#dispatch select[name=format]', 'stream-json');
  // The fake agent takes a transcript path from the prompt: this one starts, then waits to be cancelled.
  await p.fill('#dispatch textarea[name=prompt]', `[[fake:${env('SLOW_TRANSCRIPT')}]] take your time`);
  await p.click('#dispatch button[type=submit]');
  await p.waitForSelector('#events li.event', { timeout: 30000 });
  await p.click('#cancel-run');
  await p.waitForSelector('#run-status :text("cancelled")', { timeout: 60000 });
  const runUrl = p.url();
  await shot(p, 'run-cancelled');

  stepTo('dispatch a diagnostic, a shell command and a model run');
  await p.goto(HUB + `/#/dispatch/${gatewayId}`);
  await p.check('#dispatch input[value=diagnostic]');
  await p.click('#dispatch button[type=submit]');
  await p.waitForSelector('#job-status :text("completed")', { timeout: 30000 });
  await p.goto(HUB + `/#/dispatch/${gatewayId}`);
  await p.check('#dispatch input[value=shell_exec]');
  await p.fill('#dispatch input[name=command]', 'echo from the console');
  await p.click('#dispatch button[type=submit]');
  await p.waitForSelector('#job-stdout:has-text("from the console")', { timeout: 30000 });
  await shot(p, 'job');
  await p.goto(HUB + `/#/dispatch/${gatewayId}`);
  await p.check('#dispatch input[value=model_run]');
  await p.selectOption('#dispatch select[name=format]', 'text');
  await p.fill('#dispatch textarea[name=prompt]', 'Say hello');
  await p.click('#dispatch button[type=submit]');
  await p.waitForSelector('#job-status :text("completed")', { timeout: 30000 });
  await p.waitForSelector('#job-output');

  // ------------------------------------------------------------ jobs
  stepTo('job history with filters');
  await p.goto(HUB + '/#/jobs');
  await p.waitForSelector('#jobs tbody tr');
  await p.selectOption('select[name=job_type]', 'subagent_run');
  await p.waitForFunction(() => location.hash.includes('job_type=subagent_run') && document.querySelectorAll('#jobs tbody tr').length === 2);
  await p.selectOption('select[name=job_type]', '');
  await p.waitForSelector('#page-info:has-text("Page 1 of 2")');
  await shot(p, 'jobs');
  await p.click('button:has-text("Older")');
  await p.waitForSelector('#page-info:has-text("Page 2 of 2")');
  await p.click('button:has-text("Newer")');
  await p.waitForSelector('#page-info:has-text("Page 1 of 2")');

  // ------------------------------------------------------------ terminal
  stepTo('terminal over the stream: echo hi');
  await p.goto(HUB + `/#/terminal/${gatewayId}`);
  await p.waitForSelector('#terminal .xterm');
  await p.waitForSelector('p:has-text("Interactive terminal")');
  // The session is open (data-session) and the shell has printed its prompt.
  await p.waitForSelector('#terminal[data-session]', { timeout: 30000 });
  const termRows = () => p.evaluate(() => [...document.querySelectorAll('#terminal .xterm-rows > div')].map((r) => r.textContent.trimEnd()));
  const waitRow = async (what, test) => {
    const until = Date.now() + 30000;
    for (;;) {
      const rows = await termRows();
      if (rows.some(test)) return rows;
      if (Date.now() > until) throw new Error(`the terminal never showed ${what}; it shows:\n${rows.filter(Boolean).join('\n')}`);
      await p.waitForTimeout(100);
    }
  };
  await waitRow('a prompt', (r) => /[$#]$/.test(r));
  await p.keyboard.type('echo hi');
  await p.keyboard.press('Enter');
  await waitRow('hi', (r) => r === 'hi');
  stepTo('terminal: a program reads what is typed');
  await p.keyboard.type('read x; echo got:$x');
  await p.keyboard.press('Enter');
  await p.waitForTimeout(300);
  await p.keyboard.type('typed-later');
  await p.keyboard.press('Enter');
  await waitRow('got:typed-later', (r) => r === 'got:typed-later');
  stepTo('terminal: the browser answers a cursor position query (ESC[6n)');
  await p.keyboard.type(`bash -c 'printf "\\033[6n"; IFS= read -rsd R pos; echo "pos:\${pos#*[}"'`);
  await p.keyboard.press('Enter');
  await waitRow('pos:ROW;COL', (r) => /^pos:\d+;\d+$/.test(r));
  stepTo('terminal: the shell sees the width the page fits');
  const cols = await p.evaluate(() => Math.floor(document.querySelector('#terminal .xterm-screen').getBoundingClientRect().width));
  await p.keyboard.type('stty size');
  await p.keyboard.press('Enter');
  const sized = (await waitRow('stty size', (r) => /^24 \d+$/.test(r))).find((r) => /^24 \d+$/.test(r));
  if (!(Number(sized.split(' ')[1]) > 80)) throw new Error(`the shell's terminal is ${sized} wide on a ${cols}px screen: the fitted width never reached it`);
  stepTo('terminal: Ctrl-C interrupts a running program');
  await p.keyboard.type('sleep 100; echo slept');
  await p.keyboard.press('Enter');
  await p.waitForTimeout(300);
  await p.keyboard.press('Control+c');
  await p.keyboard.type('echo after-interrupt');
  await p.keyboard.press('Enter');
  await waitRow('after-interrupt', (r) => r === 'after-interrupt');
  if ((await termRows()).includes('slept')) throw new Error('Ctrl-C did not interrupt sleep');
  await shot(p, 'terminal');

  // ------------------------------------------------------------ dark
  stepTo('dark theme');
  await p.goto(HUB + '/#/machines');
  await p.waitForSelector(`${row}`);
  while (!(await p.textContent('#theme')).includes('dark')) await p.click('#theme');
  await shot(p, 'machines-dark');
  while (!(await p.textContent('#theme')).includes('auto')) await p.click('#theme');

  // ------------------------------------------------------------ another team
  stepTo('a member of another team sees none of it and cannot act');
  const other = await person();
  const o = other.page;
  await signInByKeyboard(o, OTHER);
  await o.waitForSelector('#machines-body');
  if (await o.$(`tr[data-gateway="${gatewayId}"]`)) throw new Error('the other team sees the machine');
  await o.goto(HUB + '/#/jobs');
  await o.waitForSelector('#page-info');
  const info = await o.textContent('#page-info');
  if (!/\(0 jobs\)/.test(info)) throw new Error(`the other team sees jobs: ${info}`);
  await o.goto(runUrl);
  await o.waitForSelector('main p:has-text("No such run")');
  const refusals = await o.evaluate(async ({ gatewayId, runId }) => {
    const anon = (await (await fetch('/console/config.json')).json()).anon_key;
    const key = Object.keys(localStorage).find((k) => k.endsWith('-auth-token'));
    const token = JSON.parse(localStorage[key]).access_token;
    const headers = { apikey: anon, authorization: `Bearer ${token}`, 'content-type': 'application/json', prefer: 'return=representation' };
    const gw = await fetch(`/rest/v1/team_gateways?id=eq.${gatewayId}`, { headers });
    const teamOf = await (await fetch('/rest/v1/teams?select=id', { headers })).json();
    const job = await fetch('/rest/v1/gateway_jobs', { method: 'POST', headers, body: JSON.stringify({ team_id: teamOf[0].id, gateway_id: gatewayId, job_type: 'diagnostic' }) });
    const revoke = await fetch(`/rest/v1/team_gateways?id=eq.${gatewayId}`, { method: 'PATCH', headers, body: JSON.stringify({ revoked_at: new Date().toISOString() }) });
    const cancel = await fetch('/rest/v1/rpc/request_subagent_run_cancellation', { method: 'POST', headers, body: JSON.stringify({ p_run_id: runId }) });
    return { read: await gw.json(), job: job.status, revoke: [revoke.status, await revoke.text()], cancel: cancel.status };
  }, { gatewayId, runId: runUrl.split('/').pop() });
  log(`other team: ${JSON.stringify(refusals)}`);
  if (refusals.read.length !== 0) throw new Error('the other team reads the machine');
  if (refusals.job < 400) throw new Error(`the other team queued a job on the machine (${refusals.job})`);
  if (refusals.revoke[0] < 400 && refusals.revoke[1] !== '[]') throw new Error(`the other team revoked the machine: ${refusals.revoke}`);
  if (refusals.cancel < 400) throw new Error(`the other team's cancel was accepted (${refusals.cancel})`);
  await other.ctx.close();

  // ------------------------------------------------------------ sign out
  stepTo('owner signs out');
  await p.click('#sign-out');
  await p.waitForSelector('#sign-in');
  if (offOrigin.length) throw new Error(`requests left the hub's origin: ${offOrigin.join(', ')}`);
  console.log(`GATEWAY_ID ${gatewayId}`);
  log('all steps passed');
  await browser.close();
} catch (e) {
  console.error(`FAILED at step "${step}": ${e.stack || e}`);
  for (const page of browser.contexts().flatMap((c) => c.pages())) {
    console.error(`page ${page.url()}:\n${await page.innerText('body').catch(() => '?')}`);
    await shot(page, `failure-${step.replace(/\W+/g, '-')}`).catch(() => {});
  }
  await browser.close().catch(() => {});
  process.exit(1);
}
