// Model answers as Markdown, rendered by markdown-it (CommonMark + GFM tables
// and strikethrough) with highlight.js for fenced code. Safety: raw HTML is
// off (markdown-it escapes every tag and entity it is given), images are off
// (no requests, no onerror), and a link is kept only when it points at http(s)
// — it opens in a new tab with rel="noopener noreferrer"; anything else
// (javascript:, data:, relative) stays plain text. highlight.js only wraps
// escaped text in <span class="hljs-…">. Unfinished input (a streaming
// answer) renders as far as it goes, an open code fence included.
//
// The pages map these bare names to /vendor/ with an import map; Node (the
// tests) resolves them from web/node_modules.

import MarkdownIt from "markdown-it";
import hljs from "@highlightjs/cdn-assets/es/highlight.min.js";

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const md = new MarkdownIt({
  html: false,
  linkify: true,
  typographer: false,
  highlight(code, language) {
    if (!language || !hljs.getLanguage(language)) return ""; // markdown-it escapes it
    try {
      return hljs.highlight(code, { language, ignoreIllegals: true }).value;
    } catch {
      return "";
    }
  },
});
md.disable("image");
md.validateLink = (url) => /^https?:\/\//i.test(url.trim());

// Links leave the page safely.
const defaultLinkOpen = md.renderer.rules.link_open ?? ((tokens, i, options, env, self) => self.renderToken(tokens, i, options));
md.renderer.rules.link_open = (tokens, i, options, env, self) => {
  tokens[i].attrSet("target", "_blank");
  tokens[i].attrSet("rel", "noopener noreferrer");
  return defaultLinkOpen(tokens, i, options, env, self);
};

/** Markdown text → HTML string (safe to assign to innerHTML). */
export function renderMarkdown(text) {
  return md.render(text);
}
