import { expect } from 'chai';
import systemMetrics, { mountKey, SystemMetrics, type SystemMetricsOptions } from '../../plugins/metrics/system.ts';
import { cpuLoadReader, diskUse, leadingNumbers, osCpuTicks, parseMeminfo, parseMounts, parseProcNetDev, parseProcStat, ProcFile, systemReaders, type CpuTicks, type SystemReaders } from '../../plugins/metrics/readers.ts';
import { MetricsReport } from '../../core/plugin/hooks.ts';
import { ConfigError } from '../../core/errors.ts';
import { validateOptions } from '../../core/plugin/loader.ts';
import { waitUntil } from '../helpers/procs.ts';
import { fakeCore } from './fake-core.ts';

import { METRIC_NAME } from '../../core/protocol/messages.ts';

/** Instant fake readers with call counters; `over` replaces any of them. */
function fakeReaders(over: Partial<SystemReaders> = {}) {
  const calls: Record<string, number> = {};
  let rx = 1_000_000;
  const count = <T>(name: string, fn: () => T) => () => {
    calls[name] = (calls[name] ?? 0) + 1;
    return fn();
  };
  const base: SystemReaders = {
    currentLoad: async () => ({ currentLoad: 40, cpus: [{ load: 30 }, { load: 50 }] }),
    mem: async () => ({ total: 1000, available: 250 }),
    loadavg: () => [1, 0.5, 0.25],
    fsSize: async () => [
      { mount: '/', use: 21.44, size: 100 },
      { mount: '/var/lib', use: 80, size: 100 },
      { mount: '/proc-like', use: 0, size: 0 },
    ],
    networkStats: async () => [
      { iface: 'lo', rx_bytes: 5e9, tx_bytes: 5e9 },
      { iface: 'eth0', rx_bytes: (rx += 100_000), tx_bytes: 500 },
    ],
    processes: async () => ({ all: 123 }),
    uptime: () => 3600.4,
    cores: () => 2,
  };
  const merged = { ...base, ...over };
  const readers = Object.fromEntries(Object.entries(merged).map(([k, fn]) => [k, count(k, fn as () => unknown)])) as unknown as SystemReaders;
  return { readers, calls };
}

function collect(p: SystemMetrics): MetricsReport {
  const r = new MetricsReport();
  p.collect(r);
  return r;
}

