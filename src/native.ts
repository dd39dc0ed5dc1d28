/**
 * Finds and loads the compiled addon (napi-rs v3) for this platform. Lookup order, first hit wins:
 *   1. `$PAGEDLLM_NATIVE_PATH`: exactly that file, nothing else is tried;
 *   2. a local source build in `bindings/` (`pagedllm.<platform>.node`, then `pagedllm.node`): a checkout, or the
 *      source fallback of `npm install` when no prebuilt package matched;
 *   3. the prebuilt platform package `pagedllm-<platform>` (an optionalDependency; npm installs only the one whose
 *      os/cpu/libc match), or `pagedllm-<platform>-cuda` when the caller asks for CUDA.
 * For `device: 'cuda'` an addon only counts when its `backends()` lists `cuda`; when none does, the CPU addon is
 * returned and `LLM.create` reports which package to install (`cudaInstallHint`). The design follows
 * node-llama-cpp's `@node-llama-cpp/<platform>[-cuda]` packages with a runtime choice of the GPU variant.
 */

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface NativeRequestHandle {
  readonly requestId: string;
  next(): Promise<unknown | null>;
  abort(): boolean;
}

export interface NativeEngine {
  modelInfo(): unknown;
  addRequest(inputJson: string): NativeRequestHandle;
  /** `addRequest` on a blocking thread (tokenizing a long prompt, compiling a new grammar). */
  addRequestAsync(inputJson: string): Promise<NativeRequestHandle>;
  abort(requestId: string): boolean;
  stats(): unknown;
  encode(text: string, addSpecialTokens: boolean): number[];
  /** `encode` on a blocking thread (large inputs must not stall the event loop). */
  encodeAsync(text: string, addSpecialTokens: boolean): Promise<number[]>;
  decode(ids: number[], skipSpecialTokens: boolean): string;
  applyChatTemplate(
    messagesJson: string,
    addGenerationPrompt: boolean,
    chatTemplate?: string | null,
    extraJson?: string | null,
  ): string;
  /** `applyChatTemplate` on a blocking thread (compiling and rendering a template can take long). */
  applyChatTemplateAsync(
    messagesJson: string,
    addGenerationPrompt: boolean,
    chatTemplate?: string | null,
    extraJson?: string | null,
  ): Promise<string>;
  isAlive(): boolean;
  close(): void;
}

export interface NativeBinding {
  Engine: { create(model: string, configJson: string): Promise<NativeEngine> };
  /** The backends this addon was compiled with (`['cpu']` or `['cpu', 'cuda']`); absent in addons before 0.1. */
  backends?(): string[];
}

/** The package root: both `src/` and `dist/` sit one level below it. */
export const PACKAGE_ROOT = fileURLToPath(new URL('..', import.meta.url));

function isMusl(): boolean {
  if (process.platform !== 'linux') return false;
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return !report?.header?.glibcVersionRuntime;
}

/** napi-rs's platform suffix: `linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`, ... */
export function platformSuffix(): string {
  const base = `${process.platform}-${process.arch}`;
  if (process.platform === 'linux') return `${base}-${isMusl() ? 'musl' : 'gnu'}`;
  if (process.platform === 'win32') return `${base}-msvc`;
  return base;
}

/** The prebuilt package for this platform: `pagedllm-linux-x64-gnu`, or its `-cuda` variant. */
export function platformPackageName(variant: 'cpu' | 'cuda' = 'cpu'): string {
  return `pagedllm-${platformSuffix()}${variant === 'cuda' ? '-cuda' : ''}`;
}

/** Paths a locally built addon may have; the install script checks these too. */
export function localBinaryCandidates(root = PACKAGE_ROOT): string[] {
  return [path.join(root, 'bindings', `pagedllm.${platformSuffix()}.node`), path.join(root, 'bindings', 'pagedllm.node')];
}

/** True for `cuda`, `gpu` and `cuda:N` (the engine's spelling rules; `parseLLMOptions` validated them). */
export function wantsCuda(device: string | undefined): boolean {
  return device !== undefined && /^(cuda(:\d+)?|gpu)$/i.test(device);
}

export function hasCuda(binding: NativeBinding): boolean {
  return binding.backends?.().includes('cuda') ?? false;
}

/** What to tell a caller who asked for CUDA and got an addon without it. */
export function cudaInstallHint(): string {
  return (
    `this pagedllm addon was built without the CUDA backend: install \`${platformPackageName('cuda')}\` ` +
    '(`npm install ' + platformPackageName('cuda') + '`), or build from source with PAGEDLLM_CUDA=1 and ' +
    'PAGEDLLM_BUILD_FROM_SOURCE=1'
  );
}

type Source = { kind: 'file'; file: string } | { kind: 'package'; name: string };

function describe(source: Source): string {
  return source.kind === 'file' ? source.file : source.name;
}

const loaded = new Map<string, NativeBinding>();

/** Requires one candidate; `undefined` when it is not installed (any other load failure is thrown). */
function tryLoad(source: Source): NativeBinding | undefined {
  const key = describe(source);
  const hit = loaded.get(key);
  if (hit) return hit;
  const require = createRequire(import.meta.url);
  let binding: NativeBinding;
  if (source.kind === 'file') {
    if (!existsSync(source.file)) return undefined;
    binding = require(source.file) as NativeBinding;
  } else {
    try {
      binding = require(source.name) as NativeBinding;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      // Only "this package is not installed" means try the next one; a broken install must say so.
      if (e.code === 'MODULE_NOT_FOUND' && e.message.includes(source.name)) return undefined;
      throw new Error(`pagedllm: ${source.name} is installed but its addon failed to load: ${e.message}`, { cause: err });
    }
  }
  loaded.set(key, binding);
  return binding;
}

/**
 * The addon to use for `device` (default CPU). With a CUDA device, a candidate without the CUDA backend is passed
 * over for the `-cuda` package; when no candidate has CUDA, the first CPU one is returned (the caller checks
 * `hasCuda` and reports `cudaInstallHint`).
 */
export function loadNative(options: { device?: string } = {}): NativeBinding {
  const override = process.env.PAGEDLLM_NATIVE_PATH;
  if (override) {
    const file = path.resolve(override);
    const binding = tryLoad({ kind: 'file', file });
    if (!binding) throw new Error(`pagedllm: PAGEDLLM_NATIVE_PATH names ${file}, which does not exist`);
    return binding;
  }
  const cuda = wantsCuda(options.device);
  const sources: Source[] = [
    ...localBinaryCandidates().map((file): Source => ({ kind: 'file', file })),
    ...(cuda ? [{ kind: 'package', name: platformPackageName('cuda') } as Source] : []),
    { kind: 'package', name: platformPackageName('cpu') },
    // A machine with only the CUDA variant installed still runs on the CPU with it.
    ...(cuda ? [] : [{ kind: 'package', name: platformPackageName('cuda') } as Source]),
  ];
  let fallback: NativeBinding | undefined;
  for (const source of sources) {
    const binding = tryLoad(source);
    if (!binding) continue;
    if (!cuda || hasCuda(binding)) return binding;
    fallback ??= binding;
  }
  if (fallback) return fallback;
  throw new Error(
    `pagedllm: no native addon for ${platformSuffix()} (looked for ${sources.map(describe).join(', ')}). ` +
      `Install the prebuilt package (\`npm install ${platformPackageName(cuda ? 'cuda' : 'cpu')}\`) or build from ` +
      'source with `PAGEDLLM_BUILD_FROM_SOURCE=1 npm install` (needs a Rust toolchain).',
  );
}
