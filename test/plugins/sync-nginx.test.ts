/**
 * The nginx sync plugin against Debian's nginx, started here in its own prefix (a temporary
 * folder) on a free loopback port, proxying to three node HTTP backends through the upstream
 * block the plugin writes. The reload command is the real `nginx -s reload` with the test's
 * -p/-c. What counts: after the reload, requests through nginx reach only ready backends.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BackendView, SyncUpdate } from '../../core/plugin/hooks.ts';
import NginxSyncPlugin, { type NginxSync } from '../../plugins/sync/nginx.ts';
import { build, fakeCore, backend, type FakeCore } from './fake-core.ts';
import { childrenOf } from '../helpers/procs.ts';
import { Child, closeAll, freePort, gets, expectOnly, httpBackends, removeDir, sleep, tempDir, waitUntil, which, type NamedBackend } from '../helpers/proxies.ts';

type Extra = Partial<{ verdict: string; agentAdmin: string; adminState: string }>;
const view = (address: string, over: Parameters<typeof backend>[1] & Extra = {}): BackendView => ({ ...backend(address, over), verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', ...over }) as BackendView;
const update = (v: BackendView[]): SyncUpdate => ({ view: v, changed: v, removed: [], initial: false, at: Date.now() });

describe('sync plugin nginx (real nginx, real HTTP traffic)', function () {
  this.timeout(60_000);
  let dir: string;
  let http: NamedBackend[];
  let nginx: Child | undefined;
  let front: number;
  let core: FakeCore;
  let plugin: NginxSync;
  let nginxArgs: string[];
  const A = ['127.0.0.1:5401', '127.0.0.1:5402', '127.0.0.1:5403'];

  before(async function () {
    if (!which('nginx')) {
      if (process.env.CI) throw new Error('nginx is not installed (.ci/run installs it)');
      this.skip();
    }
    dir = tempDir('qhcp-nginx-');
    http = await httpBackends(3);
    front = await freePort();
    const conf = join(dir, 'nginx.conf');
    const include = join(dir, 'upstream.conf');
    writeFileSync(
      conf,
      [
        'worker_processes 1;',
        `pid ${join(dir, 'nginx.pid')};`,
        `error_log ${join(dir, 'error.log')} warn;`,
        'events { worker_connections 256; }',
        'http {',
        '  access_log off;',
        `  include ${include};`,
        `  server { listen 127.0.0.1:${front}; location / { proxy_pass http://qhcp_web; proxy_next_upstream off; } }`,
        '}',
        '',
      ].join('\n'),
    );
    // The starting file: all three backends.
    writeFileSync(include, `upstream qhcp_web {\n${http.map((b) => `  server 127.0.0.1:${b.port};`).join('\n')}\n}\n`);
    nginxArgs = ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')];
    nginx = new Child(spawn(which('nginx')!, [...nginxArgs, '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] }));
    await waitUntil(() => existsSync(join(dir, 'nginx.pid')) || !nginx!.running, 10_000, 'nginx pid file');
    if (!nginx.running) throw new Error(`nginx exited: ${nginx.out}`);
    await waitUntil(async () => new Set(await gets(front, 3)).size === 3, 10_000, 'nginx serving the three backends');

    core = fakeCore('loadbalancer');
    plugin = build(NginxSyncPlugin, {
      file: include,
      upstream: 'qhcp_web',
      reloadCommand: [which('nginx')!, ...nginxArgs, '-s', 'reload'],
      testCommand: [which('nginx')!, ...nginxArgs, '-t', '-q'],
      minReloadIntervalMs: 300,
      targets: Object.fromEntries(A.map((a, i) => [a, `127.0.0.1:${http[i]!.port}`])),
      weightFrom: 'none',
      retryMinMs: 50,
      retryMaxMs: 200,
    });
    plugin.apply(core);
  });

  after(async () => {
    await core?.hooks.stop.promise(core);
    await nginx?.stop();
    if (http) await closeAll(http.map((b) => b.server));
    if (dir) removeDir(dir);
  });

  /** nginx's worker processes now (children of the master, our child). */
  const workers = (): number[] => childrenOf(nginx!.proc.pid!);
  /**
   * After a reload, until the workers that ran before it are gone: until then an old worker
   * (old configuration) may still take a new connection (seen in a loaded CI run: 6 requests
   * reached only the ready backend, the next 20 also a drained one).
   */
  const reloadDone = (before: number[]): Promise<unknown> =>
    waitUntil(() => {
      const now = workers();
      return now.length > 0 && before.every((p) => !now.includes(p));
    }, 10_000, 'nginx to replace the workers that ran before the reload');

  it('a drained and a DOWN backend: the include is rewritten atomically, nginx reloaded, traffic reaches only the ready one', async () => {
    const old = workers();
    core.hooks.sync.call(update([view(A[0]!), view(A[1]!, { agentAdmin: 'DRAIN' }), view(A[2]!, { state: 'DOWN' })]));
    expect(await plugin.settled(10_000)).to.equal(true);
    const text = readFileSync(plugin.options.file, 'utf8');
    expect(text).to.include(`server 127.0.0.1:${http[1]!.port} down;`);
    expect(text).to.include(`server 127.0.0.1:${http[2]!.port} down;`);
    expect(text).to.match(new RegExp(`server 127\\.0\\.0\\.1:${http[0]!.port}; `));
    expect(plugin.reloads).to.equal(1);
    await reloadDone(old);
    await expectOnly(front, ['b1'], 'nginx');
  });

  it('reloads only when the set changed, at most once per minReloadIntervalMs', async () => {
    const before = plugin.reloads;
    // New metrics, same set: no reload.
    core.hooks.sync.call(update([view(A[0]!, { loadScore: 0.3 }), view(A[1]!, { agentAdmin: 'DRAIN' }), view(A[2]!, { state: 'DOWN' })]));
    expect(await plugin.settled(5000)).to.equal(true);
    expect(plugin.reloads).to.equal(before);
    // Three changes in quick succession: coalesced, never two reloads closer than 300 ms.
    const old = workers();
    const t0 = Date.now();
    core.hooks.sync.call(update([view(A[0]!), view(A[1]!), view(A[2]!, { state: 'DOWN' })]));
    await sleep(20);
    core.hooks.sync.call(update([view(A[0]!, { state: 'DOWN' }), view(A[1]!), view(A[2]!, { state: 'DOWN' })]));
    await sleep(20);
    core.hooks.sync.call(update([view(A[0]!), view(A[1]!), view(A[2]!)]));
    expect(await plugin.settled(10_000)).to.equal(true);
    expect(plugin.reloads - before).to.be.within(1, 2);
    if (plugin.reloads - before === 2) expect(Date.now() - t0).to.be.greaterThanOrEqual(300);
    await reloadDone(old);
    await expectOnly(front, ['b1', 'b2', 'b3'], 'nginx');
  });

  it('a failing reload is logged with the command and retried; a failing test puts the previous file back', async () => {
    const c2 = fakeCore('loadbalancer');
    const file = join(dir, 'other.conf');
    const p2 = build(NginxSyncPlugin, { file, upstream: 'x', reloadCommand: ['false', 'reload'], targets: { [A[0]!]: '127.0.0.1:1' }, retryMinMs: 50, retryMaxMs: 100, minReloadIntervalMs: 0 });
    p2.apply(c2);
    c2.hooks.sync.call(update([view(A[0]!)]));
    await waitUntil(() => c2.logged(/nginx: command failed/).filter((l) => l.command === 'false reload').length >= 2, 5000, 'the failing reload logged twice');
    await c2.hooks.stop.promise(c2);

    const c3 = fakeCore('loadbalancer');
    writeFileSync(file, 'upstream x { server 127.0.0.1:1; }\n');
    const p3 = build(NginxSyncPlugin, { file, upstream: 'x', reloadCommand: ['true'], testCommand: ['false', '-t'], targets: { [A[0]!]: '127.0.0.1:2' }, retryMinMs: 50, retryMaxMs: 100 });
    p3.apply(c3);
    c3.hooks.sync.call(update([view(A[0]!)]));
    await waitUntil(() => c3.logged(/nginx: command failed/).some((l) => l.command === 'false -t'), 5000, 'the failing test logged');
    await c3.hooks.stop.promise(c3);
    expect(readFileSync(file, 'utf8')).to.equal('upstream x { server 127.0.0.1:1; }\n');
    expect(p3.reloads).to.equal(0);
  });
});
