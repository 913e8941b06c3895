// A run's events as page elements: assistant messages as markdown, tool
// calls and results collapsible, errors and retries marked. Events are
// keyed by sequence, so a realtime insert and the initial load never
// show one twice, and a late one lands in its place.
import { h } from './ui.js';
import { markdown } from './markdown.js';

const text = (v) => (typeof v === 'string' ? v : JSON.stringify(v, null, 2));

function body(ev) {
  const p = ev.payload || {};
  switch (ev.event_type) {
    case 'message':
      if (p.kind === 'reasoning') return h('details', {}, h('summary', {}, 'Reasoning'), markdown(p.content));
      return p.role === 'assistant' ? markdown(p.content ?? p.text ?? '') : h('pre', {}, text(p.content ?? p));
    case 'tool_call':
      return h('details', {}, h('summary', {}, h('strong', {}, `Tool call: ${p.tool_name || '?'}`), p.summary ? ` — ${p.summary}` : ''), h('pre', {}, text(p.tool_input ?? p)));
    case 'tool_result':
      return h('details', {}, h('summary', {}, h('strong', {}, `${p.is_error ? 'Tool error' : 'Tool result'}: ${p.tool_name || p.tool_use_id || ''}`)), h('pre', {}, text(p.content ?? p)));
    case 'run_failed':
      return h('p', { class: 'error' }, `Run failed: ${p.error || p.message || text(p)}`);
    case 'run_completed':
      return h('p', {}, 'Run completed', p.duration_ms ? ` in ${(p.duration_ms / 1000).toFixed(1)} s` : '', '.');
    case 'run_progress':
      if (p.phase === 'retry_scheduled') {
        return h('p', { class: 'warn' }, `Attempt ${p.attempt} of ${p.max_attempts} failed (${String(p.reason || 'error').replace(/_/g, ' ')}); retrying in ${((p.delay_ms || 0) / 1000).toFixed(1)} s.`);
      }
      if (p.phase === 'attempt_started' && p.attempt > 1) return h('p', {}, `Attempt ${p.attempt} of ${p.max_attempts} started.`);
      return h('details', {}, h('summary', {}, `progress${p.phase ? `: ${p.phase.replace(/_/g, ' ')}` : ''}`), h('pre', {}, text(p)));
    case 'run_cancelled':
      return h('p', { class: 'warn' }, `Run cancelled${p.reason ? `: ${p.reason}` : ''}.`);
    default: {
      const summary = p.message || p.status || p.reason || p.subtype || '';
      return h('details', {}, h('summary', {}, `${ev.event_type.replace(/_/g, ' ')}${summary ? `: ${summary}` : ''}`), h('pre', {}, text(p)));
    }
  }
}

/** One event row. Retries and error-level events are marked as such. */
export function renderEvent(ev) {
  const p = ev.payload || {};
  const bad = ev.event_type === 'run_failed' || p.level === 'error' || p.is_error === true;
  const retry = p.phase === 'retry_scheduled' || /retry/i.test(`${p.subtype || ''} ${p.code || ''} ${p.message || ''}`);
  return h('li', {
    class: `event e-${ev.event_type}${bad ? ' bad' : ''}${retry ? ' retry' : ''}`,
    dataset: { seq: ev.sequence, type: ev.event_type },
  }, h('span', { class: 'seq', 'aria-hidden': 'true' }, `#${ev.sequence}`), retry ? h('span', { class: 'badge s-retry' }, 'retry') : null, body(ev));
}

/** Puts `ev` in `list` in sequence order (replacing one with the same sequence). */
export function upsertEvent(list, ev, render) {
  const el = render(ev);
  const seq = Number(ev.sequence);
  const old = list.querySelector(`[data-seq="${seq}"]`);
  if (old) return old.replaceWith(el);
  const last = list.lastElementChild;
  if (!last || Number(last.dataset.seq) < seq) return list.append(el);
  const after = [...list.children].find((c) => Number(c.dataset.seq) > seq);
  list.insertBefore(el, after);
}
