/**
 * `node --import tsx bench/tcp-proxy.ts [--full]`: the `tcp-proxy` plugin next to HAProxy in TCP
 * mode (one thread, `balance roundrobin`) on the same three backends, everything on loopback,
 * each in its own process (backends, qhcp proxy, HAProxy, and this load generator). Measures
 * connections per second (a connection = connect, read "ok\n" the backend writes, close) at a
 * fixed concurrency, with the proxy's CPU over the same window, and throughput (4 streams of
 * 64 MiB each from the backends through the proxy). The direct figures (no proxy) show what the
 * generator and backends can do at all; the node-pipe row (bench/tcp/node-pipe.ts, the smallest
 * Node proxy) shows what Node's sockets cost, so qhcp's own overhead is the difference. Writes bench/results/tcp-proxy-<time>.json and
 * bench/results/tcp-proxy-latest.json, then regenerates docs/benchmarks.md (bench/report.ts).
 * Every child is ended by PID at the end or on Ctrl-C; every loop is bounded in time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createConnection } from 'node:net';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ensureHaproxy, Haproxy } from './lib/haproxy.ts';
import { endRun, sampleCpu, cpuPercent, sleep, startRun, writeResults, type RunInfo } from './lib/proc.ts';
import { stopChildren } from './lib/children.ts';
import { freeTcpPort } from './lib/ctx.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const full = process.argv.includes('--full');
const WINDOW_MS = full ? 8000 : 3000;
const ROUNDS = full ? 5 : 3;
const CONCURRENCY = 32;
const STREAMS = 4;
const SOURCE_MB = 64;

export interface TcpRow {
  target: 'direct' | 'node-pipe' | 'qhcp' | 'haproxy';
  connsPerS: number;
  errors: number;
  /** The proxy's CPU over the connections window (% of one core); null for direct. */
  cpuPct: number | null;
  /** The proxy's CPU per 1000 connections (ms). */
  cpuMsPer1000: number | null;
  throughputMBs: number;
}

export interface TcpResults extends RunInfo {
  version: 1;
  mode: 'quick' | 'full';
  haproxy: string;
  settings: { windowMs: number; rounds: number; concurrency: number; streams: number; sourceMb: number };
  /** Medians over the rounds. */
  rows: TcpRow[];
  rounds: TcpRow[][];
}

const children = new Set<ChildProcess>();
let stopping = false;
function start(cmd: string, args: string[]): ChildProcess {
  const c = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(c);
  c.once('exit', () => children.delete(c));
  let err = '';
  c.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  c.once('exit', (code, sig) => {
    if (!stopping) process.stderr.write(`${cmd} ${args.slice(-1).join(' ')} exited (${code ?? sig}): ${err}\n`);
  });
  return c;
}
/** Ends this script's own children and HAProxy (spawnTracked), by PID. */
function stopAll(): void {
  stopping = true;
  for (const c of children) c.kill('SIGKILL');
  stopChildren();
}
process.on('SIGINT', () => {
  stopAll();
  process.exit(130);
});

function firstLine(c: ChildProcess, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error('no output from child')), timeoutMs);
    c.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const i = buf.indexOf('\n');
      if (i >= 0) {
        clearTimeout(t);
        resolve(buf.slice(0, i));
      }
    });
    c.once('exit', (code) => reject(new Error(`child exited ${code}`)));
  });
}

/** Connections per second at CONCURRENCY for WINDOW_MS. */
async function connRate(port: number): Promise<{ count: number; errors: number; seconds: number }> {
  let count = 0;
  let errors = 0;
  const t0 = performance.now();
  const end = t0 + WINDOW_MS;
  const one = () =>
    new Promise<void>((resolve) => {
      const s = createConnection(port, '127.0.0.1');
      let got = '';
      const t = setTimeout(() => s.destroy(new Error('timeout')), 5000);
      s.setEncoding('utf8');
      s.on('data', (d: string) => (got += d));
      s.on('error', () => {});
      s.on('close', () => {
        clearTimeout(t);
        if (got === 'ok\n') count++;
        else errors++;
        resolve();
      });
    });
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < end) await one();
    }),
  );
  return { count, errors, seconds: (performance.now() - t0) / 1000 };
}

