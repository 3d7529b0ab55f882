/**
 * Process accounting from /proc: CPU time (utime + stime) and resident memory of one PID,
 * sampled at the start and end of a window, so every figure is a delta over the same seconds.
 */
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { cpus, loadavg, totalmem, release, hostname } from 'node:os';

export interface CpuSample {
  /** CPU seconds used so far (user + system, every thread). */
  cpuS: number;
  /** Wall clock, seconds (monotonic). */
  wallS: number;
}

/**
 * CPU seconds of `pid` so far, all threads, from /proc/<pid>/task/<tid>/schedstat (nanoseconds:
 * /proc/<pid>/stat counts 10 ms ticks, too coarse for 1% of a core over a few seconds). Threads
 * that ended before the sample are missed; Node's and HAProxy's threads live as long as they do.
 * @throws when the process is gone
 */
export function cpuSeconds(pid: number): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      /* the thread ended between the listing and the read */
    }
  }
  return ns / 1e9;
}

export function sampleCpu(pid: number): CpuSample {
  return { cpuS: cpuSeconds(pid), wallS: performance.now() / 1000 };
}

/** CPU used between two samples as a percentage of one core. */
export function cpuPercent(a: CpuSample, b: CpuSample): number {
  const wall = b.wallS - a.wallS;
  return wall > 0 ? (100 * (b.cpuS - a.cpuS)) / wall : 0;
}

/** Resident set size of `pid`, in MB (VmRSS). */
export function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(status);
  return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : 0;
}

/** Peak resident set size of `pid` (VmHWM), in MB. */
export function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmHWM:\s+(\d+)\s+kB/.exec(status);
  return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : 0;
}

/** Summed CPU seconds of several PIDs (a load balancer pool, an agent farm). */
export function cpuSecondsOf(pids: number[]): number {
  return pids.reduce((s, p) => s + cpuSeconds(p), 0);
}

/** The machine, as the results and docs describe it. */
/** What every bench results file records about its run: when, how long, on what machine, under what load. */
export interface RunInfo {
  startedAt: string;
  durationS: number;
  machine: Record<string, unknown>;
  loadavgStart: number[];
  loadavgEnd: number[];
}

/** The RunInfo header of a results file, taken at the start of a run (`endRun` fills the end). */
export function startRun(t0 = Date.now()): RunInfo {
  return { startedAt: new Date(t0).toISOString(), durationS: 0, machine: machine(), loadavgStart: loadAverage(), loadavgEnd: [] };
}

/** Fills the end of a run's header: its duration since `t0` and the load average now. */
export function endRun<R extends RunInfo>(res: R, t0: number): R {
  res.durationS = Math.round((Date.now() - t0) / 1000);
  res.loadavgEnd = loadAverage();
  return res;
}

/**
 * Writes a section's results as bench/results/<name>-<start time>[-<mode>].json and
 * <name>-latest.json (what bench/report.ts reads); returns the dated file's path in the repo.
 */
export function writeResults(name: string, res: RunInfo & { mode?: string }): string {
  const dir = fileURLToPath(new URL('../results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  const stamp = res.startedAt.replace(/[:.]/g, '-').slice(0, 19);
  const file = `${name}-${stamp}${res.mode ? `-${res.mode}` : ''}.json`;
  const json = JSON.stringify(res, null, 2) + '\n';
  writeFileSync(dir + file, json);
  writeFileSync(`${dir}${name}-latest.json`, json);
  return `bench/results/${file}`;
}

export function machine(): Record<string, unknown> {
  const c = cpus();
  let os = 'Linux';
  try {
    os = /PRETTY_NAME="([^"]+)"/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? os;
  } catch {
    /* no os-release */
  }
  return { cpu: (c[0]?.model ?? 'unknown').trim(), cores: c.length, memoryGb: Math.round(totalmem() / 2 ** 30), os, kernel: release(), node: process.version, host: hostname() };
}

export function loadAverage(): number[] {
  return loadavg().map((x) => Math.round(x * 100) / 100);
}

/** Percentiles of a list (nearest rank); empty lists give nulls. */
export function summary(xs: number[]): { n: number; min: number | null; p50: number | null; p99: number | null; max: number | null; mean: number | null } {
  if (xs.length === 0) return { n: 0, min: null, p50: null, p99: null, max: null, mean: null };
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
  const r = (v: number) => Math.round(v * 1000) / 1000;
  return { n: s.length, min: r(s[0]!), p50: r(at(0.5)), p99: r(at(0.99)), max: r(s[s.length - 1]!), mean: r(s.reduce((a, b) => a + b, 0) / s.length) };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