describe('system-metrics plugin', () => {
  const started: SystemMetrics[] = [];
  afterEach(() => {
    for (const p of started.splice(0)) p.sampler.stop();
  });

  async function startPlugin(options: Record<string, unknown>, readers: SystemReaders) {
    const core = fakeCore('server');
    const p = new SystemMetrics(validateOptions(systemMetrics, options, 'test') as SystemMetricsOptions, readers);
    started.push(p);
    p.apply(core);
    await core.hooks.start.promise(core);
    return { core, p };
  }

  it('reports every metric under a valid name, with the names the status table reads', async () => {
    const { readers } = fakeReaders();
    const { core, p } = await startPlugin({ intervalMs: 50 }, readers);
    // net.* is a rate: it needs a second reading.
    await waitUntil(() => 'net.rxBytesPerSec' in collect(p).values, 5000, 'a network rate');
    const v = collect(p).values;
    expect(v).to.include({ cpu: 40, 'cpu.core0': 30, 'cpu.core1': 50, memory: 75, load1: 1, load5: 0.5, load15: 0.25, 'disk.root.usedPct': 21.4, 'disk.var_lib.usedPct': 80, processes: 123, uptime: 3600 });
    expect(v['net.rxBytesPerSec']).to.be.greaterThan(0);
    expect(v['net.txBytesPerSec']).to.equal(0, 'eth0 sent nothing; lo is left out');
    expect(v).to.not.have.property('disk.proc-like.usedPct');
    // max(0.40, 0.75, 1/2 cores) = 0.75
    expect(v.loadScore).to.equal(0.75);
    for (const k of Object.keys(v)) expect(k).to.match(METRIC_NAME);
    const defs = core.hooks.metricDefinitions.call([]).map((d) => d.name);
    expect(defs).to.include.members(['cpu', 'memory', 'load1', 'loadScore', 'cpu.core1', 'disk.root.usedPct', 'disk.var_lib.usedPct', 'net.rxBytesPerSec', 'uptime']);
    for (const d of defs) expect(d).to.match(METRIC_NAME);
  });

  it('collect copies the cache: no reader runs on the report path', async () => {
    const { readers, calls } = fakeReaders();
    const { p } = await startPlugin({ intervalMs: 60_000, slowIntervalMs: 60_000 }, readers);
    const before = { ...calls };
    for (let i = 0; i < 1000; i++) collect(p);
    expect(calls).to.deep.equal(before);
    expect(Object.keys(collect(p).values)).to.include('cpu');
  });

  it('each value carries its own read time, so the report age is its oldest source', async () => {
    const { readers } = fakeReaders();
    const { p } = await startPlugin({ intervalMs: 50, slowIntervalMs: 60_000 }, readers);
    const first = collect(p).sampledAt['disk.root.usedPct']!;
    await waitUntil(() => collect(p).sampledAt.cpu! > first + 100, 5000, 'fresh cpu readings');
    const r = collect(p);
    expect(r.sampledAt['disk.root.usedPct']).to.equal(first, 'the slow source was not read again');
    expect(r.sampledAt.loadScore).to.equal(Math.min(r.sampledAt.cpu!, r.sampledAt.memory!, r.sampledAt.load1!));
  });

  it('a hanging source drops only its own metrics, is never started twice, and is logged', async () => {
    const { readers, calls } = fakeReaders({ fsSize: () => new Promise(() => {}) });
    const { core, p } = await startPlugin({ intervalMs: 50, slowIntervalMs: 50, timeoutMs: 100 }, readers);
    await waitUntil(() => p.sampler.status().find((s) => s.name === 'disk')!.failures >= 1, 5000, 'the disk read to time out');
    await waitUntil(() => calls.currentLoad! >= 5, 5000, 'more cpu readings');
    const v = collect(p).values;
    expect(Object.keys(v).filter((k) => k.startsWith('disk.'))).to.deep.equal([]);
    expect(v).to.include.keys('cpu', 'memory', 'load1', 'loadScore', 'processes');
    expect(calls.fsSize).to.equal(1, 'the hung read blocks only its own next reads');
    const warn = core.logged(/disk read failed/);
    expect(warn[0]).to.include({ source: 'disk', error: 'timed out after 100 ms' });
  });

  it('a failing source recovers when it answers again; loadScore uses the inputs it has', async () => {
    let broken = true;
    const { readers } = fakeReaders({
      mem: async () => {
        if (broken) throw new Error('EIO');
        return { total: 100, available: 10 };
      },
    });
    const { p } = await startPlugin({ intervalMs: 50 }, readers);
    await waitUntil(() => p.sampler.status().find((s) => s.name === 'memory')!.failures >= 1, 5000, 'a memory failure');
    let v = collect(p).values;
    expect(v).to.not.have.property('memory');
    expect(v.loadScore).to.equal(0.5, 'max(cpu 0.40, load 1/2) without memory');
    broken = false;
    await waitUntil(() => collect(p).values.memory === 90, 5000, 'memory back');
    v = collect(p).values;
    expect(v.loadScore).to.equal(0.9);
  });

  it('loadScore: max or weighted mean, weight 0 leaves an input out, load is per core', () => {
    const { readers } = fakeReaders();
    const score = (opts: Record<string, unknown>, values: Record<string, number>) => new SystemMetrics(validateOptions(systemMetrics, opts, 't') as SystemMetricsOptions, readers).loadScore(values);
    expect(score({}, { cpu: 20, memory: 60, load1: 1 })).to.equal(0.6);
    expect(score({ loadScore: { combine: 'mean' } }, { cpu: 20, memory: 60, load1: 1 })).to.equal(0.433);
    expect(score({ loadScore: { combine: 'mean', weights: { cpu: 2, memory: 0, load: 1 } } }, { cpu: 20, memory: 60, load1: 1 })).to.equal(0.3);
    expect(score({ loadScore: { weights: { memory: 0 } } }, { cpu: 20, memory: 99, load1: 8 })).to.equal(1, 'load 8 on 2 cores is clamped to 1');
    expect(score({}, {})).to.equal(undefined);
  });

  it('sanitises mount points into metric names, keeping colliding ones apart', async () => {
    for (const [mount, key] of [['/', 'root'], ['/var/lib', 'var_lib'], ['/mnt/data.1', 'mnt_data_1'], ['C:', 'C:'], ['/9disk', '_9disk'], ['/média/ü b', 'm_dia_b']] as const) {
      expect(mountKey(mount)).to.equal(key);
      expect(`disk.${mountKey(mount)}.usedPct`).to.match(METRIC_NAME);
    }
    const long = '/' + 'x'.repeat(300);
    const { readers } = fakeReaders({ fsSize: async () => [{ mount: '/a_b', use: 1, size: 1 }, { mount: '/a/b', use: 2, size: 1 }, { mount: long, use: 3, size: 1 }] });
    const { p } = await startPlugin({}, readers);
    const v = collect(p).values;
    expect(v).to.include({ 'disk.a_b.usedPct': 1, 'disk.a_b_2.usedPct': 2 });
    for (const k of Object.keys(v)) expect(k).to.match(METRIC_NAME);
  });

  it('a disabled source is neither read nor declared', async () => {
    const { readers, calls } = fakeReaders();
    const { core, p } = await startPlugin({ sources: { processes: { enabled: false }, disk: { enabled: false } }, perCore: false }, readers);
    expect(calls.processes ?? 0).to.equal(0);
    expect(calls.fsSize ?? 0).to.equal(0);
    const names = core.hooks.metricDefinitions.call([]).map((d) => d.name);
    expect(names).to.not.include('processes');
    expect(names.some((n) => n.startsWith('cpu.core'))).to.equal(false);
    expect(collect(p).values).to.not.have.property('cpu.core0');
  });

  it('rejects unknown or out-of-range options', () => {
    expect(() => validateOptions(systemMetrics, { intervalMs: 5 }, 'p')).to.throw(ConfigError, /intervalMs/);
    expect(() => validateOptions(systemMetrics, { sources: { gpu: {} } }, 'p')).to.throw(ConfigError, /gpu: is not a known option/);
    expect(() => validateOptions(systemMetrics, { loadScore: { combine: 'sum' } }, 'p')).to.throw(ConfigError, /combine/);
    const filled = validateOptions(systemMetrics, {}, 'p');
    expect(filled).to.deep.include({ intervalMs: 1000, timeoutMs: 2000, loadScore: { combine: 'max', weights: { cpu: 1, memory: 1, load: 1 } } });
  });

  it('reads the real machine', async function () {
    this.timeout(20_000);
    const { core, p } = await startPlugin({ slowIntervalMs: 60_000 }, systemReaders());
    // Start-up waits at most 1 s for the first readings; on a busy machine some come later.
    const want = ['cpu', 'memory', 'load1', 'load5', 'load15', 'loadScore', 'uptime', 'processes'];
    await waitUntil(() => want.every((k) => k in collect(p).values), 15_000, `metrics ${want.join(',')}`);
    const v = collect(p).values;
    expect(v.cpu).to.be.within(0, 100);
    expect(v.memory).to.be.within(0, 100);
    expect(v.loadScore).to.be.within(0, 1);
    expect(v.processes).to.be.greaterThan(1);
    expect(Object.keys(v).some((k) => /^disk\..+\.usedPct$/.test(k))).to.equal(true, `no disk metric in ${Object.keys(v).join(',')}`);
    for (const k of Object.keys(v)) expect(k).to.match(METRIC_NAME);
    await core.hooks.stop.promise(core);
  });

  it('synchronous readers are stored at once; sources of one interval share one timer', async () => {
    const { readers } = fakeReaders({ currentLoad: () => ({ currentLoad: 10, cpus: [] }), mem: () => ({ total: 10, available: 5 }) });
    const real = { setInterval: globalThis.setInterval, setTimeout: globalThis.setTimeout };
    const delays: number[] = [];
    globalThis.setInterval = ((...a: Parameters<typeof setInterval>) => {
      delays.push(a[1] ?? 0);
      return real.setInterval(...a);
    }) as typeof setInterval;
    globalThis.setTimeout = ((...a: Parameters<typeof setTimeout>) => {
      delays.push(a[1] ?? 0);
      return real.setTimeout(...a);
    }) as typeof setTimeout;
    let p: SystemMetrics;
    try {
      ({ p } = await startPlugin({ intervalMs: 61_000, slowIntervalMs: 121_000 }, readers));
    } finally {
      Object.assign(globalThis, real);
    }
    // Seven sources on two intervals: two timers (the shared ticks of 61 s and 121 s), none per source.
    expect(delays.filter((d) => d > 60_000)).to.have.length(2);
    expect(collect(p).values).to.include({ cpu: 10, memory: 50 });
  });

  it('a synchronous reader that throws drops its own metrics and is logged', async () => {
    const { readers } = fakeReaders({
      mem: () => {
        throw new Error('EACCES');
      },
    });
    const { core, p } = await startPlugin({}, readers);
    expect(collect(p).values).to.not.have.property('memory');
    expect(collect(p).values).to.include({ cpu: 40 });
    expect(p.sampler.status().find((s) => s.name === 'memory')).to.include({ failures: 1, lastError: 'EACCES' });
    expect(core.logged(/memory read failed/)[0]).to.include({ source: 'memory', error: 'EACCES' });
  });
});

