/**
 * Load balancer groups (issue 17): three real `qhcp loadbalancer` processes share one real
 * Debian redis-server (started here on a free loopback port) and check ten real agents (in
 * this process, so each can count who checks it: the `frame` hook sees every HEALTH_REQUEST
 * and the HELLO that names its load balancer). One set of processes for the whole block; the
 * cases run in order and each leaves the group as the next one expects.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { AgentServer } from '../../core/roles/agent.ts';
import { buildConfig } from '../../core/config/config.ts';
import { createLogger } from '../../core/util/log.ts';
import type { ServerStatus } from '../../core/protocol/messages.ts';
import { owners } from '../../core/cluster/assign.ts';
import { ClusterStore, type Batch, type SharedResult } from '../../core/cluster/store.ts';
import { startLoadBalancer, queryStatus, waitUntil, sleep, stopAll, type QhcpProcess } from '../helpers/procs.ts';
import { RedisServer, freeTcpPort } from '../helpers/redis.ts';

const AGENTS = 10;
const R = 2;
const INTERVAL = 0.5;
const TTL = 2;
/** A checker counts as checking an agent when its last HEALTH_REQUEST is this recent (ms). */
const RECENT = 3 * INTERVAL * 1000;

interface CountedAgent {
  server: AgentServer;
  address: string;
  /** Load balancer node -> times of its HEALTH_REQUESTs (last 200). */
  requests: Map<string, number[]>;
}

async function startAgent(): Promise<CountedAgent> {
  const config = buildConfig({ serverIp: '127.0.0.1', serverPort: 0, sampleInterval: 0.5, controlSocket: false }, undefined, {}).config;
  const server = new AgentServer(config, createLogger({ level: 'silent' }));
  await server.loadPlugins([]);
  const a: CountedAgent = { server, address: '', requests: new Map() };
  const nodeOf = new Map<number, string>();
  server.hooks.frame.tap('count', (dir, msg, s) => {
    if (dir !== 'in') return;
    if (msg.type === 'HELLO') nodeOf.set(s.id, msg.body.node);
    else if (msg.type === 'HEALTH_REQUEST') {
      const node = nodeOf.get(s.id) ?? '?';
      let list = a.requests.get(node);
      if (!list) a.requests.set(node, (list = []));
      list.push(Date.now());
      if (list.length > 200) list.splice(0, list.length - 200);
    }
  });
  await server.start();
  a.address = `127.0.0.1:${server.port}`;
  return a;
}

/** The load balancers that sent `a` a HEALTH_REQUEST within RECENT ms (and after `since`). */
function checkersOf(a: CountedAgent, since = 0): string[] {
  const now = Date.now();
  return [...a.requests]
    .filter(([, t]) => t.length > 0 && t[t.length - 1]! > Math.max(since, now - RECENT))
    .map(([n]) => n)
    .sort();
}

const sameSet = (a: readonly string[], b: readonly string[]) => a.length === b.length && [...a].sort().every((x, i) => x === [...b].sort()[i]);

