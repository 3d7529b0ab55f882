/**
 * A load balancer stand-in for the HTTP listener's unit tests: the real hooks (guarded like the
 * real core's), the real default configuration, backend records the tests drive, and the
 * runtime methods of the admin contract (addBackend, removeBackend, setAdmin, setWeight).
 */
import { execFileSync } from 'node:child_process';
import { buildConfig, DEFAULT_SERVER_PORT, type QhcpConfig } from '../../core/config/config.ts';
import { parseAddress, formatAddress } from '../../core/util/address.ts';
import { LocalError } from '../../core/errors.ts';
import { fakeCore, type FakeCore } from '../plugins/fake-core.ts';
import type { Metrics } from '../../core/protocol/messages.ts';
import type { HealthState as ServerState, Verdict } from '../../core/health/states.ts';

export class FakeBackend {
  state: ServerState = 'UNKNOWN';
  since = Date.now();
  failures = 0;
  successes = 0;
  checks = 0;
  latencyMs: number | null = null;
  metrics: Metrics = {};
  reportedAt: number | null = null;
  ageMs: number | null = null;
  lastError: string | null = null;
  adminState: 'READY' | 'DRAIN' | 'MAINT' = 'READY';
  agentAdmin: 'READY' | 'DRAIN' | 'MAINT' = 'READY';
  verdict: Verdict = 'SERVING';
  reason: string | null = null;
  weight = 1;
  name: string | undefined;
  constructor(readonly address: string) {}
}

export interface FakeLb extends FakeCore {
  config: Readonly<QhcpConfig>;
  pluginFailures: Map<string, number>;
  plugins: Array<{ name: string }>;
  stats: { picks: number; queries: number; checks: number; lateChecks: number; postponedSteps: number };
  pickCounts: Map<string, number>;
  backends: FakeBackend[];
  addBackend(address: string): FakeBackend;
  removeBackend(address: string): void;
  setAdmin(address: string, state: 'READY' | 'DRAIN' | 'MAINT'): void;
  setWeight(address: string, weight: number): void;
  /** A check result through the `checked` hook, as the checker reports it. */
  check(address: string, ok: boolean, opts?: { latencyMs?: number; error?: string; metrics?: Metrics }): void;
  /** A state change through the `transition` hook. */
  move(address: string, to: ServerState, reason: string): void;
}

export function fakeLb(servers: string[], over: Partial<QhcpConfig> = {}): FakeLb {
  const core = fakeCore('loadbalancer', { node: 'lb-test' });
  const config = buildConfig(undefined, undefined, { servers, ...over }).config;
  const backends = servers.map((s) => new FakeBackend(s));
  const find = (a: string) => {
    const b = backends.find((x) => x.address === a);
    if (!b) throw new LocalError('QHCP_ERR_CLI_USAGE', `no backend ${a}`);
    return b;
  };
  const lb: FakeLb = Object.assign(core, {
    config,
    pluginFailures: new Map<string, number>(),
    plugins: [] as Array<{ name: string }>,
    stats: { picks: 0, queries: 0, checks: 0, lateChecks: 0, postponedSteps: 0 },
    pickCounts: new Map<string, number>(),
    backends,
    addBackend(address: string) {
      const a = formatAddress(parseAddress(address, DEFAULT_SERVER_PORT));
      if (backends.some((b) => b.address === a)) throw new LocalError('QHCP_ERR_CLI_USAGE', `server ${a} is already a backend`);
      const b = new FakeBackend(a);
      backends.push(b);
      return b;
    },
    removeBackend(address: string) {
      backends.splice(backends.indexOf(find(address)), 1);
    },
    setAdmin(address: string, state: 'READY' | 'DRAIN' | 'MAINT') {
      find(address).adminState = state;
    },
    setWeight(address: string, weight: number) {
      if (!Number.isInteger(weight) || weight < 0 || weight > 256) throw new LocalError('QHCP_ERR_CLI_USAGE', `weight must be 0-256, got ${weight}`);
      find(address).weight = weight;
    },
    check(address: string, ok: boolean, opts: { latencyMs?: number; error?: string; metrics?: Metrics } = {}) {
      const b = find(address);
      b.checks++;
      lb.stats.checks++;
      if (ok) {
        b.failures = 0;
        b.successes++;
        b.latencyMs = opts.latencyMs ?? 1;
        b.metrics = opts.metrics ?? b.metrics;
        b.reportedAt = Date.now();
        b.ageMs = 0;
        b.lastError = null;
      } else {
        b.successes = 0;
        b.failures++;
        b.lastError = opts.error ?? 'RESPONSE_TIMEOUT: no answer';
      }
      core.hooks.checked.call(b, { ok, latencyMs: ok ? b.latencyMs : null, metrics: ok ? b.metrics : null, error: ok ? null : b.lastError, at: Date.now() });
    },
    move(address: string, to: ServerState, reason: string) {
      const b = find(address);
      const from = b.state;
      b.state = to;
      b.since = Date.now();
      core.hooks.transition.call({ server: address, from, to, reason, at: b.since, failures: b.failures, successes: b.successes, lastError: b.lastError, metrics: b.metrics });
    },
  });
  return lb;
}

/** Runs `promtool check metrics` on `text`; undefined when promtool is not installed (outside CI). */
export function promtool(text: string): string | undefined {
  try {
    execFileSync('promtool', ['--version'], { stdio: 'ignore' });
  } catch {
    if (process.env.CI) throw new Error('promtool is missing: .ci/run installs Debian\'s prometheus package');
    return undefined;
  }
  try {
    return execFileSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    throw new Error(`promtool check metrics failed:\n${err.stdout ?? ''}${err.stderr ?? ''}`);
  }
}