describe('system-metrics readers (readers.ts)', () => {
  it('parseProcNetDev reads receive and transmit bytes per interface and skips the headers and broken lines', () => {
    const text = [
      'Inter-|   Receive                                                |  Transmit',
      ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed',
      '    lo: 2506 387    0    0    0     0          0         0 2506 387    0    0    0     0       0          0',
      '  eth0:1234567 10 0 0 0 0 0 0 7654321 9 0 0 0 0 0 0',
      '  bad0: 12 x',
      '',
    ].join('\n');
    expect(parseProcNetDev(text)).to.deep.equal([
      { iface: 'lo', rx_bytes: 2506, tx_bytes: 2506 },
      { iface: 'eth0', rx_bytes: 1234567, tx_bytes: 7654321 },
    ]);
  });

  it('parseProcStat reads the per-core lines only: busy is all but idle and iowait', () => {
    const text = ['cpu  30 0 10 100 5 0 0 0 0 0', 'cpu0 10 1 2 50 3 4 5 6 7 0', 'cpu1 20 0 8 50 2 0 0 0 0 0', 'intr 1 2 3', 'cpu9 1 1 1 1 1 1 1 1', ''].join('\n');
    expect(parseProcStat(text)).to.deep.equal([
      // busy = user 10 + nice 1 + system 2 + irq 4 + softirq 5 + steal 6 (guest 7 is inside user)
      { busy: 28, total: 81 },
      { busy: 28, total: 80 },
    ]);
    expect(parseProcStat('cpu  1 2 3 4\n')).to.deep.equal([]);
  });

  it('parseMeminfo reads MemTotal and MemAvailable in bytes, or estimates it on old kernels', () => {
    expect(parseMeminfo('MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n')).to.deep.equal({ total: 1024_000, available: 409_600 });
    expect(parseMeminfo('MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 150 kB\nSwapCached: 999 kB\n')).to.deep.equal({ total: 1024_000, available: 300 * 1024 });
    expect(parseMeminfo('')).to.deep.equal({ total: 0, available: 0 });
  });

  it('parseMounts keeps local block devices once each, at the shortest path, unescaped', () => {
    const text = [
      'proc /proc proc rw 0 0',
      'tmpfs /dev/shm tmpfs rw 0 0',
      '/dev/vda / ext4 rw 0 0',
      '/dev/vda /etc/hosts ext4 rw 0 0',
      '/dev/vdb /mnt/my\\040data xfs rw 0 0',
      'server:/export /mnt/nfs nfs4 rw 0 0',
      '//server/share /mnt/smb cifs rw 0 0',
      '/dev/loop0 /snap/core squashfs ro 0 0',
      '/dev/vdc /srv ext4 rw 0 0',
      '/dev/vdd /srv ext4 rw 0 0',
      '',
    ].join('\n');
    expect(parseMounts(text)).to.deep.equal(['/', '/mnt/my data', '/srv']);
  });

  it('leadingNumbers reads /proc/loadavg and /proc/uptime; the Linux readers agree with node:os', async function () {
    expect(leadingNumbers('0.52 0.58 0.59 2/345 6789\n', 3)).to.deep.equal([0.52, 0.58, 0.59]);
    expect(leadingNumbers('350735.47 234388.90\n', 1)).to.deep.equal([350735.47]);
    if (process.platform !== 'linux') return;
    const { loadavg, uptime } = await import('node:os');
    const r = systemReaders();
    try {
      const [l1] = r.loadavg();
      expect(Math.abs(l1! - loadavg()[0]!)).to.be.below(1);
      expect(Math.abs(r.uptime() - uptime())).to.be.below(5);
    } finally {
      r.close?.();
    }
  });

  it('diskUse computes used % as df does (reserved blocks count as not available)', () => {
    // 1000 blocks, 400 free of which 300 usable by anyone: used 600 / (600 + 300)
    expect(diskUse('/', { bsize: 4096, blocks: 1000, bfree: 400, bavail: 300 })).to.deep.equal({ mount: '/', use: 66.67, size: 4_096_000 });
    expect(diskUse('/x', { bsize: 4096, blocks: 0, bfree: 0, bavail: 0 })).to.deep.equal({ mount: '/x', use: null, size: 0 });
  });

  it('ProcFile reads from the start each time, grows its buffer for a long file, and reopens after a failure', async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'qhcp-procfile-'));
    const file = join(dir, 'f');
    const f = new ProcFile(file);
    try {
      expect(() => f.read()).to.throw(/ENOENT/);
      writeFileSync(file, 'one');
      expect(f.read()).to.equal('one');
      expect(f.read()).to.equal('one');
      const long = 'x'.repeat(10_000);
      writeFileSync(file, long);
      expect(f.read()).to.equal(long);
    } finally {
      f.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the Linux readers read everything without a child process', async function () {
    if (process.platform !== 'linux') this.skip();
    this.timeout(20_000);
    // Every child process (exec, execFile, spawn) goes through ChildProcess.prototype.spawn.
    const { ChildProcess, execFile } = await import('node:child_process');
    const proto = ChildProcess.prototype as unknown as { spawn: (...a: unknown[]) => unknown };
    const orig = proto.spawn;
    let spawned = 0;
    proto.spawn = function (this: unknown, ...a: unknown[]) {
      spawned++;
      return orig.apply(this, a);
    };
    const r = systemReaders();
    try {
      const [cpu, mem, disks, net, procs] = await Promise.all([r.currentLoad(), r.mem(), r.fsSize(), r.networkStats(), r.processes()]);
      expect(spawned).to.equal(0);
      expect(cpu.cpus.length).to.equal(osCpuTicks().length);
      expect(mem.total).to.be.greaterThan(mem.available);
      expect(disks.some((d) => d.size > 0 && d.use !== null)).to.equal(true, JSON.stringify(disks));
      expect(net.some((n) => n.iface === 'lo')).to.equal(true);
      expect(procs.all).to.be.greaterThan(1);
      // The counter does see a child process.
      await new Promise((resolve) => execFile(process.execPath, ['-e', '0'], resolve));
      expect(spawned).to.equal(1);
    } finally {
      proto.spawn = orig;
      r.close?.();
    }
  });

  it('on Linux the plugin never loads systeminformation', async function () {
    if (process.platform !== 'linux') this.skip();
    this.timeout(30_000);
    const { execFileSync } = await import('node:child_process');
    const script = [
      "import { SystemMetrics } from './plugins/metrics/system.ts';",
      "import { createRequire } from 'node:module';",
      "const p = new SystemMetrics({ intervalMs: 1000, slowIntervalMs: 30000, timeoutMs: 2000, sources: {}, perCore: true, maxCores: 64, maxMounts: 16, loadScore: { combine: 'max', weights: { cpu: 1, memory: 1, load: 1 } } });",
      "p.collect({ set() {} });",
      "const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => k.includes('systeminformation'));",
      'p.sampler.stop();',
      'console.log(JSON.stringify(loaded));',
    ].join('\n');
    const { ROOT } = await import('../helpers/procs.ts');
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 25_000 });
    expect(JSON.parse(out)).to.deep.equal([]);
  });
});

