// DOM helpers: elements from plain data (text is always set as text,
// never parsed as HTML), times and durations, a status line.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function ago(ts) {
  if (!ts) return 'never';
  const s = Math.round((Date.now() - Date.parse(ts)) / 1000);
  if (s < 5) return 'just now';
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return new Date(ts).toLocaleString();
}

export function duration(from, to) {
  if (!from) return '–';
  const ms = (to ? Date.parse(to) : Date.now()) - Date.parse(from);
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

export function badge(status) {
  return h('span', { class: `badge s-${status}` }, status);
}

/** The page's one status line (read by screen readers). */
export function notify(text, kind = 'info') {
  const el = document.getElementById('notice');
  if (!el) return;
  el.className = `notice ${kind}`;
  el.textContent = text;
}

/** Runs an async action, reporting its error in the status line. */
export async function attempt(what, fn) {
  try {
    return await fn();
  } catch (e) {
    notify(`${what} failed: ${e.message || e}`, 'error');
    return undefined;
  }
}

/** A supabase-js answer's data, or its error thrown with a readable message. */
export function must({ data, error }) {
  if (error) throw new Error(error.message + (error.hint ? ` (${error.hint})` : ''));
  return data;
}
