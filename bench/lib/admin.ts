/**
 * Admin changes -> the load balancer's state (issue 11: "an admin drain seen in < 50 ms").
 *
 * A real `qhcp server` (one `file` check: the maintenance file, `interval` fileIntervalS, and a
 * control socket in a temporary directory) and a real load balancer (bench/lb-host.ts, the
 * LoadBalancer of `qhcp loadbalancer`, checking the agent every second), in poll mode and in
 * push mode, on loopback. Each repetition:
 *
 *   drain       the control request sent in process with the CLI's own client code
 *               (controlRequest, core/control/socket.ts) -> DRAINING
 *   ready       same -> UP
 *   maint-file  the maintenance file written -> MAINT (waits for the file check's next run)
 *   file-gone   the maintenance file removed -> UP
 *   cli-drain   (fewer runs) the real `qhcp drain --socket ...` process started -> DRAINING,
 *               and the same measured from the process's exit (the command's return)
 *
 * The end point is the load balancer's own transition timestamp (its `transition` hook, taken
 * where the state changes, in the load balancer process, with performance.timeOrigin +
 * performance.now()): no polling delay. For drain and ready the agent's "health changed" log
 * line (written right after the push, millisecond timestamp) splits the time into the control
 * socket + agent part and the push + load balancer part.
 *
 * HAProxy, for reference in the same run: `set server bench/s0 state drain` / `state ready` on
 * its runtime socket, from sending the command to its answer (HAProxy applies the change before
 * it answers); its "enters drain state" / "is UP" log line is checked to confirm the change.
 */
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Helper, spawnTracked, endChild, startAgent, Waiter, BIN, type AgentChild, type LbHost, type LbEvent } from './children.ts';
import { Haproxy, type HaproxyInfo } from './haproxy.ts';
import { summary, sleep, loadAverage, startRun, endRun, type RunInfo } from './proc.ts';
import { freeUdpPort, freeTcpPort, until, type Ctx } from './ctx.ts';
import { controlRequest } from '../../core/control/socket.ts';

export type AdminCase = 'drain' | 'ready' | 'maint-file' | 'file-gone' | 'cli-drain';
export type AdminImpl = 'qhcp-poll' | 'qhcp-push' | 'haproxy';

export interface Stats extends ReturnType<typeof summary> {
  p90: number | null;
}

export interface AdminCell {
  impl: AdminImpl;
  case: AdminCase;
  /** ms from the request sent (file written / removed, CLI started) to the load balancer's new state. */
  seen: number[];
  /** ms from the request's answer (the command's return) to the new state; negative: the load balancer had it first. */
  afterReturn: number[];
  /** ms from the request sent to the agent's push (its log line): control socket + agent. */
  toPush: number[];
  /** ms from the agent's push to the new state: QUIC on loopback + the load balancer's handling. */
  pushToLb: number[];
  summary: { seen: Stats; afterReturn: Stats; toPush: Stats; pushToLb: Stats };
}

export interface AdminResult extends RunInfo {
  version: 1;
  finishedAt: string;
  /** `uptime` output at the start and at the end (the machine is shared). */
  uptime: string[];
  haproxy: { version: string } | { skipped: string };
  settings: { runs: number; cliRuns: number; lbCheckIntervalS: number; pushReportIntervalS: number; fileIntervalS: number };
  targetMs: number;
  cells: AdminCell[];
  misses: string[];
}

export function stats(xs: number[]): Stats {
  const s = summary(xs);
  const sorted = [...xs].sort((a, b) => a - b);
  const p90 = sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(0.9 * sorted.length) - 1)]! : null;
  return { ...s, p90: p90 === null ? null : Math.round(p90 * 1000) / 1000 };
}

const hrNow = () => performance.timeOrigin + performance.now();
const r3 = (v: number) => Math.round(v * 1000) / 1000;

