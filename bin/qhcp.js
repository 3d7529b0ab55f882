#!/usr/bin/env node
// The qhcp binary. Runs the TypeScript sources through tsx (no build step needed); when
// `npm run build` has produced dist/, that compiled entry is used instead.
import { existsSync } from 'node:fs';

const built = new URL('../dist/core/cli.js', import.meta.url);
if (existsSync(built)) {
  const { main } = await import(built.href);
  await main();
} else {
  const { register } = await import('tsx/esm/api');
  register();
  const { main } = await import('../core/cli.ts');
  await main();
}
