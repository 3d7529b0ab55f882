/**
 * Load balancer cost: N backends checked every I seconds; the load balancer's CPU (from
 * /proc), CPU per backend per interval, RSS, and whether it keeps up. The same cell for qhcp
 * (poll or push, against an agent farm) and for HAProxy (check + agent-check against TCP agents).
 */
import { readFileSync } from 'node:fs';
import { Helper, type LbHost, type LbEvent } from './children.ts';
import { Haproxy, type HaproxyInfo } from './haproxy.ts';
import { sampleCpu, rssMb, sleep } from './proc.ts';
import { freeTcpPort, until, round, type Ctx } from './ctx.ts';
import { LB_NODE_FLAGS } from '../../core/cli/relaunch.ts';

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
  /** qhcp: the check socket's datagrams in and out per check in the window, and the nudges sent (driver.ts DriverStats). */
  datagrams?: { inPerCheck: number; outPerCheck: number; nudges: number };
  /** All UP at the end, checks at >= 90% of the implied rate, <= 1% late. */
  keepsUp: boolean;
  /** The agents on the other side (qhcp): how many the farm hosted in all, over how many processes. */
  farm?: { agents: number; processes: number };
  /** qhcp: how the load balancer ran, compiled as it ships (`dist`) or from the sources through tsx (bench/lib/compiled.ts). */
  runtime?: 'dist' | 'tsx';
  note?: string;
}

/**
 * Seconds of each cost cell's CPU window, in both modes (quick mode's 5-s windows are too short:
 * a major GC or start-up's last compilations are a large share of 5 s at 9% of a core). Measured
 * 2026-11-30, N = 1000 push, same tree: 5-s windows read 92-100 us per report, 15-s windows 76-87.
 */
export const COST_WINDOW_S = 15;

/** Settings shared by both implementations: fall 3, rise 2, timeout half the interval. */
export const CHECK = { fall: 3, rise: 2, timeoutFraction: 0.5 } as const;

export interface QhcpCostOptions {
  /** How long to wait for every backend to come UP (default 20 s + 60 ms per backend). */
  upWithinMs?: number;
  /** Recorded with the cell: the farm behind `ports`. */
  farm?: { agents: number; processes: number };
  /** Node flags for the load balancer's process besides those `qhcp lb` runs with (LB_NODE_FLAGS), e.g. --cpu-prof to profile it. */
  execArgv?: string[];
}

export async function qhcpCost(ctx: Ctx, ports: number[], n: number, intervalS: number, mode: 'poll' | 'push', opts: QhcpCostOptions = {}): Promise<CostCell> {
  // The Node flags `qhcp lb` relaunches itself with (core/cli/relaunch.ts): the load balancer as it runs.
  const lb: LbHost = new Helper('lb-host.ts', [], [...LB_NODE_FLAGS, ...(opts.execArgv ?? [])]);
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
    // The driver's counters are not reset: the window's share is the difference.
    const s0 = (await lb.request({ cmd: 'stats' })).stats!;
    const a = sampleCpu(lb.pid);
    await sleep(Math.max(ctx.window, COST_WINDOW_S) * 1000);
    const b = sampleCpu(lb.pid);
    const rss = rssMb(lb.pid);
    const st = await lb.request({ cmd: 'stats' });
    const s = st.stats!;
    const wall = b.wallS - a.wallS;
    const expected = Math.round((n * wall) / intervalS);
    const cpuS = b.cpuS - a.cpuS;
    const d = (k: string): number => (s[`check.${k}`] ?? 0) - (s0[`check.${k}`] ?? 0);
    const datagrams = s.checks! > 0 ? { inPerCheck: round(d('datagramsIn') / s.checks!, 2), outPerCheck: round(d('datagramsOut') / s.checks!, 2), nudges: d('nudges') } : undefined;
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
      ...(datagrams ? { datagrams } : {}),
      ...(opts.farm ? { farm: opts.farm } : {}),
      runtime: lb.runtime,
      ...(allUp ? {} : { note: `only ${up.size} of ${n} came UP within ${Math.round((opts.upWithinMs ?? 20_000 + n * 60) / 1000)} s` }),
    };
  } finally {
    await lb.stop(15_000);
  }
}

