#!/usr/bin/env node
// Writes npm/<platform>/package.json for every entry of platforms.mjs and the main package's
// optionalDependencies, all at the main package's version (npm resolves them exactly, so a release can never mix
// versions). `--check` writes nothing and exits 1 when a file is out of date (the packaging test runs it).
//   node scripts/package/sync-versions.mjs [--check]

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { PLATFORMS, binaryFile, packageDir, packageName } from './platforms.mjs';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function platformManifest(main, p) {
  return {
    name: packageName(p),
    version: main.version,
    description: `pagedllm's native addon for ${p.suffix}${p.cuda ? ' with the CUDA backend' : ''} (prebuilt, napi-rs)`,
    license: main.license,
    os: [p.os],
    cpu: [p.cpu],
    ...(p.libc ? { libc: [p.libc] } : {}),
    main: binaryFile(p),
    files: [binaryFile(p)],
    engines: main.engines,
    ...(main.repository ? { repository: main.repository } : {}),
  };
}

/** The files sync would write, as [path, text]. */
export function expectedFiles(root = ROOT) {
  const mainPath = path.join(root, 'package.json');
  const main = JSON.parse(readFileSync(mainPath, 'utf8'));
  const files = PLATFORMS.map((p) => [
    path.join(root, 'npm', packageDir(p), 'package.json'),
    JSON.stringify(platformManifest(main, p), null, 2) + '\n',
  ]);
  // Sorted by name, as npm writes them, so an `npm install` never makes the file look out of date.
  const optional = Object.fromEntries(PLATFORMS.map((p) => [packageName(p), main.version]).sort(([a], [b]) => (a < b ? -1 : 1)));
  files.push([mainPath, JSON.stringify({ ...main, optionalDependencies: optional }, null, 2) + '\n']);
  return files;
}

function readOrEmpty(file) {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const check = process.argv.includes('--check');
  const stale = expectedFiles().filter(([file, text]) => readOrEmpty(file) !== text);
  if (check) {
    for (const [file] of stale) process.stderr.write(`out of date: ${path.relative(ROOT, file)}\n`);
    if (stale.length) process.stderr.write('run `node scripts/package/sync-versions.mjs`\n');
    process.exit(stale.length ? 1 : 0);
  }
  for (const [file, text] of stale) {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, text);
    process.stdout.write(`wrote ${path.relative(ROOT, file)}\n`);
  }
}
