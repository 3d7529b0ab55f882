/**
 * `npm run bench -- --only picks` (or `node --import tsx bench/picks.ts [--full] [--before <commit>]`):
 * what one pick costs, in process and over QUIC (issue 16).
 *
 * In process, per built-in strategy at N = 10, 1000 and 10 000 UP backends with fresh reports:
 *   - `local`: LocalBalancer.pick() (core/balance/local.ts), the maintained state every PICK and
 *     every client pick uses now; target under 1 µs per pick at N = 1000;
 *   - `update`: one LocalBalancer.update() of the whole view plus the pick that rebuilds from it
 *     (what a change costs).
 * Costs are CPU time (process.cpuUsage) per operation, the least of several rounds: on a machine
 * shared with other work, wall time measures the scheduler.
 * Then LoadBalancer.pick() in process (the whole PICK path but the network, CPU time) at the
 * same N, and the `balance` section's PICK over QUIC (bench/lib/balance.ts: 10 backends, 1 and
 * 50 clients). With `--before <commit>` both also run on that commit's tree
 * (extracted with `git archive` into a temporary directory, this checkout's node_modules
 * linked), alternately with this tree's, so both see the same load.
 * Writes bench/results/picks-<time>.json and picks-latest.json (bench/report.ts renders them).
 */
