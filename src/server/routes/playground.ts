/**
 * GET / : the browser playground (chat with streaming, sampling controls, live engine numbers from /metrics).
 * The page is read and inlined once, when the route is built, so a missing page source fails at startup rather
 * than on a request. Served with a strict Content-Security-Policy (only the page's own inlined script and style,
 * fetches to this origin), `nosniff`, no referrer, and no caching of a page that changes with each build.
 * Not behind the API key: the page holds no data; its API calls carry the key the user types in.
 */

import { Hono } from 'hono';

import { loadPlaygroundPage } from '../playground/page.js';

export function playgroundRoute(): Hono {
  const page = loadPlaygroundPage();
  const headers = {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Security-Policy': page.contentSecurityPolicy,
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'X-Frame-Options': 'DENY',
    'Cache-Control': 'no-cache',
  };
  const route = new Hono();
  route.get('/', (c) => c.body(page.html, 200, headers));
  return route;
}
