/**
 * core/balance: LocalBalancer over the built-in strategies' maintained pickers (the same
 * choices as the `pick` hook path, kept up to date as the pool changes mid-stream), checked
 * against brute-force references; slow start's ramp; panic mode engaging and ending, with its
 * alert through the load balancer's pool (PoolBalancers).
 */
import { expect } from 'chai';
import { LocalBalancer, type PanicChange } from '../../core/balance/local.ts';
import { PoolBalancers, EAGER_GAP_MS } from '../../core/balance/pool.ts';
import { SlotHeap } from '../../core/balance/heap.ts';
import { Edf } from '../../core/balance/edf.ts';
import { buildConfig } from '../../core/config/config.ts';
import { createHooks, guardHooks } from '../../core/plugin/hooks.ts';
import type { AlertEvent, BackendView } from '../../core/plugin/hooks.ts';
import type { HealthState } from '../../core/health/states.ts';
import type { QhcpPlugin } from '../../core/plugin/loader.ts';
import { createLogger } from '../../core/util/log.ts';
import RoundRobinPlugin from '../../plugins/balancer/round-robin.ts';
import WeightedRoundRobinPlugin, { smoothCycle } from '../../plugins/balancer/weighted-round-robin.ts';
import LeastLoadedPlugin from '../../plugins/balancer/least-loaded.ts';
import PowerOfTwoPlugin from '../../plugins/balancer/power-of-two.ts';
import LeastConnectionsPlugin from '../../plugins/balancer/least-connections.ts';
import LogAlertPlugin from '../../plugins/alert/log.ts';
import { ConnectionCounts } from '../../plugins/proxy/connections.ts';
import { backend, build, fakeCore, seeded } from '../plugins/fake-core.ts';


/** A backend view in `state` (UP by default), reported at `at`. */
function b(address: string, over: Partial<BackendView> & { loadScore?: number } = {}): BackendView {
  const { loadScore, ...rest } = over;
  return { ...backend(address, { ...(loadScore !== undefined ? { loadScore } : {}), reportedAt: rest.reportedAt ?? T0 }), state: 'UP', ...rest } as BackendView;
}
const T0 = 1_000_000;
const count = (seq: string[]) => seq.reduce<Record<string, number>>((m, a) => ((m[a] = (m[a] ?? 0) + 1), m), {});
function picks(lb: LocalBalancer, n: number, now = T0): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(lb.pick(undefined, now)!.server.address);
  return out;
}

