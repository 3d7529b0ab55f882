/**
 * Helpers for the check-kind tests: a CheckContext whose log lines are kept and whose paths
 * resolve against a test directory, options validated by the kind's own schema (defaults filled,
 * as the agent does), and a PID liveness probe that counts zombies as gone.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Ajv } from 'ajv';
import { createLogger } from '../../../core/util/log.ts';
import type { Check, CheckContext, CheckKind, CheckOutcome } from '../../../core/check/types.ts';

export interface TestContext extends CheckContext {
  lines: string[];
}

export function testContext(dir: string): TestContext {
  const lines: string[] = [];
  return { lines, logger: createLogger({ level: 'debug', write: (l) => lines.push(l) }), resolvePath: (p) => resolve(dir, p) };
}

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });

/** Options as the kind's schema leaves them (defaults filled). @throws when they do not validate */
export function validated<O extends object>(kind: CheckKind<O>, options: Record<string, unknown>): O {
  const copy = structuredClone(options);
  const validate = ajv.compile(kind.schema);
  if (!validate(copy)) throw new Error(`options do not validate: ${ajv.errorsText(validate.errors)}`);
  return copy as O;
}

/** Validates, creates, and returns the check. */
export function make<O extends object>(kind: CheckKind<O>, options: Record<string, unknown>, ctx: CheckContext): Check {
  return kind.create(validated(kind, options), ctx);
}

/** One run with a fresh timeout signal of `ms`. */
export function runFor(check: Check, ms: number): Promise<CheckOutcome> {
  return check.run(AbortSignal.timeout(ms));
}

/** Whether `pid` is a live process (a zombie, waiting for a reaper, counts as gone). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