describe('load balancer group through Redis (three members, ten agents)', function () {
  this.timeout(180_000);
  let dir: string;
  let redis: RedisServer;
  let agents: CountedAgent[] = [];
  const lbs = new Map<string, { proc: QhcpProcess; port: number }>();
  let httpPort = 0;
  const names = ['lb-a', 'lb-b', 'lb-c'];
  /** Any DOWN a member showed (status queries while the current case runs). */
  const seenDown: string[] = [];
  /** Where each member's output stood when the current case began (start-up is not what the cases test). */
  const marks = new Map<string, number>();

  const clusterUrl = () => `${redis.url}?ttl=${TTL}&replicas=${R}&group=t${process.pid}`;
  const startMember = async (name: string) => {
    // A generous check timeout: two cores shared with other test runs (a slow handshake is not what this tests).
    const args = ['--node', name, '--cluster', clusterUrl(), '--check-timeout', '0.45', '--http', name === 'lb-a' ? `127.0.0.1:${httpPort}` : 'off'];
    lbs.set(name, await startLoadBalancer(agents.map((a) => a.address), { cwd: dir, interval: INTERVAL, fail: 3, reconnect: 1, args }));
    marks.set(name, 0);
  };
  const live = () => names.filter((n) => lbs.get(n)?.proc.running);
  /** Every agent is checked by exactly the members rendezvous hashing gives it over `members`. */
  const assignedAsExpected = (members: string[], since = 0) => agents.every((a) => sameSet(checkersOf(a, since), owners(a.address, members, R)));
  const statuses = async () => {
    const out = new Map<string, ServerStatus[]>();
    for (const n of live()) {
      const v = await queryStatus(lbs.get(n)!.port);
      for (const s of v) if (s.state === 'DOWN') seenDown.push(`${n}: ${s.address} ${s.reason ?? ''}`);
      out.set(n, v);
    }
    return out;
  };
  /** Every live member shows every agent UP, checked by the members hashing gives it over `members`. */
  const viewsAgree = async (members: string[]) => {
    const all = await statuses();
    for (const v of all.values()) {
      if (v.length !== AGENTS) return false;
      for (const s of v) if (s.state !== 'UP' || !sameSet(s.checkedBy ?? [], owners(s.address, members, R))) return false;
    }
    return all;
  };
  const downLines = () =>
    live().flatMap((n) =>
      lbs
        .get(n)!
        .proc.output.slice(marks.get(n) ?? 0)
        .split('\n')
        .filter((l) => /state=DOWN/.test(l))
        .map((l) => `${n}: ${l}`),
    );
  const metric = async (name: string) => {
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
  };

  before(async function () {
    if (!RedisServer.available()) {
      if (process.env.CI) throw new Error('redis-server is not installed (.ci/run installs it)');
      this.skip();
    }
    dir = mkdtempSync(join(tmpdir(), 'qhcp-cluster-'));
    redis = new RedisServer(await freeTcpPort());
    await redis.start();
    httpPort = await freeTcpPort();
    for (let i = 0; i < AGENTS; i++) agents.push(await startAgent());
    // Two cores: the members start one after the other.
    for (const n of names) await startMember(n);
  });

  beforeEach(() => {
    seenDown.length = 0;
    for (const [n, l] of lbs) marks.set(n, l.proc.output.length);
  });

  afterEach(function () {
    if (this.currentTest?.state !== 'failed') return;
    for (const [n, l] of lbs) console.log(`--- ${n} (pid ${l.proc.pid}) ---\n${l.proc.output.slice(-3000)}`);
    console.log(`--- agents (checkers now; owners over all three) ---\n${agents.map((a) => `${a.address}: ${checkersOf(a).join(',')} / ${owners(a.address, names, R).join(',')}`).join('\n')}`);
  });

  after(async () => {
    await stopAll();
    await Promise.all(agents.map((a) => a.server.stop()));
    await redis?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('checks each agent from exactly R members, and every member shows all of them alike', async () => {
    await waitUntil(() => assignedAsExpected(names), 45_000, 'each agent checked by exactly its R members', 100);
    // The checks themselves, counted at the agents over three seconds (six intervals): only the owners send any.
    const t0 = Date.now();
    await sleep(3000);
    for (const a of agents) {
      const by = [...a.requests].map(([n, t]) => [n, t.filter((x) => x > t0).length] as const).filter(([, k]) => k > 0);
      expect(by.map(([n]) => n).sort(), a.address).to.deep.equal(owners(a.address, names, R).sort());
      for (const [n, k] of by) expect(k, `${n} -> ${a.address}`).to.be.within(3, 10);
      expect(a.server.sessions.size, `${a.address} sessions`).to.equal(R);
    }
    const views = await waitUntil(() => viewsAgree(names), 15_000, 'every member to show every agent UP with its checkers');
    const [first, ...rest] = [...views.values()].map((v) => v.map((s) => [s.address, s.state, s.checkedBy]));
    for (const v of rest) expect(v).to.deep.equal(first);
    expect(await metric('qhcp_cluster_members')).to.equal(3);
    expect(await metric('qhcp_cluster_fallback')).to.equal(0);
    // lb-a names every agent, those only the other members check included (their results carry
    // the name): in /api/status (read from the records now) and in the metrics' `name` label.
    const api = (await (await fetch(`http://127.0.0.1:${httpPort}/api/status`)).json()) as { backends: Array<{ address: string; name: string | null }> };
    for (const a of agents) expect(api.backends.find((b) => b.address === a.address)?.name, `${a.address} name (checked by ${owners(a.address, names, R).join(',')})`).to.equal(a.server.node);
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    for (const a of agents) {
      const line = text.split('\n').find((l) => l.startsWith('qhcp_backend_weight{') && l.includes(`backend="${a.address}"`));
      expect(/name="([^"]*)"/.exec(line ?? '')?.[1], `${a.address} name label (checked by ${owners(a.address, names, R).join(',')})`).to.equal(a.server.node);
    }
  });

  it('kill -9 of a member: its agents go to the others with no DOWN, every agent covered again', async () => {
    const victim = lbs.get('lb-c')!;
    const t0 = Date.now();
    victim.proc.signal('SIGKILL');
    await victim.proc.exited;
    const rest = ['lb-a', 'lb-b'];
    let polls = 0;
    await waitUntil(
      async () => {
        if (++polls % 3 === 0) await statuses(); // watch for DOWN on the way
        return assignedAsExpected(rest, t0);
      },
      20_000,
      'every agent checked by both remaining members',
      100,
    );
    const took = Date.now() - t0;
    await waitUntil(() => viewsAgree(rest), 15_000, 'both members to show every agent UP, checked by both');
    expect(seenDown, 'DOWN seen in a status').to.deep.equal([]);
    expect(downLines(), 'DOWN in a status line').to.deep.equal([]);
    // Timing goals are the bench's (bench/run.ts cluster); here only the outcome, with the time for the log.
    console.log(`      coverage back ${took} ms after kill -9 (TTL ${TTL * 1000} ms, interval ${INTERVAL * 1000} ms)`);
  });

  it('the member restarted: the assignment is rebalanced over three again', async () => {
    await startMember('lb-c');
    await waitUntil(() => assignedAsExpected(names), 30_000, 'each agent checked by exactly its R members again', 100);
    await waitUntil(() => viewsAgree(names), 15_000, 'all three members to agree again');
    expect(seenDown).to.deep.equal([]);
  });

  it('Redis stops: every member checks every agent, nothing goes DOWN; Redis back: shared again', async () => {
    await redis.stop();
    await waitUntil(
      async () => {
        await statuses();
        return agents.every((a) => sameSet(checkersOf(a), names));
      },
      20_000,
      'every agent checked by all three members',
      200,
    );
    for (const n of names) {
      const out = lbs.get(n)!.proc.output;
      await waitUntil(() => /Redis unreachable/.test(out) || /Redis unreachable/.test(lbs.get(n)!.proc.output), 5000, `${n} to log the fallback`);
    }
    expect(await metric('qhcp_cluster_fallback')).to.equal(1);
    // Still every agent UP everywhere, each shown as checked by the member itself only (a member's
    // view drops the others' claims at its next status after the fallback: waited for, bounded).
    let views = await statuses();
    await waitUntil(
      async () => {
        views = await statuses();
        return [...views].every(([n, v]) => v.every((s) => s.checkedBy?.length === 1 && s.checkedBy[0] === n));
      },
      10_000,
      'each member to show itself as the only checker',
      200,
    );
    for (const [n, v] of views) for (const s of v) expect([s.state, s.checkedBy], `${n} ${s.address}`).to.deep.equal(['UP', [n]]);
    await sleep(1000); // a while in fallback: the outage is logged once, not per attempt
    for (const n of names) expect(lbs.get(n)!.proc.output.match(/Redis unreachable/g), n).to.have.length(1);

    await redis.start();
    await waitUntil(() => assignedAsExpected(names), 30_000, 'each agent checked by exactly its R members after Redis is back', 100);
    await waitUntil(() => viewsAgree(names), 15_000, 'all three members to agree after Redis is back');
    for (const n of names) expect(lbs.get(n)!.proc.output, n).to.match(/Redis reachable again; rejoined/);
    expect(await metric('qhcp_cluster_fallback')).to.equal(0);
    expect(seenDown).to.deep.equal([]);
    expect(downLines()).to.deep.equal([]);
  });

  it('a member paused past its TTL is fenced: its stale epoch writes nothing, it rejoins with a new one', async () => {
    const b = lbs.get('lb-b')!;
    const from = b.proc.output.length;
    b.proc.signal('SIGSTOP');
    try {
      // Its heartbeat expires; the others take its agents.
      await waitUntil(() => assignedAsExpected(['lb-a', 'lb-c']), 20_000, 'lb-a and lb-c to take lb-b’s agents', 100);
    } finally {
      b.proc.signal('SIGCONT');
    }
    await b.proc.waitFor(/joining again with a new epoch|refused by the epoch fence/, 15_000, from);
    await waitUntil(() => assignedAsExpected(names), 30_000, 'lb-b back in the group with its share', 100);
    await waitUntil(() => viewsAgree(names), 15_000, 'all three members to agree after the pause');
    expect(seenDown).to.deep.equal([]);
    expect(downLines()).to.deep.equal([]);
  });

  it('the store refuses a stale epoch: an older incarnation cannot overwrite newer results', async () => {
    const batches: Batch[] = [];
    const store = new ClusterStore({ url: redis.url, replicas: 2, ttlMs: 5000, group: `fence${process.pid}` }, createLogger({ level: 'silent' }), (b) => batches.push(b));
    try {
      expect(await store.connect()).to.equal(true);
      const old = await store.join('x');
      const now = await store.join('x'); // the same member id restarted: a new epoch
      expect(now).to.be.greaterThan(old);
      const result = (state: SharedResult['state']): SharedResult => ({ b: '127.0.0.1:9', state, since: 1, verdict: 'SERVING', agentAdmin: 'READY', agentWeight: 100, metrics: {}, reportedAt: null, ageMs: null, latencyMs: null, reason: state, lastError: null, failures: 0, successes: 1, checks: 1, at: Date.now() });
      await sleep(100); // the subscription is in place
      expect(await store.publish('x', now, [result('UP')], [])).to.equal(true);
      expect(await store.publish('x', old, [result('DOWN')], [])).to.equal(false);
      expect(await store.publish('x', old, [], ['127.0.0.1:9'])).to.equal(false);
      expect((await store.results('x')).map((r) => r.state)).to.deep.equal(['UP']);
      await waitUntil(() => batches.length >= 1, 5000, 'the published batch');
      await sleep(200);
      expect(batches.map((b) => [b.e, b.r.map((r) => r.state)])).to.deep.equal([[now, ['UP']]]);
      expect(store.fenced).to.equal(2);
      // The heartbeat of the old epoch is refused too; the member list shows the new one.
      const beat = await store.beat('x', old);
      expect(beat.ours).to.equal(false);
      expect(beat.members.get('x')).to.equal(now);
    } finally {
      await store.close();
    }
  });
});
