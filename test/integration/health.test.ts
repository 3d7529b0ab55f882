/**
 * Health semantics with real processes: three `qhcp server`s and one `qhcp loadbalancer`
 * (check interval 0.5 s, max-fail-attempts 3, reconnect interval 1 s) on loopback.
 * kill -9 -> DOWN after exactly max-fail-attempts failed checks, the others untouched, UP again
 * after a restart; SIGSTOP -> timeouts then DOWN, SIGCONT -> UP; SIGTERM -> DRAINING/DOWN at
 * once through DRAIN, with no failed check; `qhcp pick` rotates over the UP servers only.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { startServer, startLoadBalancer, waitForState, runQhcp, stopAll, type QhcpProcess } from '../helpers/procs.ts';
import { StatusWatch, of, type Snapshot } from './watch.ts';

const INTERVAL = 0.5;
const FAIL = 3;
const RECONNECT = 1;

interface Srv {
  proc: QhcpProcess;
  port: number;
  address: string;
}

/** The alert log's transition events (JSON lines in the load balancer's output). */
function transitions(stdout: string): Array<{ server: string; from: string; to: string; reason: string; failures: number }> {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return {};
      }
    })
    .filter((e) => e.event === 'transition') as never;
}

async function pick(lbPort: number, count: number): Promise<string[]> {
  const r = await runQhcp(['pick', '--address', `127.0.0.1:${lbPort}`, '--count', String(count), '--json'], { timeoutMs: 30_000 });
  expect(r.code, r.stderr).to.equal(0);
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => (JSON.parse(l) as { server: string | null }).server!);
}

