/**
 * Writes docs/benchmarks.md and docs/benchmarks-cpu.svg from a results file, so the page can be
 * regenerated after any run: `node --import tsx bench/report.ts [bench/results/<file>.json]`
 * (default: bench/results/latest.json). The optimisation log comes from
 * bench/results/optimizations.json (before/after figures of each change we tried).
 */
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { startupSection, type StartupResults } from './startup.ts';
import { fileURLToPath } from 'node:url';
import type { Results } from './run.ts';
import type { CostCell } from './lib/cost.ts';
import type { DetectResult } from './lib/detect.ts';
import type { ServiceResult } from './lib/service.ts';
import type { AdminResult, AdminCell } from './lib/admin.ts';
import type { WatchResult } from './lib/watch.ts';
import type { PicksResults } from './picks.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

interface Optimization {
  change: string;
  where: string;
  why: string;
  figures: Array<{ what: string; before: number | string; after: number | string }>;
  note?: string;
}
interface OptimizationLog {
  measured: string;
  method: string;
  changes: Optimization[];
}

/** Issue 12's targets (and the earlier ones it keeps): each row of "Targets" reads one of these. */
const TARGETS = {
  /** CPU per backend per interval at N = 1000, 1 s, as a ratio to HAProxy's. */
  pollVsHaproxy: 1,
  pushVsHaproxy: 0.5,
  halfCorePct: 50,
  rssMb: 110,
  /** Seconds from the load balancer's start until all 1000 backends are UP. */
  allUpS: 3,
  /** N = 10,000 at 1 s, push: on one core, all UP within 30 s. */
  scaleCpuPct: 100,
  scaleUpS: 30,
  crashSlack: 1.1,
  gracefulMs: 50,
  agentCpuPct: 0.2,
  agentRssMb: 60,
  /** PICK over QUIC from 50 clients, queries per second. */
  quicPicks50: 20_000,
};

const r1 = (v: number | null | undefined, d = 1) => (v === null || v === undefined ? '–' : (Math.round(v * 10 ** d) / 10 ** d).toLocaleString('en'));
const ratio = (a: number | null | undefined, b: number | null | undefined) => (a && b ? `${(a / b).toFixed(2)}×` : '–');
const yes = (ok: boolean | undefined) => (ok === undefined ? '–' : ok ? 'yes' : '**no**');

function cell(res: Results, impl: CostCell['impl'], n: number, i: number): CostCell | undefined {
  return res.cost.find((c) => c.impl === impl && c.n === n && c.intervalS === i);
}
function det(res: Results, impl: DetectResult['impl']): DetectResult | undefined {
  return res.detection.find((d) => d.impl === impl);
}

/** Each target, what was measured, and whether it is met. */
function targets(res: Results): string[] {
  const rows: string[][] = [];
  const hap = cell(res, 'haproxy', 1000, 1);
  for (const impl of ['qhcp-poll', 'qhcp-push'] as const) {
    const c = cell(res, impl, 1000, 1);
    if (!c) continue;
    const want = impl === 'qhcp-push' ? TARGETS.pushVsHaproxy : TARGETS.pollVsHaproxy;
    rows.push([`LB CPU per backend per interval ≤ ${want}× HAProxy's (N = 1000, 1 s), ${impl}`, `${c.usPerBackendInterval} µs vs ${hap?.usPerBackendInterval ?? '–'} µs (${ratio(c.usPerBackendInterval, hap?.usPerBackendInterval)})`, hap ? yes(c.usPerBackendInterval <= want * hap.usPerBackendInterval) : '–']);
    rows.push([`1000 backends at 1 s on < half a core, ${impl}`, `${c.cpuPct}% of one core${c.keepsUp ? '' : ', does not keep up'}`, yes(c.cpuPct < TARGETS.halfCorePct && c.keepsUp)]);
    rows.push([`LB RSS ≤ ${TARGETS.rssMb} MB at 1000 backends, ${impl}`, `${c.rssMb} MB (HAProxy ${hap?.rssMb ?? '–'} MB)${c.runtime === 'tsx' ? ' (run through tsx, not compiled)' : ''}`, yes(c.rssMb <= TARGETS.rssMb)]);
    rows.push([`1000 backends all UP within ${TARGETS.allUpS} s of the load balancer's start, ${impl}`, c.upAfterS !== null ? `${c.upAfterS} s` : c.note ?? 'not all UP', yes(c.upAfterS !== null && c.upAfterS <= TARGETS.allUpS)]);
  }
  for (const impl of ['qhcp-poll', 'qhcp-push'] as const) {
    const c = cell(res, impl, 100, 0.1);
    if (!c) continue;
    const farm = c.farm ? `the farm hosting ${c.farm.agents} agents in ${c.farm.processes} process${c.farm.processes > 1 ? 'es' : ''}` : 'the shared farm';
    rows.push([`no collapse under CPU starvation: N = 100 every 100 ms with ${farm} comes UP and keeps up, ${impl}`, `${c.upAfterS !== null ? `all UP after ${c.upAfterS} s` : c.note ?? 'not all UP'}; ${c.checks ?? '–'}/${c.expected} checks, ${c.late ?? '–'} late, ${c.failed ?? '–'} failed; ${c.cpuPct}% CPU`, yes(c.upAfterS !== null && c.keepsUp)]);
  }
  const sc = res.scale;
  if (!sc?.qhcp) {
    const why = sc?.errors.length ? `failed: ${sc.errors.join('; ').slice(0, 200)}` : 'not measured in this run (`--only scale`)';
    rows.push(['N = 10,000 at 1 s, push, on one core (keeps up)', why, '–'], [`N = 10,000: all UP within ${TARGETS.scaleUpS} s`, why, '–']);
  } else {
    const q = sc.qhcp;
    const h = sc.haproxy;
    rows.push([`N = ${sc.n.toLocaleString('en')} at ${sc.intervalS} s, push, on one core (keeps up)`, `${q.cpuPct}% of one core, ${q.usPerBackendInterval} µs per backend per interval vs HAProxy ${h ? `${h.usPerBackendInterval} µs (${ratio(q.usPerBackendInterval, h.usPerBackendInterval)})` : '–'}${q.keepsUp ? '' : `; does not keep up (${q.checks}/${q.expected} checks, ${q.late} late, ${q.failed} failed)`}`, yes(q.cpuPct <= TARGETS.scaleCpuPct && q.keepsUp)]);
    rows.push([`N = ${sc.n.toLocaleString('en')}: all UP within ${TARGETS.scaleUpS} s`, q.upAfterS !== null ? `${q.upAfterS} s` : q.note ?? 'not all UP', yes(q.upAfterS !== null && q.upAfterS <= TARGETS.scaleUpS)]);
  }
  const hd = det(res, 'haproxy');
  for (const d of res.detection.filter((x) => x.impl !== 'haproxy')) {
    const p50 = d.summary.crash.p50;
    const max = d.summary.crash.max;
    rows.push([`dead backend detected no slower than HAProxy (median), ${d.impl}`, `${p50 ?? '–'} ms vs ${hd?.summary.crash.p50 ?? '–'} ms (${ratio(p50, hd?.summary.crash.p50)})`, hd && p50 !== null && hd.summary.crash.p50 !== null ? yes(p50 <= hd.summary.crash.p50) : '–']);
    rows.push([`crash within fall × interval + timeout + 10% (max), ${d.impl}`, `${max ?? '–'} ms vs ${Math.round(d.bounds.crashMs * TARGETS.crashSlack)} ms`, max !== null ? yes(max <= d.bounds.crashMs * TARGETS.crashSlack) : '–']);
    rows.push([`graceful stop seen in < 50 ms (max), ${d.impl}`, `${d.summary.graceful.max ?? '–'} ms`, d.summary.graceful.max !== null ? yes(d.summary.graceful.max < TARGETS.gracefulMs) : '–']);
  }
  rows.push(...serviceTargets(serviceResults()));
  rows.push(...adminTargets(adminResults()));
  rows.push(...watchTargets(watchResults()));
  rows.push(...picksTargets(picksResults()));
  for (const a of res.agent.filter((x) => x.loadBalancers === 1)) {
    rows.push([`agent ≤ ${TARGETS.agentCpuPct}% CPU and ≤ ${TARGETS.agentRssMb} MB RSS at one check per second, ${a.mode}`, `${a.cpuPct}% CPU, ${a.rssMb} MB${a.runtime === 'tsx' ? ' (run through tsx, not compiled)' : ''}`, yes(a.cpuPct <= TARGETS.agentCpuPct && a.rssMb <= TARGETS.agentRssMb)]);
  }
  if (!res.agent.some((x) => x.loadBalancers === 1)) rows.push([`agent ≤ ${TARGETS.agentCpuPct}% CPU and ≤ ${TARGETS.agentRssMb} MB RSS at one check per second`, 'not measured in this run (`--only agent`)', '–']);
  // Fifty clients: the best of their cases (one PICK at a time each, or several in flight on one
  // connection, as the public client does for concurrent callers); each case is shown.
  const fifty = res.quicPicks.filter((q) => q.clients === 50);
  const label = `PICK over QUIC from 50 clients ≥ ${TARGETS.quicPicks50.toLocaleString('en')} queries/s`;
  if (fifty.length === 0) rows.push([label, 'not measured in this run (`--only balance`)', '–']);
  else {
    const best = Math.max(...fifty.map((q) => q.qps));
    const cases = fifty.map((q) => `${q.qps.toLocaleString('en')} queries/s with ${q.inFlight ?? 1} in flight per client (load balancer ${q.lbUsPerPick ?? '–'} µs CPU per PICK, ${r1(q.lbCpuPct)}% CPU)`);
    rows.push([label, cases.join('; '), yes(best >= TARGETS.quicPicks50)]);
  }
  return table(['Target', 'Measured', 'Met'], rows);
}

