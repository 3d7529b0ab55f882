/**
 * The group's shared state in Redis (through ioredis), all under `qhcp:<group>:`:
 *   epoch          a counter; every join takes the next value (the member's epoch)
 *   members        the set of member ids that have joined
 *   m:<id>         the member's heartbeat: its epoch as value, with a TTL (PX)
 *   r:<id>         a hash, backend address -> the member's last result for it (JSON)
 *   results        the Pub/Sub channel each batch of results is published on
 * Every write goes through one Lua script that first compares m:<id> with the writer's epoch:
 * a member whose heartbeat expired (paused, partitioned) or that another process with the same
 * id replaced (restart) is fenced, and none of its writes land or are published.
 */
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../util/log.ts';
import type { ClusterOptions } from './options.ts';
import { safeUrl } from './options.ts';
import type { AdminState, HealthState, Verdict } from '../health/states.ts';
import { ADMIN_STATES, HEALTH_STATES, VERDICTS } from '../health/states.ts';
import type { Metrics } from '../protocol/messages.ts';
import { sanitize } from '../util/sanitize.ts';

/** One member's last result for one backend, as shared. */
export interface SharedResult {
  /** The backend's address. */
  b: string;
  state: HealthState;
  since: number;
  verdict: Verdict;
  agentAdmin: AdminState;
  agentWeight: number;
  metrics: Metrics;
  reportedAt: number | null;
  ageMs: number | null;
  latencyMs: number | null;
  reason: string | null;
  lastError: string | null;
  failures: number;
  successes: number;
  checks: number;
  /** The agent's node name (from its ACK), when known. */
  name?: string;
  /** When the checking member wrote it (its clock, epoch ms). */
  at: number;
}

/** A published batch: from member `m` at epoch `e`, results `r`, backends it stopped checking `gone`. */
export interface Batch {
  m: string;
  e: number;
  gone: string[];
  r: SharedResult[];
}

const JOIN = `
local e = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], e, 'PX', ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return e`;

// KEYS: members set. ARGV: id, epoch, ttl, member-key prefix, results-key prefix.
// Refreshes our heartbeat when the epoch is still ours, lists the live members (dropping the
// expired ones and their results). Returns { ours (1/0), id1, epoch1, id2, epoch2, ... }.
const BEAT = `
local mine = redis.call('GET', ARGV[4] .. ARGV[1])
local ours = 0
if mine == ARGV[2] then redis.call('PEXPIRE', ARGV[4] .. ARGV[1], ARGV[3]); ours = 1 end
local out = { ours }
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local e = redis.call('GET', ARGV[4] .. id)
  if e then table.insert(out, id); table.insert(out, e)
  else redis.call('SREM', KEYS[1], id); redis.call('DEL', ARGV[5] .. id) end
end
return out`;

// KEYS: member key, results hash. ARGV: epoch, channel, payload head, hash TTL, #gone, gone..., field, value, ...
// The fence: nothing is written or published unless the member key still holds our epoch.
const PUBLISH = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[5])
for i = 6, 5 + n do redis.call('HDEL', KEYS[2], ARGV[i]) end
local values = {}
for i = 6 + n, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  table.insert(values, ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. table.concat(values, ',') .. ']}')
return #values`;

type Scripted = Redis & {
  qhcpJoin(epochKey: string, memberKey: string, membersKey: string, ttl: number, id: string): Promise<number>;
  qhcpBeat(membersKey: string, id: string, epoch: number, ttl: number, memberPrefix: string, resultsPrefix: string): Promise<Array<string | number>>;
  qhcpPublish(memberKey: string, resultsKey: string, ...args: Array<string | number>): Promise<number>;
};

/** Largest batch, result, and results per member read back; anything beyond is dropped. */
const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
const MAX_RESULT_BYTES = 16 * 1024;

export class ClusterStore {
  private readonly cmd: Scripted;
  private readonly sub: Redis;
  private readonly prefix: string;
  private readonly channel: string;
  /** Redis commands sent (bench, metrics). */
  commands = 0;
  /** Batches refused by the fence. */
  fenced = 0;

