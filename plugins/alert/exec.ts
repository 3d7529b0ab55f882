/**
 * exec: runs a command for each alert, with the event in QHCP_* environment variables and as
 * one JSON line on stdin. No shell: `command` is the program, `args` its arguments (use
 * `sh -c '...'` for a pipeline). A command outliving `timeoutMs` is sent SIGTERM, then SIGKILL
 * after `killGraceMs`, to its whole process group, so `sh -c` children go too. Commands run one
 * at a time through a bounded queue (queue.ts) and are damped per server (damper.ts).
 */
import { safeJson } from '../../core/util/sanitize.ts';
import { spawn } from 'node:child_process';
import type { AlertEvent, CoreLike } from '../../core/plugin/hooks.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import { definePlugin } from '../../core/plugin/define.ts';
import { errorText } from '../../core/errors.ts';
import { Damper, alertPayload, minIntervalSchema } from './damper.ts';
import { SerialQueue, queueOptionsSchema, tapDampedQueue } from './queue.ts';

const PLUGIN_NAME = 'exec';
const TAIL_BYTES = 2048;

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stderr: string;
}

/** The QHCP_* variables a command sees for one alert. */
export function alertEnv(e: AlertEvent, suppressed: number): Record<string, string> {
  const p = alertPayload(e, suppressed);
  const env: Record<string, string> = {
    QHCP_EVENT: String(p.event),
    QHCP_NODE: String(p.node),
    QHCP_TIME: String(p.time),
    QHCP_SUPPRESSED: String(suppressed),
  };
  if (e.kind === 'transition') {
    // From the sanitized payload: an agent's text never reaches a command raw.
    Object.assign(env, { QHCP_SERVER: String(p.server), QHCP_FROM: String(p.from), QHCP_TO: String(p.to), QHCP_REASON: String(p.reason), QHCP_LAST_ERROR: String(p.lastError ?? '') });
  } else {
    env.QHCP_SERVERS = e.servers.join(',');
    if (e.kind === 'panic') Object.assign(env, { QHCP_PANIC: e.engaged ? 'engaged' : 'ended', QHCP_POOL: String(p.pool), QHCP_HEALTHY: String(e.healthy), QHCP_KNOWN: String(e.known) });
  }
  return env;
}

const schema = {
type: 'object',
  additionalProperties: false,
  required: ['command'],
  properties: {
    command: { type: 'string', minLength: 1, description: 'program to run (no shell)' },
    args: { type: 'array', items: { type: 'string' }, default: [], description: 'its arguments' },
    env: { type: 'object', additionalProperties: { type: 'string' }, default: {}, description: 'extra environment variables' },
    cwd: { type: 'string', minLength: 1, description: 'working directory, relative to the config file\'s directory (default: the load balancer\'s working directory)' },
    timeoutMs: { type: 'integer', minimum: 10, maximum: 3_600_000, default: 10_000, description: 'then SIGTERM to its process group' },
    killGraceMs: { type: 'integer', minimum: 0, maximum: 600_000, default: 2000, description: 'after SIGTERM, then SIGKILL' },
    minIntervalMs: minIntervalSchema(30_000),
    ...queueOptionsSchema('finish'),
  },
} as const;

export type ExecOptions = FromSchema<typeof schema>;

/** The plugin's body: a damper feeding a bounded queue of command runs. */
export class ExecAlert {
  readonly stats = { runs: 0, failed: 0, timedOut: 0, dropped: 0 };
  private readonly queue: SerialQueue<{ event: AlertEvent; suppressed: number }>;
  readonly damper: Damper;
  private logger: CoreLike['logger'] | undefined;
  /** Results of the runs so far, newest last (at most 20; for tests and debugging). */
  readonly results: ExecResult[] = [];

  constructor(private opts: ExecOptions) {
    this.queue = new SerialQueue(this.opts.queueSize, async (item) => void (await this.runOne(item.event, item.suppressed)), (_, n) => {
      this.stats.dropped = n;
      this.logger?.limited(`${PLUGIN_NAME}:dropped`, `${PLUGIN_NAME}: queue full (${this.opts.queueSize}), dropped the oldest alert`, { command: this.opts.command, dropped: n });
    });
    this.damper = new Damper(this.opts.minIntervalMs, (event, suppressed) => this.queue.push({ event, suppressed }));
  }

  /** Runs the command once for `e`; never rejects. */
  async runOne(e: AlertEvent, suppressed: number): Promise<ExecResult> {
    this.stats.runs++;
    const o = this.opts;
    const result = await new Promise<ExecResult>((resolve) => {
      let stderr = '';
      let timedOut = false;
      let killer: NodeJS.Timeout | undefined;
      const child = spawn(o.command, o.args, {
        cwd: o.cwd,
        env: { ...process.env, ...o.env, ...alertEnv(e, suppressed) },
        stdio: ['pipe', 'ignore', 'pipe'],
        // Its own process group, so a timeout can end everything it started.
        detached: true,
      });
      const group = (sig: NodeJS.Signals) => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, sig);
        } catch {
          /* already gone */
        }
      };
      const timer = setTimeout(() => {
        timedOut = true;
        group('SIGTERM');
        killer = setTimeout(() => group('SIGKILL'), o.killGraceMs);
      }, o.timeoutMs);
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-TAIL_BYTES)));
      // A command that does not read stdin closes it early: that is not an error.
      child.stdin!.on('error', () => {});
      child.stdin!.end(safeJson(alertPayload(e, suppressed)) + '\n');
      const finish = (code: number | null, signal: NodeJS.Signals | null, err?: Error) => {
        clearTimeout(timer);
        clearTimeout(killer);
        resolve({ code, signal, timedOut, stderr: err ? errorText(err) : stderr.trim() });
      };
      child.once('error', (err) => finish(null, null, err));
      child.once('exit', (code, signal) => {
        // Whatever it left behind in its group gets no longer than the grace either.
        if (timedOut) group('SIGKILL');
        child.stderr!.destroy();
        finish(code, signal);
      });
    });
    if (this.results.push(result) > 20) this.results.shift();
    if (result.timedOut) this.stats.timedOut++;
    if (result.timedOut || result.code !== 0) {
      this.stats.failed++;
      this.logger?.limited(`${PLUGIN_NAME}:failed`, `${PLUGIN_NAME}: alert command failed`, {
        command: o.command,
        ...(result.timedOut ? { timedOut: `${o.timeoutMs} ms` } : {}),
        code: result.code,
        signal: result.signal,
        stderr: result.stderr,
      });
    }
    return result;
  }

  get pending(): number {
    return this.queue.size;
  }

  drain(timeoutMs: number): Promise<boolean> {
    return this.queue.drain(timeoutMs);
  }

  apply(core: CoreLike): void {
    this.logger = core.logger;
    if (this.opts.cwd !== undefined) this.opts = { ...this.opts, cwd: core.resolvePath(this.opts.cwd) };
    tapDampedQueue(core, PLUGIN_NAME, { damper: this.damper, queue: this.queue }, this.opts.drainTimeoutMs, (left) => [`${PLUGIN_NAME}: stopping with alert commands unfinished`, { command: this.opts.command, unfinished: left }]);
  }
}

export default definePlugin({
  name: PLUGIN_NAME,
  family: 'alert',
  roles: ['loadbalancer'],
  schema,
  setup: (options) => new ExecAlert(options),
});
