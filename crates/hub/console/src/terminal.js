// The terminal screen: xterm.js over the interactive terminal stream
// (term_stream.js: raw bytes both ways) when the machine announces it, else
// with local line editing over shell_exec jobs (term_transport.js).
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { openTransport } from './term_transport.js';
import { streamTransport } from './term_stream.js';

const crlf = (s) => s.replace(/\r?\n/g, '\r\n');

export function mountTerminal(el, sb, opts, dark) {
  const term = newTerminal(el, dark);
  if (opts.stream) return mountStream(term, sb, opts);
  return mountLines(term, sb, opts);
}

function newTerminal(el, dark) {
  const term = new Terminal({
    cursorBlink: true,
    convertEol: false,
    fontSize: 14,
    rows: 24,
    lineHeight: 1.15,
    theme: dark ? { background: '#111418', foreground: '#e6e6e6' } : { background: '#fbfbfb', foreground: '#1b1b1b', cursor: '#1b1b1b', selectionBackground: '#b3d4fc' },
  });
  term.open(el);
  // Columns follow the page's width (rows stay 24); the stream sends each new size as a resize.
  const fit = new FitAddon();
  term.loadAddon(fit);
  const refit = () => {
    const d = fit.proposeDimensions();
    if (d?.cols > 0 && d.cols !== term.cols) term.resize(d.cols, term.rows);
  };
  refit();
  const observer = new ResizeObserver(refit);
  observer.observe(el);
  term.release = () => { observer.disconnect(); term.dispose(); };
  return term;
}

/** Stream mode: every keystroke goes to the PTY verbatim, output is written as it comes. */
function mountStream(term, sb, opts) {
  let transport = null;
  let closed = false;
  // The shell gets Tab (completion); Shift+Tab leaves, so the keyboard never gets stuck here.
  term.attachCustomKeyEventHandler((e) => !(e.key === 'Tab' && e.shiftKey));
  term.writeln(`Opening a terminal on ${opts.deviceName}…`);
  streamTransport(sb, {
    ...opts,
    cols: term.cols,
    rows: term.rows,
    onOutput: (bytes) => term.write(bytes),
    onExit: (why) => term.writeln(`\r\n\x1b[33m[session ended: ${why}]\x1b[0m`),
    // A dropped socket shows until supabase-js has joined again (and the session resumed).
    onStatus: (status) => { if (!closed && status !== 'SUBSCRIBED') term.writeln(`\r\n\x1b[33m[terminal stream: ${status}]\x1b[0m`); },
  }).then((t) => {
    if (closed) { t.close(); return; }
    transport = t;
    term.element.parentElement.dataset.session = t.sessionId;
  }, (e) => term.writeln(`\x1b[31m${e.message}\x1b[0m`));
  term.onData((data) => transport?.send(data));
  term.onResize(({ cols, rows }) => transport?.resize(cols, rows));
  term.focus();
  return () => { closed = true; transport?.close(); term.release(); };
}

/** Line mode over shell_exec jobs: local line editing, one job per line. */
function mountLines(term, sb, opts) {
  // Line mode has no completion: Tab moves focus on, so the keyboard never gets stuck here.
  term.attachCustomKeyEventHandler((e) => e.key !== 'Tab');
  const transport = openTransport(sb, opts);
  let line = '';
  let busy = false;
  const history = [];
  let back = 0;
  const prompt = () => term.write(`\x1b[1;34m${transport.cwd}\x1b[0m $ `);
  term.writeln(`Connected to ${opts.deviceName} (each line runs as one ${transport.kind} job; cd is remembered).`);
  prompt();
  const setLine = (s) => { term.write('\r\x1b[2K'); prompt(); line = s; term.write(s); };
  term.onData(async (data) => {
    if (busy) return;
    if (data === '\r') {
      term.write('\r\n');
      const cmd = line;
      line = '';
      back = 0;
      if (!cmd.trim()) return prompt();
      history.push(cmd);
      busy = true;
      try {
        const r = await transport.run(cmd);
        if (r.out) term.write(crlf(r.out));
        if (r.err) term.write(`\x1b[31m${crlf(r.err)}\x1b[0m`);
        if ((r.out || r.err) && !/\n$/.test(r.out + r.err)) term.write('\r\n');
        if (r.code) term.writeln(`\x1b[33m[exit ${r.code}]\x1b[0m`);
      } catch (e) {
        term.writeln(`\x1b[31m${e.message}\x1b[0m`);
      }
      busy = false;
      prompt();
    } else if (data === '\x7f' || data === '\b') {
      if (line) { line = line.slice(0, -1); term.write('\b \b'); }
    } else if (data === '\x03') {
      term.write('^C\r\n'); line = ''; prompt();
    } else if (data === '\x1b[A') {
      if (back < history.length) { back += 1; setLine(history[history.length - back]); }
    } else if (data === '\x1b[B') {
      if (back > 0) { back -= 1; setLine(back ? history[history.length - back] : ''); }
    } else if (!data.startsWith('\x1b')) {
      const printable = data.replace(/[\x00-\x1f]/g, '');
      line += printable;
      term.write(printable);
    }
  });
  term.focus();
  return () => { transport.close(); term.release(); };
}
