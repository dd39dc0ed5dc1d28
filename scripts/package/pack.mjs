#!/usr/bin/env node
// The release's packing step, the same here and in .github/workflows/release.yml: puts a built addon into its
// platform package (npm/<platform>/) and packs it, and packs the main package (dist/ must be built: `npm install`
// or `npm run build:ts`). Prints one JSON line per tarball with its packed and unpacked size.
//   node scripts/package/pack.mjs --out DIR --platform linux-x64-gnu [--binary FILE]   a platform package
//   node scripts/package/pack.mjs --out DIR --main                                      the main package
// Without --binary the addon is taken from npm/<platform>/ (where `napi artifacts` puts CI builds), else from
// bindings/ (what `npm install` in this checkout built). A `-cuda` package refuses an addon whose `backends()`
// lacks `cuda` (checked when the addon can load on this machine).

import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { binaryFile, findPlatform, packageName } from './platforms.mjs';
import { ROOT } from './sync-versions.mjs';

const require = createRequire(import.meta.url);

function npmPack(cwd, out) {
  // `npm pack --json` prints the tarball's facts; stderr keeps npm's notices out of the JSON.
  const r = spawnSync('npm', ['pack', '--json', '--pack-destination', out], { cwd, encoding: 'utf8', shell: process.platform === 'win32' });
  if (r.status !== 0) throw new Error(`npm pack in ${cwd} failed: ${r.stderr}`);
  const [info] = JSON.parse(r.stdout);
  return { name: info.name, version: info.version, file: path.join(out, info.filename), size: info.size, unpackedSize: info.unpackedSize, entryCount: info.entryCount };
}

function loadableHere(p) {
  const suffix = `${process.platform}-${process.arch}`;
  return p.suffix.startsWith(suffix);
}

export function packPlatform({ platform, out, binary }) {
  const p = findPlatform(platform);
  const dir = path.join(ROOT, 'npm', platform);
  const dest = path.join(dir, binaryFile(p));
  const source = binary ?? (existsSync(dest) ? dest : path.join(ROOT, 'bindings', binaryFile(p)));
  if (!existsSync(source)) throw new Error(`no addon to pack for ${packageName(p)}: ${source} is missing (build it first)`);
  if (loadableHere(p)) {
    const backends = require(path.resolve(source)).backends?.() ?? ['cpu'];
    if (Boolean(p.cuda) !== backends.includes('cuda')) {
      throw new Error(`${source} has backends [${backends.join(', ')}], which does not fit ${packageName(p)}`);
    }
  }
  if (path.resolve(source) !== dest) copyFileSync(source, dest);
  mkdirSync(out, { recursive: true });
  return npmPack(dir, path.resolve(out));
}

export function packMain({ out }) {
  if (!existsSync(path.join(ROOT, 'dist', 'index.js'))) throw new Error('dist/ is not built: run `npm run build:ts` first');
  mkdirSync(out, { recursive: true });
  return npmPack(ROOT, path.resolve(out));
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const args = process.argv.slice(2);
  const value = (flag) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  try {
    const out = value('--out');
    if (!out) throw new Error('usage: pack.mjs --out DIR (--platform NAME [--binary FILE] | --main)');
    const platform = value('--platform');
    const info = platform ? packPlatform({ platform, out, binary: value('--binary') }) : args.includes('--main') ? packMain({ out }) : null;
    if (!info) throw new Error('say --platform NAME or --main');
    process.stdout.write(JSON.stringify(info) + '\n');
  } catch (err) {
    process.stderr.write(`error: ${err.message}\n`);
    process.exit(1);
  }
}
