/** Flag parsing helpers for the CLI: strict number flags and a `UsageError` (exit code 2). */

/** A mistake in how the CLI was called (unknown flag, bad value, missing prompt): exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export function numberFlag(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} expects a number, got '${value}'`);
  return n;
}

export function intFlag(name: string, value: string | undefined): number | undefined {
  const n = numberFlag(name, value);
  if (n !== undefined && !Number.isInteger(n)) throw new UsageError(`--${name} expects an integer, got '${value}'`);
  return n;
}

/** `--cpu-precision`: `fast` or `exact`. */
export function cpuPrecisionFlag(value: string | undefined): 'fast' | 'exact' | undefined {
  if (value === undefined) return undefined;
  if (value === 'fast' || value === 'exact') return value;
  throw new UsageError(`--cpu-precision must be fast or exact, got '${value}'`);
}

/** Reads all of stdin as text (for prompts piped in). */
export async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