describe('core/balance', () => {
  describe(SlotHeap.name, () => {
    it('keeps the least slot first through pushes, pops, removes and key changes (against a sorted reference)', () => {
      const rnd = seeded(1);
      const key = Array.from({ length: 64 }, () => rnd());
      const h = new SlotHeap((a, c) => key[a]! < key[c]! || (key[a] === key[c] && a < c));
      h.reset([...key.keys()], key.length);
      const inHeap = new Set(key.keys());
      for (let step = 0; step < 2000; step++) {
        const r = rnd();
        const s = Math.floor(rnd() * key.length);
        if (r < 0.3) {
          key[s] = rnd();
          h.fix(s);
        } else if (r < 0.5) {
          h.remove(s);
          inHeap.delete(s);
        } else if (r < 0.7) {
          h.push(s);
          inHeap.add(s);
        } else if (r < 0.8 && h.size > 0) {
          inHeap.delete(h.pop());
        }
        const want = [...inHeap].sort((a, c) => key[a]! - key[c]! || a - c)[0] ?? -1;
        expect(h.peek(), `step ${step}`).to.equal(want);
        expect(h.size).to.equal(inHeap.size);
      }
    });
  });

  describe(Edf.name, () => {
    it('gives each entry exactly its weight share over a period, interleaved, and follows new weights', () => {
      const e = new Edf();
      e.reset([2.5, 1, 0]);
      const seq: number[] = [];
      for (let i = 0; i < 7000; i++) seq.push(e.next());
      expect(count(seq.map(String))).to.deep.equal({ 0: 5000, 1: 2000 });
      // No run of the heavy one longer than its weight ratio allows.
      expect(seq.join('')).not.to.include('0000');
      e.reweigh([1, 1, 2]);
      const after: number[] = [];
      for (let i = 0; i < 4000; i++) after.push(e.next());
      const c = count(after.map(String));
      expect(c[2]).to.be.within(1999, 2001);
      expect(c[0]).to.be.within(999, 1001);
    });

    it('parks an entry without letting it catch up when it returns', () => {
      const e = new Edf();
      e.reset([1, 1]);
      e.park(0);
      expect([e.next(), e.next(), e.next()]).to.deep.equal([1, 1, 1]);
      e.unpark(0);
      const seq = [e.next(), e.next(), e.next(), e.next()];
      expect(count(seq.map(String))).to.deep.equal({ 0: 2, 1: 2 });
    });
  });

  describe('maintained pickers, the same choices as the pick hook', () => {
    const pool = () => [b('a', { loadScore: 0.2, weight: 5 }), b('b', { loadScore: 0.2, weight: 1 }), b('c', { loadScore: 0.7, weight: 1 }), b('d', { loadScore: 0.4, weight: 2 })];
    type Chooser = QhcpPlugin & { choose(s: readonly BackendView[], now: number): BackendView | undefined };
    const rr = () => build(RoundRobinPlugin);
    const lc = () => build(LeastConnectionsPlugin);
    const cases: Array<[string, () => QhcpPlugin, (p: never) => Chooser['choose']]> = [
      ['round-robin', rr, (p: ReturnType<typeof rr>) => (s) => p.choose(s)],
      ['weighted-round-robin', () => build(WeightedRoundRobinPlugin), (p: Chooser) => (s, now) => p.choose(s, now)],
      ['weighted-round-robin (load)', () => build(WeightedRoundRobinPlugin, { weightFrom: 'load' }), (p: Chooser) => (s, now) => p.choose(s, now)],
      ['least-loaded', () => build(LeastLoadedPlugin), (p: Chooser) => (s, now) => p.choose(s, now)],
      ['power-of-two', () => Object.assign(build(PowerOfTwoPlugin, { pickCost: 0.01 }), { random: seeded(9) }), (p: Chooser) => (s, now) => p.choose(s, now)],
      ['least-connections', lc, (p: ReturnType<typeof lc>) => (s) => p.choose(s)],
    ];
    for (const [name, make, chooser] of cases) {
      it(`${name}: LocalBalancer picks what the hook path picks, across pool changes`, () => {
        const viaHook = { choose: chooser(make() as never) };
        const local = new LocalBalancer(make());
        let view = pool();
        const got: string[] = [];
        const want: string[] = [];
        for (let i = 0; i < 600; i++) {
          if (i === 200) view = view.map((x) => (x.address === 'a' ? { ...x, state: 'DOWN' as HealthState } : x));
          if (i === 400) view = pool().map((x) => ({ ...x, reportedAt: T0 + 400 }));
          if (i % 200 === 0) local.update(view, T0 + i);
          got.push(local.pick(undefined, T0 + i)!.server.address);
          want.push(viaHook.choose(view.filter((x) => x.state === 'UP'), T0 + i)!.address);
        }
        expect(got).to.deep.equal(want);
        expect(got.slice(200, 400)).not.to.include('a');
        expect(new Set(got.slice(400))).to.include('a');
      });
    }
  });

  describe('strategies against brute force', () => {
    it('least-loaded: every pick is the lowest load + herd cost among servers below their cap, reports changing mid-stream', () => {
      const rnd = seeded(5);
      const n = 200;
      const lb = new LocalBalancer(build(LeastLoadedPlugin, { pickCost: 0.01 }));
      let view = Array.from({ length: n }, (_, i) => b(`s${i}`, { loadScore: Math.round(rnd() * 100) / 100 }));
      const sincePicks = new Map<string, number>();
      const recent: string[] = [];
      lb.update(view, T0);
      for (let i = 0; i < 3000; i++) {
        if (i % 500 === 499) {
          // Ten servers report new loads: their herd cost starts over.
          view = view.map((x, j) => (j % 20 === i % 20 ? b(x.address, { loadScore: Math.round(rnd() * 100) / 100, reportedAt: T0 + i }) : x));
          for (let j = i % 20; j < n; j += 20) sincePicks.delete(`s${j}`);
          lb.update(view, T0 + i);
        }
        const limit = Math.max(1, Math.floor(Math.min(0.75, 3 / n) * 100));
        const inWindow = count(recent.slice(-100));
        const full = (a: string) => (inWindow[a] ?? 0) >= limit;
        const eff = (x: BackendView) => (x.metrics.loadScore ?? 0) + 0.01 * (sincePicks.get(x.address) ?? 0);
        const best = Math.min(...view.filter((x) => !full(x.address)).map(eff));
        const got = lb.pick(undefined, T0 + i)!.server;
        expect(eff(got), `pick ${i}`).to.be.closeTo(best, 1e-9);
        expect(full(got.address), `pick ${i} at its cap`).to.equal(false);
        sincePicks.set(got.address, (sincePicks.get(got.address) ?? 0) + 1);
        recent.push(got.address);
      }
    });

    it('least-connections: the fewest connections as they open and close, ties to the one picked longest ago', () => {
      const core = fakeCore('loadbalancer');
      const plugin = build(LeastConnectionsPlugin);
      plugin.apply(core);
      const counts = new ConnectionCounts();
      (plugin as unknown as { counts: ConnectionCounts }).counts = counts;
      const lb = new LocalBalancer(plugin);
      const view = ['a', 'b', 'c', 'd'].map((a) => b(a));
      lb.update(view, T0);
      // All empty: a rotation.
      expect(picks(lb, 8)).to.deep.equal(['a', 'b', 'c', 'd', 'a', 'b', 'c', 'd']);
      const rnd = seeded(3);
      const open: string[] = [];
      for (let i = 0; i < 2000; i++) {
        if (open.length > 0 && rnd() < 0.45) counts.remove(open.splice(Math.floor(rnd() * open.length), 1)[0]!);
        const least = Math.min(...view.map((x) => counts.get(x.address)));
        const got = lb.pick(undefined, T0)!.server.address;
        expect(counts.get(got), `pick ${i}`).to.equal(least);
        counts.add(got);
        open.push(got);
      }
    });

    it('weighted-round-robin: exact smooth cycle for configured whole weights, EDF shares for a pool too big to precompute', () => {
      expect(smoothCycle([5, 1, 1])!.map((i) => 'abc'[i]).join('')).to.equal('aabacaa');
      expect(smoothCycle([1.5, 1])).to.equal(undefined);
      const big = Array.from({ length: 3000 }, (_, i) => b(`s${i}`, { weight: 1 + (i % 3) }));
      const lb = new LocalBalancer(build(WeightedRoundRobinPlugin));
      lb.update(big, T0);
      const seq = picks(lb, 6000 * 2);
      const c = count(seq);
      // Total weight 6000: two full periods, each server exactly twice its weight.
      for (const [i, x] of big.entries()) expect(c[x.address] ?? 0, x.address).to.equal(2 * (1 + (i % 3)));
    });

    it('round-robin keeps its place when the last pick leaves and others come back (updates between picks)', () => {
      const lb = new LocalBalancer(build(RoundRobinPlugin));
      const all = ['a', 'b', 'c', 'd', 'e'].map((a) => b(a));
      const without = (...out: string[]) => all.map((x) => (out.includes(x.address) ? { ...x, state: 'DOWN' as HealthState } : x));
      lb.update(all, T0);
      expect(picks(lb, 2)).to.deep.equal(['a', 'b']);
      // b (the last pick) and c (due next) go DOWN in two changes before the next pick: d is next.
      lb.update(without('b'), T0);
      lb.update(without('b', 'c'), T0);
      expect(picks(lb, 1)).to.deep.equal(['d']);
      lb.update(all, T0);
      expect(picks(lb, 4)).to.deep.equal(['e', 'a', 'b', 'c']);
    });
  });

  describe('slow start', () => {
    const window = 10;
    function ramped(opts: { aggression?: number; minWeightPercent?: number; newBackends?: boolean } = {}) {
      const lb = new LocalBalancer(build(RoundRobinPlugin), { slowStart: { window, ...opts } });
      const up = ['a', 'b', 'c'].map((a) => b(a, { since: T0 - 60_000 }));
      lb.update(up, T0 - 1000);
      return { lb, up };
    }
    /** c's share of 2000 picks at `t` ms into its ramp. */
    const shareAt = (lb: LocalBalancer, start: number, t: number) => count(picks(lb, 2000, start + t)).c! / 2000;

    it('ramps a server back from DOWN: weight x max(floor, (t / window) ^ (1 / aggression)), then its full share', () => {
      const { lb, up } = ramped();
      lb.update(up.map((x) => (x.address === 'c' ? { ...x, state: 'DOWN' as HealthState, since: T0 - 500 } : x)), T0 - 500);
      const back = up.map((x) => (x.address === 'c' ? { ...x, since: T0 } : x));
      lb.update(back, T0);
      // 1 s of 10: 0.1 (the 10 % floor), against a + b = 2.
      expect(lb.effectiveWeight('c', T0 + 1000)).to.be.closeTo(0.1, 1e-9);
      expect(shareAt(lb, T0, 1000)).to.be.closeTo(0.1 / 2.1, 0.005);
      expect(shareAt(lb, T0, 5000)).to.be.closeTo(0.5 / 2.5, 0.005);
      expect(lb.pick(undefined, T0 + 5000)!.why).to.match(/^next in rotation|^slow start: 50% of weight 1$/);
      expect(shareAt(lb, T0, 10_500)).to.be.closeTo(1 / 3, 0.001);
      expect(lb.effectiveWeight('c', T0 + 10_500)).to.equal(undefined, 'the ramp is over');
      expect(lb.rampFactors(T0 + 10_500).size).to.equal(0);
    });

    it('aggression bends the ramp; DRAINING and MAINT returns ramp, DEGRADED -> UP and first sight do not (unless newBackends)', () => {
      const { lb, up } = ramped({ aggression: 2, minWeightPercent: 0 });
      lb.update(up.map((x) => (x.address === 'c' ? { ...x, state: 'MAINT' as HealthState } : x.address === 'b' ? { ...x, state: 'DEGRADED' as HealthState } : x)), T0 - 100);
      lb.update(up.map((x) => (x.address === 'c' || x.address === 'b' ? { ...x, since: T0 } : x)), T0);
      // (2.5 / 10) ^ (1/2) = 0.5.
      expect(lb.effectiveWeight('c', T0 + 2500)).to.be.closeTo(0.5, 1e-9);
      expect(lb.effectiveWeight('b', T0 + 2500)).to.equal(undefined);
      // A server first seen UP (added): full weight at once, unless newBackends.
      const plus = [...up, b('n', { since: T0 })];
      lb.update(plus, T0);
      expect(lb.effectiveWeight('n', T0 + 1000)).to.equal(undefined);
      const fresh = ramped({ newBackends: true });
      fresh.lb.update(plus, T0);
      expect(fresh.lb.effectiveWeight('n', T0 + 3000)).to.be.closeTo(0.3, 1e-9);
      // Leaving UP ends a ramp.
      fresh.lb.update(plus.map((x) => (x.address === 'n' ? { ...x, state: 'DOWN' as HealthState } : x)), T0 + 3000);
      expect(fresh.lb.effectiveWeight('n', T0 + 3000)).to.equal(undefined);
    });

    it('works over a strategy without a picker (the pick hook), and over every server ramping at once', () => {
      const core = fakeCore('loadbalancer');
      const third: QhcpPlugin = { name: 'first-one', apply: (c) => void c.hooks.pick.tap('first-one', (r) => r.servers[0]) };
      third.apply(core);
      const lb = new LocalBalancer(third, { hooks: core.hooks, slowStart: { window, newBackends: true } });
      const view = ['a', 'b'].map((a) => b(a, { since: T0 }));
      lb.update(view, T0);
      // Both ramping, equal weights: shared evenly (nobody else to give the picks to).
      expect(count(picks(lb, 1000, T0 + 2000))).to.deep.equal({ a: 500, b: 500 });
      // a done ramping, b just back: the hook's choice (always a) for the rest, b its ramped share.
      lb.update([view[0]!, { ...view[1]!, state: 'DOWN' }], T0 + 20_000);
      lb.update([view[0]!, { ...view[1]!, since: T0 + 20_000 }], T0 + 20_000);
      const c = count(picks(lb, 1100, T0 + 21_000));
      expect(c.b).to.be.within(99, 101);
    });
  });

  describe('panic mode', () => {
    const four = (states: HealthState[]) => states.map((s, i) => b('abcd'[i]!, { state: s }));

    it('engages below the threshold (balancing over every known backend), ends above it, reported once each way', () => {
      const changes: PanicChange[] = [];
      const lb = new LocalBalancer(build(RoundRobinPlugin), { panicThreshold: 50, onPanic: (c) => changes.push(c) });
      lb.update(four(['UP', 'UP', 'DOWN', 'DOWN']), T0);
      expect(lb.panic, '2 of 4 is not under 50 %').to.equal(false);
      expect(new Set(picks(lb, 8))).to.deep.equal(new Set(['a', 'b']));
      lb.update(four(['UP', 'DOWN', 'DOWN', 'DOWN']), T0);
      expect(lb.panic).to.equal(true);
      expect(new Set(picks(lb, 8))).to.deep.equal(new Set(['a', 'b', 'c', 'd']));
      expect(lb.from).to.equal('4 in panic mode (1 of 4 healthy, under 50%)');
      lb.update(four(['UP', 'DOWN', 'DOWN', 'DOWN']), T0);
      lb.update(four(['UP', 'UP', 'DOWN', 'DOWN']), T0 + 1);
      expect(lb.panic).to.equal(false);
      expect(changes.map((c) => [c.engaged, c.healthy, c.known])).to.deep.equal([
        [true, 1, 4],
        [false, 2, 4],
      ]);
    });

    it('never with none healthy, never when off; DRAINING, MAINT and UNKNOWN neither count nor take picks', () => {
      const lb = new LocalBalancer(build(RoundRobinPlugin), { panicThreshold: 50 });
      lb.update(four(['DOWN', 'DOWN', 'DOWN', 'DOWN']), T0);
      expect(lb.panic).to.equal(false);
      expect(lb.pick(undefined, T0)).to.equal(undefined);
      expect(lb.lastMiss).to.equal('no server is UP');
      // 1 UP of 2 known (the rest set aside): 50 %, no panic.
      lb.update(four(['UP', 'DOWN', 'DRAINING', 'MAINT']), T0);
      expect(lb.panic).to.equal(false);
      lb.update([...four(['UP', 'DOWN', 'DOWN', 'MAINT']), b('e', { state: 'UNKNOWN' })], T0);
      expect(lb.panic).to.equal(true);
      expect(new Set(picks(lb, 6))).to.deep.equal(new Set(['a', 'b', 'c']));
      const off = new LocalBalancer(build(RoundRobinPlugin), { panicThreshold: 0 });
      off.update(four(['UP', 'DOWN', 'DOWN', 'DOWN']), T0);
      expect(off.panic).to.equal(false);
      expect(new Set(picks(off, 4))).to.deep.equal(new Set(['a']));
    });

    it('the load balancer pool alerts when panic engages and ends (the alert hook; the log plugin words it)', async () => {
      const hooks = createHooks();
      const lines: string[] = [];
      const logger = createLogger({ level: 'info', json: true, write: (l) => lines.push(l) });
      guardHooks(hooks, logger, 1000, new Map());
      const rr = build(RoundRobinPlugin);
      const logPlugin = Object.assign(build(LogAlertPlugin, { json: false }), { write: (l: string) => void lines.push(l) });
      const records = four(['UP', 'UP', 'UP', 'UP']).map((x) => ({ ...x }));
      const host = { hooks, plugins: [rr, logPlugin], config: buildConfig({}, undefined, {}).config, logger, node: 'lb-t', records: () => records };
      const alerts: AlertEvent[] = [];
      hooks.alert.tapPromise('recorder', async (e) => void alerts.push(e));
      rr.apply({ hooks } as never);
      logPlugin.apply({ hooks, logger } as never);
      const pool = new PoolBalancers(host);
      pool.changed(true);
      for (const r of records.slice(1)) (r as { state: HealthState }).state = 'DOWN';
      pool.changed(true);
      expect(pool.panic()).to.equal(true);
      for (const r of records.slice(1, 3)) (r as { state: HealthState }).state = 'UP';
      pool.changed(true);
      expect(pool.panic()).to.equal(false);
      await new Promise((r) => setImmediate(r));
      const panics = alerts.filter((e): e is Extract<AlertEvent, { kind: 'panic' }> => e.kind === 'panic');
      expect(panics.map((e) => [e.engaged, e.healthy, e.known, e.pool, e.node])).to.deep.equal([
        [true, 1, 4, 'all', 'lb-t'],
        [false, 3, 4, 'all', 'lb-t'],
      ]);
      expect(panics[0]!.servers).to.deep.equal(['a', 'b', 'c', 'd']);
      expect(lines.some((l) => /ALERT load balancer lb-t pool all: panic mode engaged \(1 of 4 healthy, under 50%\): balancing across 4/.test(l))).to.equal(true);
      expect(lines.some((l) => /"msg":"panic mode: too few backends healthy/.test(l))).to.equal(true);
      expect(pool.decorate({ address: 'a' } as never).panic).to.equal(undefined);
    });
  });

  it('PoolBalancers: a burst of state changes rebuilds the pool at most once per EAGER_GAP_MS, then once after it; picks are never stale', async () => {
    const hooks = createHooks();
    const logger = createLogger({ level: 'error', json: true, write: () => {} });
    guardHooks(hooks, logger, 1000, new Map());
    const rr = build(RoundRobinPlugin);
    const records = Array.from({ length: 1000 }, (_, i) => ({ ...b(`s${i}`, { state: 'DOWN' }) }));
    let rebuilds = 0;
    const host = { hooks, plugins: [rr], config: buildConfig({}, undefined, {}).config, logger, node: 'lb-t', records: () => (rebuilds++, records) };
    rr.apply({ hooks } as never);
    const pool = new PoolBalancers(host);
    // 1000 backends coming UP one by one in one burst (start-up).
    for (const r of records) {
      (r as { state: HealthState }).state = 'UP';
      pool.changed(true);
    }
    expect(rebuilds, 'one rebuild at the first change, none per later change in the burst').to.equal(1);
    // A pick in the burst sees every change at once.
    expect(pool.choose(undefined, undefined).backend).to.not.equal(undefined);
    expect(rebuilds).to.equal(2);
    (records[0] as { state: HealthState }).state = 'DOWN';
    pool.changed(true);
    await new Promise((r) => setTimeout(r, EAGER_GAP_MS * 3));
    expect(rebuilds, 'the trailing rebuild after the burst').to.equal(3);
    expect(pool.decorate({ address: 's0' } as never).panic).to.equal(undefined);
  });

  it('a plugin without picker(): its pick tap is asked; a server it was not offered is refused', () => {
    const core = fakeCore('loadbalancer');
    const stranger = b('zz');
    const odd: QhcpPlugin = { name: 'odd', apply: (c) => void c.hooks.pick.tap('odd', (r) => (r.key === 'bad' ? stranger : r.servers.at(-1))) };
    odd.apply(core);
    const lb = new LocalBalancer(odd, { hooks: core.hooks });
    lb.update(['a', 'b'].map((a) => b(a)), T0);
    expect(lb.pick(undefined, T0)!.server.address).to.equal('b');
    expect(lb.pick('bad', T0)).to.equal(undefined);
    expect(lb.lastMiss).to.equal('the balancer odd chose a server it was not offered');
    const unapplied = new LocalBalancer({ name: 'nowhere', apply() {} });
    unapplied.update([b('a')], T0);
    expect(unapplied.pick(undefined, T0)).to.equal(undefined);
    expect(unapplied.lastMiss).to.match(/has no pick tap and no picker\(\)/);
  });
});
