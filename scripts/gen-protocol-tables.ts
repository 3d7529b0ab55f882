/**
 * Regenerates the parts of the docs that are data in the code:
 *
 *   docs/protocol.md    the message table (core/protocol/messages.ts, MESSAGE_TYPES and
 *                       MESSAGE_INFO), the DFA table and Mermaid diagram of each role
 *                       (core/protocol/dfa.ts) and the wire error-code table (core/errors.ts, WIRE_ERRORS)
 *   docs/operations.md  the local error-code table (core/errors.ts, LOCAL_ERRORS) and the load
 *                       balancer's health states and transitions (core/health/states.ts)
 *
 * Each generated part sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` comments;
 * everything outside the markers is hand-written and left alone.
 *
 *   node --import tsx scripts/gen-protocol-tables.ts          rewrite the docs in place
 *   node --import tsx scripts/gen-protocol-tables.ts --check  exit 1 when a doc is stale
 *
 * The render functions are exported for test/dfa.test.ts and test/errors.test.ts.
 */
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resolve, dirname } from 'node:path';
import { TABLES, STATES, INITIAL_STATE, type Role, type DfaEvent, type Table } from '../core/protocol/dfa.ts';
import { WIRE_ERRORS, LOCAL_ERRORS, type WireErrorName, type LocalErrorCode } from '../core/errors.ts';
import { MESSAGE_TYPES, MESSAGE_INFO, MESSAGE_NAMES } from '../core/protocol/messages.ts';
import { HEALTH_STATES, HEALTH_EVENTS, HEALTH_EVENT_NAMES, GUARDS, RULES, STATE_MEANING, type GuardName } from '../core/health/states.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const PROTOCOL_DOC = resolve(ROOT, 'docs/protocol.md');
export const OPERATIONS_DOC = resolve(ROOT, 'docs/operations.md');

/** Marker names of the generated parts of docs/protocol.md. */
export const PROTOCOL_SECTIONS = ['message-types', 'dfa:server', 'dfa:client', 'dfa:server-diagram', 'dfa:client-diagram', 'wire-errors'] as const;
/** Marker names of the generated parts of docs/operations.md. */
export const OPERATIONS_SECTIONS = ['local-errors', 'health-states'] as const;
export type SectionName = (typeof PROTOCOL_SECTIONS)[number] | (typeof OPERATIONS_SECTIONS)[number];

export const beginMarker = (name: string): string => `<!-- ${name}:begin -->`;
export const endMarker = (name: string): string => `<!-- ${name}:end -->`;

const cell = (text: string): string => text.replace(/\|/g, '\\|');

/** The (state, event, next) rows of a role's table: states in table order, events in key order. */
export function dfaRows(role: Role): Array<{ state: string; event: DfaEvent; next: string }> {
  const table = TABLES[role] as Table<string>;
  const rows: Array<{ state: string; event: DfaEvent; next: string }> = [];
  for (const state of STATES[role]) {
    for (const [event, next] of Object.entries(table[state] ?? {}) as Array<[DfaEvent, string]>) {
      rows.push({ state, event, next });
    }
  }
  return rows;
}

/** The Markdown transition table of a role, followed by the sentence on everything else. */
export function renderDfaTable(role: Role): string {
  const lines = ['| State | Event | Next state |', '| --- | --- | --- |'];
  for (const r of dfaRows(role)) lines.push(`| ${r.state} | \`${r.event}\` | ${r.next} |`);
  lines.push(
    '',
    'Every received message not listed for a state is answered with ERROR 105 UNEXPECTED_MESSAGE and the ' +
      'connection closes; the connection closing for any reason moves any state to CLOSED.',
  );
  return lines.join('\n');
}

