/**
 * Detection latency, qhcp and HAProxy with the same interval, timeout, fall and rise:
 *   crash     kill -9 of the backend's process                      -> DOWN
 *   graceful  qhcp: SIGTERM (the agent sends DRAIN); HAProxy: the agent answers "drain" -> DRAINING
 *   recovery  the backend is back (listening again)                  -> UP
 * Each scenario runs `ctx.runs` times; latencies are measured from the event to the moment the
 * load balancer changed state (qhcp: the transition's own timestamp; HAProxy: when its log line
 * was read), on the same clock.
 */
import type { ChildProcess } from 'node:child_process';
import { Helper, endChild, startAgent, Waiter, type LbHost, type LbEvent } from './children.ts';
import { Haproxy, type HaproxyInfo } from './haproxy.ts';
import { summary, sleep } from './proc.ts';
import { freeUdpPort, freeTcpPort, until, type Ctx } from './ctx.ts';
import { CHECK } from './cost.ts';

export interface DetectResult {
  impl: 'qhcp-poll' | 'qhcp-push' | 'haproxy';
  intervalS: number;
  timeoutS: number;
  fall: number;
  rise: number;
  /** Latencies in ms, and their summary. */
  crash: number[];
  graceful: number[];
  recovery: number[];
  summary: Record<'crash' | 'graceful' | 'recovery', ReturnType<typeof summary>>;
  /** What the settings imply: crash fall x interval + timeout; recovery reconnect + (rise - 1) x interval + timeout. */
  bounds: { crashMs: number; recoveryMs: number; gracefulMs: number };
  misses: string[];
}

/** A real `qhcp server` on `port` (children.ts startAgent); with the time its "listening" line was read. */
async function startVictim(port: number): Promise<{ child: ChildProcess; readyAt: number }> {
  let readyAt = 0;
  const { child } = await startAgent(['--server-ip', '127.0.0.1', '--server-port', String(port), '--drain-grace', '1'], {
    onLine: (line, at) => {
      if (!readyAt && line.includes('server listening')) readyAt = at;
    },
  });
  return { child, readyAt };
}

function bounds(intervalS: number, reconnectS: number): DetectResult['bounds'] {
  const t = intervalS * CHECK.timeoutFraction;
  return {
    crashMs: Math.round((CHECK.fall * intervalS + t) * 1000),
    recoveryMs: Math.round((reconnectS + (CHECK.rise - 1) * intervalS + t) * 1000),
    gracefulMs: 50,
  };
}

export async function qhcpDetect(ctx: Ctx, others: number[], mode: 'poll' | 'push', intervalS = 1): Promise<DetectResult> {
  const port = await freeUdpPort();
  const address = `127.0.0.1:${port}`;
  const events = new Waiter<LbEvent>();
  const toState = (to: string, timeoutMs = 20_000) => events.next((e) => e.server === address && e.to === to, timeoutMs);
  let agent = await startVictim(port);
  const lb: LbHost = new Helper('lb-host.ts');
  lb.onEvent = (e) => events.emit(e as LbEvent);
  const res: DetectResult = {
    impl: mode === 'push' ? 'qhcp-push' : 'qhcp-poll',
    intervalS,
    timeoutS: intervalS * CHECK.timeoutFraction,
    fall: CHECK.fall,
    rise: CHECK.rise,
    crash: [],
    graceful: [],
    recovery: [],
    summary: {} as DetectResult['summary'],
    bounds: bounds(intervalS, intervalS),
    misses: [],
  };
  try {
    const firstUp = toState('UP');
    await lb.request({
      cmd: 'start',
      flags: {
        servers: [address, ...others.map((p) => `127.0.0.1:${p}`)],
        checkInterval: intervalS,
        reconnectInterval: intervalS,
        reportInterval: mode === 'push' ? intervalS : 0,
        maxFailAttempts: CHECK.fall,
        riseAttempts: CHECK.rise,
      },
    });
    if (!(await firstUp)) throw new Error('the victim never came UP');
    for (let r = 0; r < ctx.runs; r++) {
      // Let a few checks pass so the crash falls anywhere in the check cycle.
      await sleep((0.5 + Math.random()) * intervalS * 1000);
      const down = toState('DOWN');
      const t0 = Date.now();
      agent.child.kill('SIGKILL');
      const d = await down;
      if (d) res.crash.push(d.at - t0);
      else res.misses.push(`run ${r}: no DOWN after kill -9`);
      const up = toState('UP');
      agent = await startVictim(port);
      const u = await up;
      if (u) res.recovery.push(u.at - agent.readyAt);
      else res.misses.push(`run ${r}: no UP after restart`);

      await sleep((0.5 + Math.random()) * intervalS * 1000);
      const draining = toState('DRAINING', 5000);
      const t1 = Date.now();
      agent.child.kill('SIGTERM');
      const g = await draining;
      if (g) res.graceful.push(g.at - t1);
      else res.misses.push(`run ${r}: no DRAINING after SIGTERM`);
      await endChild(agent.child, 5000);
      const up2 = toState('UP');
      agent = await startVictim(port);
      const u2 = await up2;
      if (u2) res.recovery.push(u2.at - agent.readyAt);
      else res.misses.push(`run ${r}: no UP after restart (graceful)`);
    }
  } finally {
    await lb.stop(10_000);
    await endChild(agent.child, 3000);
  }
  res.summary = { crash: summary(res.crash), graceful: summary(res.graceful), recovery: summary(res.recovery) };
  return res;
}

