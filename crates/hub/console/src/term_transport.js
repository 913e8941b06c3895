// Line mode: how the console's terminal reaches a machine that does not
// announce the terminal stream (term_stream.js is the interactive path).
// Each line runs as one `shell_exec` job; the directory is carried between
// lines.

import { jobRow } from './recipes.js';

const TERMINAL = ['completed', 'failed', 'cancelled'];
const CWD_MARK = '\u001e';

const quote = (s) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The shell_exec command for one line typed in `cwd`: runs it there and reports the new directory after a marker. */
export function lineCommand(line, cwd) {
  return `cd ${quote(cwd)} 2>/dev/null || cd /\n${line}\n__rc=$?; printf '${CWD_MARK}%s' "$PWD"; exit $__rc`;
}

/** Splits a result's stdout into what the command printed and the directory it ended in. */
export function splitCwd(stdout, cwd) {
  const i = stdout.lastIndexOf(CWD_MARK);
  if (i < 0) return { out: stdout, cwd };
  return { out: stdout.slice(0, i), cwd: stdout.slice(i + 1) || cwd };
}

/**
 * Inserts one job as the signed-in person and polls it until it ends;
 * returns `{status, result, error}`. Throws when the hub refuses, when
 * `isClosed()` turns true, or after `waitMs` without an end.
 */
export async function submitAndWait(sb, row, waitMs, isClosed = () => false) {
  const { data: job, error } = await sb.from('gateway_jobs').insert(row).select().single();
  if (error) throw new Error(error.message);
  const deadline = Date.now() + waitMs;
  for (;;) {
    if (isClosed()) throw new Error('terminal closed');
    const { data: r, error: e } = await sb.from('gateway_jobs').select('status,result,error').eq('id', job.id).single();
    if (e) throw new Error(e.message);
    if (TERMINAL.includes(r.status)) return r;
    if (Date.now() > deadline) throw new Error('no answer from the machine in time (is it online?)');
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** A line-mode transport over `shell_exec` jobs. */
export function lineTransport(sb, { teamId, gatewayId, userId, resourceId, timeoutMs = 30000 }) {
  let cwd = '/';
  let closed = false;
  return {
    kind: 'shell_exec',
    get cwd() { return cwd; },
    async run(line) {
      const row = await submitAndWait(sb, jobRow({ teamId, gatewayId, userId, jobType: 'shell_exec', payload: { command: lineCommand(line, cwd), timeout_ms: timeoutMs, resource_id: resourceId } }), timeoutMs + 30000, () => closed);
      const r = row.result || {};
      if (row.status !== 'completed' && !r.stdout && !r.stderr) {
        return { out: '', err: `${row.error || r.message || row.status}\n`, code: 1 };
      }
      const split = splitCwd(r.stdout || '', cwd);
      cwd = split.cwd;
      return { out: split.out, err: r.stderr || '', code: r.exit_code ?? (r.timed_out ? 124 : 1) };
    },
    close() { closed = true; },
  };
}

/** The line-mode transport for a machine. */
export function openTransport(sb, opts) {
  return lineTransport(sb, opts);
}
