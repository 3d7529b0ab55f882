/**
 * The load balancer's health states with real processes: a `qhcp loadbalancer` process checking
 * scripted agents (test/helpers/scripted-agent.ts: real QUIC, real sessions, verdicts set by the
 * test and pushed at once, as the agent does). The check interval is 30 s, so every change seen
 * here between two checks came from a pushed HEALTH_REPORT; each test checks that no check ran.
 * Also the LoadBalancer API in-process: setAdmin, setWeight, addBackend, removeBackend.
 */
import { expect } from 'chai';
import { pickMany, startLoadBalancer, queryStatus, statusOf, waitForState, waitUntil, runQhcp, stopAll, type QhcpProcess } from '../helpers/procs.ts';
import { ScriptedAgent } from '../helpers/scripted-agent.ts';
import { LoadBalancer } from '../../core/roles/loadbalancer.ts';
import { buildConfig } from '../../core/config/config.ts';
import { createLogger } from '../../core/util/log.ts';
import RoundRobinPlugin from '../../plugins/balancer/round-robin.ts';
import { build } from '../../core/testing/index.ts';
import type { ServerStatus } from '../../core/protocol/messages.ts';

const picks = pickMany;

/** Waits for `address` in `state` and returns its status; fails when a check ran meanwhile (the change must have been pushed). */
async function pushedTo(lbPort: number, address: string, state: ServerStatus['state'], checksBefore: number): Promise<ServerStatus> {
  const st = await waitForState(lbPort, address, state, 15_000);
  expect(st.checks, `no check ran: ${address} learnt ${state} from a pushed report`).to.equal(checksBefore);
  return st;
}

