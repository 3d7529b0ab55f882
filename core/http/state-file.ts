/**
 * The load balancer's state file (docs/operations.md, "State file"; HAProxy's
 * server-state-file idea): what operators changed at runtime, so a restarted load balancer
 * keeps it: backends added and removed, each backend's admin state and weight set by hand.
 * Written whole to a temporary file and renamed over the old one (never half-written).
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { LocalError, errorText } from '../errors.ts';

export type AdminState = 'READY' | 'DRAIN' | 'MAINT';

export interface StateDoc {
  version: 1;
  /** Backends added at runtime (not in the configuration), in the order they were added. */
  added: string[];
  /** Configured backends removed at runtime. */
  removed: string[];
  /** Per backend: what was set by hand. */
  backends: Record<string, { admin?: AdminState; weight?: number }>;
}

const SCHEMA = {
  type: 'object',
  required: ['version'],
  properties: {
    version: { const: 1 },
    savedAt: { type: 'string' },
    added: { type: 'array', maxItems: 10000, items: { type: 'string', minLength: 1, maxLength: 300 } },
    removed: { type: 'array', maxItems: 10000, items: { type: 'string', minLength: 1, maxLength: 300 } },
    backends: {
      type: 'object',
      maxProperties: 20000,
      additionalProperties: {
        type: 'object',
        additionalProperties: false,
        properties: { admin: { enum: ['READY', 'DRAIN', 'MAINT'] }, weight: { type: 'integer', minimum: 0, maximum: 1000 } },
      },
    },
  },
} as const;
const validate = new Ajv({ allErrors: true, strict: false }).compile(SCHEMA);

export function emptyState(): StateDoc {
  return { version: 1, added: [], removed: [], backends: {} };
}

/**
 * Reads the state file; a missing file is an empty state.
 * @throws LocalError QHCP_ERR_CONFIG_LOAD for a file that cannot be read or is not a state file
 */
export function loadState(file: string): StateDoc {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return emptyState();
    throw new LocalError('QHCP_ERR_CONFIG_LOAD', `state file ${file}: cannot read: ${errorText(e)}`, { cause: e });
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new LocalError('QHCP_ERR_CONFIG_LOAD', `state file ${file}: not JSON: ${errorText(e)}`, { cause: e });
  }
  if (!validate(data)) {
    const why = (validate.errors ?? []).map((e) => `${e.instancePath || '(root)'} ${e.message}`).slice(0, 5).join('; ');
    throw new LocalError('QHCP_ERR_CONFIG_LOAD', `state file ${file}: not a qhcp state file: ${why}`);
  }
  const d = data as Partial<StateDoc>;
  return { version: 1, added: [...(d.added ?? [])], removed: [...(d.removed ?? [])], backends: { ...(d.backends ?? {}) } };
}

/** Writes the state atomically (temporary file + rename), readable by its owner only. */
export function saveState(file: string, doc: StateDoc): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ ...doc, savedAt: new Date().toISOString() }, null, 2) + '\n', { mode: 0o600 });
  renameSync(tmp, file);
}