/** HAProxy's global maxconn in the bench config (bench/lib/haproxy.ts); it reserves two descriptors per connection. */
const HAPROXY_MAXCONN = 4096;
/** Descriptors HAProxy 2.6 reserves per server with check + agent-check (10,000 servers ask for 30,014 + 2 x maxconn). */
const HAPROXY_FDS_PER_SERVER = 3;

/** This process's hard limit on open files (HAProxy raises its soft limit up to it, never past it). */
function hardFdLimit(): number {
  try {
    const m = /^Max open files\s+\S+\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : Infinity;
  } catch {
    return Infinity;
  }
}

/**
 * HAProxy processes needed for `n` servers: one, unless its descriptor reservation passes the
 * hard limit, which only a privileged process can raise (no CAP_SYS_RESOURCE here: N = 10,000
 * failed "Cannot raise FD limit to 38217, limit is 20000"). Then the servers are split over
 * processes whose CPU and RSS are summed (each process adds its own base, ~5-10 MB).
 */
export function haproxyProcessesFor(n: number, limit = hardFdLimit()): number {
  const perProcess = Math.floor((limit - 2 * HAPROXY_MAXCONN - 500) / HAPROXY_FDS_PER_SERVER);
  return perProcess > 0 ? Math.max(1, Math.ceil(n / perProcess)) : 1;
}

export async function haproxyCost(ctx: Ctx, info: HaproxyInfo, ports: number[], n: number, intervalS: number, upWithinMs = 10_000): Promise<CostCell> {
  const k = haproxyProcessesFor(n);
  const per = Math.ceil(n / k);
  const hs: Haproxy[] = [];
  /** Process i, started on a free listen port; another one when someone took that port first (bounded: 3 tries). */
  const startOne = async (i: number): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      const h = new Haproxy(info, {
        ports: ports.slice(i * per, Math.min(n, (i + 1) * per)),
        intervalMs: Math.round(intervalS * 1000),
        timeoutMs: Math.round(intervalS * 1000 * CHECK.timeoutFraction),
        fall: CHECK.fall,
        rise: CHECK.rise,
        listenPort: await freeTcpPort(),
      });
      try {
        await h.start();
        hs.push(h);
        return;
      } catch (e) {
        await h.stop().catch(() => {});
        if (attempt >= 3 || !/Address already in use/.test(String(e))) throw e;
      }
    }
  };
  const upCount = async () => (await Promise.all(hs.map((h) => h.states()))).reduce((s, st) => s + (st.UP ?? 0), 0);
  const cpu = () => {
    const x = hs.map((h) => sampleCpu(h.pid));
    return { cpuS: x.reduce((s, v) => s + v.cpuS, 0), wallS: x[0]!.wallS };
  };
  const t0 = Date.now();
  try {
    for (let i = 0; i < k; i++) await startOne(i);
    // Servers start UP; give every server its first checks (spread over one interval).
    await sleep(intervalS * 1000 * 2);
    const allUp = await until(async () => (await upCount()) === n, upWithinMs, 200);
    const upAfterS = allUp ? round((Date.now() - t0) / 1000, 1) : null;
    await sleep(ctx.settle * 1000);
    const a = cpu();
    await sleep(Math.max(ctx.window, COST_WINDOW_S) * 1000);
    const b = cpu();
    const rss = round(hs.reduce((s, h) => s + rssMb(h.pid), 0), 1);
    const up = await upCount();
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
      keepsUp: up === n,
      note: `two checks per backend per interval (check + agent-check)${k > 1 ? `; ${k} HAProxy processes (the open-files hard limit, ${hardFdLimit()}, is below one process's reservation for ${n} servers), CPU and RSS summed` : ''}`,
    };
  } finally {
    await Promise.all(hs.map((h) => h.stop()));
  }
}
