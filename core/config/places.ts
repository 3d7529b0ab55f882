/**
 * Where a config file is looked for (cosmiconfig's search places, first found wins), and a cheap
 * check whether any is there: a short command (`qhcp status`) skips loading the config machinery
 * (cosmiconfig, ajv) when the directory holds none.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The dedicated file, then the rc file, then package.json#qhcp. */
export const CONFIG_SEARCH_PLACES = [
  'qhcp.config.ts',
  'qhcp.config.mts',
  'qhcp.config.js',
  'qhcp.config.mjs',
  'qhcp.config.json',
  '.qhcprc',
  '.qhcprc.json',
  '.qhcprc.yaml',
  'package.json',
] as const;

/** Whether `dir` may hold a config file (a package.json counts only with a `qhcp` key, or when it does not parse). */
export function mayHoldConfig(dir: string): boolean {
  for (const place of CONFIG_SEARCH_PLACES) {
    const p = join(dir, place);
    if (!existsSync(p)) continue;
    if (place !== 'package.json') return true;
    try {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as unknown;
      if (pkg && typeof pkg === 'object' && Object.hasOwn(pkg, 'qhcp')) return true;
    } catch {
      return true;
    }
  }
  return false;
}
