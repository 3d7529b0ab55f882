/**
 * Scale: N = 10,000 backends checked every second in push mode (issue 12: on one core, all UP
 * within 30 s), against an agent farm spread over several processes (one event loop cannot host
 * 10,000 agents and keep their reports on time); and HAProxy with the same N (check +
 * agent-check against TCP agents, also spread over processes) in the same run, for the ratio.
 */
import { Helper, startFarms } from './children.ts';
import type { TcpRequest, TcpReply } from '../tcp-agents.ts';
import { qhcpCost, haproxyCost, type CostCell } from './cost.ts';
import type { HaproxyInfo } from './haproxy.ts';
import { round, type Ctx } from './ctx.ts';
import { cpuSecondsOf, sleep } from './proc.ts';

export interface ScaleResult {
  n: number;
  intervalS: number;
  farmProcesses: number;
  /** Seconds to start the whole farm (not part of any target: the agents' side). */
  farmStartS: number;
  /** The farm's CPU over the qhcp cell, % of one core, all its processes together. */
  farmCpuPct: number | null;
  /** Seconds the load balancer was given to bring every backend UP. */
  upWithinS: number;
  qhcp: CostCell | null;
  haproxy: CostCell | null;
  errors: string[];
}

/** Agents per farm process: about what one event loop keeps on time at one report per second. */
const AGENTS_PER_FARM = 2500;
/** Listening ports per TCP-agent process for HAProxy's side. */
const PORTS_PER_TCP = 2500;

export async function scale(ctx: Ctx, hap: HaproxyInfo | undefined, n: number, intervalS = 1): Promise<ScaleResult> {
  const processes = Math.max(1, Math.ceil(n / AGENTS_PER_FARM));
  const upWithinS = 60;
  const res: ScaleResult = { n, intervalS, farmProcesses: processes, farmStartS: 0, farmCpuPct: null, upWithinS, qhcp: null, haproxy: null, errors: [] };
  const t0 = Date.now();
  const farms = await startFarms(n, processes, { sampleInterval: 5 });
  res.farmStartS = round((Date.now() - t0) / 1000, 1);
  ctx.log(`  agent farm: ${farms.ports.length} agents in ${processes} processes (pids ${farms.pids.join(', ')}), started in ${res.farmStartS} s`);
  try {
    const f0 = cpuSecondsOf(farms.pids);
    const w0 = performance.now();
    res.qhcp = await qhcpCost(ctx, farms.ports, n, intervalS, 'push', { upWithinMs: upWithinS * 1000, farm: { agents: n, processes } });
    res.farmCpuPct = round((100 * (cpuSecondsOf(farms.pids) - f0)) / ((performance.now() - w0) / 1000), 1);
    const c = res.qhcp;
    ctx.log(`  qhcp push N=${n} every ${intervalS} s: ${c.cpuPct}% CPU, ${c.usPerBackendInterval} us/backend/interval, RSS ${c.rssMb} MB, ${c.keepsUp ? 'keeps up' : `does NOT keep up (${c.checks}/${c.expected} checks, ${c.late} late, ${c.failed} failed)`}${c.upAfterS !== null ? `, all UP after ${c.upAfterS} s` : `, ${c.note}`}; farm ${res.farmCpuPct}% CPU`);
  } catch (e) {
    res.errors.push(`qhcp: ${String((e as Error)?.message ?? e).slice(0, 300)}`);
  } finally {
    await farms.stop(20_000);
  }
  if (!hap) return res;
  const tcps: Array<Helper<TcpRequest, TcpReply>> = [];
  try {
    const ports: number[] = [];
    for (let left = n; left > 0; left -= PORTS_PER_TCP) {
      const tcp = new Helper<TcpRequest, TcpReply>('tcp-agents.ts');
      tcps.push(tcp);
      ports.push(...(await tcp.request({ cmd: 'start', count: Math.min(PORTS_PER_TCP, left), reply: 'up ready 75%' })).ports!);
    }
    // Let the listeners settle before HAProxy's first round of 2 x N connects.
    await sleep(500);
    res.haproxy = await haproxyCost(ctx, hap, ports, n, intervalS, upWithinS * 1000);
    const c = res.haproxy;
    ctx.log(`  HAProxy   N=${n} every ${intervalS} s: ${c.cpuPct}% CPU, ${c.usPerBackendInterval} us/backend/interval, RSS ${c.rssMb} MB, ${c.keepsUp ? 'all UP' : 'NOT all UP'}`);
  } catch (e) {
    res.errors.push(`haproxy: ${String((e as Error)?.message ?? e).slice(0, 300)}`);
  } finally {
    await Promise.all(tcps.map((t) => t.stop(5000)));
  }
  return res;
}
