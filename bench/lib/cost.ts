/**
 * Load balancer cost: N backends checked every I seconds; the load balancer's CPU (from
 * /proc), CPU per backend per interval, RSS, and whether it keeps up. The same cell for qhcp
 * (poll or push, against an agent farm) and for HAProxy (check + agent-check against TCP agents).
 */
import { Helper, type LbHost, type LbEvent } from './children.ts';
import { Haproxy, type HaproxyInfo } from './haproxy.ts';
import { sampleCpu, rssMb, sleep } from './proc.ts';
import { freeTcpPort, until, round, type Ctx } from './ctx.ts';

export interface CostCell {
  impl: 'qhcp-poll' | 'qhcp-push' | 'haproxy';
  n: number;
  intervalS: number;
  /** Seconds until every backend was UP (null: not all came up). */
  upAfterS: number | null;
  windowS: number;
  cpuPct: number;
  /** CPU microseconds per backend per interval: the figure compared across implementations. */
  usPerBackendInterval: number;
  rssMb: number;
  /** Checks (qhcp: polls answered or reports received) in the window, and how many the interval implies. */
  checks: number | null;
  expected: number;
  late: number | null;
  failed: number | null;
  /** All UP at the end, checks at >= 90% of the implied rate, <= 1% late. */
  keepsUp: boolean;
  /** The agents on the other side (qhcp): how many the farm hosted in all, over how many processes. */
  farm?: { agents: number; processes: number };
  note?: string;
}

/** Settings shared by both implementations: fall 3, rise 2, timeout half the interval. */
export const CHECK = { fall: 3, rise: 2, timeoutFraction: 0.5 } as const;

export interface QhcpCostOptions {
  /** How long to wait for every backend to come UP (default 20 s + 60 ms per backend). */
  upWithinMs?: number;
  /** Recorded with the cell: the farm behind `ports`. */
  farm?: { agents: number; processes: number };
}

export async function qhcpCost(ctx: Ctx, ports: number[], n: number, intervalS: number, mode: 'poll' | 'push', opts: QhcpCostOptions = {}): Promise<CostCell> {
  const lb: LbHost = new Helper('lb-host.ts');
  const up = new Set<string>();
  // The load balancer's own timestamp of the transition that made every backend UP, first time.
  let allUpAt = 0;
  lb.onEvent = (e) => {
    const t = e as LbEvent;
    if (t.to === 'UP') up.add(t.server);
    else up.delete(t.server);
    if (!allUpAt && up.size >= n) allUpAt = t.at;
  };
  let t0 = Date.now();
  try {
    // "UP after" counts from the call of LoadBalancer.start() (config validated, plugins loaded),
    // as `qhcp loadbalancer` runs it: not the helper's own start-up (Node, tsx, module loading).
    await lb.request({ cmd: 'stats' });
    t0 = Date.now();
    const started = await lb.request({
      cmd: 'start',
      flags: {
        servers: ports.slice(0, n).map((p) => `127.0.0.1:${p}`),
        checkInterval: intervalS,
        reconnectInterval: intervalS,
        reportInterval: mode === 'push' ? intervalS : 0,
        maxFailAttempts: CHECK.fall,
        riseAttempts: CHECK.rise,
      },
    });
    t0 = started.startedAt ?? t0;
    const allUp = await until(() => allUpAt > 0, opts.upWithinMs ?? 20_000 + n * 60, 50);
    const upAfterS = allUp ? round((allUpAt - t0) / 1000, 2) : null;
    await sleep(ctx.settle * 1000);
    await lb.request({ cmd: 'reset' });
    const a = sampleCpu(lb.pid);
    await sleep(ctx.window * 1000);
    const b = sampleCpu(lb.pid);
    const rss = rssMb(lb.pid);
    const st = await lb.request({ cmd: 'stats' });
    const s = st.stats!;
    const wall = b.wallS - a.wallS;
    const expected = Math.round((n * wall) / intervalS);
    const cpuS = b.cpuS - a.cpuS;
    const keepsUp = (st.states?.UP ?? 0) === n && s.checks! >= expected * 0.9 && s.lateChecks! <= Math.max(1, s.checks! * 0.01) && s.failedChecks === 0;
    return {
      impl: mode === 'push' ? 'qhcp-push' : 'qhcp-poll',
      n,
      intervalS,
      upAfterS,
      windowS: round(wall, 2),
      cpuPct: round((100 * cpuS) / wall, 1),
      usPerBackendInterval: expected > 0 ? Math.round((cpuS * 1e6) / expected) : 0,
      rssMb: rss,
      checks: s.checks!,
      expected,
      late: s.lateChecks!,
      failed: s.failedChecks!,
      keepsUp,
      ...(opts.farm ? { farm: opts.farm } : {}),
      ...(allUp ? {} : { note: `only ${up.size} of ${n} came UP within ${Math.round((opts.upWithinMs ?? 20_000 + n * 60) / 1000)} s` }),
    };
  } finally {
    await lb.stop(15_000);
  }
}

export async function haproxyCost(ctx: Ctx, info: HaproxyInfo, ports: number[], n: number, intervalS: number, upWithinMs = 10_000): Promise<CostCell> {
  const h = new Haproxy(info, {
    ports: ports.slice(0, n),
    intervalMs: Math.round(intervalS * 1000),
    timeoutMs: Math.round(intervalS * 1000 * CHECK.timeoutFraction),
    fall: CHECK.fall,
    rise: CHECK.rise,
    listenPort: await freeTcpPort(),
  });
  const t0 = Date.now();
  try {
    await h.start();
    // Servers start UP; give every server its first checks (spread over one interval).
    await sleep(intervalS * 1000 * 2);
    const allUp = await until(async () => ((await h.states()).UP ?? 0) === n, upWithinMs, 200);
    const upAfterS = allUp ? round((Date.now() - t0) / 1000, 1) : null;
    await sleep(ctx.settle * 1000);
    const a = sampleCpu(h.pid);
    await sleep(ctx.window * 1000);
    const b = sampleCpu(h.pid);
    const rss = rssMb(h.pid);
    const states = await h.states();
    const wall = b.wallS - a.wallS;
    const expected = Math.round((n * wall) / intervalS);
    const cpuS = b.cpuS - a.cpuS;
    return {
      impl: 'haproxy',
      n,
      intervalS,
      upAfterS,
      windowS: round(wall, 2),
      cpuPct: round((100 * cpuS) / wall, 1),
      usPerBackendInterval: expected > 0 ? Math.round((cpuS * 1e6) / expected) : 0,
      rssMb: rss,
      checks: null,
      expected,
      late: null,
      failed: null,
      keepsUp: (states.UP ?? 0) === n,
      note: 'two checks per backend per interval (check + agent-check)',
    };
  } finally {
    await h.stop();
  }
}
