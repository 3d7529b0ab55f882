/**
 * Load balancer groups, the pure parts: the decision rule (core/cluster/decide.ts), rendezvous
 * assignment (core/cluster/assign.ts), the `cluster` option (core/cluster/options.ts) and the
 * checks on what comes back from Redis (core/cluster/store.ts parseBatch/parseResult).
 */
import { expect } from 'chai';
import { decide, withAdmin } from '../core/cluster/decide.ts';
import { owners } from '../core/cluster/assign.ts';
import { clusterOptions, safeUrl } from '../core/cluster/options.ts';
import { parseBatch, parseResult } from '../core/cluster/store.ts';
import type { HealthState } from '../core/health/states.ts';

const r = (state: HealthState, at: number, m = 'x') => ({ state, at, m });

describe('group decision rule', () => {
  it('DOWN only when every checker that has news says DOWN; the most available state wins', () => {
    expect(decide([r('DOWN', 1), r('DOWN', 2)])?.state).to.equal('DOWN');
    expect(decide([r('DOWN', 5), r('UP', 1)])?.state).to.equal('UP');
    expect(decide([r('MAINT', 5), r('DEGRADED', 1)])?.state).to.equal('DEGRADED');
    expect(decide([r('DOWN', 5), r('DRAINING', 1)])?.state).to.equal('DRAINING');
  });
  it('UNKNOWN results and no results at all decide nothing (the state stays)', () => {
    expect(decide([])).to.equal(undefined);
    expect(decide([r('UNKNOWN', 9)])).to.equal(undefined);
    expect(decide([r('UNKNOWN', 9), r('DOWN', 1)])?.state).to.equal('DOWN');
  });
  it('among equal states the newest result gives the details', () => {
    expect(decide([r('UP', 1, 'a'), r('UP', 3, 'b'), r('UP', 2, 'c')])?.m).to.equal('b');
  });
  it("a member's own admin state goes on top", () => {
    expect(withAdmin('UP', 'MAINT')).to.equal('MAINT');
    expect(withAdmin('DOWN', 'MAINT')).to.equal('MAINT');
    expect(withAdmin('UP', 'DRAIN')).to.equal('DRAINING');
    expect(withAdmin('DOWN', 'DRAIN')).to.equal('DOWN');
    expect(withAdmin('DEGRADED', 'READY')).to.equal('DEGRADED');
  });
});

describe('rendezvous assignment', () => {
  const backends = Array.from({ length: 600 }, (_, i) => `10.0.${i >> 8}.${i & 255}:4243`);
  it('gives each backend R distinct members, about evenly, the same answer in any member order', () => {
    const members = ['lb1', 'lb2', 'lb3'];
    const load = new Map<string, number>();
    for (const b of backends) {
      const o = owners(b, members, 2);
      expect(new Set(o).size).to.equal(2);
      expect(owners(b, [...members].reverse(), 2)).to.deep.equal(o);
      for (const m of o) load.set(m, (load.get(m) ?? 0) + 1);
    }
    // 1200 assignments over three members: each within 15% of 400.
    for (const n of load.values()) expect(n).to.be.within(340, 460);
    expect(owners(backends[0]!, ['only'], 2)).to.deep.equal(['only']);
  });
  it('a member leaving moves only the backends it had; one joining takes only from the others', () => {
    const three = ['lb1', 'lb2', 'lb3'];
    const two = ['lb1', 'lb2'];
    for (const b of backends) {
      const before = owners(b, three, 2);
      const after = owners(b, two, 2);
      // Whoever of lb1/lb2 checked it still does.
      for (const m of before.filter((x) => x !== 'lb3')) expect(after).to.include(m);
    }
  });
});

describe('cluster option', () => {
  it('takes the group settings from the URL query and leaves the rest to the client', () => {
    const o = clusterOptions('redis://:secret@10.0.0.9:6380/2?replicas=3&ttl=1.5&group=web&family=4');
    expect(o).to.deep.include({ replicas: 3, ttlMs: 1500, group: 'web' });
    expect(o.url).to.equal('redis://:secret@10.0.0.9:6380/2?family=4');
    expect(safeUrl(o.url)).to.not.contain('secret');
    expect(clusterOptions({ url: 'rediss://h:6379', replicas: 1 })).to.deep.include({ replicas: 1, ttlMs: 3000, group: 'qhcp' });
  });
  it('refuses what it cannot use, with a clear message', () => {
    expect(() => clusterOptions('http://h:6379')).to.throw(/is not redis/);
    expect(() => clusterOptions('not a url')).to.throw(/not a URL/);
    expect(() => clusterOptions('redis://h?replicas=0')).to.throw(/replicas must be an integer 1-16/);
    expect(() => clusterOptions('redis://h?ttl=abc')).to.throw(/ttl must be/);
    expect(() => clusterOptions('redis://h?group=a b')).to.throw(/group must be/);
  });
});

describe('what comes back from Redis', () => {
  it('drops batches and results that are not ours, keeps the good ones, bounds the strings', () => {
    expect(parseBatch('nope')).to.equal(undefined);
    expect(parseBatch(JSON.stringify({ m: 'a', e: 'x', gone: [], r: [] }))).to.equal(undefined);
    const good = { b: '10.0.0.1:4243', state: 'UP', at: 5, metrics: { cpu: 3, bad: 'x' }, reason: 'r\u001b[31m', failures: -1 };
    const b = parseBatch(JSON.stringify({ m: 'a', e: 3, gone: ['10.0.0.2:4243', 7], r: [good, { b: 'x', state: 'SIDEWAYS', at: 1 }] }))!;
    expect(b.gone).to.deep.equal(['10.0.0.2:4243']);
    expect(b.r).to.have.length(1);
    expect(b.r[0]!.metrics).to.deep.equal({ cpu: 3 });
    expect(b.r[0]!.failures).to.equal(0);
    expect(b.r[0]!.reason).to.not.contain('\u001b');
    expect(parseResult({ b: 'x'.repeat(301), state: 'UP', at: 1 })).to.equal(undefined);
  });
});