describe('load balancer health states (real load balancer process, scripted agents)', function () {
  this.timeout(120_000);
  const agents: ScriptedAgent[] = [];
  let lb: { proc: QhcpProcess; port: number };
  let a: ScriptedAgent, b: ScriptedAgent, c: ScriptedAgent, d: ScriptedAgent;

  before(async () => {
    for (let i = 0; i < 4; i++) agents.push(await ScriptedAgent.start());
    [a, b, c, d] = agents as [ScriptedAgent, ScriptedAgent, ScriptedAgent, ScriptedAgent];
    d.set({ services: { web: { verdict: 'SERVING', since: 1 }, api: { verdict: 'NOT_SERVING', reason: 'http: 503 Service Unavailable', since: 2 } } });
    // Panic mode off: these cases take most backends out on purpose and check who is offered
    // without it (panic has its own test, test/integration/balancing.test.ts).
    lb = await startLoadBalancer([a.address, b.address, c.address, `${d.address}/web`, `${d.address}/api`], { interval: 30, fail: 3, args: ['--status-summary', '600', '--panic-threshold', '0'] });
    for (const s of [a, b, c]) await waitForState(lb.port, s.address, 'UP', 30_000);
    await waitForState(lb.port, `${d.address}/web`, 'UP', 30_000);
  });

  after(async () => {
    await stopAll();
    await Promise.all(agents.map((x) => x.stop()));
  });

  afterEach(() => {
    for (const x of [a, b, c]) x.set({ verdict: 'SERVING', reason: undefined, admin: 'READY', weight: 100 });
  });

  it('NOT_SERVING from the agent: DOWN at once with its reason, no failed check; SERVING again: UP', async () => {
    const before = (await statusOf(lb.port, a.address)).checks;
    a.set({ verdict: 'NOT_SERVING', reason: 'http: connection refused \x1b[2J' });
    const down = await pushedTo(lb.port, a.address, 'DOWN', before);
    expect(down).to.include({ verdict: 'NOT_SERVING', failures: 0 });
    expect(down.reason).to.equal('not serving: http: connection refused \\x1b[2J');
    expect((await picks(lb.port, 6)).map((p) => p.server)).to.not.include(a.address);
    a.set({ verdict: 'SERVING', reason: undefined });
    const up = await pushedTo(lb.port, a.address, 'UP', before);
    expect(up.verdict).to.equal('SERVING');
    // The transition log says the same, sanitised.
    expect(lb.proc.stdout).to.contain('not serving: http: connection refused \\\\x1b[2J');
    expect(lb.proc.stdout).not.to.contain('\x1b[2J');
  });

  it('DEGRADED: shown, and picked only when no UP server is left, with the balancer and why', async () => {
    const before = (await statusOf(lb.port, b.address)).checks;
    b.set({ verdict: 'DEGRADED', reason: 'disk 91% full' });
    const st = await pushedTo(lb.port, b.address, 'DEGRADED', before);
    expect(st.reason).to.equal('degraded: disk 91% full');
    const six = await picks(lb.port, 6);
    expect(new Set(six.map((p) => p.server))).to.deep.equal(new Set([a.address, c.address, `${d.address}/web`]));
    expect(six[0]).to.include({ balancer: 'round-robin', why: 'next in rotation of 3 UP' });
    const dServices = d.health.services!;
    a.set({ verdict: 'NOT_SERVING' });
    c.set({ verdict: 'NOT_SERVING' });
    d.set({ services: { ...dServices, web: { verdict: 'NOT_SERVING', since: 5 } } });
    for (const x of [a.address, c.address, `${d.address}/web`]) await waitForState(lb.port, x, 'DOWN');
    const only = await picks(lb.port, 3);
    expect(only.map((p) => p.server)).to.deep.equal([b.address, b.address, b.address]);
    expect(only[0]!.why).to.equal('next in rotation of 1 DEGRADED (none UP)');
    a.set({ verdict: 'SERVING' });
    await waitForState(lb.port, a.address, 'UP');
    expect((await picks(lb.port, 3)).map((p) => p.server)).to.deep.equal([a.address, a.address, a.address]);
    d.set({ services: dServices });
    await waitForState(lb.port, `${d.address}/web`, 'UP');
  });

  it("agent DRAIN: DRAINING, the connection stays, no PICK returns it; READY: UP and picked again; MAINT likewise", async () => {
    const before = (await statusOf(lb.port, c.address)).checks;
    c.set({ admin: 'DRAIN', reason: 'deploy 42' });
    const st = await pushedTo(lb.port, c.address, 'DRAINING', before);
    expect(st).to.include({ agentAdmin: 'DRAIN', adminState: 'READY', reason: 'draining' });
    expect((await picks(lb.port, 8)).map((p) => p.server)).to.not.include(c.address);
    expect(c.connections, 'the load balancer stays connected').to.be.at.least(1);
    c.set({ admin: 'READY', reason: undefined });
    await pushedTo(lb.port, c.address, 'UP', before);
    expect((await picks(lb.port, 4)).map((p) => p.server)).to.include(c.address);
    c.set({ admin: 'MAINT' });
    await pushedTo(lb.port, c.address, 'MAINT', before);
    expect((await picks(lb.port, 8)).map((p) => p.server)).to.not.include(c.address);
    c.set({ admin: 'READY' });
    await pushedTo(lb.port, c.address, 'UP', before);
  });

  it("the agent's weight scales the backend's weight", async () => {
    a.set({ weight: 50 });
    await waitUntil(async () => (await statusOf(lb.port, a.address)).weight === 0.5, 15_000, 'weight 0.5');
  });

  it('two services on one agent with different verdicts: each backend follows its own; PICK and STATUS by service', async () => {
    const web = `${d.address}/web`;
    const api = `${d.address}/api`;
    const apiSt = await waitForState(lb.port, api, 'DOWN');
    expect(apiSt).to.include({ service: 'api', verdict: 'NOT_SERVING', reason: 'first good check; not serving: http: 503 Service Unavailable' });
    expect((await statusOf(lb.port, web)).state).to.equal('UP');
    expect((await picks(lb.port, 2, 'web')).map((p) => p.server)).to.deep.equal([web, web]);
    expect(await picks(lb.port, 1, 'api')).to.deep.equal([{ server: null, reason: 'no server of service "api" is UP' }]);
    expect(await picks(lb.port, 1, 'nope')).to.deep.equal([{ server: null, reason: 'no server names service "nope"' }]);
    // The command line: qhcp pick/status --service.
    const r = await runQhcp(['pick', '--address', `127.0.0.1:${lb.port}`, '--service', 'web', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout)).to.include({ server: web, balancer: 'round-robin' });
    const s = await runQhcp(['status', '--address', `127.0.0.1:${lb.port}`, '--service', 'api']);
    expect(s.code, s.stderr).to.equal(0);
    const rows = s.stdout.trim().split('\n').slice(2);
    expect(rows).to.have.length(1);
    expect(rows[0]).to.match(new RegExp(`^${api.replace(/[.[\]/]/g, '\\$&')}\\s+DOWN\\s+NOT_SERVING\\s+READY\\s+1\\s.*not serving: http: 503 Service Unavailable$`));
    // The verdicts flip: the backends follow, the overall verdict is not used.
    const before = (await statusOf(lb.port, web)).checks;
    d.set({ verdict: 'NOT_SERVING', services: { web: { verdict: 'NOT_SERVING', reason: 'tcp: refused', since: 3 }, api: { verdict: 'SERVING', since: 3 } } });
    expect((await pushedTo(lb.port, web, 'DOWN', before)).reason).to.equal('not serving: tcp: refused');
    await waitForState(lb.port, api, 'UP');
    expect((await queryStatus(lb.port)).filter((x) => x.address.startsWith(d.address)).map((x) => x.state)).to.deep.equal(['DOWN', 'UP']);
  });
});

