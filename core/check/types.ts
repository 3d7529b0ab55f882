/**
 * The contract of a service check on the agent (plugin family `check`).
 *
 * A check kind (http, tcp, exec, grpc, file, or a user's) is a plugin module whose default export
 * is a `CheckKind`: a type name, a JSON schema for one check's options, and `create()`, which turns
 * validated options into a `Check`. The agent's check runner (core/check/runner.ts) owns the
 * schedule: every check runs in the background on its own interval with its own timeout and local
 * rise/fall; a HEALTH_REQUEST only reads the last verdict. `run()` must honour `signal` (aborted at
 * the timeout); a run that throws, rejects or outlasts its timeout is a `critical` outcome with
 * that reason, never a crash.
 */
import type { Logger } from '../util/log.ts';

/** One run's result, in the Nagios/Consul convention. `maint` puts the agent in MAINT (file check). */
export type CheckStatus = 'passing' | 'warning' | 'critical' | 'maint';

export interface CheckOutcome {
  status: CheckStatus;
  /** One line saying why (a status code, the first line of a command's output). Sanitised by the runner. */
  output: string;
}

export interface Check {
  run(signal: AbortSignal): Promise<CheckOutcome>;
  /** Release sockets, channels, files. */
  close?(): void | Promise<void>;
  /**
   * Optional: `changed` is to be called when the outcome may have moved before the next run (the
   * file check watches its flag file's directory). The runner then runs the check early, at most
   * once per 100 ms; the interval stays the fallback, so a watch that misses events costs only
   * speed. Called once, after the first run.
   */
  watch?(changed: () => void): void;
}

/** What a check kind gets besides its options. */
export interface CheckContext {
  logger: Logger;
  /** Resolves a path option against the directory of the config file. */
  resolvePath(path: string): string;
}

/** Options every check has, handled by the runner (not by the kind). Seconds, as in the rest of the config. */
export interface CommonCheckOptions {
  type: string;
  /** Name shown in status and reasons (default: `<type>` or `<type>#<n>`). */
  name?: string;
  interval?: number;
  timeout?: number;
  rise?: number;
  fall?: number;
}

export interface CheckKind<O extends object = Record<string, unknown>> {
  /** The `type` used in the config (`{ type: 'http', url: ... }`). */
  readonly type: string;
  /** JSON schema of the kind's own options (without the common ones), with defaults. */
  readonly schema: object;
  /**
   * Turns validated options into a check. Throws a ConfigError for options that cannot work
   * (unparseable URL, missing command): a config error at start-up, not at run time.
   */
  create(options: O, ctx: CheckContext): Check;
}

/** The agent's verdict for one service (and overall: the worst of its services). */
export type Verdict = 'SERVING' | 'DEGRADED' | 'NOT_SERVING';
/** The agent's admin state, set by operators through the control channel or the maintenance file. */
export type AgentAdmin = 'READY' | 'DRAIN' | 'MAINT';
