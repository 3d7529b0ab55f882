/**
 * Regenerates the options table of each built-in plugin in docs/plugins-builtin.md from the
 * plugin's own JSON schema (the schema the loader validates options with), so the docs cannot
 * drift from the code; the same for each built-in check kind (core/check/builtin.ts), whose
 * tables are named `check-TYPE`. Each table sits between `<!-- options:NAME:begin -->` and
 * `<!-- options:NAME:end -->`; everything else in the file is hand-written and left alone.
 *
 *   node --import tsx scripts/gen-plugin-docs.ts          rewrite the doc in place
 *   node --import tsx scripts/gen-plugin-docs.ts --check  exit 1 when it is stale
 *
 * Exported for test/plugins/docs.test.ts.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resolve, dirname } from 'node:path';
import { BUILTIN_PLUGINS } from '../core/plugin/loader.ts';
import { BUILTIN_CHECK_KINDS } from '../core/check/builtin.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const BUILTIN_DOC = resolve(ROOT, 'docs/plugins-builtin.md');

interface Schema {
  type?: string;
  enum?: unknown[];
  const?: unknown;
  anyOf?: Schema[];
  items?: Schema;
  properties?: Record<string, Schema>;
  additionalProperties?: boolean | Schema;
  required?: string[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  pattern?: string;
  description?: string;
}

export interface OptionRow {
  name: string;
  type: string;
  default: string;
  description: string;
}

const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

function typeOf(s: Schema): string {
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(' | ');
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.anyOf) return s.anyOf.map(typeOf).join(' | ');
  if (s.type === 'array') return `${s.items ? typeOf(s.items) : 'any'}[]`;
  if (s.type === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object') return `{ [name]: ${typeOf(s.additionalProperties)} }`;
  let t = s.type ?? 'any';
  if (s.minimum !== undefined || s.maximum !== undefined) t += ` ${s.minimum ?? ''}..${s.maximum ?? ''}`;
  return t;
}

/**
 * One row per option, nested objects flattened to dotted names. An object whose properties all
 * share one schema (system-metrics `sources`) is shown once as `name.<key>.option`.
 */
export function optionRows(schema: Schema, prefix = ''): OptionRow[] {
  const rows: OptionRow[] = [];
  const required = new Set(schema.required ?? []);
  for (const [name, s] of Object.entries(schema.properties ?? {})) {
    const path = prefix + name;
    if (s.type === 'object' && s.properties) {
      const children = Object.values(s.properties);
      if (children.length > 1 && children.every((c) => c === children[0])) {
        rows.push(...optionRows(children[0]!, `${path}.<${Object.keys(s.properties).join('\\|')}>.`));
      } else {
        rows.push(...optionRows(s, `${path}.`));
      }
      continue;
    }
    const dflt = required.has(name) ? '**required**' : s.default === undefined ? '—' : `\`${JSON.stringify(s.default)}\``;
    if (!s.description) throw new Error(`option ${path} has no description in its schema`);
    rows.push({ name: path, type: typeOf(s), default: dflt, description: s.description });
  }
  return rows;
}

export function renderOptionsTable(schema: Schema): string {
  const rows = optionRows(schema);
  if (rows.length === 0) return '_No options._';
  return ['| Option | Type | Default | Meaning |', '| --- | --- | --- | --- |', ...rows.map((r) => `| \`${r.name}\` | ${cell(r.type)} | ${r.default} | ${cell(r.description)} |`)].join('\n');
}

/** The schema of each built-in plugin, by name. */
export async function builtinSchemas(): Promise<Record<string, Schema>> {
  const out: Record<string, Schema> = {};
  for (const [name, path] of Object.entries(BUILTIN_PLUGINS)) {
    const mod = (await import(new URL(`../core/plugin/${path}.ts`, import.meta.url).href)) as { default: { schema?: Schema } };
    out[name] = mod.default.schema ?? {};
  }
  return out;
}

/** The options schema of each built-in check kind, by table name (`check-http`, ...). */
export async function builtinCheckSchemas(): Promise<Record<string, Schema>> {
  const out: Record<string, Schema> = {};
  for (const [type, path] of Object.entries(BUILTIN_CHECK_KINDS)) {
    const mod = (await import(new URL(`../core/check/${path}.ts`, import.meta.url).href)) as { default: { schema: Schema } };
    out[`check-${type}`] = mod.default.schema;
  }
  return out;
}

/** Every table the doc holds: plugins, then check kinds. */
export async function allSchemas(): Promise<Record<string, Schema>> {
  return { ...(await builtinSchemas()), ...(await builtinCheckSchemas()) };
}

export const begin = (name: string) => `<!-- options:${name}:begin -->`;
export const end = (name: string) => `<!-- options:${name}:end -->`;

/** The doc with every plugin's table regenerated. @throws when a plugin has no markers */
export async function regenerate(doc: string): Promise<string> {
  let out = doc;
  for (const [name, schema] of Object.entries(await allSchemas())) {
    const b = out.indexOf(begin(name));
    const e = out.indexOf(end(name));
    if (b < 0 || e < b) throw new Error(`docs/plugins-builtin.md has no ${begin(name)} ... ${end(name)} section`);
    out = `${out.slice(0, b + begin(name).length)}\n${renderOptionsTable(schema)}\n${out.slice(e)}`;
  }
  return out;
}

const invokedDirectly = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (invokedDirectly) {
  const check = process.argv.includes('--check');
  const before = readFileSync(BUILTIN_DOC, 'utf8');
  const after = await regenerate(before);
  if (after === before) {
    console.log('docs/plugins-builtin.md is up to date');
  } else if (check) {
    console.log('out of date: docs/plugins-builtin.md (run node --import tsx scripts/gen-plugin-docs.ts)');
    process.exit(1);
  } else {
    writeFileSync(BUILTIN_DOC, after);
    console.log('rewrote: docs/plugins-builtin.md');
  }
}
