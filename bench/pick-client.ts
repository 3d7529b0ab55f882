/**
 * PICK over QUIC: `clients` query connections (core/client/query.ts, as `qhcp pick` uses) to one load
 * balancer, each asking PICK back to back for `seconds`: one at a time (`inFlight` 1), or from
 * `inFlight` concurrent callers sharing the connection, which the client pipelines (a proxy with
 * many requests to place does this). Runs in its own process so the load
 * balancer's and the clients' CPU are measured apart. Driven over IPC.
 */
import { performance } from 'node:perf_hooks';
import { QueryClient } from '../core/client/query.ts';

export type PickRequest =
  | { id: number; cmd: 'open'; port: number; clients: number; inFlight?: number }
  | { id: number; cmd: 'run'; port: number; clients: number; seconds: number; inFlight?: number }
  | { id: number; cmd: 'stop' };
export type PickReply = { id: number; ok: boolean; error?: string; picks?: number; empty?: number; latenciesUs?: number[]; seconds?: number };

/** Connections opened by `open` (the handshakes stay out of the CPU the parent measures around `run`). */
let opened: { qs: QueryClient[]; inFlight: number } | undefined;

async function open(port: number, clients: number, inFlight: number): Promise<void> {
  const qs: QueryClient[] = [];
  opened = { qs, inFlight };
  for (let i = 0; i < clients; i++) qs.push(await QueryClient.open({ host: '127.0.0.1', port, timeoutMs: 10_000, pipeline: inFlight }));
}

async function run(port: number, clients: number, seconds: number, inFlight: number): Promise<Omit<PickReply, 'id' | 'ok'>> {
  if (!opened) await open(port, clients, inFlight);
  const { qs } = opened!;
  inFlight = opened!.inFlight;
  opened = undefined;
  const latencies: number[] = [];
  let picks = 0;
  let empty = 0;
  const started = performance.now();
  const end = started + seconds * 1000;
  // Each connection's callers: `inFlight` loops on the same client.
  const callers = qs.flatMap((q) => Array.from({ length: inFlight }, () => q));
  await Promise.all(
    callers.map(async (q) => {
      while (performance.now() < end) {
        const t = performance.now();
        const r = await q.pick();
        picks++;
        if (!r.server) empty++;
        // Keep the sample bounded: at most 200 000 latencies.
        if (latencies.length < 200_000) latencies.push(Math.round((performance.now() - t) * 1000));
      }
    }),
  );
  const took = (performance.now() - started) / 1000;
  await Promise.all(qs.map((q) => q.close()));
  return { picks, empty, latenciesUs: latencies, seconds: took };
}

process.on('message', (m: PickRequest) => {
  void (async () => {
    try {
      if (m.cmd === 'open') {
        await open(m.port, m.clients, m.inFlight ?? 1);
        process.send!({ id: m.id, ok: true });
      } else if (m.cmd === 'run') process.send!({ id: m.id, ok: true, ...(await run(m.port, m.clients, m.seconds, m.inFlight ?? 1)) });
      else if (m.cmd === 'stop') {
        process.send!({ id: m.id, ok: true });
        process.exit(0);
      }
    } catch (e) {
      process.send!({ id: m.id, ok: false, error: String((e as Error)?.stack ?? e) });
    }
  })();
});
process.on('disconnect', () => process.exit(0));
