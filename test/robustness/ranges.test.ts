/**
 * Values from agents are checked against their documented ranges (issue 13, item 3): an agent
 * reporting loadScore -1e300 gets ERROR 104 from a real load balancer, its report counts as a
 * failed check, and it receives none of the picks; an agent reporting an in-range but flattering
 * figure (loadScore 0 against real ones) gets at most the share cap of the picks, not all.
 */
import { expect } from 'chai';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, startLoadBalancer, waitForState, stopAll, runQhcp, waitUntil, statusOf } from '../helpers/procs.ts';
import { HostileAgent } from '../helpers/hostile-agent.ts';
import { readFileSync } from 'node:fs';
import { METRIC_RANGES, validateBody } from '../../core/protocol/messages.ts';
import { MetricsReport } from '../../core/plugin/hooks.ts';

describe('Robustness: reported values out of their documented range', function () {
  this.timeout(120_000);
  let hostile: HostileAgent | undefined;
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-ranges-'));
    writeFileSync(join(dir, 'qhcp.config.json'), JSON.stringify({ plugins: ['least-loaded'] }));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(async () => {
    await hostile?.stop();
    hostile = undefined;
    await stopAll();
  });

  async function picks(lbPort: number, n: number): Promise<Record<string, number>> {
    const r = await runQhcp(['pick', '--address', `127.0.0.1:${lbPort}`, '--count', String(n), '--json'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).to.equal(0);
    const out: Record<string, number> = {};
    for (const line of r.stdout.trim().split('\n')) {
      const s = (JSON.parse(line) as { server: string }).server;
      out[s] = (out[s] ?? 0) + 1;
    }
    return out;
  }

  it('the spec lists every range of METRIC_RANGES; the schema enforces them; an agent clamps its own values', () => {
    const spec = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
    const section = /<!-- metric-ranges:begin -->([\s\S]*?)<!-- metric-ranges:end -->/.exec(spec)![1]!;
    const rows = section.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| Metric') && !l.startsWith('| ---'));
    expect(rows).to.have.length(METRIC_RANGES.length);
    for (const r of METRIC_RANGES) expect(section).to.include((r.exact ?? r.pattern!).replace(/\|/g, '\\|'));
    const body = (metrics: Record<string, number>) => ({ metrics, ageMs: 0, verdict: 'SERVING', admin: 'READY', weight: 100 });
    for (const bad of <Array<Record<string, number>>>[{ loadScore: -1e300 }, { loadScore: 1.5 }, { cpu: 101 }, { 'cpu.core7': -1 }, { 'disk.root.usedPct': 100.5 }, { processes: -3 }, { 'net.rxBytesPerSec': -1 }]) {
      expect(() => validateBody('HEALTH_REPORT', body(bad)), JSON.stringify(bad)).to.throw(/must be [<>]=/);
    }
    expect(() => validateBody('HEALTH_REPORT', body({ loadScore: 0, cpu: 100, anything: -1e300 }))).to.not.throw();
    expect(() => validateBody('HEALTH_RESPONSE', { ...body({ 'x.usedPct': 101 }), seq: 1 })).to.throw(/HEALTH_RESPONSE \/metrics\/x\.usedPct: must be <= 100/);
    // Nested metrics (a status page, a watch) name their place.
    const server = (metrics: Record<string, number>) => ({ address: 'a:1', state: 'UP', since: 0, failures: 0, successes: 1, latencyMs: 1, metrics, ageMs: 0, reportedAt: 0, lastError: null, checks: 1 });
    expect(() => validateBody('STATUS_RESPONSE', { seq: 1, node: 'lb', servers: [server({ cpu: 1 }), server({ cpu: 100.5 })] })).to.throw(/\/servers\/1\/metrics\/cpu: must be <= 100/);
    const member = (metrics: Record<string, number>) => ({ address: 'a:1', state: 'UP', since: 0, verdict: 'SERVING', agentAdmin: 'READY', adminState: 'READY', weight: 1, metrics, reason: null });
    expect(() => validateBody('WATCH_UPDATE', { seq: 1, run: 'r', version: 1, kind: 'full', members: [member({ 'cpu.core3': -2 })] })).to.throw(/\/members\/0\/metrics\/cpu\.core3: must be >= 0/);
    expect(() => validateBody('WATCH_UPDATE', { seq: 1, run: 'r', version: 1, kind: 'full', members: [member({ 'cpu.core3': 2 })] })).to.not.throw();
    // One row per name: no exact name falls under a pattern row, so "exact, else first pattern" is every row that applies.
    for (const e of METRIC_RANGES.filter((r) => r.exact)) for (const p of METRIC_RANGES.filter((r) => r.pattern)) expect(new RegExp(p.pattern!).test(e.exact!), `${e.exact} ~ ${p.pattern}`).to.equal(false);
    const r = new MetricsReport();
    r.set('loadScore', -1e300);
    r.set('cpu', 100.0001);
    r.set('anything', -5);
    expect(r.values).to.deep.equal({ loadScore: 0, cpu: 100, anything: -5 });
  });

  it('loadScore -1e300: ERROR 104 to the agent, a failed check, and no picks', async () => {
    const honest = await startServer();
    hostile = await HostileAgent.start({ metrics: { loadScore: -1e300, cpu: 1 } });
    const lb = await startLoadBalancer([honest.address, hostile.address], { interval: 0.5, args: ['--config', join(dir, 'qhcp.config.json'), '--check-timeout', '0.45'] });
    await waitForState(lb.port, honest.address, 'UP');
    await waitUntil(() => hostile!.errorsReceived.length > 0, 20_000, 'an ERROR from the load balancer');
    expect(hostile.errorsReceived[0]!.code).to.equal(104);
    expect(hostile.errorsReceived[0]!.reason).to.match(/loadScore: must be >= 0/);
    const st = await waitUntil(async () => {
      const s = await statusOf(lb.port, hostile!.address);
      return s.lastError ? s : undefined;
    }, 10_000, 'the hostile agent\'s lastError');
    expect(st.state).to.not.equal('UP');
    expect(st.lastError).to.match(/^INVALID_MESSAGE: .*loadScore/);
    expect(st.metrics).to.deep.equal({});
    const got = await picks(lb.port, 200);
    expect(got).to.deep.equal({ [honest.address]: 200 });
  });

  it('an in-range but flattering loadScore 0 gets at most 75 % of the picks', async () => {
    const honest = await startServer();
    hostile = await HostileAgent.start({ metrics: { loadScore: 0 } });
    const lb = await startLoadBalancer([honest.address, hostile.address], { interval: 0.5, args: ['--config', join(dir, 'qhcp.config.json'), '--check-timeout', '0.45'] });
    await waitForState(lb.port, honest.address, 'UP');
    await waitForState(lb.port, hostile.address, 'UP');
    const got = await picks(lb.port, 400);
    expect((got[hostile.address] ?? 0) / 400, JSON.stringify(got)).to.be.at.most(0.75);
    expect(got[honest.address] ?? 0).to.be.at.least(100);
  });
});