/** A Mermaid stateDiagram-v2 of a role: one edge per (state, next state), labelled with its events. */
export function renderDfaDiagram(role: Role): string {
  const edges = new Map<string, string[]>();
  for (const r of dfaRows(role)) {
    const key = `${r.state} --> ${r.next}`;
    const label = r.event.replace(':', ' ');
    edges.set(key, [...(edges.get(key) ?? []), label]);
  }
  const lines = ['```mermaid', 'stateDiagram-v2', `    [*] --> ${INITIAL_STATE[role]}`];
  for (const [edge, labels] of edges) lines.push(`    ${edge} : ${labels.join(', ')}`);
  lines.push('    CLOSED --> [*]', '```');
  return lines.join('\n');
}

/** The message table: type byte, name, who sends it, what it is; then the unassigned type bytes. */
export function renderMessageTypes(): string {
  const hex = (n: number) => `0x${n.toString(16).padStart(2, '0')}`;
  const lines = ['| Type | Name | Direction | Kind |', '| --- | --- | --- | --- |'];
  for (const name of MESSAGE_NAMES) lines.push(`| \`${hex(MESSAGE_TYPES[name])}\` | ${name} | ${MESSAGE_INFO[name].direction} | ${cell(MESSAGE_INFO[name].kind)} |`);
  const last = Math.max(...Object.values(MESSAGE_TYPES));
  lines.push('', `Type bytes \`0x00\` and \`${hex(last + 1)}\`–\`0xff\` are unassigned: ERROR 103.`);
  return lines.join('\n');
}

/** The wire error-code table: code, error name, meaning. */
export function renderWireErrorTable(): string {
  const lines = ['| Code | Name | Meaning |', '| --- | --- | --- |'];
  for (const name of Object.keys(WIRE_ERRORS) as WireErrorName[]) {
    const e = WIRE_ERRORS[name];
    lines.push(`| ${e.wire} | \`QHCP_ERR_${name}\` | ${cell(e.description)} |`);
  }
  return lines.join('\n');
}

/** The local (never on the wire) error-code table. */
export function renderLocalErrorTable(): string {
  const lines = ['| Code | Meaning |', '| --- | --- |'];
  for (const code of Object.keys(LOCAL_ERRORS) as LocalErrorCode[]) lines.push(`| \`${code}\` | ${cell(LOCAL_ERRORS[code])} |`);
  return lines.join('\n');
}

/**
 * The load balancer's health states: what each means, the transitions (first matching row wins),
 * the events and the guards (core/health/states.ts).
 */
export function renderHealthStates(): string {
  const lines = ['| State | In rotation | Meaning |', '| --- | --- | --- |'];
  for (const s of HEALTH_STATES) lines.push(`| ${s} | ${STATE_MEANING[s].rotation} | ${cell(STATE_MEANING[s].text)} |`);
  lines.push('', '| From | Event | Guard | To | Reason |', '| --- | --- | --- | --- | --- |');
  for (const r of RULES) {
    const events = r.on.map((e) => `\`${e}\``).join(', ');
    const guard = (r.when ?? []).map((g) => `\`${g}\``).join(' and ') || '-';
    lines.push(`| ${r.from.join(', ')} | ${events} | ${guard} | ${r.to} | \`${cell(r.why)}\` |`);
  }
  lines.push(
    '',
    'For a state and an event, the first row whose guards all hold is taken; a row whose target is the',
    'state itself keeps it; an event with no matching row leaves the state as it is. In a reason,',
    '`{detail}` is the event\'s detail (": " and the agent\'s reason or the last error, when there is one).',
    '',
    '| Event | When |',
    '| --- | --- |',
  );
  for (const e of HEALTH_EVENT_NAMES) lines.push(`| \`${e}\` | ${cell(HEALTH_EVENTS[e])} |`);
  lines.push('', '| Guard | Holds when |', '| --- | --- |');
  for (const g of Object.keys(GUARDS) as GuardName[]) lines.push(`| \`${g}\` | ${cell(GUARDS[g].text)} |`);
  return lines.join('\n');
}

