/**
 * Soak: a real load balancer checks real agents on loopback while the agents flap on a random
 * (seeded) schedule: killed (-9) and restarted, stopped gracefully (SIGTERM, DRAIN) and
 * restarted, frozen (SIGSTOP) and continued. One agent stays untouched as the control.
 * At the end it reports the transitions seen against those the schedule implies (missed and
 * false ones), and the load balancer's and the control agent's RSS and open file handles at
 * start and end.
 *
 *   npm run soak -- --minutes 10 [--servers 4] [--interval 0.5] [--seed 1] [--json out.json]
 *
 * Loopback only; every process it starts is stopped by PID at the end (or on Ctrl-C).
 */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { startServer, startLoadBalancer, waitForState, stopAll, sleep, freePort, type QhcpProcess } from '../test/helpers/procs.ts';

type Fault = 'kill' | 'term' | 'stop';

interface Planned {
  server: string;
  fault: Fault;
  /** When the fault began and when the agent was back (restarted / continued), epoch ms. */
  at: number;
  back: number;
}

interface Seen {
  server: string;
  from: string;
  to: string;
  reason: string;
  at: number;
}

interface Sample {
  rssKiB: number;
  fds: number;
}

const { values: args } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    servers: { type: 'string', default: '4' },
    interval: { type: 'string', default: '0.5' },
    seed: { type: 'string', default: '1' },
    json: { type: 'string' },
  },
});
const MINUTES = Number(args.minutes);
const SERVERS = Math.max(2, Math.min(16, Number(args.servers)));
const INTERVAL = Number(args.interval);
if (!(MINUTES > 0 && MINUTES <= 24 * 60) || !(INTERVAL >= 0.1 && INTERVAL <= 10)) {
  console.error('soak: --minutes must be in (0, 1440] and --interval in [0.1, 10]');
  process.exit(2);
}
/** After a fault ends, the load balancer has this long to see the agent UP again. */
const RECOVER_MS = 15_000;
const FAIL = 2;
const RECONNECT = 1;

let seed = Number(args.seed) >>> 0 || 1;
function rand(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 0x100000000;
}
const between = (lo: number, hi: number) => lo + rand() * (hi - lo);

function sample(pid: number): Sample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { rssKiB: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0), fds: readdirSync(`/proc/${pid}/fd`).length };
}

function transitions(output: string): Seen[] {
  const out: Seen[] = [];
  for (const line of output.split('\n')) {
    if (!line.includes('"event":"transition"')) continue;
    try {
      const j = JSON.parse(line) as Seen;
      out.push({ server: j.server, from: j.from, to: j.to, reason: j.reason, at: j.at });
    } catch {
      /* partial line */
    }
  }
  return out;
}

/** Runs one agent's schedule until `end`: up for a while, a fault, back, and again. */
async function flap(port: number, first: QhcpProcess, end: number, planned: Planned[]): Promise<void> {
  const address = `127.0.0.1:${port}`;
  let proc = first;
  while (Date.now() < end - 25_000) {
    await sleep(between(8_000, 20_000));
    if (Date.now() >= end - 25_000) break;
    const fault: Fault = (['kill', 'term', 'stop'] as const)[Math.floor(rand() * 3)]!;
    const downMs = between(3_000, 8_000);
    const at = Date.now();
    if (fault === 'stop') {
      proc.signal('SIGSTOP');
      await sleep(downMs);
      proc.signal('SIGCONT');
    } else {
      if (fault === 'kill') proc.signal('SIGKILL');
      else proc.signal('SIGTERM');
      await proc.exited;
      await sleep(downMs);
      proc = (await startServer({ port, args: ['--drain-grace', '1'] })).proc;
    }
    planned.push({ server: address, fault, at, back: Date.now() });
  }
}

