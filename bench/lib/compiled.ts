/**
 * The benchmark measures qhcp as it ships: compiled JavaScript (`npm run build` -> dist/), not
 * the TypeScript sources through tsx, whose loader adds tens of MB of RSS and CPU at start-up
 * to every process it runs in. A bench helper script (bench/<name>.ts, e.g. the load balancer
 * host) is transpiled on its own to plain JavaScript whose imports of core/ and plugins/ point
 * at dist/, and forked without tsx. A helper that imports other TypeScript (bench/lib/*) keeps
 * running through tsx.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { transformSync } from 'esbuild';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

let built: { problem: string | undefined } | undefined;

/** `npm run build`, once per benchmark process (bounded); the reason when it failed. */
export function buildDist(): string | undefined {
  if (!built) {
    const r = spawnSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['run', 'build'], { cwd: ROOT, encoding: 'utf8', timeout: 300_000 });
    built = { problem: r.status === 0 ? undefined : `npm run build failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout || '').slice(-300)}` };
  }
  return built.problem;
}

/** `from '../core/x.ts'` (from bench/) -> the compiled file's URL in dist/. */
const SOURCE_IMPORT = /(from\s+|import\s*\(\s*)(['"])\.\.\/((?:core|plugins)\/[^'"]+)\.ts\2/g;
/** Any relative .ts import left: the script needs tsx. */
const TS_IMPORT = /(from\s+|import\s*\(\s*)['"]\.{1,2}\/[^'"]+\.ts['"]/;

/**
 * bench/<file> as plain JavaScript importing dist/, written to a temporary directory; its path,
 * or undefined when the build failed or the script imports other TypeScript.
 */
export function compiledHost(file: string): string | undefined {
  if (process.env.QHCP_BENCH_TSX === '1' || buildDist()) return undefined;
  const source = readFileSync(join(ROOT, 'bench', file), 'utf8');
  const js = transformSync(source, { loader: 'ts', format: 'esm', target: 'node20' }).code.replace(
    SOURCE_IMPORT,
    (_m, lead: string, q: string, path: string) => `${lead}${q}${pathToFileURL(join(ROOT, 'dist', `${path}.js`)).href}${q}`,
  );
  if (TS_IMPORT.test(js)) return undefined;
  // Inside the project (node_modules/.cache), so the script's own package imports resolve as
  // they do from bench/.
  const dir = join(ROOT, 'node_modules', '.cache', 'qhcp-bench-hosts');
  mkdirSync(dir, { recursive: true });
  const out = join(dir, file.replace(/\.ts$/, '.mjs'));
  writeFileSync(out, js);
  return out;
}
