/**
 * The browser playground, end to end in a real browser (Debian's chromium through playwright-core) against a real
 * server on a free port with the real engine: the page loads under its CSP with no errors and no request leaving
 * the server, the API key typed in is used and kept in localStorage, a reply streams in (the text grows over
 * time), Stop aborts it (the engine's running count drops back to 0), and the engine panel shows live numbers.
 * Skipped only when /usr/bin/chromium is absent outside CI; under CI (.ci/run installs chromium) it must run.
 */

import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { serve } from '@hono/node-server';
import { type BrowserContext, type Page, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { LLM } from '../src/llm.js';
import { createApp } from '../src/server/app.js';
import { createTestLLM } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const MODEL_NAME = 'playground-test-model';
const API_KEY = 'playground-test-key';
const runBrowser = existsSync(CHROMIUM) || Boolean(process.env.CI);
if (!runBrowser) {
  console.warn(`server-playground: skipped, ${CHROMIUM} is missing (install it: apt-get install -y chromium)`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a truthy value or `timeoutMs` passes; returns the last value. */
async function until<T>(probe: () => Promise<T>, timeoutMs: number, everyMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs;
  let value = await probe();
  while (!value && Date.now() < end) {
    await sleep(everyMs);
    value = await probe();
  }
  return value;
}

describe.skipIf(!runBrowser)('playground page in a real browser', () => {
  let llm: LLM;
  let server: ReturnType<typeof serve>;
  let baseUrl: string;
  let userDataDir: string;
  let context: BrowserContext;
  let page: Page;
  const pageErrors: string[] = [];
  const consoleErrors: string[] = [];
  const requestedUrls: string[] = [];

  beforeAll(async () => {
    llm = await createTestLLM();
    const { app } = createApp(llm, { servedModelName: [MODEL_NAME], apiKey: API_KEY, disableLogRequests: true });
    const address = await new Promise<AddressInfo>((resolve) => {
      server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, resolve);
    });
    baseUrl = `http://127.0.0.1:${address.port}`;

    userDataDir = mkdtempSync(path.join(os.tmpdir(), 'pagedllm-playground-profile-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 820 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-quic',
        '--no-first-run',
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (msg) => {
      if (msg.type() === 'error') consoleErrors.push(msg.text());
    });
    page.on('request', (req) => requestedUrls.push(req.url()));
  });

  afterAll(async () => {
    await context?.close();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    llm?.close();
  });

  async function runningOnServer(): Promise<number | null> {
    const res = await fetch(`${baseUrl}/metrics`, { headers: { Authorization: `Bearer ${API_KEY}` } });
    const m = /^vllm:num_requests_running\{[^}]*\}\s+(\S+)/m.exec(await res.text());
    return m ? Number(m[1]) : null;
  }

  const lastReply = () => page.locator('.message.assistant .text').last();
  const lastReplyMeta = () => page.locator('.message.assistant .meta').last();

  it('serves the page under a strict CSP, asks for the API key, and keeps the key in localStorage', async () => {
    const response = await page.goto(`${baseUrl}/`);
    expect(response?.status()).toBe(200);
    const headers = response!.headers();
    expect(headers['content-type']).toMatch(/^text\/html; charset=utf-8/);
    expect(headers['content-security-policy']).toContain("default-src 'none'");
    expect(headers['content-security-policy']).toMatch(/script-src 'sha256-[A-Za-z0-9+/=]+'/);
    expect(headers['content-security-policy']).not.toContain('unsafe-inline');

    // No key yet: /v1/models answers 401 and the page says so.
    await page.locator('#model-name', { hasText: 'API key required' }).waitFor({ timeout: 10_000 });

    await page.locator('#api-key').fill(API_KEY);
    await page.locator('#api-key').press('Enter');
    await page.locator('#model-name', { hasText: MODEL_NAME }).waitFor({ timeout: 10_000 });

    await page.reload();
    expect(await page.locator('#api-key').inputValue()).toBe(API_KEY);
    await page.locator('#model-name', { hasText: MODEL_NAME }).waitFor({ timeout: 10_000 });
  });

  it('streams a reply into the chat and shows live engine numbers', async () => {
    await page.locator('#temperature').fill('0');
    await page.locator('#max-tokens').fill('48');
    await page.locator('#prompt').fill('Write a short poem about the sea.');
    await page.locator('#send').click();

    await expect.poll(() => page.locator('.message.user .text').last().textContent()).toBe(
      'Write a short poem about the sea.',
    );

    // Sample the reply while it streams: its length must take several growing values before the request ends.
    const lengths: number[] = [];
    let maxTps = 0;
    const deadline = Date.now() + 120_000;
    for (;;) {
      const [text, streaming, tps] = await Promise.all([
        lastReply().textContent(),
        page.locator('#stop').isEnabled(),
        page.locator('#stat-tps').textContent(),
      ]);
      maxTps = Math.max(maxTps, Number(tps) || 0);
      if (!streaming) break;
      const n = text?.length ?? 0;
      if (n > 0 && n !== lengths.at(-1)) lengths.push(n);
      if (Date.now() > deadline) throw new Error('the reply did not finish within 120 s');
      await sleep(20);
    }
    const finalText = (await lastReply().textContent()) ?? '';
    console.log(`server-playground: reply grew through lengths ${lengths.join(', ')} -> ${finalText.length}`);
    expect(finalText.trim().length).toBeGreaterThan(0);
    expect(lengths.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < lengths.length; i++) expect(lengths[i]!).toBeGreaterThan(lengths[i - 1]!);
    expect(finalText.length).toBeGreaterThanOrEqual(lengths.at(-1)!);
    expect(await lastReplyMeta().textContent()).toMatch(/finish: (stop|length)/);
    expect(await lastReplyMeta().getAttribute('class')).not.toContain('error');

    // The engine panel: integer counts, a KV percentage, and a tokens/s rate that went above 0 with the reply.
    await expect.poll(() => page.locator('#stat-running').textContent()).toMatch(/^\d+$/);
    await expect.poll(() => page.locator('#stat-waiting').textContent()).toMatch(/^\d+$/);
    await expect.poll(() => page.locator('#stat-kv').textContent()).toMatch(/^\d+(\.\d+)? %$/);
    await expect.poll(() => page.locator('#stat-tps').textContent()).toMatch(/^\d+(\.\d+)?$/);
    if (maxTps === 0) {
      // The counter may be updated at the end of the request: the next poll reports its delta.
      await until(async () => (maxTps = Math.max(maxTps, Number(await page.locator('#stat-tps').textContent()) || 0)), 5000);
    }
    expect(maxTps).toBeGreaterThan(0);
  });

  it('Stop aborts the streaming request', async () => {
    await page.locator('#max-tokens').fill('400');
    await page.locator('#temperature').fill('0.8');
    await page.locator('#prompt').fill('Tell me a long story about a dragon who learns to bake bread.');
    await page.locator('#send').click();

    const replies = await page.locator('.message.assistant').count();
    expect(replies).toBe(2);
    expect(await until(async () => ((await lastReply().textContent()) ?? '').length > 20, 60_000)).toBe(true);
    expect(await page.locator('#stop').isEnabled()).toBe(true);
    await page.locator('#stop').click();

    await expect.poll(() => lastReplyMeta().textContent()).toBe('stopped');
    expect(await page.locator('#send').isEnabled()).toBe(true);
    const stoppedAt = ((await lastReply().textContent()) ?? '').length;
    expect(stoppedAt).toBeGreaterThan(20);
    await sleep(700);
    expect(((await lastReply().textContent()) ?? '').length).toBe(stoppedAt);

    // The abort reached the engine: nothing is left running, on the server and on the panel.
    expect(await until(async () => (await runningOnServer()) === 0, 10_000)).toBe(true);
    await expect.poll(() => page.locator('#stat-running').textContent(), { timeout: 5000 }).toBe('0');
  });

  it('made no request outside the server, raised no script or CSP error, and renders (screenshot)', async () => {
    const shot = path.join(os.tmpdir(), `pagedllm-playground-${process.pid}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`server-playground: screenshot at ${shot}`);
    const png = readFileSync(shot);
    expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
    expect(statSync(shot).size).toBeGreaterThan(20_000);

    expect(pageErrors).toEqual([]);
    expect(consoleErrors.filter((e) => /Content Security Policy|Refused to/i.test(e))).toEqual([]);
    const outside = requestedUrls.filter((u) => !u.startsWith(`${baseUrl}/`) && !u.startsWith('data:'));
    expect(outside).toEqual([]);
  });
});