  constructor(
    readonly opts: ClusterOptions,
    private readonly logger: Logger,
    onBatch: (b: Batch) => void,
  ) {
    this.prefix = `qhcp:${opts.group}:`;
    this.channel = `${this.prefix}results`;
    const base: RedisOptions = {
      // Fail at once while disconnected: the group falls back to checking everything instead of queueing.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: Math.max(500, opts.ttlMs),
      commandTimeout: Math.max(250, Math.round(opts.ttlMs / 2)),
      retryStrategy: (times) => Math.min(100 * times, 1000),
      lazyConnect: true,
    };
    this.cmd = new Redis(opts.url, { ...base, connectionName: 'qhcp' }) as Scripted;
    // The subscriber waits for its SUBSCRIBE to go out (ioredis subscribes again after a reconnect).
    this.sub = new Redis(opts.url, { ...base, enableOfflineQueue: true, maxRetriesPerRequest: null, commandTimeout: undefined, connectionName: 'qhcp-sub' });
    for (const c of [this.cmd, this.sub]) c.on('error', () => {}); // reported by the group, once, through failing commands
    this.cmd.defineCommand('qhcpJoin', { numberOfKeys: 3, lua: JOIN });
    this.cmd.defineCommand('qhcpBeat', { numberOfKeys: 1, lua: BEAT });
    this.cmd.defineCommand('qhcpPublish', { numberOfKeys: 2, lua: PUBLISH });
    this.sub.on('message', (_ch: string, text: string) => {
      const b = parseBatch(text);
      if (b) onBatch(b);
      else this.logger.limited('cluster:bad-batch', 'cluster: a published batch was not understood; ignored', { bytes: text.length });
    });
  }

  /** Connects both clients (bounded by the TTL); false when Redis is not reachable yet (ioredis keeps trying). */
  async connect(): Promise<boolean> {
    const ok = await Promise.all([this.cmd, this.sub].map((c) => c.connect().then(() => true, () => false)));
    void this.sub.subscribe(this.channel).catch(() => {});
    return ok.every(Boolean);
  }

  get where(): string {
    return safeUrl(this.opts.url);
  }

  /** Joins with a new epoch (a fresh heartbeat key). */
  async join(id: string): Promise<number> {
    this.commands++;
    const e = Number(await this.cmd.qhcpJoin(`${this.prefix}epoch`, this.memberKey(id), `${this.prefix}members`, this.opts.ttlMs, id));
    if (this.sub.status === 'end' || this.sub.status === 'wait') await this.sub.connect().catch(() => {});
    return e;
  }

  /** Refreshes the heartbeat (when `epoch` is still ours) and lists the live members with their epochs. */
  async beat(id: string, epoch: number): Promise<{ ours: boolean; members: Map<string, number> }> {
    this.commands++;
    const out = await this.cmd.qhcpBeat(`${this.prefix}members`, id, epoch, this.opts.ttlMs, `${this.prefix}m:`, `${this.prefix}r:`);
    const members = new Map<string, number>();
    for (let i = 1; i + 1 < out.length; i += 2) {
      const e = Number(out[i + 1]);
      if (Number.isSafeInteger(e)) members.set(String(out[i]), e);
    }
    return { ours: Number(out[0]) === 1, members };
  }

  /**
   * Writes and publishes `results` and the backends no longer checked (`gone`), as member `id`
   * at `epoch`. False: fenced (the epoch is no longer ours), nothing was written.
   */
  async publish(id: string, epoch: number, results: readonly SharedResult[], gone: readonly string[]): Promise<boolean> {
    const head = `{"m":${JSON.stringify(id)},"e":${epoch},"gone":${JSON.stringify(gone)},"r":[`;
    const args: Array<string | number> = [epoch, this.channel, head, this.opts.ttlMs * 20, gone.length, ...gone];
    for (const r of results) args.push(r.b, JSON.stringify(r));
    this.commands++;
    const n = Number(await this.cmd.qhcpPublish(this.memberKey(id), `${this.prefix}r:${id}`, ...args));
    if (n < 0) this.fenced++;
    return n >= 0;
  }

