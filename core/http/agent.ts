/**
 * The agent's small HTTP listener (off by default; docs/operations.md, "HTTP listener"):
 * GET /metrics (its sessions, requests, the metrics it reports, its sampler's sources, its
 * checks when it runs any) and GET /api/status (the same as JSON). Read-only.
 */
import { Registry, Counter, Gauge } from 'prom-client';
import type { FastifyInstance } from 'fastify';
import { createApp, listen, urlOf } from './server.ts';
import { isLoopback, type HttpAddress } from './common.ts';
import { metricLabel } from './metrics.ts';
import type { Hooks, MetricDefinition } from '../plugin/hooks.ts';
import type { Logger } from '../util/log.ts';
import type { Metrics } from '../protocol/messages.ts';

/** A sampler source's status (plugins/metrics/sampler.ts). */
interface SourceStatus {
  name: string;
  sampledAt: number;
  reads: number;
  failures: number;
  lastError: string | null;
}

/** The parts of AgentServer the listener reads. */
export interface AgentLike {
  readonly node: string;
  readonly hooks: Hooks;
  readonly logger: Logger;
  readonly sessions: ReadonlySet<unknown>;
  readonly stats: object;
  readonly definitions: readonly MetricDefinition[];
  readonly plugins: ReadonlyArray<{ name: string }>;
  readonly pluginFailures: ReadonlyMap<string, number>;
  metricsFor(s: undefined): { metrics: Metrics; ageMs: number };
}

/** Sampler sources of the agent's metric plugins (those that keep a background Sampler). */
function samplerSources(agent: AgentLike): Array<SourceStatus & { plugin: string }> {
  const out: Array<SourceStatus & { plugin: string }> = [];
  for (const p of agent.plugins) {
    const sampler = (p as { sampler?: { status?: () => SourceStatus[] } }).sampler;
    if (typeof sampler?.status !== 'function') continue;
    for (const s of sampler.status()) out.push({ plugin: p.name, name: s.name, sampledAt: s.sampledAt, reads: s.reads, failures: s.failures, lastError: s.lastError });
  }
  return out;
}

interface CheckView {
  service: string;
  name: string;
  type: string;
  status: string | undefined;
  output: string;
  runs: number;
  lastRunAt: number | undefined;
}

/** The agent's runner (core/check/runner.ts), when it has one. */
function runnerOf(agent: AgentLike): { health(): unknown; status(): CheckView[] } | undefined {
  const r = (agent as unknown as { runner?: { health?: unknown; status?: unknown } }).runner;
  return r && typeof r.health === 'function' && typeof r.status === 'function' ? (r as ReturnType<typeof runnerOf>) : undefined;
}

/** The agent's health: verdict, admin state, weight, verdict per service. */
function checksOf(agent: AgentLike): { verdict?: string; admin?: string; weight?: number; reason?: string; services?: Record<string, { verdict: string; reason?: string; since?: number }> } | undefined {
  const v = runnerOf(agent)?.health();
  return v && typeof v === 'object' ? (v as ReturnType<typeof checksOf>) : undefined;
}

