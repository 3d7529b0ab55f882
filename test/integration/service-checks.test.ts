/**
 * Service checks and the control channel through real processes on loopback: a `qhcp server`
 * whose config enables a check kind defined here (a plugin of family `check`: `flag` reads a
 * file the test writes, "<status> <output>"), fronting two services. A checker session spoken
 * directly and a real `qhcp loadbalancer` see what the agent says:
 * - NOT_SERVING with the check's reason in HEALTH_RESPONSE, per service;
 * - a verdict change pushed at once as a HEALTH_REPORT in poll mode (no CONFIG_UPDATE asked for it);
 * - `qhcp drain` / `maint` / `ready` / `weight` over the control socket change what the load
 *   balancer sees, long before its next check (its check interval is 30 s);
 * - the control socket refuses another user (setpriv to uid 65534, when the test runs as root);
 * - a restarted agent is READY, or DRAIN when its state file says so, or what --admin-state says;
 * - a check that cannot work is a config error at start-up: exit 2, named by path.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync, existsSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { expect } from 'chai';
import { connect } from '../../core/transport/quic.ts';
import { Session } from '../../core/protocol/session.ts';
import { SUPPORTED_VERSIONS, type Message } from '../../core/protocol/messages.ts';
import { createServer, connect as tcpConnect, type Socket } from 'node:net';
import { startServer, startLoadBalancer, runQhcp, stopAll, waitUntil, waitForState, statusOf, BIN, QhcpProcess } from '../helpers/procs.ts';

type Of<K extends Message['type']> = Extract<Message, { type: K }>;

const FLAG_PLUGIN = `
import { readFileSync } from 'node:fs';
const kind = {
  type: 'flag',
  schema: { type: 'object', additionalProperties: false, required: ['file'], properties: { file: { type: 'string', minLength: 1 } } },
  create(o, ctx) {
    const file = ctx.resolvePath(o.file);
    return {
      async run() {
        const [status, ...rest] = readFileSync(file, 'utf8').trim().split(' ');
        return { status, output: rest.join(' ') };
      },
    };
  },
};
export default class FlagChecks {
  static schema = { type: 'object', additionalProperties: false, properties: {} };
  name = 'flag-checks';
  family = 'check';
  roles = ['server'];
  apply(core) { core.hooks.checkKinds.tap(this.name, (kinds) => [...kinds, kind]); }
}
`;

/** A checker session (poll mode: no CONFIG_UPDATE), every pushed message recorded with its arrival time. */
async function open(port: number): Promise<{ s: Session; pushed: Array<{ m: Message; at: number }> }> {
  const pushed: Array<{ m: Message; at: number }> = [];
  const channel = await connect({ host: '127.0.0.1', port, timeoutMs: 10_000 });
  const s = new Session(channel, { role: 'client', onMessage: (m) => (m.type === 'HEALTH_REPORT' ? pushed.push({ m, at: Date.now() }) : undefined) });
  await s.request('HELLO', { versions: [...SUPPORTED_VERSIONS], role: 'checker', node: 'test-lb' }, 10_000);
  return { s, pushed };
}

const health = async (s: Session, seq: number) => ((await s.request('HEALTH_REQUEST', { seq }, 10_000)) as Of<'HEALTH_RESPONSE'>).body;

