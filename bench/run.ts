/**
 * `npm run bench` (quick, a few minutes) or `npm run bench -- --full`: qhcp and HAProxy on the
 * same machine in the same run, everything on loopback, every wait bounded, every child
 * process ended by PID at the end (or on Ctrl-C). Writes bench/results/<time>-<mode>.json and
 * bench/results/latest.json, then regenerates docs/benchmarks.md and its chart (bench/report.ts).
 *
 * Options: --full, --only floor,cost,haproxy,detect,agent,balance,scale,service,admin,tcp-proxy,drain,watch,cluster,picks (comma list), --sizes
 * 10,100 (backend counts for the cost cells; default 10,100,1000), --scale-n 10000 (backends of the
 * `scale` section, default 10,000; a small value smoke-tests it), --no-report.
 *
 * The `scale` section (bench/lib/scale.ts): N = 10,000 backends at 1 s in push mode against an
 * agent farm spread over several processes, and HAProxy with the same N.
 *
 * The `service` section (a service failure -> out of rotation, next to HAProxy's httpchk) keeps
 * its results in bench/results/service-<time>.json and service-latest.json, which the report
 * reads on its own: `--only service` refreshes that section without touching latest.json.
 * The `admin` section (`qhcp drain` / `ready` / the maintenance file -> the load balancer's state)
 * does the same with bench/results/admin-<time>.json and admin-latest.json.
 * The `tcp-proxy` section (bench/tcp-proxy.ts: the tcp-proxy plugin next to HAProxy in TCP mode
 * and a bare Node pipe) and the `drain` section (bench/drain-haproxy.ts: `qhcp drain` -> HAProxy
 * shows the server in drain, through the haproxy sync plugin) run their scripts as child
 * processes, which write tcp-proxy-latest.json and drain-latest.json for the report; so does the
 * `cluster` section (bench/cluster.ts: three load balancers as one group through Redis next to
 * three independent ones), with cluster-latest.json.
 * The `watch` section (bench/lib/watch.ts: a load balancer's transition -> a `watch()` client's
 * 'change' event) keeps its results in watch-<time>.json and watch-latest.json.
 * The `picks` section (bench/picks.ts: a pick's cost per strategy at N = 10, 1000, 10 000 in
 * process, and LoadBalancer.pick / PICK over QUIC against the commit before issue 16) runs as a
 * child process and writes picks-latest.json.
 */
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startFarm, Helper, stopChildren, spawnTracked, benchTls, type Farm, runBench } from './lib/children.ts';
import type { TcpRequest, TcpReply } from './tcp-agents.ts';
import { ensureHaproxy, type HaproxyInfo } from './lib/haproxy.ts';
import { machine, loadAverage, writeResults, type RunInfo } from './lib/proc.ts';
import { makeCtx } from './lib/ctx.ts';
import { floor, type FloorCell } from './lib/floor-run.ts';
import { qhcpCost, haproxyCost, CHECK, COST_WINDOW_S, type CostCell } from './lib/cost.ts';
import { qhcpDetect, haproxyDetect, type DetectResult } from './lib/detect.ts';
import { agentCost, type AgentCell } from './lib/agent.ts';
import { inProcessPicks, quicPicks, type PickRate, type QuicPick } from './lib/balance.ts';
import { serviceFailure, type ServiceResult } from './lib/service.ts';
import { scale, type ScaleResult } from './lib/scale.ts';
import { adminLatency, type AdminResult } from './lib/admin.ts';
import { watchLatency, type WatchResult } from './lib/watch.ts';
import { writeReport } from './report.ts';

export interface Results extends RunInfo {
  version: 1;
  mode: 'quick' | 'full';
  finishedAt: string;
  /** Seconds each section took in this run (quick mode must stay under 12 minutes in all). */
  sectionS?: Record<string, number>;
  qhcpVersion: string;
  quicVersion: string;
  haproxy: { version: string } | { skipped: string };
  settings: { fall: number; rise: number; timeoutFraction: number; windowS: number; /** Seconds of the CPU cost cells' windows (absent in runs before 2026-11-30: the same as windowS). */ costWindowS?: number; settleS: number; runs: number };
  floor: FloorCell[];
  /** When the floor rows come from another run than the rest (a rerun merged in), when and why. */
  floorNote?: string;
  cost: CostCell[];
  detection: DetectResult[];
  agent: AgentCell[];
  picks: PickRate[];
  quicPicks: QuicPick[];
  /** N = 10,000 in push mode next to HAProxy (absent in results from before it was measured). */
  scale?: ScaleResult;
  errors: string[];
}

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const SECTIONS = ['floor', 'cost', 'haproxy', 'detect', 'agent', 'balance', 'scale', 'service', 'admin', 'tcp-proxy', 'drain', 'watch', 'cluster', 'picks'] as const;
/** Sections that keep their results in their own files (<name>-latest.json), not in latest.json. */
const OWN_FILE = new Set(['service', 'admin', 'tcp-proxy', 'drain', 'watch', 'cluster', 'picks']);

