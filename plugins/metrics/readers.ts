/**
 * Where system-metrics gets its numbers. On Linux every fast source is one read of an open /proc
 * file into a buffer that is reused (procfs builds the text afresh on every read from offset 0),
 * with no child process, no thread-pool round trip and no library: the idle agent's sampling
 * costs about 150 us of CPU per second (docs/benchmarks.md, "Agent"). Disks are statfs(2) calls
 * on the local block-device mounts of /proc/self/mounts. Elsewhere systeminformation reads
 * them; it is imported only there (on Linux it would add about 2 MB of heap, 0.9 MB of it its
 * source text, to every agent).
 */
import os from 'node:os';
import { closeSync, openSync, readSync } from 'node:fs';
import { readFile, readdir, statfs } from 'node:fs/promises';

export interface CpuLoad {
  /** Busy %, all cores. */
  currentLoad: number;
  /** Busy % per core, in core order. */
  cpus: Array<{ load: number }>;
}
export interface DiskUse {
  mount: string;
  /** Used %, as df computes it: used / (used + available to unprivileged users). */
  use: number | null;
  /** Bytes (0: a pseudo file system). */
  size: number;
}
export interface NetCounters {
  iface: string;
  rx_bytes: number;
  tx_bytes: number;
}

/** What the plugin reads. A reader may answer synchronously (a /proc read) or with a promise. */
export interface SystemReaders {
  currentLoad(): CpuLoad | Promise<CpuLoad>;
  /** Bytes. */
  mem(): { total: number; available: number } | Promise<{ total: number; available: number }>;
  loadavg(): number[];
  fsSize(): DiskUse[] | Promise<DiskUse[]>;
  networkStats(): NetCounters[] | Promise<NetCounters[]>;
  processes(): { all: number } | Promise<{ all: number }>;
  uptime(): number;
  cores(): number;
  /** Releases what the readers hold open (file descriptors). */
  close?(): void;
}

/** Busy and total CPU time of one core, in any unit (ticks). */
export interface CpuTicks {
  busy: number;
  total: number;
}

/**
 * Busy % since the previous call, overall and per core, from tick counters. A core whose counters
 * did not move (or went back: a core taken offline and back) reads 0, never NaN.
 */
export function cpuLoadReader(read: () => CpuTicks[]): () => CpuLoad {
  let prev = read();
  return () => {
    const now = read();
    let busy = 0;
    let total = 0;
    const cpus = now.map((t, i) => {
      const p = prev[i] ?? { busy: 0, total: 0 };
      const db = t.busy - p.busy;
      const dt = t.total - p.total;
      if (dt <= 0 || db < 0) return { load: 0 };
      busy += db;
      total += dt;
      return { load: (100 * db) / dt };
    });
    prev = now;
    return { currentLoad: total > 0 ? (100 * busy) / total : 0, cpus };
  };
}

/** node:os tick counters (any platform): os.cpus() also reads the model and speed of every core, so it is the slow way on Linux. */
export function osCpuTicks(): CpuTicks[] {
  return os.cpus().map(({ times: t }) => ({ busy: t.user + t.nice + t.sys + t.irq, total: t.user + t.nice + t.sys + t.irq + t.idle }));
}

/**
 * Per-core tick counters from the text of /proc/stat: the `cpuN` lines (`cpuN user nice system
 * idle iowait irq softirq steal ...`), in order; busy is everything but idle and iowait (guest
 * time is already inside user), as top counts it. Reading stops at the first line past them (the
 * long `intr` line is never split).
 */
