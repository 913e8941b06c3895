// The console's terminal over the interactive terminal stream (issue 15;
// wire: crates/protocol/src/terminal.rs). One `terminal_open` job opens a
// PTY on the gateway; bytes then flow both ways over the private broadcast
// channel `terminal:<session>`. The pure parts (message shapes, output
// ordering, unacknowledged input) are exported for node --test; the
// transport at the bottom is the only I/O.

import { jobRow } from './recipes.js';
import { submitAndWait } from './term_transport.js';

/** The heartbeat capability key a gateway announces the stream with. */
export const CAPABILITY_KEY = 'terminal_stream';
/** How often an attached client pings (keeps the session attached). */
export const CLIENT_PING_MS = 1000;
/** Input not acknowledged within this is sent again. */
export const RESEND_AFTER_MS = 500;

/** Whether a gateway's heartbeat capabilities announce the stream. */
export function announcesStream(capabilities) {
  const v = capabilities?.[CAPABILITY_KEY]?.version;
  return Number.isInteger(v) && v >= 1;
}

const utf8 = new TextEncoder();

/** Bytes (a string is UTF-8 encoded) → base64, as the wire carries them. */
export function toBase64(data) {
  const bytes = typeof data === 'string' ? utf8.encode(data) : data;
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

/** base64 → bytes. */
export function fromBase64(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}

const broadcast = (event, payload) => ({ type: 'broadcast', event, payload });

/** The client → gateway messages, as supabase-js `channel.send` takes them. */
export const msg = {
  attach: (clientId, resumeFrom) => broadcast('attach', { client_id: clientId, resume_from: resumeFrom }),
  input: (clientId, seq, data) => broadcast('input', { client_id: clientId, seq, data: toBase64(data) }),
  outputAck: (clientId, seq) => broadcast('output_ack', { client_id: clientId, seq }),
  resize: (cols, rows) => broadcast('resize', { cols, rows }),
  ping: (clientId) => broadcast('ping', { client_id: clientId }),
  close: (clientId) => broadcast('close', { client_id: clientId }),
};

/**
 * Output ordering: chunks are shown in seq order, exactly once. Live chunks
 * can overtake the replay an `attach` asked for; they are dropped and come
 * again in the replay. The same rules as the Rust `OutputOrder`.
 */
export class OutputOrder {
  constructor() { this.last = 0; this.asked = null; }

  /** Records an `attach {resume_from}` sent; returns resume_from. */
  requestResume() { this.asked = this.last + 1; return this.asked; }

  /** `attached {next_seq, oldest_seq}`: output before the ring's oldest chunk is gone for good. */
  attached(nextSeq, oldestSeq) {
    if (oldestSeq > this.last + 1) {
      this.last = oldestSeq - 1;
      if (this.asked !== null) this.asked = oldestSeq;
    }
    if (nextSeq <= this.last + 1) this.asked = null;
  }

  /** 'apply' | 'duplicate' | {gap: resumeFrom|null} for an output chunk. */
  accept(seq) {
    if (seq <= this.last) return 'duplicate';
    if (seq === this.last + 1) {
      this.last = seq;
      if (this.asked !== null && this.asked <= seq) this.asked = null;
      return 'apply';
    }
    if (this.asked === this.last + 1) return { gap: null };
    return { gap: this.requestResume() };
  }
}

/** Input sent and not yet acknowledged, for resending. */
export class Unacked {
  constructor() { this.pending = []; this.nextSeq = 0; }

  push(data, now) { this.nextSeq += 1; this.pending.push({ seq: this.nextSeq, data, at: now }); return this.nextSeq; }

  ack(seq) { this.pending = this.pending.filter((p) => p.seq > seq); }

  /** Everything still pending when the oldest was sent `afterMs` ago (re-stamped). */
  due(now, afterMs) {
    if (!this.pending.length || now - this.pending[0].at < afterMs) return [];
    return this.pending.map((p) => { p.at = now; return { seq: p.seq, data: p.data }; });
  }
}

/**
 * A stream transport: opens a session (`terminal_open`, as the signed-in
 * person), joins `terminal:<session>` and pumps bytes. `onOutput(bytes)`
 * gets output in order; `onExit(text)` once when the session ends.
 * Returns `{ kind, sessionId, send(data), resize(cols, rows), close() }`.
 */
export async function streamTransport(sb, { teamId, gatewayId, userId, resourceId, cols, rows, onOutput, onExit, onStatus = () => {} }) {
  const row = await submitAndWait(sb, jobRow({ teamId, gatewayId, userId, jobType: 'terminal_open', payload: { resource_id: resourceId, cols, rows, term: 'xterm-256color' } }), 60000);
  if (row.status !== 'completed') throw new Error(`opening the terminal ${row.status}: ${row.error || row.result?.message || 'no reason given'}`);
  const sessionId = row.result?.session_id;
  if (!sessionId) throw new Error('the machine opened a terminal without a session id');
  const clientId = crypto.randomUUID();
  const order = new OutputOrder();
  const unacked = new Unacked();
  let subscribed = false;
  let ended = false;
  let askedAt = Date.now();
  let lastPing = Date.now();
  let size = { cols, rows };
  const chan = sb.channel(`terminal:${sessionId}`, { config: { private: true, broadcast: { self: false } } });
  const send = (m) => { if (subscribed) chan.send(m); };
  const end = (text) => { if (!ended) { ended = true; clearInterval(tick); onExit(text); sb.removeChannel(chan); } };
  chan.on('broadcast', { event: '*' }, ({ event, payload: p }) => {
    if (ended) return;
    if (event === 'output') {
      const v = order.accept(p.seq);
      if (v === 'apply') { onOutput(fromBase64(p.data)); send(msg.outputAck(clientId, p.seq)); }
      else if (v.gap) { askedAt = Date.now(); send(msg.attach(clientId, v.gap)); }
    } else if (event === 'attached') order.attached(p.next_seq, p.oldest_seq);
    else if (event === 'ack') unacked.ack(p.input_seq);
    else if (event === 'exit') end(p.reason || (p.code != null ? `exit ${p.code}` : 'ended'));
  });
  // Every (re)subscription attaches again from the last chunk shown: the
  // gateway replays what was missed while the socket was down.
  chan.subscribe((status, err) => {
    onStatus(status);
    if (status === 'SUBSCRIBED') {
      subscribed = true;
      askedAt = Date.now();
      chan.send(msg.attach(clientId, order.requestResume()));
      chan.send(msg.resize(size.cols, size.rows));
      for (const { seq, data } of unacked.pending) chan.send(msg.input(clientId, seq, data));
    } else {
      subscribed = false;
      if (status === 'CHANNEL_ERROR' && err) onStatus(`${status}: ${err.message}`);
    }
  });
  const tick = setInterval(() => {
    if (!subscribed) return;
    const now = Date.now();
    if (order.asked !== null && now - askedAt >= RESEND_AFTER_MS * 2) { askedAt = now; send(msg.attach(clientId, order.requestResume())); }
    for (const { seq, data } of unacked.due(now, RESEND_AFTER_MS)) send(msg.input(clientId, seq, data));
    if (now - lastPing >= CLIENT_PING_MS) { lastPing = now; send(msg.ping(clientId)); }
  }, 250);
  return {
    kind: 'terminal stream',
    sessionId,
    send(data) {
      if (ended) return;
      const bytes = utf8.encode(data);
      const seq = unacked.push(bytes, Date.now());
      send(msg.input(clientId, seq, bytes));
    },
    resize(c, r) { size = { cols: c, rows: r }; send(msg.resize(c, r)); },
    close() {
      if (ended) return;
      if (subscribed) chan.send(msg.close(clientId));
      ended = true;
      clearInterval(tick);
      // Let the close go out before the channel is left; the gateway's idle timeout ends it otherwise.
      setTimeout(() => sb.removeChannel(chan), 100);
    },
  };
}
