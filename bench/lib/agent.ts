/**
 * Agent cost: one real `qhcp server` (default plugins: system metrics sampled every second),
 * checked at 1 s by 0, 1 and 10 load balancers (independent LoadBalancer instances, each with
 * its own connection); its CPU and RSS over the window.
 *
 * The agent runs as it ships: the compiled JavaScript (`npm run build`, then bin/qhcp.js with
 * QHCP_DIST=1; from the TypeScript sources through tsx only if the build fails, which adds
 * tens of MB of RSS), in an empty working directory (no qhcp.config.ts: the repo's example config
 * adds a custom plugin), with certificate files (no in-memory certificate generation).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSigned } from '../../core/transport/tls.ts';
import { Helper, endChild, startAgent, ROOT, type AgentChild, type LbHost, type LbEvent } from './children.ts';
import { sampleCpu, rssMb, sleep } from './proc.ts';
import { buildDist } from './compiled.ts';
import { freeUdpPort, until, round, type Ctx } from './ctx.ts';

/**
 * Seconds after start before the idle agent is measured. For its first ~30 s V8's worker threads
 * still compile hot functions and collect start-up garbage (about 40 ms of CPU in all, measured
 * 2026-11-29 with per-thread schedstat); an agent runs for days, so the idle row is its steady state.
 */
const IDLE_SETTLE_S = 30;

export interface AgentCell {
  /** `idle-config-ts`: idle, started in a directory with a qhcp.config.ts (what loading one costs). */
  mode: 'poll' | 'push' | 'idle' | 'idle-config-ts';
  loadBalancers: number;
  intervalS: number;
  cpuPct: number;
  /** CPU microseconds per check (per load balancer per interval), beyond the idle agent. */
  usPerCheck: number | null;
  rssMb: number;
  /** How the agent ran: compiled (`dist`, as installed) or from sources through tsx. */
  runtime?: 'dist' | 'tsx';
}

export async function agentCost(ctx: Ctx, modes: Array<'poll' | 'push'>, counts: number[], intervalS = 1): Promise<AgentCell[]> {
  const t0 = Date.now();
  const buildProblem = buildDist();
  const runtime = buildProblem ? 'tsx' : 'dist';
  ctx.log(buildProblem ? `  ${buildProblem}; the agent runs from the sources through tsx` : `  npm run build: ${round((Date.now() - t0) / 1000, 1)} s; the agent runs the compiled dist/`);
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-bench-agent-'));
  const tls = await selfSigned(['127.0.0.1']);
  writeFileSync(join(dir, 'cert.pem'), tls.cert);
  writeFileSync(join(dir, 'key.pem'), tls.key, { mode: 0o600 });
  const out: AgentCell[] = [];
  let agent: AgentChild | undefined;
  try {
    const started = await benchAgent(dir, dir, runtime);
    agent = started;
    const { port } = started;
    const pid = started.child.pid!;
    const measure = async (settleS = ctx.settle, windowS = ctx.window) => {
      await sleep(settleS * 1000);
      const a = sampleCpu(pid);
      await sleep(windowS * 1000);
      const b = sampleCpu(pid);
      return { cpuS: b.cpuS - a.cpuS, wall: b.wallS - a.wallS, rss: rssMb(pid) };
    };
    // The idle row: after start-up has settled, over a window long enough for 0.1% of a core (20 ms of CPU) to read.
    const idle = await measure(IDLE_SETTLE_S, Math.max(20, ctx.window));
    const idlePct = (100 * idle.cpuS) / idle.wall;
    out.push({ mode: 'idle', loadBalancers: 0, intervalS, cpuPct: round(idlePct, 2), usPerCheck: null, rssMb: idle.rss, runtime });
    out.push(await configTsAgent(dir, runtime, intervalS));
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
          // One load balancer: a 20-s window, as for the idle row (0.2% of a core is 10 ms in 5 s).
          const m = await measure(ctx.settle, k === 1 ? Math.max(20, ctx.window) : ctx.window);
          const pct = (100 * m.cpuS) / m.wall;
          const checks = (k * m.wall) / intervalS;
          out.push({ mode, loadBalancers: k, intervalS, cpuPct: round(pct, 2), usPerCheck: Math.round(((m.cpuS - (idlePct / 100) * m.wall) * 1e6) / checks), rssMb: m.rss, runtime });
        } finally {
          await lb.stop(10_000);
        }
      }
    }
  } finally {
    if (agent) await endChild(agent.child, 5000);
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

/**
 * The same agent, idle, in a directory holding a qhcp.config.ts that imports `qhcp` (as a user's
 * would): what loading a TypeScript config leaves in the process (core/config/user-modules.ts).
 * RSS after 25 s; CPU over the last 10 (start-up's compilation is not all over by then).
 */
async function configTsAgent(certDir: string, runtime: 'dist' | 'tsx', intervalS: number): Promise<AgentCell> {
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-bench-agent-ts-'));
  writeFileSync(join(dir, 'qhcp.config.ts'), "import { defineConfig } from 'qhcp';\n\nexport default defineConfig({ plugins: ['system-metrics'] });\n");
  let agent: AgentChild | undefined;
  try {
    agent = await benchAgent(dir, certDir, runtime);
    const pid = agent.child.pid!;
    await sleep(15_000);
    const a = sampleCpu(pid);
    await sleep(10_000);
    const b = sampleCpu(pid);
    return { mode: 'idle-config-ts', loadBalancers: 0, intervalS, cpuPct: round((100 * (b.cpuS - a.cpuS)) / (b.wallS - a.wallS), 2), usPerCheck: null, rssMb: rssMb(pid), runtime };
  } finally {
    if (agent) await endChild(agent.child, 5000);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A `qhcp server` on a free loopback port, working directory `dir`, certificate files from `certDir`, as the bench runs it (compiled, or through tsx). */
async function benchAgent(dir: string, certDir: string, runtime: 'dist' | 'tsx'): Promise<AgentChild & { port: number }> {
  const port = await freeUdpPort();
  const agent = await startAgent(['--server-ip', '127.0.0.1', '--server-port', String(port), '--cert-file', join(certDir, 'cert.pem'), '--key-file', join(certDir, 'key.pem'), '--control-socket', join(dir, 'control.sock')], {
    cwd: dir,
    env: { ...process.env, QHCP_DIST: runtime === 'dist' ? '1' : '0' },
  });
  return Object.assign(agent, { port });
}
