// Conformance check: the official @supabase/supabase-js against a running
// panorama-hub. Run by `cargo test -p panorama-hub --test supabase_js`
// (tests/supabase_js.rs), which starts the hub and creates the fixtures.
// See README.md beside this file.
//
// Environment:
//   HUB_URL, HUB_ANON_KEY, HUB_SERVICE_KEY  the hub and its keys
//   HUB_TEAM_A, HUB_TEAM_B                  two teams
//   HUB_PAIRING_CODE_A, HUB_PAIRING_CODE_B  one unused pairing code per team
//   HUB_REFRESH_REUSE_INTERVAL_SECS         the hub's refresh-token reuse
//                                           grace (default 10; the Rust test
//                                           starts the hub with a short one)
//   HUB_INVITE_EMAIL, HUB_INVITE_CODE       an invitation to team A as member
//   HUB_USER_EMAIL, HUB_USER_PASSWORD       a user made by `panorama-hub user create`
//
// Prints one line per check; exits 1 on the first failure with what was
// expected and what came back.

import { randomUUID } from 'node:crypto'
import { createClient } from '@supabase/supabase-js'

const started = Date.now()

function env(name, fallback) {
  const v = process.env[name]
  if (v === undefined || v === '') {
    if (fallback !== undefined) return fallback
    console.error(`missing environment variable ${name} (see README.md beside this script)`)
    process.exit(2)
  }
  return v
}

const URL_ = env('HUB_URL').replace(/\/+$/, '')
const ANON = env('HUB_ANON_KEY')
const SERVICE = env('HUB_SERVICE_KEY')
const TEAM_A = env('HUB_TEAM_A')
const TEAM_B = env('HUB_TEAM_B')
const CODE_A = env('HUB_PAIRING_CODE_A')
const CODE_B = env('HUB_PAIRING_CODE_B')
const REUSE_GRACE_SECS = Number(env('HUB_REFRESH_REUSE_INTERVAL_SECS', '10'))
const INVITE_EMAIL = env('HUB_INVITE_EMAIL')
const INVITE_CODE = env('HUB_INVITE_CODE')
const USER_EMAIL = env('HUB_USER_EMAIL')
const USER_PASSWORD = env('HUB_USER_PASSWORD')

// supabase-js picks the runtime's WebSocket (Node.js 22+ has one); older
// Node.js needs one passed in, and `ws` is the one realtime-js documents.
let transport
let transportName = 'native WebSocket'
if (typeof globalThis.WebSocket === 'undefined') {
  transport = (await import('ws')).default
  transportName = 'ws (no global WebSocket in this Node.js)'
}

function client(key) {
  return createClient(URL_, key, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: transport ? { transport } : {},
  })
}

// ---------------------------------------------------------------- harness

class CheckFailure extends Error {}

function fail(message) {
  throw new CheckFailure(message)
}

function show(v) {
  try {
    return JSON.stringify(v)
  } catch {
    return String(v)
  }
}

function expectEq(what, actual, expected) {
  if (show(actual) !== show(expected)) {
    fail(`${what}: expected ${show(expected)}, got ${show(actual)}`)
  }
}

function expectTrue(what, cond, detail) {
  if (!cond) fail(`${what}${detail === undefined ? '' : `: ${show(detail)}`}`)
}

/** `{data, error, status}` of a query that must succeed. */
function ok(what, res) {
  if (res.error) {
    fail(`${what}: unexpected error (HTTP ${res.status}) ${show(res.error)}`)
  }
  return res
}

/** The error of a query that must fail with `code` (and `status` if given). */
function expectError(what, res, code, status) {
  if (!res.error) {
    fail(`${what}: expected error ${code}${status ? ` (HTTP ${status})` : ''}, got success (HTTP ${res.status}) with data ${show(res.data)}`)
  }
  if (res.error.code !== code) {
    fail(`${what}: expected error code ${code}, got ${show(res.error)} (HTTP ${res.status})`)
  }
  if (status !== undefined && res.status !== status) {
    fail(`${what}: expected HTTP ${status}, got HTTP ${res.status} with ${show(res.error)}`)
  }
  return res.error
}

let passed = 0
let current = ''

