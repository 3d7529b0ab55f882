/**
 * The operator's admin state and weight, kept across restarts in `stateFile` (JSON, written
 * atomically, mode 0600): a drained agent that restarts stays drained. Precedence at start:
 * `adminState` / `weight` given in the config or as flags, then the state file, then READY / 100.
 */
import { readFileSync, writeFileSync, renameSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { ConfigError, errorText } from '../errors.ts';
import { DEFAULT_WEIGHT, FIELD_LIMITS } from '../protocol/messages.ts';
import type { AgentAdmin } from '../check/types.ts';

export interface OperatorState {
  admin: AgentAdmin;
  reason?: string;
  weight: number;
}

const ADMINS = new Set<AgentAdmin>(['READY', 'DRAIN', 'MAINT']);

/**
 * Reads a state file; undefined when it does not exist.
 * @throws ConfigError (path `stateFile`) when it exists but is not a state this agent wrote
 */
export function readStateFile(path: string): OperatorState | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigError([`stateFile: cannot read ${path}: ${errorText(e)}`]);
  }
  let o: Partial<OperatorState>;
  try {
    o = JSON.parse(text) as Partial<OperatorState>;
  } catch {
    throw new ConfigError([`stateFile: ${path} is not valid JSON (remove it to start READY)`]);
  }
  if (!o || typeof o !== 'object' || !ADMINS.has(o.admin as AgentAdmin)) {
    throw new ConfigError([`stateFile: ${path}: "admin" must be one of "READY", "DRAIN", "MAINT"`]);
  }
  const weight = o.weight ?? DEFAULT_WEIGHT;
  if (!Number.isInteger(weight) || weight < 0 || weight > FIELD_LIMITS.maxWeight) {
    throw new ConfigError([`stateFile: ${path}: "weight" must be an integer from 0 to ${FIELD_LIMITS.maxWeight}`]);
  }
  const reason = typeof o.reason === 'string' ? o.reason.slice(0, FIELD_LIMITS.maxVerdictReasonLength) : undefined;
  return { admin: o.admin!, weight, ...(reason ? { reason } : {}) };
}

/** Writes the state atomically (temporary file, then rename). @throws Error from the file system */
export function writeStateFile(path: string, state: OperatorState): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(state) + '\n', { mode: 0o600 });
  renameSync(tmp, path);
}

/** The state an agent starts with. */
export function initialState(config: { adminState?: string | undefined; weight?: number | undefined; stateFile?: string | undefined }): OperatorState {
  const saved = config.stateFile ? readStateFile(config.stateFile) : undefined;
  const given = config.adminState?.toUpperCase() as AgentAdmin | undefined;
  const admin = given ?? saved?.admin ?? 'READY';
  const reason = config.adminState === undefined ? saved?.reason : undefined;
  return { admin, ...(reason && admin !== 'READY' ? { reason } : {}), weight: config.weight ?? saved?.weight ?? DEFAULT_WEIGHT };
}
