// Unit tests of the terminal stream's pure parts (node --test): message
// shapes as crates/protocol/src/terminal.rs reads them, output ordering
// and input resending.
import test from 'node:test';
import assert from 'node:assert/strict';
import { announcesStream, toBase64, fromBase64, msg, OutputOrder, Unacked } from '../src/term_stream.js';

test('the stream is used only when the heartbeat announces version 1 or later', () => {
  assert.equal(announcesStream({ terminal_stream: { version: 1 } }), true);
  assert.equal(announcesStream({ terminal_stream: { version: 2 } }), true);
  assert.equal(announcesStream({ terminal_stream: {} }), false);
  assert.equal(announcesStream({ services: {} }), false);
  assert.equal(announcesStream(undefined), false);
});

test('keystrokes travel verbatim: escape sequences and UTF-8 survive base64', () => {
  for (const s of ['\x1b[6n', '\x1b[>0;0c', 'é€😀', '\x03\x1a\x1c', '']) {
    assert.equal(new TextDecoder().decode(fromBase64(toBase64(s))), s);
  }
  const bytes = new Uint8Array(70000).map((_, i) => i % 256);
  assert.deepEqual(fromBase64(toBase64(bytes)), bytes);
  assert.equal(toBase64('hi\r'), 'aGkN');
});

test('client messages have the shapes the gateway reads', () => {
  assert.deepEqual(msg.attach('c', 1), { type: 'broadcast', event: 'attach', payload: { client_id: 'c', resume_from: 1 } });
  assert.deepEqual(msg.input('c', 3, 'ls\r'), { type: 'broadcast', event: 'input', payload: { client_id: 'c', seq: 3, data: 'bHMN' } });
  assert.deepEqual(msg.outputAck('c', 9), { type: 'broadcast', event: 'output_ack', payload: { client_id: 'c', seq: 9 } });
  assert.deepEqual(msg.resize(120, 40), { type: 'broadcast', event: 'resize', payload: { cols: 120, rows: 40 } });
  assert.deepEqual(msg.ping('c'), { type: 'broadcast', event: 'ping', payload: { client_id: 'c' } });
  assert.deepEqual(msg.close('c'), { type: 'broadcast', event: 'close', payload: { client_id: 'c' } });
});

test('output is shown in order, once; a gap asks for a replay once', () => {
  const o = new OutputOrder();
  assert.equal(o.requestResume(), 1);
  assert.equal(o.accept(1), 'apply');
  assert.equal(o.accept(2), 'apply');
  assert.equal(o.accept(2), 'duplicate');
  assert.deepEqual(o.accept(4), { gap: 3 });
  assert.deepEqual(o.accept(5), { gap: null }, 'the same gap asks once');
  assert.equal(o.accept(3), 'apply');
  assert.equal(o.asked, null);
  assert.equal(o.accept(4), 'apply');
});

test('after a reconnect the client resumes from the next chunk; output lost to the ring is skipped', () => {
  const o = new OutputOrder();
  o.requestResume();
  o.accept(1);
  assert.equal(o.requestResume(), 2, 'resume after a reconnect');
  o.attached(10, 5);
  assert.equal(o.last, 4);
  assert.equal(o.asked, 5);
  assert.equal(o.accept(5), 'apply');
  const idle = new OutputOrder();
  idle.requestResume();
  idle.attached(1, 1);
  assert.equal(idle.asked, null, 'nothing to replay: nothing awaited');
});

test('input is numbered from 1, dropped when acknowledged and resent when late', () => {
  const u = new Unacked();
  assert.equal(u.push('a', 0), 1);
  assert.equal(u.push('b', 10), 2);
  assert.deepEqual(u.due(100, 500), []);
  assert.deepEqual(u.due(600, 500), [{ seq: 1, data: 'a' }, { seq: 2, data: 'b' }]);
  assert.deepEqual(u.due(700, 500), [], 'resent ones wait again');
  u.ack(1);
  assert.deepEqual(u.pending.map((p) => p.seq), [2]);
  u.ack(2);
  assert.deepEqual(u.pending, []);
});