async function check(name, fn) {
  current = name
  const t0 = Date.now()
  try {
    await fn()
  } catch (e) {
    const msg = e instanceof CheckFailure ? e.message : `threw ${e?.stack ?? e}`
    console.log(`FAIL ${name}\n     ${msg}`)
    console.log(`${passed} passed, 1 failed`)
    process.exit(1)
  }
  passed += 1
  console.log(`ok   ${name} (${Date.now() - t0} ms)`)
}

// A hung request must not hang `cargo test`.
const WATCHDOG_MS = 90_000 + REUSE_GRACE_SECS * 1000
setTimeout(() => {
  console.log(`FAIL ${current}\n     no answer within ${WATCHDOG_MS / 1000} s (the whole script's time limit)`)
  console.log(`${passed} passed, 1 failed`)
  process.exit(1)
}, WATCHDOG_MS).unref()

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

console.log(`supabase-js conformance against ${URL_} (Node.js ${process.version}, transport: ${transportName})`)

// ---------------------------------------------------------------- service key

const svc = client(SERVICE)
const anon = client(ANON)

// Rows of this run are told apart by an idempotency_key prefix.
const tag = `cj${Date.now().toString(36)}`
const mine = () => svc.from('gateway_jobs').select('*').like('idempotency_key', `${tag}-%`)
const keysOf = (rows) => rows.map((r) => r.idempotency_key.slice(tag.length + 1))
const jobRow = (key, jobType, attempt, error, status = 'queued') => ({
  team_id: TEAM_A,
  job_type: jobType,
  status,
  attempt,
  error,
  idempotency_key: `${tag}-${key}`,
})

let alpha
await check('service: insert returning (.insert(row).select())', async () => {
  const res = ok('insert', await svc.from('gateway_jobs').insert({
    team_id: TEAM_A,
    job_type: 'diagnostic',
    attempt: 1,
    idempotency_key: `${tag}-Alpha`,
  }).select())
  expectEq('HTTP status', res.status, 201)
  expectTrue('data is an array of one row', Array.isArray(res.data) && res.data.length === 1, res.data)
  alpha = res.data[0]
  expectTrue('id is a fresh uuid', UUID_RE.test(alpha.id), alpha.id)
  expectEq('team_id', alpha.team_id, TEAM_A)
  expectEq('status (column default)', alpha.status, 'queued')
  expectEq('payload (column default, typed JSON)', alpha.payload, {})
  expectEq('attempt (integer)', alpha.attempt, 1)
  expectEq('error', alpha.error, null)
  expectTrue('created_at is set', typeof alpha.created_at === 'string' && alpha.created_at.length > 0, alpha.created_at)
})

await check('service: bulk insert (.insert([4 rows]).select())', async () => {
  const res = ok('bulk insert', await svc.from('gateway_jobs').insert([
    jobRow('beta', 'model_run', 2, 'boom'),
    jobRow('gamma', 'shell_exec', 3, null),
    jobRow('delta', 'model_run', 4, 'bang'),
    jobRow('epsilon', 'diagnostic', 5, null, 'completed'),
  ]).select())
  expectEq('HTTP status', res.status, 201)
  expectEq('rows returned, in insert order', keysOf(res.data), ['beta', 'gamma', 'delta', 'epsilon'])
  expectEq('distinct ids', new Set(res.data.map((r) => r.id)).size, 4)
  const total = ok('select all', await mine())
  expectEq('rows of this run', total.data.length, 5)
})

const filterCases = [
  ['eq', (q) => q.eq('job_type', 'model_run'), ['beta', 'delta']],
  ['neq', (q) => q.neq('job_type', 'model_run'), ['Alpha', 'gamma', 'epsilon']],
  ['in', (q) => q.in('attempt', [1, 3]), ['Alpha', 'gamma']],
  ['in (text values)', (q) => q.in('status', ['completed', 'running']), ['epsilon']],
  ['is null', (q) => q.is('error', null), ['Alpha', 'gamma', 'epsilon']],
  ['not is null', (q) => q.not('error', 'is', null), ['beta', 'delta']],
  ['gt + lt', (q) => q.gt('attempt', 1).lt('attempt', 5), ['beta', 'gamma', 'delta']],
  ['gte + lte', (q) => q.gte('attempt', 2).lte('attempt', 3), ['beta', 'gamma']],
  ['like (case-sensitive)', (q) => q.like('idempotency_key', `${tag}-%ta`), ['beta', 'delta']],
  ['like does not fold case', (q) => q.like('idempotency_key', `${tag}-a%`), []],
  ['ilike folds case', (q) => q.ilike('idempotency_key', `${tag}-a%`), ['Alpha']],
  ['or=(...)', (q) => q.or('attempt.eq.1,error.eq.bang'), ['Alpha', 'delta']],
  ['or=(... and(...))', (q) => q.or('and(job_type.eq.model_run,attempt.gt.2),status.eq.completed'), ['delta', 'epsilon']],
]
for (const [name, apply, expected] of filterCases) {
  await check(`service: filter ${name}`, async () => {
    const res = ok(name, await apply(mine()).order('attempt'))
    expectEq(`${name} rows`, keysOf(res.data), expected)
  })
}