describe('LoadBalancer API: setAdmin, setWeight, addBackend, removeBackend (in-process, scripted agents)', function () {
  this.timeout(60_000);
  let lb: LoadBalancer | undefined;
  const agents: ScriptedAgent[] = [];
  afterEach(async () => {
    await lb?.stop();
    await Promise.all(agents.splice(0).map((x) => x.stop()));
  });

  it("the operator's admin state is its own: MAINT over the agent's DRAIN, lifting it leaves DRAINING; weights; add and remove", async () => {
    const x = await ScriptedAgent.start();
    const y = await ScriptedAgent.start();
    agents.push(x, y);
    const { config } = buildConfig(undefined, undefined, { servers: [x.address], checkInterval: 30, loadbalancerHost: '127.0.0.1', loadbalancerPort: 0, defaults: false, plugins: [] });
    lb = new LoadBalancer(config, createLogger({ level: 'silent' }));
    await lb.loadPlugins([build(RoundRobinPlugin)]);
    const seen: string[] = [];
    lb.hooks.transition.tap('test', (t) => seen.push(`${t.server} ${t.from}->${t.to}: ${t.reason}`));
    await lb.start();
    const view = () => lb!.backends().find((b) => b.address === x.address)!;
    await waitUntil(() => view().state === 'UP', 20_000, 'UP');
    lb.setAdmin(x.address, 'MAINT');
    expect(view()).to.include({ state: 'MAINT', adminState: 'MAINT' });
    x.set({ admin: 'DRAIN' });
    await waitUntil(() => view().agentAdmin === 'DRAIN', 10_000, 'the agent DRAIN seen');
    expect(view().state).to.equal('MAINT');
    lb.setAdmin(x.address, 'READY');
    expect(view().state, "the agent's drain is still in force").to.equal('DRAINING');
    expect(lb.pick(), 'nothing to pick').to.equal(undefined);
    x.set({ admin: 'READY' });
    await waitUntil(() => view().state === 'UP', 10_000, 'UP again');
    expect(seen).to.deep.equal([
      `${x.address} UNKNOWN->UP: first good check`,
      `${x.address} UP->MAINT: maintenance: set by the operator`,
      `${x.address} MAINT->DRAINING: maintenance over; draining`,
      `${x.address} DRAINING->UP: ready`,
    ]);
    lb.setWeight(x.address, 3);
    x.set({ weight: 50 });
    await waitUntil(() => view().weight === 1.5, 10_000, 'weight 3 x 50%');
    expect(() => lb!.setWeight(x.address, -1)).to.throw(/weight must be 0-1000/);
    expect(() => lb!.setAdmin('10.9.9.9:1', 'MAINT')).to.throw(/no server 10\.9\.9\.9:1/);
    // Add: checked and UP without touching the other; remove: TERMINATE, gone from STATUS.
    const before = view().checks;
    lb.addBackend(y.address);
    expect(() => lb!.addBackend(y.address)).to.throw(/already in the pool/);
    await waitUntil(() => lb!.backends().find((b) => b.address === y.address)?.state === 'UP', 20_000, 'the added backend UP');
    expect(view()).to.include({ state: 'UP', checks: before, weight: 1.5 });
    expect(await lb.removeBackend(y.address)).to.equal(true);
    expect(y.terminated, 'the removed backend got TERMINATE').to.equal(1);
    expect(lb.backends().map((b) => b.address)).to.deep.equal([x.address]);
    expect(await lb.removeBackend(y.address)).to.equal(false);
  });
});