describe('cpuLoadReader', () => {
  const core = (busy: number, idle: number): CpuTicks => ({ busy, total: busy + idle });

  it('reports busy % since the previous reading, overall and per core, from tick counters', () => {
    const readings = [
      [core(100, 100), core(100, 100)],
      [core(150, 150), core(190, 110)], // core 0: 50 busy of 100; core 1: 90 of 100
    ];
    let i = 0;
    const read = cpuLoadReader(() => readings[Math.min(i++, readings.length - 1)]!);
    const r = read();
    expect(r.cpus.map((c) => c.load)).to.deep.equal([50, 90]);
    expect(r.currentLoad).to.equal(70);
    // No ticks since: 0 %, not NaN.
    const again = read();
    expect(again.currentLoad).to.equal(0);
  });

  it('a counter that went back reads 0 for that core and leaves the total to the others', () => {
    const readings = [
      [core(100, 100), core(100, 100)],
      [core(10, 10), core(150, 150)],
    ];
    let i = 0;
    const read = cpuLoadReader(() => readings[i++]!);
    const r = read();
    expect(r.cpus.map((c) => c.load)).to.deep.equal([0, 50]);
    expect(r.currentLoad).to.equal(50);
  });

  it('reads the real counters (both ways) and stays within 0..100', async () => {
    const readers = systemReaders();
    try {
      for (const read of [cpuLoadReader(osCpuTicks), () => readers.currentLoad()]) {
        await read();
        await new Promise((r) => setTimeout(r, 50));
        const r = await read();
        expect(r.currentLoad).to.be.within(0, 100);
        expect(r.cpus.length).to.equal(osCpuTicks().length);
        for (const c of r.cpus) expect(c.load).to.be.within(0, 100);
      }
    } finally {
      readers.close?.();
    }
  });
});