await check('service: order asc / desc', async () => {
  const asc = ok('asc', await mine().order('attempt', { ascending: true }))
  expectEq('ascending', keysOf(asc.data), ['Alpha', 'beta', 'gamma', 'delta', 'epsilon'])
  const desc = ok('desc', await mine().order('attempt', { ascending: false }))
  expectEq('descending', keysOf(desc.data), ['epsilon', 'delta', 'gamma', 'beta', 'Alpha'])
})

await check('service: order with nullsFirst (and PostgreSQL default NULL placement)', async () => {
  const first = ok('nullsFirst', await mine().order('error', { ascending: true, nullsFirst: true }).order('attempt'))
  expectEq('error asc nullsfirst', keysOf(first.data), ['Alpha', 'gamma', 'epsilon', 'delta', 'beta'])
  const last = ok('nullsLast', await mine().order('error', { ascending: true, nullsFirst: false }).order('attempt'))
  expectEq('error asc nullslast', keysOf(last.data), ['delta', 'beta', 'Alpha', 'gamma', 'epsilon'])
  const ascDefault = ok('asc default', await mine().order('error', { ascending: true }).order('attempt'))
  expectEq('error asc (NULLs last by default)', keysOf(ascDefault.data), ['delta', 'beta', 'Alpha', 'gamma', 'epsilon'])
  const descDefault = ok('desc default', await mine().order('error', { ascending: false }).order('attempt'))
  expectEq('error desc (NULLs first by default)', keysOf(descDefault.data), ['Alpha', 'gamma', 'epsilon', 'beta', 'delta'])
})

await check('service: limit / range', async () => {
  const lim = ok('limit', await mine().order('attempt').limit(2))
  expectEq('limit(2)', keysOf(lim.data), ['Alpha', 'beta'])
  const rng = ok('range', await mine().order('attempt').range(1, 3))
  expectEq('range(1, 3)', keysOf(rng.data), ['beta', 'gamma', 'delta'])
})

await check("service: count: 'exact' (with range, and head: true)", async () => {
  const res = ok('count', await svc.from('gateway_jobs').select('id', { count: 'exact' })
    .like('idempotency_key', `${tag}-%`).order('attempt').range(0, 1))
  expectEq('count', res.count, 5)
  expectEq('rows in range', res.data.length, 2)
  expectEq('HTTP status of a partial range', res.status, 206)
  const head = ok('head count', await svc.from('gateway_jobs').select('*', { count: 'exact', head: true })
    .like('idempotency_key', `${tag}-%`))
  expectEq('head count', head.count, 5)
  expectEq('head data', head.data, null)
})

await check('service: maybeSingle() on 0 rows is data null, no error', async () => {
  const res = await mine().eq('idempotency_key', `${tag}-nothing`).maybeSingle()
  expectEq('error', res.error, null)
  expectEq('data', res.data, null)
})

await check('service: maybeSingle() on 1 row is the row', async () => {
  const res = ok('maybeSingle 1', await mine().eq('id', alpha.id).maybeSingle())
  expectTrue('data is an object', res.data && !Array.isArray(res.data), res.data)
  expectEq('data.id', res.data.id, alpha.id)
})

await check('service: maybeSingle() on 2 rows is PGRST116', async () => {
  const res = await mine().eq('job_type', 'model_run').maybeSingle()
  expectError('maybeSingle 2', res, 'PGRST116', 406)
  expectEq('data', res.data, null)
})

