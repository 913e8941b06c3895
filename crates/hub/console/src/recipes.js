// The spec's dispatch recipes (control-plane.md §16.10), as a signed-in
// member runs them through supabase-js: the same rows and RPCs as the
// hub's `job submit` (crates/hub/src/cli.rs). Row builders are pure; the
// calls are at the bottom.

export const PROVIDERS = ['claude_code', 'codex', 'gemini'];
export const OUTPUT_FORMATS = ['stream-json', 'json', 'text'];

/** A pairing code like `ABCD-EF23` (no 0/O/1/I: read aloud and typed). */
export function newPairingCode(random = (n) => crypto.getRandomValues(new Uint32Array(n))) {
  const alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';
  const r = random(8);
  const pick = (i) => alphabet[r[i] % alphabet.length];
  return `${[0, 1, 2, 3].map(pick).join('')}-${[4, 5, 6, 7].map(pick).join('')}`;
}

/** The exact command a machine runs to pair with this hub. */
export function pairCommand(code, origin, anonKey) {
  return `panorama-gateway pair ${code} --hub-url ${origin} --anon-key ${anonKey}`;
}

/** The `subagents` row of a new subagent (`idle` by default; §16.10 step 1). */
export function subagentRow({ id, teamId, gatewayId, provider, model, outputFormat, prompt, userId }) {
  const config = { output_format: outputFormat };
  if (model) config.model = model;
  return {
    id,
    team_id: teamId,
    gateway_id: gatewayId,
    subagent_type: `${provider}_gateway`,
    created_by: userId,
    config,
    input: { schema_version: 1, prompt, prompt_at: new Date().toISOString() },
    metadata: {},
  };
}

/** A `gateway_jobs` row (`queued` by default). */
export function jobRow({ teamId, gatewayId, jobType, payload, userId }) {
  return {
    team_id: teamId,
    gateway_id: gatewayId,
    job_type: jobType,
    payload,
    requested_via: 'panorama-console',
    requested_by_user_id: userId,
  };
}

/** The `model_run` payload (§8.2). A json run needs a schema. */
export function modelRunPayload({ provider, model, prompt, outputFormat, schema }) {
  const payload = { prompt, model: model || '__default__', provider, output_format: outputFormat === 'text' ? 'text' : 'json' };
  if (payload.output_format === 'json') payload.json_schema = schema || { type: 'object', properties: { answer: { type: 'string' } }, required: ['answer'] };
  return payload;
}

async function insertOne(sb, table, row) {
  const { data, error } = await sb.from(table).insert(row).select().single();
  if (error) throw new Error(`${table}: ${error.message}`);
  return data;
}

/**
 * A subagent run by the later recipe: create the subagent, accept the run
 * on the hub (run row `running`), then queue the job naming it. If the
 * job cannot be queued the accepted run is cancelled, never left running.
 */
export async function dispatchSubagentRun(sb, args) {
  const id = crypto.randomUUID();
  await insertOne(sb, 'subagents', subagentRow({ ...args, id }));
  const { data: accepted, error } = await sb.rpc('accept_subagent_run', { p_subagent_id: id, p_gateway_id: args.gatewayId });
  if (error) throw new Error(`accepting the run: ${error.message}`);
  const runId = accepted.run_id;
  try {
    const job = await insertOne(sb, 'gateway_jobs', jobRow({ ...args, jobType: 'subagent_run', payload: { subagent_id: id, run_id: runId } }));
    return { job, runId, subagentId: id };
  } catch (e) {
    await sb.rpc('request_subagent_run_cancellation', { p_run_id: runId, p_reason: 'The job for this run could not be queued' });
    throw e;
  }
}

/** Any other job type: one queued row. */
export async function dispatchJob(sb, args) {
  return { job: await insertOne(sb, 'gateway_jobs', jobRow(args)) };
}

/**
 * Cancels a run: the hub closes a run no gateway started yet
 * (`request_subagent_run_cancellation`); a started run gets a
 * `subagent_cancel` job for its gateway.
 */
export async function cancelRun(sb, run, userId, reason = 'Cancelled from the console') {
  const { data, error } = await sb.rpc('request_subagent_run_cancellation', { p_run_id: run.id, p_reason: reason });
  if (error) throw new Error(error.message);
  if (data && data.cancelled) return 'cancelled';
  if (data && ['completed', 'failed', 'cancelled'].includes(data.run_status)) return data.run_status;
  await insertOne(sb, 'gateway_jobs', jobRow({
    teamId: run.team_id, gatewayId: run.gateway_id, jobType: 'subagent_cancel', userId,
    payload: { subagent_id: run.subagent_id, run_id: run.id, reason },
  }));
  return 'requested';
}
