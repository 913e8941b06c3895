// The hub's web console: one page, hash routes, every read and write
// through the official supabase-js against this same origin, as the
// signed-in person (the hub's row policies decide what they see and do).
import { createClient } from '@supabase/supabase-js';
import './console.css';
import { h, fill, ago, duration, badge, notify, attempt, must } from './ui.js';
import { PROVIDERS, OUTPUT_FORMATS, newPairingCode, pairCommand, dispatchSubagentRun, dispatchJob, cancelRun, modelRunPayload } from './recipes.js';
import { renderEvent, upsertEvent } from './run_events.js';
import { mountTerminal } from './terminal.js';
import { announcesStream } from './term_stream.js';

const app = document.getElementById('app');
const ROLES = ['owner', 'admin', 'member', 'viewer'];
const MANAGE = ['owner', 'admin'];
const DISPATCH = ['owner', 'admin', 'member'];
const JOB_TYPES = ['subagent_run', 'model_run', 'shell_exec', 'diagnostic', 'subagent_cancel', 'shell_session'];
const JOB_STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled'];
const PAGE_SIZE = 50;

let sb;
let anonKey;
let user = null;
let teams = [];
let cleanup = () => {};

// ------------------------------------------------------------------ theme

function applyTheme() {
  const t = localStorage.getItem('panorama.theme') || 'auto';
  document.documentElement.dataset.theme = t;
  return t;
}
const isDark = () => {
  const t = document.documentElement.dataset.theme;
  return t === 'dark' || (t === 'auto' && matchMedia('(prefers-color-scheme: dark)').matches);
};

// ------------------------------------------------------------------ data

const teamId = () => {
  const saved = localStorage.getItem('panorama.team');
  return teams.some((t) => t.id === saved) ? saved : teams[0]?.id;
};
const role = () => teams.find((t) => t.id === teamId())?.role;
const can = (roles) => roles.includes(role());

async function loadTeams() {
  const members = must(await sb.from('team_members').select('team_id, role').eq('user_id', user.id));
  const rows = must(await sb.from('teams').select('id, name').order('name'));
  teams = rows.map((t) => ({ ...t, role: members.find((m) => m.team_id === t.id)?.role }));
}

async function gateways({ live = false } = {}) {
  let q = sb.from('team_gateways').select('*').eq('team_id', teamId()).order('created_at', { ascending: false });
  if (live) q = q.is('revoked_at', null);
  return must(await q);
}

/** A realtime subscription to a table's changes, removed by the returned function. */
function watch(name, table, filter, onChange) {
  const ch = sb.channel(`${name}-${crypto.randomUUID()}`)
    .on('postgres_changes', { event: '*', schema: 'public', table, filter }, (m) => onChange(m))
    .subscribe();
  return () => sb.removeChannel(ch);
}

// ------------------------------------------------------------------ layout

function layout(title, ...content) {
  const nav = [['#/machines', 'Machines'], ['#/pair', 'Pair a machine'], ['#/dispatch', 'Dispatch'], ['#/jobs', 'Jobs'], ['#/teams', 'Team']];
  const here = location.hash.split('?')[0].split('/').slice(0, 2).join('/');
  const teamSelect = h('select', {
    id: 'team-select', 'aria-label': 'Team',
    onchange: (e) => { localStorage.setItem('panorama.team', e.target.value); route(); },
  }, teams.map((t) => h('option', { value: t.id, selected: t.id === teamId() }, `${t.name} (${t.role})`)));
  const theme = h('button', {
    type: 'button', id: 'theme', 'aria-label': 'Colour theme',
    onclick: () => {
      const next = { auto: 'light', light: 'dark', dark: 'auto' }[applyTheme()];
      localStorage.setItem('panorama.theme', next);
      applyTheme();
      theme.textContent = `Theme: ${next}`;
    },
  }, `Theme: ${applyTheme()}`);
  fill(app,
    h('header', {},
      h('strong', { class: 'brand' }, 'Panorama'),
      h('nav', { 'aria-label': 'Main' }, nav.map(([href, text]) => h('a', { href, 'aria-current': here === href ? 'page' : null }, text))),
      h('span', { class: 'spacer' }),
      teams.length ? teamSelect : null,
      theme,
      h('span', { class: 'who' }, user.email),
      h('button', { type: 'button', id: 'sign-out', onclick: signOut }, 'Sign out')),
    h('p', { id: 'notice', class: 'notice', role: 'status', 'aria-live': 'polite' }),
    h('main', { id: 'main', tabindex: '-1' }, h('h1', {}, title), ...content));
  document.title = `${title} · Panorama`;
}

