/**
 * Load balancer host: one process running core/roles/loadbalancer.ts exactly as `qhcp loadbalancer`
 * does (status printing off), driven over IPC so the benchmark can read its counters
 * (checks, late checks) and hear every transition with its timestamp. It can also run several
 * independent load balancers (`instances`), each with its own connections, to load one agent.
 */
import { getHeapSpaceStatistics } from 'node:v8';
import { LoadBalancer } from '../core/roles/loadbalancer.ts';
import { buildConfig, type QhcpConfig } from '../core/config/config.ts';
import { createLogger } from '../core/util/log.ts';
import RoundRobinPlugin from '../plugins/balancer/round-robin.ts';
import { build } from '../core/testing/index.ts';
import type { LbRequest, LbReply, LbEvent } from './lib/children.ts';

/** Usually one; several when the benchmark plays many load balancers checking one agent. */
const lbs: LoadBalancer[] = [];
const logger = createLogger({ level: 'error', name: 'lb' });

function reply(r: LbReply): void {
  process.send?.(r);
}

/**
 * Transitions go to the benchmark in batches, at most one IPC message per 10 ms: one message per
 * transition cost the load balancer ~200 us each (a pipe write that wakes the parent), ~0.2 s of
 * its CPU while 1000 backends come UP, which the start-up figure then counted. Each event keeps
 * the time of its transition (`at`, `hr`).
 */
let eventQueue: LbEvent[] = [];
function queueEvent(e: LbEvent): void {
  if (eventQueue.length === 0)
    setTimeout(() => {
      const events = eventQueue;
      eventQueue = [];
      process.send?.({ event: 'batch', events });
    }, 10);
  eventQueue.push(e);
}

function states(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const lb of lbs) for (const b of lb.records()) out[b.state] = (out[b.state] ?? 0) + 1;
  return out;
}

/** V8's heap spaces, committed MB each (`new_space: 8`): where the heap part of the RSS sits. */
function spaces(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of getHeapSpaceStatistics()) out[s.space_name] = Math.round((s.physical_space_size / 2 ** 20) * 10) / 10;
  return out;
}

process.on('message', (m: LbRequest) => {
  void (async () => {
    try {
      if (m.cmd === 'start') {
        // Query rate limits off: the benchmark measures the query port's own throughput.
        let startedAt = 0;
        // The query port's certificate from files when the benchmark made some (bench/lib/children.ts benchTls).
        const files = process.env.QHCP_BENCH_CERT_FILE && process.env.QHCP_BENCH_KEY_FILE ? { certFile: process.env.QHCP_BENCH_CERT_FILE, keyFile: process.env.QHCP_BENCH_KEY_FILE } : {};
        const { config } = buildConfig(undefined, undefined, { loadbalancerHost: '127.0.0.1', loadbalancerPort: 0, status: 'none', defaults: false, queryRate: 0, queryRateTotal: 0, ...files, ...m.flags } as Partial<QhcpConfig>);
        for (let i = 0; i < (m.instances ?? 1); i++) {
          const lb = new LoadBalancer(config, logger);
          await lb.loadPlugins([build(RoundRobinPlugin)]);
          lb.hooks.transition.tap('bench', (t) => {
            queueEvent({ event: 'transition', lb: i, server: t.server, from: t.from, to: t.to, at: t.at, hr: performance.timeOrigin + performance.now(), reason: t.reason } satisfies LbEvent);
          });
          startedAt ||= Date.now();
          await lb.start();
          lbs.push(lb);
        }
        reply({ id: m.id, ok: true, port: lbs[0]!.port, startedAt });
      } else if (m.cmd === 'stats') {
        const mem = process.memoryUsage();
        const total: Record<string, number> = {};
        for (const lb of lbs) for (const [k, v] of Object.entries(lb.stats)) total[k] = (total[k] ?? 0) + v;
        // The check socket's driver counters, prefixed (datagrams per check, deferred acknowledgements, nudges).
        for (const lb of lbs) for (const [k, v] of Object.entries(lb.transportStats().check ?? {})) total[`check.${k}`] = (total[`check.${k}`] ?? 0) + v;
        reply({ id: m.id, ok: true, stats: { ...total, heapMb: Math.round(mem.heapUsed / 2 ** 20), externalMb: Math.round(mem.external / 2 ** 20), arrayBuffersMb: Math.round(mem.arrayBuffers / 2 ** 20), ...spaces() }, states: states() });
      } else if (m.cmd === 'reset') {
        for (const lb of lbs) for (const k of Object.keys(lb.stats) as (keyof LoadBalancer['stats'])[]) lb.stats[k] = 0;
        reply({ id: m.id, ok: true });
      } else if (m.cmd === 'stop') {
        await Promise.all(lbs.map((lb) => lb.stop()));
        reply({ id: m.id, ok: true });
        process.exit(0);
      }
    } catch (e) {
      reply({ id: m.id, ok: false, error: String((e as Error)?.stack ?? e) });
    }
  })();
});

process.on('disconnect', () => process.exit(0));
