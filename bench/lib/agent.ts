/**
 * Agent cost: one real `qhcp server` (default plugins: system metrics sampled every second),
 * checked at 1 s by 0, 1 and 10 load balancers (independent LoadBalancer instances, each with
 * its own connection); its CPU and RSS over the window.
 */
import { fileURLToPath } from 'node:url';
import { Helper, spawnTracked, endChild, type LbHost, type LbEvent } from './children.ts';
import { sampleCpu, rssMb, sleep } from './proc.ts';
import { freeUdpPort, until, round, type Ctx } from './ctx.ts';

const BIN = fileURLToPath(new URL('../../bin/qhcp.js', import.meta.url));

export interface AgentCell {
  mode: 'poll' | 'push' | 'idle';
  loadBalancers: number;
  intervalS: number;
  cpuPct: number;
  /** CPU microseconds per check (per load balancer per interval), beyond the idle agent. */
  usPerCheck: number | null;
  rssMb: number;
}

export async function agentCost(ctx: Ctx, modes: Array<'poll' | 'push'>, counts: number[], intervalS = 1): Promise<AgentCell[]> {
  const port = await freeUdpPort();
  let ready = false;
  const agent = spawnTracked(process.execPath, [BIN, 'server', '--server-ip', '127.0.0.1', '--server-port', String(port)], {
    onLine: (line) => {
      if (/server listening/.test(line)) ready = true;
    },
  });
  const out: AgentCell[] = [];
  try {
    if (!(await until(() => ready || agent.exitCode !== null, 30_000, 20)) || !ready) throw new Error('qhcp server did not start');
    const measure = async () => {
      await sleep(ctx.settle * 1000);
      const a = sampleCpu(agent.pid!);
      await sleep(ctx.window * 1000);
      const b = sampleCpu(agent.pid!);
      return { cpuS: b.cpuS - a.cpuS, wall: b.wallS - a.wallS, rss: rssMb(agent.pid!) };
    };
    const idle = await measure();
    const idlePct = (100 * idle.cpuS) / idle.wall;
    out.push({ mode: 'idle', loadBalancers: 0, intervalS, cpuPct: round(idlePct, 2), usPerCheck: null, rssMb: idle.rss });
    for (const mode of modes) {
      for (const k of counts) {
        const lb: LbHost = new Helper('lb-host.ts');
        let up = 0;
        lb.onEvent = (e) => {
          if ((e as LbEvent).to === 'UP') up++;
        };
        try {
          await lb.request({
            cmd: 'start',
            instances: k,
            flags: { servers: [`127.0.0.1:${port}`], checkInterval: intervalS, reconnectInterval: intervalS, reportInterval: mode === 'push' ? intervalS : 0 },
          });
          await until(() => up >= k, 30_000, 50);
          const m = await measure();
          const pct = (100 * m.cpuS) / m.wall;
          const checks = (k * m.wall) / intervalS;
          out.push({ mode, loadBalancers: k, intervalS, cpuPct: round(pct, 2), usPerCheck: Math.round(((m.cpuS - (idlePct / 100) * m.wall) * 1e6) / checks), rssMb: m.rss });
        } finally {
          await lb.stop(10_000);
        }
      }
    }
  } finally {
    await endChild(agent, 5000);
  }
  return out;
}
