/**
 * Push mode (`--report-interval`): the load balancer asks each agent for a HEALTH_REPORT per
 * interval (CONFIG_UPDATE) and counts each report as a good check and each missing one as a
 * failed check. Real `qhcp loadbalancer` processes; the agent is a real `qhcp server`, or an
 * in-process AgentServer where the test needs its counters (HEALTH_REQUESTs answered).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { AgentServer } from '../../core/roles/agent.ts';
import { buildConfig } from '../../core/config/config.ts';
import { createLogger } from '../../core/util/log.ts';
import { statusOf, startServer, startLoadBalancer, waitForState, queryStatus, waitUntil, stopAll, sleep } from '../helpers/procs.ts';

/** Transitions the log alert plugin printed (JSON lines on a non-terminal stderr). */
function transitions(output: string): Array<{ server: string; from: string; to: string; reason: string; failures: number }> {
  return output
    .split('\n')
    .filter((l) => l.startsWith('{') && l.includes('"event":"transition"'))
    .map((l) => JSON.parse(l) as { server: string; from: string; to: string; reason: string; failures: number });
}

describe('push mode: reports instead of polls', function () {
  this.timeout(90_000);
  let cwd: string;
  let agent: AgentServer | undefined;

  beforeEach(() => {
    // An empty working directory: no qhcp.config.ts from the repository applies.
    cwd = mkdtempSync(join(tmpdir(), 'qhcp-push-'));
  });
  afterEach(async () => {
    await stopAll();
    await agent?.stop();
    agent = undefined;
    rmSync(cwd, { recursive: true, force: true });
  });

  it('UP with metrics from pushed reports: checks go on with no HEALTH_REQUEST and no reconnect, past the idle timeout', async () => {
    const { config } = buildConfig(undefined, undefined, { serverIp: '127.0.0.1', serverPort: 0, sampleInterval: 0.2, drainGrace: 0.5 });
    agent = new AgentServer(config, createLogger({ level: 'silent' }));
    await agent.loadPlugins();
    await agent.start();
    const address = `127.0.0.1:${agent.port}`;
    // Idle timeout 1.5 s: with reports every 0.4 s the connection must live on without keep-alive.
    const lb = await startLoadBalancer([address], { cwd, interval: 0.4, fail: 3, reconnect: 1, args: ['--report-interval', '0.4', '--idle-timeout', '1.5'] });
    expect(lb.proc.output).to.match(/mode="?push every 0\.4s/);
    const up = await waitForState(lb.port, address, 'UP');
    expect(up.metrics).to.include.keys('cpu', 'memory', 'load1');
    // The agent agreed to push on that connection.
    await waitUntil(() => [...agent!.sessions].some((s) => (s.data.prefs as { reportIntervalMs?: number } | undefined)?.reportIntervalMs === 400), 10_000, 'CONFIG_UPDATE reportIntervalMs 400 on the agent');
    const polls = agent.stats.healthRequests;
    const accepted = agent.stats.accepted;
    const before = await statusOf(lb.port, address);
    // At least 3 s: twice the idle timeout.
    await sleep(3000);
    const after = await waitUntil(async () => (await queryStatus(lb.port)).find((s) => s.address === address && s.checks >= before.checks + 6), 15_000, 'six more checks');
    expect(after.state).to.equal('UP');
    expect(after.failures).to.equal(0);
    expect(after.reportedAt!).to.be.greaterThan(before.reportedAt!);
    expect(agent.stats.healthRequests, 'HEALTH_REQUESTs after push started').to.equal(polls);
    expect(agent.stats.accepted, 'connections accepted (a reconnect would add one)').to.equal(accepted);
  });

  it('kill -9: DOWN after the configured failures (missing reports, then a dead port); restarted, UP again', async () => {
    const first = await startServer({ cwd });
    const lb = await startLoadBalancer([first.address], { cwd, interval: 0.4, fail: 3, reconnect: 5, args: ['--report-interval', '0.4'] });
    await waitForState(lb.port, first.address, 'UP');
    first.proc.signal('SIGKILL');
    await first.proc.exited;
    // The first failed check: the overdue report's port probe saw ICMP port unreachable and the
    // connection failed (or, had the probe been lost, the report timeout). It stands for one
    // interval (0.4 s) before the next check, so status is read often enough to see it.
    const one = await waitUntil(async () => {
      const st = await statusOf(lb.port, first.address);
      return st.failures > 0 ? st : undefined;
    }, 10_000, 'the first failed check', 10);
    expect(one.failures, 'the first failed check seen').to.equal(1);
    expect(one.lastError).to.match(/^(connection lost: connection refused \(ICMP port unreachable\)|REPORT_TIMEOUT: no HEALTH_REPORT within \d+ ms)$/);
    const down = await waitForState(lb.port, first.address, 'DOWN', 20_000);
    expect(down.failures).to.equal(3);
    // A missing report, or (once the port probe has seen ICMP port unreachable and the connection
    // failed) a reconnect that cannot reach the dead port: either is a failed check.
    const failure = /REPORT_TIMEOUT: no HEALTH_REPORT within \d+ ms|cannot connect to 127\.0\.0\.1:\d+: /;
    expect(down.lastError).to.match(failure);
    const t = transitions(lb.proc.output).find((x) => x.server === first.address && x.to === 'DOWN')!;
    expect(t.reason).to.match(new RegExp(`^3 consecutive failed checks; last: (${failure.source})`));
    // Back on the same port: the check loop reconnects (reconnect interval) and push resumes.
    await startServer({ cwd, port: first.port });
    await waitForState(lb.port, first.address, 'UP', 30_000);
    const seen = transitions(lb.proc.output).filter((x) => x.server === first.address).map((x) => `${x.from}->${x.to}`);
    expect(seen).to.deep.equal(['UNKNOWN->UP', 'UP->DOWN', 'DOWN->UP']);
    expect(lb.proc.running).to.equal(true);
  });

  it('SIGTERM: DRAINING at once from the pushed DRAIN (no failed check first), then DOWN when the connection closes', async () => {
    const s = await startServer({ cwd, args: ['--drain-grace', '2'] });
    const other = await startServer({ cwd });
    const lb = await startLoadBalancer([s.address, other.address], { cwd, interval: 0.4, fail: 3, reconnect: 5, args: ['--report-interval', '0.4'] });
    await waitForState(lb.port, s.address, 'UP');
    await waitForState(lb.port, other.address, 'UP');
    // Only what follows the signal: under CPU starvation the start-up may have had its own
    // UNKNOWN->DOWN->UP before both were UP, which is not what this test is about.
    const mark = lb.proc.output.length;
    s.proc.signal('SIGTERM');
    const after = () => transitions(lb.proc.output.slice(mark)).filter((x) => x.server === s.address);
    await waitUntil(() => after().some((x) => x.to === 'DOWN'), 20_000, 'DRAINING then DOWN');
    const seen = after();
    expect(seen.map((x) => `${x.from}->${x.to}`)).to.deep.equal(['UP->DRAINING', 'DRAINING->DOWN']);
    expect(seen[0]!.reason).to.match(/^server draining/);
    expect(seen[0]!.failures, 'failed checks before DRAINING').to.equal(0);
    expect(seen[1]!.reason).to.match(/drained/);
    await s.proc.exited;
    // The other server is untouched.
    expect((await statusOf(lb.port, other.address)).state).to.equal('UP');
  });
});
