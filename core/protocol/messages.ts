/**
 * QHCP messages: their type bytes, their fields (as JSON Schema, checked with ajv), their
 * TypeScript shapes. docs/protocol.md, "Messages", describes the same table; the codec test
 * checks the type bytes against the spec's vectors.
 */
import { createRequire } from 'node:module';
import type { Ajv, Options as AjvOptions, ErrorObject, ValidateFunction } from 'ajv';
import { ProtocolError } from '../errors.ts';
import { HEALTH_STATES, type HealthState } from '../health/states.ts';

/** Type byte of each message. Never renumber: these are on the wire. */
export const MESSAGE_TYPES = {
  HELLO: 0x01,
  ACK: 0x02,
  HEALTH_REQUEST: 0x03,
  HEALTH_RESPONSE: 0x04,
  CONFIG_UPDATE: 0x05,
  CONFIG_ACK: 0x06,
  ERROR: 0x07,
  TERMINATE: 0x08,
  TERMINATE_ACK: 0x09,
  DRAIN: 0x0a,
  PICK: 0x0b,
  PICK_RESPONSE: 0x0c,
  STATUS: 0x0d,
  STATUS_RESPONSE: 0x0e,
  HEALTH_REPORT: 0x0f,
  WATCH: 0x10,
  WATCH_UPDATE: 0x11,
} as const;

export type MessageName = keyof typeof MESSAGE_TYPES;
export const MESSAGE_NAMES = Object.keys(MESSAGE_TYPES) as MessageName[];
const NAME_BY_TYPE = new Map<number, MessageName>(MESSAGE_NAMES.map((n) => [MESSAGE_TYPES[n], n]));

/** The message name for a type byte, or undefined when the byte names none. */
export function messageName(type: number): MessageName | undefined {
  return NAME_BY_TYPE.get(type);
}

/**
 * Who sends each message and what it is for: docs/protocol.md, "Messages", is generated from
 * this (`npm run docs:protocol`), and test/dfa.test.ts checks the DFA tables against the directions.
 */
export const MESSAGE_INFO: Record<MessageName, { direction: 'C→S' | 'S→C' | 'both'; kind: string }> = {
  HELLO: { direction: 'C→S', kind: 'opens the session: versions, role, credentials' },
  ACK: { direction: 'S→C', kind: 'accepts HELLO' },
  HEALTH_REQUEST: { direction: 'C→S', kind: 'request (checker sessions)' },
  HEALTH_RESPONSE: { direction: 'S→C', kind: 'response to HEALTH_REQUEST' },
  CONFIG_UPDATE: { direction: 'C→S', kind: 'request (checker sessions)' },
  CONFIG_ACK: { direction: 'S→C', kind: 'response to CONFIG_UPDATE' },
  ERROR: { direction: 'both', kind: 'fatal error, then close' },
  TERMINATE: { direction: 'C→S', kind: 'graceful end requested by the client' },
  TERMINATE_ACK: { direction: 'S→C', kind: 'response to TERMINATE' },
  DRAIN: { direction: 'S→C', kind: 'push: the server is going away' },
  PICK: { direction: 'C→S', kind: 'request (query sessions)' },
  PICK_RESPONSE: { direction: 'S→C', kind: 'response to PICK' },
  STATUS: { direction: 'C→S', kind: 'request (query sessions)' },
  STATUS_RESPONSE: { direction: 'S→C', kind: 'response to STATUS' },
  HEALTH_REPORT: { direction: 'S→C', kind: 'push: metrics and verdicts, at the interval set by CONFIG_UPDATE and at once on a verdict, admin or weight change' },
  WATCH: { direction: 'C→S', kind: "request (query sessions): stream the load balancer's view" },
  WATCH_UPDATE: { direction: 'S→C', kind: 'response to WATCH (the full view), then push: every change, versioned' },
};

/** Versions of the protocol this implementation speaks (frame header byte and HELLO). */
export const PROTOCOL_VERSION = 1;
export const SUPPORTED_VERSIONS: readonly number[] = [PROTOCOL_VERSION];

