/**
 * Service failure -> out of rotation, qhcp next to HAProxy's `option httpchk`, against the same
 * real HTTP server (in this process), with the same interval, timeout, fall and rise, on the same
 * failure events: both watch the one server at once, so every run measures both.
 *
 *   qhcp:    a real `qhcp server` whose config has one http check on the service; a load balancer
 *            (bench/lb-host.ts, poll mode) checks the agent. The agent applies fall locally and
 *            pushes NOT_SERVING at once; the load balancer moves the backend DOWN on it.
 *   HAProxy: `option httpchk GET /health` on the service, `inter`/`fall`/`rise`/`timeout check`.
 *
 * Failures: the service answers 503 (alive but failing), and the service stops (connect refused).
 * Latency: from the failure to the load balancer's DOWN (qhcp: the transition's own timestamp;
 * HAProxy: when its "is DOWN" log line was read), then from the repair to UP, on one clock.
 */
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Helper, endChild, startAgent, Waiter, type AgentChild, type LbHost, type LbEvent } from './children.ts';
import { Haproxy, type HaproxyInfo } from './haproxy.ts';
import { summary, sleep, startRun, endRun, type RunInfo } from './proc.ts';
import { freeUdpPort, freeTcpPort, until, type Ctx } from './ctx.ts';
import { CHECK } from './cost.ts';

export type Failure = '503' | 'stopped';
export type Impl = 'qhcp' | 'haproxy';

export interface ServiceCell {
  failure: Failure;
  impl: Impl;
  /** ms from the failure to DOWN, one per run. */
  down: number[];
  /** ms from the repair to UP, one per run. */
  up: number[];
  /**
   * ms from the failure to this side's first check of the failed service, one per run: seen by
   * the service for a 503 (the first request after the failure), estimated for a stopped service
   * (its last check before the failure + the interval). `down - firstCheck` is what the rest of
   * the path took: (fall - 1) more intervals, the decision, and for qhcp the push.
   */
  firstCheck: number[];
  summary: { down: ReturnType<typeof summary>; up: ReturnType<typeof summary>; firstCheck: ReturnType<typeof summary>; afterFirst: ReturnType<typeof summary> };
  /** One reason the load balancer gave for DOWN (qhcp: the transition's; HAProxy: its log line). */
  reason: string | undefined;
}

export interface ServiceResult extends RunInfo {
  version: 1;
  finishedAt: string;
  haproxy: { version: string } | { skipped: string };
  settings: { intervalS: number; timeoutS: number; fall: number; rise: number; runs: number; lbCheckIntervalS: number };
  /** What the settings imply for a failure: fall x interval (+ timeout for a check that hangs). */
  boundDownMs: number;
  cells: ServiceCell[];
  misses: string[];
}

/** The HTTP service both watch: /health answers 200, or 503 while failing; it can stop and start on its port. */
class Service {
  failing = false;
  /** When each side's checks reached the service (newest last, bounded): qhcp's carry User-Agent qhcp-check. */
  readonly hits: Record<Impl, number[]> = { qhcp: [], haproxy: [] };
  private server: Server | undefined;
  port = 0;

  async start(): Promise<void> {
    const server = createServer((req, res) => {
      const hits = this.hits[req.headers['user-agent'] === 'qhcp-check' ? 'qhcp' : 'haproxy'];
      hits.push(Date.now());
      if (hits.length > 64) hits.splice(0, hits.length - 64);
      res.statusCode = this.failing ? 503 : 200;
      res.end(this.failing ? 'failing\n' : 'ok\n');
    });
    server.keepAliveTimeout = 1000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as { port: number }).port;
    this.server = server;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  }
}

type Ev = { impl: Impl; to: 'UP' | 'DOWN'; at: number; reason: string };

