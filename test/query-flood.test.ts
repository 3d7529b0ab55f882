/**
 * Query rate limits (core/roles/query-limit.ts): the token buckets on their own, then a 10 s
 * flood of STATUS/PICK from several real client processes against a real load balancer with
 * three agents: no false DOWN, and each backend gets as many checks during the flood as in a
 * quiet window of the same length just before (counts of checks, no timing assertions).
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { TokenBucket, QueryLimiter } from '../core/roles/query-limit.ts';
import { startServer, startLoadBalancer, stopAll, waitUntil, sleep, ROOT, type QhcpProcess } from './helpers/procs.ts';
import { httpUrl } from './http/helpers.ts';

const FLOOD = fileURLToPath(new URL('./fixtures/query-flood.ts', import.meta.url));

describe('query rate limits', () => {
  describe('TokenBucket and QueryLimiter', () => {
    it('a bucket gives `burst` at once, then `rate` a second', () => {
      const b = new TokenBucket(10, 3, 0);
      expect([b.take(0), b.take(0), b.take(0), b.take(0)]).to.deep.equal([true, true, true, false]);
      expect(b.waitMs(0)).to.be.closeTo(100, 0.001);
      expect(b.take(50)).to.equal(false);
      expect(b.take(100)).to.equal(true);
      expect(b.take(10_000) && b.take(10_000) && b.take(10_000) && !b.take(10_000)).to.equal(true); // never more than burst saved
    });

    it('answers within the limits, queues the rest in order, closes a connection with too many waiting', async () => {
      const l = new QueryLimiter({ perConnection: 2, total: 0, maxWaiting: 5 });
      const a = {};
      const done: number[] = [];
      for (let i = 0; i < 7; i++) expect(l.submit(a, () => done.push(i))).to.equal(true);
      expect(done).to.deep.equal([0, 1]); // the burst; five wait
      expect(l.submit(a, () => done.push(999))).to.equal(false); // a sixth waiting: refused
      expect(l.stats).to.deep.equal({ delayed: 5, closed: 1 });
      // The refused connection's queue was dropped with it; a fresh one starts with its own burst.
      const b = {};
      for (let i = 0; i < 3; i++) l.submit(b, () => done.push(100 + i));
      expect(done).to.deep.equal([0, 1, 100, 101]);
      await waitUntil(() => done.length === 5, 5000, 'the waiting query answered at 2/s');
      expect(done.at(-1)).to.equal(102);
      l.stop();
    });

    it('shares the total among connections and answers waiting queries, in order, as tokens come', async () => {
      const l = new QueryLimiter({ perConnection: 0, total: 200 });
      const got: string[] = [];
      const conns = ['a', 'b', 'c', 'd'].map((name) => ({ name }));
      for (const c of conns) for (let i = 0; i < 55; i++) l.submit(c, () => got.push(`${c.name}${i}`));
      expect(got.length).to.be.within(200, 205); // the total's burst (plus what refilled meanwhile)
      await waitUntil(() => got.length === 220, 5000, 'the waiting queries answered');
      expect(got.filter((x) => x.startsWith('d'))).to.deep.equal(Array.from({ length: 55 }, (_, i) => `d${i}`));
      l.stop();
    });
  });

  describe('a 10 s query flood from several real clients', function () {
    this.timeout(360_000);
    after(stopAll);

    it('keeps every backend UP and its checks at their cadence', async () => {
      const servers = [await startServer(), await startServer(), await startServer()];
      const lb = await startLoadBalancer(
        servers.map((s) => s.address),
        // Limits low enough that the flood this shared 2-core machine can drive (tens of queries a
        // second per client process) exceeds them: the limiter must have work for the test to mean anything.
        { interval: 0.5, fail: 2, args: ['--http', '127.0.0.1:0', '--status', 'none', '--query-rate', '2', '--query-rate-total', '10'] },
      );
      const url = await httpUrl(lb.proc);
      type B = { address: string; state: string; checks: number };
      const backends = async () => ((await (await fetch(`${url}api/backends`, { signal: AbortSignal.timeout(10_000) })).json()) as { backends: B[] }).backends;
      const metric = async (re: RegExp) => Number(re.exec(await (await fetch(`${url}metrics`, { signal: AbortSignal.timeout(10_000) })).text())?.[1] ?? 0);
      await waitUntil(async () => (await backends()).every((b) => b.state === 'UP'), 150_000, 'three backends UP', 250);

      // A quiet window, then a flood window of the same length; checks counted per backend.
      const windowMs = 10_000;
      const c0 = await backends();
      await sleep(windowMs);
      const c1 = await backends();
      const downBefore = await metric(/qhcp_backend_transitions_total\{[^}]*to="DOWN"\} (\d+)/);
      let ready = 0;
      const flooders = [0, 1, 2].map(() => {
        const p = spawn(process.execPath, ['--import', 'tsx', FLOOD, String(lb.port), '5', String(windowMs / 1000)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        p.stdout!.setEncoding('utf8').on('data', (d: string) => {
          out += d;
          if (d.includes('ready')) ready++;
        });
        const done = new Promise<{ answered: number; failed: number }>((resolve, reject) => {
          const t = setTimeout(() => p.kill('SIGKILL'), windowMs + 60_000);
          p.once('exit', () => {
            clearTimeout(t);
            try {
              resolve(JSON.parse(out.trim().split('\n').at(-1)!) as { answered: number; failed: number });
            } catch {
              reject(new Error(`flood client printed ${out.slice(0, 300)}`));
            }
          });
        });
        return done;
      });
      // The flood runs once every client has connected: measure from then.
      await waitUntil(() => ready === 3, 120_000, 'the flood clients to connect', 100);
      const f0 = await backends();
      const limited0 = await metric(/^qhcp_queries_limited_total (\d+)/m);
      await sleep(windowMs - 2000);
      const f1 = await backends();
      const results = await Promise.all(flooders);
      const limited = (await metric(/^qhcp_queries_limited_total (\d+)/m)) - limited0;
      const downAfter = await metric(/qhcp_backend_transitions_total\{[^}]*to="DOWN"\} (\d+)/);

      const answered = results.reduce((a, r) => a + r.answered, 0);
      const diag = `answered ${answered}, delayed by the limits ${limited}, clients ${JSON.stringify(results)}`;
      // The flood was real and the limiter had work: queries were answered and some had to wait.
      expect(answered, diag).to.be.greaterThan(50);
      expect(limited, diag).to.be.greaterThan(0);
      // No false DOWN, every backend still UP.
      expect(downAfter).to.equal(downBefore);
      expect((await backends()).map((b) => b.state)).to.deep.equal(['UP', 'UP', 'UP']);
      // Checks per backend during the flood (8 s) against the quiet window (10 s), scaled.
      for (const s of servers) {
        const quiet = c1.find((b) => b.address === s.address)!.checks - c0.find((b) => b.address === s.address)!.checks;
        const flood = f1.find((b) => b.address === s.address)!.checks - f0.find((b) => b.address === s.address)!.checks;
        const expected = (quiet * (windowMs - 2000)) / windowMs;
        expect(flood, `${s.address}: ${flood} checks in the flood window, ${quiet} in the quiet one`).to.be.at.least(Math.floor(expected * 0.8));
      }
    });
  });
});
