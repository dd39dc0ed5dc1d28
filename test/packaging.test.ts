/**
 * What the npm tarballs hold (`npm pack --dry-run`, nothing written): the main package carries dist/ and every
 * file the source fallback build needs, and nothing from tests, fixtures or bench results; the platform packages
 * stay in sync with the main version. The end-to-end install from a local registry is test/packaging-e2e.test.ts.
 */

import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

// @ts-expect-error: a plain .mjs script without type declarations
import { PLATFORMS, packageDir, packageName } from '../scripts/package/platforms.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');

interface PackInfo {
  size: number;
  unpackedSize: number;
  files: { path: string; size: number }[];
}

function dryRun(cwd: string): PackInfo {
  const r = spawnSync('npm', ['pack', '--dry-run', '--json'], { cwd, encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as PackInfo[])[0]!;
}

/** Every file a `cargo build` of the workspace reads, found in the checkout: manifests, build scripts, sources. */
function sourceBuildInputs(): string[] {
  const out: string[] = ['Cargo.toml', 'Cargo.lock', 'bindings/Cargo.toml', 'bindings/build.rs', 'scripts/install-nvcc.sh'];
  const walk = (dir: string) => {
    for (const e of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      // Unit-test modules are `#[cfg(test)]`: a release build never reads them.
      else if (/\.(rs|cu|cuh)$/.test(e.name) && !/(^|_)tests\.rs$/.test(e.name)) out.push(rel);
    }
  };
  walk('bindings/src');
  for (const crate of readdirSync(path.join(ROOT, 'crates'))) {
    out.push(`crates/${crate}/Cargo.toml`);
    if (readdirSync(path.join(ROOT, 'crates', crate)).includes('build.rs')) out.push(`crates/${crate}/build.rs`);
    walk(`crates/${crate}/src`);
  }
  return out;
}

describe('npm pack', () => {
  const main = dryRun(ROOT);
  const files = new Set(main.files.map((f) => f.path));

  it('ships everything the source fallback needs, and the built JS with its types', () => {
    const missing = sourceBuildInputs().filter((f) => !files.has(f));
    expect(missing).toEqual([]);
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cli.js', 'dist/server/index.d.ts', 'scripts/install.mjs', 'scripts/build.mjs', 'scripts/fetch-model.mjs', 'package.json', 'README.md']) {
      expect(files.has(f), f).toBe(true);
    }
    expect(files.has('crates/kernels/build.rs')).toBe(true);
    expect([...files].some((f) => f.endsWith('.cu'))).toBe(true);
  });

  it('ships no tests, fixtures, bench results, TypeScript sources or built addons', () => {
    const unwanted = [...files].filter((f) =>
      /^bench\/|(^|\/)(test|tests|fixtures|results|proptest-regressions)\/|_tests\.rs$|(^|\/)tests\.rs$|^src\/|\.node$|\.gguf$/.test(f),
    );
    expect(unwanted).toEqual([]);
  });

  it('keeps the main tarball under 5 MB', () => {
    process.stdout.write(`main tarball: ${main.size} bytes packed, ${main.unpackedSize} unpacked, ${files.size} files\n`);
    expect(main.size).toBeLessThan(5 * 1024 * 1024);
  });

  it('lists every platform package as an optional dependency at the same version, each with its os/cpu', () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const sync = spawnSync(process.execPath, ['scripts/package/sync-versions.mjs', '--check'], { cwd: ROOT, encoding: 'utf8' });
    expect(sync.status, sync.stderr).toBe(0);
    for (const p of PLATFORMS as { os: string; cpu: string; cuda?: boolean }[]) {
      const name = packageName(p) as string;
      expect(pkg.optionalDependencies[name]).toBe(pkg.version);
      const manifest = JSON.parse(readFileSync(path.join(ROOT, 'npm', packageDir(p), 'package.json'), 'utf8'));
      expect(manifest).toMatchObject({ name, version: pkg.version, os: [p.os], cpu: [p.cpu] });
    }
    expect(Object.keys(pkg.optionalDependencies)).toContain('pagedllm-linux-x64-gnu-cuda');
  });
});
