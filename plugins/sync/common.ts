/**
 * What the sync plugins share: the intent a backend's view asks of a proxy (ready, drain,
 * maint, down), the weight it should carry, where its real service listens (its `target`),
 * atomic file writes, and the Reconciler that does a plugin's I/O off the check path: one run at
 * a time, coalesced, retried with exponential backoff, every failure logged with its command.
 */
import { metricNameSchema } from '../../core/protocol/messages.ts';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { BackendView } from '../../core/plugin/hooks.ts';
import type { Logger } from '../../core/util/log.ts';
import { parseAddress, formatAddress, type Address } from '../../core/util/address.ts';
import { reportedLoad } from '../balancer/load.ts';
import { sanitize } from '../../core/util/sanitize.ts';
import { withTimeout } from '../../core/util/timeout.ts';

/** What a proxy should do with a backend. `unknown`: not checked yet, leave the proxy as it is. */
export type Intent = 'ready' | 'drain' | 'maint' | 'down' | 'unknown';

/** The view fields of the shared contract that older load balancers may not fill in. */
interface Extra {
  verdict?: string;
  reason?: string | null;
  agentAdmin?: string;
  adminState?: string;
  service?: string;
}
const extra = (b: BackendView): Extra => b as unknown as Extra;

/**
 * The intent for one backend. Maintenance (the load balancer's state, the operator's or the
 * agent's admin state) wins over DOWN, DOWN over drain, drain over ready. UP and DEGRADED are
 * ready; UNKNOWN (no verdict yet) is `unknown`. A state this code does not know is treated as
 * a drain: no new traffic, existing traffic finishes.
 */
export function intentOf(b: BackendView): Intent {
  const x = extra(b);
  const state = String(b.state);
  if (state === 'MAINT' || x.adminState === 'MAINT' || x.agentAdmin === 'MAINT') return 'maint';
  if (state === 'DOWN') return 'down';
  if (state === 'DRAINING' || x.adminState === 'DRAIN' || x.agentAdmin === 'DRAIN') return 'drain';
  if (state === 'UP' || state === 'DEGRADED') return 'ready';
  if (state === 'UNKNOWN') return 'unknown';
  return 'drain';
}

/** Whether a backend should get new traffic. `unknown` counts as eligible (the proxy's own default). */
export function eligible(b: BackendView): boolean {
  const i = intentOf(b);
  return i === 'ready' || i === 'unknown';
}

export interface WeightOptions {
  /** `load`: weight falls as the reported load rises; `weight`: the view's weight only; `none`: no weight. */
  weightFrom: 'load' | 'weight' | 'none';
  metric: string;
  maxReportAgeMs: number;
  /** A ready backend never goes below this percentage of its proxy weight (0 would be a drain). */
  minWeightPercent: number;
}

export const WEIGHT_SCHEMA = {
  weightFrom: { enum: ['load', 'weight', 'none'], default: 'load', description: '"load": weight = 100% x (1 - load) x the backend\'s weight factor; "weight": the weight factor only; "none": never set weights' },
  metric: { ...metricNameSchema, default: 'loadScore', description: 'the reported metric that holds the load (0..1)' },
  maxReportAgeMs: { type: 'integer', minimum: 100, maximum: 86_400_000, default: 30_000, description: 'an older report counts as unknown load (the weight factor alone applies)' },
  minWeightPercent: { type: 'integer', minimum: 1, maximum: 100, default: 1, description: 'a ready backend keeps at least this share of its weight' },
} as const;

/**
 * The backend's weight factor for a proxy's own weights: the agent's weight in percent
 * (`qhcp weight N`, wire `weight` 0..256, 100 = normal) / 100. The configured qhcp weight is not
 * applied (the proxy has its own configured weights); a view without `agentWeight` gives 1.
 */
export function weightFactor(b: BackendView): number {
  const w = (b as unknown as { agentWeight?: unknown }).agentWeight;
  return typeof w === 'number' && Number.isFinite(w) && w >= 0 ? Math.min(w, 256) / 100 : 1;
}

/**
 * The percentage (0..256) of its proxy weight a backend should carry, or undefined for "leave
 * the weight alone" (weightFrom `none`, or a backend that is not ready).
 */
export function weightPercent(b: BackendView, o: WeightOptions, now = Date.now()): number | undefined {
  if (o.weightFrom === 'none' || intentOf(b) !== 'ready') return undefined;
  let f = weightFactor(b);
  if (o.weightFrom === 'load') {
    const load = reportedLoad(b, now, o);
    if (load !== undefined) f *= 1 - Math.min(1, Math.max(0, load));
  }
  return Math.max(o.minWeightPercent, Math.min(256, Math.round(f * 100)));
}

export interface TargetOptions {
  /** The real service of a backend, by the backend's address: "host:port". */
  targets: Record<string, string>;
  /** For backends not in `targets`: the agent's host, and its port plus this offset. */
  portOffset: number;
}

export const TARGET_SCHEMA = {
  targets: {
    type: 'object',
    additionalProperties: { type: 'string', minLength: 1, maxLength: 300, description: 'host:port of the service' },
    default: {},
    description: 'the real service (host:port) of each backend, by its qhcp address; others use portOffset',
  },
  portOffset: { type: 'integer', minimum: -65535, maximum: 65535, default: 0, description: 'a backend not in targets: its service is on the agent\'s host at the agent\'s port plus this' },
} as const;