export function agentRegistry(agent: AgentLike): Registry {
  const r = new Registry();
  new Gauge({ name: 'qhcp_info', help: 'This agent (value 1), with its node name.', labelNames: ['node', 'role'], registers: [r] }).set({ node: agent.node, role: 'agent' }, 1);
  new Gauge({ name: 'qhcp_agent_sessions', help: 'Load balancer sessions open now.', registers: [r], collect() { this.set(agent.sessions.size); } });
  const stat = (name: string, key: string, help: string) =>
    new Counter({
      name,
      help,
      registers: [r],
      collect() {
        this.reset();
        this.inc((agent.stats as Record<string, number>)[key] ?? 0);
      },
    });
  stat('qhcp_agent_connections_total', 'accepted', 'Connections accepted.');
  stat('qhcp_agent_connections_refused_total', 'refused', 'Connections refused (limits, shutting down).');
  stat('qhcp_agent_protocol_violations_total', 'violations', 'Sessions closed for a protocol violation.');
  stat('qhcp_agent_auth_failures_total', 'authFailures', 'HELLOs rejected by the auth plugin.');
  stat('qhcp_agent_health_requests_total', 'healthRequests', 'HEALTH_REQUESTs answered.');
  stat('qhcp_agent_samples_total', 'samples', 'Background metric samples taken.');
  new Gauge({
    name: 'qhcp_agent_metric',
    help: 'A metric this agent reports to load balancers (name sanitised to [A-Za-z0-9_]), as last sampled.',
    labelNames: ['metric'],
    registers: [r],
    collect() {
      this.reset();
      for (const [k, v] of Object.entries(agent.metricsFor(undefined).metrics)) this.set({ metric: metricLabel(k) }, v);
    },
  });
  new Gauge({ name: 'qhcp_agent_sample_age_seconds', help: 'Age of the metrics a HEALTH_RESPONSE would carry now.', registers: [r], collect() { this.set(agent.metricsFor(undefined).ageMs / 1000); } });
  const perSource = ['plugin', 'source'] as const;
  new Counter({
    name: 'qhcp_agent_sampler_reads_total',
    help: 'Reads of a sampler source (systeminformation call), good or not.',
    labelNames: perSource,
    registers: [r],
    collect() {
      this.reset();
      for (const s of samplerSources(agent)) this.inc({ plugin: s.plugin, source: s.name }, s.reads);
    },
  });
  new Counter({
    name: 'qhcp_agent_sampler_failures_total',
    help: 'Reads of a sampler source that failed or timed out.',
    labelNames: perSource,
    registers: [r],
    collect() {
      this.reset();
      for (const s of samplerSources(agent)) this.inc({ plugin: s.plugin, source: s.name }, s.failures);
    },
  });
  new Gauge({
    name: 'qhcp_agent_sampler_age_seconds',
    help: "Age of a sampler source's cached values (absent before its first good read).",
    labelNames: perSource,
    registers: [r],
    collect() {
      this.reset();
      const now = Date.now();
      for (const s of samplerSources(agent)) if (s.sampledAt > 0) this.set({ plugin: s.plugin, source: s.name }, (now - s.sampledAt) / 1000);
    },
  });
  new Gauge({
    name: 'qhcp_agent_service_verdict',
    help: "The agent's verdict per service (\"\" = the agent's overall verdict): 1 for the current one.",
    labelNames: ['service', 'verdict'],
    registers: [r],
    collect() {
      this.reset();
      const c = checksOf(agent);
      if (!c) return;
      const put = (service: string, verdict: string | undefined) => {
        if (!verdict) return;
        for (const v of ['SERVING', 'DEGRADED', 'NOT_SERVING']) this.set({ service, verdict: v }, v === verdict ? 1 : 0);
      };
      put('', c.verdict);
      for (const [name, s] of Object.entries(c.services ?? {})) put(name, s.verdict);
    },
  });
  const perCheck = ['service', 'check', 'type'] as const;
  new Gauge({
    name: 'qhcp_agent_check_status',
    help: "A check's status after rise/fall (passing, warning, critical, maint): 1 for the current one; absent before its first run.",
    labelNames: [...perCheck, 'status'],
    registers: [r],
    collect() {
      this.reset();
      for (const c of runnerOf(agent)?.status() ?? []) {
        if (!c.status) continue;
        for (const status of ['passing', 'warning', 'critical', 'maint']) this.set({ service: c.service, check: c.name, type: c.type, status }, c.status === status ? 1 : 0);
      }
    },
  });
  new Counter({
    name: 'qhcp_agent_check_runs_total',
    help: 'Runs of a check.',
    labelNames: perCheck,
    registers: [r],
    collect() {
      this.reset();
      for (const c of runnerOf(agent)?.status() ?? []) this.inc({ service: c.service, check: c.name, type: c.type }, c.runs);
    },
  });
  new Gauge({
    name: 'qhcp_agent_weight',
    help: "The agent's weight (percent of the configured one, what `qhcp weight` sets).",
    registers: [r],
    collect() {
      const w = checksOf(agent)?.weight;
      if (typeof w === 'number') this.set(w);
    },
  });
  new Counter({
    name: 'qhcp_plugin_errors_total',
    help: 'Plugin taps that threw, rejected or timed out (contained by the core), by plugin.',
    labelNames: ['plugin'],
    registers: [r],
    collect() {
      this.reset();
      for (const [plugin, n] of agent.pluginFailures) this.inc({ plugin }, n);
    },
  });
  return r;
}

export class AgentHttp {
  readonly app: FastifyInstance;
  readonly registry: Registry;
  address: HttpAddress | undefined;

  constructor(
    readonly agent: AgentLike,
    private readonly at: HttpAddress,
  ) {
    this.app = createApp({ logger: agent.logger, token: undefined }).app;
    this.registry = agentRegistry(agent);
    this.app.get('/metrics', async (_req, reply) => {
      reply.type(this.registry.contentType);
      return this.registry.metrics();
    });
    this.app.get('/api/status', async () => {
      const sample = agent.metricsFor(undefined);
      return {
        node: agent.node,
        role: 'agent',
        sessions: agent.sessions.size,
        stats: agent.stats,
        metrics: sample.metrics,
        ageMs: sample.ageMs,
        definitions: agent.definitions.map((d) => ({ name: d.name, unit: d.unit, help: d.help, plugin: d.plugin })),
        sampler: samplerSources(agent),
        health: checksOf(agent) ?? null,
        checks: runnerOf(agent)?.status() ?? [],
      };
    });
  }

  /** @throws LocalError QHCP_ERR_LISTEN (the agent's listener is only on when configured) */
  async listen(): Promise<HttpAddress | undefined> {
    this.agent.hooks.stop.tap('http', () => this.app.close());
    this.address = await listen(this.app, this.at, true, this.agent.logger, 'agent');
    if (this.address) {
      this.agent.logger.info('HTTP listener started', { url: urlOf(this.address), metrics: `${urlOf(this.address)}metrics` });
      if (!isLoopback(this.address.host)) this.agent.logger.warn('agent HTTP listener is not on loopback: anyone who can reach it reads its metrics', { address: `${this.address.host}:${this.address.port}` });
    }
    return this.address;
  }
}
