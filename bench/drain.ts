/**
 * Admin drain seen by a load balancer: a real `qhcp server` and `qhcp loadbalancer` on loopback,
 * the load balancer checking every 10 s (so only the agent's push can tell it in time). Each run
 * sends `drain` on the agent's control socket (as `qhcp drain` does, without the CLI's start-up)
 * and measures until the load balancer's status output names the backend DRAINING; then `ready`
 * and back to UP. Target (issue 11): drain seen in < 50 ms.
 *
 *   node --import tsx bench/drain.ts [runs]      prints {n, min, p50, p90, max, all} in ms
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { controlRequest } from '../core/control/socket.ts';

const BIN = fileURLToPath(new URL('../bin/qhcp.js', import.meta.url));
const runs = Math.max(1, Math.min(Number(process.argv[2] ?? 20) || 20, 1000));
const dir = mkdtempSync(join(tmpdir(), 'qhcp-bench-drain-'));
const sock = join(dir, 'ctl.sock');
let agentOut = '';
let lbOut = '';
const until = async (f: () => boolean, ms: number, what: string): Promise<void> => {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
};

const agent = spawn(process.execPath, [BIN, 'server', '--server-ip', '127.0.0.1', '--server-port', '0', '--control-socket', sock], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QHCP_LOG_FORMAT: 'text' } });
agent.stdout!.on('data', (d) => (agentOut += d));
agent.stderr!.on('data', (d) => (agentOut += d));
const lbStarted: Array<ReturnType<typeof spawn>> = [];
try {
  await until(() => /listening address=127\.0\.0\.1:\d+/.test(agentOut), 60_000, 'the agent');
  const port = /listening address=127\.0\.0\.1:(\d+)/.exec(agentOut)![1]!;
  const lb = spawn(process.execPath, [BIN, 'loadbalancer', '--servers', `127.0.0.1:${port}`, '--loadbalancer-host', '127.0.0.1', '--loadbalancer-port', '0', '--check-interval', '10', '--status', 'lines'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, QHCP_LOG_FORMAT: 'text' },
  });
  lbStarted.push(lb);
  lb.stdout!.on('data', (d) => (lbOut += d));
  lb.stderr!.on('data', (d) => (lbOut += d));
  await until(() => /\bUP\b/.test(lbOut), 60_000, 'the backend UP');
  const load = loadavg()[0];
  const drainMs: number[] = [];
  for (let i = 0; i < runs; i++) {
    for (const [cmd, state] of [['drain', 'DRAINING'], ['ready', 'UP']] as const) {
      const from = lbOut.length;
      const t0 = performance.now();
      await controlRequest(sock, { cmd });
      await until(() => new RegExp(`\\b${state}\\b`).test(lbOut.slice(from)), 10_000, state);
      if (cmd === 'drain') drainMs.push(Math.round(performance.now() - t0));
    }
  }
  const s = [...drainMs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  console.log(JSON.stringify({ what: 'drain command -> load balancer DRAINING (ms)', n: s.length, min: s[0], p50: q(0.5), p90: q(0.9), max: s.at(-1), loadavg1: load, all: drainMs }));
} finally {
  for (const c of [agent, ...lbStarted]) c.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}