/** MB/s over STREAMS parallel streams of SOURCE_MB each. */
async function throughput(port: number): Promise<number> {
  const t0 = performance.now();
  let bytes = 0;
  await Promise.all(
    Array.from(
      { length: STREAMS },
      () =>
        new Promise<void>((resolve) => {
          const s = createConnection(port, '127.0.0.1');
          const t = setTimeout(() => s.destroy(), 60_000);
          s.on('data', (d: Buffer) => (bytes += d.length));
          s.on('error', () => {});
          s.on('close', () => {
            clearTimeout(t);
            resolve();
          });
        }),
    ),
  );
  const s = (performance.now() - t0) / 1000;
  return bytes / 1e6 / s;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const t0 = Date.now();
  const log = (s: string) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${s}\n`);
  const hp = ensureHaproxy(log);
  if (typeof hp === 'string') throw new Error(hp);
  const run = startRun(t0);
  const tsx = ['--import', 'tsx'];
  const backends = start(process.execPath, [...tsx, 'bench/tcp/backends.ts', '3', String(SOURCE_MB)]);
  const ports = JSON.parse(await firstLine(backends, 30_000)) as { hello: number[]; source: number[] };
  const qhcp = start(process.execPath, [...tsx, 'bench/tcp/proxy-host.ts', JSON.stringify(ports)]);
  const qPorts = JSON.parse(await firstLine(qhcp, 30_000)) as { hello: number; source: number };
  const pipe = start(process.execPath, [...tsx, 'bench/tcp/node-pipe.ts', JSON.stringify(ports)]);
  const pPorts = JSON.parse(await firstLine(pipe, 30_000)) as { hello: number; source: number };
  const hHello = await freeTcpPort();
  const hSource = await freeTcpPort();
  const haproxy = new Haproxy(hp, {
    config: (socket) =>
      [
        'global',
        '  maxconn 4000',
        '  nbthread 1',
        `  stats socket ${socket} mode 600 level admin`,
        'defaults',
        '  mode tcp',
        '  timeout connect 2s',
        '  timeout client 30s',
        '  timeout server 30s',
        'listen hello',
        `  bind 127.0.0.1:${hHello}`,
        '  balance roundrobin',
        ...ports.hello.map((p, i) => `  server h${i} 127.0.0.1:${p}`),
        'listen source',
        `  bind 127.0.0.1:${hSource}`,
        '  balance roundrobin',
        ...ports.source.map((p, i) => `  server s${i} 127.0.0.1:${p}`),
        '',
      ].join('\n'),
  });
  await haproxy.start();
  log(`backends ${JSON.stringify(ports)}; qhcp tcp-proxy ${qPorts.hello}/${qPorts.source}; HAProxy ${hp.version} ${hHello}/${hSource}`);

  const targets: Array<{ target: TcpRow['target']; hello: number; source: number; pid: number | undefined }> = [
    { target: 'direct', hello: ports.hello[0]!, source: ports.source[0]!, pid: undefined },
    { target: 'node-pipe', hello: pPorts.hello, source: pPorts.source, pid: pipe.pid },
    { target: 'qhcp', hello: qPorts.hello, source: qPorts.source, pid: qhcp.pid },
    { target: 'haproxy', hello: hHello, source: hSource, pid: haproxy.pid },
  ];
  const rounds: TcpRow[][] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const row: TcpRow[] = [];
    for (const t of targets) {
      const a = t.pid ? sampleCpu(t.pid) : undefined;
      const c = await connRate(t.hello);
      const b = t.pid ? sampleCpu(t.pid) : undefined;
      const perS = c.count / c.seconds;
      const cpuPct = a && b ? cpuPercent(a, b) : null;
      await sleep(500);
      const mbs = await throughput(t.source);
      row.push({ target: t.target, connsPerS: Math.round(perS), errors: c.errors, cpuPct: cpuPct === null ? null : Math.round(cpuPct), cpuMsPer1000: a && b && c.count ? Math.round(((b.cpuS - a.cpuS) * 1e7) / c.count) / 10 : null, throughputMBs: Math.round(mbs) });
      log(`round ${r + 1} ${t.target}: ${Math.round(perS)} conn/s (${c.errors} errors, proxy CPU ${cpuPct === null ? '-' : `${Math.round(cpuPct)}%`}), ${Math.round(mbs)} MB/s`);
      await sleep(1000);
    }
    rounds.push(row);
  }
  const rows = targets.map((t) => {
    const xs = rounds.map((r) => r.find((x) => x.target === t.target)!);
    const cpu = xs.map((x) => x.cpuPct).filter((x): x is number => x !== null);
    const per = xs.map((x) => x.cpuMsPer1000).filter((x): x is number => x !== null);
    return {
      target: t.target,
      connsPerS: median(xs.map((x) => x.connsPerS)),
      errors: xs.reduce((a, x) => a + x.errors, 0),
      cpuPct: cpu.length ? median(cpu) : null,
      cpuMsPer1000: per.length ? median(per) : null,
      throughputMBs: median(xs.map((x) => x.throughputMBs)),
    };
  });
  const res: TcpResults = endRun({
    ...run,
    version: 1,
    mode: full ? 'full' : 'quick',
    haproxy: hp.version,
    settings: { windowMs: WINDOW_MS, rounds: ROUNDS, concurrency: CONCURRENCY, streams: STREAMS, sourceMb: SOURCE_MB },
    rows,
    rounds,
  } satisfies TcpResults, t0);
  await haproxy.stop();
  stopAll();
  writeResults('tcp-proxy', res);
  const { writeReport } = await import('./report.ts');
  writeReport(JSON.parse(readFileSync(`${ROOT}bench/results/latest.json`, 'utf8')));
  log('wrote bench/results/tcp-proxy-latest.json and docs/benchmarks.md');
}

main().catch((e) => {
  stopAll();
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
