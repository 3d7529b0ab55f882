/**
 * `node --import tsx bench/drain-haproxy.ts [--full]`: how long from `qhcp drain` on an agent
 * until HAProxy stops sending that server new requests. A real agent (its control socket, as the
 * `qhcp drain` command uses it), a real load balancer checking it over QUIC with the `haproxy`
 * sync plugin, and Debian's HAProxy (one thread, HTTP mode, three servers) as a child process.
 * Agent and load balancer run in this process; the time is taken from just before the control
 * request to the first `show servers state` on HAProxy's admin socket (polled every POLL_MS)
 * that shows the server in drain (srv_admin_state FDRAIN). Then `qhcp ready`, wait for HAProxy
 * to show it ready again, and repeat: REPS bounded repetitions, each bounded by TIMEOUT_MS.
 * Writes bench/results/drain-latest.json (and a dated copy). Target: < 100 ms.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildConfig } from '../core/config/config.ts';
import { LoadBalancer } from '../core/roles/loadbalancer.ts';
import { AgentServer } from '../core/roles/agent.ts';
import { controlRequest } from '../core/control/socket.ts';
import { createLogger } from '../core/util/log.ts';
import RoundRobinPlugin from '../plugins/balancer/round-robin.ts';
import { build } from '../core/testing/index.ts';
import HaproxySyncPlugin from '../plugins/sync/haproxy.ts';
import { ensureHaproxy, Haproxy } from './lib/haproxy.ts';
import { endRun, sleep, startRun, writeResults, type RunInfo } from './lib/proc.ts';
import { runBench } from './lib/children.ts';
import { freeTcpPort } from './lib/ctx.ts';
const full = process.argv.includes('--full');
const REPS = full ? 30 : 10;
const POLL_MS = 5;
const TIMEOUT_MS = 5000;
/** HAProxy's SRV_ADMF_FDRAIN | SRV_ADMF_IDRAIN bits of srv_admin_state. */
const DRAIN_BITS = 0x08 | 0x10;

export interface DrainResults extends RunInfo {
  version: 1;
  mode: 'quick' | 'full';
  haproxy: string;
  settings: { reps: number; pollMs: number; timeoutMs: number };
  /** ms from `qhcp drain` to HAProxy showing drain, per repetition (null: not within TIMEOUT_MS). */
  drainMs: Array<number | null>;
  /** ms from `qhcp ready` to HAProxy showing the server ready again. */
  readyMs: Array<number | null>;
  median: number | null;
  p90: number | null;
  max: number | null;
}

const quiet = () => createLogger({ level: 'warn', json: true, write: (l) => process.stderr.write(`${l}\n`) });

/** srv_admin_state of backend `be`, server `srv`, from `show servers state` (undefined: not listed). */
async function adminState(h: Haproxy, be: string, srv: string): Promise<number | undefined> {
  const out = await h.command(`show servers state ${be}`);
  for (const line of out.split('\n')) {
    const f = line.split(' ');
    // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
    if (f[1] === be && f[3] === srv) return Number(f[6]);
  }
  return undefined;
}

/** Polls every POLL_MS until `want(state)`; ms since `t0`, or null after TIMEOUT_MS. */
async function until(h: Haproxy, want: (admin: number) => boolean, t0: number): Promise<number | null> {
  for (let i = 0; i < TIMEOUT_MS / POLL_MS && performance.now() - t0 < TIMEOUT_MS; i++) {
    const a = await adminState(h, 'web', 's0').catch(() => undefined);
    if (a !== undefined && want(a)) return Math.round((performance.now() - t0) * 10) / 10;
    await sleep(POLL_MS);
  }
  return null;
}

const pct = (xs: number[], p: number) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]! : null);