export async function adminLatency(ctx: Ctx, hap: HaproxyInfo | string, opts: { runs?: number; cliRuns?: number; fileIntervalS?: number; budgetMs?: number } = {}): Promise<AdminResult> {
  const t0 = Date.now();
  const runs = opts.runs ?? 20;
  const cliRuns = opts.cliRuns ?? 5;
  const fileIntervalS = opts.fileIntervalS ?? 1;
  // The whole section stops starting new repetitions after this long.
  const budgetMs = opts.budgetMs ?? 6 * 60_000;
  const { execFileSync } = await import('node:child_process');
  const up = () => {
    try {
      return execFileSync('uptime', { encoding: 'utf8' }).trim();
    } catch {
      return `load average ${loadAverage().join(' ')}`;
    }
  };
  const res: AdminResult = {
    ...startRun(t0),
    version: 1,
    finishedAt: '',
    uptime: [up()],
    haproxy: typeof hap === 'string' ? { skipped: hap } : { version: hap.version },
    settings: { runs, cliRuns, lbCheckIntervalS: 1, pushReportIntervalS: 1, fileIntervalS },
    targetMs: 50,
    cells: [],
    misses: [],
  };
  const cellOf = (impl: AdminImpl, c: AdminCase): AdminCell => {
    let cell = res.cells.find((x) => x.impl === impl && x.case === c);
    if (!cell) {
      cell = { impl, case: c, seen: [], afterReturn: [], toPush: [], pushToLb: [], summary: {} as AdminCell['summary'] };
      res.cells.push(cell);
    }
    return cell;
  };

  const dir = mkdtempSync(join(tmpdir(), 'qhcp-bench-admin-'));
  const flag = join(dir, 'maintenance');
  const sock = join(dir, 'control.sock');
  const agentPort = await freeUdpPort();
  const agentAddress = `127.0.0.1:${agentPort}`;
  const configFile = join(dir, 'qhcp.config.json');
  writeFileSync(configFile, JSON.stringify({ controlSocket: sock, checks: [{ type: 'file', path: flag, interval: fileIntervalS }] }, null, 2));

  /** The agent's pushes, from its "health changed" log lines: [time ms, admin]. */
  const pushes: Array<{ at: number; admin: string }> = [];
  type Ev = { to: string; at: number };
  /** The backend's last transitions (bounded), to say what happened when a change was never seen. */
  const trail: string[] = [];
  const trailText = () => trail.slice(-4).join(' | ');
  const events = new Waiter<Ev>();
  const next = (to: string, timeoutMs: number) => events.next((e) => e.to === to, timeoutMs);

  let agent: AgentChild | undefined;
  let service: Server | undefined;
  let h: Haproxy | undefined;
  const over = () => Date.now() - t0 > budgetMs;
  try {
    agent = await startAgent(['--config', configFile, '--server-ip', '127.0.0.1', '--server-port', String(agentPort)], {
      onLine: (line) => {
        if (line.includes('health changed')) {
          try {
            const o = JSON.parse(line) as { time: string; admin: string };
            pushes.push({ at: Date.parse(o.time), admin: o.admin });
            if (pushes.length > 200) pushes.splice(0, pushes.length - 200);
          } catch {
            /* not a JSON line */
          }
        }
      },
    });

    // Push first, then poll: the first run (2026-11-29 10:11) went poll first and saw poll slower; the order tells load drift from the mode.
    for (const mode of ['push', 'poll'] as const) {
      const impl: AdminImpl = mode === 'poll' ? 'qhcp-poll' : 'qhcp-push';
      const lb: LbHost = new Helper('lb-host.ts');
      lb.onEvent = (raw) => {
        const e = raw as LbEvent;
        if (e.server !== agentAddress) return;
        trail.push(`${new Date(e.at).toISOString().slice(11, 23)} ${e.from}->${e.to} (${e.reason.slice(0, 100)})`);
        if (trail.length > 20) trail.splice(0, trail.length - 20);
        events.emit({ to: e.to, at: e.hr ?? e.at });
      };
      try {
        const first = next('UP', 30_000);
        await lb.request({ cmd: 'start', flags: { servers: [agentAddress], checkInterval: 1, reconnectInterval: 1, reportInterval: mode === 'push' ? 1 : 0 } });
        if (!(await first)) throw new Error(`${mode}: the backend never came UP`);

        /** One admin change through the control socket, measured. */
        const viaControl = async (c: 'drain' | 'ready', to: string, r: number) => {
          const seen = next(to, 10_000);
          const tSend = hrNow();
          const ans = await controlRequest(sock, c === 'drain' ? { cmd: 'drain', reason: 'bench' } : { cmd: 'ready' }, 5000);
          const tAns = hrNow();
          const e = await seen;
          if (!ans.ok) return void res.misses.push(`${mode} run ${r} ${c}: the agent refused: ${ans.error}`);
          if (!e) return void res.misses.push(`${mode} run ${r} ${c}: the load balancer never showed ${to} within 10 s (agent answered: admin ${ans.health.admin}, pushed to ${ans.pushed}; last transitions: ${trailText()})`);
          const cell = cellOf(impl, c);
          cell.seen.push(r3(e.at - tSend));
          cell.afterReturn.push(r3(e.at - tAns));
          const admin = c === 'drain' ? 'DRAIN' : 'READY';
          const p = pushes.find((x) => x.admin === admin && x.at >= Math.floor(tSend));
          if (p) {
            cell.toPush.push(r3(p.at - tSend));
            cell.pushToLb.push(r3(e.at - p.at));
          }
        };
        /** The maintenance file written (or removed), measured to MAINT (or UP). */
        const viaFile = async (write: boolean, r: number) => {
          const to = write ? 'MAINT' : 'UP';
          const seen = next(to, 10_000 + fileIntervalS * 2000);
          const tSend = hrNow();
          if (write) writeFileSync(flag, 'bench maintenance\n');
          else unlinkSync(flag);
          const e = await seen;
          if (!e) return void res.misses.push(`${mode} run ${r} ${write ? 'maint-file' : 'file-gone'}: the load balancer never showed ${to} (last transitions: ${trailText()})`);
          const cell = cellOf(impl, write ? 'maint-file' : 'file-gone');
          cell.seen.push(r3(e.at - tSend));
          const p = pushes.find((x) => x.admin === (write ? 'MAINT' : 'READY') && x.at >= Math.floor(tSend));
          if (p) {
            cell.toPush.push(r3(p.at - tSend));
            cell.pushToLb.push(r3(e.at - p.at));
          }
        };
        const gap = () => sleep(200 + Math.random() * 500);

        for (let r = 0; r < runs && !over(); r++) {
          await gap();
          await viaControl('drain', 'DRAINING', r);
          await gap();
          await viaControl('ready', 'UP', r);
          await gap();
          await viaFile(true, r);
          await gap();
          await viaFile(false, r);
          const last = (c: AdminCase) => cellOf(impl, c).seen.at(-1)?.toFixed(1) ?? '–';
          ctx.log(`  ${mode} run ${r + 1}/${runs}: drain ${last('drain')} ms, ready ${last('ready')} ms, maintenance file ${last('maint-file')} ms, removed ${last('file-gone')} ms`);
        }
        // The real CLI, as a deploy script runs it: `qhcp drain` from its start and from its exit.
        for (let r = 0; r < cliRuns && !over(); r++) {
          await gap();
          const seen = next('DRAINING', 30_000);
          const tStart = hrNow();
          const cli = spawnTracked(process.execPath, [BIN, 'drain', '--socket', sock, '--reason', 'bench cli']);
          const code = await new Promise<number | null>((resolve) => cli.once('exit', (c) => resolve(c)));
          const tExit = hrNow();
          const e = await seen;
          if (code !== 0 || !e) res.misses.push(`${mode} cli run ${r}: exit code ${code}, ${e ? 'DRAINING seen' : 'no DRAINING'}`);
          else {
            const cell = cellOf(impl, 'cli-drain');
            cell.seen.push(r3(e.at - tStart));
            cell.afterReturn.push(r3(e.at - tExit));
            const p = pushes.find((x) => x.admin === 'DRAIN' && x.at >= Math.floor(tStart));
            if (p) {
              cell.toPush.push(r3(p.at - tStart));
              cell.pushToLb.push(r3(e.at - p.at));
            }
            ctx.log(`  ${mode} cli run ${r + 1}/${cliRuns}: DRAINING ${(e.at - tStart).toFixed(0)} ms after \`qhcp drain\` started, ${(e.at - tExit).toFixed(1)} ms after it returned`);
          }
          const back = next('UP', 10_000);
          await controlRequest(sock, { cmd: 'ready' }, 5000);
          await back;
        }
      } finally {
        await lb.stop(10_000).catch(() => {});
      }
    }

    if (typeof hap !== 'string') {
      service = createServer((_req, resp) => resp.end('ok\n'));
      await new Promise<void>((resolve, reject) => {
        service!.once('error', reject);
        service!.listen(0, '127.0.0.1', () => resolve());
      });
      const port = (service.address() as { port: number }).port;
      h = new Haproxy(hap, { ports: [port], intervalMs: 1000, timeoutMs: 500, fall: 3, rise: 2, listenPort: await freeTcpPort(), httpCheck: '/health' });
      const lines: Array<{ state: string; at: number }> = [];
      h.onState = (index, state, at) => {
        if (index === 0) lines.push({ state, at });
      };
      await h.start();
      if (!(await until(async () => (await h!.state(0)) === 'UP', 30_000, 100))) throw new Error('the HAProxy server never came UP');
      for (let r = 0; r < runs && !over(); r++) {
        for (const [c, cmd, state] of [
          ['drain', 'set server bench/s0 state drain', 'DRAIN'],
          ['ready', 'set server bench/s0 state ready', 'UP'],
        ] as const) {
          await sleep(200 + Math.random() * 500);
          const tSend = hrNow();
          const tSendMs = Date.now();
          await h.command(cmd);
          const tAns = hrNow();
          // HAProxy changes the state before it answers: the answer is when it is honoured (an upper bound).
          const cell = cellOf('haproxy', c);
          cell.seen.push(r3(tAns - tSend));
          // Its log line confirms the change (read on its stderr; not timed, HAProxy writes it after the change).
          if (!(await until(() => lines.find((l) => l.state === state && l.at >= tSendMs), 2000, 5))) res.misses.push(`HAProxy run ${r} ${c}: no "${state}" log line`);
        }
      }
      ctx.log(`  HAProxy: drain ${cellOf('haproxy', 'drain').seen.map((x) => x.toFixed(1)).join(' ')} ms`);
    }
  } finally {
    await h?.stop().catch(() => {});
    if (service) await new Promise<void>((r) => service!.close(() => r()));
    if (agent) await endChild(agent.child, 3000);
    rmSync(dir, { recursive: true, force: true });
  }
  for (const c of res.cells) c.summary = { seen: stats(c.seen), afterReturn: stats(c.afterReturn), toPush: stats(c.toPush), pushToLb: stats(c.pushToLb) };
  res.uptime.push(up());
  res.finishedAt = new Date().toISOString();
  return endRun(res, t0);
}
