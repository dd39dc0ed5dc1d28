/**
 * The playground page as one self-contained HTML document: index.html with style.css and app.js inlined (the page
 * makes no request for assets, and nothing outside the server). Its sources sit next to this module: in
 * src/server/playground/ for a source checkout, and in dist/server/playground/ once built (scripts/build-playground.mjs
 * copies them there during `npm run build:ts`). The Content-Security-Policy allows exactly the inlined script and
 * style (by sha256) and same-origin fetches; nothing else.
 */

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The files that make up the page, all in this module's directory. */
export const PLAYGROUND_SOURCES = ['index.html', 'style.css', 'app.js'] as const;

/** Where the page's sources live: this module's directory (src/server/playground or dist/server/playground). */
export const PLAYGROUND_DIR = fileURLToPath(new URL('.', import.meta.url));

const STYLE_TAG = '<link rel="stylesheet" href="style.css">';
const SCRIPT_TAG = '<script src="app.js"></script>';

export interface PlaygroundPage {
  html: string;
  contentSecurityPolicy: string;
}

function sha256Source(text: string): string {
  return `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;
}

/** Replaces the single occurrence of `tag` in `html` (a missing or repeated tag is a broken page source). */
function replaceOnce(html: string, tag: string, replacement: string): string {
  const at = html.indexOf(tag);
  if (at < 0 || html.indexOf(tag, at + 1) >= 0) {
    throw new Error(`playground index.html must contain \`${tag}\` exactly once`);
  }
  return html.slice(0, at) + replacement + html.slice(at + tag.length);
}

/** Inlines `css` and `js` into `html` and derives the CSP that allows exactly them. Pure. */
export function inlinePlayground(html: string, css: string, js: string): PlaygroundPage {
  // An end tag inside the inlined text would close the element early.
  if (/<\/style/i.test(css)) throw new Error('playground style.css must not contain "</style"');
  if (/<\/script/i.test(js)) throw new Error('playground app.js must not contain "</script"');
  const page = replaceOnce(replaceOnce(html, STYLE_TAG, `<style>${css}</style>`), SCRIPT_TAG, `<script>${js}</script>`);
  const contentSecurityPolicy = [
    "default-src 'none'",
    `script-src ${sha256Source(js)}`,
    `style-src ${sha256Source(css)}`,
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { html: page, contentSecurityPolicy };
}

/** Reads the page's sources from `dir` (default: next to this module) and inlines them. */
export function loadPlaygroundPage(dir: string = PLAYGROUND_DIR): PlaygroundPage {
  const [html, css, js] = PLAYGROUND_SOURCES.map((name) => {
    const file = path.join(dir, name);
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      throw new Error(
        `the playground page source ${file} is missing (${(err as Error).message}); ` +
          'rebuild with `npm run build:ts`, which copies src/server/playground/ into dist/',
        { cause: err },
      );
    }
  }) as [string, string, string];
  return inlinePlayground(html, css, js);
}
