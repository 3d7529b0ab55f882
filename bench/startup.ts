/**
 * `npm run bench:startup`: what a user waits for when typing a qhcp command. Times, with
 * hyperfine-like repeated runs (warm-up runs discarded, then N timed runs, median and spread):
 *
 *   node -e 0                        the floor: starting Node itself
 *   qhcp --version                   the CLI's own start-up (target: within 2x of the floor)
 *   qhcp status --address <local LB> a full STATUS round trip: start, QUIC handshake, HELLO,
 *                                    STATUS, TERMINATE, exit (target: under 150 ms wall)
 *
 * The binary measured is the compiled one the package runs (bin/qhcp.js with QHCP_DIST=1 after
 * `npm run build`; the build is run first when dist/ is missing or older than the sources).
 * The load balancer and its one agent are real processes on loopback, stopped by PID.
 * Writes bench/results/startup.json and the "Start-up" section of docs/benchmarks.md.
 *
 * Options: --runs N (default 20), --warmup N (default 3), --no-report.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { machine, loadAverage } from './lib/proc.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const BIN = join(ROOT, 'bin/qhcp.js');
const ENV = { ...process.env, QHCP_DIST: '1', NODE_OPTIONS: '' };

export interface Timing {
  what: string;
  command: string;
  runs: number;
  medianMs: number;
  minMs: number;
  p90Ms: number;
  meanMs: number;
  /** CPU time (user+sys) of the command, median over the runs (bench/lib/cpu-report.cjs). */
  cpuMedianMs: number;
}

export interface StartupResults {
  measuredAt: string;
  machine: Record<string, unknown>;
  loadavg: number[];
  node: string;
  timings: Timing[];
}

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : dflt;
  if (!Number.isInteger(v) || v < 1 || v > 1000) throw new Error(`${name}: an integer from 1 to 1000`);
  return v;
}

const CPU_REPORT = join(ROOT, 'bench/lib/cpu-report.cjs');

/** Runs `argv` (a node command) to completion once (bounded at 30 s); returns wall and CPU milliseconds. @throws on a non-zero exit */
function once(argv: string[]): { wall: number; cpu: number } {
  const t0 = performance.now();
  // From a directory without a config file (this checkout's own qhcp.config.ts imports the sources).
  const r = spawnSync(argv[0]!, ['-r', CPU_REPORT, ...argv.slice(1)], { cwd: tmpdir(), env: ENV, stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  const wall = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status ?? r.signal}: ${String(r.stderr).slice(0, 500)}`);
  const m = /qhcp-bench-cpu (\d+) (\d+)/.exec(String(r.stderr));
  return { wall, cpu: m ? (Number(m[1]) + Number(m[2])) / 1000 : NaN };
}

function measure(what: string, argv: string[], runs: number, warmup: number): Timing {
  for (let i = 0; i < warmup; i++) once(argv);
  const all = Array.from({ length: runs }, () => once(argv));
  const t = all.map((x) => x.wall).sort((a, b) => a - b);
  const cpu = all.map((x) => x.cpu).sort((a, b) => a - b);
  const q = (v: number[], p: number) => v[Math.min(v.length - 1, Math.floor(p * v.length))]!;
  const round = (x: number) => Math.round(x * 10) / 10;
  return { what, command: argv.map((a) => (a === process.execPath ? 'node' : a === BIN ? 'qhcp' : a)).join(' '), runs, medianMs: round(q(t, 0.5)), minMs: round(t[0]!), p90Ms: round(q(t, 0.9)), meanMs: round(t.reduce((a, b) => a + b, 0) / t.length), cpuMedianMs: round(q(cpu, 0.5)) };
}

/** Newest modification time under `dir` (.ts files). */
function newest(dir: string): number {
  let m = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) m = Math.max(m, newest(p));
    else if (e.name.endsWith('.ts')) m = Math.max(m, statSync(p).mtimeMs);
  }
  return m;
}

function ensureBuilt(): void {
  const main = join(ROOT, 'dist/core/cli/main.js');
  if (existsSync(main) && statSync(main).mtimeMs >= Math.max(newest(join(ROOT, 'core')), newest(join(ROOT, 'plugins')))) return;
  process.stdout.write('building dist/ (npm run build) ...\n');
  const r = spawnSync('npm', ['run', '-s', 'build'], { cwd: ROOT, stdio: 'inherit', timeout: 600_000 });
  if (r.status !== 0) throw new Error('npm run build failed');
}

async function freePort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const { port } = s.address();
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Starts `qhcp args` and resolves once `ready` shows in its output (bounded). */
function start(args: string[], ready: RegExp): Promise<{ pid: number; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [BIN, ...args], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`qhcp ${args.join(' ')}: not ready in 30 s:\n${out.slice(-1000)}`)), 30_000);
    const on = (d: Buffer) => {
      out += d.toString();
      if (ready.test(out)) {
        clearTimeout(t);
        resolve({ pid: child.pid!, stop });
      }
    };
    child.stdout.on('data', on);
    child.stderr.on('data', on);
    child.once('exit', (code) => reject(new Error(`qhcp ${args.join(' ')} exited ${code}:\n${out.slice(-1000)}`)));
  });
}

export function startupSection(r: StartupResults): string[] {
  const floor = r.timings.find((t) => t.what === 'node -e 0');
  const ratio = (a: number, b: number | undefined) => (b ? `${(a / b).toFixed(2)}x` : '—');
  const rows = r.timings.map((t) => `| ${t.what} | \`${t.command}\` | ${t.medianMs} | ${t.minMs} | ${t.p90Ms} | ${t === floor ? '1x' : ratio(t.medianMs, floor?.medianMs)} | ${t.cpuMedianMs ?? '—'} | ${t === floor ? '1x' : ratio(t.cpuMedianMs, floor?.cpuMedianMs)} |`);
  return [
    '## Start-up',
    '',
    `Measured ${r.measuredAt} with \`npm run bench:startup\` (bench/startup.ts): each command run ${r.timings[0]?.runs ?? 0} times after warm-up runs, wall time from spawn to exit and CPU time (user+sys, all threads, read at exit), on ${String(r.machine.cpu ?? '')}, ${String(r.machine.cores ?? '')} cores (load average ${r.loadavg.join(' / ')}), Node ${r.node}. The binary is the compiled one the package installs (dist/). Targets: \`--version\` within 2x of \`node -e 0\`; \`qhcp status\` against a local load balancer under 150 ms.`,
    '',
    '| what | command | median ms | min ms | p90 ms | vs node -e 0 | CPU median ms | CPU vs node -e 0 |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
    'How: `qhcp status` and `qhcp pick` run without commander and without the config schema (core/cli/query.ts reads their flags with node:util parseArgs and hands anything else, such as --help or a bad flag, to the full command line), and the build bundles that path into one file (scripts/bundle-cli.mjs, esbuild: 18 modules), since Node 20 loads ES modules one file at a time. The config loader (cosmiconfig, ajv) is imported only when the directory holds a config file (or `--config` names one); the message validators are compiled at build time (scripts/gen-validators.mjs), so `qhcp status` never loads ajv; the query port lets loopback clients skip the Retry round trip (docs/protocol.md, Transport). Other commands import commander and the schema, and the role modules, TLS helpers (selfsigned, @peculiar/x509) and metric sources only when they need them. What `qhcp status` still pays above starting Node: loading the QUIC binding (@matrixai/quic tries its prebuild paths before the npm package, each a failed require), one QUIC handshake with HELLO, the STATUS round trip and the close, all with a load balancer that shares the two cores. Node 20 has no compile cache for ES modules (`module.enableCompileCache` is Node 22); bin/qhcp.js turns it on where it exists.',
    '',
  ];
}

