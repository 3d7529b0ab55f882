import { expect } from 'chai';
import RoundRobinPlugin from '../../plugins/balancer/round-robin.ts';
import WeightedRoundRobinPlugin from '../../plugins/balancer/weighted-round-robin.ts';
import LeastLoadedPlugin from '../../plugins/balancer/least-loaded.ts';
import PowerOfTwoPlugin from '../../plugins/balancer/power-of-two.ts';
import { LOAD_DEFAULTS, LoadState, loadsOf, reportedLoad } from '../../plugins/balancer/load.ts';
import { resolvePlugins, applyPlugins, validateOptions } from '../../core/plugin/loader.ts';
import { ConfigError } from '../../core/errors.ts';
import type { BackendView, CoreLike } from '../../core/plugin/hooks.ts';
import type { QhcpPlugin } from '../../core/plugin/loader.ts';
import { backend, build, fakeCore, seeded } from './fake-core.ts';


type Server = { address: string; loadScore?: number; weight?: number; metrics?: Record<string, number>; stale?: boolean };

/**
 * Runs `picks` picks through the core's `pick` hook over servers reporting fixed loads; every
 * `reportEvery` picks each server sends a fresh report (reportedAt moves on), as checks would.
 * Returns how many picks each server got, and the sequence.
 */
function simulate(core: CoreLike, servers: Server[], picks: number, reportEvery = 100, start = 1_000_000) {
  const counts: Record<string, number> = Object.fromEntries(servers.map((s) => [s.address, 0]));
  const seq: string[] = [];
  let views: BackendView[] = [];
  let now = start;
  for (let i = 0; i < picks; i++) {
    if (i % reportEvery === 0) {
      views = servers.map((s) =>
        backend(s.address, {
          ...(s.loadScore !== undefined ? { loadScore: s.loadScore } : {}),
          ...(s.metrics ? { metrics: s.metrics } : {}),
          weight: s.weight ?? 1,
          // A stale server's last report is an hour old.
          reportedAt: s.stale ? now - 3_600_000 : now,
          ageMs: 0,
        }),
      );
    }
    now += 1;
    const chosen = core.hooks.pick.call({ servers: views, key: undefined, now });
    expect(chosen, `pick ${i}`).to.not.equal(undefined);
    counts[chosen!.address]!++;
    seq.push(chosen!.address);
  }
  return { counts, seq };
}

function withPlugin(plugin: QhcpPlugin): CoreLike {
  const core = fakeCore('loadbalancer');
  void plugin.apply(core);
  return core;
}

const share = (counts: Record<string, number>, k: string) => counts[k]! / Object.values(counts).reduce((a, b) => a + b, 0);