function noTeam() {
  layout('No team yet', h('p', {}, 'You are not a member of any team. Ask an owner or admin for an invitation, then accept it on the '), h('a', { href: '#/teams' }, 'Team page'), '.');
}

// ------------------------------------------------------------------ sign in

function signInView() {
  const field = (label, attrs) => h('label', {}, label, h('input', { required: true, ...attrs }));
  const signIn = h('form', {
    id: 'sign-in', 'aria-labelledby': 'sign-in-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const f = new FormData(e.target);
      const { error } = await sb.auth.signInWithPassword({ email: f.get('email'), password: f.get('password') });
      if (error) notify(error.message, 'error');
    },
  },
  h('h2', { id: 'sign-in-title' }, 'Sign in'),
  field('Email', { name: 'email', type: 'email', autocomplete: 'username', autofocus: true }),
  field('Password', { name: 'password', type: 'password', autocomplete: 'current-password' }),
  h('button', { type: 'submit' }, 'Sign in'));
  const accept = h('form', {
    id: 'accept-invitation', 'aria-labelledby': 'accept-title',
    onsubmit: async (e) => {
      e.preventDefault();
      const f = new FormData(e.target);
      const { data, error } = await sb.auth.signUp({
        email: f.get('email'), password: f.get('password'),
        options: { data: { invitation_code: f.get('code').trim() } },
      });
      if (error) return notify(error.message, 'error');
      if (!data.session) notify('Account created: sign in with it.');
    },
  },
  h('h2', { id: 'accept-title' }, 'New here? Accept an invitation'),
  field('Invitation code', { name: 'code', autocomplete: 'off' }),
  field('Email', { name: 'email', type: 'email', autocomplete: 'username' }),
  field('Choose a password', { name: 'password', type: 'password', autocomplete: 'new-password', minlength: 8 }),
  h('button', { type: 'submit' }, 'Create account and join'));
  applyTheme();
  fill(app,
    h('p', { id: 'notice', class: 'notice', role: 'status', 'aria-live': 'polite' }),
    h('main', { id: 'main', class: 'signin' }, h('h1', {}, 'Panorama console'), signIn, accept));
  document.title = 'Sign in · Panorama';
  // autofocus applies once per document; after a sign-out, focus by hand.
  signIn.querySelector('input[name=email]').focus();
}

async function signOut() {
  await sb.auth.signOut();
}

// ------------------------------------------------------------------ teams

