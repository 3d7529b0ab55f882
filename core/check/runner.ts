/**
 * The agent's check runner: every configured check runs in the background on its own
 * (jittered) interval with its own timeout, never on a request's path. Each check keeps a
 * local rise/fall; each service's verdict is the worst of its checks (critical → NOT_SERVING,
 * warning → DEGRADED, passing → SERVING) and the agent's overall verdict the worst of its
 * services. A `maint` outcome (the maintenance-file check) puts the agent in MAINT while it
 * lasts. The runner also holds the operator's admin state and weight (control channel), so
 * that everything a HEALTH_RESPONSE / HEALTH_REPORT carries comes from one place, and it calls
 * `onChange` when the verdict, the admin state, the weight or a service's verdict changes.
 */
import { errorText } from '../errors.ts';
import { sanitize } from '../util/sanitize.ts';
import { DEFAULT_WEIGHT, FIELD_LIMITS, type AgentHealth, type ServiceHealth } from '../protocol/messages.ts';
import type { Logger } from '../util/log.ts';
import type { AgentAdmin, Check, CheckOutcome, CheckStatus, Verdict } from './types.ts';

/** The service top-level `checks` belong to; it has no entry in the wire's `services`. */
export const DEFAULT_SERVICE = '';

/** One configured check, resolved: its kind's `Check` and the runner's own options (ms). */
export interface CheckSpec {
  service: string;
  /** Where it is in the config (`checks[0]`, `services.web[1]`), for logs and errors. */
  path: string;
  name: string;
  type: string;
  intervalMs: number;
  timeoutMs: number;
  rise: number;
  fall: number;
  check: Check;
}

/** What `status()` shows of one check. */
export interface CheckState {
  readonly service: string;
  readonly name: string;
  readonly type: string;
  /** The status after rise/fall; undefined before the first run. */
  readonly status: CheckStatus | undefined;
  readonly output: string;
  /** The last run's own status and output, before rise/fall. */
  readonly lastRaw: CheckOutcome | undefined;
  readonly runs: number;
  readonly lastRunAt: number | undefined;
}

const RANK: Record<CheckStatus, number> = { passing: 0, maint: 0, warning: 1, critical: 2 };
const VERDICT_OF = ['SERVING', 'DEGRADED', 'NOT_SERVING'] as const satisfies readonly Verdict[];
const STATUSES = new Set<CheckStatus>(['passing', 'warning', 'critical', 'maint']);
/** A check's output is cut to this before it becomes part of a reason. */
const MAX_OUTPUT = 200;
/** Random spread of each check's interval: ±10%. */
const JITTER = 0.1;
/** A check that watches (Check.watch) runs early at most once per this many ms. */
export const WATCH_GAP_MS = 100;

/**
 * Milliseconds from `now` until a check's next run: runs are spaced start to start (a fixed
 * rate, as HAProxy's `inter`), so the time a run takes does not stretch every interval; a run
 * that took longer than its interval is followed by the next one at once (1 ms). `random` in
 * [0, 1) spreads the interval by ±JITTER.
 */
export function nextRunDelay(lastStartAt: number, now: number, intervalMs: number, random: number): number {
  const spread = 1 + JITTER * (random * 2 - 1);
  return Math.max(1, Math.round(lastStartAt + intervalMs * spread - now));
}

class RunningCheck implements CheckState {
  status: CheckStatus | undefined;
  output = '';
  lastRaw: CheckOutcome | undefined;
  runs = 0;
  lastRunAt: number | undefined;
  /** When the last run started (its schedule counts from there). */
  lastStartAt = 0;
  /** A scheduled run is in progress (its end schedules the next). */
  looping = false;
  /** The check said its outcome may have moved (Check.watch): the next run comes early. */
  kicked = false;
  /** Consecutive runs on one side (worse / better) of `status`. */
  streak = 0;
  streakDir: 'worse' | 'better' | undefined;
  timer: NodeJS.Timeout | undefined;
  /** The run in progress, when its kind has not settled yet (it may ignore its AbortSignal). */
  inflight: Promise<unknown> | undefined;
  controller: AbortController | undefined;

