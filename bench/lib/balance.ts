/**
 * Balancing: how fast each strategy picks, in process (LoadBalancer.pick through the `pick`
 * hook, the path PICK takes), with 10 and 1000 UP backends; and PICK over QUIC from 1 and 50
 * clients to a running load balancer: queries per second, latency and the load balancer's CPU per
 * PICK, each client asking one PICK at a time, and 50 clients each with 16 concurrent callers on
 * its connection (the client pipelines them, as a proxy placing many requests would).
 */
import { performance } from 'node:perf_hooks';
import { LoadBalancer } from '../../core/roles/loadbalancer.ts';
import { buildConfig } from '../../core/config/config.ts';
import { createLogger } from '../../core/util/log.ts';
import { BUILTIN_PLUGINS, resolvePlugins } from '../../core/plugin/loader.ts';
import { Helper, type LbHost, type LbEvent } from './children.ts';
import type { PickRequest, PickReply } from '../pick-client.ts';
import { sampleCpu, summary } from './proc.ts';
import { until, round, type Ctx } from './ctx.ts';

export interface PickRate {
  strategy: string;
  n: number;
  picksPerS: number | null;
  nsPerPick: number | null;
  note?: string;
}

export interface QuicPick {
  clients: number;
  /** Concurrent callers per client connection (PICKs in flight on it; absent in older results: 1). */
  inFlight?: number;
  qps: number;
  p50Us: number | null;
  p99Us: number | null;
  lbCpuPct: number;
  /** The load balancer's CPU per PICK answered (microseconds). */
  lbUsPerPick?: number;
  empty: number;
}

/** Every built-in balancer strategy (the registry's balancer entries). */
export const STRATEGIES = Object.entries(BUILTIN_PLUGINS)
  .filter(([, path]) => path.includes('/balancer/'))
  .map(([name]) => name);

/** A load balancer (not started) with `n` backends balanced by `strategy`, all UP with fresh reports set on the records as the checker would. */
export async function upLoadBalancer(strategy: string, n: number): Promise<LoadBalancer> {
  const servers = Array.from({ length: n }, (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:4243`);
  const { config } = buildConfig(undefined, undefined, { servers, defaults: false, plugins: [strategy] });
  const lb = new LoadBalancer(config, createLogger({ level: 'silent' }));
  await lb.loadPlugins(await resolvePlugins(config, 'loadbalancer'));
  const now = Date.now();
  for (const b of lb.records()) {
    b.state = 'UP';
    const load = Math.random();
    b.metrics = { cpu: load * 100, memory: 40, load1: load * 2, loadScore: load };
    b.reportedAt = now;
  }
  return lb;
}

export async function inProcessPicks(ctx: Ctx, sizes: number[]): Promise<PickRate[]> {
  const out: PickRate[] = [];
  const seconds = ctx.full ? 2 : 0.5;
  for (const strategy of STRATEGIES) {
    for (const n of sizes) {
      try {
        const lb = await upLoadBalancer(strategy, n);
        let picks = 0;
        let none = 0;
        const t0 = performance.now();
        const end = t0 + seconds * 1000;
        // Check the clock every 256 picks only: reading it costs more than a pick.
        while (performance.now() < end) {
          for (let i = 0; i < 256; i++) if (!lb.pick()) none++;
          picks += 256;
        }
        const took = (performance.now() - t0) / 1000;
        out.push({ strategy, n, picksPerS: Math.round(picks / took), nsPerPick: Math.round((took * 1e9) / picks), ...(none ? { note: `${none} picks chose nothing` } : {}) });
      } catch (e) {
        out.push({ strategy, n, picksPerS: null, nsPerPick: null, note: `not measured: ${String(e).slice(0, 200)}` });
      }
    }
    ctx.log(`  ${strategy}: ${out.filter((r) => r.strategy === strategy).map((r) => `${r.n} backends ${r.picksPerS?.toLocaleString('en') ?? '-'} picks/s`).join(', ')}`);
  }
  return out;
}

/** `cells`: client counts (one PICK in flight each) or { clients, inFlight }. */
export async function quicPicks(ctx: Ctx, ports: number[], cells: Array<number | { clients: number; inFlight: number }>): Promise<QuicPick[]> {
  const lb: LbHost = new Helper('lb-host.ts');
  let up = 0;
  lb.onEvent = (e) => {
    if ((e as LbEvent).to === 'UP') up++;
  };
  const out: QuicPick[] = [];
  try {
    const { port } = await lb.request({ cmd: 'start', flags: { servers: ports.map((p) => `127.0.0.1:${p}`), checkInterval: 1, reconnectInterval: 1 } });
    await until(() => up >= ports.length, 30_000, 50);
    for (const cell of cells) {
      const { clients, inFlight } = typeof cell === 'number' ? { clients: cell, inFlight: 1 } : cell;
      const pc = new Helper<PickRequest, PickReply>('pick-client.ts');
      try {
        // Connections first: their handshakes are not PICKs.
        await pc.request({ cmd: 'open', port: port!, clients, inFlight }, 120_000);
        const a = sampleCpu(lb.pid);
        const r = await pc.request({ cmd: 'run', port: port!, clients, seconds: ctx.full ? 10 : 3, inFlight }, 120_000);
        const b = sampleCpu(lb.pid);
        const s = summary(r.latenciesUs!);
        const lbUsPerPick = Math.round(((b.cpuS - a.cpuS) * 1e6) / Math.max(1, r.picks!));
        out.push({ clients, inFlight, qps: Math.round(r.picks! / r.seconds!), p50Us: s.p50, p99Us: s.p99, lbCpuPct: round((100 * (b.cpuS - a.cpuS)) / (b.wallS - a.wallS), 1), lbUsPerPick, empty: r.empty! });
        ctx.log(`  PICK over QUIC, ${clients} client(s) x ${inFlight} in flight: ${out.at(-1)!.qps} queries/s, load balancer ${lbUsPerPick} us CPU per PICK, p50 ${s.p50} us, p99 ${s.p99} us`);
      } finally {
        await pc.stop(5000);
      }
    }
  } finally {
    await lb.stop(10_000);
  }
  return out;
}
