// Unit tests of the console's pure functions (node --test; run by
// crates/hub/tests/console.rs). No DOM, no network.
import test from 'node:test';
import assert from 'node:assert/strict';
import { newPairingCode, pairCommand, subagentRow, jobRow, modelRunPayload } from '../src/recipes.js';
import { lineCommand, splitCwd } from '../src/term_transport.js';

test('pairing codes use the unambiguous alphabet in two groups of four', () => {
  const code = newPairingCode();
  assert.match(code, /^[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}$/);
  assert.equal(newPairingCode((n) => new Uint32Array(n)), 'AAAA-AAAA');
});

test('the pair command names the code, the hub and the anon key', () => {
  assert.equal(pairCommand('ABCD-EFGH', 'http://127.0.0.1:54321', 'k'), 'panorama-gateway pair ABCD-EFGH --hub-url http://127.0.0.1:54321 --anon-key k');
});

test('a subagent row follows §16.10: provider type, normalized config, versioned input', () => {
  const row = subagentRow({ id: 's', teamId: 't', gatewayId: 'g', provider: 'codex', model: '', outputFormat: 'stream-json', prompt: 'hi', userId: 'u' });
  assert.equal(row.subagent_type, 'codex_gateway');
  assert.deepEqual(row.config, { output_format: 'stream-json' });
  assert.equal(row.input.schema_version, 1);
  assert.equal(row.input.prompt, 'hi');
  assert.ok(!('status' in row), 'people may not set a status: the hub defaults it to idle');
  assert.equal(subagentRow({ provider: 'gemini', model: 'gemini-2.5-pro', outputFormat: 'json' }).config.model, 'gemini-2.5-pro');
});

test('a job row carries who asked and no status (the hub queues it)', () => {
  const row = jobRow({ teamId: 't', gatewayId: 'g', jobType: 'diagnostic', payload: {}, userId: 'u' });
  assert.deepEqual(row, { team_id: 't', gateway_id: 'g', job_type: 'diagnostic', payload: {}, requested_via: 'panorama-console', requested_by_user_id: 'u' });
});

test('a json model run gets a schema; a text one does not', () => {
  assert.ok(modelRunPayload({ provider: 'claude_code', model: '', prompt: 'p', outputFormat: 'stream-json' }).json_schema);
  const text = modelRunPayload({ provider: 'claude_code', model: 'sonnet', prompt: 'p', outputFormat: 'text' });
  assert.equal(text.output_format, 'text');
  assert.equal(text.json_schema, undefined);
  assert.equal(modelRunPayload({ provider: 'codex', model: '', prompt: 'p', outputFormat: 'text' }).model, '__default__');
});

test('a terminal line runs in the remembered directory, quoted', () => {
  const cmd = lineCommand('ls', "/tmp/it's");
  assert.ok(cmd.startsWith("cd '/tmp/it'\\''s' 2>/dev/null || cd /\nls\n"));
  assert.deepEqual(splitCwd('a\nb\n\u001e/srv', '/'), { out: 'a\nb\n', cwd: '/srv' });
  assert.deepEqual(splitCwd('no marker', '/x'), { out: 'no marker', cwd: '/x' });
});