async function main(): Promise<void> {
  const t0 = Date.now();
  const log = (s: string) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${s}\n`);
  const hp = ensureHaproxy(log);
  if (typeof hp === 'string') throw new Error(hp);
  const run = startRun(t0);
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-bench-drain-'));
  let h: Haproxy | undefined;
  let agent: AgentServer | undefined;
  let lb: LoadBalancer | undefined;
  try {
    // HAProxy's servers need not answer: the figure is HAProxy's admin state, not traffic.
    const front = await freeTcpPort();
    const svc = [await freeTcpPort(), await freeTcpPort(), await freeTcpPort()];
    h = new Haproxy(hp, {
      config: (socket) =>
        [
          'global',
          `  stats socket ${socket} mode 600 level admin`,
          '  nbthread 1',
          'defaults',
          '  mode http',
          '  timeout connect 1s',
          '  timeout client 10s',
          '  timeout server 10s',
          'frontend fe',
          `  bind 127.0.0.1:${front}`,
          '  default_backend web',
          'backend web',
          '  balance roundrobin',
          ...svc.map((p, i) => `  server s${i} 127.0.0.1:${p}`),
          '',
        ].join('\n'),
    });
    await h.start();
    const socket = h.socket;

    const agentCfg = buildConfig({ serverIp: '127.0.0.1', serverPort: 0, sampleInterval: 1, drainGrace: 1, controlSocket: join(dir, 'agent.sock') }, undefined, {}).config;
    agent = new AgentServer(agentCfg, quiet());
    await agent.loadPlugins([]);
    await agent.start();
    const address = `127.0.0.1:${agent.port}`;
    const control = agent.controlSocket!;
    // The agent is s0; s1 and s2 have no agent (DOWN for qhcp): only s0 is watched.
    const sync = build(HaproxySyncPlugin, { socket, backends: ['web'], targets: { [address]: `127.0.0.1:${svc[0]}` }, weightFrom: 'none' });
    const lbCfg = buildConfig({ servers: [address], loadbalancerHost: '127.0.0.1', loadbalancerPort: 0, checkInterval: 1, checkTimeout: 0.5, status: 'none' }, undefined, {}).config;
    lb = new LoadBalancer(lbCfg, quiet());
    await lb.loadPlugins([sync, build(RoundRobinPlugin)]);
    await lb.start();
    const up = await until(h, (a) => (a & DRAIN_BITS) === 0, performance.now());
    if (up === null) throw new Error('HAProxy never showed s0 ready');
    // Wait until the load balancer has the agent UP (the sync plugin has then set s0 ready).
    for (let i = 0; i < 200 && lb.backends().find((b) => b.address === address)?.state !== 'UP'; i++) await sleep(50);
    log(`HAProxy ${hp.version}, agent ${address} UP; ${REPS} repetitions, polling every ${POLL_MS} ms`);

    const drainMs: Array<number | null> = [];
    const readyMs: Array<number | null> = [];
    for (let r = 0; r < REPS; r++) {
      let t = performance.now();
      const a = await controlRequest(control, { cmd: 'drain', reason: 'bench' });
      if (!a.ok) throw new Error(`qhcp drain: ${a.error}`);
      drainMs.push(await until(h, (x) => (x & DRAIN_BITS) !== 0, t));
      t = performance.now();
      const b = await controlRequest(control, { cmd: 'ready' });
      if (!b.ok) throw new Error(`qhcp ready: ${b.error}`);
      readyMs.push(await until(h, (x) => (x & DRAIN_BITS) === 0, t));
      log(`round ${r + 1}: drain ${drainMs.at(-1) ?? 'timeout'} ms, ready ${readyMs.at(-1) ?? 'timeout'} ms`);
      await sleep(200);
    }
    const ok = drainMs.filter((x): x is number => x !== null);
    const res: DrainResults = endRun({
      ...run,
      version: 1,
      mode: full ? 'full' : 'quick',
      haproxy: hp.version,
      settings: { reps: REPS, pollMs: POLL_MS, timeoutMs: TIMEOUT_MS },
      drainMs,
      readyMs,
      median: pct(ok, 0.5),
      p90: pct(ok, 0.9),
      max: ok.length ? Math.max(...ok) : null,
    } satisfies DrainResults, t0);
    writeResults('drain', res);
    log(`drain -> HAProxy drain: median ${res.median} ms, p90 ${res.p90} ms, max ${res.max} ms (${drainMs.length - ok.length} timeouts); wrote bench/results/drain-latest.json`);
  } finally {
    await lb?.stop().catch(() => {});
    await agent?.stop().catch(() => {});
    await h?.stop().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}

// HAProxy is ended by PID on exit, Ctrl-C or an error (runBench); the agent and load balancer live in this process.
await runBench('drain-haproxy', main);
process.exit(0);
