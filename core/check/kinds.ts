/**
 * Turns the config's `checks` and `services` into runnable checks: each check's kind is found
 * (a kind registered by a `check` plugin through the `checkKinds` hook, else a built-in loaded
 * on demand from plugins/check/<type>), its options are validated against the kind's schema,
 * and the kind creates it. Every problem is a ConfigError naming the check by its path
 * (`services.web[0].url: ...`), collected before throwing: a check that cannot work stops the
 * agent at start-up (exit 2), it does not fail at run time.
 */
import { dirname, resolve } from 'node:path';
import { Ajv } from 'ajv';
import { ConfigError, errorText } from '../errors.ts';
import { describeAjvErrors } from '../config/config.ts';
import type { Logger } from '../util/log.ts';
import { DEFAULT_SERVICE, type CheckSpec } from './runner.ts';
import { BUILTIN_CHECK_KINDS, loadBuiltinCheckKind } from './builtin.ts';
import type { CheckKind, CommonCheckOptions } from './types.ts';

/** The runner's own options; everything else in a check entry belongs to its kind. */
export const COMMON_CHECK_KEYS = ['type', 'name', 'interval', 'timeout', 'rise', 'fall'] as const;
export const CHECK_DEFAULTS = { interval: 5, rise: 2, fall: 3 } as const;

/** A check entry as the config holds it. */
export type CheckEntry = CommonCheckOptions & Record<string, unknown>;

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true });

function isKind(k: unknown): k is CheckKind {
  const o = k as Partial<CheckKind> | null;
  return !!o && typeof o === 'object' && typeof o.type === 'string' && typeof o.create === 'function' && !!o.schema && typeof o.schema === 'object';
}

/** Loads a built-in kind. @throws Error when the module is missing or is not a CheckKind */
async function loadBuiltin(type: string): Promise<CheckKind> {
  const kind = await loadBuiltinCheckKind(type);
  if (!isKind(kind)) throw new Error(`plugins/check/${type} does not export a check kind`);
  return kind;
}

/** The effective timeout (s) of a check: given, or half its interval capped at 5 s. */
export function checkTimeout(entry: { interval?: number; timeout?: number }): number {
  return entry.timeout ?? Math.min((entry.interval ?? CHECK_DEFAULTS.interval) / 2, 5);
}

export interface BuildChecksOptions {
  checks?: readonly CheckEntry[] | undefined;
  services?: Readonly<Record<string, readonly CheckEntry[]>> | undefined;
  /** Kinds from `check` plugins (the `checkKinds` hook); they win over built-ins of the same type. */
  userKinds: readonly unknown[];
  logger: Logger;
  configFile?: string | undefined;
}

/**
 * Resolves, validates and creates every configured check.
 * @throws ConfigError listing every problem by path
 */
export async function buildChecks(o: BuildChecksOptions): Promise<{ specs: CheckSpec[]; services: string[] }> {
  const problems: string[] = [];
  const kinds = new Map<string, CheckKind>();
  for (const k of o.userKinds) {
    if (!isKind(k)) {
      problems.push(`check plugin: registered something that is not a check kind (needs type, schema, create())`);
      continue;
    }
    if (kinds.has(k.type)) problems.push(`check plugin: check type "${k.type}" is registered twice`);
    kinds.set(k.type, k);
  }
  const baseDir = o.configFile ? dirname(o.configFile) : process.cwd();
  const groups: Array<{ service: string; path: string; entries: readonly CheckEntry[] }> = [];
  if (o.checks?.length) groups.push({ service: DEFAULT_SERVICE, path: 'checks', entries: o.checks });
  for (const [service, entries] of Object.entries(o.services ?? {})) groups.push({ service, path: `services.${service}`, entries });

  const specs: CheckSpec[] = [];
  for (const g of groups) {
    const names = new Set<string>();
    const typeCount = new Map<string, number>();
    for (const e of g.entries) typeCount.set(e.type, (typeCount.get(e.type) ?? 0) + 1);
    const typeSeen = new Map<string, number>();
    for (let i = 0; i < g.entries.length; i++) {
      const entry = g.entries[i]!;
      const path = `${g.path}[${i}]`;
      const n = (typeSeen.get(entry.type) ?? 0) + 1;
      typeSeen.set(entry.type, n);
      const name = entry.name ?? (typeCount.get(entry.type)! > 1 ? `${entry.type}#${n}` : entry.type);
      if (names.has(name)) {
        problems.push(`${path}.name: "${name}" is used twice in ${g.service === DEFAULT_SERVICE ? 'checks' : `service ${g.service}`}`);
        continue;
      }
      names.add(name);
      let kind = kinds.get(entry.type);
      if (!kind) {
        if (!Object.hasOwn(BUILTIN_CHECK_KINDS, entry.type)) {
          const known = [...new Set([...Object.keys(BUILTIN_CHECK_KINDS), ...kinds.keys()])].join(', ');
          problems.push(`${path}.type: unknown check type "${entry.type}" (known: ${known}; others come from a plugin of family "check")`);
          continue;
        }
        try {
          kind = await loadBuiltin(entry.type);
          kinds.set(entry.type, kind);
        } catch (e) {
          problems.push(`${path}.type: check type "${entry.type}" cannot be loaded: ${errorText(e)}`);
          continue;
        }
      }
      const options: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(entry)) if (!(COMMON_CHECK_KEYS as readonly string[]).includes(k)) options[k] = copyPlain(v);
      const validate = ajv.compile(kind.schema);
      if (!validate(options)) {
        problems.push(...describeAjvErrors(validate.errors, options, path));
        continue;
      }
      const interval = entry.interval ?? CHECK_DEFAULTS.interval;
      const timeout = checkTimeout(entry);
      try {
        const check = kind.create(options, {
          logger: o.logger,
          resolvePath: (p: string) => resolve(baseDir, p),
        });
        if (!check || typeof check.run !== 'function') throw new Error(`check type "${entry.type}" created no check (run() missing)`);
        specs.push({
          service: g.service,
          path,
          name,
          type: entry.type,
          intervalMs: Math.round(interval * 1000),
          timeoutMs: Math.max(1, Math.round(timeout * 1000)),
          rise: entry.rise ?? CHECK_DEFAULTS.rise,
          fall: entry.fall ?? CHECK_DEFAULTS.fall,
          check,
        });
      } catch (e) {
        if (e instanceof ConfigError) problems.push(...e.problems.map((p) => (p.startsWith(path) ? p : `${path}: ${p}`)));
        else problems.push(`${path}: ${errorText(e)}`);
      }
    }
  }
  if (problems.length) {
    // Checks already created hold nothing yet (no run has started), but release what they opened.
    await Promise.all(specs.map(async (s) => s.check.close?.())).catch(() => undefined);
    throw new ConfigError(problems);
  }
  const services = groups.map((g) => g.service);
  return { specs, services };
}

function copyPlain<T>(v: T): T {
  if (Array.isArray(v)) return v.map(copyPlain) as T;
  if (v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, copyPlain(x)])) as T;
  }
  return v;
}
