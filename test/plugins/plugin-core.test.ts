/**
 * What a plugin gets from the running core, and what an operator sees, with one real load
 * balancer started from a config file in another directory than its working directory:
 * - a user plugin listed by path gets the merged config, the config file's directory, a
 *   resolvePath that resolves its relative options from there, and the logger;
 * - the start-up line lists every plugin in use, per family; a webhook joins the transition log
 *   (the log stays) and both see the transition;
 * - `qhcp status` run in the config's directory finds the load balancer from the config file;
 * - the reasons name the real cause: a host name that does not resolve, and a server that never
 *   answers, with the time it waited for it (the connect budget the check timeout gives).
 */
import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import { createSocket, type Socket } from 'node:dgram';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QhcpProcess, freePort, runQhcp, stopAll, waitUntil, queryStatus } from '../helpers/procs.ts';
import { connectTimeoutOf } from '../../core/health/checker.ts';

const PROBE = `import { definePlugin } from 'qhcp';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
export default definePlugin({
  name: 'probe',
  roles: ['loadbalancer'],
  schema: { type: 'object', additionalProperties: false, required: ['file'], properties: { file: { type: 'string' } } },
  apply(core, options) {
    const out = core.resolvePath(options.file);
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, JSON.stringify({ configDir: core.configDir, configFile: core.configFile, out, checkTimeout: core.config.checkTimeout, servers: core.config.servers.length, logger: typeof core.logger.info }));
    core.logger.info('probe applied', { out });
  },
});
`;

describe('what a plugin gets, and what the operator sees (real load balancer from a config file)', function () {
  this.timeout(90_000);
  let dir: string;
  let elsewhere: string;
  let lb: QhcpProcess;
  let lbPort: number;
  let silent: Socket;
  let silentAddress: string;
  let hook: Server;
  const posts: string[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-plugin-core-'));
    elsewhere = mkdtempSync(join(tmpdir(), 'qhcp-plugin-cwd-'));
    writeFileSync(join(dir, 'probe.mjs'), PROBE);
    // A UDP port that takes packets and never answers: a server that does not respond at all.
    silent = createSocket('udp4');
    await new Promise<void>((r) => silent.bind(0, '127.0.0.1', () => r()));
    silentAddress = `127.0.0.1:${silent.address().port}`;
    hook = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        posts.push(body);
        res.end('ok');
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
    const hookPort = (hook.address() as { port: number }).port;
    lbPort = await freePort();
    writeFileSync(
      join(dir, 'qhcp.config.json'),
      JSON.stringify({
        servers: ['no-such-host.invalid:4243', silentAddress],
        loadbalancerHost: '127.0.0.1',
        loadbalancerPort: lbPort,
        checkInterval: 0.3,
        checkTimeout: 0.25,
        maxFailAttempts: 1,
        status: 'none',
        plugins: [['./probe.mjs', { file: './out/seen.json' }], 'least-loaded', ['webhook', { url: `http://127.0.0.1:${hookPort}/alerts`, minIntervalMs: 0 }]],
      }),
    );
    lb = new QhcpProcess(['loadbalancer', '--config', join(dir, 'qhcp.config.json')], { cwd: elsewhere });
    await lb.waitFor(/load balancer started.*/, 60_000);
  });

  after(async () => {
    await stopAll();
    silent?.close();
    hook?.close();
    for (const d of [dir, elsewhere]) if (d) rmSync(d, { recursive: true, force: true });
  });

  it('a user plugin gets the merged config, the config directory, resolvePath from there, and the logger', () => {
    const file = join(dir, 'out/seen.json');
    expect(existsSync(file), 'written next to the config file, not in the working directory').to.equal(true);
    expect(existsSync(join(elsewhere, 'out'))).to.equal(false);
    expect(JSON.parse(readFileSync(file, 'utf8'))).to.deep.equal({ configDir: dir, configFile: join(dir, 'qhcp.config.json'), out: file, checkTimeout: 0.25, servers: 2, logger: 'function' });
    expect(lb.output).to.match(/probe applied/);
  });

  it('the start-up line lists every plugin per family; the webhook joins the transition log', async () => {
    const line = lb.output.split('\n').find((l) => /load balancer started/.test(l))!;
    expect(line).to.include(' plugins.other=probe plugins.balancer=least-loaded plugins.alert=webhook,log ');
    // Both alert plugins see the transition to DOWN: the log line and the webhook's POST.
    await lb.waitFor(/"level":"alert".*no-such-host\.invalid:4243/, 30_000);
    await waitUntil(() => posts.some((p) => p.includes('no-such-host.invalid:4243')), 30_000, 'the webhook POST');
  });

  it('qhcp status in the config directory asks the load balancer the config file names; reasons name the real cause', async () => {
    const r = await runQhcp(['status', '--json'], { cwd: dir });
    expect(r.code, r.stderr).to.equal(0);
    const servers = (JSON.parse(r.stdout) as { servers: Array<{ address: string; reason: string | null; lastError?: string | null }> }).servers;
    expect(servers.map((s) => s.address).sort()).to.deep.equal(['no-such-host.invalid:4243', silentAddress].sort());
    const st = await waitUntil(
      async () => {
        const all = await queryStatus(lbPort);
        const bad = all.find((s) => s.address === 'no-such-host.invalid:4243');
        const mute = all.find((s) => s.address === silentAddress);
        return bad?.lastError && mute?.lastError ? { bad, mute } : undefined;
      },
      30_000,
      'both servers to have failed a check',
    );
    expect(st.bad.lastError).to.match(/cannot resolve the name/);
    // What it waited: a new connection's budget for checkTimeout 0.25 s (connectTimeoutOf: the
    // check timeout, at least 1 s), less what the attempt had already used; not another constant.
    const waited = /no handshake within (\d+) ms/.exec(st.mute.lastError ?? '');
    expect(waited, st.mute.lastError ?? '').to.not.equal(null);
    expect(Number(waited![1])).to.be.within(connectTimeoutOf(250) - 100, connectTimeoutOf(250));
  });
});