/** Runs `node --import tsx bench/<script>` to its end (bounded: SIGINT, then SIGKILL, after `timeoutMs`); its lines go to `log`. */
async function benchScript(script: string, args: string[], timeoutMs: number, log: (s: string) => void): Promise<void> {
  const child = spawnTracked(process.execPath, ['--import', 'tsx', `bench/${script}`, ...args], { onLine: (l) => l.trim() && log(`  ${l}`) });
  const code = await new Promise<number | string | null>((resolve) => {
    const t = setTimeout(() => {
      // SIGINT: the script ends its own children (by PID) before it exits.
      child.kill('SIGINT');
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    }, timeoutMs);
    child.once('exit', (c, sig) => {
      clearTimeout(t);
      resolve(c ?? sig);
    });
  });
  if (code !== 0) throw new Error(`bench/${script} ended with ${code}`);
}

function parseArgs(argv: string[]): { full: boolean; only: Set<string>; report: boolean; sizes: number[]; scaleN: number } {
  const full = argv.includes('--full');
  const i = argv.indexOf('--only');
  const only = new Set(i >= 0 ? (argv[i + 1] ?? '').split(',') : SECTIONS);
  for (const s of only) if (!(SECTIONS as readonly string[]).includes(s)) throw new Error(`--only: unknown section "${s}" (sections: ${SECTIONS.join(', ')})`);
  const z = argv.indexOf('--sizes');
  const sizes = z >= 0 ? (argv[z + 1] ?? '').split(',').map(Number) : [10, 100, 1000];
  if (sizes.some((n) => !Number.isInteger(n) || n < 10 || n > 5000)) throw new Error('--sizes: integers from 10 to 5000, comma-separated');
  const k = argv.indexOf('--scale-n');
  const scaleN = k >= 0 ? Number(argv[k + 1]) : 10_000;
  if (!Number.isInteger(scaleN) || scaleN < 10 || scaleN > 20_000) throw new Error('--scale-n: an integer from 10 to 20000');
  return { full, only, report: !argv.includes('--no-report'), sizes, scaleN };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  const log = (s: string) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${s}\n`);
  const ctx = makeCtx(args.full, log);
  const pkg = (p: string) => (JSON.parse(readFileSync(`${ROOT}${p}`, 'utf8')) as { version: string }).version;
  const res: Results = {
    version: 1,
    mode: args.full ? 'full' : 'quick',
    startedAt: new Date().toISOString(),
    finishedAt: '',
    durationS: 0,
    machine: machine(),
    loadavgStart: loadAverage(),
    loadavgEnd: [],
    qhcpVersion: pkg('package.json'),
    quicVersion: pkg('node_modules/@matrixai/quic/package.json'),
    haproxy: { skipped: 'not run' },
    settings: { fall: CHECK.fall, rise: CHECK.rise, timeoutFraction: CHECK.timeoutFraction, windowS: ctx.window, costWindowS: Math.max(ctx.window, COST_WINDOW_S), settleS: ctx.settle, runs: ctx.runs },
    floor: [],
    cost: [],
    detection: [],
    agent: [],
    picks: [],
    quicPicks: [],
    errors: [],
  };
  log(`qhcp benchmark, ${res.mode} mode, load average ${res.loadavgStart.join(' ')} on ${String(res.machine.cores)} cores`);
  await benchTls();

  const section = async (name: string, f: () => Promise<void>) => {
    if (!args.only.has(name)) return;
    log(`== ${name}`);
    const began = Date.now();
    try {
      await f();
    } catch (e) {
      const msg = `${name}: ${String((e as Error)?.message ?? e).slice(0, 500)}`;
      res.errors.push(msg);
      log(`!! ${msg}`);
    } finally {
      (res.sectionS ??= {})[name] = Math.round((Date.now() - began) / 1000);
      log(`   ${name} took ${res.sectionS[name]} s`);
    }
  };

  const sizes = args.sizes;
  const intervals = [1, 0.1];
  // 1000 backends every 100 ms is 10 000 checks a second: only in --full (it does not keep up).
  const cells = intervals.flatMap((i) => sizes.filter((n) => args.full || i >= 1 || n < 1000).map((n) => ({ n, i })));
  let farm: Farm | undefined;
  let ports: number[] = [];
  const needFarm = ['cost', 'detect', 'balance'].some((s) => args.only.has(s));
  let hap: HaproxyInfo | undefined;
  let service: ServiceResult | undefined;
  let admin: AdminResult | undefined;
  let watched: WatchResult | undefined;

  try {
    if (needFarm) {
      ({ farm, ports } = await startFarm(Math.max(...cells.map((c) => c.n)), { sampleInterval: 5 }));
      log(`agent farm: ${ports.length} agents in one process (pid ${farm.pid})`);
    }
    if (['haproxy', 'detect', 'scale', 'service', 'admin'].some((x) => args.only.has(x))) {
      const h = ensureHaproxy(log);
      if (typeof h === 'string') {
        res.haproxy = { skipped: h };
        log(`HAProxy skipped: ${h}`);
      } else {
        hap = h;
        res.haproxy = { version: h.version };
        log(`HAProxy ${h.version} (${h.path})`);
      }
    }

    await section('floor', async () => {
      res.floor = await floor(ctx, 100, 1);
    });

    await section('cost', async () => {
      for (const { n, i } of cells) {
        for (const mode of ['poll', 'push'] as const) {
          const c = await qhcpCost(ctx, ports, n, i, mode, { farm: { agents: ports.length, processes: 1 } });
          res.cost.push(c);
          log(`  qhcp ${mode.padEnd(4)} N=${String(n).padEnd(4)} every ${i} s: ${c.cpuPct}% CPU, ${c.usPerBackendInterval} us/backend/interval, RSS ${c.rssMb} MB, ${c.keepsUp ? 'keeps up' : `does NOT keep up (${c.checks}/${c.expected} checks, ${c.late} late, ${c.failed} failed)`}${c.upAfterS !== null ? `, all UP after ${c.upAfterS} s` : `, ${c.note}`}${c.datagrams ? `; datagrams per check ${c.datagrams.inPerCheck} in, ${c.datagrams.outPerCheck} out, ${c.datagrams.nudges} nudges` : ''}`);
        }
      }
    });

    await section('haproxy', async () => {
      if (!hap) return;
      const tcp = new Helper<TcpRequest, TcpReply>('tcp-agents.ts');
      try {
        const { ports: tports } = await tcp.request({ cmd: 'start', count: Math.max(...cells.map((c) => c.n)), reply: 'up ready 75%' });
        for (const { n, i } of cells) {
          const c = await haproxyCost(ctx, hap, tports!, n, i);
          res.cost.push(c);
          log(`  HAProxy   N=${String(n).padEnd(4)} every ${i} s: ${c.cpuPct}% CPU, ${c.usPerBackendInterval} us/backend/interval, RSS ${c.rssMb} MB, ${c.keepsUp ? 'all UP' : 'NOT all UP'}`);
        }
      } finally {
        await tcp.stop(5000);
      }
    });

    await section('detect', async () => {
      const others = ports.slice(0, 9);
      const modes: Array<'poll' | 'push'> = args.full ? ['poll', 'push'] : ['push'];
      for (const mode of modes) {
        const d = await qhcpDetect(ctx, others, mode);
        res.detection.push(d);
        log(`  qhcp ${mode}: crash ${fmt(d.summary.crash)}, graceful ${fmt(d.summary.graceful)}, recovery ${fmt(d.summary.recovery)}${d.misses.length ? `; misses: ${d.misses.join('; ')}` : ''}`);
      }
      if (hap) {
        const tcp = new Helper<TcpRequest, TcpReply>('tcp-agents.ts');
        try {
          const { ports: tports } = await tcp.request({ cmd: 'start', count: 9, reply: 'up ready 75%' });
          const d = await haproxyDetect(ctx, hap, tports!);
          res.detection.push(d);
          log(`  HAProxy: crash ${fmt(d.summary.crash)}, graceful ${fmt(d.summary.graceful)}, recovery ${fmt(d.summary.recovery)}${d.misses.length ? `; misses: ${d.misses.join('; ')}` : ''}`);
        } finally {
          await tcp.stop(5000);
        }
      }
    });

    await section('agent', async () => {
      res.agent = await agentCost(ctx, args.full ? ['poll', 'push'] : ['poll', 'push'], [1, 10]);
      for (const a of res.agent) log(`  agent ${a.mode.padEnd(4)} checked by ${a.loadBalancers}: ${a.cpuPct}% CPU, RSS ${a.rssMb} MB${a.usPerCheck !== null ? `, ${a.usPerCheck} us per check` : ''}`);
    });

    await section('balance', async () => {
      res.picks = await inProcessPicks(ctx, [10, 1000]);
      res.quicPicks = await quicPicks(ctx, ports.slice(0, 10), [
        { clients: 1, inFlight: 1 },
        { clients: 50, inFlight: 1 },
        { clients: 50, inFlight: 16 },
      ]);
    });

    await section('scale', async () => {
      // Its own farms: the shared one stops first, so its agents do not share the cores.
      await farm?.stop(15_000).catch(() => {});
      farm = undefined;
      res.scale = await scale(ctx, hap, args.scaleN);
      if (res.scale.errors.length) throw new Error(res.scale.errors.join('; '));
    });

    await section('service', async () => {
      service = await serviceFailure(ctx, hap ?? ('skipped' in res.haproxy ? res.haproxy.skipped : 'not run'));
      for (const c of service.cells) log(`  ${c.impl.padEnd(7)} ${c.failure.padEnd(7)}: down ${fmt(c.summary.down)}, up ${fmt(c.summary.up)}`);
      if (service.misses.length) log(`  misses: ${service.misses.join('; ')}`);
    });

    await section('admin', async () => {
      // Quick mode: 10 repetitions of each change (the full mode's 20 would take ~4 of the quick run's 12 minutes).
      admin = await adminLatency(ctx, hap ?? ('skipped' in res.haproxy ? res.haproxy.skipped : 'not run'), args.full ? {} : { runs: 10, cliRuns: 3 });
      for (const c of admin.cells) log(`  ${c.impl.padEnd(9)} ${c.case.padEnd(10)}: median ${c.summary.seen.p50} ms, p90 ${c.summary.seen.p90} ms, max ${c.summary.seen.max} ms (${c.summary.seen.n} runs)`);
      if (admin.misses.length) log(`  misses: ${admin.misses.join('; ')}`);
    });

    await section('tcp-proxy', () => benchScript('tcp-proxy.ts', args.full ? ['--full'] : [], args.full ? 900_000 : 300_000, log));
    await section('drain', () => benchScript('drain-haproxy.ts', args.full ? ['--full'] : [], 120_000, log));
    await section('picks', () => benchScript('picks.ts', [...(args.full ? ['--full'] : [])], args.full ? 1_800_000 : 900_000, log));
    await section('watch', async () => {
      watched = await watchLatency(ctx);
      const w = watched.summary;
      log(`  transition -> client change: median ${w.lbToClient.p50} ms, p99 ${w.lbToClient.p99} ms, max ${w.lbToClient.max} ms (${w.lbToClient.n} runs); agent push -> client change: median ${w.agentToClient.p50} ms`);
      if (watched.misses.length) log(`  misses: ${watched.misses.join('; ')}`);
    });
    // Load balancer groups (bench/cluster.ts): 3 members x 1000 backends, next to 3 independent ones; needs redis-server.
    // Quick mode: 100 backends. 1000 agents and three load balancers at 1 s do not fit on 2 cores
    // (the 1000-backend cell timed out at 180 s in the 29 Nov run); --full tries 1000.
    await section('cluster', () => benchScript('cluster.ts', args.full ? [] : ['--n', '100'], 900_000, log));
  } finally {
    await farm?.stop(15_000).catch(() => {});
    stopChildren();
  }

  res.loadavgEnd = loadAverage();
  res.finishedAt = new Date().toISOString();
  res.durationS = Math.round((Date.now() - t0) / 1000);
  const dir = `${ROOT}bench/results`;
  mkdirSync(dir, { recursive: true });
  const stamp = res.startedAt.replace(/[:.]/g, '-').slice(0, 19);
  if (service) log(`service results: ${writeResults('service', service)} (and service-latest.json)`);
  if (admin) log(`admin results: ${writeResults('admin', admin)} (and admin-latest.json)`);
  if (watched) {
    const wjson = JSON.stringify(watched, null, 2) + '\n';
    writeFileSync(`${dir}/watch-${stamp}.json`, wjson);
    writeFileSync(`${dir}/watch-latest.json`, wjson);
    log(`watch results: bench/results/watch-${stamp}.json (and watch-latest.json)`);
  }
  // Only sections with their own files: the other sections keep the figures of their last run.
  const onlyService = [...args.only].every((s) => OWN_FILE.has(s));
  if (!onlyService) {
    const name = `${stamp}-${res.mode}.json`;
    const json = JSON.stringify(res, null, 2) + '\n';
    writeFileSync(`${dir}/${name}`, json);
    writeFileSync(`${dir}/latest.json`, json);
    log(`results: bench/results/${name} (and latest.json); load average at the end ${res.loadavgEnd.join(' ')}; ${res.durationS} s`);
  }
  if (args.report) {
    writeReport(onlyService ? (JSON.parse(readFileSync(`${dir}/latest.json`, 'utf8')) as Results) : res);
    log('docs/benchmarks.md and docs/benchmarks-cpu.svg regenerated');
  }
  if (res.errors.length) process.exitCode = 1;
}

function fmt(s: { min: number | null; p50: number | null; max: number | null }): string {
  return s.p50 === null ? 'n/a' : `${s.min}/${s.p50}/${s.max} ms`;
}

await runBench('bench', main);