await check('service: single() on 0 rows is 406 PGRST116', async () => {
  const res = await mine().eq('idempotency_key', `${tag}-nothing`).single()
  expectError('single 0', res, 'PGRST116', 406)
})

await check('service: single() on 1 row is the row', async () => {
  const res = ok('single 1', await mine().eq('id', alpha.id).single())
  expectEq('data.id', res.data.id, alpha.id)
})

await check("service: conditional update .update().eq('status','queued').select() gives 1 row, then 0", async () => {
  const patch = { status: 'running', started_at: new Date().toISOString() }
  const first = ok('first update', await svc.from('gateway_jobs').update(patch)
    .eq('id', alpha.id).eq('status', 'queued').select())
  expectEq('first update rows', first.data.length, 1)
  expectEq('first update status', first.data[0].status, 'running')
  expectTrue('updated_at moved', first.data[0].updated_at >= alpha.updated_at, first.data[0])
  const second = ok('second update', await svc.from('gateway_jobs').update(patch)
    .eq('id', alpha.id).eq('status', 'queued').select())
  expectEq('second update rows', second.data, [])
})

await check('service: duplicate insert is 23505 (HTTP 409)', async () => {
  const res = await svc.from('gateway_jobs').insert({ id: alpha.id, team_id: TEAM_A }).select()
  expectError('duplicate id', res, '23505', 409)
})

await check('service: unknown column is 42703', async () => {
  expectError('select of an unknown column', await svc.from('gateway_jobs').select('no_such_column'), '42703', 400)
  expectError('filter on an unknown column', await svc.from('gateway_jobs').select('id').eq('no_such_column', 1), '42703', 400)
})

await check('service: bad uuid is 22P02', async () => {
  expectError('eq on a uuid column', await svc.from('gateway_jobs').select('id').eq('id', 'not-a-uuid'), '22P02', 400)
})

await check('service: rpc allocate_subagent_run_sequence returns 1 then 2', async () => {
  const subagentId = randomUUID()
  ok('insert subagent', await svc.from('subagents').insert({
    id: subagentId, team_id: TEAM_A, subagent_type: 'claude_code_gateway',
  }))
  const one = ok('first rpc', await svc.rpc('allocate_subagent_run_sequence', { p_subagent_id: subagentId }))
  expectEq('first sequence', one.data, 1)
  const two = ok('second rpc', await svc.rpc('allocate_subagent_run_sequence', { p_subagent_id: subagentId }))
  expectEq('second sequence', two.data, 2)
  expectError('rpc with a bad uuid', await svc.rpc('allocate_subagent_run_sequence', { p_subagent_id: 'nope' }), '22P02', 400)
})

// ---------------------------------------------------------------- pairing

async function pair(code, team, deviceName) {
  const res = await anon.functions.invoke('exchange-gateway-pairing-code', {
    body: { code, device_name: deviceName },
  })
  if (res.error) {
    const body = res.error.context ? await res.error.context.text().catch(() => '') : ''
    fail(`exchange-gateway-pairing-code: ${res.error.name}: ${res.error.message} ${body}`)
  }
  const d = res.data
  expectEq('success', d?.success, true)
  expectTrue('gateway_id is a uuid', UUID_RE.test(d.gateway_id ?? ''), d)
  expectEq('team_id', d.team_id, team)
  expectTrue('access_token is a JWT', typeof d.access_token === 'string' && d.access_token.split('.').length === 3, d)
  expectTrue('refresh_token is set', typeof d.refresh_token === 'string' && d.refresh_token.length > 0, d)
  return d
}

let gwA
await check("anon: functions.invoke('exchange-gateway-pairing-code') pairs a gateway", async () => {
  gwA = await pair(CODE_A, TEAM_A, 'conformance-a')
  const row = ok('gateway row', await svc.from('team_gateways').select('*').eq('id', gwA.gateway_id).single())
  expectEq('gateway team', row.data.team_id, TEAM_A)
  expectEq('gateway device_name', row.data.device_name, 'conformance-a')
})

await check('anon: a used pairing code is refused (FunctionsHttpError 404)', async () => {
  const res = await anon.functions.invoke('exchange-gateway-pairing-code', {
    body: { code: CODE_A, device_name: 'again' },
  })
  expectTrue('an error', res.error, res.data)
  expectEq('error class', res.error.name, 'FunctionsHttpError')
  expectEq('HTTP status', res.error.context?.status, 404)
  const body = await res.error.context.json()
  expectEq('body.success', body.success, false)
})