/** Limits that are part of message validation. */
export const FIELD_LIMITS = {
  maxNameLength: 128,
  maxReasonLength: 1024,
  maxTokenLength: 16384,
  maxMetrics: 256,
  maxServers: 10000,
  /** A verdict's reason (HEALTH_RESPONSE / HEALTH_REPORT `reason`, per-service `reason`). */
  maxVerdictReasonLength: 256,
  /** Named services in one HEALTH_RESPONSE / HEALTH_REPORT. */
  maxServices: 32,
  /** The weight an agent reports (HAProxy-style: 0 = no new picks, 100 = normal). */
  maxWeight: 256,
  /** A WATCH address pattern (`*` matches any run of characters). */
  maxPatternLength: 300,
  /** A load balancer run id (WATCH_UPDATE `run`). */
  maxRunLength: 64,
} as const;

/** The agent's verdict on the service(s) it fronts. */
export const VERDICTS = ['SERVING', 'DEGRADED', 'NOT_SERVING'] as const;
export type WireVerdict = (typeof VERDICTS)[number];
/** The agent's admin state, set by its operator. */
export const ADMIN_STATES = ['READY', 'DRAIN', 'MAINT'] as const;
export type WireAdmin = (typeof ADMIN_STATES)[number];
/** A service name in `services`. */
export const SERVICE_NAME_PATTERN = '^[A-Za-z0-9_.-]{1,64}$';
export const DEFAULT_WEIGHT = 100;

export interface ServiceHealth {
  verdict: WireVerdict;
  reason?: string;
  /** Epoch ms when the service entered this verdict. */
  since: number;
}

/** The health fields HEALTH_RESPONSE and HEALTH_REPORT carry besides metrics. */
export interface AgentHealth {
  /** Overall verdict: the worst of the agent's services. */
  verdict: WireVerdict;
  reason?: string;
  admin: WireAdmin;
  weight: number;
  services?: Record<string, ServiceHealth>;
}

export type Metrics = Record<string, number>;

export interface ServerStatus {
  address: string;
  /** The load balancer's health state (core/health/states.ts). */
  state: HealthState;
  /** Epoch ms when the server entered its state. */
  since: number;
  /** Consecutive failed checks. */
  failures: number;
  /** Consecutive good checks. */
  successes: number;
  /** Round-trip time of the last good check, ms. */
  latencyMs: number | null;
  metrics: Metrics;
  /** Age of the last report's sample when it was received, ms. */
  ageMs: number | null;
  /** Epoch ms of the last good report. */
  reportedAt: number | null;
  lastError: string | null;
  checks: number;
  /** The agent's service the backend follows (`host:4243/web`), if any. */
  service?: string;
  /** The agent's verdict for the backend (its service's, when it names one). */
  verdict?: WireVerdict;
  /** Why the backend is in its state (sanitised). */
  reason?: string | null;
  /** The agent's admin state. */
  agentAdmin?: WireAdmin;
  /** The load balancer's own admin state for the backend (operators). */
  adminState?: WireAdmin;
  /** Effective weight: the configured weight scaled by the agent's (percent). */
  weight?: number;
  /** In a load balancer group: the members whose results decided the state (docs/operations.md). */
  checkedBy?: string[];
  /** While slow start ramps the backend: the weight picks give it now (core/balance/slow-start.ts). */
  effectiveWeight?: number;
  /** Present (true) when the backend's pool is in panic mode (core/balance/local.ts). */
  panic?: boolean;
}

/**
 * One backend in a WATCH_UPDATE: what a client needs to balance over it in its own process
 * (core/balance/local.ts reads these fields as a BackendView).
 */
export interface WatchMember {
  address: string;
  /** The agent's service the backend follows (`host:4243/web`), if any. */
  service?: string;
  /** The load balancer's health state. */
  state: HealthState;
  /** Epoch ms when the backend entered its state. */
  since: number;
  /** The agent's verdict for the backend. */
  verdict: WireVerdict;
  /** The agent's admin state. */
  agentAdmin: WireAdmin;
  /** The load balancer's own admin state for the backend (operators). */
  adminState: WireAdmin;
  /** Effective weight: the configured weight scaled by the agent's (percent). */
  weight: number;
  /** The last reported metrics (load). */
  metrics: Metrics;
  /** Why the backend is in its state (sanitised), or null. */
  reason: string | null;
  /**
   * How old the last good report was when this member changed (ms, the sample's own age
   * included), or null before any: load-aware balancers treat an old load as unknown.
   */
  reportAgeMs?: number | null;
}

