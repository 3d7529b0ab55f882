/**
 * Peers that ask and never read (issue 13, items 2 and 6): every buffer they can fill is bounded
 * in bytes. An agent pushing reports to sessions that stopped reading coalesces them (latest
 * wins) and then closes those sessions with ERROR 302 SLOW_CONSUMER; a load balancer answering
 * pipelined STATUS to clients that never read stops reading them at 128 KiB owed and closes them
 * with 302 once they have taken nothing for slowConsumerTimeout. The
 * processes' RSS is measured before and during the attack; honest clients are served throughout.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { encodeFrame } from '../../core/protocol/codec.ts';
import { codeName } from '../../core/protocol/session.ts';
import { startServer, startLoadBalancer, waitForState, stopAll, sleep, waitUntil, TempConfigs } from '../helpers/procs.ts';
import { RawPeer, HELLO_CHECKER, HELLO_QUERY } from '../helpers/rawpeer.ts';
import { HonestChecker, HonestQuery } from './honest.ts';
import { startLoadBalancer as startLb } from '../helpers/procs.ts';

export const WIDE = fileURLToPath(new URL('../fixtures/plugins/wide-metrics.ts', import.meta.url));

/** Resident set size of a process, KiB (Linux). */
export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/** Runs `open` for `n` items, `width` at a time. */
async function inBatches<T>(n: number, width: number, open: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < n; i += width) out.push(...(await Promise.all(Array.from({ length: Math.min(width, n - i) }, (_, k) => open(i + k)))));
  return out;
}

describe('Robustness: peers that do not read (bounded memory)', function () {
  this.timeout(180_000);
  const configs = new TempConfigs('qhcp-slow-');
  const peers: RawPeer[] = [];
  let honest: HonestChecker | HonestQuery | undefined;


  afterEach(async () => {
    await honest?.stop();
    honest = undefined;
    await Promise.all(peers.splice(0).map((p) => p.close()));
    await stopAll();
    configs.cleanup();
  });

  it('agent: 300 sessions with a 100 ms report interval that stop reading: reports coalesce, sessions end with 302, RSS stays bounded', async () => {
    // 64 metrics with 128-character names: each report is about 10 KB.
    const cfg = configs.file({ defaults: false, plugins: [[WIDE, { count: 64, nameLength: 128 }]] });
    const { proc, port } = await startServer({ args: ['--config', cfg, '--max-connections-per-source', '1000'] });
    honest = await HonestChecker.start(port);
    await honest.expectServing(3);
    const rss0 = rssKiB(proc.pid);
    let peak = rss0;
    const sampler = setInterval(() => {
      if (proc.running) peak = Math.max(peak, rssKiB(proc.pid));
    }, 200);
    try {
      const opened = await inBatches(300, 20, async () => {
        // A 16 KiB window: the agent's reports fill it within two reports.
        const p = await RawPeer.open({ port, receiveWindowBytes: 16 * 1024, keepAliveMs: 1000 });
        peers.push(p);
        await p.send(Buffer.concat([HELLO_CHECKER(), encodeFrame({ type: 'CONFIG_UPDATE', body: { seq: 1, reportIntervalMs: 100 } })]));
        await p.waitFor('CONFIG_ACK', 20_000);
        p.channel.pauseReading();
        return p;
      });
      expect(opened).to.have.length(300);
      // Each one is closed with SLOW_CONSUMER once 20 reports in a row went unread.
      await waitUntil(() => opened.every((p) => p.isClosed), 60_000, 'every non-reading session closed');
      const codes = new Map<string, number>();
      for (const p of opened) {
        const name = codeName((await p.closedWith()).code);
        codes.set(name, (codes.get(name) ?? 0) + 1);
      }
      expect(Object.fromEntries(codes)).to.deep.equal({ SLOW_CONSUMER: 300 });
      await honest.expectServing(3);
    } finally {
      clearInterval(sampler);
    }
    const growthMiB = (peak - rss0) / 1024;
    console.log(`      agent RSS ${rss0} KiB before, peak ${peak} KiB during 300 non-reading push sessions (+${growthMiB.toFixed(1)} MiB)`);
    // Unbounded queueing grows by ~30 MB per second here; the bound is the sessions' own state.
    expect(growthMiB, 'agent RSS growth (MiB)').to.be.below(160);
    expect(proc.running).to.equal(true);
  });

  it('load balancer: 50 query clients pipelining STATUS that never read: held, then closed with 302 SLOW_CONSUMER, RSS bounded', async () => {
    // 200 backends (nobody answers on the discard port): each STATUS page is close to 64 KiB.
    const more = Array.from({ length: 200 }, (_, i) => `127.0.${1 + Math.floor(i / 250)}.${(i % 250) + 2}:9`);
    const lb = await startLb(more, { interval: 5, reconnect: 60, args: ['--check-timeout', '1'] });
    await sleep(2000);
    const rss0 = rssKiB(lb.proc.pid);
    let peak = rss0;
    const sampler = setInterval(() => {
      if (lb.proc.running) peak = Math.max(peak, rssKiB(lb.proc.pid));
    }, 200);
    const status = (seq: number) => encodeFrame({ type: 'STATUS', body: { seq } });
    try {
      const opened = await inBatches(50, 10, async () => {
        const p = await RawPeer.open({ port: lb.port, receiveWindowBytes: 16 * 1024 });
        peers.push(p);
        await p.send(HELLO_QUERY());
        await p.waitFor('ACK', 20_000);
        p.channel.pauseReading();
        // 60 requests in one write (~3.8 MiB of answers if all were queued), far past what it reads.
        await p.send(Buffer.concat(Array.from({ length: 60 }, (_, i) => status(i + 1))));
        return p;
      });
      await waitUntil(() => opened.every((p) => p.isClosed), 60_000, 'every non-reading query client closed');
      const codes = new Map<string, number>();
      for (const p of opened) {
        const name = codeName((await p.closedWith()).code);
        codes.set(name, (codes.get(name) ?? 0) + 1);
      }
      console.log(`      close codes: ${JSON.stringify(Object.fromEntries(codes))}`);
      expect(Object.fromEntries(codes), 'every one held, then closed as a slow consumer').to.deep.equal({ SLOW_CONSUMER: 50 });
      // Honest queries still answered.
      honest = await HonestQuery.start(lb.port, []);
      await honest.expectServing(3);
    } finally {
      clearInterval(sampler);
    }
    const growthMiB = (peak - rss0) / 1024;
    console.log(`      load balancer RSS ${rss0} KiB before, peak ${peak} KiB during 50 pipelining non-readers (+${growthMiB.toFixed(1)} MiB)`);
    // Each client is held at 128 KiB unread (+ one page): ~10 MiB for 50, plus garbage the heap has
    // not collected yet (seen: 44-75 MiB); queueing every answer would be ~3.8 MiB each, ~190 MiB.
    expect(growthMiB, 'load balancer RSS growth (MiB)').to.be.below(110);
    expect(lb.proc.running).to.equal(true);
  });
});