// ---------------------------------------------------------------- gateway A

const gw = client(ANON)
let session

await check('gateway: auth.setSession({access_token, refresh_token})', async () => {
  const res = await gw.auth.setSession({ access_token: gwA.access_token, refresh_token: gwA.refresh_token })
  if (res.error) fail(`setSession: ${res.error.name} ${res.error.code ?? ''} ${res.error.message}`)
  session = res.data.session
  expectEq('session.access_token', session?.access_token, gwA.access_token)
  expectEq('session.refresh_token', session.refresh_token, gwA.refresh_token)
  expectTrue('session.user.id', typeof res.data.user?.id === 'string' && res.data.user.id.length > 0, res.data.user)
  expectEq('user.app_metadata.gateway_id', res.data.user.app_metadata?.gateway_id, gwA.gateway_id)
})

await check('gateway: auth.refreshSession() rotates the refresh token', async () => {
  const res = await gw.auth.refreshSession()
  if (res.error) fail(`refreshSession: ${res.error.name} ${res.error.code ?? ''} ${res.error.message}`)
  const next = res.data.session
  expectTrue('a session', next, res.data)
  expectTrue('new refresh token differs from the old one', next.refresh_token && next.refresh_token !== gwA.refresh_token, next.refresh_token)
  expectTrue('access token is a JWT', next.access_token.split('.').length === 3, next.access_token)
  expectTrue('expires_at in the future', next.expires_at > Date.now() / 1000, next.expires_at)
  const { data } = await gw.auth.getSession()
  expectEq('getSession() returns the rotated session', data.session?.refresh_token, next.refresh_token)
  session = next
})

await check("gateway: functions.invoke('gateway-heartbeat') succeeds and is recorded", async () => {
  const res = await gw.functions.invoke('gateway-heartbeat', {
    body: { status: 'ready', capabilities: { schema_version: 'v1' }, device_name: 'x' },
  })
  if (res.error) {
    const body = res.error.context ? await res.error.context.text().catch(() => '') : ''
    fail(`gateway-heartbeat: ${res.error.name}: ${res.error.message} ${body}`)
  }
  expectEq('success', res.data?.success, true)
  const row = ok('gateway row', await svc.from('team_gateways').select('*').eq('id', gwA.gateway_id).single())
  expectEq('status', row.data.status, 'ready')
  expectEq('device_name', row.data.device_name, 'x')
  expectEq('capabilities', row.data.capabilities, { schema_version: 'v1' })
  expectTrue('last_seen_at set', row.data.last_seen_at, row.data)
})

// A gateway for team B, so that team B has jobs of its own gateway.
let gwB
await check('anon: pair a second gateway, for team B', async () => {
  gwB = await pair(CODE_B, TEAM_B, 'conformance-b')
})

let jobA1, jobAOther, jobB1
await check("gateway: selects see only its own team's (and gateway's) rows", async () => {
  const res = ok('service inserts', await svc.from('gateway_jobs').insert([
    { team_id: TEAM_A, gateway_id: gwA.gateway_id, idempotency_key: `${tag}-rls-a1` },
    { team_id: TEAM_A, gateway_id: null, idempotency_key: `${tag}-rls-a-unassigned` },
    { team_id: TEAM_B, gateway_id: gwB.gateway_id, idempotency_key: `${tag}-rls-b1` },
  ]).select())
  ;[jobA1, jobAOther, jobB1] = res.data
  const seen = ok('gateway select', await gw.from('gateway_jobs').select('id,team_id,gateway_id'))
  expectTrue('sees its own job', seen.data.some((r) => r.id === jobA1.id), seen.data)
  for (const r of seen.data) {
    expectEq(`team of visible job ${r.id}`, r.team_id, TEAM_A)
    expectEq(`gateway of visible job ${r.id}`, r.gateway_id, gwA.gateway_id)
  }
  expectEq("select of team B's job by id", ok('by id', await gw.from('gateway_jobs').select('id').eq('id', jobB1.id)).data, [])
  expectEq("select of team B's jobs by team_id", ok('by team', await gw.from('gateway_jobs').select('id').eq('team_id', TEAM_B)).data, [])
  const gws = ok('team_gateways', await gw.from('team_gateways').select('id,team_id'))
  expectEq('team_gateways visible to the gateway', gws.data, [{ id: gwA.gateway_id, team_id: TEAM_A }])
  const cnt = ok('count', await gw.from('gateway_jobs').select('*', { count: 'exact', head: true }))
  expectEq('count of visible jobs', cnt.count, seen.data.length)
})