export interface Bodies {
  HELLO: { versions: number[]; role: 'checker' | 'query'; node: string; token?: string; maxFrameBytes?: number };
  ACK: { version: number; node: string; role: 'agent' | 'loadbalancer'; metrics: string[]; maxFrameBytes?: number };
  HEALTH_REQUEST: { seq: number };
  HEALTH_RESPONSE: { seq: number; metrics: Metrics; ageMs: number } & AgentHealth;
  CONFIG_UPDATE: { seq: number; metrics?: string[]; reportIntervalMs?: number };
  CONFIG_ACK: { seq: number; metrics: string[]; reportIntervalMs: number };
  ERROR: { code: number; reason: string };
  TERMINATE: { reason?: string };
  TERMINATE_ACK: Record<string, never>;
  DRAIN: { reason?: string; graceMs: number };
  PICK: { seq: number; key?: string; service?: string };
  PICK_RESPONSE: { seq: number; server: string | null; reason?: string; balancer?: string; why?: string };
  STATUS: { seq: number; service?: string; offset?: number; limit?: number };
  STATUS_RESPONSE: { seq: number; node: string; servers: ServerStatus[]; next?: number; total?: number };
  HEALTH_REPORT: { metrics: Metrics; ageMs: number } & AgentHealth;
  WATCH: { seq: number; service?: string; address?: string };
  WATCH_UPDATE: {
    seq: number;
    run: string;
    version: number;
    kind: 'full' | 'delta';
    /** delta: the version it applies to (the client's current one). */
    from?: number;
    members: WatchMember[];
    /** delta: addresses that left the view. */
    removed?: string[];
    /** full: more pages of this view follow. */
    more?: boolean;
    /** full: sent because the client fell behind and its pending deltas were dropped. */
    resync?: boolean;
  };
}

/** A decoded, validated message. */
export type Message = { [K in MessageName]: { type: K; body: Bodies[K] } }[MessageName];
export type MessageOf<K extends MessageName> = { type: K; body: Bodies[K] };

const seq = { type: 'integer', minimum: 0, maximum: 0xffffffff } as const;
const name = { type: 'string', minLength: 1, maxLength: FIELD_LIMITS.maxNameLength } as const;
const reason = { type: 'string', maxLength: FIELD_LIMITS.maxReasonLength } as const;
/** The one metric-name rule: letters, digits, _ . : - (at most 128, not starting with a digit). */
export const METRIC_NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$';
/** The metric-name rule as a regular expression (hooks, plugins). */
export const METRIC_NAME = new RegExp(METRIC_NAME_PATTERN);
/** The metric-name rule as a JSON schema (wire bodies, plugin options naming a metric). */
export const metricNameSchema = { type: 'string', pattern: METRIC_NAME_PATTERN } as const;
const metricName = metricNameSchema;
/**
 * The documented range of each well-known metric (docs/protocol.md, "Metric ranges"): a value
 * outside it makes the whole message invalid (ERROR 104). `exact` names one metric, `pattern`
 * a family of names; a metric neither names is any finite number. One table: validateBody (after
 * the schema), the agent's clamping of its own plugins' values and the spec's table all read it.
 * A name takes its exact row, else the first pattern row it matches.
 */
export const METRIC_RANGES: ReadonlyArray<{ exact?: string; pattern?: string; min: number; max?: number; meaning: string }> = [
  { exact: 'loadScore', min: 0, max: 1, meaning: 'derived load, 0 idle to 1 saturated' },
  { exact: 'cpu', min: 0, max: 100, meaning: 'percent' },
  { exact: 'memory', min: 0, max: 100, meaning: 'percent' },
  { pattern: '^cpu\\.core[0-9]+$', min: 0, max: 100, meaning: 'percent, per core' },
  { pattern: '(Pct|_pct)$', min: 0, max: 100, meaning: 'any percentage (e.g. disk.root.usedPct)' },
  { exact: 'load1', min: 0, meaning: 'load average, non-negative' },
  { exact: 'load5', min: 0, meaning: 'load average, non-negative' },
  { exact: 'load15', min: 0, meaning: 'load average, non-negative' },
  { exact: 'processes', min: 0, meaning: 'count' },
  { exact: 'uptime', min: 0, meaning: 'seconds' },
  { pattern: '(Bytes|BytesPerSec|Count|_count|_total)$', min: 0, meaning: 'byte counts, rates and counts (e.g. net.rxBytesPerSec)' },
];

