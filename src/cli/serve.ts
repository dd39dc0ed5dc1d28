/**
 * `pagedllm serve`: the OpenAI-compatible server. Flags are vLLM's (see `SERVE_USAGE`); bad values are usage
 * errors reported before the model loads. SIGTERM/SIGINT shut down gracefully (exit 0). If the engine thread dies,
 * the process exits 1 instead of hanging (a watchdog polls `llm.isAlive` every second).
 */

import { parseServeArgs } from '../server/options.js';
import { startServer } from '../server/serve.js';

export { SERVE_USAGE } from '../server/options.js';

export async function serveCommand(argv: string[]): Promise<void> {
  const options = parseServeArgs(argv);
  if (options === null) return;
  const running = await startServer({ ...options, handleSignals: true });
  const watchdog = setInterval(() => {
    if (!running.llm.isAlive) {
      clearInterval(watchdog);
      process.stderr.write('error: the engine stopped unexpectedly; exiting\n');
      running.server.closeAllConnections();
      process.exit(1);
    }
  }, 1000);
  watchdog.unref();
  // Keep running until a signal ends the process.
  await new Promise<never>(() => {});
}
