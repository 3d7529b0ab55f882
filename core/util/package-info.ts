/**
 * qhcp's own package.json, found by walking up from this module: the same code runs as
 * core/util/*.ts (sources), dist/core/util/*.js (compiled) and inside node_modules, at
 * different depths below the package root.
 */
import { readFileSync } from 'node:fs';

export interface PackageInfo {
  name: string;
  version: string;
  /** The package root (file: URL, ends with /). */
  root: URL;
}

let cached: PackageInfo | undefined;

/** @throws Error when no package.json named qhcp is found above this module (a broken install). */
export function packageInfo(): PackageInfo {
  if (cached) return cached;
  let dir = new URL('./', import.meta.url);
  for (let i = 0; i < 6; i++) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('package.json', dir), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'qhcp' && typeof pkg.version === 'string') return (cached = { name: pkg.name, version: pkg.version, root: dir });
    } catch {
      /* not here: one level up */
    }
    dir = new URL('../', dir);
  }
  throw new Error(`cannot find qhcp's package.json above ${import.meta.url}`);
}