const RANGE_PATTERNS = METRIC_RANGES.filter((r) => r.pattern !== undefined).map((r) => ({ re: new RegExp(r.pattern!), r }));
const rangeCache = new Map<string, MetricRange | null>();
type MetricRange = { readonly min: number; readonly max?: number };

/**
 * The range that applies to metric `name`, if any: its exact row, else the first pattern row it
 * matches. Remembered per name (at most 4096 names): the same names come in every report.
 */
export function metricRange(name: string): MetricRange | undefined {
  let r = rangeCache.get(name);
  if (r === undefined) {
    r = METRIC_RANGES.find((e) => e.exact === name) ?? RANGE_PATTERNS.find((p) => p.re.test(name))?.r ?? null;
    if (rangeCache.size < 4096) rangeCache.set(name, r);
  }
  return r ?? undefined;
}

/**
 * A metrics object as the schema checks it: valid names, finite numbers. The ranges of
 * METRIC_RANGES are checked after the schema by `rangeProblem`, through the cached lookup above:
 * as schema keywords (`properties` and `patternProperties`) they cost ajv seven regular
 * expression tests per metric, a third of what decoding a report cost the load balancer.
 */
const metrics = {
  type: 'object',
  maxProperties: FIELD_LIMITS.maxMetrics,
  propertyNames: metricName,
  additionalProperties: { type: 'number' },
} as const;

/** The first metric of `m` (schema-valid) outside its range, as ajv words it; undefined if none. */
function rangeProblem(m: Record<string, number>, path: string): string | undefined {
  for (const name in m) {
    const r = metricRange(name);
    if (!r) continue;
    const v = m[name]!;
    if (r.max !== undefined && v > r.max) return `${path}/${name}: must be <= ${r.max}`;
    if (v < r.min) return `${path}/${name}: must be >= ${r.min}`;
  }
  return undefined;
}

/** The metric ranges of every metrics object a (schema-valid) message carries. */
function metricRangesProblem(type: MessageName, body: Record<string, unknown>): string | undefined {
  if (type === 'HEALTH_RESPONSE' || type === 'HEALTH_REPORT') return rangeProblem(body.metrics as Record<string, number>, '/metrics');
  const list = type === 'STATUS_RESPONSE' ? 'servers' : type === 'WATCH_UPDATE' ? 'members' : undefined;
  if (!list) return undefined;
  const items = body[list] as Array<{ metrics: Record<string, number> }>;
  for (let i = 0; i < items.length; i++) {
    const p = rangeProblem(items[i]!.metrics, `/${list}/${i}/metrics`);
    if (p) return p;
  }
  return undefined;
}
const metricList = { type: 'array', maxItems: FIELD_LIMITS.maxMetrics, uniqueItems: true, items: metricName } as const;
const ms = { type: 'integer', minimum: 0, maximum: 86_400_000 } as const;
const nullable = <T extends object>(s: T) => ({ anyOf: [s, { type: 'null' }] });
/** Epoch milliseconds: an integer from 0 to the end of year 9999. */
const epochMs = { type: 'integer', minimum: 0, maximum: 253_402_300_799_999 } as const;
const verdict = { enum: [...VERDICTS] } as const;
const verdictReason = { type: 'string', maxLength: FIELD_LIMITS.maxVerdictReasonLength } as const;
const health = {
  verdict,
  reason: verdictReason,
  admin: { enum: [...ADMIN_STATES] },
  weight: { type: 'integer', minimum: 0, maximum: FIELD_LIMITS.maxWeight },
  services: {
    type: 'object',
    maxProperties: FIELD_LIMITS.maxServices,
    propertyNames: { type: 'string', pattern: SERVICE_NAME_PATTERN },
    additionalProperties: {
      type: 'object',
      additionalProperties: false,
      properties: { verdict, reason: verdictReason, since: epochMs },
      required: ['verdict', 'since'],
    },
  },
} as const;
const HEALTH_REQUIRED = ['verdict', 'admin', 'weight'];
/** The largest frame payload a peer accepts (HELLO / ACK `maxFrameBytes`). */
const frameLimit = { type: 'integer', minimum: 1024, maximum: 16 * 1024 * 1024 } as const;
/** A counter: an integer JSON carries exactly. */
const count = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;

function obj(properties: Record<string, object>, required: string[] = Object.keys(properties), extra: object = {}) {
  return { type: 'object', additionalProperties: false, properties, required, ...extra };
}