async function teamsView() {
  const tid = teamId();
  const members = tid ? must(await sb.from('team_members').select('email, role, user_id, created_at').eq('team_id', tid).order('created_at')) : [];
  const team = teams.find((t) => t.id === tid);
  const inviteOut = h('div', { id: 'invite-result', 'aria-live': 'polite' });
  const invite = can(MANAGE) && h('form', {
    id: 'invite', 'aria-labelledby': 'invite-title',
    onsubmit: (e) => attempt('Inviting', async () => {
      e.preventDefault();
      const f = new FormData(e.target);
      const data = must(await sb.rpc('create_team_invitation', { p_team_id: tid, p_email: f.get('email'), p_role: f.get('role') }));
      fill(inviteOut, h('p', {}, `Invitation for ${f.get('email')} (${f.get('role')}), one use, until ${new Date(data.expires_at).toLocaleString()}. Send them this code:`),
        h('pre', {}, h('code', { id: 'invitation-code' }, data.code)));
    }),
  },
  h('h2', { id: 'invite-title' }, 'Invite someone'),
  h('label', {}, 'Email', h('input', { name: 'email', type: 'email', required: true })),
  h('label', {}, 'Role', h('select', { name: 'role' }, ROLES.filter((r) => r !== 'owner' || role() === 'owner').map((r) => h('option', { selected: r === 'member' }, r)))),
  h('button', { type: 'submit' }, 'Create invitation'));
  const accept = h('form', {
    id: 'accept-code', 'aria-labelledby': 'accept-code-title',
    onsubmit: (e) => attempt('Accepting the invitation', async () => {
      e.preventDefault();
      must(await sb.rpc('accept_team_invitation', { p_code: new FormData(e.target).get('code').trim() }));
      await loadTeams();
      notify('Invitation accepted.');
      route();
    }),
  },
  h('h2', { id: 'accept-code-title' }, 'Accept an invitation'),
  h('label', {}, 'Invitation code', h('input', { name: 'code', required: true, autocomplete: 'off' })),
  h('button', { type: 'submit' }, 'Join the team'));
  layout(team ? `Team ${team.name}` : 'Teams',
    h('h2', {}, 'Your teams'),
    h('ul', { id: 'teams' }, teams.map((t) => h('li', {}, `${t.name} — ${t.role}`))),
    team && h('h2', {}, 'Members'),
    team && h('table', { id: 'members' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Email'), h('th', {}, 'Role'), h('th', {}, 'Since'))),
      h('tbody', {}, members.map((m) => h('tr', {}, h('td', {}, m.email), h('td', {}, m.role), h('td', {}, ago(m.created_at)))))),
    invite, inviteOut, accept);
}

// ------------------------------------------------------------------ machines

function providerCells(gw) {
  const providers = gw.capabilities?.providers || {};
  return h('ul', { class: 'providers' }, PROVIDERS.map((id) => {
    const p = providers[id];
    if (!p || !p.available) return h('li', { class: 'missing' }, `${id}: missing`);
    const health = p.health?.status || 'unchecked';
    return h('li', { class: `health-${health}`, title: p.health?.error || p.error || '' }, `${id} ${p.version || '?'} — ${health}`);
  }));
}

function fullControlCell(gw, onToggle) {
  const caps = gw.capabilities || {};
  const install = caps.hosts?.gateway?.metadata?.install_full_control_enabled;
  const mc = caps.services?.machine_control;
  const word = (v) => (v === true ? 'on' : v === false ? 'off' : 'unknown');
  return h('div', { class: 'fc' },
    h('div', {}, `team: ${word(gw.full_control_enabled)} `,
      can(MANAGE) && !gw.revoked_at && h('button', { type: 'button', class: 'small', onclick: onToggle, 'aria-label': `Turn team full control ${gw.full_control_enabled ? 'off' : 'on'} for ${gw.device_name}` }, gw.full_control_enabled ? 'turn off' : 'turn on')),
    h('div', {}, `install: ${word(install)}`),
    mc && h('div', {}, `machine control: ${mc.ready ? 'ready' : `not ready${mc.reason ? ` (${mc.reason})` : ''}`}`));
}

/**
 * Redraws `container` with `redraw` and puts the keyboard focus back on the
 * same control (same row, same label), so live updates never throw a
 * keyboard user out of the table.
 */
function keepFocus(container, redraw) {
  const active = document.activeElement;
  const key = container.contains(active) ? [active.closest('[data-gateway]')?.dataset.gateway, active.textContent] : null;
  redraw();
  if (!key) return;
  const row = key[0] ? container.querySelector(`[data-gateway="${key[0]}"]`) : container;
  [...(row || container).querySelectorAll('a, button, select, input')].find((e) => e.textContent === key[1])?.focus();
}

const terminalReady = (gw) => !gw.revoked_at && gw.capabilities?.services?.machine_control?.ready === true;

async function machinesView() {
  const body = h('tbody', { id: 'machines-body' });
  let rows = await gateways();
  const draw = () => keepFocus(body, () => fill(body, rows.length ? rows.map((gw) => h('tr', { dataset: { gateway: gw.id, status: gw.revoked_at ? 'revoked' : gw.status }, class: gw.revoked_at ? 'revoked' : '' },
    h('td', {}, h('strong', {}, gw.device_name || gw.id.slice(0, 8)), h('div', { class: 'muted' }, [gw.capabilities?.runtime?.platform, gw.capabilities?.runtime?.arch].filter(Boolean).join(' / '))),
    h('td', {}, badge(gw.revoked_at ? 'revoked' : gw.status)),
    h('td', { title: gw.last_seen_at || '' }, ago(gw.last_seen_at)),
    h('td', {}, gw.capabilities?.runtime?.gateway_version || '–'),
    h('td', {}, providerCells(gw)),
    h('td', {}, fullControlCell(gw, () => attempt('Changing full control', async () => {
      must(await sb.from('team_gateways').update({ full_control_enabled: !gw.full_control_enabled }).eq('id', gw.id).select());
    }))),
    h('td', { class: 'actions' },
      terminalReady(gw) && h('a', { href: `#/terminal/${gw.id}`, class: 'button small' }, 'Terminal'),
      !gw.revoked_at && can(DISPATCH) && h('a', { href: `#/dispatch/${gw.id}`, class: 'button small' }, 'Dispatch'),
      can(MANAGE) && !gw.revoked_at && h('button', {
        type: 'button', class: 'small danger', 'aria-label': `Revoke ${gw.device_name}`,
        onclick: () => confirm(`Revoke ${gw.device_name}? Its session stops working and it takes no more jobs.`) && attempt('Revoking', async () => {
          must(await sb.from('team_gateways').update({ revoked_at: new Date().toISOString() }).eq('id', gw.id).select());
          notify(`${gw.device_name} revoked.`);
        }),
      }, 'Revoke'))))
    : h('tr', {}, h('td', { colspan: 7 }, 'No machines yet. ', h('a', { href: '#/pair' }, 'Pair one'), '.'))));
  draw();
  const stop = watch('machines', 'team_gateways', `team_id=eq.${teamId()}`, (m) => {
    const row = m.new;
    if (!row || !row.id) return;
    const i = rows.findIndex((r) => r.id === row.id);
    if (i >= 0) rows[i] = row; else rows.unshift(row);
    draw();
  });
  const tick = setInterval(draw, 5000);
  layout('Machines', h('table', { id: 'machines' },
    h('thead', {}, h('tr', {}, ['Machine', 'Status', 'Last heartbeat', 'Gateway', 'Providers', 'Full control', ''].map((t) => h('th', { scope: 'col' }, t)))),
    body));
  return () => { stop(); clearInterval(tick); };
}

// ------------------------------------------------------------------ pair

async function pairView() {
  if (!can(MANAGE)) return layout('Pair a machine', h('p', {}, 'Only owners and admins create pairing codes.'));
  const out = h('div', { id: 'pair-result', 'aria-live': 'polite' });
  const paired = h('ul', { id: 'paired' });
  let stop = () => {};
  const create = h('button', {
    type: 'button', id: 'create-code',
    onclick: () => attempt('Creating a pairing code', async () => {
      const since = new Date(Date.now() - 1000).toISOString();
      const row = must(await sb.from('gateway_pairing_codes').insert({
        code: newPairingCode(), team_id: teamId(), created_by: user.id,
        expires_at: new Date(Date.now() + 15 * 60000).toISOString(),
      }).select().single());
      const cmd = pairCommand(row.code, location.origin, anonKey);
      const copy = h('button', {
        type: 'button', id: 'copy-command',
        onclick: async () => {
          try { await navigator.clipboard.writeText(cmd); notify('Command copied.'); } catch { getSelection().selectAllChildren(pre); notify('Selected: press Ctrl+C to copy.'); }
        },
      }, 'Copy command');
      const pre = h('pre', {}, h('code', { id: 'pair-command' }, cmd));
      fill(out, h('p', {}, `Code ${row.code}, valid until ${new Date(row.expires_at).toLocaleTimeString()}. On the machine, run:`), pre, copy,
        h('h2', {}, 'Machines paired with it'), paired);
      fill(paired, h('li', { class: 'muted' }, 'Waiting for the machine…'));
      const seen = new Map();
      stop();
      stop = watch('pair', 'team_gateways', `team_id=eq.${teamId()}`, (m) => {
        const gw = m.new;
        if (!gw?.id || gw.created_at < since) return;
        seen.set(gw.id, gw);
        fill(paired, [...seen.values()].map((g) => h('li', { dataset: { gateway: g.id } }, h('strong', {}, g.device_name), ' ', badge(g.status), ' ', h('a', { href: '#/machines' }, 'see it in Machines'))));
      });
    }),
  }, 'Create a pairing code');
  layout('Pair a machine', h('p', {}, 'A pairing code lets one machine join this team. It works once and expires in 15 minutes.'), create, out);
  return () => stop();
}

// ------------------------------------------------------------------ dispatch

async function dispatchView(preselect) {
  if (!can(DISPATCH)) return layout('Dispatch', h('p', {}, 'Viewers cannot dispatch work.'));
  const gws = await gateways({ live: true });
  const only = (types) => ({ dataset: { for: types.join(' ') } });
  const form = h('form', {
    id: 'dispatch',
    onsubmit: (e) => attempt('Dispatching', async () => {
      e.preventDefault();
      const f = Object.fromEntries(new FormData(e.target));
      const base = { teamId: teamId(), gatewayId: f.gateway, userId: user.id };
      if (f.type === 'subagent_run') {
        const r = await dispatchSubagentRun(sb, { ...base, provider: f.provider, model: f.model.trim(), outputFormat: f.format, prompt: f.prompt });
        location.hash = `#/runs/${r.runId}`;
        return;
      }
      let payload = {};
      if (f.type === 'model_run') payload = modelRunPayload({ provider: f.provider, model: f.model.trim(), prompt: f.prompt, outputFormat: f.format });
      if (f.type === 'shell_exec') {
        // A shell command runs on the machine's remote_shell resource (spec §8.6).
        const resourceId = await shellResource(gws.find((g) => g.id === f.gateway));
        if (!resourceId) throw new Error('this machine has no remote shell resource yet: an owner or admin creates it by opening its terminal once');
        payload = { command: f.command, timeout_ms: Number(f.timeout) * 1000, resource_id: resourceId };
      }
      const r = await dispatchJob(sb, { ...base, jobType: f.type, payload });
      location.hash = `#/jobs/${r.job.id}`;
    }),
  },
  h('label', {}, 'Machine', h('select', { name: 'gateway', required: true }, gws.map((g) => h('option', { value: g.id, selected: g.id === preselect }, `${g.device_name} (${g.status})`)))),
  h('fieldset', {}, h('legend', {}, 'Kind of work'),
    [['subagent_run', 'Agent run'], ['model_run', 'Model run'], ['shell_exec', 'Shell command'], ['diagnostic', 'Diagnostic']].map(([v, t], i) =>
      h('label', { class: 'inline' }, h('input', { type: 'radio', name: 'type', value: v, checked: i === 0, onchange: show }), t))),
  h('label', only(['subagent_run', 'model_run']), 'Provider', h('select', { name: 'provider' }, PROVIDERS.map((p) => h('option', {}, p)))),
  h('label', only(['subagent_run', 'model_run']), 'Model (empty: the CLI’s default)', h('input', { name: 'model', placeholder: 'e.g. sonnet' })),
  h('label', only(['subagent_run', 'model_run']), 'Output format', h('select', { name: 'format' }, OUTPUT_FORMATS.map((p) => h('option', {}, p)))),
  h('label', only(['subagent_run', 'model_run']), 'Prompt', h('textarea', { name: 'prompt', rows: 5 })),
  h('label', only(['shell_exec']), 'Command (bash -lc, in /)', h('input', { name: 'command' })),
  h('label', only(['shell_exec']), 'Timeout (seconds)', h('input', { name: 'timeout', type: 'number', min: 1, value: 30 })),
  h('button', { type: 'submit' }, 'Dispatch'));
  function show() {
    const type = new FormData(form).get('type');
    for (const el of form.querySelectorAll('[data-for]')) {
      const on = el.dataset.for.split(' ').includes(type);
      el.hidden = !on;
      for (const input of el.querySelectorAll('input, textarea')) input.required = on && ['prompt', 'command'].includes(input.name);
    }
  }
  show();
  layout('Dispatch', gws.length ? form : h('p', {}, 'No live machine in this team: ', h('a', { href: '#/pair' }, 'pair one'), '.'));
}

// ------------------------------------------------------------------ jobs

function outcome(job) {
  if (job.job_type === 'subagent_run' && job.status === 'completed' && ['cancelled', 'failed'].includes(job.result?.status)) return job.result.status;
  return job.status;
}

const jobLink = (j) => (j.job_type === 'subagent_run' && j.payload?.run_id ? `#/runs/${j.payload.run_id}` : `#/jobs/${j.id}`);

async function jobsView() {
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const page = Math.max(1, Number(params.get('page')) || 1);
  const gws = await gateways();
  const names = Object.fromEntries(gws.map((g) => [g.id, g.device_name]));
  let q = sb.from('gateway_jobs').select('id, job_type, status, gateway_id, created_at, started_at, completed_at, payload, result, error', { count: 'exact' })
    .eq('team_id', teamId()).order('created_at', { ascending: false }).range((page - 1) * PAGE_SIZE, page * PAGE_SIZE - 1);
  for (const k of ['status', 'job_type', 'gateway_id']) if (params.get(k)) q = q.eq(k, params.get(k));
  const { data: jobs, count, error } = await q;
  if (error) throw new Error(error.message);
  const pages = Math.max(1, Math.ceil((count || 0) / PAGE_SIZE));
  const go = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) { if (v) next.set(k, v); else next.delete(k); }
    location.hash = `#/jobs?${next}`;
  };
  const filter = (name, label, options) => h('label', {}, label, h('select', { name, onchange: (e) => go({ [name]: e.target.value, page: '' }) },
    h('option', { value: '' }, 'all'), options.map(([v, t]) => h('option', { value: v, selected: params.get(name) === v }, t))));
  // Live on the first page; while the keyboard is on a control in the page,
  // a button offers the new rows instead of redrawing under it.
  const fresh = h('button', { type: 'button', id: 'show-new', hidden: true, onclick: () => route() }, 'Show new activity');
  const refresh = debounce(() => {
    const main = document.getElementById('main');
    if (main && main.contains(document.activeElement) && document.activeElement !== main) fresh.hidden = false;
    else route();
  }, 400);
  const stop = page === 1 ? watch('jobs', 'gateway_jobs', `team_id=eq.${teamId()}`, refresh) : () => {};
  layout('Jobs',
    h('div', { class: 'filters', role: 'group', 'aria-label': 'Filters' },
      filter('status', 'Status', JOB_STATUSES.map((s) => [s, s])),
      filter('job_type', 'Type', JOB_TYPES.map((s) => [s, s])),
      filter('gateway_id', 'Machine', gws.map((g) => [g.id, g.device_name]))),
    fresh,
    h('table', { id: 'jobs' },
      h('thead', {}, h('tr', {}, ['Created', 'Type', 'Status', 'Machine', 'Duration', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, jobs.map((j) => h('tr', { dataset: { job: j.id } },
        h('td', { title: j.created_at }, ago(j.created_at)), h('td', {}, j.job_type), h('td', {}, badge(outcome(j))),
        h('td', {}, names[j.gateway_id] || '–'), h('td', {}, duration(j.started_at, j.completed_at)),
        h('td', {}, h('a', { href: jobLink(j), 'aria-label': `Open the ${j.job_type} job from ${ago(j.created_at)}` }, 'open')))))),
    h('nav', { class: 'pager', 'aria-label': 'Pages' },
      h('button', { type: 'button', disabled: page <= 1, onclick: () => go({ page: String(page - 1) }) }, '← Newer'),
      h('span', { id: 'page-info' }, ` Page ${page} of ${pages} (${count} jobs) `),
      h('button', { type: 'button', disabled: page >= pages, onclick: () => go({ page: String(page + 1) }) }, 'Older →')));
  return stop;
}

function debounce(fn, ms) {
  let t;
  return () => { clearTimeout(t); t = setTimeout(fn, ms); };
}

async function jobView(id) {
  const box = h('div', { id: 'job' });
  const draw = (j) => fill(box,
    h('dl', {}, h('dt', {}, 'Type'), h('dd', {}, j.job_type), h('dt', {}, 'Status'), h('dd', { id: 'job-status' }, badge(outcome(j))),
      h('dt', {}, 'Duration'), h('dd', {}, duration(j.started_at, j.completed_at))),
    j.error && h('p', { class: 'error' }, j.error),
    j.result?.stdout !== undefined && h('pre', { class: 'stdout', id: 'job-stdout' }, j.result.stdout),
    j.result?.stderr && h('pre', { class: 'stderr' }, j.result.stderr),
    j.result?.output !== undefined && h('pre', { id: 'job-output' }, typeof j.result.output === 'string' ? j.result.output : JSON.stringify(j.result.output, null, 2)),
    h('details', {}, h('summary', {}, 'Raw job row'), h('pre', {}, JSON.stringify(j, null, 2))));
  const job = must(await sb.from('gateway_jobs').select('*').eq('id', id).maybeSingle());
  if (!job) return layout('Job', h('p', {}, 'No such job in your teams.'));
  draw(job);
  const stop = watch('job', 'gateway_jobs', `id=eq.${id}`, (m) => m.new?.id && draw(m.new));
  layout(`Job ${id.slice(0, 8)}`, box);
  return stop;
}

// ------------------------------------------------------------------ run view

async function runView(id) {
  const run = must(await sb.from('subagent_runs').select('*').eq('id', id).maybeSingle());
  if (!run) return layout('Run', h('p', {}, 'No such run in your teams.'));
  const subagent = must(await sb.from('subagents').select('subagent_type, config').eq('id', run.subagent_id).maybeSingle());
  const gw = must(await sb.from('team_gateways').select('device_name').eq('id', run.gateway_id).maybeSingle());
  let current = run;
  const events = h('ol', { id: 'events', class: 'events', 'aria-live': 'polite' });
  const state = h('span', { id: 'run-status' });
  const took = h('span', { id: 'run-duration' });
  const cancel = h('button', {
    type: 'button', id: 'cancel-run', class: 'danger',
    onclick: () => attempt('Cancelling', async () => {
      cancel.disabled = true;
      const r = await cancelRun(sb, current, user.id);
      notify(r === 'requested' ? 'Cancel requested: the machine stops the run.' : `Run ${r}.`);
    }),
  }, 'Cancel run');
  const drawState = () => {
    fill(state, badge(current.status));
    fill(took, duration(current.started_at || current.created_at, current.completed_at));
    const live = ['running', 'queued', 'pending_admission', 'waiting_budget', 'cancelling'].includes(current.status);
    cancel.hidden = !live || !can(DISPATCH);
  };
  drawState();
  const stopEvents = watch('events', 'subagent_run_events', `run_id=eq.${id}`, (m) => m.new?.id && upsertEvent(events, m.new, renderEvent));
  const stopRun = watch('run', 'subagent_runs', `id=eq.${id}`, (m) => { if (m.new?.id) { current = m.new; drawState(); } });
  const tick = setInterval(drawState, 1000);
  const past = must(await sb.from('subagent_run_events').select('*').eq('run_id', id).order('sequence').limit(5000));
  for (const ev of past) upsertEvent(events, ev, renderEvent);
  const cfg = subagent?.config || {};
  layout(`Run ${run.run_sequence} on ${gw?.device_name || 'a machine'}`,
    h('dl', { class: 'run-head' },
      h('dt', {}, 'State'), h('dd', {}, state),
      h('dt', {}, 'Duration'), h('dd', {}, took),
      h('dt', {}, 'Provider'), h('dd', {}, (subagent?.subagent_type || '').replace(/_gateway$/, '')),
      h('dt', {}, 'Model'), h('dd', {}, cfg.model || 'default'),
      h('dt', {}, 'Output'), h('dd', {}, cfg.output_format || 'json')),
    cancel,
    h('details', { class: 'prompt' }, h('summary', {}, 'Prompt'), h('pre', {}, run.prompt || '')),
    h('h2', {}, 'Events'), events,
    run.error && h('p', { class: 'error' }, run.error));
  return () => { stopEvents(); stopRun(); clearInterval(tick); };
}

// ------------------------------------------------------------------ terminal

async function terminalView(gatewayId) {
  const gws = await gateways({ live: true });
  const ready = gws.filter(terminalReady);
  const gw = ready.find((g) => g.id === gatewayId);
  if (!gw) {
    return layout('Terminal', h('p', {}, 'Pick a machine with full control on (team and install layers):'),
      h('ul', {}, ready.length ? ready.map((g) => h('li', {}, h('a', { href: `#/terminal/${g.id}` }, g.device_name))) : h('li', {}, 'none')));
  }
  if (!can(DISPATCH)) return layout('Terminal', h('p', {}, 'Viewers cannot run commands.'));
  const resourceId = await shellResource(gw);
  if (!resourceId) return layout('Terminal', h('p', {}, `${gw.device_name} has no remote shell resource yet: an owner or admin creates it by opening this terminal once.`));
  const el = h('div', { id: 'terminal', class: 'terminal' });
  const stream = announcesStream(gw.capabilities);
  layout(`Terminal on ${gw.device_name}`, h('p', { class: 'muted' }, stream ? 'Interactive terminal: Shift+Tab leaves it.' : 'Line mode (this machine has no terminal stream): Tab leaves the terminal.'), el);
  return mountTerminal(el, sb, { teamId: teamId(), gatewayId: gw.id, userId: user.id, resourceId, deviceName: gw.device_name, stream }, isDark());
}

/**
 * The machine's `remote_shell` resource with machine control (spec §16.10
 * "Shell session"), created for it when an owner or admin opens its
 * terminal for the first time.
 */
async function shellResource(gw) {
  const rows = must(await sb.from('team_resources').select('id, metadata').eq('team_id', teamId()).eq('resource_type', 'remote_shell'));
  const mine = rows.filter((r) => r.metadata?.gateway_id === gw.id && r.metadata?.full_control === true);
  if (mine.length) return mine[0].id;
  if (!can(MANAGE)) return null;
  const row = must(await sb.from('team_resources').insert({
    team_id: teamId(), resource_type: 'remote_shell', resource_id: gw.id, title: `Shell on ${gw.device_name}`,
    max_access_level: 'editor', metadata: { gateway_id: gw.id, full_control: true },
  }).select().single());
  notify(`Created the remote shell resource for ${gw.device_name}.`);
  return row.id;
}

// ------------------------------------------------------------------ router

// One route at a time: a hash change while a view loads runs again after it,
// so a slow older view never draws over a newer one.
let routing = false;
let routeAgain = false;
async function route() {
  if (routing) { routeAgain = true; return; }
  routing = true;
  try {
    do { routeAgain = false; await routeOnce(); } while (routeAgain);
  } finally { routing = false; }
}

async function routeOnce() {
  cleanup();
  cleanup = () => {};
  if (!user) return signInView();
  const [path] = location.hash.slice(1).split('?');
  const [, view = 'machines', arg] = path.split('/');
  if (!teams.length && view !== 'teams') return noTeam();
  const views = {
    machines: machinesView, pair: pairView, dispatch: dispatchView, jobs: (a) => (a ? jobView(a) : jobsView()),
    runs: runView, teams: teamsView, terminal: terminalView,
  };
  const view_ = views[view] || machinesView;
  try {
    const stop = await view_(arg);
    if (typeof stop === 'function') cleanup = stop;
    // A new screen starts at its content, unless the view focused something itself (the terminal).
    if (!document.activeElement || document.activeElement === document.body) document.getElementById('main')?.focus({ preventScroll: true });
  } catch (e) {
    layout('Something went wrong', h('p', { class: 'error' }, e.message || String(e)));
  }
}

async function main() {
  applyTheme();
  const config = await (await fetch('/console/config.json')).json();
  anonKey = config.anon_key;
  sb = createClient(location.origin, anonKey, { auth: { persistSession: true, autoRefreshToken: true, detectSessionInUrl: false } });
  let started = false;
  sb.auth.onAuthStateChange((event, session) => {
    const next = session?.user || null;
    const changed = (next?.id || null) !== (user?.id || null);
    user = next;
    if (!changed && started) return;
    started = true;
    // Not inside the callback: supabase-js holds its auth lock while it runs.
    setTimeout(async () => {
      if (user) await attempt('Loading your teams', loadTeams);
      else teams = [];
      route();
    }, 0);
  });
  window.addEventListener('hashchange', route);
}

main().catch((e) => fill(app, h('p', { class: 'error' }, `The console could not start: ${e.message}`)));