export function parseProcStat(text: string): CpuTicks[] {
  const out: CpuTicks[] = [];
  let at = text.indexOf('\ncpu');
  while (at >= 0) {
    const end = text.indexOf('\n', at + 1);
    const line = text.slice(at + 1, end < 0 ? text.length : end);
    const f = line.split(' ');
    // f[0] = cpuN, then the counters; the first line ("cpu  ...", all cores) has an empty field and is skipped by the search.
    let busy = 0;
    let idle = 0;
    for (let i = 1; i <= 8 && i < f.length; i++) {
      const v = Number(f[i]);
      if (!Number.isFinite(v)) continue;
      if (i === 4 || i === 5) idle += v;
      else busy += v;
    }
    out.push({ busy, total: busy + idle });
    at = end >= 0 && text.startsWith('cpu', end + 1) ? end : -1;
  }
  return out;
}

/** MemTotal and MemAvailable (bytes) from the text of /proc/meminfo; before Linux 3.14 (no MemAvailable) free + buffers + cached. */
export function parseMeminfo(text: string): { total: number; available: number } {
  const kb = (key: string): number | undefined => {
    const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : undefined;
  };
  const total = kb('MemTotal') ?? 0;
  const available = kb('MemAvailable') ?? (kb('MemFree') ?? 0) + (kb('Buffers') ?? 0) + (kb('Cached') ?? 0);
  return { total, available };
}

/**
 * Byte counters per interface from the text of Linux's /proc/net/dev (two header lines, then
 * `iface: rx_bytes rx_packets ... (8 receive fields) tx_bytes ...`). Lines that do not parse are
 * skipped.
 */
export function parseProcNetDev(text: string): NetCounters[] {
  const out: NetCounters[] = [];
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const iface = line.slice(0, colon).trim();
    const f = line.slice(colon + 1).trim().split(/\s+/);
    const rx = Number(f[0]);
    const tx = Number(f[8]);
    if (!iface || f.length < 9 || !Number.isFinite(rx) || !Number.isFinite(tx)) continue;
    out.push({ iface, rx_bytes: rx, tx_bytes: tx });
  }
  return out;
}

/** File systems that live elsewhere (df -l leaves them out) or are read-only images (systeminformation ran `df -x squashfs`). */
const NOT_LOCAL = /^(nfs\d?|cifs|smb3?|smbfs|ncpfs|afs|ceph|glusterfs|lustre|9p|fuse\.(sshfs|s3fs|rclone|gcsfuse)|squashfs)$/;

/** `\040` and friends (space, tab, newline, backslash) in /proc/self/mounts fields. */
const unescapeMount = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/**
 * The local block-device mounts in the text of /proc/self/mounts (`source mountpoint type options
 * 0 0`): sources that are device paths, no network or image file systems; a mount point listed
 * twice is taken once (the later mount hides the earlier), and a device mounted at several places
 * (bind mounts) once, at its shortest path, as df shows it.
 */
export function parseMounts(text: string): string[] {
  const byMount = new Map<string, string>();
  for (const line of text.split('\n')) {
    const [source, mount, type] = line.split(' ');
    if (!source || !mount || !type || !source.startsWith('/') || NOT_LOCAL.test(type)) continue;
    byMount.set(unescapeMount(mount), source);
  }
  const bySource = new Map<string, string>();
  for (const [mount, source] of byMount) {
    const seen = bySource.get(source);
    if (seen === undefined || mount.length < seen.length) bySource.set(source, mount);
  }
  return [...bySource.values()];
}

/** Used % and size of one mount from statfs(2), as df computes them. */
export function diskUse(mount: string, s: { bsize: number; blocks: number; bfree: number; bavail: number }): DiskUse {
  const used = s.blocks - s.bfree;
  const usable = used + s.bavail;
  return { mount, use: usable > 0 ? Math.round((10_000 * used) / usable) / 100 : null, size: s.blocks * s.bsize };
}

/**
 * A /proc file kept open and read from offset 0 into one buffer, reused from read to read (it
 * doubles, up to 4 MiB, when a text does not fit). A failed read closes the file; the next read
 * opens it again.
 */
export class ProcFile {
  private fd: number | undefined;
  private buf = Buffer.allocUnsafe(4096);

