/**
 * Runs the floor (bench/floor.ts): bare @matrixai/quic with no qhcp code, so every other figure
 * can be read against what the library costs per message.
 *   closed loop   one connection, one ~100-byte message back and forth as fast as it goes
 *   paced echo    N connections, each one round trip per interval (the shape of a poll check)
 *   push          N connections, the server sends one message per interval (the shape of push)
 */
import { Helper } from './children.ts';
import type { FloorRequest, FloorReply } from '../floor.ts';
import { sampleCpu, summary, sleep } from './proc.ts';
import type { Ctx } from './ctx.ts';

export interface FloorCell {
  shape: 'closed-loop' | 'paced-echo' | 'push';
  conns: number;
  intervalS: number | null;
  messages: number;
  /** CPU microseconds per message (a round trip for echo) on each side. */
  clientUsPerMsg: number;
  serverUsPerMsg: number;
  rttUs: ReturnType<typeof summary> | null;
}

async function one(ctx: Ctx, shape: FloorCell['shape'], conns: number, intervalS: number | null): Promise<FloorCell> {
  const srv = new Helper<FloorRequest, FloorReply>('floor.ts');
  const cli = new Helper<FloorRequest, FloorReply>('floor.ts');
  try {
    const { port } = await srv.request({ cmd: 'serve' });
    await cli.request({ cmd: 'open', port: port!, conns, mode: shape === 'push' ? 'push' : 'echo', intervalMs: Math.round((intervalS ?? 1) * 1000) }, 120_000);
    await sleep(ctx.settle * 1000);
    const a = sampleCpu(cli.pid);
    const sa = sampleCpu(srv.pid);
    const r = await cli.request({ cmd: 'run', seconds: ctx.window, closedLoop: shape === 'closed-loop' }, 120_000);
    const b = sampleCpu(cli.pid);
    const sb = sampleCpu(srv.pid);
    const n = Math.max(1, r.messages!);
    return {
      shape,
      conns,
      intervalS,
      messages: r.messages!,
      clientUsPerMsg: Math.round(((b.cpuS - a.cpuS) * 1e6) / n),
      serverUsPerMsg: Math.round(((sb.cpuS - sa.cpuS) * 1e6) / n),
      rttUs: r.rttsUs!.length ? summary(r.rttsUs!) : null,
    };
  } finally {
    await cli.stop(5000);
    await srv.stop(5000);
  }
}

export async function floor(ctx: Ctx, conns: number, intervalS: number): Promise<FloorCell[]> {
  const out: FloorCell[] = [];
  out.push(await one(ctx, 'closed-loop', 1, null));
  out.push(await one(ctx, 'paced-echo', conns, intervalS));
  out.push(await one(ctx, 'push', conns, intervalS));
  for (const c of out) ctx.log(`  ${c.shape} (${c.conns} conn${c.conns > 1 ? 's' : ''}): client ${c.clientUsPerMsg} us, server ${c.serverUsPerMsg} us per message${c.rttUs ? `, round trip p50 ${c.rttUs.p50} us` : ''}`);
  return out;
}
