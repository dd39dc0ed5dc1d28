// Download progress for scripts/fetch-model.mjs: on a TTY one redrawn line with a bar, bytes, rate and ETA
// (`[######------] 45.1 / 92.9 MB  11.2 MB/s  ETA 4s`); otherwise (CI logs, pipes) a plain line every 5 s and at
// the end, so logs stay short. The rate counts only this run's bytes (a resumed download does not look fast).

const MB = 1e6;

function formatEta(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  if (seconds < 60) return `${Math.ceil(seconds)}s`;
  return `${Math.floor(seconds / 60)}m${String(Math.ceil(seconds % 60)).padStart(2, '0')}s`;
}

/** Formats one progress line (exported for the tests). */
export function progressLine(label, done, total, bytesPerSec, tty) {
  const size = `${(done / MB).toFixed(1)}${total ? ` / ${(total / MB).toFixed(1)}` : ''} MB`;
  const rate = `${(bytesPerSec / MB).toFixed(1)} MB/s`;
  const eta = total ? `ETA ${formatEta((total - done) / bytesPerSec)}` : '';
  const width = 24;
  const filled = total ? Math.min(width, Math.round((width * done) / total)) : 0;
  const bar = tty && total ? `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ` : '';
  const pct = !tty && total ? ` (${Math.floor((100 * done) / total)}%)` : '';
  return `${label}: ${bar}${size}${pct}  ${rate}  ${eta}`.trimEnd();
}

export function progressReporter(label, { quiet = false, stream = process.stderr } = {}) {
  const tty = Boolean(stream.isTTY);
  let start = Date.now();
  let startBytes = 0;
  let total = 0;
  let last = 0;
  let drawn = false;
  const write = (done, force) => {
    if (quiet) return;
    const now = Date.now();
    if (!force && now - last < (tty ? 150 : 5000)) return;
    last = now;
    const rate = (done - startBytes) / Math.max((now - start) / 1000, 1e-3);
    const line = progressLine(label, done, total, rate, tty);
    stream.write(tty ? `\r\x1b[K${line}` : line + '\n');
    drawn = tty;
  };
  return {
    /** A new attempt begins at `offset` of `size` bytes. */
    resume(offset, size) {
      start = Date.now();
      startBytes = offset;
      total = size;
      write(offset, true);
    },
    update(done) {
      write(done, total > 0 && done === total);
    },
    note(message) {
      if (quiet) return;
      stream.write(`${drawn ? '\n' : ''}${label}: ${message}\n`);
      drawn = false;
    },
    end() {
      if (!quiet && drawn) stream.write('\n');
      drawn = false;
    },
  };
}
