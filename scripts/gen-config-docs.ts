/**
 * Regenerates the two generated sections of docs/configuration.md from CONFIG_SCHEMA (the one
 * place a top-level option is declared): the table of every key (`config-keys`) and the schema
 * itself (`config-schema`). Everything else in the file is hand-written and left alone.
 *
 *   npm run docs:config            rewrite the doc in place
 *   npm run docs:config -- --check exit 1 when it is stale
 *
 * Exported for test/config.test.ts.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resolve, dirname } from 'node:path';
import { CONFIG_SCHEMA, jsonSchema, optionMeta, type ConfigKey } from '../core/config/config.ts';
import { flagOf } from '../core/cli/cli.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const CONFIG_DOC = resolve(ROOT, 'docs/configuration.md');

interface Schema {
  type?: string;
  enum?: readonly unknown[];
  anyOf?: readonly Schema[];
  items?: Schema | readonly Schema[];
  properties?: Record<string, Schema>;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  description?: string;
}

const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
const range = (s: Schema) => (s.minimum !== undefined && s.maximum !== undefined ? `, ${s.minimum}-${s.maximum}` : '');

function shape(s: Schema): string {
  if (s.anyOf) return s.anyOf.map(shape).join(' or ');
  if (s.type === 'object') return s.properties ? `{ ${Object.keys(s.properties).join(', ')} }` : 'object';
  if (s.type === 'array') return 'list';
  return s.type ?? 'any';
}

/** The type column: from the schema, worded by the option's kind. */
export function typeText(key: ConfigKey): string {
  const s = CONFIG_SCHEMA.properties[key] as Schema;
  const kind = optionMeta(key).kind;
  if (s.enum) return s.enum.map((v) => `\`${String(v)}\``).join(', ');
  switch (kind) {
    case 'seconds':
      return `seconds${range(s)}`;
    case 'port':
      return `port${range(s)}`;
    case 'ip':
      return 'IP address';
    case 'path':
      return 'path';
    case 'bytes':
      return `bytes${range(s)}`;
    case 'fraction':
      return `fraction${range(s)}`;
  }
  if (s.type === 'array') return s.items && !Array.isArray(s.items) ? `list of ${shape(s.items as Schema)}` : 'list';
  if (s.type === 'string') return s.minLength !== undefined && s.maxLength !== undefined ? `string, ${s.minLength}-${s.maxLength} chars` : 'string';
  if (s.type === 'integer') return `integer${range(s)}`;
  if (s.anyOf) return shape(s);
  return s.type ?? 'any';
}

function flagText(key: ConfigKey): string {
  const meta = optionMeta(key);
  if (!meta.flag) return '—';
  const flag = flagOf(key);
  const keys = (Object.keys(CONFIG_SCHEMA.properties) as ConfigKey[]).filter((k) => optionMeta(k).flag && flagOf(k) === flag);
  const roles = keys.length > 1 ? ` (${meta.flag.roles.map((r) => (r === 'loadbalancer' ? 'load balancer' : r)).join(', ')})` : '';
  return `\`${flag}\`${roles}${meta.kind === 'list' ? ' (comma-separated)' : ''}`;
}

/** The `config-keys` table. */
export function keysTable(): string {
  const rows = (Object.keys(CONFIG_SCHEMA.properties) as ConfigKey[]).map((key) => {
    const s = CONFIG_SCHEMA.properties[key] as Schema;
    const meta = optionMeta(key);
    const dflt = meta.defaultText ?? (s.default === undefined ? 'none' : `\`${JSON.stringify(s.default)}\``);
    return `| \`${key}\` | ${cell(typeText(key))} | ${cell(dflt)} | ${flagText(key)} | ${cell(s.description ?? '')} |`;
  });
  return ['| key | type | default | flag | meaning |', '| --- | --- | --- | --- | --- |', ...rows].join('\n');
}

export const schemaBlock = (): string => `\`\`\`json\n${JSON.stringify(jsonSchema(), null, 2)}\n\`\`\``;

/** The doc with both generated sections rewritten. @throws when a section's markers are missing */
export function regenerate(doc: string): string {
  let out = doc;
  for (const [name, body] of [
    ['config-keys', keysTable()],
    ['config-schema', schemaBlock()],
  ] as const) {
    const b = out.indexOf(`<!-- ${name}:begin -->`);
    const e = out.indexOf(`<!-- ${name}:end -->`);
    if (b < 0 || e < b) throw new Error(`docs/configuration.md has no <!-- ${name}:begin --> ... <!-- ${name}:end --> section`);
    out = `${out.slice(0, b + `<!-- ${name}:begin -->`.length)}\n${body}\n${out.slice(e)}`;
  }
  return out;
}

const invokedDirectly = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (invokedDirectly) {
  const before = readFileSync(CONFIG_DOC, 'utf8');
  const after = regenerate(before);
  if (after === before) console.log('docs/configuration.md is up to date');
  else if (process.argv.includes('--check')) {
    console.log('out of date: docs/configuration.md (run npm run docs:config)');
    process.exit(1);
  } else {
    writeFileSync(CONFIG_DOC, after);
    console.log('rewrote: docs/configuration.md');
  }
}