/** The schema of each message body (v1: unknown fields are rejected). */
export const MESSAGE_SCHEMAS: Record<MessageName, object> = {
  HELLO: obj(
    {
      versions: { type: 'array', minItems: 1, maxItems: 16, uniqueItems: true, items: { type: 'integer', minimum: 1, maximum: 255 } },
      role: { enum: ['checker', 'query'] },
      node: name,
      token: { type: 'string', minLength: 1, maxLength: FIELD_LIMITS.maxTokenLength },
      maxFrameBytes: frameLimit,
    },
    ['versions', 'role', 'node'],
  ),
  ACK: obj({ version: { type: 'integer', minimum: 1, maximum: 255 }, node: name, role: { enum: ['agent', 'loadbalancer'] }, metrics: metricList, maxFrameBytes: frameLimit }, ['version', 'node', 'role', 'metrics']),
  HEALTH_REQUEST: obj({ seq }),
  HEALTH_RESPONSE: obj({ seq, metrics, ageMs: ms, ...health }, ['seq', 'metrics', 'ageMs', ...HEALTH_REQUIRED]),
  CONFIG_UPDATE: obj(
    { seq, metrics: metricList, reportIntervalMs: { anyOf: [{ const: 0 }, { type: 'integer', minimum: 100, maximum: 3_600_000 }] } },
    ['seq'],
  ),
  CONFIG_ACK: obj({ seq, metrics: metricList, reportIntervalMs: ms }),
  ERROR: obj({ code: { type: 'integer', minimum: 0, maximum: 65535 }, reason }),
  TERMINATE: obj({ reason }, []),
  TERMINATE_ACK: obj({}, []),
  DRAIN: obj({ reason, graceMs: ms }, ['graceMs']),
  PICK: obj({ seq, key: { type: 'string', maxLength: 256 }, service: { type: 'string', pattern: SERVICE_NAME_PATTERN } }, ['seq']),
  PICK_RESPONSE: obj({ seq, server: nullable({ type: 'string', maxLength: 300 }), reason, balancer: name, why: reason }, ['seq', 'server']),
  STATUS: obj(
    {
      seq,
      service: { type: 'string', pattern: SERVICE_NAME_PATTERN },
      offset: { type: 'integer', minimum: 0, maximum: FIELD_LIMITS.maxServers },
      limit: { type: 'integer', minimum: 1, maximum: FIELD_LIMITS.maxServers },
    },
    ['seq'],
  ),
  STATUS_RESPONSE: obj({
    seq,
    node: name,
    servers: {
      type: 'array',
      maxItems: FIELD_LIMITS.maxServers,
      items: obj(
        {
          address: { type: 'string', minLength: 1, maxLength: 300 },
          state: { enum: [...HEALTH_STATES] },
          since: epochMs,
          failures: count,
          successes: count,
          latencyMs: nullable({ type: 'number', minimum: 0, maximum: 86_400_000 }),
          metrics,
          ageMs: nullable(ms),
          reportedAt: nullable(epochMs),
          lastError: nullable(reason),
          checks: count,
          service: { type: 'string', pattern: SERVICE_NAME_PATTERN },
          verdict,
          reason: nullable(reason),
          agentAdmin: { enum: [...ADMIN_STATES] },
          adminState: { enum: [...ADMIN_STATES] },
          weight: { type: 'number', minimum: 0, maximum: 2560 },
          checkedBy: { type: 'array', maxItems: 64, items: name },
          effectiveWeight: { type: 'number', minimum: 0, maximum: 2560 },
          panic: { type: 'boolean' },
        },
        ['address', 'state', 'since', 'failures', 'successes', 'latencyMs', 'metrics', 'ageMs', 'reportedAt', 'lastError', 'checks'],
      ),
    },
    next: { type: 'integer', minimum: 1, maximum: FIELD_LIMITS.maxServers },
    total: { type: 'integer', minimum: 0, maximum: FIELD_LIMITS.maxServers },
  }, ['seq', 'node', 'servers']),
  HEALTH_REPORT: obj({ metrics, ageMs: ms, ...health }, ['metrics', 'ageMs', ...HEALTH_REQUIRED]),
  WATCH: obj({ seq, service: { type: 'string', pattern: SERVICE_NAME_PATTERN }, address: { type: 'string', minLength: 1, maxLength: FIELD_LIMITS.maxPatternLength } }, ['seq']),
  WATCH_UPDATE: obj(
    {
      seq,
      run: { type: 'string', pattern: `^[A-Za-z0-9_-]{1,${FIELD_LIMITS.maxRunLength}}$` },
      version: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
      kind: { enum: ['full', 'delta'] },
      from: count,
      members: {
        type: 'array',
        maxItems: FIELD_LIMITS.maxServers,
        items: obj(
          {
            address: { type: 'string', minLength: 1, maxLength: 300 },
            service: { type: 'string', pattern: SERVICE_NAME_PATTERN },
            state: { enum: [...HEALTH_STATES] },
            since: epochMs,
            verdict,
            agentAdmin: { enum: [...ADMIN_STATES] },
            adminState: { enum: [...ADMIN_STATES] },
            weight: { type: 'number', minimum: 0, maximum: 2560 },
            metrics,
            reason: nullable(reason),
            reportAgeMs: nullable(ms),
          },
          ['address', 'state', 'since', 'verdict', 'agentAdmin', 'adminState', 'weight', 'metrics', 'reason'],
        ),
      },
      removed: { type: 'array', maxItems: FIELD_LIMITS.maxServers, items: { type: 'string', minLength: 1, maxLength: 300 } },
      more: { type: 'boolean' },
      resync: { type: 'boolean' },
    },
    ['seq', 'run', 'version', 'kind', 'members'],
    // A delta names the version it applies to and nothing of a full view's paging; a full view the reverse.
    {
      if: { properties: { kind: { const: 'delta' } } },
      then: { properties: { from: count, more: false, resync: false }, required: ['from'] },
      else: { properties: { from: false, removed: false } },
    },
  ),
};

