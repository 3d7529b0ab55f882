/**
 * haproxy-agent: the load balancer answers HAProxy's agent-check protocol. Checked twice: with
 * raw TCP requests (the reply grammar, malformed and unknown requests, a silent peer), and with a
 * real HAProxy whose servers carry `agent-check` against the plugin, in front of three node HTTP
 * backends: HAProxy's rotation follows what the view says (drain, DOWN, maint, weights).
 */
import { expect } from 'chai';
import { createConnection } from 'node:net';
import type { BackendView, SyncUpdate } from '../../core/plugin/hooks.ts';
import HaproxyAgentPlugin, { type HaproxyAgent } from '../../plugins/sync/haproxy-agent.ts';
import { haproxyCommand, parseServersState } from '../../plugins/sync/haproxy-cli.ts';
import { build, fakeCore, backend, type FakeCore } from './fake-core.ts';
import { Haproxy, closeAll, gets, haproxyHead, httpBackends, removeDir, tempDir, waitUntil, which, type NamedBackend } from '../helpers/proxies.ts';

type Extra = Partial<{ verdict: string; agentAdmin: string; adminState: string; reason: string }>;
const view = (address: string, over: Parameters<typeof backend>[1] & Extra = {}): BackendView => ({ ...backend(address, over), verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', weight: 100, ...over }) as BackendView;
const update = (v: BackendView[]): SyncUpdate => ({ view: v, changed: v, removed: [], initial: false, at: Date.now() });

/** Sends `request` (or nothing) and reads until the agent closes; the reply and whether it closed. */
function ask(port: number, request: string | undefined, timeoutMs = 5000): Promise<{ reply: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = createConnection(port, '127.0.0.1');
    let reply = '';
    const t = setTimeout(() => {
      s.destroy();
      resolve({ reply, closed: false });
    }, timeoutMs);
    s.on('connect', () => {
      if (request !== undefined) s.write(request);
    });
    s.setEncoding('utf8');
    s.on('data', (d: string) => (reply += d));
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(t);
      resolve({ reply, closed: true });
    });
  });
}