  constructor(readonly path: string) {}

  /**
   * The file's text now. Synchronous: procfs answers from kernel memory in microseconds.
   * @throws the read error (ENOENT where the file does not exist)
   */
  read(): string {
    try {
      this.fd ??= openSync(this.path, 'r');
      for (;;) {
        const n = readSync(this.fd, this.buf, 0, this.buf.length, 0);
        if (n < this.buf.length || this.buf.length >= 4 << 20) return this.buf.toString('latin1', 0, n);
        this.buf = Buffer.allocUnsafe(this.buf.length * 2);
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  close(): void {
    if (this.fd === undefined) return;
    try {
      closeSync(this.fd);
    } catch {
      /* already closed */
    }
    this.fd = undefined;
  }
}

/** The first `n` numbers of a /proc text of space-separated fields (/proc/loadavg, /proc/uptime). */
export function leadingNumbers(text: string, n: number): number[] {
  return text.trim().split(/\s+/, n).map(Number);
}

/**
 * Linux: /proc and statfs(2). The load averages and the uptime come from their /proc files kept
 * open too: os.loadavg() and os.uptime() open, read and close them on every call.
 */
function linuxReaders(): SystemReaders {
  const stat = new ProcFile('/proc/stat');
  const meminfo = new ProcFile('/proc/meminfo');
  const netdev = new ProcFile('/proc/net/dev');
  const loadavg = new ProcFile('/proc/loadavg');
  const uptime = new ProcFile('/proc/uptime');
  let cpu: (() => CpuLoad) | undefined;
  return {
    currentLoad: () => (cpu ??= cpuLoadReader(() => parseProcStat(stat.read())))(),
    mem: () => parseMeminfo(meminfo.read()),
    loadavg: () => leadingNumbers(loadavg.read(), 3),
    fsSize: async () => {
      const mounts = parseMounts(await readFile('/proc/self/mounts', 'latin1'));
      // A mount this process may not look at (EACCES) is left out, not the whole source.
      const uses = await Promise.all(mounts.map((m) => statfs(m).then((s) => diskUse(m, s), () => undefined)));
      return uses.filter((u): u is DiskUse => u !== undefined);
    },
    networkStats: () => parseProcNetDev(netdev.read()),
    processes: async () => ({ all: (await readdir('/proc')).filter((n) => n.charCodeAt(0) >= 48 && n.charCodeAt(0) <= 57).length }),
    uptime: () => leadingNumbers(uptime.read(), 1)[0]!,
    cores: () => os.availableParallelism(),
    close: () => {
      for (const f of [stat, meminfo, netdev, loadavg, uptime]) f.close();
    },
  };
}

type Si = typeof import('systeminformation');
let si: Promise<Si> | undefined;
/** systeminformation, imported on first use (off Linux only). */
const systeminformation = (): Promise<Si> => (si ??= import('systeminformation').then((m) => (m as unknown as { default: Si }).default ?? m));

/** Other platforms: node:os and systeminformation. */
function portableReaders(): SystemReaders {
  let cpu: (() => CpuLoad) | undefined;
  return {
    currentLoad: () => (cpu ??= cpuLoadReader(osCpuTicks))(),
    mem: async () => (await systeminformation()).mem(),
    loadavg: () => os.loadavg(),
    fsSize: async () => (await systeminformation()).fsSize(),
    networkStats: async () => (await systeminformation()).networkStats('*'),
    processes: async () => (await systeminformation()).processes(),
    // si.time() costs ~5 ms of CPU per call (it looks up the time zone); the kernel's uptime is free.
    uptime: () => os.uptime(),
    cores: () => os.availableParallelism(),
  };
}

/** A fresh set of readers for this platform (each keeps its own previous CPU counters and open files). */
export function systemReaders(platform: NodeJS.Platform = process.platform): SystemReaders {
  return platform === 'linux' ? linuxReaders() : portableReaders();
}