describe('service checks and the control channel (real processes)', function () {
  this.timeout(180_000);
  let dir: string;
  let sock: string;
  const sessions: Session[] = [];
  const setFlag = (name: string, text: string) => writeFileSync(join(dir, `${name}.state`), text + '\n');
  const agentArgs = (extra: string[] = []) => ['-config', join(dir, 'qhcp.config.json'), '-sample-interval', '0.5', ...extra];
  const ctl = (...args: string[]) => runQhcp([...args, '--socket', sock, '--json'], { cwd: dir, timeoutMs: 30_000 });

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-checks-'));
    sock = join(dir, 'ctl.sock');
    writeFileSync(join(dir, 'flag-check.mjs'), FLAG_PLUGIN);
    writeFileSync(
      join(dir, 'qhcp.config.json'),
      JSON.stringify({
        plugins: ['./flag-check.mjs'],
        services: {
          web: [{ type: 'flag', file: 'web.state', interval: 0.2, rise: 1, fall: 1 }],
          api: [{ type: 'flag', file: 'api.state', interval: 0.2, rise: 1, fall: 1 }],
        },
        controlSocket: './ctl.sock',
        stateFile: './agent-state.json',
      }),
    );
  });
  beforeEach(() => {
    setFlag('web', 'passing 200 OK');
    setFlag('api', 'passing 200 OK');
    rmSync(join(dir, 'agent-state.json'), { force: true });
  });
  afterEach(async () => {
    for (const s of sessions.splice(0)) s.close('test done');
    await stopAll();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('HEALTH_RESPONSE carries NOT_SERVING with the reason; the change is pushed at once in poll mode', async () => {
    const agent = await startServer({ cwd: dir, args: agentArgs() });
    const { s, pushed } = await open(agent.port);
    sessions.push(s);
    let h = await health(s, 1);
    expect(h).to.deep.include({ verdict: 'SERVING', admin: 'READY', weight: 100 });
    expect(Object.keys(h.services!)).to.deep.equal(['web', 'api']);

    const wrote = Date.now();
    setFlag('web', 'critical HTTP 503 \x1b[31mService Unavailable');
    const push = await waitUntil(() => pushed.find((p) => (p.m as Of<'HEALTH_REPORT'>).body.verdict === 'NOT_SERVING'), 15_000, 'a pushed HEALTH_REPORT with NOT_SERVING');
    const report = (push.m as Of<'HEALTH_REPORT'>).body;
    expect(report.services!.web).to.deep.include({ verdict: 'NOT_SERVING', reason: 'flag: HTTP 503 \\x1b[31mService Unavailable' });
    expect(report.services!.api!.verdict).to.equal('SERVING');
    expect(report.reason).to.equal('web: flag: HTTP 503 \\x1b[31mService Unavailable');
    console.log(`      (verdict change pushed ${push.at - wrote} ms after the flag file changed; check interval 200 ms)`);

    h = await health(s, 2);
    expect(h.verdict).to.equal('NOT_SERVING');
    expect(h.services!.web!.verdict).to.equal('NOT_SERVING');
    // One push per change, not one per check run.
    const n = pushed.length;
    await new Promise((r) => setTimeout(r, 1000));
    expect(pushed.length, 'no push while nothing changes').to.equal(n);

    setFlag('web', 'warning slow 900 ms');
    await waitUntil(() => pushed.some((p) => (p.m as Of<'HEALTH_REPORT'>).body.verdict === 'DEGRADED'), 15_000, 'DEGRADED pushed');
    setFlag('web', 'passing 200 OK');
    await waitUntil(() => pushed.some((p, i) => i > n && (p.m as Of<'HEALTH_REPORT'>).body.verdict === 'SERVING'), 15_000, 'SERVING pushed');
  });

  it('qhcp drain / ready / maint / weight through the control socket: the load balancer sees each at once', async () => {
    const agent = await startServer({ cwd: dir, args: agentArgs() });
    expect(statSync(sock).mode & 0o777, 'socket mode').to.equal(0o600);
    const { s, pushed } = await open(agent.port);
    sessions.push(s);
    // A 30 s check interval: within the waits below only a push can tell the load balancer.
    const lb = await startLoadBalancer([agent.address], { cwd: dir, interval: 30, fail: 1 });
    await waitForState(lb.port, agent.address, 'UP', 30_000);

    const drained = await ctl('drain', '--reason', 'deploy 1.4');
    expect(drained.code, drained.stderr).to.equal(0);
    const answer = JSON.parse(drained.stdout) as { ok: boolean; health: { admin: string }; pushed: number };
    expect(answer.ok).to.equal(true);
    expect(answer.health.admin).to.equal('DRAIN');
    expect(answer.pushed, 'pushed to the test session and the load balancer').to.equal(2);
    await waitForState(lb.port, agent.address, 'DRAINING', 10_000);
    expect((await health(s, 1)).admin).to.equal('DRAIN');
    expect(JSON.parse(readFileSync(join(dir, 'agent-state.json'), 'utf8'))).to.deep.equal({ admin: 'DRAIN', reason: 'deploy 1.4', weight: 100 });

    expect((await ctl('ready')).code).to.equal(0);
    await waitForState(lb.port, agent.address, 'UP', 10_000);

    expect((await ctl('maint', '--reason', 'disk swap')).code).to.equal(0);
    await waitForState(lb.port, agent.address, 'MAINT', 10_000);
    expect((await ctl('ready')).code).to.equal(0);
    await waitForState(lb.port, agent.address, 'UP', 10_000);

    const w = await ctl('weight', '50');
    expect(w.code, w.stderr).to.equal(0);
    await waitUntil(() => pushed.some((p) => (p.m as Of<'HEALTH_REPORT'>).body.weight === 50), 10_000, 'weight 50 pushed');
    expect((await health(s, 2)).weight).to.equal(50);

    // The service failing while READY: DOWN at once, with the agent's reason.
    setFlag('api', 'critical connection refused');
    await waitForState(lb.port, agent.address, 'DOWN', 10_000);
    // The agent's reason reaches the load balancer's own output (its status lines / transition log).
    await waitUntil(() => /connection refused/.test(lb.proc.output), 10_000, "the agent's reason in the load balancer's output");
    expect((await statusOf(lb.port, agent.address)).checks, 'no extra check ran: the push did it').to.be.below(4);

    // Human form, and bad input.
    const human = await runQhcp(['health', '--socket', sock], { cwd: dir, timeoutMs: 30_000 });
    expect(human.code).to.equal(0);
    expect(human.stdout).to.match(/verdict NOT_SERVING .*admin READY, weight 50/);
    expect(human.stdout).to.match(/check api\/flag \(flag\): critical - connection refused/);
    const bad = await runQhcp(['weight', '300', '--socket', sock], { cwd: dir, timeoutMs: 30_000 });
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.match(/weight: must be 0-256/);
    const none = await runQhcp(['drain', '--socket', join(dir, 'nobody-here.sock')], { cwd: dir, timeoutMs: 30_000 });
    expect(none.code).to.equal(1);
    expect(none.stderr).to.match(/no agent is listening there/);
  });

  it('qhcp drain --wait-port waits for the connections to the service to finish (exit 0), or gives up (exit 3)', async () => {
    await startServer({ cwd: dir, args: agentArgs() });
    // The "service": a TCP listener on loopback holding two client connections.
    const service = createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => service.listen(0, '127.0.0.1', () => r()));
    const port = (service.address() as { port: number }).port;
    const clients: Socket[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const c = tcpConnect(port, '127.0.0.1');
        await new Promise<void>((r, j) => c.once('connect', () => r()).once('error', j));
        clients.push(c);
      }
      const drain = new QhcpProcess(['drain', '--reason', 'deploy', '--wait-port', String(port), '--wait-timeout', '60', '--socket', sock], { cwd: dir });
      await drain.waitFor(/admin DRAIN \(deploy\)/, 30_000);
      await drain.waitFor(/waiting: 2 connections to :\d+/, 30_000);
      clients.shift()!.destroy();
      await drain.waitFor(/waiting: 1 connection to :\d+/, 30_000);
      expect(drain.running, 'still waiting while a connection is open').to.equal(true);
      clients.shift()!.destroy();
      const done = await drain.exited;
      expect(done.code, drain.output).to.equal(0);
      expect(drain.stdout).to.match(/no connection left to :\d+ after [\d.]+ s/);

      // One connection that never ends: the wait gives up at its timeout, exit 3, and says so.
      const stuck = tcpConnect(port, '127.0.0.1');
      await new Promise<void>((r, j) => stuck.once('connect', () => r()).once('error', j));
      clients.push(stuck);
      const gaveUp = await ctl('drain', '--wait-port', `${port},65535`, '--wait-timeout', '0.5');
      expect(gaveUp.code, gaveUp.stderr).to.equal(3);
      expect(gaveUp.stderr).to.match(/1 connection to :\d+, :65535 still open after 0\.5 s/);
      const answer = JSON.parse(gaveUp.stdout) as { ok: boolean; health: { admin: string }; wait: { ports: number[]; left: number } };
      expect(answer.health.admin).to.equal('DRAIN');
      expect(answer.wait).to.deep.include({ ports: [port, 65535], left: 1 });

      const bad = await runQhcp(['drain', '--wait-port', '8080,x', '--socket', sock], { cwd: dir, timeoutMs: 30_000 });
      expect(bad.code).to.equal(2);
      expect(bad.stderr).to.match(/--wait-port: a port or a comma list of ports/);
      for (const [v, why] of [['-1', /--wait-timeout: must be 0-86400 seconds/], ['soon', /--wait-timeout: expected a number/]] as const) {
        const r = await runQhcp(['drain', '--wait-port', String(port), '--wait-timeout', v, '--socket', sock], { cwd: dir, timeoutMs: 30_000 });
        expect(r.code, v).to.equal(2);
        expect(r.stderr, v).to.match(why);
      }
    } finally {
      for (const c of clients) c.destroy();
      await new Promise((r) => service.close(r));
    }
  });

  it('the control socket refuses another user', async function () {
    const setpriv = spawnSync('sh', ['-c', 'command -v setpriv'], { encoding: 'utf8' }).stdout.trim();
    if (process.getuid?.() !== 0 || !setpriv) {
      console.log('      (skipped: needs root and setpriv to act as another user)');
      this.skip();
    }
    const agent = await startServer({ cwd: dir, args: agentArgs() });
    // Let others reach the directory: the socket's own mode must be what refuses them.
    chmodSync(dir, 0o755);
    try {
      const other = spawnSync(setpriv, ['--reuid', '65534', '--regid', '65534', '--clear-groups', process.execPath, BIN, 'drain', '--socket', sock], { encoding: 'utf8', timeout: 60_000, cwd: '/' });
      expect(other.status, other.stderr).to.equal(1);
      expect(other.stderr).to.match(/permission denied/);
      const { s } = await open(agent.port);
      sessions.push(s);
      expect((await health(s, 1)).admin, 'nothing changed').to.equal('READY');
    } finally {
      chmodSync(dir, 0o700);
    }
  });

  it('a restarted agent starts READY, or as its state file or --admin-state says', async () => {
    let agent: { proc: QhcpProcess; port: number } = await startServer({ cwd: dir, args: agentArgs() });
    expect((await ctl('drain', '--reason', 'deploy')).code).to.equal(0);
    expect((await ctl('weight', '25')).code).to.equal(0);
    await agent.proc.stop();
    expect(existsSync(sock), 'socket removed on stop').to.equal(false);

    agent = await startServer({ cwd: dir, args: agentArgs() });
    let { s } = await open(agent.port);
    sessions.push(s);
    expect(await health(s, 1)).to.deep.include({ admin: 'DRAIN', weight: 25 });
    expect((await ctl('ready')).code).to.equal(0);
    s.close('restart');
    await agent.proc.stop();

    agent = await startServer({ cwd: dir, args: agentArgs() });
    ({ s } = await open(agent.port));
    sessions.push(s);
    expect(await health(s, 1)).to.deep.include({ admin: 'READY', weight: 25 });
    s.close('restart');
    await agent.proc.stop();

    // A flag wins over the state file; without a state file the agent is READY at weight 100.
    agent = await startServer({ cwd: dir, args: agentArgs(['--admin-state', 'maint', '--weight', '10']) });
    ({ s } = await open(agent.port));
    sessions.push(s);
    expect(await health(s, 1)).to.deep.include({ admin: 'MAINT', weight: 10 });
    s.close('restart');
    await agent.proc.stop();
    rmSync(join(dir, 'agent-state.json'));
    agent = await startServer({ cwd: dir, args: agentArgs() });
    ({ s } = await open(agent.port));
    sessions.push(s);
    expect(await health(s, 1)).to.deep.include({ admin: 'READY', weight: 100 });
  });

  it('a check that cannot work stops the agent at start-up: exit 2, named by its path', async () => {
    const cfg = join(dir, 'bad.config.json');
    writeFileSync(
      cfg,
      JSON.stringify({
        plugins: ['./flag-check.mjs'],
        controlSocket: false,
        services: { web: [{ type: 'flag', file: 'web.state' }, { type: 'nosuch' }], api: [{ type: 'flag' }] },
      }),
    );
    const r = await runQhcp(['server', '--config', cfg, '--server-ip', '127.0.0.1', '--server-port', '0'], { cwd: dir, timeoutMs: 60_000 });
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.match(/services\.web\[1\]\.type: unknown check type "nosuch"/);
    expect(r.stderr).to.match(/services\.api\[0\]: must have required property 'file'/);
    expect(r.stderr).to.not.match(/at .*\.ts:\d+/);
  });
});
