/**
 * One backend as the load balancer sees it: its health state and the facts that drive it
 * (core/health/states.ts), the agent's last report, and the checker's bookkeeping. Everyone but
 * the load balancer reads it through `BackendView` (read-only); only the checker
 * (core/health/checker.ts) and the load balancer (core/roles/loadbalancer.ts) write it.
 */
import type { Metrics, ServerStatus } from '../protocol/messages.ts';
import type { Session } from '../protocol/session.ts';
import type { Message } from '../protocol/messages.ts';
import { effectiveAdmin, type AdminState, type HealthFacts, type HealthState, type Verdict } from './states.ts';

/** What balancers, alerts, sync plugins and the status view see of one backend (read-only). */
export interface BackendView {
  /** host:port, or host:port/service when the backend names a service. */
  readonly address: string;
  /** The agent's service this backend follows (`host:4243/web`), if any. */
  readonly service?: string;
  readonly state: HealthState;
  /** Epoch ms when the backend entered its state. */
  readonly since?: number;
  readonly metrics: Metrics;
  /** Epoch ms of the last good report, or null. */
  readonly reportedAt: number | null;
  /** How old that report's sample already was when it arrived (ms), when known. */
  readonly ageMs?: number | null;
  /** Effective weight: the configured weight (default 1) scaled by the agent's weight (percent, default 100). */
  readonly weight: number;
  readonly latencyMs: number | null;
  /** The agent's verdict for the service (SERVING when the agent says nothing). */
  readonly verdict: Verdict;
  /** The agent's admin state (READY / DRAIN / MAINT). */
  readonly agentAdmin: AdminState;
  /** The load balancer's own admin state for this backend, set by operators. */
  readonly adminState: AdminState;
  /** Why the backend is in its state (the agent's reason, the last error, the transition's reason). */
  readonly reason: string | null;
  readonly failures?: number;
  readonly successes?: number;
  readonly lastError?: string | null;
  readonly checks?: number;
}

type HealthResponse = Extract<Message, { type: 'HEALTH_RESPONSE' }>;

export class Backend implements BackendView, HealthFacts {
  state: HealthState = 'UNKNOWN';
  since = Date.now();
  failures = 0;
  successes = 0;
  latencyMs: number | null = null;
  metrics: Metrics = {};
  ageMs: number | null = null;
  reportedAt: number | null = null;
  lastError: string | null = null;
  checks = 0;
  verdict: Verdict = 'SERVING';
  agentAdmin: AdminState = 'READY';
  adminState: AdminState = 'READY';
  /** The agent's weight in percent of the configured one (wire `weight`, default 100). */
  agentWeight = 100;
  reason: string | null = null;
  shuttingDown = false;
  everChecked = false;
  /** In a load balancer group (core/cluster/): the members whose results decided the state now. */
  checkedBy: string[] | undefined;
  /**
   * The agent's node name (its ACK), as last known: from our own connection, or in a group from
   * the members that check it (the metrics' `name` label; it stays known between connections).
   */
  name: string | undefined;
  /** Removed from the load balancer: its loops stop and nothing writes it any more. */
  removed = false;

  // The checker's bookkeeping (core/health/checker.ts).
  /** The live session, when connected. */
  session: Session | undefined;
  /**
   * The checker's one timer structure (checker.ts `timers`): when this backend's next step is
   * due (performance.now() clock; Infinity for none), its place in the heap, and which step.
   */
  deadline = Infinity;
  heapIndex = -1;
  step: 'check' | 'probe' | 'nudge' | 'report' | 'answer' = 'check';
  /** The deadline of the due step while it waits for the check socket to be read past it (checker.ts `postpone`); 0: none. */
  waitsForRead = 0;
  /**
   * The timeout of what is awaited (ms; named when it passes): a pushed report's (from when it
   * began to be awaited), or a poll's answer's (the check timeout). Push mode: when the report
   * timeout passes (performance.now()).
   */
  stepMs = 0;
  reportBy = 0;
  /** Push mode: when the overdue report's port probe goes out (Infinity: done). */
  probeAt = Infinity;
  /** Nudges left before the report's or the answer's timeout. */
  nudgesLeft = 0;
  /** A poll's answer awaited (checker.ts answerWithin, step 'answer'): how it fails at its timeout, and the time between its nudges (ms). */
  answerFail: ((e: Error) => void) | undefined;
  answerNudgeMs = 0;
  checking = false;
  dueAt = 0;
  seq = 0;
  /** The last HEALTH_REQUEST while its answer is late (past the check deadline, connection kept). */
  lateAnswer: Promise<HealthResponse> | undefined;
  /** Push mode: the agent reports on its own (CONFIG_UPDATE reportIntervalMs); its deadline awaits the next report. */
  pushing = false;
  /** The report interval the agent agreed to (CONFIG_ACK). */
  reportMs = 0;
  /** The last failure was ICMP port unreachable: the next connection attempt probes the port first. */
  portClosed = false;

  constructor(
    readonly address: string,
    readonly host: string,
    readonly port: number,
    /** The configured weight (config `servers[].weight`, `setWeight`). */
    public configWeight: number,
    readonly service?: string,
  ) {}

  get weight(): number {
    return (this.configWeight * this.agentWeight) / 100;
  }

  get admin(): AdminState {
    return effectiveAdmin(this);
  }

  status(): ServerStatus {
    return {
      address: this.address,
      state: this.state,
      since: this.since,
      failures: this.failures,
      successes: this.successes,
      latencyMs: this.latencyMs,
      metrics: this.metrics,
      ageMs: this.ageMs,
      reportedAt: this.reportedAt,
      lastError: this.lastError,
      checks: this.checks,
      ...(this.service !== undefined ? { service: this.service } : {}),
      verdict: this.verdict,
      reason: this.reason,
      agentAdmin: this.agentAdmin,
      adminState: this.adminState,
      weight: this.weight,
      ...(this.checkedBy !== undefined ? { checkedBy: this.checkedBy } : {}),
    };
  }
}