  constructor(readonly spec: CheckSpec) {}
  get service(): string {
    return this.spec.service;
  }
  get name(): string {
    return this.spec.name;
  }
  get type(): string {
    return this.spec.type;
  }

  /** Applies one run's outcome through rise/fall; returns whether the reported status changed. */
  apply(o: CheckOutcome): boolean {
    this.lastRaw = o;
    const before = this.status;
    if (this.status === undefined || o.status === this.status || o.status === 'maint' || this.status === 'maint') {
      // The first result sets the state; a maintenance flag (set or cleared) takes effect at once.
      this.status = o.status;
      this.output = o.output;
      this.streak = 0;
      this.streakDir = undefined;
      return before !== this.status;
    }
    const dir = RANK[o.status] > RANK[this.status] ? 'worse' : RANK[o.status] < RANK[this.status] ? 'better' : undefined;
    if (dir === undefined) {
      this.output = o.output;
      return false;
    }
    if (dir !== this.streakDir) {
      this.streak = 0;
      this.streakDir = dir;
    }
    this.streak++;
    if (this.streak >= (dir === 'worse' ? this.spec.fall : this.spec.rise)) {
      this.status = o.status;
      this.output = o.output;
      this.streak = 0;
      this.streakDir = undefined;
      return true;
    }
    return false;
  }
}

/** A check's output as one safe line: the first line, control characters escaped, bounded. */
export function outputLine(text: unknown): string {
  const s = typeof text === 'string' ? text : text === undefined || text === null ? '' : String(text);
  const first = s.replace(/^\s+/, '').split(/\r?\n/, 1)[0] ?? '';
  return sanitize(first.trimEnd(), MAX_OUTPUT);
}

/** A reason the wire accepts: at most 256 characters. */
function bound(reason: string): string {
  const max = FIELD_LIMITS.maxVerdictReasonLength;
  return reason.length > max ? reason.slice(0, max - 1) + '…' : reason;
}

export interface RunnerOptions {
  logger: Logger;
  admin?: AgentAdmin;
  adminReason?: string;
  weight?: number;
  /** Called (synchronously) after the verdict, admin state, weight or a service verdict changed. */
  onChange?: (health: AgentHealth) => void;
  /** Random source for jitter (tests). */
  random?: () => number;
}

export class CheckRunner {
  private readonly checks: RunningCheck[];
  /** Service names in config order; DEFAULT_SERVICE first when top-level checks exist. */
  readonly serviceNames: string[];
  private readonly since = new Map<string, { verdict: Verdict; at: number }>();
  private operatorAdmin: AgentAdmin;
  private operatorReason: string | undefined;
  private weightValue: number;
  private lastKey = '';
  private started = false;
  private stopped = false;
  onChange: ((health: AgentHealth) => void) | undefined;
  private readonly logger: Logger;
  private readonly random: () => number;

  constructor(specs: CheckSpec[], services: string[], opts: RunnerOptions) {
    this.checks = specs.map((s) => new RunningCheck(s));
    this.serviceNames = services;
    this.logger = opts.logger;
    this.operatorAdmin = opts.admin ?? 'READY';
    this.operatorReason = opts.adminReason;
    this.weightValue = opts.weight ?? DEFAULT_WEIGHT;
    this.onChange = opts.onChange;
    this.random = opts.random ?? Math.random;
    const now = Date.now();
    for (const s of services) this.since.set(s, { verdict: 'SERVING', at: now });
    this.lastKey = this.key(this.health());
  }