/** Replaces the Start-up section of docs/benchmarks.md (or appends it). */
export function writeStartupSection(r: StartupResults): void {
  const file = join(ROOT, 'docs/benchmarks.md');
  const doc = readFileSync(file, 'utf8');
  const section = startupSection(r).join('\n');
  const begin = doc.indexOf('## Start-up\n');
  if (begin < 0) {
    writeFileSync(file, `${doc.trimEnd()}\n\n${section}`);
    return;
  }
  const next = doc.indexOf('\n## ', begin + 1);
  writeFileSync(file, doc.slice(0, begin) + section + (next < 0 ? '' : doc.slice(next + 1)));
}

async function main(): Promise<void> {
  const runs = arg('--runs', 20);
  const warmup = arg('--warmup', 3);
  ensureBuilt();
  const timings: Timing[] = [];
  timings.push(measure('node -e 0', [process.execPath, '-e', '0'], runs, warmup));
  timings.push(measure('qhcp --version', [process.execPath, BIN, '--version'], runs, warmup));
  const agentPort = await freePort();
  const lbPort = await freePort();
  const agent = await start(['server', '--server-ip', '127.0.0.1', '--server-port', String(agentPort), '--log-level', 'warn'], /server listening|AUTH IS OPEN/);
  const lb = await start(['loadbalancer', '--servers', `127.0.0.1:${agentPort}`, '--loadbalancer-host', '127.0.0.1', '--loadbalancer-port', String(lbPort), '--check-interval', '1', '--status', 'none'], /load balancer started/);
  try {
    timings.push(measure('qhcp status (local LB, 1 server)', [process.execPath, BIN, 'status', '--address', `127.0.0.1:${lbPort}`], runs, warmup));
  } finally {
    await lb.stop();
    await agent.stop();
  }
  const res: StartupResults = { measuredAt: new Date().toISOString(), machine: machine(), loadavg: loadAverage(), node: process.versions.node, timings };
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench/results/startup.json'), JSON.stringify(res, null, 2) + '\n');
  for (const t of timings) process.stdout.write(`${t.what.padEnd(36)} median ${t.medianMs} ms  min ${t.minMs}  p90 ${t.p90Ms}  cpu ${t.cpuMedianMs} ms\n`);
  if (!process.argv.includes('--no-report')) {
    writeStartupSection(res);
    process.stdout.write('docs/benchmarks.md: Start-up section written\n');
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench:startup: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
