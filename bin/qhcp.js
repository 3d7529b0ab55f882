#!/usr/bin/env node
// The qhcp binary: runs the TypeScript sources through tsx, so no build step is needed.
// After `npm run build`, `node dist/core/main.js` is the same program, compiled.
import { register } from 'tsx/esm/api';

register();
await import('../core/cli/main.ts');
