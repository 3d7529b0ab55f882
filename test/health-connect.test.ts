/**
 * A new connection's own budget (core/health/checker.ts connectTimeoutOf): handshake + HELLO get
 * at least 1 s even when the check timeout is shorter, and the request on the new session still
 * gets the check timeout. An answer later than half the check timeout gets the connection
 * nudged (a PING, so QUIC repairs a loss at once: checker.ts answerWithin), and so does a pushed
 * report later than half the check timeout past due (checker.ts nextReportStep). In-process load
 * balancer, scripted agent or a silent UDP port.
 */
import { createSocket, type Socket } from 'node:dgram';
import { expect } from 'chai';
import { LoadBalancer } from '../core/roles/loadbalancer.ts';
import { buildConfig, type QhcpConfig } from '../core/config/config.ts';
import { connectTimeoutOf, timingsOf, CONNECT_TIMEOUT_MS } from '../core/health/checker.ts';
import { createLogger } from '../core/util/log.ts';
import type { Backend } from '../core/health/backend.ts';
import RoundRobinPlugin from '../plugins/balancer/round-robin.ts';
import { build } from '../core/testing/index.ts';
import { ScriptedAgent } from './helpers/scripted-agent.ts';
import { waitUntil, startServer, stopAll } from './helpers/procs.ts';

async function startLb(servers: string[], over: Partial<QhcpConfig>): Promise<LoadBalancer> {
  const { config } = buildConfig(undefined, undefined, { servers, loadbalancerHost: '127.0.0.1', loadbalancerPort: 0, defaults: false, plugins: [], ...over } as Partial<QhcpConfig>);
  const lb = new LoadBalancer(config, createLogger({ level: 'silent' }));
  await lb.loadPlugins([build(RoundRobinPlugin)]);
  await lb.start();
  return lb;
}

