import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Engine tests run a real model on a small CPU machine: generous timeouts, one file at a time so files do not
    // fight over the two cores (each file shares one engine between its tests).
    testTimeout: 180_000,
    hookTimeout: 180_000,
    fileParallelism: false,
    pool: 'forks',
  },
});