await check("gateway: update of another team's job returns 0 rows (and changes nothing)", async () => {
  const res = ok('update', await gw.from('gateway_jobs').update({ status: 'running' })
    .eq('id', jobB1.id).select())
  expectEq('rows updated', res.data, [])
  const res2 = ok('update unassigned', await gw.from('gateway_jobs').update({ status: 'running' })
    .eq('id', jobAOther.id).select())
  expectEq("rows updated (own team, another gateway's job)", res2.data, [])
  const after = ok('service reads', await svc.from('gateway_jobs').select('id,status').in('id', [jobB1.id, jobAOther.id]).order('id'))
  expectEq('still queued', after.data.map((r) => r.status), ['queued', 'queued'])
})

await check("gateway: conditional update of its own job .eq('status','queued') gives 1 row, then 0", async () => {
  const patch = { status: 'running', started_at: new Date().toISOString() }
  const first = ok('first', await gw.from('gateway_jobs').update(patch).eq('id', jobA1.id).eq('status', 'queued').select())
  expectEq('first claim rows', first.data.map((r) => r.status), ['running'])
  const second = ok('second', await gw.from('gateway_jobs').update(patch).eq('id', jobA1.id).eq('status', 'queued').select())
  expectEq('second claim rows', second.data, [])
})

// ---------------------------------------------------------------- refresh-token reuse (gateway B)

await check(`gateway: reusing a rotated refresh token after the grace (${REUSE_GRACE_SECS} s) is refused and revokes the session`, async () => {
  const b = client(ANON)
  const set = await b.auth.setSession({ access_token: gwB.access_token, refresh_token: gwB.refresh_token })
  if (set.error) fail(`setSession: ${set.error.code ?? ''} ${set.error.message}`)
  const rot = await b.auth.refreshSession()
  if (rot.error) fail(`refreshSession: ${rot.error.code ?? ''} ${rot.error.message}`)
  const rotated = rot.data.session.refresh_token
  expectTrue('rotated', rotated !== gwB.refresh_token, rotated)
  await sleep((REUSE_GRACE_SECS + 1) * 1000)
  const stale = await client(ANON).auth.refreshSession({ refresh_token: gwB.refresh_token })
  expectTrue('reuse of the old refresh token is refused', stale.error, stale.data)
  expectEq('error code', stale.error.code, 'refresh_token_already_used')
  expectEq('HTTP status', stale.error.status, 400)
  const after = await client(ANON).auth.refreshSession({ refresh_token: rotated })
  expectTrue('the newest refresh token of the revoked session is refused too', after.error, after.data)
  expectEq('HTTP status', after.error.status, 400)
})

// ---------------------------------------------------------------- realtime (gateway A)

