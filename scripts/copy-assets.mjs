// Part of `npm run build`: copies the files under core/ and plugins/ that are not TypeScript
// (the status page's HTML, CSS and browser JavaScript) to the same places under dist/, where the
// compiled modules read them. Plain JavaScript so the build needs nothing but Node and tsc.
import { cpSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (!name.endsWith('.ts')) cpSync(p, join('dist', p));
  }
}
for (const dir of ['core', 'plugins']) walk(dir);