describe('balancer plugins', () => {
  describe('round-robin', () => {
    it('spreads picks exactly evenly, whatever the servers report', () => {
      const core = withPlugin(build(RoundRobinPlugin));
      const { counts, seq } = simulate(core, [{ address: 'a', loadScore: 0 }, { address: 'b', loadScore: 0.5 }, { address: 'c', loadScore: 1 }], 3000);
      expect(counts).to.deep.equal({ a: 1000, b: 1000, c: 1000 });
      expect(seq.slice(0, 6)).to.deep.equal(['a', 'b', 'c', 'a', 'b', 'c']);
    });

    it('keeps its place when the last pick goes DOWN or a server comes back', () => {
      const p = build(RoundRobinPlugin);
      const [a, b, c, d] = ['10.0.0.9:1', '10.0.0.10:1', '10.0.0.2:1', '10.0.0.3:1'].map((x) => backend(x));
      const pick = (...s: BackendView[]) => p.choose(s)!.address;
      expect(pick(a!, b!, c!, d!)).to.equal(a!.address);
      expect(pick(a!, b!, c!, d!)).to.equal(b!.address);
      // b (the last pick) went DOWN: the next after it in configuration order is c, even though
      // "10.0.0.2" sorts before "10.0.0.10" as a string.
      expect(pick(a!, c!, d!)).to.equal(c!.address);
      // b is back: rotation goes on after c, no double turn for anyone.
      expect(pick(a!, b!, c!, d!)).to.equal(d!.address);
      expect(pick(a!, b!, c!, d!)).to.equal(a!.address);
      expect(p.choose([])).to.equal(undefined);
    });
  });

  describe('weighted-round-robin', () => {
    it('follows configured weights exactly and smoothly', () => {
      const core = withPlugin(build(WeightedRoundRobinPlugin));
      const { counts, seq } = simulate(core, [{ address: 'a', weight: 5 }, { address: 'b', weight: 1 }, { address: 'c', weight: 1 }], 7000);
      expect(counts).to.deep.equal({ a: 5000, b: 1000, c: 1000 });
      // Smooth: the heavy server's turns are interleaved, never five in a row.
      expect(seq.slice(0, 7).join('')).to.equal('aabacaa');
    });

    it('takes weights from a reported metric, falling back to the configured weight when stale', () => {
      const core = withPlugin(build(WeightedRoundRobinPlugin, { weightFrom: 'metric', weightMetric: 'capacity' }));
      const { counts } = simulate(
        core,
        [
          { address: 'a', metrics: { capacity: 3 } },
          { address: 'b', metrics: { capacity: 1 } },
          { address: 'c', metrics: { capacity: 50 }, weight: 1, stale: true },
        ],
        5000,
      );
      expect(share(counts, 'a')).to.be.closeTo(0.6, 0.01);
      expect(share(counts, 'b')).to.be.closeTo(0.2, 0.01);
      expect(share(counts, 'c')).to.be.closeTo(0.2, 0.01, 'the stale 50 is ignored; configured weight 1 is used');
    });

    it('derives weights from load: weight x (1 - load)', () => {
      const core = withPlugin(build(WeightedRoundRobinPlugin, { weightFrom: 'load' }));
      const { counts } = simulate(core, [{ address: 'a', loadScore: 0 }, { address: 'b', loadScore: 0.5 }, { address: 'c', loadScore: 0.75 }], 7000);
      // weights 1 : 0.5 : 0.25
      expect(share(counts, 'a')).to.be.closeTo(4 / 7, 0.01);
      expect(share(counts, 'b')).to.be.closeTo(2 / 7, 0.01);
      expect(share(counts, 'c')).to.be.closeTo(1 / 7, 0.01);
    });

    it('treats all-zero weights as equal and skips zero-weight servers otherwise', () => {
      let core = withPlugin(build(WeightedRoundRobinPlugin));
      expect(simulate(core, [{ address: 'a', weight: 0 }, { address: 'b', weight: 0 }], 1000).counts).to.deep.equal({ a: 500, b: 500 });
      core = withPlugin(build(WeightedRoundRobinPlugin));
      expect(simulate(core, [{ address: 'a', weight: 0 }, { address: 'b', weight: 2 }], 1000).counts).to.deep.equal({ a: 0, b: 1000 });
    });
  });

  describe('least-loaded', () => {
    const pool: Server[] = [{ address: 'idle', loadScore: 0.05 }, { address: 'mid', loadScore: 0.5 }, { address: 'busy', loadScore: 0.9 }];

    it('sends most picks to the idle server and fewest to the busy one', () => {
      const core = withPlugin(build(LeastLoadedPlugin));
      const { counts } = simulate(core, pool, 6000, 100);
      expect(share(counts, 'idle')).to.be.greaterThan(0.6);
      expect(counts.idle).to.be.greaterThan(counts.mid!);
      expect(counts.mid).to.be.greaterThan(counts.busy!);
    });

    it('shares evenly between equally loaded servers (ties rotate)', () => {
      const core = withPlugin(build(LeastLoadedPlugin, { pickCost: 0 }));
      const { counts, seq } = simulate(core, [{ address: 'a', loadScore: 0.3 }, { address: 'b', loadScore: 0.3 }, { address: 'c', loadScore: 0.3 }, { address: 'd', loadScore: 0.9 }], 3000);
      expect(counts).to.deep.equal({ a: 1000, b: 1000, c: 1000, d: 0 });
      // Never a run on one server.
      for (let i = 1; i < seq.length; i++) expect(seq[i]).to.not.equal(seq[i - 1]);
    });

    it('herd guard: between reports, the idle-looking server takes a bounded share, not every pick', () => {
      const servers: Server[] = [{ address: 'idle', loadScore: 0 }, { address: 'b', loadScore: 0.1 }, { address: 'c', loadScore: 0.1 }];
      // Without the guard (pickCost 0) and without the share cap, all 3000 picks between two
      // reports land on one server; the share cap alone holds it to 75 of every 100.
      const herd = simulate(withPlugin(build(LeastLoadedPlugin, { pickCost: 0, maxShare: 1 })), servers, 3000, 3000);
      expect(herd.counts.idle).to.equal(3000);
      const capped = simulate(withPlugin(build(LeastLoadedPlugin, { pickCost: 0 })), servers, 3000, 3000);
      expect(capped.counts.idle).to.be.within(2200, 2250);
      // With it, the idle server leads by 0.1 / pickCost picks and then the pool shares.
      const guarded = simulate(withPlugin(build(LeastLoadedPlugin, { pickCost: 0.01 })), servers, 3000, 3000);
      expect(share(guarded.counts, 'idle')).to.be.lessThan(0.4);
      expect(guarded.counts.idle! - guarded.counts.b!).to.be.within(9, 11);
    });

    it('counts a stale report as unknown load (the mean of the known ones), not as idle', () => {
      const core = withPlugin(build(LeastLoadedPlugin, { maxReportAgeMs: 5000 }));
      const { counts } = simulate(core, [{ address: 'stale-idle', loadScore: 0, stale: true }, { address: 'b', loadScore: 0.2 }, { address: 'c', loadScore: 0.6 }], 6000);
      // Unknown = mean(0.2, 0.6) = 0.4: b is preferred; the stale server is not swamped.
      expect(counts.b).to.be.greaterThan(counts['stale-idle']!);
      expect(share(counts, 'stale-idle')).to.be.lessThan(0.4);
      // A fixed unknownLoad of 1 keeps traffic away from servers we know nothing about.
      const pessimist = withPlugin(build(LeastLoadedPlugin, { maxReportAgeMs: 5000, unknownLoad: 1, pickCost: 0, maxShare: 1 }));
      expect(simulate(pessimist, [{ address: 'stale-idle', loadScore: 0, stale: true }, { address: 'b', loadScore: 0.6 }], 1000).counts).to.deep.equal({ 'stale-idle': 0, b: 1000 });
    });

    it('with no loads known at all, degrades to an even rotation', () => {
      const core = withPlugin(build(LeastLoadedPlugin));
      const { counts } = simulate(core, [{ address: 'a' }, { address: 'b' }, { address: 'c' }], 3000);
      expect(counts).to.deep.equal({ a: 1000, b: 1000, c: 1000 });
    });
  });

  describe('share cap: a reported figure alone never captures all traffic', () => {
    const liar = (n: number): Server[] => [{ address: 'liar', loadScore: 0, metrics: { capacity: 1e9 } }, ...Array.from({ length: n - 1 }, (_, i) => ({ address: `h${i}`, loadScore: 0.9, metrics: { capacity: 1 } }))];
    const cases: Array<[string, () => QhcpPlugin]> = [
      ['least-loaded', () => build(LeastLoadedPlugin, { pickCost: 0 })],
      ['power-of-two', () => Object.assign(build(PowerOfTwoPlugin, {}), { random: seeded(3) })],
      ['weighted-round-robin (weightFrom metric)', () => build(WeightedRoundRobinPlugin, { weightFrom: 'metric', weightMetric: 'capacity' })],
    ];
    for (const [name, make] of cases) {
      it(`${name}: at most 75 % of picks with 2 servers, at most 3/n with 10`, () => {
        for (const [n, cap] of [[2, 0.75], [10, 0.3]] as const) {
          const { counts, seq } = simulate(withPlugin(make()), liar(n), 2000, 2000);
          expect(share(counts, 'liar'), `${n} servers`).to.be.at.most(cap);
          expect(share(counts, 'liar'), `${n} servers: still favoured`).to.be.at.least(n === 2 ? cap - 0.05 : 0.15);
          // In every window of 100 picks too.
          for (let i = 0; i + 100 <= seq.length; i += 50) expect(seq.slice(i, i + 100).filter((a) => a === 'liar').length).to.be.at.most(cap * 100);
        }
      });
    }
    it('maxShare: 1 turns the cap off; configured weights are never capped', () => {
      expect(simulate(withPlugin(build(LeastLoadedPlugin, { pickCost: 0, maxShare: 1 })), liar(2), 500, 500).counts.liar).to.equal(500);
      const wrr = simulate(withPlugin(build(WeightedRoundRobinPlugin, {})), [{ address: 'big', weight: 9 }, { address: 'small', weight: 1 }], 1000);
      expect(wrr.counts.big).to.equal(900);
    });
  });

  describe('power-of-two', () => {
    it('prefers the less loaded: never the most loaded, the least loaded about 2/3 of picks with 3 servers', () => {
      const core = withPlugin(Object.assign(build(PowerOfTwoPlugin, {}), { random: seeded(42) }));
      const { counts } = simulate(core, [{ address: 'idle', loadScore: 0.1 }, { address: 'mid', loadScore: 0.5 }, { address: 'busy', loadScore: 0.9 }], 9000);
      expect(counts.busy).to.equal(0);
      expect(share(counts, 'idle')).to.be.closeTo(2 / 3, 0.03);
      expect(share(counts, 'mid')).to.be.closeTo(1 / 3, 0.03);
    });

    it('spreads picks evenly over equally loaded servers', () => {
      const core = withPlugin(Object.assign(build(PowerOfTwoPlugin, {}), { random: seeded(7) }));
      const { counts } = simulate(core, [{ address: 'a', loadScore: 0.4 }, { address: 'b', loadScore: 0.4 }, { address: 'c', loadScore: 0.4 }, { address: 'd', loadScore: 0.4 }], 8000);
      for (const k of ['a', 'b', 'c', 'd']) expect(share(counts, k), k).to.be.closeTo(0.25, 0.03);
    });

    it('counts a stale report as unknown load', () => {
      const core = withPlugin(Object.assign(build(PowerOfTwoPlugin, { maxReportAgeMs: 1000 }), { random: seeded(3) }));
      const { counts } = simulate(core, [{ address: 'stale-idle', loadScore: 0, stale: true }, { address: 'b', loadScore: 0.2 }, { address: 'c', loadScore: 0.6 }], 6000);
      // unknown = 0.4: it beats c and loses to b, like a middle server (about 1/3), instead of
      // winning every pair it is in (2/3) as a fresh 0 would.
      expect(share(counts, 'stale-idle')).to.be.closeTo(1 / 3, 0.04);
      expect(share(counts, 'b')).to.be.closeTo(2 / 3, 0.04);
    });

    it('with one server picks it; with none, nothing', () => {
      const p = build(PowerOfTwoPlugin);
      expect(p.choose([backend('a')], Date.now())!.address).to.equal('a');
      expect(p.choose([], Date.now())).to.equal(undefined);
    });
  });

  describe('load.ts (shared)', () => {
    it('reads the load, counting the sample age, and calls a stale or missing one unknown', () => {
      const now = 100_000;
      const o = { maxReportAgeMs: 10_000, metric: 'loadScore' };
      expect(reportedLoad(backend('a', { loadScore: 0.3, reportedAt: now - 1000 }), now, o)).to.equal(0.3);
      expect(reportedLoad(backend('a', { loadScore: 0.3, reportedAt: now - 11_000 }), now, o)).to.equal(undefined);
      expect(reportedLoad(backend('a', { loadScore: 0.3, reportedAt: now - 6000, ageMs: 6000 }), now, o)).to.equal(undefined);
      expect(reportedLoad(backend('a', { loadScore: 0.3, reportedAt: null }), now, o)).to.equal(undefined);
      expect(reportedLoad(backend('a', { reportedAt: now }), now, o)).to.equal(undefined);
      const { loads, known } = loadsOf([backend('a', { loadScore: 0.2, reportedAt: now }), backend('b', { reportedAt: now }), backend('c', { loadScore: 0.6, reportedAt: now })], now, { ...LOAD_DEFAULTS });
      expect(loads).to.deep.equal([0.2, 0.4, 0.6]);
      expect(known).to.deep.equal([true, false, true]);
    });

    it('counts picks per server until its next report, and says when a report has gone stale', () => {
      const o = { ...LOAD_DEFAULTS, maxReportAgeMs: 1000 };
      const st = new LoadState();
      const [a1, b1] = [backend('a', { loadScore: 0.1, reportedAt: 1000 }), backend('b', { loadScore: 0.3, reportedAt: 1500, ageMs: 200 })];
      st.update([a1!, b1!], 1000, o);
      st.picks[0]! += 2;
      st.picks[1]! += 1;
      // The same reports, b moved to the front: counts follow the server, not the position.
      st.update([b1!, a1!], 1100, o);
      expect(st.picks).to.deep.equal([1, 2]);
      expect(st.loads).to.deep.equal([0.3, 0.1]);
      // a reports again: its count starts over.
      st.update([b1!, backend('a', { loadScore: 0.1, reportedAt: 1200 })], 1200, o);
      expect(st.picks).to.deep.equal([1, 0], 'a new report resets the count');
      // b's sample was 200 ms old on arrival at 1500: stale after 2300; a's after 2200.
      expect(st.stale(2200)).to.equal(false);
      expect(st.stale(2201)).to.equal(true);
    });

    it('rejects bad options', () => {
      expect(() => validateOptions(LeastLoadedPlugin, { maxReportAgeMs: -1 }, 'p')).to.throw(ConfigError, /maxReportAgeMs/);
      expect(() => validateOptions(LeastLoadedPlugin, { unknownLoad: 'median' }, 'p')).to.throw(ConfigError);
      expect(() => validateOptions(WeightedRoundRobinPlugin, { weightFrom: 'dns' }, 'p')).to.throw(ConfigError, /weightFrom/);
      expect(() => validateOptions(RoundRobinPlugin, { fast: true }, 'p')).to.throw(ConfigError, /fast: is not a known option/);
    });
  });

  it('swapping round-robin for least-loaded is one entry in the plugin list', async () => {
    const rr = await resolvePlugins({ plugins: [], defaults: true }, 'loadbalancer');
    expect(rr.filter((p) => p.family === 'balancer').map((p) => p.name)).to.deep.equal(['round-robin']);
    const ll = await resolvePlugins({ plugins: ['least-loaded'], defaults: true }, 'loadbalancer');
    expect(ll.filter((p) => p.family === 'balancer').map((p) => p.name)).to.deep.equal(['least-loaded']);
    const core = fakeCore('loadbalancer');
    await applyPlugins(ll, core, 2000);
    const servers = [backend('a', { loadScore: 0.9 }), backend('b', { loadScore: 0.1 })];
    expect(core.hooks.pick.call({ servers, key: undefined, now: Date.now() })!.address).to.equal('b');
    for (const name of ['weighted-round-robin', 'power-of-two']) {
      const [p] = (await resolvePlugins({ plugins: [name], defaults: false }, 'loadbalancer')) as [QhcpPlugin];
      expect(p.name).to.equal(name);
      expect(p.family).to.equal('balancer');
    }
  });
});