describe('load balancer: a new connection has its own budget (connect timeout)', function () {
  this.timeout(30_000);
  let lb: LoadBalancer | undefined;
  let agent: ScriptedAgent | undefined;
  let hole: Socket | undefined;
  afterEach(async () => {
    await lb?.stop();
    lb = undefined;
    await agent?.stop();
    agent = undefined;
    hole?.close();
    hole = undefined;
  });

  it('is the check timeout, at least 1 s', () => {
    expect(connectTimeoutOf(50)).to.equal(CONNECT_TIMEOUT_MS);
    expect(connectTimeoutOf(5000)).to.equal(5000);
    const { config } = buildConfig(undefined, undefined, { servers: ['127.0.0.1:1'], checkInterval: 0.1, defaults: false, plugins: [] });
    expect(timingsOf(config, 0.05)).to.include({ intervalMs: 100, timeoutMs: 50, connectMs: 1000 });
  });

  it('a HELLO answered after 300 ms with a 100 ms check timeout: UP, no failed check; the request keeps the check timeout', async () => {
    const a = (agent = await ScriptedAgent.start());
    a.helloDelayMs = 300;
    lb = await startLb([a.address], { checkInterval: 0.4, checkTimeout: 0.1, riseAttempts: 2 });
    const view = (): Backend => lb!.records()[0]!;
    await waitUntil(() => view().state === 'UP', 10_000, 'UP');
    expect(lb.stats.failedChecks, 'failed checks').to.equal(0);
    // The session is up: a request slower than the check timeout still fails the check.
    a.answerDelayMs = 250;
    await waitUntil(() => view().failures > 0, 10_000, 'a failed check');
    expect(view().lastError ?? '').to.match(/^RESPONSE_TIMEOUT: no HEALTH_RESPONSE within 100 ms$/);
  });

  it('an answer later than half the check timeout: the connection is nudged, the check still succeeds; prompt answers: no nudge', async () => {
    const a = (agent = await ScriptedAgent.start());
    lb = await startLb([a.address], { checkInterval: 0.5, checkTimeout: 0.4 });
    const view = (): Backend => lb!.records()[0]!;
    const stats = (lb as unknown as { checker: { socket: { stats: { nudges: number } } } }).checker.socket.stats;
    await waitUntil(() => view().state === 'UP', 10_000, 'UP');
    // Prompt answers: nothing.
    let checks = view().checks;
    const n0 = stats.nudges;
    await waitUntil(() => view().checks >= checks + 4, 10_000, '4 prompt checks');
    expect(stats.nudges - n0, 'prompt answers nudge nothing').to.equal(0);
    // Answers after 250 ms of a 400 ms timeout: overdue at 200 ms, nudged (once; twice if the
    // answer comes after 300 ms on a loaded machine), still in time.
    a.answerDelayMs = 250;
    await waitUntil(() => view().checks >= checks + 6, 10_000, 'two checks after the change');
    checks = view().checks;
    const n1 = stats.nudges;
    await waitUntil(() => view().checks >= checks + 4, 10_000, '4 slow checks');
    expect(stats.nudges - n1, 'one or two nudges per slow answer').to.be.within(3, 10);
    expect(lb.stats.failedChecks, 'failed checks').to.equal(0);
    expect(view().state).to.equal('UP');
  });

  it('push: acknowledgements of reports wait; a report later than half the check timeout past due gets the connection nudged, and still counts; prompt reports: no nudge', async () => {
    const a = (agent = await ScriptedAgent.start());
    a.pushReports = true;
    lb = await startLb([a.address], { checkInterval: 0.5, reportInterval: 0.5, checkTimeout: 0.4 });
    const view = (): Backend => lb!.records()[0]!;
    const stats = (lb as unknown as { checker: { socket: { stats: { nudges: number; acksDeferred: number } } } }).checker.socket.stats;
    await waitUntil(() => view().state === 'UP' && a.reported >= 3, 10_000, 'UP on reports');
    let checks = view().checks;
    const n0 = stats.nudges;
    const d0 = stats.acksDeferred;
    await waitUntil(() => view().checks >= checks + 4, 10_000, '4 prompt reports');
    expect(stats.nudges - n0, 'prompt reports nudge nothing').to.equal(0);
    expect(stats.acksDeferred - d0, 'reports wait for a later one to carry their acknowledgement').to.be.at.least(1);
    // Each report 300 ms after it is due, with a 400 ms timeout: overdue at 200 ms, nudged then
    // and at 267 ms (a third at 333 ms on a loaded machine), still in time.
    a.reportSlowByMs = 300;
    await waitUntil(() => view().checks >= checks + 6, 10_000, 'two reports after the change');
    checks = view().checks;
    const n1 = stats.nudges;
    await waitUntil(() => view().checks >= checks + 4, 10_000, '4 slow reports');
    expect(stats.nudges - n1, 'two or three nudges per slow report').to.be.within(6, 14);
    expect(lb.stats.failedChecks, 'failed checks').to.equal(0);
    expect(view().state).to.equal('UP');
  });

  it('a port that never answers fails the check after the connect budget, named in the error', async () => {
    hole = createSocket('udp4');
    await new Promise<void>((r) => hole!.bind(0, '127.0.0.1', () => r()));
    const address = `127.0.0.1:${hole.address().port}`;
    lb = await startLb([address], { checkInterval: 0.2, checkTimeout: 0.1, maxFailAttempts: 1 });
    const view = (): Backend => lb!.records()[0]!;
    await waitUntil(() => view().failures > 0, 10_000, 'a failed check');
    expect(view().lastError ?? '').to.match(/^cannot connect to 127\.0\.0\.1:\d+: no handshake within (9\d\d|1000) ms$/);
  });
});

describe("load balancer: its own lateness is not taken for its backends' (timeouts wait for the check socket to be read)", function () {
  this.timeout(60_000);
  let lb: LoadBalancer | undefined;
  afterEach(async () => {
    await lb?.stop();
    lb = undefined;
    await stopAll();
  });

  it('push, fall 1: the load balancer busy for 1.5 s while reports arrive from a real agent process: no failed check, still UP; the overdue steps waited for the read', async () => {
    // The agent is another process: it goes on reporting while this one is busy.
    const { address } = await startServer();
    lb = await startLb([address], { checkInterval: 0.4, reportInterval: 0.4, checkTimeout: 0.3, maxFailAttempts: 1 });
    const view = (): Backend => lb!.records()[0]!;
    await waitUntil(() => view().state === 'UP' && view().checks >= 3, 20_000, 'UP on reports');
    const failed0 = lb.stats.failedChecks;
    const postponed0 = lb.stats.postponedSteps;
    const checks0 = view().checks;
    // Busy (a stall, or a starved CPU): three reports and their deadlines pass unread. When it
    // ends, the report timeout is due before the socket is read again.
    const until = Date.now() + 1500;
    while (Date.now() < until) {
      /* busy */
    }
    await waitUntil(() => view().checks >= checks0 + 6, 10_000, 'the reports read after the stall, and more');
    expect(lb.stats.failedChecks - failed0, 'failed checks').to.equal(0);
    expect(view().state).to.equal('UP');
    expect(lb.stats.postponedSteps - postponed0, 'steps that waited for the read').to.be.greaterThan(0);
  });
});