export async function haproxyDetect(ctx: Ctx, info: HaproxyInfo, others: number[], intervalS = 1): Promise<DetectResult> {
  let victim = new Helper<import('../tcp-agents.ts').TcpRequest, import('../tcp-agents.ts').TcpReply>('tcp-agents.ts');
  const [port] = (await victim.request({ cmd: 'start', count: 1, reply: 'up ready 75%' })).ports!;
  const h = new Haproxy(info, {
    ports: [port!, ...others],
    intervalMs: intervalS * 1000,
    timeoutMs: Math.round(intervalS * 1000 * CHECK.timeoutFraction),
    fall: CHECK.fall,
    rise: CHECK.rise,
    listenPort: await freeTcpPort(),
  });
  const events = new Waiter<{ index: number; state: string; at: number }>();
  h.onState = (index, state, at) => events.emit({ index, state, at });
  const toState = (state: string, timeoutMs = 20_000) => events.next((e) => e.index === 0 && e.state === state, timeoutMs);
  const res: DetectResult = {
    impl: 'haproxy',
    intervalS,
    timeoutS: intervalS * CHECK.timeoutFraction,
    fall: CHECK.fall,
    rise: CHECK.rise,
    crash: [],
    graceful: [],
    recovery: [],
    summary: {} as DetectResult['summary'],
    bounds: { ...bounds(intervalS, intervalS), gracefulMs: intervalS * 1000 },
    misses: [],
  };
  const restart = async () => {
    victim = new Helper('tcp-agents.ts');
    await victim.request({ cmd: 'start', count: 1, ports: [port!], reply: 'up ready 75%' });
    return Date.now();
  };
  try {
    await h.start();
    await sleep(2 * intervalS * 1000);
    for (let r = 0; r < ctx.runs; r++) {
      await sleep((0.5 + Math.random()) * intervalS * 1000);
      const down = toState('DOWN');
      const t0 = Date.now();
      victim.signal('SIGKILL');
      const d = await down;
      if (d) res.crash.push(d.at - t0);
      else res.misses.push(`run ${r}: no DOWN after kill -9`);
      await victim.exited;
      const up = toState('UP');
      const t1 = await restart();
      const u = await up;
      if (u) res.recovery.push(u.at - t1);
      else res.misses.push(`run ${r}: no UP after restart`);

      await sleep((0.5 + Math.random()) * intervalS * 1000);
      const drain = toState('DRAIN', 5000);
      const t2 = Date.now();
      await victim.request({ cmd: 'set', index: 0, reply: 'drain' });
      const g = await drain;
      if (g) res.graceful.push(g.at - t2);
      else res.misses.push(`run ${r}: no DRAIN after the agent said drain`);
      // Back to ready before the next run (HAProxy keeps a forced drain until "ready").
      await victim.request({ cmd: 'set', index: 0, reply: 'up ready 75%' });
      await until(async () => (await h.state(0)) === 'UP', 5000, 100);
    }
  } finally {
    await h.stop();
    victim.signal('SIGKILL');
  }
  res.summary = { crash: summary(res.crash), graceful: summary(res.graceful), recovery: summary(res.recovery) };
  return res;
}