export async function serviceFailure(ctx: Ctx, hap: HaproxyInfo | string, intervalS = 1): Promise<ServiceResult> {
  const t0 = Date.now();
  const timeoutS = intervalS * CHECK.timeoutFraction;
  // The phase of each check cycle against the failure is random (0..interval): a median needs runs.
  const runs = ctx.full ? 20 : ctx.runs;
  const res: ServiceResult = {
    ...startRun(t0),
    version: 1,
    finishedAt: '',
    haproxy: typeof hap === 'string' ? { skipped: hap } : { version: hap.version },
    settings: { intervalS, timeoutS, fall: CHECK.fall, rise: CHECK.rise, runs, lbCheckIntervalS: intervalS },
    boundDownMs: Math.round(CHECK.fall * intervalS * 1000),
    cells: [],
    misses: [],
  };
  const cells = new Map<string, ServiceCell>();
  const cellOf = (failure: Failure, impl: Impl): ServiceCell => {
    const k = `${failure}|${impl}`;
    let c = cells.get(k);
    if (!c) {
      c = { failure, impl, down: [], up: [], firstCheck: [], summary: {} as ServiceCell['summary'], reason: undefined };
      cells.set(k, c);
      res.cells.push(c);
    }
    return c;
  };
  const impls: Impl[] = typeof hap === 'string' ? ['qhcp'] : ['qhcp', 'haproxy'];

  const events = new Waiter<Ev>();
  const emit = (e: Ev) => events.emit(e);
  /** Resolves with the first event of `impl` reaching `to` (bounded), or undefined. */
  const next = (impl: Impl, to: Ev['to'], timeoutMs: number) => events.next((e) => e.impl === impl && e.to === to, timeoutMs);

  const service = new Service();
  await service.start();
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-bench-service-'));
  const agentPort = await freeUdpPort();
  const agentAddress = `127.0.0.1:${agentPort}`;
  const configFile = join(dir, 'qhcp.config.json');
  writeFileSync(
    configFile,
    JSON.stringify({ checks: [{ type: 'http', url: `http://127.0.0.1:${service.port}/health`, interval: intervalS, timeout: timeoutS, fall: CHECK.fall, rise: CHECK.rise }] }, null, 2),
  );
  let agent: AgentChild | undefined;
  const lb: LbHost = new Helper('lb-host.ts');
  let h: Haproxy | undefined;
  try {
    agent = await startAgent(['--config', configFile, '--server-ip', '127.0.0.1', '--server-port', String(agentPort)]);
    lb.onEvent = (raw) => {
      const e = raw as LbEvent;
      if (e.server !== agentAddress) return;
      if (e.to === 'DOWN' || e.to === 'UP') emit({ impl: 'qhcp', to: e.to, at: e.at, reason: e.reason });
    };
    const qUp = next('qhcp', 'UP', 30_000);
    await lb.request({
      cmd: 'start',
      flags: { servers: [agentAddress], checkInterval: intervalS, reconnectInterval: intervalS, reportInterval: 0, maxFailAttempts: CHECK.fall, riseAttempts: CHECK.rise },
    });
    let hUp: Promise<Ev | undefined> = Promise.resolve({ impl: 'haproxy', to: 'UP', at: 0, reason: '' });
    if (typeof hap !== 'string') {
      h = new Haproxy(hap, { ports: [service.port], intervalMs: intervalS * 1000, timeoutMs: Math.round(timeoutS * 1000), fall: CHECK.fall, rise: CHECK.rise, listenPort: await freeTcpPort(), httpCheck: '/health' });
      h.onState = (index, state, at, line) => {
        if (index === 0 && (state === 'UP' || state === 'DOWN')) emit({ impl: 'haproxy', to: state, at, reason: line });
      };
      await h.start();
      // HAProxy starts a server UP (it logs no transition then): wait for its stats to say so.
      hUp = until(async () => ((await h!.state(0)) === 'UP' ? ({ impl: 'haproxy', to: 'UP', at: Date.now(), reason: '' } as Ev) : undefined), 30_000, 100);
    }
    if (!(await qUp)) throw new Error('the qhcp backend never came UP');
    if (!(await hUp)) throw new Error('the HAProxy server never came UP');

    const settle = 20_000;
    for (let r = 0; r < runs; r++) {
      for (const failure of ['503', 'stopped'] as const) {
        // Let a few checks pass so the failure falls anywhere in both check cycles.
        await sleep((1 + Math.random()) * intervalS * 1000);
        const downs = impls.map((i) => next(i, 'DOWN', settle));
        const tFail = Date.now();
        const lastBefore = impls.map((i) => service.hits[i].at(-1));
        if (failure === '503') service.failing = true;
        else await service.stop();
        const got = await Promise.all(downs);
        got.forEach((e, k) => {
          const impl = impls[k]!;
          const c = cellOf(failure, impl);
          if (e) {
            c.down.push(e.at - tFail);
            c.reason ??= e.reason;
            const seen = failure === '503' ? service.hits[impl].find((t) => t >= tFail) : undefined;
            const last = lastBefore[k];
            const first = seen ?? (last !== undefined ? last + intervalS * 1000 : undefined);
            if (first !== undefined) c.firstCheck.push(first - tFail);
          } else res.misses.push(`run ${r} ${failure}: ${impl} never went DOWN`);
        });
        await sleep(intervalS * 1000);
        const ups = impls.map((i) => next(i, 'UP', settle));
        const tFix = Date.now();
        if (failure === '503') service.failing = false;
        else await service.start();
        const back = await Promise.all(ups);
        back.forEach((e, k) => {
          if (e) cellOf(failure, impls[k]!).up.push(e.at - tFix);
          else res.misses.push(`run ${r} ${failure}: ${impls[k]} never came back UP`);
        });
        ctx.log(`  run ${r + 1}/${runs} ${failure.padEnd(7)} down ${got.map((e, k) => `${impls[k]} ${e ? e.at - tFail : '–'} ms`).join(', ')}; up ${back.map((e, k) => `${impls[k]} ${e ? e.at - tFix : '–'} ms`).join(', ')}`);
      }
    }
  } finally {
    await lb.stop(10_000).catch(() => {});
    await h?.stop().catch(() => {});
    if (agent) await endChild(agent.child, 3000);
    await service.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  for (const c of res.cells) {
    const afterFirst = c.down.length === c.firstCheck.length ? c.down.map((d, i) => d - c.firstCheck[i]!) : [];
    c.summary = { down: summary(c.down), up: summary(c.up), firstCheck: summary(c.firstCheck), afterFirst: summary(afterFirst) };
  }
  res.finishedAt = new Date().toISOString();
  return endRun(res, t0);
}