/** The generated text of one marked section. */
export function renderSection(name: SectionName): string {
  switch (name) {
    case 'message-types':
      return renderMessageTypes();
    case 'dfa:server':
      return renderDfaTable('server');
    case 'dfa:client':
      return renderDfaTable('client');
    case 'dfa:server-diagram':
      return renderDfaDiagram('server');
    case 'dfa:client-diagram':
      return renderDfaDiagram('client');
    case 'wire-errors':
      return renderWireErrorTable();
    case 'local-errors':
      return renderLocalErrorTable();
    case 'health-states':
      return renderHealthStates();
  }
}

function markerRange(doc: string, name: string): { start: number; end: number } {
  const begin = beginMarker(name);
  const end = endMarker(name);
  const b = doc.indexOf(begin);
  const e = doc.indexOf(end);
  if (b < 0 || e < 0 || e < b) throw new Error(`markers ${begin} ... ${end} not found (in that order)`);
  if (doc.indexOf(begin, b + 1) >= 0 || doc.indexOf(end, e + 1) >= 0) throw new Error(`markers of ${name} appear more than once`);
  return { start: b + begin.length, end: e };
}

/** The text between a section's markers, without the newlines that frame it. */
export function extractSection(doc: string, name: string): string {
  const { start, end } = markerRange(doc, name);
  return doc.slice(start, end).replace(/^\r?\n/, '').replace(/\r?\n$/, '');
}

/** `doc` with the text between a section's markers replaced by `content`. */
export function replaceSection(doc: string, name: string, content: string): string {
  const { start, end } = markerRange(doc, name);
  return `${doc.slice(0, start)}\n${content}\n${doc.slice(end)}`;
}

/** `doc` with every named section regenerated. */
export function regenerate(doc: string, sections: readonly SectionName[]): string {
  let out = doc;
  for (const name of sections) out = replaceSection(out, name, renderSection(name));
  return out;
}

/** The minimal docs/operations.md written when none exists yet. */
export function operationsSkeleton(): string {
  return [
    '# Operating qhcp',
    '',
    '## Error codes (local)',
    '',
    'Local errors never go on the wire: they are what the `qhcp` command, the config loader and the',
    'plugin host report, each with a stable `code` string (match on it, not on the message). The',
    'numeric codes that travel in ERROR frames are listed in [protocol.md](protocol.md#error-codes).',
    '',
    beginMarker('local-errors'),
    renderLocalErrorTable(),
    endMarker('local-errors'),
    '',
    '## Health states',
    '',
    beginMarker('health-states'),
    renderHealthStates(),
    endMarker('health-states'),
    '',
  ].join('\n');
}

/** Regenerates (or, with `check`, compares) the docs; returns the files that differ. */
export function run(check: boolean): string[] {
  const stale: string[] = [];
  const jobs: Array<[string, readonly SectionName[]]> = [
    [PROTOCOL_DOC, PROTOCOL_SECTIONS],
    [OPERATIONS_DOC, OPERATIONS_SECTIONS],
  ];
  for (const [file, sections] of jobs) {
    let before = '';
    let after: string;
    if (existsSync(file)) {
      before = readFileSync(file, 'utf8');
      // operations.md is mostly hand-written: without our markers, leave it alone.
      if (file === OPERATIONS_DOC && !before.includes(beginMarker('local-errors'))) continue;
      after = regenerate(before, sections);
    } else if (file === OPERATIONS_DOC) {
      after = operationsSkeleton();
    } else {
      throw new Error(`${file} does not exist`);
    }
    if (after === before) continue;
    stale.push(file);
    if (!check) writeFileSync(file, after);
  }
  return stale;
}

const invokedDirectly = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (invokedDirectly) {
  const check = process.argv.includes('--check');
  try {
    const stale = run(check);
    for (const f of stale) console.log(`${check ? 'out of date' : 'rewrote'}: ${f}`);
    if (check && stale.length > 0) {
      console.error('run `npm run docs:protocol` to regenerate');
      process.exit(1);
    }
  } catch (e) {
    console.error(`gen-protocol-tables: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(2);
  }
}
