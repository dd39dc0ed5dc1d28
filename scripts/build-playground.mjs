#!/usr/bin/env node
// Build step for the browser playground: copies the page sources (src/server/playground/*, everything but the
// TypeScript, which tsc compiles) into dist/server/playground/, next to the compiled page.js that inlines them
// into one HTML document when the server starts. Run by `node scripts/build.mjs` after tsc (so by
// `npm run build:ts` and by `npm install`); can also be run alone: `node scripts/build-playground.mjs`.

import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const PLAYGROUND_SRC = path.join(ROOT, 'src', 'server', 'playground');
export const PLAYGROUND_DIST = path.join(ROOT, 'dist', 'server', 'playground');

/** Copies the playground's non-TypeScript sources into dist/; returns the copied file names. */
export function buildPlayground() {
  const assets = readdirSync(PLAYGROUND_SRC, { withFileTypes: true })
    .filter((e) => e.isFile() && !e.name.endsWith('.ts'))
    .map((e) => e.name);
  if (!assets.includes('index.html')) throw new Error(`${PLAYGROUND_SRC} has no index.html`);
  mkdirSync(PLAYGROUND_DIST, { recursive: true });
  for (const name of assets) copyFileSync(path.join(PLAYGROUND_SRC, name), path.join(PLAYGROUND_DIST, name));
  return assets;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  try {
    buildPlayground();
  } catch (err) {
    process.stderr.write(`error: ${err.message}\n`);
    process.exit(1);
  }
}
