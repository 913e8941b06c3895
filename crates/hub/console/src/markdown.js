// Assistant messages as markdown. Raw HTML in a message is shown as text,
// never rendered: the content comes from an agent, not from us.
import { Marked } from 'marked';

const escape = (s) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html: ({ text }) => escape(text),
    // Only web and mail links are links; anything else (javascript:, data:) stays text.
    link: ({ href, text }) => (/^(https?:|mailto:)/i.test(href || '')
      ? `<a href="${escape(href)}" rel="noreferrer noopener" target="_blank">${escape(text || '')}</a>`
      : escape(`${text || ''} (${href || ''})`)),
    image: ({ text }) => escape(`[image: ${text || ''}]`),
  },
});

/** An element holding `text` rendered as markdown. */
export function markdown(text) {
  const div = document.createElement('div');
  div.className = 'md';
  div.innerHTML = marked.parse(String(text ?? ''));
  return div;
}