function table(head: string[], rows: (string | number)[][]): string[] {
  return [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

function costTable(res: Results): string[] {
  const keys = [...new Set(res.cost.map((c) => `${c.n}|${c.intervalS}`))];
  const rows = keys.map((k) => {
    const [n, i] = k.split('|').map(Number) as [number, number];
    const p = cell(res, 'qhcp-poll', n, i);
    const s = cell(res, 'qhcp-push', n, i);
    const h = cell(res, 'haproxy', n, i);
    const f = (c: CostCell | undefined) => (c ? `${r1(c.cpuPct)}% · ${c.usPerBackendInterval} µs · ${r1(c.rssMb, 0)} MB${c.keepsUp ? '' : ' · **behind**'}` : '–');
    return [n, `${i} s`, f(p), f(s), f(h), ratio(p?.usPerBackendInterval, h?.usPerBackendInterval), ratio(s?.usPerBackendInterval, h?.usPerBackendInterval)];
  });
  return table(['N', 'interval', 'qhcp poll', 'qhcp push', 'HAProxy', 'poll / HAProxy', 'push / HAProxy'], rows);
}

/** N = 10,000 in push mode next to HAProxy (bench/lib/scale.ts). */
function scaleSection(res: Results): string[] {
  const sc = res.scale;
  if (!sc) return ['N = 10,000: not measured in this run (`npm run bench -- --only scale`).', ''];
  const f = (c: CostCell | null) => (c ? `${r1(c.cpuPct)}% · ${c.usPerBackendInterval} µs · ${r1(c.rssMb, 0)} MB${c.keepsUp ? '' : ' · **behind**'}` : '–');
  return [
    `N = ${sc.n.toLocaleString('en')} at ${sc.intervalS} s (\`--only scale\`): qhcp in push mode against ${sc.n.toLocaleString('en')} agents in ${sc.farmProcesses} farm process${sc.farmProcesses > 1 ? 'es' : ''} (started in ${sc.farmStartS} s; the farm used ${sc.farmCpuPct ?? '–'}% of a core while measured), HAProxy against TCP agents in as many processes. Each given ${sc.upWithinS} s to bring every backend UP.`,
    '',
    ...table(
      ['N', 'interval', 'qhcp push', 'all UP after', 'HAProxy', 'push / HAProxy'],
      [[sc.n.toLocaleString('en'), `${sc.intervalS} s`, f(sc.qhcp), sc.qhcp?.upAfterS != null ? `${sc.qhcp.upAfterS} s` : sc.qhcp?.note ?? '–', f(sc.haproxy), ratio(sc.qhcp?.usPerBackendInterval, sc.haproxy?.usPerBackendInterval)]],
    ),
    ...(sc.errors.length ? ['', ...sc.errors.map((e) => `- failed: ${e}`)] : []),
    '',
  ];
}

function detectTable(res: Results): string[] {
  const rows: (string | number)[][] = [];
  const hd = det(res, 'haproxy');
  for (const scen of ['crash', 'graceful', 'recovery'] as const) {
    for (const d of res.detection) {
      const s = d.summary[scen];
      const bound = scen === 'crash' ? d.bounds.crashMs : scen === 'recovery' ? d.bounds.recoveryMs : d.bounds.gracefulMs;
      rows.push([scen, d.impl, s.n, s.min ?? '–', s.p50 ?? '–', s.max ?? '–', bound, d.impl === 'haproxy' ? '' : ratio(s.p50, hd?.summary[scen].p50)]);
    }
  }
  return table(['scenario', 'implementation', 'runs', 'min ms', 'median ms', 'max ms', 'bound ms', 'median qhcp / HAProxy'], rows);
}

/** An SVG line chart of load balancer CPU (% of one core) against N, log scale on N. */
export function chart(res: Results, intervalS = 1): string {
  const W = 640;
  const H = 400;
  const m = { l: 60, r: 150, t: 40, b: 50 };
  const series = [
    { impl: 'qhcp-poll', label: 'qhcp (poll)', color: '#d62728' },
    { impl: 'qhcp-push', label: 'qhcp (push)', color: '#1f77b4' },
    { impl: 'haproxy', label: 'HAProxy 2.6', color: '#2ca02c' },
  ] as const;
  const all = [...res.cost, ...[res.scale?.qhcp, res.scale?.haproxy].filter((c): c is CostCell => !!c)];
  const pts = series.map((s) => ({ ...s, points: all.filter((c) => c.impl === s.impl && c.intervalS === intervalS).sort((a, b) => a.n - b.n) }));
  const ns = [...new Set(pts.flatMap((s) => s.points.map((p) => p.n)))].sort((a, b) => a - b);
  const maxY = Math.max(10, ...pts.flatMap((s) => s.points.map((p) => p.cpuPct)));
  // Room for the half-a-core target line.
  const top = Math.max(60, Math.ceil(maxY / 10) * 10);
  const lx = (n: number) => {
    const lo = Math.log10(ns[0] ?? 10);
    const hi = Math.log10(ns.at(-1) ?? 1000);
    return m.l + ((Math.log10(n) - lo) / Math.max(1e-9, hi - lo)) * (W - m.l - m.r);
  };
  const ly = (v: number) => H - m.b - (v / top) * (H - m.t - m.b);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2 - 60}" y="22" text-anchor="middle" font-size="14">Load balancer CPU against backends (checks every ${intervalS} s)</text>`,
  ];
  for (let k = 0; k <= 5; k++) {
    const v = (top / 5) * k;
    out.push(`<line x1="${m.l}" y1="${ly(v)}" x2="${W - m.r}" y2="${ly(v)}" stroke="#ddd"/>`, `<text x="${m.l - 6}" y="${ly(v) + 4}" text-anchor="end">${r1(v, 0)}%</text>`);
  }
  for (const n of ns) out.push(`<line x1="${lx(n)}" y1="${m.t}" x2="${lx(n)}" y2="${H - m.b}" stroke="#eee"/>`, `<text x="${lx(n)}" y="${H - m.b + 18}" text-anchor="middle">${n}</text>`);
  out.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 10}" text-anchor="middle">backends (N, log scale)</text>`);
  out.push(`<text x="16" y="${(m.t + H - m.b) / 2}" transform="rotate(-90 16 ${(m.t + H - m.b) / 2})" text-anchor="middle">CPU, % of one core</text>`);
  out.push(`<line x1="${m.l}" y1="${ly(50)}" x2="${W - m.r}" y2="${ly(50)}" stroke="#999" stroke-dasharray="4 3"/>`, `<text x="${W - m.r - 4}" y="${ly(50) - 4}" text-anchor="end" fill="#666">target: half a core</text>`);
  pts.forEach((s, idx) => {
    if (s.points.length === 0) return;
    out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${s.points.map((p) => `${lx(p.n).toFixed(1)},${ly(p.cpuPct).toFixed(1)}`).join(' ')}"/>`);
    for (const p of s.points) out.push(`<circle cx="${lx(p.n).toFixed(1)}" cy="${ly(p.cpuPct).toFixed(1)}" r="3.5" fill="${s.color}"><title>${s.label}, N=${p.n}: ${p.cpuPct}%</title></circle>`);
    const y = m.t + 10 + idx * 20;
    out.push(`<line x1="${W - m.r + 12}" y1="${y}" x2="${W - m.r + 32}" y2="${y}" stroke="${s.color}" stroke-width="2"/>`, `<text x="${W - m.r + 38}" y="${y + 4}">${s.label}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** The service section's results (bench/results/service-latest.json, its own run), if any. */
function serviceResults(): ServiceResult | undefined {
  const file = `${ROOT}bench/results/service-latest.json`;
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as ServiceResult) : undefined;
}

function serviceTargets(sv: ServiceResult | undefined): string[][] {
  if (!sv) return [];
  const rows: string[][] = [];
  for (const failure of ['503', 'stopped'] as const) {
    const q = sv.cells.find((c) => c.impl === 'qhcp' && c.failure === failure);
    const h = sv.cells.find((c) => c.impl === 'haproxy' && c.failure === failure);
    if (!q) continue;
    const qp = q.summary.down.p50;
    const hp = h?.summary.down.p50 ?? null;
    // The part after each side's first check of the failed service is the implementation's; before it, the phase (luck).
    const qa = q.summary.afterFirst?.p50;
    const ha = h?.summary.afterFirst?.p50;
    const split = qa !== undefined && ha !== undefined ? `; after the first failing check ${qa} ms vs ${ha} ms (${ratio(qa, ha)}), ${q.summary.down.n} runs` : '';
    rows.push([`service failure (${failure === '503' ? 'answers 503' : 'stopped'}) out of rotation no slower than HAProxy httpchk (median)`, `${qp ?? '–'} ms vs ${hp ?? '–'} ms (${ratio(qp, hp)})${split}`, qp !== null && hp !== null ? yes(qp <= hp) : '–']);
  }
  return rows;
}

/** Where the DOWN time goes: the phase (luck) against the path after the first failed check (the implementation's part). */
function afterFirstText(sv: ServiceResult): string[] {
  const parts: string[] = [];
  for (const failure of ['503', 'stopped'] as const) {
    const q = sv.cells.find((c) => c.impl === 'qhcp' && c.failure === failure)?.summary.afterFirst;
    const h = sv.cells.find((c) => c.impl === 'haproxy' && c.failure === failure)?.summary.afterFirst;
    if (q?.p50 == null || h?.p50 == null) continue;
    parts.push(`${failure === '503' ? 'a 503' : 'a stopped service'}: ${q.p50} ms for qhcp against ${h.p50} ms for HAProxy (means ${r1(q.mean, 0)} and ${r1(h.mean, 0)} ms)`);
  }
  if (parts.length === 0) return [];
  return [
    `Where the time goes: each DOWN time splits at that side's first check of the failed service. Before it is the phase, luck: uniform over one interval, independently for the two sides, and it moves the medians of a ${sv.settings.runs}-run sample by a few hundred ms from one run to the next (on 2026-11-29 four runs gave qhcp / HAProxy 0.89×, 1.09×, 0.90×, 0.98× for a 503 and 1.17×, 1.21×, 1.13×, 0.97× for a stopped service, before this split was measured). After it is what the implementation does: (fall − 1) more intervals, the decision and, for qhcp, the push to the load balancer. In this run that part took, median, ${parts.join('; ')}. qhcp's extra tens of ms are its ±10% interval jitter and, under this load, the agent deciding and pushing (one run traced with the agent's log: the load balancer had the NOT_SERVING 1 to 25 ms after the agent decided). Over many runs qhcp should therefore be that much slower than HAProxy (1 to 2% of the DOWN time); a run whose median ratio is below 1× owes it to the phase.`,
  ];
}

function serviceSection(sv: ServiceResult | undefined): string[] {
  if (!sv) return ['Not measured yet: `npm run bench -- --only service`.'];
  const m = sv.machine;
  const busy = sv.loadavgStart[0]! > Number(m.cores) * 0.5 || sv.loadavgEnd[0]! > Number(m.cores) * 0.5;
  const rows: (string | number)[][] = [];
  for (const failure of ['503', 'stopped'] as const) {
    const h = sv.cells.find((c) => c.impl === 'haproxy' && c.failure === failure);
    for (const c of sv.cells.filter((x) => x.failure === failure)) {
      const d = c.summary.down;
      const u = c.summary.up;
      const f = c.summary.firstCheck?.p50;
      const a = c.summary.afterFirst?.p50;
      rows.push([failure === '503' ? 'answers 503' : 'stopped', c.impl === 'qhcp' ? 'qhcp' : 'HAProxy httpchk', d.n, d.min ?? '–', d.p50 ?? '–', d.max ?? '–', c.impl === 'haproxy' ? '' : ratio(d.p50, h?.summary.down.p50), f ?? '–', a ?? '–', u.p50 ?? '–', u.max ?? '–']);
    }
  }
  const reasons = sv.cells.filter((c) => c.reason).map((c) => `- ${c.impl}, ${c.failure}: \`${c.reason!.replace(/^.*?(Server \S+ is DOWN)/, '$1').slice(0, 160)}\``);
  return [
    `Measured ${sv.startedAt} (${sv.durationS} s, ${sv.settings.runs} runs per failure) on ${m.cpu}, ${m.cores} cores, Node ${m.node}, ${m.os}; HAProxy ${'version' in sv.haproxy ? sv.haproxy.version : `skipped: ${sv.haproxy.skipped}`}; load average start ${sv.loadavgStart.join(' / ')}, end ${sv.loadavgEnd.join(' / ')}.`,
    '',
    ...(busy ? ['> **The machine was busy during this run** (load average above half the core count, shared with other jobs): latencies are noisy; both implementations saw the same failures at the same time, so the ratio is the robust reading.', ''] : []),
    `One real HTTP server (in the benchmark process) watched at once by qhcp and by HAProxy 2.6: an \`http\` check every ${sv.settings.intervalS} s, timeout ${sv.settings.timeoutS} s, fall ${sv.settings.fall}, rise ${sv.settings.rise} on both. qhcp: a real \`qhcp server\` runs the check and applies fall itself, then pushes NOT_SERVING; the load balancer (poll mode, checking the agent every ${sv.settings.lbCheckIntervalS} s) moves the backend DOWN on it. HAProxy: \`option httpchk GET /health\` with \`inter\`, \`fall\`, \`rise\`, \`timeout check\`. Failures: the service answers 503; the service stops (connect refused). Down: from the failure to DOWN (qhcp: the transition's timestamp; HAProxy: when its log line was read). Up: from the repair to UP. Expected down: about (fall − 1) × interval plus the wait for the next check, at most fall × interval = ${sv.boundDownMs} ms.`,
    '',
    ...table(['failure', 'implementation', 'runs', 'down min ms', 'down median ms', 'down max ms', 'median qhcp / HAProxy', 'first check after the failure, median ms', 'down − first check, median ms', 'up median ms', 'up max ms'], rows),
    '',
    '"First check after the failure": when that side\'s next check reached the failed service (for a 503, seen by the service; for a stopped service, its last check before the stop + the interval). It is the luck of the phase, uniform over one interval. "Down − first check" is the rest: (fall − 1) more intervals, the decision, and for qhcp the push to the load balancer; it is the part an implementation controls.',
    '',
    ...(sv.misses.length ? ['Misses:', '', ...sv.misses.map((x) => `- ${x}`), ''] : []),
    ...afterFirstText(sv),
    '',
    `Recovery takes longer for qhcp by design: the agent's own rise (rise passing checks) comes first, then the load balancer moves the backend UP only after its own rise on its checks of the agent (the pushed SERVING counts as one), so up to one more load-balancer check interval; HAProxy applies one rise.`,
    '',
    'The reasons each load balancer gave:',
    '',
    ...reasons,
  ];
}

/** The picks section's results (bench/results/picks-latest.json, its own run: bench/picks.ts), if any. */
function picksResults(): PicksResults | undefined {
  const file = `${ROOT}bench/results/picks-latest.json`;
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as PicksResults) : undefined;
}

/** One target row per strategy: a pick under the target at N = 1000 (LocalBalancer, CPU time). */
function picksTargets(p: PicksResults | undefined): string[][] {
  if (!p) return [];
  return p.costs
    .filter((c) => c.n === 1000)
    .map((c) => [`${c.strategy}: a pick < ${p.targetNsAt1000 / 1000} µs at N = 1000, in process`, c.localNs === null ? `– (${c.note ?? ''})` : `${c.localNs} ns`, c.localNs === null ? '–' : yes(c.localNs < p.targetNsAt1000)]);
}

function picksSection(p: PicksResults | undefined): string[] {
  if (!p) return ['Not measured yet: `npm run bench -- --only picks`.'];
  const m = p.machine as { cpu?: string; cores?: number; os?: string; node?: string };
  const la = (l: number[]) => l.map((v) => v.toFixed(2)).join(' / ');
  const sizes = [...new Set(p.costs.map((c) => c.n))];
  const strategies = [...new Set(p.costs.map((c) => c.strategy))];
  const cost = (s: string, n: number) => p.costs.find((c) => c.strategy === s && c.n === n);
  const lbRate = (tree: number, s: string, n: number) => p.lb[tree]?.rows.find((r) => r.strategy === s && r.n === n);
  const L = [
    `\`node --import tsx bench/picks.ts\` (${p.mode} mode, ${p.startedAt}, ${p.durationS} s; \`npm run bench -- --only picks\`). Machine: ${m.cpu ?? '?'}, ${m.cores ?? '?'} cores, ${m.os ?? '?'}, Node ${m.node ?? process.version}; **shared with other agents' work**: load average ${la(p.loadavgStart)} at the start, ${la(p.loadavgEnd)} at the end (1/5/15 min). Read the CPU-time figures; wall-time figures under this load mostly measure the scheduler.`,
    '',
    `**LocalBalancer, in process** (core/balance/local.ts: every PICK and every \`watch()\` client's pick goes through it): CPU ns per pick from the maintained state, and per \`update()\` of the whole view plus the pick that rebuilds from it (what one change costs), all backends UP with fresh reports; the least of several rounds. Target: under ${p.targetNsAt1000 / 1000} µs per pick at N = 1000 for every strategy.`,
    '',
    ...table(
      ['strategy', ...sizes.map((n) => `ns/pick N=${n.toLocaleString('en')}`), ...sizes.map((n) => `picks/s N=${n.toLocaleString('en')}`), ...sizes.map((n) => `µs/update N=${n.toLocaleString('en')}`)],
      strategies.map((s) => [
        s,
        ...sizes.map((n) => cost(s, n)?.localNs ?? '–'),
        ...sizes.map((n) => {
          const ns = cost(s, n)?.localNs;
          return ns ? Math.round(1e9 / ns).toLocaleString('en') : '–';
        }),
        ...sizes.map((n) => {
          const u = cost(s, n)?.updateNs;
          return u === null || u === undefined ? '–' : r1(u / 1000);
        }),
      ]),
    ),
  ];
  if (p.lb.length > 0) {
    const trees = p.lb.map((t) => t.tree);
    L.push(
      '',
      `**\`LoadBalancer.pick()\` in process** (the PICK path but the network: CPU ns per pick), this tree against ${trees.length > 1 ? `\`${trees[1]}\`, the commit before issue 16 (the pool filtered and passed to the \`pick\` hook on every pick), measured alternately in the same run` : 'nothing'}:`,
      '',
      ...table(
        ['strategy', 'backends', ...trees],
        strategies.flatMap((s) => sizes.map((n) => [s, n.toLocaleString('en'), ...trees.map((_, i) => lbRate(i, s, n)?.nsPerPick?.toLocaleString('en') ?? '–')])),
      ),
    );
  }
  if (p.quic.length > 0) {
    L.push(
      '',
      '**PICK over QUIC** (the query port, one connection per client, requests back to back, 10 backends, round-robin), this tree and the one before, alternately. The trees differ by more than the balancing (every change landed in between: the query port, the client, the transport); the load balancer\'s CPU per query is the figure that isolates the load balancer, queries/s also measure the client process and the machine\'s load:',
      '',
      ...table(
        ['tree', 'clients', 'queries/s', 'p50 µs', 'p99 µs', 'load balancer CPU %', 'load balancer CPU µs per query'],
        p.quic.flatMap((t) => t.rows.map((q) => [t.tree, q.clients, q.qps.toLocaleString('en'), q.p50Us ?? '–', q.p99Us ?? '–', r1(q.lbCpuPct), q.qps > 0 ? Math.round((q.lbCpuPct / 100 / q.qps) * 1e6) : '–'])),
      ),
    );
  }
  return L;
}

/** The watch section's results (bench/results/watch-latest.json, its own run), if any. */
function watchResults(): WatchResult | undefined {
  const file = `${ROOT}bench/results/watch-latest.json`;
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as WatchResult) : undefined;
}

/** The watch target, judged on the max (median and p99 shown). */
function watchTargets(w: WatchResult | undefined): string[][] {
  const s = w?.summary.lbToClient;
  if (!w || !s || s.n === 0) return [];
  return [[`a change reaches a watching client in < ${w.targetMs} ms of the load balancer's transition`, `median ${r1(s.p50)} ms, p99 ${r1(s.p99)} ms, max ${r1(s.max)} ms (${s.n} runs)`, s.max === null || s.p50 === null ? '–' : s.max < w.targetMs ? 'yes' : s.p50 < w.targetMs ? 'median yes, **max no**' : '**no**']];
}

function watchSection(w: WatchResult | undefined): string[] {
  if (!w) return ['Not measured yet: `npm run bench -- --only watch`.'];
  const m = w.machine;
  const f = (v: number | null | undefined) => (v === null || v === undefined ? '–' : r1(v));
  const row = (what: string, s: WatchResult['summary']['lbToClient']) => [what, f(s.p50), f(s.p99), f(s.max), s.n];
  return [
    `Measured ${w.at.slice(0, 16).replace('T', ' ')} UTC on ${String(m.cpu ?? m.model ?? 'this machine')}, ${String(m.cores)} cores, Node ${String(m.node ?? process.version)}, load average ${w.loadavg.join(' ')} at the start; ${w.backends} backends, ${w.runs} flips of one backend (DOWN, UP, ...).`,
    '',
    ...table(
      ['leg', 'median ms', 'p99 ms', 'max ms', 'runs'],
      [row("load balancer's transition → the client's 'change' event", w.summary.lbToClient), row("agent's push → the client's 'change' event (whole path)", w.summary.agentToClient)],
    ),
    '',
    `Target: under ${w.targetMs} ms from the transition. The path: the transition pokes the view dispatcher (core/plugin/sync.ts), which diffs the view on the next event-loop turn; the WATCH hub sends the delta at once to each subscriber that reads (core/roles/watch-hub.ts); the client applies it and emits 'change'. One load balancer process (bench/lb-host.ts), the scripted agents and the client in the benchmark process, all on loopback.${w.misses.length ? ` Misses: ${w.misses.join('; ')}.` : ''}`,
  ];
}

/** The admin section's results (bench/results/admin-latest.json, its own run), if any. */
function adminResults(): AdminResult | undefined {
  const file = `${ROOT}bench/results/admin-latest.json`;
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as AdminResult) : undefined;
}

/** The drain target is judged on the in-process control request (the path qhcp owns), by its max; the median and p90 are shown. */
function adminTargets(ad: AdminResult | undefined): string[][] {
  if (!ad) return [];
  const rows: string[][] = [];
  for (const impl of ['qhcp-poll', 'qhcp-push'] as const) {
    const s = ad.cells.find((c) => c.impl === impl && c.case === 'drain')?.summary.seen;
    if (!s || s.n === 0) continue;
    rows.push([`admin drain seen at the load balancer in < ${ad.targetMs} ms (control request → DRAINING), ${impl}`, `median ${r1(s.p50)} ms, p90 ${r1(s.p90)} ms, max ${r1(s.max)} ms (${s.n} runs)`, s.max === null || s.p50 === null ? '–' : s.max < ad.targetMs ? 'yes' : s.p90 !== null && s.p90 < ad.targetMs ? 'median and p90 yes, **max no**' : s.p50 < ad.targetMs ? 'median yes, **p90 and max no**' : '**no**']);
  }
  return rows;
}

const ADMIN_CASES: Record<AdminCell['case'], string> = {
  drain: 'drain (control request → DRAINING)',
  ready: 'ready (control request → UP)',
  'maint-file': 'maintenance file written → MAINT',
  'file-gone': 'maintenance file removed → UP',
  'cli-drain': '`qhcp drain` process started → DRAINING',
};

function adminSection(ad: AdminResult | undefined): string[] {
  if (!ad) return ['Not measured yet: `npm run bench -- --only admin`.'];
  const m = ad.machine;
  const busy = ad.loadavgStart[0]! > Number(m.cores) * 0.5 || ad.loadavgEnd[0]! > Number(m.cores) * 0.5;
  const f = (v: number | null | undefined) => (v === null || v === undefined ? '–' : r1(v));
  const rows = ad.cells.map((c) => {
    const s = c.summary.seen;
    const impl = c.impl === 'haproxy' ? 'HAProxy runtime socket' : c.impl;
    const what = c.impl === 'haproxy' ? (c.case === 'drain' ? '`set server … state drain` → answered (DRAIN applied)' : '`set server … state ready` → answered (UP)') : ADMIN_CASES[c.case];
    return [what, impl, s.n, f(s.p50), f(s.p90), f(s.max), f(c.summary.afterReturn.p50), f(c.summary.toPush.p50), f(c.summary.pushToLb.p50), f(c.summary.pushToLb.max)];
  });
  const cli = ad.cells.filter((c) => c.case === 'cli-drain');
  // Where the time of the slow drains went: the half (control socket + agent, or push + load balancer) that took most of it.
  const why: string[] = [];
  for (const c of ad.cells.filter((x) => x.case === 'drain' && x.impl !== 'haproxy')) {
    if (c.toPush.length !== c.seen.length) continue;
    const slow = c.seen.map((v, i) => ({ v, a: c.toPush[i]!, b: c.pushToLb[i]! })).filter((x) => x.v >= ad.targetMs);
    const agentSide = slow.filter((x) => x.a >= x.b).length;
    why.push(`${c.impl}: median ${f(c.summary.toPush.p50)} ms to the agent's push + ${f(c.summary.pushToLb.p50)} ms push to load balancer state (min total ${f(c.summary.seen.min)} ms); ${slow.length} of ${c.seen.length} runs at or over ${ad.targetMs} ms${slow.length ? ` (${slow.map((x) => `${r1(x.a)} + ${r1(x.b)}`).join(', ')} ms): ${agentSide} lost most of it before the agent's push (control socket, agent), ${slow.length - agentSide} after it (QUIC on loopback, load balancer)` : ''}`);
  }
  return [
    `Measured ${ad.startedAt} (${ad.durationS} s) on ${m.cpu}, ${m.cores} cores, Node ${m.node}, ${m.os}; HAProxy ${'version' in ad.haproxy ? ad.haproxy.version : `skipped: ${ad.haproxy.skipped}`}. \`uptime\` at the start: \`${ad.uptime[0] ?? ''}\`; at the end: \`${ad.uptime[1] ?? ''}\`.`,
    '',
    ...(busy ? ['> **The machine was busy during this run** (load average far above the core count: it is shared with other agents\' work). Every figure below includes waiting for a CPU; the tails (p90, max) most of all.', ''] : []),
    `A real \`qhcp server\` (one \`file\` check, the maintenance file, every ${ad.settings.fileIntervalS} s; its control socket in a temporary directory) and a real load balancer (the LoadBalancer of \`qhcp loadbalancer\`, in its own process) checking it every ${ad.settings.lbCheckIntervalS} s, in poll mode and in push mode (a report every ${ad.settings.pushReportIntervalS} s), on loopback; ${ad.settings.runs} repetitions of each change, ${ad.settings.cliRuns} of the CLI. The start is when the benchmark sends the control request with the CLI's own client code (\`controlRequest\`, core/control/socket.ts), writes or removes the file, or starts \`qhcp drain\`; the end is the load balancer's own transition timestamp (its \`transition\` hook, in the load balancer process, sub-millisecond clock): no polling delay. The agent's "health changed" log line (millisecond timestamp, written right after the push) splits the time in two.`,
    '',
    ...table(['change', 'implementation', 'runs', 'median ms', 'p90 ms', 'max ms', 'after the command returned, median ms', 'start → agent pushed, median ms', 'pushed → load balancer state, median ms', 'pushed → load balancer state, max ms'], rows),
    '',
    `Target: an admin drain seen in < ${ad.targetMs} ms (judged on the max; median and p90 shown). "After the command returned": from the control request's answer to the load balancer's new state, negative when the load balancer had it first. The agent sends the HEALTH_REPORT to every connected load balancer before it answers on the control socket, but the answer over a Unix socket to the same host usually arrives a few ms before the load balancer in another process has read and applied the QUIC message; the real CLI returns (its process exits) tens to hundreds of ms after the load balancer has the new state. The maintenance file is seen at the file check's next run: uniform over one interval (${ad.settings.fileIntervalS} s, ±10% jitter), then the same push; a shorter \`interval\` on the file check shortens it in proportion.`,
    ...(why.length
      ? ['', `Where the drain's time goes, in this run: ${why.join('; ')}. The path itself is a few ms (the minimum, and the median, on this machine); a slow run is one process waiting for a CPU at one step, either before the push or after it, rarely both: with the load average near ten times the core count, a process that wakes up can wait tens to hundreds of ms for its slice. That is the machine's, not a cost of the path; the target is met by the median here and should be by the max on an unloaded host (not measured: this machine was never idle). For comparison, HAProxy's runtime-socket command, the same kind of step as qhcp's control socket alone, took a median ${f(ad.cells.find((x) => x.impl === 'haproxy' && x.case === 'drain')?.summary.seen.p50)} ms in the same run.`]
      : []),
    ...(cli.length
      ? ['', `\`qhcp drain\` as a deploy script runs it: most of the time from its start is the CLI's own start-up (Node, TypeScript loading, config lookup), not the drain; once it has sent the request the path is the one above. From its return, the load balancer already had DRAINING (median ${cli.map((c) => `${c.impl} ${f(c.summary.afterReturn.p50)} ms`).join(', ')}).`]
      : []),
    ...(ad.cells.some((c) => c.impl === 'haproxy')
      ? ['', "HAProxy's figure is the round trip of one runtime-socket command (connect, command, answer): it changes the server's state before it answers, and its log line (\"enters drain state\", \"is UP\") is checked for each run. It is the same kind of path as qhcp's control socket alone; qhcp adds the push to a load balancer in another process over QUIC."]
      : []),
    ...(ad.misses.length ? ['', 'Misses:', '', ...ad.misses.map((x) => `- ${x}`)] : []),
  ];
}

function optimizationSection(): string[] {
  const file = `${ROOT}bench/results/optimizations.json`;
  if (!existsSync(file)) return ['(bench/results/optimizations.json is missing.)'];
  const log = JSON.parse(readFileSync(file, 'utf8')) as OptimizationLog;
  const lines = [`Measured ${log.measured}. ${log.method}`, ''];
  const v = (x: number | string) => (typeof x === 'number' ? x.toLocaleString('en') : x);
  log.changes.forEach((c, i) => {
    lines.push(`${i + 1}. **${c.change}** (${c.where}). ${c.why}${c.note ? ` ${c.note}` : ''}`, '');
    if (c.figures.length) lines.push(...table(['figure', 'before', 'after'], c.figures.map((f) => [f.what, v(f.before), v(f.after)])).map((l) => `   ${l}`), '');
  });
  return lines;
}

export function render(res: Results): string {
  const m = res.machine;
  // Read checks against the floor of the implementation the run's qhcp used.
  const impl = res.floor.some((f) => f.impl === 'driver') ? 'driver' : 'lib';
  const floorPush = res.floor.find((f) => f.shape === 'push' && (f.impl ?? 'lib') === impl);
  const floorEcho = res.floor.find((f) => f.shape === 'paced-echo' && (f.impl ?? 'lib') === impl);
  const L: string[] = [
    '# Benchmarks',
    '',
    '<!-- Generated by bench/report.ts from bench/results/*.json; edit the generator, not this file. -->',
    '',
    'qhcp and HAProxy (agent checks) on the same machine, in the same run, everything on loopback.',
    '`npm run bench` runs the quick mode (a few minutes); `npm run bench -- --full` runs longer',
    'windows, more runs, 1000 backends every 100 ms, and poll-mode detection. The raw figures are in',
    '`bench/results/`; `node --import tsx bench/report.ts [file]` regenerates this page from one.',
    '',
    '## This run',
    '',
    ...table(
      ['', ''],
      [
        ['date', `${res.startedAt} (${res.durationS} s, ${res.mode} mode)`],
        ['machine', `${m.cpu}, ${m.cores} cores, ${m.memoryGb} GB, ${m.os}, Linux ${m.kernel}`],
        ['software', `Node ${m.node}, qhcp ${res.qhcpVersion}, @matrixai/quic ${res.quicVersion} (${res.floor.some((f) => f.impl === 'driver') ? 'its quiche binding under qhcp\'s own driver' : 'patched JavaScript layer, before issue 12'}), HAProxy ${'version' in res.haproxy ? res.haproxy.version : `skipped: ${res.haproxy.skipped}`}`],
        ['load average (1/5/15 min)', `start ${res.loadavgStart.join(' / ')}, end ${res.loadavgEnd.join(' / ')}`],
        ...(res.sectionS ? [['time per section', Object.entries(res.sectionS).map(([k, v]) => `${k} ${v} s`).join(', ')]] : []),
        ['check settings', `fall ${res.settings.fall}, rise ${res.settings.rise}, timeout ${res.settings.timeoutFraction} × interval, reconnect = interval; ${res.settings.windowS} s windows${res.settings.costWindowS ? ` (the CPU cells ${res.settings.costWindowS} s)` : ''} after ${res.settings.settleS} s settling, ${res.settings.runs} runs per detection scenario`],
      ],
    ),
    '',
    ...(res.loadavgStart[0]! > Number(m.cores) * 0.5 || res.loadavgEnd[0]! > Number(m.cores) * 0.5
      ? ['> **The machine was busy during this run** (load average above half the core count): other processes competed for the CPU, so the figures are noisy, and latency figures are the most affected. Ratios taken in the same run are the most robust reading.', '']
      : []),
    ...(res.errors.length ? ['Sections that failed in this run:', '', ...res.errors.map((e) => `- ${e}`), ''] : []),
    '## Targets',
    '',
    ...targets(res),
    '',
    '## Load balancer cost',
    '',
    'Each cell: CPU in % of one core · CPU microseconds per backend per check interval · RSS.',
    `The qhcp load balancer runs ${res.cost.some((c) => c.runtime === 'dist') ? 'compiled, as it ships (dist/: bench/lib/compiled.ts transpiles the bench host and points it at dist/; before 2026-11-29 16:00 it ran through tsx, whose loader added about 35 MB of RSS)' : 'from the sources through tsx'}.`,
    '"behind" marks a load balancer that does not keep up (fewer than 90% of the checks the interval implies, more than 1% started over 10% late, or failed checks while every backend is healthy).',
    'qhcp poll sends a HEALTH_REQUEST per check; qhcp push (`--report-interval`) has each agent send a HEALTH_REPORT per interval, each report one check.',
    'HAProxy runs one thread and does two checks per backend per interval (`check` and `agent-check`).',
    'Ratios are qhcp / HAProxy per backend per interval: below 1× qhcp is cheaper.',
    '',
    ...costTable(res),
    '',
    ...scaleSection(res),
    '![Load balancer CPU against N](benchmarks-cpu.svg)',
    '',
    '## Detection',
    '',
    `Interval 1 s, timeout 0.5 s, fall ${res.settings.fall}, rise ${res.settings.rise}, reconnect 1 s. Crash: kill -9 of the backend process (qhcp: a real \`qhcp server\`; HAProxy: the TCP agent). Graceful: qhcp: SIGTERM (the agent sends DRAIN); HAProxy: the agent answers \`drain\`. Recovery: from the backend listening again to UP.`,
    'Bounds: crash fall × interval + timeout; recovery reconnect + (rise − 1) × interval + timeout; graceful 50 ms for qhcp, one agent interval for HAProxy (it learns of a drain only when it next asks).',
    '',
    ...detectTable(res),
    '',
    'Why a qhcp crash takes longer than HAProxy\'s: a killed TCP server answers the next connect with a reset at once, so HAProxy counts a failure per interval without waiting; QUIC runs over UDP, a dead peer answers nothing, and every failed check waits out its timeout (in push mode: the report\'s grace).',
    '',
    '## Service failure: out of rotation, next to HAProxy httpchk',
    '',
    ...serviceSection(serviceResults()),
    '',
    '## Admin changes: drain, ready, the maintenance file',
    '',
    ...adminSection(adminResults()),
    '',
    '## Picks: in process and over QUIC',
    '',
    ...picksSection(picksResults()),
    '',
    '## Watch propagation: a transition to a watching client',
    '',
    ...watchSection(watchResults()),
    '',
    '## Agent cost',
    '',
    ...table(
      ['mode', 'load balancers', 'CPU %', 'µs per check (above idle)', 'RSS MB', 'runs'],
      res.agent.map((a) => [a.mode, a.loadBalancers, r1(a.cpuPct, 2), a.usPerCheck ?? '–', r1(a.rssMb, 0), a.runtime === 'dist' ? 'compiled (dist/)' : a.runtime === 'tsx' ? 'sources through tsx' : '–']),
    ),
    '',
    'One real `qhcp server` with its default plugins (system metrics sampled every second), checked every second by independent load balancers (each its own QUIC connection). It runs as installed: the compiled JavaScript (`npm run build` first), in an empty directory (no config file), with certificate files. Before issue 12 it ran from the sources through tsx, in the repository (whose example qhcp.config.ts adds a custom metrics plugin), with an in-memory certificate: tens of MB more. The rows with one load balancer are measured over 20 s (0.2% of a core is 10 ms of CPU in a 5-s window). `idle-config-ts`: the same agent started in a directory with a qhcp.config.ts that imports `qhcp`, as a user\'s would; until 2026-11-30 loading one cost 27 MB more (88.7 instead of 61.8 MB on this machine: Node\'s module hooks kept a loader thread, a second V8 isolate, for the life of the process, esbuild\'s transformSync a third, and esbuild\'s service process stayed up); the config is now bundled by esbuild in the process\'s own thread and esbuild stopped (core/config/user-modules.ts).',
    '',
    '## Balancing',
    '',
    `In process: \`LoadBalancer.pick()\`, all backends UP with fresh metrics (wall time, from this run, ${res.startedAt.slice(0, 10)}; a run before issue 16 measured the \`pick\` hook path, which walked the pool per pick: see "Picks: in process and over QUIC" for both trees side by side in CPU time).`,
    '',
    ...table(
      ['strategy', 'backends', 'picks/s', 'ns per pick'],
      res.picks.map((p) => [p.strategy, p.n, p.picksPerS?.toLocaleString('en') ?? `– (${p.note ?? ''})`, p.nsPerPick ?? '–']),
    ),
    '',
    'PICK over QUIC (the query port, one connection per client through the public client `qhcp/client`, 10 backends; "in flight" is how many PICKs each client keeps outstanding on its connection: 1 = back to back, more = concurrent callers, pipelined in order; connections are opened before the load balancer\'s CPU is sampled):',
    '',
    ...table(
      ['clients', 'in flight', 'queries/s', 'p50 µs', 'p99 µs', 'load balancer CPU %', 'LB µs CPU per PICK'],
      res.quicPicks.map((q) => [q.clients, q.inFlight ?? 1, q.qps.toLocaleString('en'), q.p50Us ?? '–', q.p99Us ?? '–', r1(q.lbCpuPct), q.lbUsPerPick ?? '–']),
    ),
    '',
    '## The floor: QUIC alone',
    '',
    'No qhcp code: ~100-byte messages on one bidirectional stream per connection (bench/floor.ts), over @matrixai/quic\'s JavaScript layer (`lib`, what qhcp used before issue 12) and over qhcp\'s own driver on the same quiche (`driver`, core/transport/driver.ts), and, for the push shape, no QUIC at all (`udp`: Node\'s dgram alone, one 100-byte datagram per flow per interval to one client socket that answers each with a 40-byte datagram, as a QUIC receiver acknowledges: what any Node program on this machine pays per report). Connections are opened one after another; KB per connection is the client\'s RSS growth while opening them.',
    '',
    ...table(
      ['implementation', 'shape', 'connections', 'interval', 'client µs/message', 'server µs/message', 'round trip p50 / p99 µs', 'open ms', 'KB/connection'],
      res.floor.map((f) => [f.impl ?? 'lib', f.shape, f.conns, f.intervalS ? `${f.intervalS} s` : 'back to back', f.clientUsPerMsg, f.serverUsPerMsg, f.rttUs ? `${f.rttUs.p50} / ${f.rttUs.p99}` : '–', f.openMs ?? '–', f.kbPerConn ?? '–']),
    ),
    '',
  ];
  if (res.floorNote) L.push(res.floorNote, '');
  const p100 = cell(res, 'qhcp-poll', 100, 1);
  const s100 = cell(res, 'qhcp-push', 100, 1);
  if (floorEcho && p100) L.push(`Read against the floor: at N = 100, 1 s, a poll check costs the load balancer ${p100.usPerBackendInterval} µs where a bare round trip costs the client ${floorEcho.clientUsPerMsg} µs (${ratio(p100.usPerBackendInterval, floorEcho.clientUsPerMsg)}).`);
  if (floorPush && s100) L.push(`A pushed report costs it ${s100.usPerBackendInterval} µs where receiving a bare message costs ${floorPush.clientUsPerMsg} µs (${ratio(s100.usPerBackendInterval, floorPush.clientUsPerMsg)}).`);
  const udp = res.floor.find((f) => f.impl === 'udp' && f.shape === 'push');
  const push1000 = res.floor.find((f) => f.impl === 'driver' && f.shape === 'push' && f.conns === 1000);
  const s1000 = cell(res, 'qhcp-push', 1000, 1);
  const h1000 = cell(res, 'haproxy', 1000, 1);
  if (udp && push1000 && s1000)
    L.push(
      `At N = 1000, 1 s: a pushed report costs the load balancer ${s1000.usPerBackendInterval} µs${h1000 ? ` (HAProxy's check and agent check ${h1000.usPerBackendInterval} µs)` : ''}; the same message over the bare driver costs its client ${push1000.clientUsPerMsg} µs, and over Node's dgram alone, with no QUIC, ${udp.clientUsPerMsg} µs. The bare-UDP figure is a floor no Node process reading one datagram per wake-up goes below on this machine; the load balancer gets under the bare driver only by reading many reports per wake-up (receive moderation, docs/operations.md Limits).`,
    );
  L.push(...tcpProxySection());
  L.push(...drainSection());
  L.push(...clusterSection());
  L.push(
    '',
    '## What we tried, and what each change bought',
    '',
    'We profiled one check end to end first (`node --cpu-prof` on the load balancer, then on the floor client). Before any change a poll check cost the load balancer about as much CPU as a bare request/response over @matrixai/quic: qhcp\'s own code (session, DFA, codec, hooks) was under 10% of the profile. The rest was the library\'s JavaScript (per packet: a lock that built an AbortController, a timeout error with a stack trace and a Timer; four Event objects per datagram sent), the UDP syscalls and quiche. So we cut messages per check (push) and patched the library\'s hot path.',
    '',
    ...optimizationSection(),
    '',
    '## Where the rest goes, and what is left',
    '',
    '- Since issue 12 qhcp drives quiche through its native binding with its own driver (core/transport/driver.ts); the library\'s JavaScript layer and its patches are gone (the floor table shows both). Profiled on 2026-11-29 (`--cpu-prof` on the load balancer, `perf` on the floor client and server, each binding call timed alone): per message what remains is quiche\'s recv/send through the binding, V8, the UDP syscalls and the wake-ups. On this 2-core VM a wake-up from idle costs tens of microseconds, and a loopback send also pays for waking the receiving process; Node\'s dgram alone, one datagram per wake answered with one (the floor\'s `udp` row), costs 63-100 µs per message, a third to a half of HAProxy\'s check plus agent check. The load balancer\'s check socket therefore reads in batches (receive moderation, 2% of the interval, at most 20 ms; docs/operations.md, Limits) and starts its checks on the same grid: push at N = 1000 went from 1.24× to 0.87× HAProxy\'s CPU, poll from 2.1× to 1.48×. Acknowledging each report on its own was then ~40% of the main thread (quiche building the ACK, sendmsg); the check connections now defer their acknowledgements (in the next request, or with the third report held back, or at 2.25 periods, announced in max_ack_delay; lost answers and reports repaired by PINGs and the agent\'s echo: docs/protocol.md, Transport): 0.32-0.36 datagrams sent per report instead of 1, 1 per poll instead of 2, push 0.84× -> 0.55-0.6×, poll 1.55× -> 1.25-1.3× (runs of 2026-11-29 late evening and 2026-11-30 early morning). Measured per pushed report on 2026-11-30 (an instrumented build timing each driver section): quiche\'s recv ~18 µs (8 in isolation: the state of 1000 connections is not in cache), the frame\'s decode ~13 (JSON.parse, the duplicate-key check, the schema), the session and checker ~9, the stream read ~5, a third of an acknowledgement ~19 (quiche ~25 and sendmsg ~28 per acknowledgement), the dgram receive path and timers the rest. Per poll the request costs ~80 µs to send (quiche ~39, sendmsg ~38) and the answer ~70 to take in. 0.5× HAProxy in push and 1× in poll would need a cheaper path per datagram than Node\'s dgram and the binding give (no recvmmsg or sendmmsg in Node 20; a result object, an External with a finalizer and two address strings per quiche send). Since 2026-11-30 the CPU cells measure over 15-s windows after 5 s of settling (5-s windows after 1.5 s in quick mode before): both sides read lower, HAProxy most (173-176 -> 121 µs at N = 1000, the figure issue 12 started from), so the ratios above rose (push 0.54× -> 0.59×, poll 1.21× -> 1.7×, runs of 04:34 and 05:12); the earlier quick-mode ratios flattered qhcp. A perf profile of that day (N = 1000 push, 15 s): quiche ~29% of the load balancer\'s CPU, the kernel\'s UDP path ~11%, the frame decode ~9% (JSON.parse a third of it), session and checker ~7%, the third of an acknowledgement\'s send ~6%, V8\'s background threads ~4%; nothing else above 2%.',
    '- Start-up (all UP): a backend is UP after its first good check, and first checks are spread over the first second, so the rest is how fast 1000 connections open. On a quiet machine that was paced by the cap on connection attempts in flight, not by CPU: with 16 in flight the last backend came UP after 3.5-3.95 s, with 48 after 3.1-3.35 s, with 96 after 2.6-3.0 s (each a handshake, HELLO and the first check, mostly waiting on round trips to an agent farm that shares the 2 cores); the cap is 64 since 2026-11-29 (it was set when a new connection had only the check timeout and 1000 at once all missed it: each now has at least 1 s). On a loaded machine (load 5-8) the same start-up takes 7-20 s: CPU then bounds it on both sides.',
    '- Memory at N = 1000 (2026-11-29, /proc maps and heap snapshots of the load balancer): Node\'s own code pages about 40 MB (a bare `node` 31 MB), the malloc heap 43-50 MB (quiche and BoringSSL, about 40-45 KB per connection: live memory, `malloc_trim` frees nothing), V8 32-39 MB (young generation 8 MB, old 22-31 MB); the live JS heap is about 16 MB, of which per-backend objects are about 2 KB per backend (Backend, Channel, Conn, Session, a timer, closures). `qhcp lb` runs Node with `--max-semi-space-size=4` (core/cli/relaunch.ts; on Node 20 a parent process stays, 43 MB RSS of which 8 MB its own, shared code pages the rest; Node >= 22.15 replaces the process): RSS 139-140 -> 122-124 MB at CPU within the noise. Tried and not taken: 2 MB semi-spaces (the old generation grows by what the young saves), 1 MB (poll CPU +10 points), run-time `--optimize-for-size` (8-12 MB less for +30% push CPU). One deadline structure for every check and report timer (instead of a Node timer and closure per check, which lived long enough to be promoted) took 1-3 MB, a tighter old generation (`--heap-growing-percent=20`) 1-3 MB more (not taken): the rest is not JavaScript garbage. What would take it under 110 MB is less memory per QUIC connection in quiche and BoringSSL (about 40-45 KB each, live), which the binding gives no control over.',
    '- The agent (2026-11-29): metric sources, sample and the reports at the sample interval share one fixed-rate tick per period (core/util/tick.ts): 1 wake a second idle instead of 3, 4 instead of 6 when pushing; pushing to 10 load balancers 1.43-1.49% -> 0.44-0.49% of a core. `qhcp server` runs V8 with `--max-opt=1` (baseline tier only: at a few calls a second that is where its code runs anyway): RSS 61-65 -> 55-57 MB, start-up CPU 839 -> 575 ms, the same CPU at 1 and 10 checks/s, 7.1-7.2 -> 8.1-9.7% of a core at 100 checks/s. At one check per second it still takes 0.23-0.29% (40-s windows, alternated): fewer wakes did not show, the cost is cold baseline-tier JavaScript run once a second (about 1.7-2 ms of CPU per poll: the transport\'s send path 22%, its receive path 12%, the /proc reads 16%, the sample 4%, the request handler 4%, the kernel 15%). The bench\'s 5-s windows are too short for figures at the 0.2% level.',
    '- Picks read state kept between changes (core/balance, issue 16): O(1) or O(log N) per pick, O(N) per change of the pool, reports coalesced to at most every 100 ms. PICK over QUIC is bound by the per-message cost of the transport: one PICK at a time per client pays a datagram each way per PICK; a client that keeps several in flight (the public client does, for concurrent callers) shares datagrams, ACKs and wake-ups among them.',
    '',
    '## Poll or push by default',
    '',
    'Push halves the messages per check (one report and its ACK, against request, ACK, response and ACK) and it shows in the load balancer\'s and the agent\'s CPU above. Detection keeps its bound: a missing report is a failed check, counted at the report rate, so a crash is DOWN within fall × interval + timeout, and DRAIN is pushed in both modes. We still keep **poll as the default**, for one reason of meaning: a poll check has a round-trip bound (the check timeout), which operators know from HAProxy and Envoy; a push report only proves the agent is alive and its reports arrive at their rate, so a path that got slow but still delivers is not failed (test/robustness/faults.test.ts, "a server slower than the check timeout", holds for poll only). Fleets where CPU matters more than the round-trip bound turn push on with `--report-interval <seconds>` (or `reportInterval` in qhcp.config.ts).',
    '',
  );
  return L.join('\n');
}

/**
 * The tcp-proxy section, from bench/results/tcp-proxy-latest.json (`node --import tsx
 * bench/tcp-proxy.ts`), a separate run with its own date, machine line and load.
 */
function tcpProxySection(): string[] {
  const file = `${ROOT}bench/results/tcp-proxy-latest.json`;
  if (!existsSync(file)) return [];
  const t = JSON.parse(readFileSync(file, 'utf8')) as import('./tcp-proxy.ts').TcpResults;
  const m = t.machine as { cpu?: string; cores?: number; os?: string; node?: string };
  const by = (k: string) => t.rows.find((r) => r.target === k);
  const q = by('qhcp');
  const h = by('haproxy');
  const d = by('direct');
  const n = by('node-pipe');
  const x = (a: number | null | undefined, b: number | null | undefined) => (a && b ? `${(a / b).toFixed(2)}×` : '—');
  const la = (l: number[]) => l.map((v) => v.toFixed(2)).join(' / ');
  const L = [
    '',
    '## TCP proxy next to HAProxy',
    '',
    `\`node --import tsx bench/tcp-proxy.ts\` (${t.mode} mode, ${t.startedAt}, ${t.durationS} s): the \`tcp-proxy\` plugin (one Node process, round-robin) and HAProxy ${t.haproxy} in TCP mode (\`nbthread 1\`, \`balance roundrobin\`) in front of the same three backends, on loopback; backends, each proxy and the load generator are separate processes. Machine: ${m.cpu ?? '?'}, ${m.cores ?? '?'} cores, ${m.os ?? '?'}, Node ${m.node ?? process.version}; **shared with other agents' work during the run**: load average ${la(t.loadavgStart)} at the start, ${la(t.loadavgEnd)} at the end (1/5/15 min), so absolute figures are low and noisy; the ratios, measured alternately in the same run, are what to read.`,
    '',
    `A connection = connect, read the backend's \`ok\\n\`, close; ${t.settings.concurrency} at once for ${t.settings.windowMs / 1000} s. Throughput: ${t.settings.streams} streams of ${t.settings.sourceMb} MiB from the backends. Medians of ${t.settings.rounds} rounds.`,
    '',
    '| Path | connections/s | proxy CPU (% of a core) | proxy CPU per 1000 connections | throughput (MB/s) | failed connections |',
    '| --- | --- | --- | --- | --- | --- |',
    ...t.rows.map((r) => `| ${({ direct: 'direct (no proxy)', 'node-pipe': 'bare Node proxy (socket.pipe)', qhcp: 'qhcp tcp-proxy', 'qhcp-before': 'qhcp tcp-proxy before the per-connection rewrite (b0deb7c), same run', haproxy: 'HAProxy (tcp)' } as Record<string, string>)[r.target] ?? r.target} | ${r.connsPerS} | ${r.cpuPct ?? '—'} | ${r.cpuMsPer1000 === null ? '—' : `${r.cpuMsPer1000} ms`} | ${r.throughputMBs} | ${r.errors} |`),
    '',
    `**Ratios, qhcp / HAProxy:** connections/s ${x(q?.connsPerS, h?.connsPerS)} (target: at least 0.33×, within 3× of HAProxy), CPU per connection ${x(q?.cpuMsPer1000, h?.cpuMsPer1000)}, throughput ${x(q?.throughputMBs, h?.throughputMBs)}. **qhcp / bare Node proxy:** connections/s ${x(q?.connsPerS, n?.connsPerS)}, throughput ${x(q?.throughputMBs, n?.throughputMBs)} (what qhcp's picks, limits, timeouts, counting and outlier tracking add to Node's sockets). Direct connections/s ${d?.connsPerS ?? '—'} is the ceiling of the generator and backends on this machine: where a proxy is close to it, the generator, not the proxy, is the limit.`,
    '',
    'Fairness: HAProxy runs one thread (`nbthread 1`) and each Node proxy one event loop, so both use at most one core for forwarding; HAProxy does it in C with splice-free buffers, Node pays its stream machinery (Readable/Writable objects, a handle and several listeners per socket) per connection, which is the bare Node row. On this 2-core machine the generator, the backends and both proxies compete for the same cores, and while other agents load it (load average near 20) connections/s mostly measure scheduling: read the CPU per 1000 connections, and compare rows of the same run only.',
    ...(by('qhcp-before') ? ['', `The per-connection rewrite of plugins/proxy/tcp.ts (one object per connection, shared listener functions instead of closures, the socket's own timer for the connect timeout, candidates and targets cached until the view changes, noDelay and a 4096 backlog set at creation) measured in the same run as the version before it: CPU per 1000 connections ${by('qhcp-before')!.cpuMsPer1000} ms → ${q?.cpuMsPer1000 ?? '—'} ms (bare Node ${n?.cpuMsPer1000 ?? '—'} ms). The rounds vary by ±30% under this load, so that is a small gain inside the noise; the profile (node --cpu-prof) showed the remaining cost in Node's own socket setup (net.connect, the Socket and stream state constructors, write/read paths) that the bare pipe pays too.`] : []),
  ];
  return L;
}

/** The drain section, from bench/results/drain-latest.json (`node --import tsx bench/drain-haproxy.ts`). */
function drainSection(): string[] {
  const file = `${ROOT}bench/results/drain-latest.json`;
  if (!existsSync(file)) return ['', '## Agent drain to HAProxy', '', 'Not measured yet: `npm run bench -- --only drain`.'];
  const t = JSON.parse(readFileSync(file, 'utf8')) as import('./drain-haproxy.ts').DrainResults;
  const la = (l: number[]) => l.map((v) => v.toFixed(2)).join(' / ');
  const fails = t.drainMs.filter((x) => x === null).length;
  return [
    '',
    '## Agent drain to HAProxy',
    '',
    `\`node --import tsx bench/drain-haproxy.ts\` (${t.mode} mode, ${t.startedAt}, ${t.durationS} s, load average ${la(t.loadavgStart)} at the start, ${la(t.loadavgEnd)} at the end): a real agent and a real load balancer (one Node process, QUIC on loopback) with the \`haproxy\` sync plugin, and HAProxy ${t.haproxy} (one thread) as a child. Time from \`qhcp drain\` (the agent's control socket) until HAProxy's \`show servers state\` shows the server in drain (polled every ${t.settings.pollMs} ms, so up to ${t.settings.pollMs} ms of the figure is the poll), then \`qhcp ready\` and back; ${t.settings.reps} repetitions.`,
    '',
    '| figure | median | p90 | max | over 5 s |',
    '| --- | --- | --- | --- | --- |',
    `| qhcp drain → HAProxy drain (ms) | ${t.median ?? '—'} | ${t.p90 ?? '—'} | ${t.max ?? '—'} | ${fails} |`,
    '',
    `Target: under 100 ms (${t.max !== null && t.max < 100 && fails === 0 ? 'met in every repetition' : t.median !== null && t.median < 100 ? 'met at the median, not in every repetition' : 'not met'}). The path: the agent pushes a HEALTH_REPORT at once on the admin change, the load balancer marks the backend DRAINING and calls the sync hook, the plugin sends \`set server web/s0 state drain\` on HAProxy's admin socket. Once HAProxy shows drain it sends the server no new request (test/integration/sync.test.ts checks that with real traffic).`,
  ];
}

/** The load balancer group section, from bench/results/cluster-latest.json (`node --import tsx bench/cluster.ts`). */
function clusterSection(): string[] {
  const file = `${ROOT}bench/results/cluster-latest.json`;
  if (!existsSync(file)) return ['', '## Load balancer groups', '', 'Not measured yet: `npm run bench -- --only cluster`.'];
  const t = JSON.parse(readFileSync(file, 'utf8')) as import('./cluster.ts').ClusterResults;
  const la = (l: number[]) => l.map((v) => v.toFixed(2)).join(' / ');
  const m = t.machine as { cpu?: string; cores?: number; node?: string; os?: string };
  const s = t.settings;
  const f = t.failover;
  const cpu = (l: number[]) => `${l.join(' / ')} (sum ${Math.round(l.reduce((a, b) => a + b, 0) * 10) / 10})`;
  return [
    '',
    '## Load balancer groups',
    '',
    `\`node --import tsx bench/cluster.ts\` (${t.startedAt}, ${t.durationS} s, ${m.cpu ?? "unknown CPU"}, ${m.cores ?? "?"} cores, ${m.os ?? ""}, Node ${m.node ?? "?"}; load average ${la(t.loadavgStart)} at the start, ${la(t.loadavgEnd)} at the end: the machine was shared with other work). ${t.backends} agents in one farm process, ${s.members} \`qhcp loadbalancer\` processes checking all of them every ${s.intervalS} s, first independent, then as one group through a real redis-server (R = ${s.replicas}, heartbeat TTL ${s.ttlS} s); each figure over the same ${s.windowS} s window.${t.scaledDown ? ` Scaled down: ${t.scaledDown}.` : ''}`,
    '',
    '| figure | three independent | one group |',
    '| --- | --- | --- |',
    `| checks the agents received, per backend per interval | ${t.independent.checksPerBackendPerInterval} | ${t.group.checksPerBackendPerInterval} (target ${s.replicas}) |`,
    `| CPU per load balancer, % of a core | ${cpu(t.independent.cpuPercent)} | ${cpu(t.group.cpuPercent)} |`,
    `| Redis: commands a second (those run inside our scripts included) | — | ${t.group.redisCommandsPerS} |`,
    `| Redis: commands a second sent by each member | — | ${t.group.memberCommandsPerS} |`,
    `| Redis: used_memory | — | ${t.group.redisUsedMemoryMb} MB |`,
    `| Redis: CPU, % of a core | — | ${t.group.redisCpuPercent} |`,
    '',
    (() => {
      const sum = (l: number[]) => l.reduce((x, y) => x + y, 0);
      const [a, g] = [sum(t.independent.cpuPercent), sum(t.group.cpuPercent)];
      return g > a
        ? `CPU: at N = ${t.backends} the group costs its members more than checking alone (${Math.round(g * 10) / 10}% against ${Math.round(a * 10) / 10}% of a core in all): the checks it saves (a third) are cheaper than what it adds per member (a heartbeat every TTL/10, every result of its share published each interval, the others' results parsed and decided). The saving in checks grows with N and with the check's own cost; the agents see ${t.group.checksPerBackendPerInterval} checks per interval instead of ${t.independent.checksPerBackendPerInterval} at any N.`
        : `CPU: the group costs its members ${Math.round(g * 10) / 10}% of a core in all against ${Math.round(a * 10) / 10}% alone.`;
    })(),
    '',
    `Failover after \`kill -9\` of one member: the other two checked its share (their \`qhcp_cluster_checking_backends\` adding up to R × N) after ${f.ms ?? 'more than 60 000'} ms; target under TTL + one interval = ${f.boundMs} ms (${f.ms !== null && f.ms < f.boundMs ? 'met' : 'not met'}). Backends seen DOWN on the two members during and 5 s after: ${f.downSeen}.${f.note ? ` ${f.note}` : ''} With R = 2 every backend of the dead member still had its other checker throughout; the figure is the time until it has two again. How the group works: docs/operations.md, "Load balancer groups".`,
  ];
}

export function writeReport(res: Results): void {
  // The start-up figures come from their own run (npm run bench:startup, bench/results/startup.json).
  const startup = `${ROOT}bench/results/startup.json`;
  const tail = existsSync(startup) ? `\n${startupSection(JSON.parse(readFileSync(startup, 'utf8')) as StartupResults).join('\n')}` : '';
  writeFileSync(`${ROOT}docs/benchmarks.md`, render(res) + tail);
  writeFileSync(`${ROOT}docs/benchmarks-cpu.svg`, chart(res));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2] ?? `${ROOT}bench/results/latest.json`;
  writeReport(JSON.parse(readFileSync(file, 'utf8')) as Results);
  process.stdout.write(`docs/benchmarks.md and docs/benchmarks-cpu.svg written from ${file}\n`);
}
