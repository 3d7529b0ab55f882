/**
 * Watch propagation (issue 16: "a change reaches a watching client within 50 ms of the load
 * balancer's transition").
 *
 * A real load balancer (bench/lb-host.ts: the LoadBalancer of `qhcp loadbalancer`, in its own
 * process) checks `backends` scripted agents (test/helpers/scripted-agent.ts: real QUIC sessions,
 * verdicts pushed at once as the agent pushes them); a `watch()` client from `qhcp/client` in
 * this process follows it. Each repetition flips one agent's verdict (NOT_SERVING, then SERVING
 * again) and times:
 *
 *   lbToClient     the load balancer's transition (its `transition` hook, in its process, with
 *                  performance.timeOrigin + performance.now()) -> the client's 'change' event
 *                  carrying the backend in its new state (same clock, this process)
 *   agentToClient  the agent's push (set()) -> the same 'change' event: the whole path
 *
 * Both processes read the same host clock; performance.timeOrigin is taken at process start, so
 * the two stamps compare to well under a millisecond.
 */
import { Helper, type LbHost, type LbEvent } from './children.ts';
import { summary, sleep, machine, loadAverage } from './proc.ts';
import { until, type Ctx } from './ctx.ts';
import { ScriptedAgent } from '../../test/helpers/scripted-agent.ts';
import { watch, type WatchChange } from '../../core/client/index.ts';

export interface WatchResult {
  at: string;
  machine: Record<string, unknown>;
  loadavg: number[];
  backends: number;
  runs: number;
  /** ms, one per repetition. */
  lbToClient: number[];
  agentToClient: number[];
  summary: { lbToClient: ReturnType<typeof summary>; agentToClient: ReturnType<typeof summary> };
  targetMs: number;
  misses: string[];
}

const hr = () => performance.timeOrigin + performance.now();

export async function watchLatency(ctx: Ctx, backends = 10, runs = ctx.full ? 60 : 20): Promise<WatchResult> {
  const agents: ScriptedAgent[] = [];
  for (let i = 0; i < backends; i++) agents.push(await ScriptedAgent.start());
  const lb: LbHost = new Helper('lb-host.ts');
  const transitions: LbEvent[] = [];
  lb.onEvent = (e) => {
    if ((e as LbEvent).event === 'transition') transitions.push(e as LbEvent);
  };
  const res: WatchResult = { at: new Date().toISOString(), machine: machine(), loadavg: loadAverage(), backends, runs, lbToClient: [], agentToClient: [], summary: undefined as never, targetMs: 50, misses: [] };
  try {
    const { port } = await lb.request({ cmd: 'start', flags: { servers: agents.map((a) => a.address), checkInterval: 1, maxFailAttempts: 2 } });
    const view = await watch({ addresses: [`127.0.0.1:${port!}`], readyTimeoutMs: 30_000 });
    try {
      if (!(await until(() => view.members.length === backends && view.members.every((m) => m.state === 'UP'), 90_000))) throw new Error('not every backend UP in the watched view within 90 s');
      await sleep(ctx.settle * 1000);
      const target = agents[0]!;
      const seen: Array<{ state: string; at: number }> = [];
      view.on('change', (c: WatchChange) => {
        const b = c.changed.find((m) => m.address === target.address);
        if (b) seen.push({ state: b.state, at: hr() });
      });
      for (let r = 0; r < runs; r++) {
        const want = r % 2 === 0 ? 'DOWN' : 'UP';
        const from = seen.length;
        const tx = transitions.length;
        const t0 = hr();
        target.set({ verdict: want === 'DOWN' ? 'NOT_SERVING' : 'SERVING' });
        try {
          const got = await until(() => seen.slice(from).find((s) => s.state === want), 10_000, 1);
          if (!got) throw new Error(`run ${r}: the client did not see ${want} within 10 s`);
          const t = await until(() => transitions.slice(tx).find((e) => e.server === target.address && e.to === want), 5_000, 1);
          if (!t) throw new Error(`run ${r}: no ${want} transition from the load balancer within 5 s`);
          res.lbToClient.push(Math.round((got.at - (t.hr ?? t.at)) * 1000) / 1000);
          res.agentToClient.push(Math.round((got.at - t0) * 1000) / 1000);
        } catch (e) {
          res.misses.push(String((e as Error).message ?? e));
        }
        await sleep(100);
      }
    } finally {
      await view.close();
    }
  } finally {
    await lb.stop(10_000).catch(() => {});
    await Promise.all(agents.map((a) => a.stop()));
  }
  res.summary = { lbToClient: summary(res.lbToClient), agentToClient: summary(res.agentToClient) };
  return res;
}