  /** Runs every check once (so the first answer already carries real verdicts), then schedules them. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await Promise.all(this.checks.map((c) => this.runOnce(c)));
    this.changed();
    for (const c of this.checks) this.schedule(c);
    for (const c of this.checks) {
      if (!c.spec.check.watch) continue;
      try {
        c.spec.check.watch(() => this.kick(c));
      } catch (e) {
        this.logger.warn('check watch failed; the check still runs on its interval', { check: c.spec.path, error: errorText(e) });
      }
    }
  }

  /** Stops every schedule, aborts runs in progress, closes the checks (each bounded to 2 s). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const c of this.checks) {
      clearTimeout(c.timer);
      c.controller?.abort(new Error('agent stopping'));
    }
    await Promise.all(
      this.checks.map(async (c) => {
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([Promise.resolve().then(() => c.spec.check.close?.()), new Promise((r) => (timer = setTimeout(r, 2000)))]);
        } catch (e) {
          this.logger.warn('check close failed', { check: c.spec.path, error: errorText(e) });
        } finally {
          clearTimeout(timer);
        }
      }),
    );
  }

  private schedule(c: RunningCheck): void {
    if (this.stopped) return;
    const delay = c.kicked ? Math.max(1, c.lastStartAt + WATCH_GAP_MS - Date.now()) : nextRunDelay(c.lastStartAt, Date.now(), c.spec.intervalMs, this.random());
    c.kicked = false;
    c.timer = setTimeout(() => {
      c.looping = true;
      void this.runOnce(c).then(() => {
        c.looping = false;
        this.changed();
        this.schedule(c);
      });
    }, delay);
    c.timer.unref();
  }

  /**
   * A check said its outcome may have moved before its next run (Check.watch: the file check
   * sees its flag file appear): run it early, at most one run per WATCH_GAP_MS, so a file touched
   * in a loop costs no more than that. Its schedule then counts from that run.
   */
  private kick(c: RunningCheck): void {
    if (this.stopped) return;
    c.kicked = true;
    if (c.looping) return; // the run in progress schedules the early one when it ends
    clearTimeout(c.timer);
    this.schedule(c);
  }

  /** One run of one check, bounded by its timeout; whatever happens it ends in an outcome. */
  private async runOnce(c: RunningCheck): Promise<void> {
    const spec = c.spec;
    c.lastStartAt = Date.now();
    let outcome: CheckOutcome;
    if (c.inflight) {
      // The previous run outlived its timeout and ignored its AbortSignal: do not pile runs up.
      outcome = { status: 'critical', output: `previous run still in progress after its ${spec.timeoutMs} ms timeout` };
    } else {
      const controller = new AbortController();
      c.controller = controller;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<CheckOutcome>((resolve) => {
        timer = setTimeout(() => {
          controller.abort(new Error(`timed out after ${spec.timeoutMs} ms`));
          resolve({ status: 'critical', output: `timed out after ${spec.timeoutMs} ms` });
        }, spec.timeoutMs);
      });
      const run = Promise.resolve()
        .then(() => spec.check.run(controller.signal))
        .then(
          (o) => toOutcome(o),
          (e: unknown) => ({ status: 'critical', output: `check failed: ${errorText(e)}` }) as CheckOutcome,
        );
      c.inflight = run;
      void run.finally(() => {
        if (c.inflight === run) c.inflight = undefined;
      });
      outcome = await Promise.race([run, timedOut]);
      clearTimeout(timer);
      c.controller = undefined;
    }
    if (this.stopped) return;
    c.runs++;
    c.lastRunAt = Date.now();
    const clean = { status: outcome.status, output: outputLine(outcome.output) };
    const before = c.status;
    if (c.apply(clean) && before !== undefined) {
      this.logger.info('check changed', { check: spec.path, name: spec.name, from: before, to: c.status, output: c.output });
    }
  }

  /** Recomputes the health and calls onChange when it differs from the last one. */
  private changed(): void {
    const h = this.health();
    const key = this.key(h);
    if (key === this.lastKey) return;
    this.lastKey = key;
    try {
      this.onChange?.(h);
    } catch (e) {
      this.logger.warn('health change listener failed', { error: errorText(e) });
    }
  }

  /** What decides a push: verdicts, admin state, weight (not reasons or times). */
  private key(h: AgentHealth): string {
    const services = h.services ? Object.entries(h.services).map(([n, s]) => `${n}=${s.verdict}`) : [];
    return [h.verdict, h.admin, h.weight, ...services].join('|');
  }

  /** A service's verdict and the reason (the worst check's `name: output`). */
  private serviceVerdict(service: string): { verdict: Verdict; reason?: string } {
    let worst: RunningCheck | undefined;
    for (const c of this.checks) {
      if (c.service !== service || c.status === undefined) continue;
      if (!worst || RANK[c.status] > RANK[worst.status!]) worst = c;
    }
    const rank = worst ? RANK[worst.status!] : 0;
    const verdict = VERDICT_OF[rank]!;
    return rank === 0 ? { verdict } : { verdict, reason: bound(`${worst!.name}: ${worst!.output}`) };
  }