describe('sync plugin haproxy-agent', function () {
  this.timeout(60_000);

  describe('the agent grammar on raw TCP', () => {
    let core: FakeCore;
    let plugin: HaproxyAgent;
    before(async () => {
      core = fakeCore('loadbalancer');
      plugin = build(HaproxyAgentPlugin, { port: 0, names: { web1: '10.0.0.1:4243' }, requestTimeoutMs: 300 });
      plugin.apply(core);
      await core.hooks.start.promise(core);
      core.hooks.sync.call(
        update([
          view('10.0.0.1:4243', { loadScore: 0.25 }),
          view('10.0.0.2:4243', { agentAdmin: 'DRAIN' }),
          view('10.0.0.3:4243', { state: 'DOWN', reason: 'http check: 503\nService Unavailable #oops' }),
          view('10.0.0.4:4243', { adminState: 'MAINT' }),
          view('10.0.0.5:4243', { state: 'UNKNOWN' }),
          view('10.0.0.6:4243', { state: 'DEGRADED' as never, loadScore: 0 }),
        ]),
      );
    });
    after(() => core.hooks.stop.promise(core));

    it('answers each intent in HAProxy\'s agent words and closes', async () => {
      const p = plugin.port;
      expect(await ask(p, 'web1\n')).to.deep.equal({ reply: 'up ready 75%\n', closed: true });
      expect(await ask(p, '10.0.0.1:4243\r\n')).to.deep.equal({ reply: 'up ready 75%\n', closed: true });
      expect((await ask(p, '10.0.0.2:4243\n')).reply).to.equal('up drain\n');
      const down = (await ask(p, '10.0.0.3:4243\n')).reply;
      expect(down).to.match(/^down #http check: 503/);
      expect(down.split('\n')).to.have.length(2); // one line: the reason's newline is escaped
      expect(down.slice(6)).to.not.include('#');
      expect((await ask(p, '10.0.0.4:4243\n')).reply).to.equal('maint\n');
      expect((await ask(p, '10.0.0.5:4243\n')).reply).to.equal('ready\n');
      expect((await ask(p, '10.0.0.6:4243\n')).reply).to.equal('up ready 100%\n');
      // No newline: complete after the gap.
      expect((await ask(p, 'web1')).reply).to.equal('up ready 75%\n');
    });

    it('answers malformed or unknown requests with down #unknown backend and closes', async () => {
      const p = plugin.port;
      for (const bad of ['nosuch\n', '\n', 'a b\n', '\x1b[31m\n', 'x'.repeat(5000)]) {
        expect(await ask(p, bad), JSON.stringify(bad.slice(0, 20))).to.deep.equal({ reply: 'down #unknown backend\n', closed: true });
      }
      // A peer that sends nothing is answered (and closed) after requestTimeoutMs.
      expect(await ask(p, undefined, 3000)).to.deep.equal({ reply: 'down #unknown backend\n', closed: true });
      expect(plugin.refused).to.be.greaterThanOrEqual(6);
    });
  });

  describe('with a real HAProxy using agent-check', () => {
    let dir: string;
    let h: Haproxy;
    let http: NamedBackend[];
    let front: number;
    let core: FakeCore;
    let plugin: HaproxyAgent;
    const A = ['127.0.0.1:5201', '127.0.0.1:5202', '127.0.0.1:5203'];

    before(async function () {
      if (!which('haproxy')) {
        if (process.env.CI) throw new Error('haproxy is not installed (.ci/run installs it)');
        this.skip();
      }
      core = fakeCore('loadbalancer');
      plugin = build(HaproxyAgentPlugin, { port: 0, names: { web1: A[0]! } });
      plugin.apply(core);
      await core.hooks.start.promise(core);
      core.hooks.sync.call(update(A.map((a) => view(a, { loadScore: 0 }))));
      dir = tempDir('qhcp-haproxy-agent-');
      h = new Haproxy(dir);
      http = await httpBackends(3);
      const agent = (name: string) => `agent-check agent-addr 127.0.0.1 agent-port ${plugin.port} agent-inter 150ms agent-send "${name}\\n"`;
      front = await h.startOnFreePort(
        (port) =>
          haproxyHead(h) +
          [
            'frontend fe',
            `  bind 127.0.0.1:${port}`,
            '  default_backend web',
            'backend web',
            '  balance roundrobin',
            `  server b1 127.0.0.1:${http[0]!.port} weight 100 check inter 1s ${agent('web1')}`,
            `  server b2 127.0.0.1:${http[1]!.port} weight 100 check inter 1s ${agent(A[1]!)}`,
            `  server b3 127.0.0.1:${http[2]!.port} weight 100 check inter 1s ${agent(A[2]!)}`,
            '',
          ].join('\n'),
      );
    });
    after(async () => {
      await h?.stop();
      await core?.hooks.stop.promise(core);
      if (http) await closeAll(http.map((b) => b.server));
      if (dir) removeDir(dir);
    });

    const state = async () => parseServersState(await haproxyCommand({ path: h.socket }, 'show servers state web', 2000));

    it('HAProxy pulls the view: a drain, a DOWN and a load reach its rotation', async () => {
      await waitUntil(() => plugin.answered >= 6, 10_000, 'HAProxy asking the agent');
      expect(new Set(await gets(front, 9))).to.deep.equal(new Set(['b1', 'b2', 'b3']));

      core.hooks.sync.call(update([view(A[0]!, { loadScore: 0.5 }), view(A[1]!, { agentAdmin: 'DRAIN' }), view(A[2]!, { state: 'DOWN', reason: 'check failed' })]));
      await waitUntil(
        async () => {
          const s = await state();
          const by = (n: string) => s.find((x) => x.name === n)!;
          return (by('b2').adminState & 0x18) !== 0 && by('b3').opState === 0 && by('b1').uweight === 50;
        },
        10_000,
        'HAProxy: b2 drained by the agent, b3 down, b1 at weight 50',
      ).catch(async (e) => {
        throw new Error(`${e.message}: ${JSON.stringify(await state())}`);
      });
      const bodies = await gets(front, 20);
      expect(new Set(bodies)).to.deep.equal(new Set(['b1']));

      core.hooks.sync.call(update(A.map((a) => view(a, { loadScore: 0 }))));
      await waitUntil(async () => new Set(await gets(front, 9)).size === 3, 10_000, 'all three back in rotation');
    });
  });
});