describe('load balancer health semantics (3 servers, real processes)', function () {
  this.timeout(90_000);
  let cwd: string;
  let servers: Srv[];
  let lb: { proc: QhcpProcess; port: number };
  let watch: StatusWatch;

  const allUp = async () => {
    for (const s of servers) await waitForState(lb.port, s.address, 'UP', 30_000);
  };

  before(async () => {
    cwd = mkdtempSync(join(tmpdir(), 'qhcp-health-'));
    servers = await Promise.all([0, 1, 2].map(() => startServer({ cwd })));
    lb = await startLoadBalancer(
      servers.map((s) => s.address),
      { cwd, interval: INTERVAL, fail: FAIL, reconnect: RECONNECT },
    );
    watch = new StatusWatch(lb.port);
    await allUp();
  });

  // A test that failed half-way may leave a server killed or stopped: bring it back first.
  beforeEach(async () => {
    for (let i = 0; i < servers.length; i++) {
      const s = servers[i]!;
      if (s.proc.running) s.proc.signal('SIGCONT');
      else servers[i] = await startServer({ port: s.port, cwd });
    }
  });

  after(async () => {
    await watch?.close();
    await stopAll();
    if (cwd) rmSync(cwd, { recursive: true, force: true });
  });

  it('`qhcp pick --count 6 --json` returns each UP server exactly twice, in rotation', async () => {
    await allUp();
    const picks = await pick(lb.port, 6);
    expect(picks).to.have.length(6);
    expect(new Set(picks.slice(0, 3))).to.deep.equal(new Set(servers.map((s) => s.address)));
    expect(picks.slice(3)).to.deep.equal(picks.slice(0, 3));
  });

  it('`qhcp status --json` parses and carries every field; the table names every server', async () => {
    const r = await runQhcp(['status', '--address', `127.0.0.1:${lb.port}`, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const st = JSON.parse(r.stdout) as { node: string; servers: Array<Record<string, unknown>> };
    expect(st.node).to.be.a('string').and.not.equal('');
    expect(st.servers.map((s) => s.address)).to.deep.equal(servers.map((s) => s.address));
    for (const s of st.servers) {
      expect(s).to.have.all.keys('address', 'state', 'since', 'failures', 'successes', 'latencyMs', 'metrics', 'ageMs', 'reportedAt', 'lastError', 'checks', 'verdict', 'reason', 'agentAdmin', 'adminState', 'weight');
      expect(s.state).to.equal('UP');
      expect(s.metrics).to.include.keys('cpu', 'memory', 'load1');
      expect(s.latencyMs).to.be.a('number');
    }
    const t = await runQhcp(['status', '--address', `127.0.0.1:${lb.port}`]);
    expect(t.code, t.stderr).to.equal(0);
    expect(t.stdout).to.match(/3\/3 UP/);
    for (const s of servers) expect(t.stdout).to.match(new RegExp(`^${s.address.replace(/\./g, '\\.')}\\s+UP\\s+SERVING\\s+READY\\s+1\\s+\\d+\\.\\d%`, 'm'));
  });

  it('kill -9: DOWN after exactly max-fail-attempts failed checks, the others stay UP; restarted: UP again', async () => {
    await allUp();
    const [victim, ...others] = servers as [Srv, Srv, Srv];
    await watch.poll();
    victim.proc.signal('SIGKILL');
    await victim.proc.exited;
    const snaps = await watch.until((s) => of(s, victim.address).state === 'DOWN', 30_000, `${victim.address} DOWN`);

    // Not DOWN while failures < max: failures climbed 1, 2 with the server still UP, then DOWN.
    const seen: number[] = [];
    for (const s of snaps) {
      const v = of(s, victim.address);
      if (v.state !== 'DOWN') {
        expect(v.state, `failures=${v.failures}`).to.equal('UP');
        expect(v.failures).to.be.lessThan(FAIL);
      } else expect(v.failures).to.be.at.least(FAIL);
      if (v.failures > 0 && seen[seen.length - 1] !== v.failures) seen.push(v.failures);
      for (const o of others) expect(of(s, o.address).state, `${o.address} while ${victim.address} fails`).to.equal('UP');
    }
    // Failures climb one check at a time; a loaded machine's 40-ms poll may miss a step that
    // lasted less (a check that waited out its interval is followed at once by the next), so the
    // steps seen must climb, include one below FAIL (UP, checked above), and end at DOWN; the
    // alert below says DOWN came at exactly FAIL.
    expect(seen, `failure counts seen: ${seen.join(', ')}`).to.deep.equal([...seen].sort((x, y) => x - y));
    expect(new Set(seen).size).to.equal(seen.length);
    expect(seen[0]).to.be.within(1, FAIL - 1);
    expect(seen[seen.length - 1]).to.be.at.least(FAIL);
    const down = transitions(lb.proc.output).find((t) => t.server === victim.address && t.to === 'DOWN');
    expect(down, 'a DOWN transition in the alert log').to.not.equal(undefined);
    expect(down!.from).to.equal('UP');
    expect(down!.failures).to.equal(FAIL);
    expect(down!.reason).to.match(new RegExp(`^${FAIL} consecutive failed checks`));

    // While it is DOWN, picks skip it and still rotate over the two others.
    const picks = await pick(lb.port, 6);
    expect(picks).not.to.include(victim.address);
    expect(new Set(picks.slice(0, 2))).to.deep.equal(new Set(others.map((o) => o.address)));
    expect(picks.slice(2, 4)).to.deep.equal(picks.slice(0, 2));
    expect(picks.slice(4, 6)).to.deep.equal(picks.slice(0, 2));

    // Restart on the same port: UP within the reconnect interval (plus slack for a loaded machine).
    const t0 = Date.now();
    const restarted = await startServer({ port: victim.port, cwd });
    servers[0] = restarted;
    const listening = Date.now();
    const after = await watch.until((s) => of(s, victim.address).state === 'UP', RECONNECT * 1000 + 15_000, `${victim.address} UP again`);
    const up = of(after[after.length - 1]!, victim.address);
    expect(up.failures).to.equal(0);
    expect(up.metrics).to.include.keys('cpu', 'memory', 'load1');
    for (const s of after) for (const o of others) expect(of(s, o.address).state).to.equal('UP');
    console.log(`      (UP ${Date.now() - listening} ms after the restarted server listened, ${Date.now() - t0} ms after its start; reconnect interval ${RECONNECT * 1000} ms)`);
  });

  it('SIGSTOP: timeouts, then DOWN; SIGCONT: UP again', async () => {
    await allUp();
    const victim = servers[1]!;
    const others = [servers[0]!, servers[2]!];
    await watch.poll();
    victim.proc.signal('SIGSTOP');
    try {
      const snaps = await watch.until((s) => of(s, victim.address).state === 'DOWN', 30_000, `${victim.address} DOWN while stopped`);
      const last = of(snaps[snaps.length - 1]!, victim.address);
      expect(last.failures).to.be.at.least(FAIL);
      expect(last.lastError).to.match(/time(d)? ?out|TIMEOUT/i);
      for (const s of snaps) {
        const v = of(s, victim.address);
        if (v.state !== 'DOWN') expect(v.failures).to.be.lessThan(FAIL);
        for (const o of others) expect(of(s, o.address).state).to.equal('UP');
      }
      const down = transitions(lb.proc.output).filter((t) => t.server === victim.address && t.to === 'DOWN').pop();
      expect(down?.reason).to.match(/consecutive failed checks; last: .*(time(d)? ?out|TIMEOUT)/i);
    } finally {
      victim.proc.signal('SIGCONT');
    }
    const back = await watch.until((s) => of(s, victim.address).state === 'UP', 30_000, `${victim.address} UP after SIGCONT`);
    expect(of(back[back.length - 1]!, victim.address).failures).to.equal(0);
  });

  it('SIGTERM: DRAINING/DOWN at once through DRAIN, not after failed checks', async () => {
    await allUp();
    const victim = servers[2]!;
    const others = [servers[0]!, servers[1]!];
    await watch.poll();
    victim.proc.signal('SIGTERM');
    const snaps = await watch.until((s) => of(s, victim.address).state !== 'UP', 20_000, `${victim.address} leaving UP`, 20);
    const first = of(snaps[snaps.length - 1]!, victim.address);
    expect(first.state).to.be.oneOf(['DRAINING', 'DOWN']);
    expect(first.failures, `lastError: ${first.lastError}`).to.equal(0);
    expect(await victim.proc.exited).to.deep.equal({ code: 0, signal: null });
    const later = await watch.until((s) => of(s, victim.address).state === 'DOWN', 20_000, `${victim.address} DOWN`);
    for (const s of [...snaps, ...later]) for (const o of others) expect(of(s, o.address).state).to.equal('UP');
    const ts = transitions(lb.proc.output).filter((t) => t.server === victim.address);
    const drain = ts.find((t) => t.from === 'UP');
    expect(drain, JSON.stringify(ts)).to.deep.include({ to: 'DRAINING', failures: 0 });
    expect(drain!.reason).to.match(/draining/);
    const down = ts.find((t) => t.from === 'DRAINING');
    expect(down, JSON.stringify(ts)).to.deep.include({ to: 'DOWN', failures: 0 });
    // The picks now rotate over the two that are left.
    const picks = await pick(lb.port, 4);
    expect(picks).not.to.include(victim.address);
    expect(new Set(picks)).to.deep.equal(new Set(others.map((o) => o.address)));
  });
});

export type { Snapshot };