  /** The maintenance check holding the agent in MAINT, if any. */
  private maintCheck(): RunningCheck | undefined {
    return this.checks.find((c) => c.status === 'maint');
  }

  /** The admin state on the wire: MAINT while a maintenance check says so, else the operator's. */
  get admin(): AgentAdmin {
    return this.maintCheck() ? 'MAINT' : this.operatorAdmin;
  }
  get weight(): number {
    return this.weightValue;
  }
  /** The operator's own admin state (what the control channel and the state file hold). */
  get operatorState(): { admin: AgentAdmin; reason?: string; weight: number } {
    return { admin: this.operatorAdmin, ...(this.operatorReason ? { reason: this.operatorReason } : {}), weight: this.weightValue };
  }

  /** Sets the operator's admin state; pushes at once when it changes what the wire says. */
  setAdmin(admin: AgentAdmin, reason?: string): void {
    this.operatorAdmin = admin;
    this.operatorReason = reason ? bound(sanitize(reason, MAX_OUTPUT)) : undefined;
    this.changed();
  }

  /** Sets the weight (0..256); pushes at once when it changes. */
  setWeight(weight: number): void {
    if (!Number.isInteger(weight) || weight < 0 || weight > FIELD_LIMITS.maxWeight) throw new RangeError(`weight must be an integer from 0 to ${FIELD_LIMITS.maxWeight}`);
    this.weightValue = weight;
    this.changed();
  }

  /** The health fields of HEALTH_RESPONSE / HEALTH_REPORT, from the last results (no check runs). */
  health(): AgentHealth {
    const now = Date.now();
    let worst: { verdict: Verdict; reason?: string; service: string } = { verdict: 'SERVING', service: DEFAULT_SERVICE };
    const services: Record<string, ServiceHealth> = {};
    const named = this.serviceNames.filter((s) => s !== DEFAULT_SERVICE);
    for (const name of this.serviceNames) {
      const v = this.serviceVerdict(name);
      let since = this.since.get(name)!;
      if (since.verdict !== v.verdict) {
        since = { verdict: v.verdict, at: now };
        this.since.set(name, since);
      }
      if (name !== DEFAULT_SERVICE) services[name] = { verdict: v.verdict, ...(v.reason ? { reason: v.reason } : {}), since: since.at };
      if (VERDICT_OF.indexOf(v.verdict) > VERDICT_OF.indexOf(worst.verdict)) worst = { ...v, service: name };
    }
    const admin = this.admin;
    let reason = worst.reason && (named.length > 0 && worst.service !== DEFAULT_SERVICE ? bound(`${worst.service}: ${worst.reason}`) : worst.reason);
    if (!reason && admin !== 'READY') {
      const m = this.maintCheck();
      reason = m ? bound(`${m.name}: ${m.output}`) : this.operatorReason;
    }
    return {
      verdict: worst.verdict,
      ...(reason ? { reason } : {}),
      admin,
      weight: this.weightValue,
      ...(named.length > 0 ? { services } : {}),
    };
  }

  /** Every check's state, for status output and tests. */
  status(): CheckState[] {
    return this.checks.map((c) => ({
      service: c.service,
      name: c.name,
      type: c.type,
      status: c.status,
      output: c.output,
      lastRaw: c.lastRaw,
      runs: c.runs,
      lastRunAt: c.lastRunAt,
    }));
  }
}

/** A kind's return value as an outcome; anything malformed is a critical one saying so. */
function toOutcome(o: unknown): CheckOutcome {
  const v = o as Partial<CheckOutcome> | null | undefined;
  if (!v || typeof v !== 'object' || !STATUSES.has(v.status as CheckStatus)) {
    return { status: 'critical', output: `check returned an invalid outcome (${outputLine(JSON.stringify(o) ?? String(o))})` };
  }
  return { status: v.status!, output: typeof v.output === 'string' ? v.output : '' };
}
