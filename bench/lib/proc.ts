/**
 * Process accounting from /proc: CPU time (utime + stime) and resident memory of one PID,
 * sampled at the start and end of a window, so every figure is a delta over the same seconds.
 */
import { readFileSync } from 'node:fs';
import { cpus, loadavg, totalmem, release, hostname } from 'node:os';

/** Clock ticks per second for /proc/<pid>/stat (USER_HZ; 100 on every Linux we run on). */
const TICKS = 100;

export interface CpuSample {
  /** CPU seconds used so far (user + system). */
  cpuS: number;
  /** Wall clock, seconds (monotonic). */
  wallS: number;
}

/** CPU seconds (user + system) of `pid` so far. @throws when the process is gone */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces; fields after it are plain numbers.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return (utime + stime) / TICKS;
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
export function machine(): Record<string, unknown> {
  const c = cpus();
  let model = c[0]?.model ?? 'unknown';
  try {
    const os = readFileSync('/etc/os-release', 'utf8');
    const pretty = /PRETTY_NAME="([^"]+)"/.exec(os)?.[1];
    return { cpu: model, cores: c.length, memoryGb: Math.round(totalmem() / 2 ** 30), os: pretty ?? 'Linux', kernel: release(), node: process.version, host: hostname() };
  } catch {
    model = model.trim();
    return { cpu: model, cores: c.length, memoryGb: Math.round(totalmem() / 2 ** 30), os: 'Linux', kernel: release(), node: process.version, host: hostname() };
  }
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
