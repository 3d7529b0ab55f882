/**
 * Panic mode and slow start in a real load balancer process (issue 16), with scripted agents
 * whose verdicts the test sets (pushed at once, so no waiting for check intervals): three of
 * four backends DOWN engage panic (PICK answers from all four, `qhcp status --json` marks the
 * pool, the log alert says so); their return ends it and they ramp by slow start, which
 * `qhcp status --json` shows as `effectiveWeight` and PICK as a small share.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startLoadBalancer, runQhcp, stopAll, waitForState, pickMany, type QhcpProcess } from '../helpers/procs.ts';
import { ScriptedAgent } from '../helpers/scripted-agent.ts';
import type { ServerStatus } from '../../core/protocol/messages.ts';

/** The servers of `n` PICKs, in order. */
const picks = async (lbPort: number, n: number) => (await pickMany(lbPort, n)).map((p) => String(p.server));

describe('panic mode and slow start (real load balancer process, scripted agents)', function () {
  this.timeout(120_000);
  let dir: string;
  const agents: ScriptedAgent[] = [];
  let lb: { proc: QhcpProcess; port: number };
  const status = async (): Promise<ServerStatus[]> => {
    const r = await runQhcp(['status', '--address', `127.0.0.1:${lb.port}`, '--json'], { timeoutMs: 30_000 });
    expect(r.code, r.stderr).to.equal(0);
    return (JSON.parse(r.stdout) as { servers: ServerStatus[] }).servers;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qhcp-balancing-'));
    for (let i = 0; i < 4; i++) agents.push(await ScriptedAgent.start());
    // A long window, so the ramp is still low when the test looks; the 10 % floor.
    writeFileSync(join(dir, 'lb.json'), JSON.stringify({ panicThreshold: 50, slowStart: { window: 60, minWeightPercent: 10 } }));
    lb = await startLoadBalancer(
      agents.map((a) => a.address),
      { cwd: dir, interval: 30, fail: 3, args: ['-config', join(dir, 'lb.json'), '--status-summary', '600'] },
    );
    for (const a of agents) await waitForState(lb.port, a.address, 'UP', 30_000);
  });

  after(async () => {
    await stopAll();
    await Promise.all(agents.map((a) => a.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('three of four DOWN: panic engages (PICK from all four, status and the alert say so); back UP: it ends and they ramp', async () => {
    const [a, ...rest] = agents as [ScriptedAgent, ...ScriptedAgent[]];
    // At start-up nothing ramps (newBackends is off) and nothing panics.
    for (const s of await status()) expect(s).not.to.have.any.keys('effectiveWeight', 'panic');

    for (const x of rest) x.set({ verdict: 'NOT_SERVING', reason: 'test' });
    for (const x of rest) await waitForState(lb.port, x.address, 'DOWN');
    const inPanic = await status();
    expect(inPanic.map((s) => s.panic)).to.deep.equal([true, true, true, true]);
    const during = await picks(lb.port, 8);
    expect(new Set(during)).to.deep.equal(new Set(agents.map((x) => x.address)), 'panic: every known backend takes picks');
    // Logged, and alerted (the default log alert plugin: JSON lines when not on a terminal).
    await lb.proc.waitFor(/panic mode: too few backends healthy.*healthy=1 known=4 threshold=50%/, 10_000);
    await lb.proc.waitFor(/"event":"panic".*"engaged":true,"pool":"all","healthy":1,"known":4,"thresholdPercent":50/, 10_000);

    for (const x of rest) x.set({ verdict: 'SERVING', reason: undefined });
    for (const x of rest) await waitForState(lb.port, x.address, 'UP');
    await lb.proc.waitFor(/panic mode ended pool=all healthy=\d known=4/, 10_000);
    await lb.proc.waitFor(/"event":"panic".*"engaged":false,"pool":"all","healthy":\d,"known":4/, 10_000);
    const after = await status();
    expect(after.find((s) => s.address === a.address)).not.to.have.any.keys('effectiveWeight', 'panic');
    for (const x of rest) {
      const s = after.find((y) => y.address === x.address)!;
      expect(s.panic).to.equal(undefined);
      // 60 s window, a few seconds in: at the 10 % floor or a little above.
      expect(s.effectiveWeight, x.address).to.be.within(0.1, 0.3);
      expect(s.weight).to.equal(1);
    }
    // a has weight 1 against three ramping ones near 0.1 each: most picks.
    const ramped = await picks(lb.port, 40);
    expect(ramped.filter((p) => p === a.address).length).to.be.at.least(24);
  });
});
