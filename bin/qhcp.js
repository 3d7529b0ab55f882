#!/usr/bin/env node
// The qhcp binary.
// - Installed package (npm install -g, or as a dependency): runs the compiled JavaScript in
//   dist/, built by `prepack` when the tarball is made. No TypeScript tooling is needed.
// - Development checkout (the TypeScript sources sit beside this file): runs the sources
//   through tsx (a devDependency), so tests and `npm start` always see the current code without
//   a build. QHCP_DIST=1 runs dist/ there too (after `npm run build`), as the package does.
import { existsSync } from 'node:fs';

const sources = new URL('../core/cli/main.ts', import.meta.url);
const compiled = new URL('../dist/core/cli/main.js', import.meta.url);

let tsx;
if (process.env.QHCP_DIST !== '1' && existsSync(sources)) {
  tsx = await import('tsx/esm/api').catch(() => undefined); // absent after npm ci --omit=dev
}
if (tsx) {
  tsx.register();
  await import(sources.href);
} else if (existsSync(compiled)) {
  // Node >= 22.1 caches compiled code on disk between runs; Node 20 has no such cache for ES
  // modules, and this is a no-op there.
  const { enableCompileCache } = await import('node:module');
  enableCompileCache?.();
  await import(compiled.href);
} else {
  process.stderr.write('qhcp: neither dist/ (run `npm run build`) nor tsx (run `npm install`) is present\n');
  process.exit(1);
}
