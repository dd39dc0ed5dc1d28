/**
 * First-use download of the default model. `npm install` normally fetches it (scripts/install.mjs); when that
 * was skipped (PAGEDLLM_SKIP_MODEL_FETCH=1, an offline install, a wiped cache) `LLM.create` without a `model`
 * fetches it here. The download itself lives in `scripts/fetch-model.mjs` (plain JS: it also runs at install,
 * where no TypeScript is compiled), so both paths share one implementation: resumable, sha256-checked, with a
 * progress bar on a TTY.
 */

import { existsSync } from 'node:fs';

import { defaultModelPath } from './engine-types.js';
import { ModelNotFoundError } from './errors.js';

interface FetchModelModule {
  fetchModel(options?: { quiet?: boolean }): Promise<string>;
}

/** Makes sure the default model file is in the cache; a failed download is a `ModelNotFoundError`. */
export async function ensureDefaultModel(): Promise<void> {
  // The engine verifies what it loads; a present file is not re-hashed on every start.
  if (existsSync(defaultModelPath())) return;
  // `../scripts` from both src/ (tests) and dist/ (the package).
  const script = new URL('../scripts/fetch-model.mjs', import.meta.url);
  const mod = (await import(script.href)) as FetchModelModule;
  try {
    await mod.fetchModel();
  } catch (err) {
    throw new ModelNotFoundError(
      'model_not_found',
      `the default model is not cached at ${defaultModelPath()} and could not be downloaded: ${(err as Error).message}`,
      { cause: err },
    );
  }
}
