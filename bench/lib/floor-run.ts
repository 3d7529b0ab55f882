/**
 * Runs the floor (bench/floor.ts): bare QUIC with no qhcp code, for @matrixai/quic's JavaScript
 * layer (`lib`) and for qhcp's own driver on the same quiche (`driver`), so every other figure
 * can be read against what the transport costs per message.
 *   closed loop   one connection, one ~100-byte message back and forth as fast as it goes
 *   paced echo    N connections, each one round trip per interval (the shape of a poll check)
 *   push          N connections, the server sends one message per interval (the shape of push);
 *                 also over bare UDP (`udp`: no QUIC, one datagram and a 40-byte answer per message)
 */
import { Helper } from './children.ts';
import type { FloorRequest, FloorReply, FloorImpl } from '../floor.ts';
import { sampleCpu, summary, sleep, rssMb } from './proc.ts';
import type { Ctx } from './ctx.ts';

export interface FloorCell {
  /** Which QUIC implementation (absent in results from before the driver: the library). */
  impl?: FloorImpl;
  shape: 'closed-loop' | 'paced-echo' | 'push';
  conns: number;
  intervalS: number | null;
  messages: number;
  /** CPU microseconds per message (a round trip for echo) on each side. */
  clientUsPerMsg: number;
  serverUsPerMsg: number;
  rttUs: ReturnType<typeof summary> | null;
  /** Time to open all `conns` connections (one after another), ms. */
  openMs?: number;
  /** Client RSS growth per connection while opening them, KB. */
  kbPerConn?: number;
}

async function one(ctx: Ctx, impl: FloorImpl, shape: FloorCell['shape'], conns: number, intervalS: number | null): Promise<FloorCell> {
  const srv = new Helper<FloorRequest, FloorReply>('floor.ts');
  const cli = new Helper<FloorRequest, FloorReply>('floor.ts');
  try {
    const { port } = await srv.request({ cmd: 'serve', impl });
    await sleep(500);
    const rss0 = rssMb(cli.pid);
    const opened = await cli.request({ cmd: 'open', port: port!, conns, mode: shape === 'push' ? 'push' : 'echo', intervalMs: Math.round((intervalS ?? 1) * 1000), impl }, 180_000);
    const rss1 = rssMb(cli.pid);
    await sleep(ctx.settle * 1000);
    const a = sampleCpu(cli.pid);
    const sa = sampleCpu(srv.pid);
    const r = await cli.request({ cmd: 'run', seconds: ctx.window, closedLoop: shape === 'closed-loop' }, 120_000);
    const b = sampleCpu(cli.pid);
    const sb = sampleCpu(srv.pid);
    const n = Math.max(1, r.messages!);
    return {
      impl,
      shape,
      conns,
      intervalS,
      messages: r.messages!,
      clientUsPerMsg: Math.round(((b.cpuS - a.cpuS) * 1e6) / n),
      serverUsPerMsg: Math.round(((sb.cpuS - sa.cpuS) * 1e6) / n),
      rttUs: r.rttsUs!.length ? summary(r.rttsUs!) : null,
      openMs: opened.openMs ?? 0,
      kbPerConn: Math.round(((rss1 - rss0) * 1024) / conns),
    };
  } finally {
    await cli.stop(5000);
    await srv.stop(5000);
  }
}

/**
 * Both implementations: closed loop (1 connection), paced echo (`conns`), push (`pushConns`, and
 * for the driver also 1000). A cell that fails (e.g. the library cannot open its connections on
 * a loaded machine) is logged and left out; the others still run.
 */
export async function floor(ctx: Ctx, conns: number, intervalS: number, pushConns = 300): Promise<FloorCell[]> {
  const out: FloorCell[] = [];
  const plan: Array<[FloorImpl, FloorCell['shape'], number, number | null]> = [];
  for (const impl of ['lib', 'driver'] as const) plan.push([impl, 'closed-loop', 1, null], [impl, 'paced-echo', conns, intervalS], [impl, 'push', pushConns, intervalS]);
  if (pushConns < 1000) plan.push(['driver', 'push', 1000, intervalS]);
  // Node's dgram alone, the same push shape: what any Node program pays per report and its acknowledgement.
  plan.push(['udp', 'push', 1000, intervalS]);
  for (const [impl, shape, n, i] of plan) {
    try {
      const c = await one(ctx, impl, shape, n, i);
      out.push(c);
      ctx.log(`  ${c.impl} ${c.shape} (${c.conns} conn${c.conns > 1 ? 's' : ''}): client ${c.clientUsPerMsg} us, server ${c.serverUsPerMsg} us per message${c.rttUs ? `, round trip p50 ${c.rttUs.p50} us` : ''}; opened in ${c.openMs} ms, ${c.kbPerConn} KB per connection`);
    } catch (e) {
      ctx.log(`  ${impl} ${shape} (${n} conns): failed: ${String((e as Error).message ?? e).slice(0, 200)}`);
    }
  }
  return out;
}
