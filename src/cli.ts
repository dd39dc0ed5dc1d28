#!/usr/bin/env node
/**
 * The `pagedllm` command. Subcommands live in `COMMANDS` (one entry each; `serve` and `bench` plug in here when
 * they exist). Errors print `error: <message>` and exit 1; usage mistakes exit 2.
 */

import { GENERATE_USAGE, generateCommand } from './cli/generate.js';
import { serveCommand } from './cli/serve.js';
import { UsageError } from './cli/args.js';
import { PagedLLMError } from './errors.js';

interface Command {
  summary: string;
  run(argv: string[]): Promise<void>;
}

async function fetchModelCommand(argv: string[]): Promise<void> {
  if (argv.includes('-h') || argv.includes('--help')) {
    process.stdout.write('usage: pagedllm fetch-model\n\nDownloads the default model (SmolLM2-135M-Instruct Q4_1) into the pagedllm cache.\n');
    return;
  }
  if (argv.length > 0) throw new UsageError(`fetch-model takes no arguments, got '${argv.join(' ')}'`);
  // A plain .mjs script (it also runs at `npm install`, before TypeScript is compiled).
  const script = new URL('../scripts/fetch-model.mjs', import.meta.url);
  const mod = (await import(script.href)) as { fetchModel(): Promise<string> };
  const file = await mod.fetchModel();
  process.stdout.write(file + '\n');
}

const COMMANDS: Record<string, Command> = {
  generate: { summary: 'generate a completion for a prompt', run: generateCommand },
  serve: { summary: 'serve the model over an OpenAI-compatible HTTP API (see serve --help)', run: serveCommand },
  'fetch-model': { summary: 'download the default model into the cache', run: fetchModelCommand },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(13)} ${c.summary}`);
  return `usage: pagedllm <command> [options]\n\ncommands:\n${lines.join('\n')}\n\n${GENERATE_USAGE}`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) throw new UsageError('no command given\n\n' + usage());
  if (name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(usage() + '\n');
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) throw new UsageError(`unknown command '${name}' (try: ${Object.keys(COMMANDS).join(', ')})`);
  await command.run(rest);
  return typeof process.exitCode === 'number' ? process.exitCode : 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`error: ${message}\n`);
    const usageError = err instanceof UsageError || (err instanceof PagedLLMError && err.code === 'invalid_param');
    process.exitCode = usageError ? 2 : 1;
  },
);