/** Matches what was seen against what the schedule implies. */
function judge(planned: Planned[], seen: Seen[], servers: string[], control: string) {
  const missed: string[] = [];
  const falseOnes: Seen[] = [];
  const used = new Set<Seen>();
  let expected = 0;
  for (const p of planned) {
    const next = planned.find((q) => q.server === p.server && q.at > p.at)?.at ?? Infinity;
    const inWindow = seen.filter((t) => t.server === p.server && t.at >= p.at - 200 && t.at < Math.min(next, p.back + RECOVER_MS));
    const down = inWindow.find((t) => t.to === 'DOWN');
    const up = down && inWindow.find((t) => t.to === 'UP' && t.at >= down.at);
    const want = p.fault === 'term' ? ['DRAINING', 'DOWN', 'UP'] : ['DOWN', 'UP'];
    expected += want.length;
    if (!down) missed.push(`${p.server} ${p.fault} at ${new Date(p.at).toISOString()}: no DOWN`);
    else if (!up) missed.push(`${p.server} ${p.fault} at ${new Date(p.at).toISOString()}: not UP again within ${RECOVER_MS / 1000}s`);
    // Only the expected sequence is used up; anything else in the window (a flap) stays false.
    let i = 0;
    for (const t of inWindow) {
      if (i < want.length && t.to === want[i]) {
        used.add(t);
        i++;
      }
    }
  }
  for (const t of seen) {
    if (used.has(t)) continue;
    if (t.from === 'UNKNOWN' && t.to === 'UP') continue; // the first check of each agent
    falseOnes.push(t);
  }
  return { expected, seen: seen.length, missed, false: falseOnes, controlTransitions: seen.filter((t) => t.server === control && !(t.from === 'UNKNOWN' && t.to === 'UP')).length, servers: servers.length };
}

async function main(): Promise<void> {
  const started = Date.now();
  const end = started + MINUTES * 60_000;
  const ports = await Promise.all(Array.from({ length: SERVERS }, () => freePort()));
  const agents = await Promise.all(ports.map((port) => startServer({ port, args: ['--drain-grace', '1'] })));
  const addresses = agents.map((a) => a.address);
  const lbPort = await freePort();
  const lb = await startLoadBalancer(addresses, { port: lbPort, interval: INTERVAL, fail: FAIL, reconnect: RECONNECT, args: ['--check-timeout', String(INTERVAL * 0.8), '--status', 'none'] });
  for (const a of addresses) await waitForState(lbPort, a, 'UP', 30_000);
  // Warm up before the first sample: JIT, first connections.
  await sleep(5_000);
  const control = agents[0]!;
  const startSample = { lb: sample(lb.proc.pid), control: sample(control.proc.pid) };
  console.log(`soak: ${MINUTES} min, ${SERVERS} agents (1 control), check interval ${INTERVAL}s, fail ${FAIL}, reconnect ${RECONNECT}s, seed ${args.seed}`);
  const planned: Planned[] = [];
  const progress = setInterval(() => {
    const t = transitions(lb.proc.output);
    console.log(`soak: ${Math.round((Date.now() - started) / 1000)}s, ${planned.length} faults done, ${t.length} transitions seen, lb rss ${sample(lb.proc.pid).rssKiB} KiB`);
  }, 60_000);
  await Promise.all(agents.slice(1).map((a, i) => flap(ports[i + 1]!, a.proc, end, planned)));
  const rest = end - Date.now();
  if (rest > 0) await sleep(rest);
  clearInterval(progress);
  const endSample = { lb: sample(lb.proc.pid), control: sample(control.proc.pid) };
  const verdict = judge(planned, transitions(lb.proc.output), addresses, control.address);
  const lbAlive = lb.proc.running && control.proc.running;
  const report = {
    minutes: MINUTES,
    agents: SERVERS,
    checkInterval: INTERVAL,
    faults: { kill: planned.filter((p) => p.fault === 'kill').length, term: planned.filter((p) => p.fault === 'term').length, stop: planned.filter((p) => p.fault === 'stop').length },
    transitions: { expected: verdict.expected, seen: verdict.seen - addresses.length },
    missed: verdict.missed,
    false: verdict.false,
    controlTransitions: verdict.controlTransitions,
    loadBalancer: { start: startSample.lb, end: endSample.lb },
    controlAgent: { start: startSample.control, end: endSample.control },
    processesUp: lbAlive,
  };
  console.log(JSON.stringify(report, null, 2));
  const ok = lbAlive && verdict.missed.length === 0 && verdict.false.length === 0 && verdict.controlTransitions === 0;
  console.log(`soak: ${ok ? 'PASS' : 'FAIL'}: ${report.transitions.seen} transitions seen (after the first UPs), ${report.transitions.expected} expected; ${verdict.missed.length} missed, ${verdict.false.length} false; ` +
    `lb RSS ${startSample.lb.rssKiB} -> ${endSample.lb.rssKiB} KiB, fds ${startSample.lb.fds} -> ${endSample.lb.fds}; ` +
    `control agent RSS ${startSample.control.rssKiB} -> ${endSample.control.rssKiB} KiB, fds ${startSample.control.fds} -> ${endSample.control.fds}`);
  if (args.json) writeFileSync(args.json, JSON.stringify(report, null, 2) + '\n');
  process.exitCode = ok ? 0 : 1;
}

const stop = () => {
  void stopAll().then(() => process.exit(130));
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
main()
  .catch((e) => {
    console.error(`soak: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