  /** Member `id`'s stored results (what a member joining, or rejoining after an outage, reads first). */
  async results(id: string): Promise<SharedResult[]> {
    this.commands++;
    const all = await this.cmd.hgetall(`${this.prefix}r:${id}`);
    const out: SharedResult[] = [];
    for (const text of Object.values(all)) {
      const r = text.length <= MAX_RESULT_BYTES ? parseResult(safeParse(text)) : undefined;
      if (r) out.push(r);
    }
    return out;
  }

  /** Redis's own counters for the benchmark: commands processed, memory used. */
  async info(): Promise<{ commands: number; memory: number }> {
    const text = await this.cmd.info();
    const field = (k: string) => Number(new RegExp(`^${k}:(\\d+)`, 'm').exec(text)?.[1] ?? NaN);
    return { commands: field('total_commands_processed'), memory: field('used_memory') };
  }

  private memberKey(id: string): string {
    return `${this.prefix}m:${id}`;
  }

  /** Removes our heartbeat (a clean stop: the others take over at once rather than after the TTL). */
  async leave(id: string, epoch: number): Promise<void> {
    // Only our own epoch's key: a newer process with the same id keeps its own.
    await this.cmd.eval(`if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]); redis.call('DEL', KEYS[2]) end return 1`, 2, this.memberKey(id), `${this.prefix}r:${id}`, epoch).catch(() => {});
  }

  async close(): Promise<void> {
    this.cmd.disconnect();
    this.sub.disconnect();
  }
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** A published batch, checked; undefined when it is not one. */
export function parseBatch(text: string): Batch | undefined {
  if (text.length > MAX_MESSAGE_BYTES) return undefined;
  const o = safeParse(text) as Partial<Batch> | undefined;
  if (!o || typeof o !== 'object' || typeof o.m !== 'string' || !o.m || o.m.length > 128 || !Number.isSafeInteger(o.e)) return undefined;
  if (!Array.isArray(o.gone) || !Array.isArray(o.r)) return undefined;
  const gone = o.gone.filter((g): g is string => typeof g === 'string' && g.length <= 300);
  const r = o.r.map(parseResult).filter((x): x is SharedResult => x !== undefined);
  return { m: o.m, e: o.e!, gone, r };
}

const numOrNull = (v: unknown, max: number): number | null => (typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= max ? v : null);
const textOrNull = (v: unknown): string | null => (typeof v === 'string' ? sanitize(v, 1000) : null);
const count = (v: unknown): number => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : 0);

/** One result, checked field by field (a member running other code, or a hand-edited key, cannot crash us). */
export function parseResult(v: unknown): SharedResult | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const o = v as Record<string, unknown>;
  if (typeof o.b !== 'string' || !o.b || o.b.length > 300) return undefined;
  if (!HEALTH_STATES.includes(o.state as HealthState) || typeof o.at !== 'number' || !Number.isFinite(o.at)) return undefined;
  const metrics: Metrics = {};
  if (o.metrics && typeof o.metrics === 'object') {
    for (const [k, x] of Object.entries(o.metrics).slice(0, 64)) if (typeof x === 'number' && Number.isFinite(x) && k.length <= 64) metrics[k] = x;
  }
  return {
    b: o.b,
    state: o.state as HealthState,
    since: numOrNull(o.since, 8.64e15) ?? o.at,
    verdict: VERDICTS.includes(o.verdict as Verdict) ? (o.verdict as Verdict) : 'SERVING',
    agentAdmin: ADMIN_STATES.includes(o.agentAdmin as AdminState) ? (o.agentAdmin as AdminState) : 'READY',
    agentWeight: numOrNull(o.agentWeight, 256) ?? 100,
    metrics,
    reportedAt: numOrNull(o.reportedAt, 8.64e15),
    ageMs: numOrNull(o.ageMs, 8.64e7),
    latencyMs: numOrNull(o.latencyMs, 8.64e7),
    reason: textOrNull(o.reason),
    lastError: textOrNull(o.lastError),
    failures: count(o.failures),
    successes: count(o.successes),
    checks: count(o.checks),
    ...(typeof o.name === 'string' && o.name.length <= 128 ? { name: sanitize(o.name, 128) } : {}),
    at: o.at,
  };
}