/** The ajv options every message validator is compiled with (at run time, or at build time). */
export const VALIDATOR_OPTIONS: AjvOptions = { allErrors: false, strict: true };

const require = createRequire(import.meta.url);

/**
 * The validator compiled at build time for `type` (scripts/gen-validators.mjs writes
 * dist/core/protocol/validators/TYPE.cjs with ajv's standalone code), when it was compiled from
 * exactly today's schema; otherwise undefined. Loading ajv and compiling a schema costs a short
 * command like `qhcp status` more than everything else it does (docs/benchmarks.md, Start-up).
 */
function precompiled(type: MessageName): ValidateFunction | undefined {
  try {
    const m = require(`./validators/${type}.cjs`) as { default?: ValidateFunction; schema?: string };
    return m.schema === JSON.stringify(MESSAGE_SCHEMAS[type]) ? m.default : undefined;
  } catch {
    return undefined;
  }
}

// Compiled on first use, per message type: a `qhcp status` compiles the four it meets, not all.
let ajv: Ajv | undefined;
const VALIDATORS = new Map<MessageName, ValidateFunction>();
function validatorOf(type: MessageName): ValidateFunction {
  let v = VALIDATORS.get(type);
  if (!v) {
    v = precompiled(type) ?? (ajv ??= new (require('ajv') as typeof import('ajv')).Ajv(VALIDATOR_OPTIONS)).compile(MESSAGE_SCHEMAS[type]);
    VALIDATORS.set(type, v);
  }
  return v;
}

/** One line for the first ajv error, e.g. "/seq: must be integer". */
export function ajvErrorText(errors: ErrorObject[] | null | undefined): string {
  const e = errors?.[0];
  if (!e) return 'invalid';
  const extra = e.keyword === 'additionalProperties' ? ` (${(e.params as { additionalProperty: string }).additionalProperty})` : '';
  return `${e.instancePath || '/'}: ${e.message ?? 'invalid'}${extra}`;
}

/**
 * Checks a decoded body against its message's schema.
 * @throws ProtocolError INVALID_MESSAGE naming the first bad field
 */
export function validateBody<K extends MessageName>(type: K, body: unknown): MessageOf<K> {
  const validate = validatorOf(type);
  if (!validate(body)) {
    throw new ProtocolError('INVALID_MESSAGE', `${type} ${ajvErrorText(validate.errors)}`);
  }
  const range = metricRangesProblem(type, body as Record<string, unknown>);
  if (range) throw new ProtocolError('INVALID_MESSAGE', `${type} ${range}`);
  return { type, body: body as Bodies[K] };
}
