/**
 * Configuration: defaults (in the schema) < config file (found by cosmiconfig) < flags.
 * Validated by ajv against the core schema; each plugin's options against the plugin's own
 * schema (plugins.ts). Every problem is reported by path, then the result is deep-frozen.
 */
import { pathToFileURL } from 'node:url';
import { statSync } from 'node:fs';
import { resolve, dirname } from 'node:path';
import { cosmiconfig, type Loader } from 'cosmiconfig';
import { CONFIG_SEARCH_PLACES } from './places.ts';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { ConfigError, LocalError, errorText } from '../errors.ts';
import { importUserModule } from './user-modules.ts';
import { CONFIG_SCHEMA, type QhcpConfig, type QhcpUserConfig } from './schema.ts';

// The schema, its types and its small helpers live in schema.ts (cheap to import: the CLI
// builds its flags from it); this module adds finding, merging and validating a config.
export * from './schema.ts';

// verbose: errors carry their parent schema, so an unknown key can suggest the known one.
// Compiled on the first config built (not when the CLI merely lists its flags).
let validateCore: ValidateFunction | undefined;
const coreValidator = () => (validateCore ??= new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true }).compile(CONFIG_SCHEMA));

/** "/plugins/1/options/interval" -> "plugins[1].options.interval". */
export function jsonPath(instancePath: string, prefix = ''): string {
  let out = prefix;
  for (const part of instancePath.split('/').slice(1)) {
    const p = part.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(p) ? `[${p}]` : out ? `.${p}` : p;
  }
  return out || '(root)';
}

/**
 * One line per problem, e.g. `plugins[1].options.interval: must be >= 0.1 (got -3)`.
 * An anyOf/oneOf whose branches all fail on the value's type becomes one line
 * (`servers[0]: must be string or object (got 5)`); when a branch matched the type, only
 * that branch's own errors are listed.
 */