await check('gateway: realtime postgres_changes INSERT on gateway_jobs filtered by team, only its own team', async () => {
  await gw.realtime.setAuth(session.access_token)
  const received = []
  let onEvent = () => {}
  const channel = gw.channel(`gateway_jobs_${gwA.gateway_id}`).on(
    'postgres_changes',
    { event: 'INSERT', schema: 'public', table: 'gateway_jobs', filter: `team_id=eq.${TEAM_A}` },
    (payload) => {
      received.push(payload)
      onEvent(payload)
    },
  )
  const statuses = []
  const subscribed = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 12_000)
    channel.subscribe((status, err) => {
      statuses.push(err ? `${status} (${err.message})` : status)
      if (status === 'SUBSCRIBED') {
        clearTimeout(timer)
        resolve(true)
      } else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT' || status === 'CLOSED') {
        clearTimeout(timer)
        resolve(false)
      }
    })
  })
  if (!subscribed) {
    // Say what the upgrade endpoint answers to a plain GET, to tell a
    // missing or refusing endpoint from a protocol mismatch.
    const probe = await fetch(`${URL_}/realtime/v1/websocket?apikey=${encodeURIComponent(ANON)}&vsn=2.0.0`)
      .then(async (r) => `HTTP ${r.status} ${(await r.text()).slice(0, 200)}`)
      .catch((e) => `no answer (${e.message})`)
    fail(`channel not SUBSCRIBED within 12 s; statuses seen: ${show(statuses)}; a plain GET of /realtime/v1/websocket answers: ${probe}`)
  }

  const b = ok('insert team B job', await svc.from('gateway_jobs').insert({
    team_id: TEAM_B, gateway_id: gwB.gateway_id, idempotency_key: `${tag}-rt-b`,
  }).select())
  const jobB = b.data[0]
  const arrived = new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), 5_000)
    onEvent = (p) => {
      if (p.new?.id === jobA.id) {
        clearTimeout(timer)
        resolve(p)
      }
    }
  })
  const a = ok('insert team A job', await svc.from('gateway_jobs').insert({
    team_id: TEAM_A, gateway_id: gwA.gateway_id, idempotency_key: `${tag}-rt-a`, payload: { k: 1 },
  }).select())
  const jobA = a.data[0]
  // The event may have come in before `jobA` was known.
  const early = received.find((p) => p.new?.id === jobA.id)
  const got = early ?? (await arrived)
  expectTrue(`team A job ${jobA.id} arrived within 5 s; events received`, got, received.map((p) => p.new?.id))
  expectEq('eventType', got.eventType, 'INSERT')
  expectEq('schema', got.schema, 'public')
  expectEq('table', got.table, 'gateway_jobs')
  expectEq('new.team_id', got.new.team_id, TEAM_A)
  expectEq('new.gateway_id', got.new.gateway_id, gwA.gateway_id)
  expectEq('new.status', got.new.status, 'queued')
  expectEq('new.payload (typed JSON)', got.new.payload, { k: 1 })
  // Changes arrive in commit order: team B's, inserted first, would be here by now.
  await sleep(300)
  const leaked = received.filter((p) => p.new?.team_id !== TEAM_A || p.new?.id === jobB.id)
  expectEq("events for other teams' rows", leaked.map((p) => p.new), [])
  await gw.removeChannel(channel)
})

// ---------------------------------------------------------------- people (Supabase Auth)

const person = client(ANON)
const authEvents = []
person.auth.onAuthStateChange((event, s) => authEvents.push({ event, user: s?.user?.id ?? null }))
const PERSON_PASSWORD = `pw-${randomUUID()}`
let personSession

await check('person: auth.signUp() without an invitation is refused (invite-only)', async () => {
  const res = await anon.auth.signUp({ email: `nobody-${tag}@example.test`, password: PERSON_PASSWORD })
  expectTrue('an error', res.error, res.data)
  expectEq('error.code', res.error.code, 'signup_disabled')
  expectEq('no session', res.data.session, null)
})

await check('person: auth.signUp() with an invitation code gives a session and the membership', async () => {
  const res = await person.auth.signUp({
    email: INVITE_EMAIL, password: PERSON_PASSWORD, options: { data: { invitation_code: INVITE_CODE, name: 'Ada' } },
  })
  if (res.error) fail(`signUp: ${res.error.name} ${res.error.code ?? ''} ${res.error.message}`)
  expectEq('user.email', res.data.user?.email, INVITE_EMAIL)
  expectEq('user.aud', res.data.user.aud, 'authenticated')
  expectEq('user.user_metadata', res.data.user.user_metadata, { name: 'Ada' })
  expectTrue('a session', res.data.session?.access_token, res.data)
  const { data: members } = ok('team_members', await person.from('team_members').select('team_id, role').eq('user_id', res.data.user.id))
  expectEq('membership', members, [{ team_id: TEAM_A, role: 'member' }])
  expectTrue('SIGNED_IN event', authEvents.some((e) => e.event === 'SIGNED_IN'), authEvents)
  await person.auth.signOut({ scope: 'local' })
})

