/**
 * The caddy sync plugin against Debian's caddy, started here with only an admin endpoint on a
 * free loopback port; the test then loads a config through the admin API (POST /load): one HTTP
 * server on a free loopback port whose reverse_proxy (`@id` qhcp_app) fronts three node HTTP
 * backends. What counts: requests through Caddy reach only the backends the view calls ready.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import type { BackendView, SyncUpdate } from '../../core/plugin/hooks.ts';
import CaddySyncPlugin, { type CaddySync } from '../../plugins/sync/caddy.ts';
import { build, fakeCore, backend, type FakeCore } from './fake-core.ts';
import { Child, closeAll, freePort, gets, expectOnly, httpBackends, httpGet, removeDir, tempDir, waitUntil, which, type NamedBackend } from '../helpers/proxies.ts';

type Extra = Partial<{ verdict: string; agentAdmin: string; adminState: string }>;
const view = (address: string, over: Parameters<typeof backend>[1] & Extra = {}): BackendView => ({ ...backend(address, over), verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', ...over }) as BackendView;
const update = (v: BackendView[]): SyncUpdate => ({ view: v, changed: v, removed: [], initial: false, at: Date.now() });

describe('sync plugin caddy (real Caddy, real HTTP traffic)', function () {
  this.timeout(60_000);
  let dir: string;
  let http: NamedBackend[];
  let caddy: Child | undefined;
  let admin: number;
  let front: number;
  let core: FakeCore;
  let plugin: CaddySync;
  const A = ['127.0.0.1:5501', '127.0.0.1:5502', '127.0.0.1:5503'];

  const fullConfig = () => ({
    admin: { listen: `127.0.0.1:${admin}` },
    apps: {
      http: {
        servers: {
          qhcp: {
            listen: [`127.0.0.1:${front}`],
            automatic_https: { disable: true },
            routes: [{ handle: [{ handler: 'reverse_proxy', '@id': 'qhcp_app', upstreams: http.map((b) => ({ dial: `127.0.0.1:${b.port}` })) }] }],
          },
        },
      },
    },
  });

  /**
   * The upstreams in Caddy's own config. Caddy restarts its admin server when a config is
   * loaded, closing kept-alive connections: a request that meets such a close is tried again.
   */
  const upstreams = async (): Promise<string[]> => {
    for (let attempt = 1; ; attempt++) {
      try {
        const have = (await (await fetch(`http://127.0.0.1:${admin}/id/qhcp_app/upstreams`)).json()) as Array<{ dial: string }>;
        return have.map((u) => u.dial).sort();
      } catch (e) {
        if (attempt >= 3) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };

  const startCaddy = async (waitForAll = true) => {
    const init = join(dir, 'init.json');
    writeFileSync(init, JSON.stringify({ admin: { listen: `127.0.0.1:${admin}` } }));
    const env = { ...process.env, HOME: dir, XDG_CONFIG_HOME: dir, XDG_DATA_HOME: dir };
    caddy = new Child(spawn(which('caddy')!, ['run', '--config', init], { stdio: ['ignore', 'pipe', 'pipe'], env }));
    await waitUntil(async () => {
      if (!caddy!.running) throw new Error(`caddy exited: ${caddy!.out}`);
      try {
        return (await fetch(`http://127.0.0.1:${admin}/config/`)).ok;
      } catch {
        return false;
      }
    }, 15_000, 'caddy admin endpoint');
    const res = await fetch(`http://127.0.0.1:${admin}/load`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(fullConfig()) });
    expect(res.status, await res.text()).to.equal(200);
    if (waitForAll) await waitUntil(async () => new Set(await gets(front, 3)).size === 3, 10_000, 'caddy serving the three backends');
  };

  before(async function () {
    if (!which('caddy')) {
      if (process.env.CI) throw new Error('caddy is not installed (.ci/run installs it)');
      this.skip();
    }
    dir = tempDir('qhcp-caddy-');
    http = await httpBackends(3);
    admin = await freePort();
    front = await freePort();
    await startCaddy();
    core = fakeCore('loadbalancer');
    plugin = build(CaddySyncPlugin, {
      admin: `http://127.0.0.1:${admin}`,
      id: 'qhcp_app',
      targets: Object.fromEntries(A.map((a, i) => [a, `127.0.0.1:${http[i]!.port}`])),
      resyncIntervalMs: 300,
      retryMinMs: 50,
      retryMaxMs: 300,
    });
    plugin.apply(core);
    await core.hooks.ready.promise(core);
  });

  after(async () => {
    await core?.hooks.stop.promise(core);
    await caddy?.stop();
    if (http) await closeAll(http.map((b) => b.server));
    if (dir) removeDir(dir);
  });

  it('a drained and a DOWN backend leave the upstreams; traffic reaches only the ready one', async () => {
    core.hooks.sync.call(update([view(A[0]!), view(A[1]!, { agentAdmin: 'DRAIN' }), view(A[2]!, { state: 'DOWN' })]));
    expect(await plugin.settled(5000)).to.equal(true);
    expect(await upstreams()).to.deep.equal([`127.0.0.1:${http[0]!.port}`]);
    await expectOnly(front, ['b1'], 'caddy');
  });

  it('none ready: Caddy answers 503; all back: every backend again', async () => {
    core.hooks.sync.call(update([view(A[0]!, { adminState: 'MAINT' }), view(A[1]!, { state: 'DOWN' }), view(A[2]!, { state: 'DRAINING' })]));
    await waitUntil(async () => (await httpGet(front)) === 'ERR 503', 10_000, 'caddy answering 503');
    core.hooks.sync.call(update(A.map((a) => view(a))));
    await expectOnly(front, ['b1', 'b2', 'b3'], 'caddy');
  });

  it('Caddy restarted with its old config: the failure is logged with the request, then the upstreams are put back', async () => {
    core.hooks.sync.call(update([view(A[0]!, { state: 'DOWN' }), view(A[1]!), view(A[2]!)]));
    await expectOnly(front, ['b2', 'b3'], 'caddy');
    await caddy!.stop();
    await waitUntil(() => core.logged(/caddy: command failed/).some((l) => String(l.command).startsWith('GET ')), 5000, 'a failed GET logged');
    await startCaddy(false); // loaded with all three again; the plugin's resync takes b1 out
    // Wait for the resync in Caddy's own config first: with Caddy's random policy, a sample of
    // requests can miss b1 by chance before it happened.
    const want = [http[1]!, http[2]!].map((b) => `127.0.0.1:${b.port}`).sort();
    await waitUntil(async () => JSON.stringify(await upstreams().catch(() => [])) === JSON.stringify(want), 15_000, 'the upstreams put back in Caddy');
    await expectOnly(front, ['b2', 'b3'], 'caddy');
  });
});