describe('receive moderation in a load balancer (in-process, 70 scripted agents)', function () {
  this.timeout(90_000);
  const agents: ScriptedAgent[] = [];
  let lb: LoadBalancer | undefined;
  after(async () => {
    await lb?.stop();
    await Promise.all(agents.splice(0).map((x) => x.stop()));
  });

  it('with 64+ connections the check socket holds its reads, checks go on with none failed, a verdict still moves the backend', async () => {
    for (let i = 0; i < 70; i++) agents.push(await ScriptedAgent.start());
    // 1 s interval: the longest hold, 20 ms (2%, at most MAX_HOLD_MS). (At 0.3 s, with a 150 ms
    // check timeout, a loaded CI machine running these 70 agents in the test's own process failed
    // checks for want of CPU, hold or not.)
    const { config } = buildConfig(undefined, undefined, { servers: agents.map((a) => a.address), checkInterval: 1, loadbalancerHost: '127.0.0.1', loadbalancerPort: 0, defaults: false, plugins: [] });
    lb = new LoadBalancer(config, createLogger({ level: 'silent' }));
    await lb.loadPlugins([build(RoundRobinPlugin)]);
    await lb.start();
    const socket = (lb as unknown as { checker: { socket: { holdMs: number; stats: { holds: number } } } }).checker.socket;
    expect(socket.holdMs).to.equal(20);
    await waitUntil(() => lb!.backends().every((b) => b.state === 'UP'), 60_000, 'all 70 UP');
    const holds0 = socket.stats.holds;
    lb.stats.checks = lb.stats.failedChecks = lb.stats.lateChecks = 0;
    await new Promise((r) => setTimeout(r, 3500));
    expect(socket.stats.holds - holds0, 'reads were held').to.be.greaterThan(0);
    expect(lb.stats.checks, 'about 70 checks a second').to.be.greaterThan(70 * 3);
    const failing = lb.backends().filter((b) => (b.failures ?? 0) > 0).map((b) => `${b.address}: ${b.lastError}`);
    expect(lb.stats.failedChecks, `failed checks; failing now: ${failing.join('; ')}`).to.equal(0);
    agents[5]!.set({ verdict: 'NOT_SERVING', reason: 'held but heard' });
    await waitUntil(() => lb!.backends().find((b) => b.address === agents[5]!.address)!.state === 'DOWN', 10_000, 'DOWN from the pushed verdict');
    expect(lb.backends().filter((b) => b.state === 'UP')).to.have.length(69);
  });
});