/** The host and port of a qhcp backend address ("host:port" or "host:port/service"). */
export function agentAddress(address: string): Address {
  const slash = address.lastIndexOf('/');
  const hostPort = slash > address.lastIndexOf(']') && slash > 0 ? address.slice(0, slash) : address;
  return parseAddress(hostPort, 4243);
}

/**
 * Where `address`'s real service listens.
 * @throws LocalError for a target that is not host:port, or a port offset that leaves 1..65535
 */
export function targetOf(address: string, o: TargetOptions): Address {
  const t = o.targets[address];
  if (t !== undefined) return parseAddress(t, 0);
  const a = agentAddress(address);
  const port = a.port + o.portOffset;
  if (port < 1 || port > 65535) throw new RangeError(`backend ${address}: port ${a.port} + portOffset ${o.portOffset} is not a port`);
  return { host: a.host, port };
}

/** Every target in `o.targets` parses (host:port with a port); else the problems. */
export function checkTargets(o: TargetOptions): string[] {
  const bad: string[] = [];
  for (const [k, v] of Object.entries(o.targets)) {
    try {
      const a = parseAddress(v, 0);
      if (a.port === 0) bad.push(`targets["${k}"]: "${v}" has no port`);
    } catch (e) {
      bad.push(`targets["${k}"]: ${(e as Error).message}`);
    }
  }
  return bad;
}

export { formatAddress };

/** Writes `path` atomically: a temporary file in the same folder, then rename over it. */
export function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    writeFileSync(tmp, text, { mode: 0o644 });
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** A failed proxy command: `command` is logged with the error. */
export class SyncCommandError extends Error {
  constructor(
    readonly command: string,
    message: string,
  ) {
    super(message);
  }
}

export const RETRY_SCHEMA = {
  retryMinMs: { type: 'integer', minimum: 10, maximum: 600_000, default: 200, description: 'first retry after a failed run; doubles each time' },
  retryMaxMs: { type: 'integer', minimum: 10, maximum: 3_600_000, default: 30_000, description: 'retries never wait longer than this' },
} as const;

/**
 * Runs a plugin's `run` (which brings the proxy in line with the latest view) off the check
 * path: `poke()` asks for a run; pokes while one runs make one more run after it; a run that
 * throws is logged (with the SyncCommandError's command) and retried after a backoff that
 * doubles up to `retryMaxMs` and resets after a good run. Memory stays bounded: only "run
 * again" is remembered, never a list of commands.
 */
export class Reconciler {
  private running = false;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private backoffMs = 0;
  private stopped = false;
  private idle: Array<() => void> = [];
  /** Runs that failed so far, and good runs. */
  failures = 0;
  runs = 0;

  constructor(
    private readonly name: string,
    private readonly logger: Logger,
    private readonly run: () => Promise<void>,
    private readonly retry: { retryMinMs: number; retryMaxMs: number },
  ) {}

  /** Asks for a run now (or after the current run, or when the retry timer fires). */
  poke(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) return; // waiting out a backoff: the retry takes the latest view
    void this.loop();
  }

  /** Whether the last run failed and a retry is pending. */
  get retrying(): boolean {
    return this.timer !== undefined;
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      do {
        this.again = false;
        try {
          await this.run();
          this.runs++;
          if (this.backoffMs) this.logger.info(`${this.name}: in step again`, { plugin: this.name });
          this.backoffMs = 0;
        } catch (e) {
          this.failures++;
          this.backoffMs = this.backoffMs ? Math.min(this.retry.retryMaxMs, this.backoffMs * 2) : this.retry.retryMinMs;
          const command = e instanceof SyncCommandError ? e.command : undefined;
          this.logger.warn(`${this.name}: command failed`, {
            plugin: this.name,
            ...(command !== undefined ? { command: sanitize(command, 500) } : {}),
            error: sanitize(e instanceof Error ? e.message : String(e), 500),
            retryInMs: this.backoffMs,
          });
          if (!this.stopped) {
            this.timer = setTimeout(() => {
              this.timer = undefined;
              this.poke();
            }, this.backoffMs);
            this.timer.unref();
          }
          return;
        }
      } while (this.again && !this.stopped);
    } finally {
      this.running = false;
      if (!this.timer) for (const w of this.idle.splice(0)) w();
    }
  }

  /** Resolves when no run is in progress or pending (bounded by `timeoutMs`). */
  async settled(timeoutMs: number): Promise<boolean> {
    if (!this.running && !this.timer) return true;
    return withTimeout(new Promise<boolean>((r) => this.idle.push(() => r(true))), timeoutMs, { value: false });
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * On shutdown: lets a pending run finish (up to `timeoutMs`), then stops, and waits (bounded
   * too) for a run that is still in progress, so no file or command is left half-done.
   */
  async halt(timeoutMs: number): Promise<void> {
    if (!this.timer) await this.settled(timeoutMs); // a failing proxy's next retry is not waited for
    this.stop();
    for (const until = Date.now() + timeoutMs; this.running && Date.now() < until; ) await new Promise((r) => setTimeout(r, 10));
  }
}