export function describeAjvErrors(errors: ErrorObject[] | null | undefined, data: unknown, prefix = ''): string[] {
  const all = errors ?? [];
  const out = new Set<string>();
  const dropped = new Set<ErrorObject>();
  const summary = new Map<ErrorObject, string>();
  for (const a of all) {
    if (a.keyword !== 'anyOf' && a.keyword !== 'oneOf') continue;
    const base = `${a.schemaPath}/`;
    const branches = new Map<string, ErrorObject[]>();
    for (const e of all) {
      if (e === a || !e.schemaPath.startsWith(base)) continue;
      if (e.instancePath !== a.instancePath && !e.instancePath.startsWith(`${a.instancePath}/`)) continue; // another item, same schema
      const b = e.schemaPath.slice(base.length).split('/')[0]!;
      branches.set(b, [...(branches.get(b) ?? []), e]);
    }
    const typeMiss = (errs: ErrorObject[]) => errs.find((e) => e.keyword === 'type' && e.instancePath === a.instancePath);
    const missed = [...branches.values()].filter((errs) => typeMiss(errs));
    for (const errs of missed) for (const e of errs) dropped.add(e);
    if (branches.size > 0 && missed.length === branches.size) {
      const types = missed.flatMap((errs) => [(typeMiss(errs)!.params as { type: string | string[] }).type].flat());
      summary.set(a, `must be ${[...new Set(types)].join(' or ')}`);
    }
  }
  for (const e of all) {
    if (dropped.has(e) || e.keyword === 'if') continue;
    if ((e.keyword === 'anyOf' || e.keyword === 'oneOf') && !summary.has(e) && !(e.params as { passingSchemas?: unknown }).passingSchemas) continue;
    let path = jsonPath(e.instancePath, prefix);
    let msg = summary.get(e) ?? e.message ?? 'is invalid';
    if (e.keyword === 'additionalProperties') {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      path = path === '(root)' ? extra : `${path}.${extra}`;
      const known = Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {});
      const hint = closest(extra, known);
      msg = `is not a known option${hint ? ` (did you mean ${hint}?)` : ''}`;
    } else if (e.keyword === 'enum') {
      msg = `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    }
    const got = e.keyword === 'additionalProperties' || e.keyword === 'required' ? undefined : valueAt(data, e.instancePath);
    out.add(`${path}: ${msg}${got !== undefined ? ` (got ${JSON.stringify(got)})` : ''}`);
  }
  return [...out];
}

/** The known key a mistyped one most likely meant: same letters ignoring case, - and _, or at most 2 edits away. */
export function closest(word: string, known: string[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[-_]/g, '');
  const w = norm(word);
  let best: string | undefined;
  let bestD = w.length >= 8 ? 3 : w.length >= 5 ? 2 : 1; // short keys: no edits, only case and dashes
  for (const k of known) {
    const d = editDistance(w, norm(k));
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return 3;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

function valueAt(data: unknown, pointer: string): unknown {
  let cur: unknown = data;
  for (const part of pointer.split('/').slice(1)) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  if (typeof cur === 'object' && cur !== null) return undefined;
  return cur;
}

export type Source = 'default' | 'flag' | `file ${string}`;

export interface LoadedConfig {
  config: Readonly<QhcpConfig>;
  /** Where each top-level value came from. */
  sources: Record<string, Source>;
  /** The file it came from, if any. */
  file: string | undefined;
}

const importLoader: Loader = async (filepath) => {
  // A reload (SIGHUP) must see the file as it is now, not the module cached when it was first
  // imported: the modification time in the URL makes a changed file a new module (the user-module
  // hooks read and transform it afresh; modules it imports stay cached).
  const mtime = statSync(filepath).mtimeMs;
  const mod = await importUserModule(`${pathToFileURL(filepath).href}?mtime=${mtime}`);
  return mod.default ?? mod;
};

/**
 * Finds the config file: `--config FILE`, or qhcp.config.{ts,js,mjs,json}, .qhcprc(.json),
 * package.json#qhcp in the working directory.
 * @throws LocalError QHCP_ERR_CONFIG_LOAD
 */
export async function findConfigFile(opts: { file?: string; cwd?: string }): Promise<{ data: unknown; file: string | undefined }> {
  const explorer = cosmiconfig('qhcp', {
    // First found wins: the dedicated file, then the rc file, then package.json#qhcp.
    searchPlaces: [...CONFIG_SEARCH_PLACES],
    loaders: { '.ts': importLoader, '.mts': importLoader, '.js': importLoader, '.mjs': importLoader },
    searchStrategy: 'none',
  });
  try {
    const result = opts.file ? await explorer.load(resolve(opts.cwd ?? process.cwd(), opts.file)) : await explorer.search(opts.cwd ?? process.cwd());
    if (!result) return { data: undefined, file: undefined };
    return { data: result.config, file: result.filepath };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what = opts.file ?? 'configuration file';
    throw new LocalError('QHCP_ERR_CONFIG_LOAD', code === 'ENOENT' ? `config file ${what} not found` : `cannot load ${what}: ${errorText(e)}`, { cause: e });
  }
}

/**
 * Merges defaults < file < flags, validates, freezes.
 * @throws ConfigError listing every problem by path
 */
export function buildConfig(fileData: unknown, file: string | undefined, flags: QhcpUserConfig): LoadedConfig {
  if (fileData !== undefined && (fileData === null || typeof fileData !== 'object' || Array.isArray(fileData))) {
    throw new ConfigError([`${file ?? 'config'}: must export an object`]);
  }
  const fromFile = (fileData ?? {}) as Record<string, unknown>;
  const merged: Record<string, unknown> = structuredCloneSafe(fromFile);
  const sources: Record<string, Source> = {};
  for (const k of Object.keys(fromFile)) sources[k] = `file ${file}`;
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined) continue;
    merged[k] = v;
    sources[k] = 'flag';
  }
  const validate = coreValidator();
  if (!validate(merged)) {
    throw new ConfigError(describeAjvErrors(validate.errors, merged));
  }
  for (const k of Object.keys(CONFIG_SCHEMA.properties)) if (!(k in sources) && k in merged) sources[k] = 'default';
  const config = merged as unknown as QhcpConfig;
  if (config.checkTimeout !== undefined && config.checkTimeout >= config.checkInterval) {
    throw new ConfigError([`checkTimeout: must be shorter than checkInterval (${config.checkInterval} s) (got ${config.checkTimeout})`]);
  }
  if (file) {
    // Paths in a config file are relative to the file.
    for (const k of ['certFile', 'keyFile', 'caFile', 'httpTokenFile', 'stateFile'] as const) {
      if (sources[k]?.startsWith('file ') && config[k]) config[k] = resolve(dirname(file), config[k]!);
    }
    if (sources.controlSocket?.startsWith('file ') && typeof config.controlSocket === 'string') config.controlSocket = resolve(dirname(file), config.controlSocket);
  }
  return { config: deepFreeze(config), sources, file };
}

/** Clones plain data but keeps functions and class instances (inline plugins) as they are. */
function structuredCloneSafe(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    out[k] = Array.isArray(v) ? v.slice() : v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype ? { ...v } : v;
  }
  return out;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    const proto = Object.getPrototypeOf(o);
    if (proto !== Object.prototype && proto !== Array.prototype && proto !== null) return o;
    // Inline plugins keep their own mutable state.
    if (typeof (o as { apply?: unknown }).apply === 'function') return o;
    Object.freeze(o);
    for (const v of Object.values(o as object)) deepFreeze(v);
  }
  return o;
}