import { mkdirSync, writeFileSync, mkdtempSync, symlinkSync, copyFileSync, rmSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { machine, loadAverage, type RunInfo } from './lib/proc.ts';
import { makeCtx } from './lib/ctx.ts';
import { quicPicks, upLoadBalancer, STRATEGIES, type QuicPick } from './lib/balance.ts';
import { startFarm, spawnTracked, runBench } from './lib/children.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

export interface PickCost {
  strategy: string;
  n: number;
  /** ns of CPU per LocalBalancer.pick(). */
  localNs: number | null;
  /** ns of CPU per LocalBalancer.update() of the whole view plus the rebuilding pick. */
  updateNs: number | null;
  note?: string;
}

export interface LbPick {
  strategy: string;
  n: number;
  nsPerPick: number | null;
  note?: string;
}

export interface PicksResults extends RunInfo {
  version: 1;
  mode: 'quick' | 'full';
  targetNsAt1000: number;
  costs: PickCost[];
  /** LoadBalancer.pick() in process, per tree: CPU ns per pick. */
  lb: { tree: string; rows: LbPick[] }[];
  quic: { tree: string; rows: QuicPick[] }[];
}

const SIZES = [10, 1000, 10_000];
const TARGET_NS = 1000;

/** CPU ns per call of `op`, the least over `rounds` rounds of about `ms` each. */
function cpuNs(op: () => void, rounds: number, ms: number): number {
  let best = Infinity;
  let batch = 16;
  for (let r = 0; r < rounds; r++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    let calls = 0;
    while (performance.now() - t0 < ms) {
      for (let i = 0; i < batch; i++) op();
      calls += batch;
      if (calls >= batch * 64 && batch < 4096) batch *= 2;
    }
    const c = process.cpuUsage(c0);
    best = Math.min(best, ((c.user + c.system) * 1000) / calls);
  }
  return Math.round(best);
}

async function inProcess(full: boolean, log: (s: string) => void): Promise<PickCost[]> {
  const { LocalBalancer } = await import('../core/balance/local.ts');
  const { resolvePlugins } = await import('../core/plugin/loader.ts');
  const rounds = full ? 7 : 4;
  const ms = full ? 300 : 120;
  const out: PickCost[] = [];
  for (const strategy of STRATEGIES) {
    for (const n of SIZES) {
      try {
        const now = Date.now();
        const view = Array.from({ length: n }, (_, i) => {
          const load = ((i * 7919) % 1000) / 1000;
          return {
            address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:4243`,
            state: 'UP' as const,
            metrics: { cpu: load * 100, memory: 40, load1: load * 2, loadScore: load },
            reportedAt: now,
            ageMs: 0,
            weight: 1 + (i % 3),
            latencyMs: 1,
            verdict: 'SERVING' as const,
            agentAdmin: 'READY' as const,
            adminState: 'READY' as const,
            reason: null,
          };
        });
        const make = async () => (await resolvePlugins({ plugins: [strategy], defaults: false }, 'loadbalancer'))[0]!;
        const local = new LocalBalancer(await make(), { panicThreshold: 0 });
        local.update(view, now);
        const localNs = cpuNs(() => local.pick(undefined, now), rounds, ms);
        const churn = new LocalBalancer(await make(), { panicThreshold: 0 });
        const updateNs = cpuNs(
          () => {
            churn.update(view, now);
            churn.pick(undefined, now);
          },
          n >= 10_000 ? 2 : rounds,
          n >= 10_000 ? 60 : ms,
        );
        out.push({ strategy, n, localNs, updateNs });
      } catch (e) {
        out.push({ strategy, n, localNs: null, updateNs: null, note: `not measured: ${String(e).slice(0, 200)}` });
      }
      const r = out.at(-1)!;
      log(`  ${strategy.padEnd(21)} N=${String(n).padEnd(5)} ${r.localNs ?? '-'} ns per pick, ${r.updateNs ?? '-'} ns per update + pick`);
    }
  }
  return out;
}

/**
 * LoadBalancer.pick() in process (CPU ns, least of several rounds): all backends UP with fresh
 * reports (bench/lib/balance.ts upLoadBalancer; that file is copied into the `--before` tree too).
 */
async function lbPicks(full: boolean, log: (s: string) => void): Promise<LbPick[]> {
  const out: LbPick[] = [];
  for (const strategy of STRATEGIES) {
    for (const n of SIZES) {
      try {
        const lb = await upLoadBalancer(strategy, n);
        // The slow path of the old trees costs milliseconds at 10 000: fewer, shorter rounds there.
        const big = n >= 10_000;
        out.push({ strategy, n, nsPerPick: cpuNs(() => lb.pick(), big ? 2 : full ? 7 : 4, big ? 80 : full ? 300 : 120) });
      } catch (e) {
        out.push({ strategy, n, nsPerPick: null, note: `not measured: ${String(e).slice(0, 200)}` });
      }
    }
    log(`  LoadBalancer.pick() ${strategy}: ${out.filter((r) => r.strategy === strategy).map((r) => `N=${r.n} ${r.nsPerPick ?? '-'} ns`).join(', ')}`);
  }
  return out;
}

/** The balance section's measurements on this tree: LoadBalancer.pick() in process, PICK over QUIC (10 agents in a farm). */
async function balanceHere(full: boolean, log: (s: string) => void): Promise<{ lb: LbPick[]; quic: QuicPick[] }> {
  const lb = await lbPicks(full, log);
  const { farm, ports } = await startFarm(10, { sampleInterval: 5 });
  try {
    return { lb, quic: await quicPicks(makeCtx(full, log), ports, [1, 50]) };
  } finally {
    await farm.stop(15_000).catch(() => {});
  }
}

/** The same measurement in `commit`'s tree: git archive into a temporary directory, run there. */
async function balanceAt(commit: string, full: boolean, log: (s: string) => void): Promise<{ lb: LbPick[]; quic: QuicPick[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-picks-before-'));
  try {
    execFileSync('sh', ['-c', `git -C "$1" archive "$2" | tar -x -C "$3"`, 'sh', ROOT, commit, dir]);
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
    for (const f of ['bench/picks.ts', 'bench/lib/balance.ts']) copyFileSync(join(ROOT, f), join(dir, f));
    const out = join(dir, 'quic.json');
    const child = spawnTracked(process.execPath, ['--import', 'tsx', join(dir, 'bench/picks.ts'), '--quic-only', out, ...(full ? ['--full'] : [])], {
      onLine: (l) => l.trim() && log(`  [${commit.slice(0, 7)}] ${l}`),
    });
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => child.kill('SIGINT'), 600_000);
      child.once('exit', (code) => {
        clearTimeout(t);
        if (code === 0 && existsSync(out)) resolve();
        else reject(new Error(`the ${commit} run ended with ${code}`));
      });
    });
    return JSON.parse(readFileSync(out, 'utf8')) as { lb: LbPick[]; quic: QuicPick[] };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const full = argv.includes('--full');
  const log = (s: string) => process.stdout.write(`${s}\n`);
  const quicOnly = argv.indexOf('--quic-only');
  if (quicOnly >= 0) {
    writeFileSync(argv[quicOnly + 1]!, JSON.stringify(await balanceHere(full, log)));
    return;
  }
  const before = argv.includes('--before') ? argv[argv.indexOf('--before') + 1] : undefined;
  const t0 = Date.now();
  const res: PicksResults = {
    version: 1,
    mode: full ? 'full' : 'quick',
    startedAt: new Date().toISOString(),
    durationS: 0,
    machine: machine(),
    loadavgStart: loadAverage(),
    loadavgEnd: [],
    targetNsAt1000: TARGET_NS,
    costs: [],
    lb: [],
    quic: [],
  };
  log(`picks: in process, CPU ns per operation (least of several rounds), load average ${res.loadavgStart.join(' ')}`);
  res.costs = await inProcess(full, log);
  if (!argv.includes('--no-quic')) {
    // Alternate the trees, so both see the same load.
    const runs = full ? 2 : 1;
    const head = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']).toString().trim();
    for (let r = 0; r < runs; r++) {
      log(`LoadBalancer.pick() and PICK over QUIC, this tree (${head})`);
      const here = await balanceHere(full, log);
      res.lb.push({ tree: `${head} (this tree)`, rows: here.lb });
      res.quic.push({ tree: `${head} (this tree)`, rows: here.quic });
      if (before) {
        log(`LoadBalancer.pick() and PICK over QUIC, ${before}`);
        const then = await balanceAt(before, full, log);
        res.lb.push({ tree: before, rows: then.lb });
        res.quic.push({ tree: before, rows: then.quic });
      }
    }
  }
  res.loadavgEnd = loadAverage();
  res.durationS = Math.round((Date.now() - t0) / 1000);
  const dir = `${ROOT}bench/results`;
  mkdirSync(dir, { recursive: true });
  const stamp = res.startedAt.replace(/[:.]/g, '-').slice(0, 19);
  const json = JSON.stringify(res, null, 2) + '\n';
  writeFileSync(`${dir}/picks-${stamp}.json`, json);
  writeFileSync(`${dir}/picks-latest.json`, json);
  log(`picks results: bench/results/picks-${stamp}.json (and picks-latest.json); ${res.durationS} s`);
}

await runBench('bench/picks', main);
