/**
 * The haproxy sync plugin against a real HAProxy (Debian's package, started here in HTTP mode
 * on a free loopback port) carrying real HTTP requests to three node HTTP backends that each
 * answer their own name. The plugin is driven through the real `sync` hook with the views a load
 * balancer would send; what counts is where HAProxy sends the requests afterwards and what its
 * runtime API reports (`show servers state`, `get weight`).
 */
import { expect } from 'chai';
import type { BackendView, SyncUpdate } from '../../core/plugin/hooks.ts';
import HaproxySyncPlugin, { type HaproxySync } from '../../plugins/sync/haproxy.ts';
import { haproxyCommand, parseServersState } from '../../plugins/sync/haproxy-cli.ts';
import { build, fakeCore, backend, type FakeCore } from './fake-core.ts';
import { Haproxy, closeAll, gets, haproxyHead, httpBackends, removeDir, tempDir, waitUntil, which, type NamedBackend } from '../helpers/proxies.ts';

type Extra = Partial<{ verdict: string; agentAdmin: string; adminState: string; reason: string }>;
const view = (address: string, over: Parameters<typeof backend>[1] & Extra = {}): BackendView => ({ ...backend(address, over), verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', weight: 100, ...over }) as BackendView;
const update = (v: BackendView[], initial = false): SyncUpdate => ({ view: v, changed: v, removed: [], initial, at: Date.now() });

describe('sync plugin haproxy (real HAProxy, real HTTP traffic)', function () {
  this.timeout(60_000);
  let dir: string;
  let h: Haproxy;
  let backends: NamedBackend[];
  let front: number;
  let core: FakeCore;
  let plugin: HaproxySync;
  const A = ['127.0.0.1:5101', '127.0.0.1:5102', '127.0.0.1:5103'];

  const config = (port = front) =>
    haproxyHead(h) +
    [
      'frontend fe',
      `  bind 127.0.0.1:${port}`,
      '  default_backend web',
      'backend web',
      '  balance roundrobin',
      ...backends.map((b) => `  server ${b.name} 127.0.0.1:${b.port} weight 100`),
      '',
    ].join('\n');

  const state = async () => parseServersState(await haproxyCommand({ path: h.socket }, 'show servers state web', 2000));

  before(async function () {
    if (!which('haproxy')) {
      if (process.env.CI) throw new Error('haproxy is not installed (.ci/run installs it)');
      this.skip();
    }
    dir = tempDir('qhcp-sync-haproxy-');
    h = new Haproxy(dir);
    backends = await httpBackends(3);
    front = await h.startOnFreePort(config);
    core = fakeCore('loadbalancer');
    plugin = build(HaproxySyncPlugin, {
      socket: h.socket,
      backends: ['web'],
      // b1 and b2 matched by target address, b3 by the name map.
      targets: { [A[0]!]: `127.0.0.1:${backends[0]!.port}`, [A[1]!]: `127.0.0.1:${backends[1]!.port}` },
      servers: { [A[2]!]: 'web/b3' },
      resyncIntervalMs: 300,
      retryMinMs: 50,
      retryMaxMs: 400,
    });
    plugin.apply(core);
    await core.hooks.ready.promise(core);
  });

  after(async () => {
    await core?.hooks.stop.promise(core);
    await h?.stop();
    if (backends) await closeAll(backends.map((b) => b.server));
    if (dir) removeDir(dir);
  });

  it('all UP: requests through HAProxy reach every backend', async () => {
    core.hooks.sync.call(update(A.map((a) => view(a, { loadScore: 0 })), true));
    expect(await plugin.settled(5000)).to.equal(true);
    const seen = new Set(await gets(front, 9));
    expect([...seen].sort()).to.deep.equal(['b1', 'b2', 'b3']);
  });

  it('an agent drain: HAProxy drains the server and sends it no new request', async () => {
    core.hooks.sync.call(update([view(A[0]!), view(A[1]!, { agentAdmin: 'DRAIN' }), view(A[2]!)]));
    // The plugin records a command once HAProxy's answer is read, which may be after another
    // connection already sees its effect: wait for both.
    await waitUntil(async () => ((await state()).find((s) => s.name === 'b2')!.adminState & 0x08) !== 0 && plugin.sent.includes('set server web/b2 state drain'), 5000, 'b2 drained in HAProxy, by our command');
    const before = backends[1]!.hits;
    const bodies = await gets(front, 20);
    expect(bodies).to.not.include('b2');
    expect(new Set(bodies)).to.deep.equal(new Set(['b1', 'b3']));
    expect(backends[1]!.hits).to.equal(before);
  });

  it('a DOWN backend goes out of rotation (health down), and comes back when UP', async () => {
    core.hooks.sync.call(update([view(A[0]!), view(A[1]!), view(A[2]!, { state: 'DOWN', verdict: 'NOT_SERVING' })]));
    await waitUntil(async () => (await state()).find((s) => s.name === 'b3')!.opState === 0, 5000, 'b3 down in HAProxy');
    // b2 is ready again (its drain ended), b3 gets nothing.
    const bodies = await gets(front, 20);
    expect(new Set(bodies)).to.deep.equal(new Set(['b1', 'b2']));
    core.hooks.sync.call(update(A.map((a) => view(a))));
    await waitUntil(async () => (await state()).find((s) => s.name === 'b3')!.opState === 2, 5000, 'b3 up in HAProxy');
    expect(new Set(await gets(front, 12))).to.deep.equal(new Set(['b1', 'b2', 'b3']));
  });

  it('weights follow the reported load (get weight), and traffic follows the weights', async () => {
    core.hooks.sync.call(update([view(A[0]!, { loadScore: 0.75 }), view(A[1]!, { loadScore: 0 }), view(A[2]!, { loadScore: 0.5 })]));
    await waitUntil(async () => (await haproxyCommand({ path: h.socket }, 'get weight web/b1', 2000)).startsWith('25 '), 5000, 'b1 weight 25');
    expect(await haproxyCommand({ path: h.socket }, 'get weight web/b1', 2000)).to.match(/^25 \(initial 100\)/);
    expect(await haproxyCommand({ path: h.socket }, 'get weight web/b2', 2000)).to.match(/^100 \(initial 100\)/);
    expect(await haproxyCommand({ path: h.socket }, 'get weight web/b3', 2000)).to.match(/^50 \(initial 100\)/);
    const bodies = await gets(front, 70);
    const n = (x: string) => bodies.filter((b) => b === x).length;
    // Smooth weighted round robin over 25:100:50 gives 10:40:20 in 70 requests.
    expect(n('b2')).to.be.greaterThan(n('b3'));
    expect(n('b3')).to.be.greaterThan(n('b1'));
    // The agent's own weight (`qhcp weight 50`: agentWeight 50%) scales HAProxy's weight too.
    core.hooks.sync.call(update([view(A[0]!, { loadScore: 0.75 }), view(A[1]!, { loadScore: 0.5, agentWeight: 50 } as never), view(A[2]!, { loadScore: 0.5 })]));
    await waitUntil(async () => (await haproxyCommand({ path: h.socket }, 'get weight web/b2', 2000)).startsWith('25 '), 5000, 'b2 weight 100 x 50% x (1 - 0.5) = 25');
  });

  it('HAProxy restarted (socket gone, then back): the plugin logs the failed command, then puts every setting back', async () => {
    core.hooks.sync.call(update([view(A[0]!, { adminState: 'MAINT' }), view(A[1]!, { agentAdmin: 'DRAIN' }), view(A[2]!, { loadScore: 0.5 })]));
    await waitUntil(async () => ((await state()).find((s) => s.name === 'b1')!.adminState & 0x01) !== 0, 5000, 'b1 in maint');
    await h.stop();
    // Failing runs while HAProxy is away are logged with the command, and retried.
    await waitUntil(() => core.logged(/haproxy: command failed/).some((l) => l.command === 'show servers state'), 5000, 'a failure logged with its command');
    await h.start(config());
    // Fresh HAProxy: every server ready with weight 100; the resync restores maint, drain, weight.
    await waitUntil(
      async () => {
        const s = await state();
        const by = (n: string) => s.find((x) => x.name === n)!;
        return (by('b1').adminState & 0x01) !== 0 && (by('b2').adminState & 0x08) !== 0 && by('b3').uweight === 50;
      },
      10_000,
      'settings restored after the restart',
    );
    expect(new Set(await gets(front, 10))).to.deep.equal(new Set(['b3']));
  });

  it('a server HAProxy does not know: the error reply is logged with the command and retried, others still synced', async () => {
    const c2 = fakeCore('loadbalancer');
    const p2 = build(HaproxySyncPlugin, { socket: h.socket, servers: { [A[0]!]: 'web/nosuch' }, targets: { [A[1]!]: `127.0.0.1:${backends[1]!.port}` }, retryMinMs: 50, retryMaxMs: 200, weightFrom: 'none' });
    p2.apply(c2);
    c2.hooks.sync.call(update([view(A[0]!, { adminState: 'DRAIN' }), view(A[1]!)]));
    await waitUntil(() => c2.logged(/haproxy: command failed/).filter((l) => l.command === 'set server web/nosuch state drain').length >= 2, 5000, 'the failing command logged twice (retried)').catch((e) => {
      throw new Error(`${e.message}: ${c2.lines.join('\n')}`);
    });
    const line = c2.logged(/haproxy: command failed/).find((l) => l.command === 'set server web/nosuch state drain')!;
    expect(String(line.error)).to.match(/No such server/);
    expect(p2.sent).to.include('set server web/b2 state ready');
    await c2.hooks.stop.promise(c2);
  });
});
