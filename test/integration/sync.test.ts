/**
 * The `sync` hook end to end: a real load balancer checking real agents (in this process, over
 * QUIC on loopback) feeds a recording sync plugin and the haproxy sync plugin, which keeps a
 * real HAProxy (HTTP mode, three node HTTP backends) in step. An agent that drains (its graceful
 * stop sends DRAIN) leaves HAProxy's rotation: requests sent through HAProxy afterwards never
 * reach its service.
 */
import { expect } from 'chai';
import { buildConfig, type QhcpConfig } from '../../core/config/config.ts';
import { LoadBalancer } from '../../core/roles/loadbalancer.ts';
import { AgentServer } from '../../core/roles/agent.ts';
import { createLogger } from '../../core/util/log.ts';
import type { QhcpPlugin } from '../../core/plugin/loader.ts';
import type { SyncUpdate } from '../../core/plugin/hooks.ts';
import RoundRobinPlugin from '../../plugins/balancer/round-robin.ts';
import { build } from '../../core/testing/index.ts';
import HaproxySyncPlugin from '../../plugins/sync/haproxy.ts';
import { Haproxy, closeAll, gets, haproxyHead, httpBackends, removeDir, tempDir, waitUntil, which, type NamedBackend } from '../helpers/proxies.ts';

const quiet = () => createLogger({ level: 'warn', json: true, write: () => {} });
const agentConfig = (over: Partial<QhcpConfig> = {}) => buildConfig({ serverIp: '127.0.0.1', serverPort: 0, sampleInterval: 0.2, drainGrace: 1, ...over }, undefined, {}).config;

describe('sync hook: load balancer -> sync plugins -> real HAProxy', function () {
  this.timeout(90_000);
  let dir: string;
  let h: Haproxy;
  let http: NamedBackend[];
  let agents: AgentServer[];
  let lb: LoadBalancer | undefined;
  let front: number;

  before(async function () {
    if (!which('haproxy')) {
      if (process.env.CI) throw new Error('haproxy is not installed (.ci/run installs it)');
      this.skip();
    }
    dir = tempDir('qhcp-sync-e2e-');
    h = new Haproxy(dir);
    http = await httpBackends(3);
    front = await h.startOnFreePort(
      (port) =>
        haproxyHead(h) +
        ['frontend fe', `  bind 127.0.0.1:${port}`, '  default_backend web', 'backend web', '  balance roundrobin', ...http.map((b) => `  server ${b.name} 127.0.0.1:${b.port}`), ''].join('\n'),
    );
    agents = [];
    for (let i = 0; i < 3; i++) {
      const a = new AgentServer(agentConfig(), quiet());
      await a.loadPlugins([]);
      await a.start();
      agents.push(a);
    }
  });

  after(async () => {
    await lb?.stop();
    for (const a of agents ?? []) await a.stop().catch(() => {});
    await h?.stop();
    if (http) await closeAll(http.map((b) => b.server));
    if (dir) removeDir(dir);
  });

  it('calls sync once at start with every backend, then on changes only (coalesced), and HAProxy follows an agent drain', async () => {
    const addresses = agents.map((a) => `127.0.0.1:${a.port}`);
    const updates: SyncUpdate[] = [];
    const recorder: QhcpPlugin = { name: 'recorder', apply: (core) => core.hooks.sync.tap('recorder', (u) => void updates.push(u)) };
    const haproxy = build(HaproxySyncPlugin, {
      socket: h.socket,
      targets: Object.fromEntries(addresses.map((a, i) => [a, `127.0.0.1:${http[i]!.port}`])),
      weightFrom: 'none',
    });
    const config = buildConfig(
      { servers: addresses, loadbalancerHost: '127.0.0.1', loadbalancerPort: 0, checkInterval: 0.3, checkTimeout: 0.25, reconnectInterval: 0.3, pluginTimeout: 0.5, status: 'none' },
      undefined,
      {},
    ).config;
    lb = new LoadBalancer(config, quiet());
    await lb.loadPlugins([recorder, haproxy, build(RoundRobinPlugin)]);
    await lb.start();

    await waitUntil(() => updates.length > 0, 5000, 'the first sync call');
    expect(updates[0]!.initial).to.equal(true);
    expect(updates[0]!.view.map((b) => b.address)).to.deep.equal(addresses);
    expect(updates[0]!.changed.map((b) => b.address)).to.deep.equal(addresses);
    await waitUntil(() => updates.at(-1)!.view.every((b) => b.state === 'UP'), 20_000, 'every backend UP in a sync update');
    expect(updates.slice(1).every((u) => !u.initial && u.changed.length > 0)).to.equal(true);
    // Snapshots: an update keeps the values of its moment.
    expect(updates[0]!.view.every((b) => b.state === 'UNKNOWN')).to.equal(true);

    expect(new Set(await gets(front, 9))).to.deep.equal(new Set(['b1', 'b2', 'b3']));

    // Agent 2 drains (graceful stop): DRAIN -> the load balancer marks it DRAINING -> sync -> HAProxy.
    const drained = agents[1]!;
    const stopping = drained.stop();
    await waitUntil(() => updates.some((u) => u.changed.some((b) => b.address === addresses[1] && (b.state === 'DRAINING' || b.state === 'DOWN'))), 10_000, 'a sync update with agent 2 draining');
    await waitUntil(async () => {
      const bodies = await gets(front, 6);
      return !bodies.includes('b2');
    }, 10_000, 'HAProxy sends nothing to b2');
    const hits = http[1]!.hits;
    const bodies = await gets(front, 20);
    expect(bodies).to.not.include('b2');
    expect(new Set(bodies)).to.deep.equal(new Set(['b1', 'b3']));
    expect(http[1]!.hits).to.equal(hits);
    await stopping;
  });
});
