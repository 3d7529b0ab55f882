/**
 * The load balancer's command runs under Node flags set on Node's command line
 * (core/cli/relaunch.ts): `qhcp lb` starts Node again with them. Real processes: the flags are in
 * the second process's command line (and not in the first's), output and signals pass through
 * (each once, also a terminal's Ctrl-C to the process group), exit codes and a death by signal
 * come back, the second stops when the first is killed, and `--help`, a bad flag or flags given
 * by the user behave as before.
 */
import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { BIN, QhcpProcess, qhcpChildren, freePort, runQhcp, startLoadBalancer, stopAll, waitUntil } from './helpers/procs.ts';
import { LB_NODE_FLAGS, isLoadBalancerCommand, missingFlags, wantsRelaunch } from '../core/cli/relaunch.ts';

const childrenOf = qhcpChildren;

function cmdline(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Whether `pid` has handlers for `signals` installed (/proc SigCgt): the CLI installs them after "load balancer started". */
function catches(pid: number, signals: number[]): boolean {
  const m = /^SigCgt:\s+([0-9a-f]+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  const mask = m ? BigInt(`0x${m[1]}`) : 0n;
  return signals.every((n) => (mask & (1n << BigInt(n - 1))) !== 0n);
}

/** The relaunched load balancer of `proc` (its one qhcp child), once it handles SIGHUP, SIGINT and SIGTERM. */
async function lbChild(proc: QhcpProcess): Promise<number> {
  const pid = await waitUntil(() => childrenOf(proc.pid)[0], 10_000, `the second process of pid ${proc.pid}`);
  await waitUntil(() => catches(pid, [1, 2, 15]), 20_000, `pid ${pid} to handle SIGHUP, SIGINT and SIGTERM`);
  return pid;
}

describe('qhcp lb relaunch (core/cli/relaunch.ts)', function () {
  this.timeout(120_000);
  after(stopAll);

  describe('which command lines relaunch', () => {
    it('the load balancer command only, not --help, and only with flags missing from the command line', () => {
      for (const a of [['lb'], ['loadbalancer', '--servers', 'x'], ['-loadbalancer', '-servers', 'x']]) expect(isLoadBalancerCommand(a), a.join(' ')).to.equal(true);
      for (const a of [['server'], ['status'], ['pick'], ['demo'], [], ['--servers', 'lb']]) expect(isLoadBalancerCommand(a), a.join(' ')).to.equal(false);
      expect(wantsRelaunch(['status'])).to.equal(false);
      expect(wantsRelaunch(['lb', '--help'])).to.equal(false);
      expect(wantsRelaunch(['-loadbalancer', '-h'])).to.equal(false);
      expect(missingFlags(['--max-semi-space-size=4'], [])).to.deep.equal(['--max-semi-space-size=4']);
      // A value the user gave wins, however it is spelled.
      expect(missingFlags(['--max-semi-space-size=4'], ['--max_semi_space_size=16'])).to.deep.equal([]);
      expect(missingFlags(['--max-semi-space-size=4', '--x=1'], ['--max-semi-space-size=8'])).to.deep.equal(['--x=1']);
    });
  });

  describe('a running load balancer', () => {
    let proc: QhcpProcess;
    let child: number;
    before(async () => {
      ({ proc } = await startLoadBalancer([`127.0.0.1:${await freePort()}`], { interval: 0.3 }));
      child = await lbChild(proc);
    });

    it('runs in a second Node with the flags on its command line; its output comes through', () => {
      const argv = cmdline(child);
      for (const f of LB_NODE_FLAGS) expect(argv, 'second process').to.include(f);
      expect(argv).to.include(BIN);
      expect(argv).to.include('-loadbalancer');
      for (const f of LB_NODE_FLAGS) expect(cmdline(proc.pid), 'first process').not.to.include(f);
      // startLoadBalancer waited for the second process's "load balancer started" on the first's stdio.
      expect(proc.output).to.match(/load balancer started/);
      expect(childrenOf(child), 'nothing relaunches twice').to.deep.equal([]);
    });

    it('SIGHUP reaches it once (config reloaded)', async () => {
      const from = proc.output.length;
      proc.signal('SIGHUP');
      await proc.waitFor(/config reloaded/, 15_000, from);
      await new Promise((r) => setTimeout(r, 500));
      expect(proc.output.slice(from).match(/config reloaded/g)).to.have.length(1);
    });

    it("a terminal's Ctrl-Z (SIGTSTP) stops both processes, SIGCONT resumes both", async () => {
      const state = (pid: number) => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[0];
      proc.signal('SIGTSTP');
      await waitUntil(() => state(proc.pid) === 'T' && state(child) === 'T', 5000, 'both stopped');
      proc.signal('SIGCONT');
      await waitUntil(() => state(proc.pid) !== 'T' && state(child) !== 'T', 5000, 'both running');
    });

    it('SIGTERM: it stops as before (exit 0) and both processes are gone', async () => {
      proc.signal('SIGTERM');
      const end = await proc.exited;
      expect(end, proc.output.slice(-800)).to.deep.equal({ code: 0, signal: null });
      expect(proc.output).to.match(/load balancer stopped/);
      await waitUntil(() => !alive(child), 5000, 'the second process to be gone');
    });
  });

  it("a terminal's Ctrl-C (SIGINT to the process group) stops it once, politely: exit 0, not the second-signal exit 130", async () => {
    const port = await freePort();
    const proc = new QhcpProcess(['-loadbalancer', '-servers', `127.0.0.1:${await freePort()}`, '-loadbalancer-host', '127.0.0.1', '-loadbalancer-port', String(port), '-status', 'none'], { detached: true });
    await proc.waitFor(/load balancer started/, 60_000);
    const child = await lbChild(proc);
    process.kill(-proc.pid, 'SIGINT');
    const end = await proc.exited;
    expect(end, proc.output.slice(-800)).to.deep.equal({ code: 0, signal: null });
    expect(proc.output.match(/signal received, stopping/g)).to.have.length(1);
    await waitUntil(() => !alive(child), 5000, 'the second process to be gone');
  });

  it('the first process killed (SIGKILL): the load balancer stops too, never left behind', async () => {
    const { proc } = await startLoadBalancer([`127.0.0.1:${await freePort()}`], { interval: 0.3 });
    const child = await lbChild(proc);
    // The first process alone (proc.signal would kill the load balancer too: a crash).
    process.kill(proc.pid, 'SIGKILL');
    await proc.exited;
    await waitUntil(() => !alive(child), 20_000, 'the orphaned load balancer to stop');
  });

  it('the load balancer killed by a signal: the first process ends with that signal', async () => {
    const { proc } = await startLoadBalancer([`127.0.0.1:${await freePort()}`], { interval: 0.3 });
    const child = await lbChild(proc);
    process.kill(child, 'SIGKILL');
    expect(await proc.exited).to.deep.equal({ code: null, signal: 'SIGKILL' });
  });

  it('--help and a bad flag behave as before: usage on stdout and exit 0; one clear line and exit 2', async () => {
    const help = await runQhcp(['lb', '--help']);
    expect(help.code, help.stderr).to.equal(0);
    expect(help.stdout).to.match(/^Usage: qhcp loadbalancer\|lb/m);
    const bad = await runQhcp(['-loadbalancer', '-servers', '127.0.0.1:1', '-check-interval', 'abc']);
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.match(/^qhcp: --check-interval: .*"abc"\n$/);
  });

  it("flags given on Node's command line win: no second process", async () => {
    const port = await freePort();
    const args = ['--max-semi-space-size=8', BIN, '-loadbalancer', '-servers', `127.0.0.1:${await freePort()}`, '-loadbalancer-host', '127.0.0.1', '-loadbalancer-port', String(port), '-status', 'none'];
    const direct = new QhcpProcess(args, { bin: process.execPath });
    await direct.waitFor(/load balancer started/, 60_000);
    await waitUntil(() => catches(direct.pid, [1, 2, 15]), 20_000, 'the load balancer to handle its signals');
    expect(childrenOf(direct.pid)).to.deep.equal([]);
    expect(cmdline(direct.pid)).to.include('--max-semi-space-size=8');
    await direct.stop();
    expect(direct.child.exitCode).to.equal(0);
  });
});