await check('person: signInWithPassword() with a wrong password or an unknown email says the same thing', async () => {
  const wrong = await anon.auth.signInWithPassword({ email: INVITE_EMAIL, password: 'not the password' })
  const unknown = await anon.auth.signInWithPassword({ email: `nobody-${tag}@example.test`, password: 'not the password' })
  for (const [what, res] of [['wrong password', wrong], ['unknown email', unknown]]) {
    expectTrue(`${what}: an error`, res.error, res.data)
    expectEq(`${what}: error.code`, res.error.code, 'invalid_credentials')
    expectEq(`${what}: error.message`, res.error.message, 'Invalid login credentials')
    expectEq(`${what}: HTTP status`, res.error.status, 400)
  }
})

await check('person: signInWithPassword() signs in, onAuthStateChange reports SIGNED_IN', async () => {
  authEvents.length = 0
  const res = await person.auth.signInWithPassword({ email: INVITE_EMAIL, password: PERSON_PASSWORD })
  if (res.error) fail(`signInWithPassword: ${res.error.name} ${res.error.code ?? ''} ${res.error.message}`)
  personSession = res.data.session
  expectEq('token_type', personSession.token_type, 'bearer')
  expectTrue('expires_at in the future', personSession.expires_at > Date.now() / 1000, personSession)
  expectEq('SIGNED_IN for this user', authEvents.filter((e) => e.event === 'SIGNED_IN').map((e) => e.user), [res.data.user.id])
  const ops = await anon.auth.signInWithPassword({ email: USER_EMAIL, password: USER_PASSWORD })
  if (ops.error) fail(`the CLI-made user signs in: ${ops.error.message}`)
})

await check('person: a member reads its team only and dispatches to its own team\'s gateway', async () => {
  const { data: teams } = ok('teams', await person.from('teams').select('id'))
  expectEq('teams', teams, [{ id: TEAM_A }])
  const mineJob = ok('dispatch', await person.from('gateway_jobs').insert({
    team_id: TEAM_A, gateway_id: gwA.gateway_id, job_type: 'diagnostic', idempotency_key: `${tag}-person`,
  }).select())
  expectEq('dispatched job status', mineJob.data[0].status, 'queued')
  expectError("another team's gateway", await person.from('gateway_jobs').insert({
    team_id: TEAM_B, gateway_id: gwB.gateway_id, job_type: 'diagnostic',
  }), '42501', 403)
  const { data: others } = ok('select team B jobs', await person.from('gateway_jobs').select('id').eq('team_id', TEAM_B))
  expectEq("team B's jobs", others, [])
})

await check('person: refreshSession() rotates, onAuthStateChange reports TOKEN_REFRESHED', async () => {
  authEvents.length = 0
  const res = await person.auth.refreshSession()
  if (res.error) fail(`refreshSession: ${res.error.name} ${res.error.code ?? ''} ${res.error.message}`)
  expectTrue('a new refresh token', res.data.session.refresh_token !== personSession.refresh_token, res.data.session)
  expectTrue('TOKEN_REFRESHED', authEvents.some((e) => e.event === 'TOKEN_REFRESHED'), authEvents)
  personSession = res.data.session
  const { data: user, error } = await person.auth.getUser()
  if (error) fail(`getUser: ${error.message}`)
  expectEq('getUser().email', user.user.email, INVITE_EMAIL)
  const upd = await person.auth.updateUser({ data: { theme: 'dark' } })
  if (upd.error) fail(`updateUser: ${upd.error.message}`)
  expectEq('user_metadata merged', upd.data.user.user_metadata, { name: 'Ada', theme: 'dark' })
})

await check('person: signOut() ends the session, onAuthStateChange reports SIGNED_OUT', async () => {
  authEvents.length = 0
  const res = await person.auth.signOut()
  if (res.error) fail(`signOut: ${res.error.message}`)
  expectTrue('SIGNED_OUT', authEvents.some((e) => e.event === 'SIGNED_OUT'), authEvents)
  const { data } = await person.auth.getSession()
  expectEq('no session', data.session, null)
  const stale = await fetch(`${URL_}/rest/v1/teams?select=id`, {
    headers: { apikey: ANON, authorization: `Bearer ${personSession.access_token}` },
  })
  expectEq('the old access token reads nothing (HTTP status)', stale.status, 401)
  const reuse = await anon.auth.refreshSession({ refresh_token: personSession.refresh_token })
  expectTrue('the old refresh token is refused', reuse.error, reuse.data)
})

console.log(`${passed} passed, 0 failed (${((Date.now() - started) / 1000).toFixed(1)} s)`)
process.exit(0)
