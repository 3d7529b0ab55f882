/**
 * The admin API (docs/operations.md, "Admin API"): list, add and remove backends, set the
 * load balancer's own admin state (READY / DRAIN / MAINT) and weight of one, at runtime.
 * Every write needs the bearer token and is persisted in the state file when one is set.
 * `Admin` is also what applies the state file at start-up.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { HttpError, ERROR_SCHEMA } from './common.ts';
import { emptyState, loadState, saveState, type AdminState, type StateDoc } from './state-file.ts';
import { QhcpError, errorText } from '../errors.ts';
import { parseBackend } from '../roles/loadbalancer.ts';
import type { BackendJson } from './observer.ts';
import type { Logger } from '../util/log.ts';

export type { AdminState };

/** The load balancer's runtime methods (core/roles/loadbalancer.ts). */
export interface AdminTarget {
  readonly config: { readonly servers: ReadonlyArray<string | { address: string }> };
  readonly backends: ReadonlyArray<{ address: string }> | (() => ReadonlyArray<{ address: string }>);
  addBackend(address: string): { address: string } | unknown;
  removeBackend(address: string): Promise<unknown> | unknown;
  setAdmin(address: string, state: AdminState): unknown;
  setWeight(address: string, weight: number): unknown;
}

function addressesOf(t: AdminTarget): string[] {
  const list = typeof t.backends === 'function' ? t.backends() : t.backends;
  return list.map((b) => b.address);
}

/** Runtime changes, applied to the load balancer and kept in the state document. */
export class Admin {
  readonly doc: StateDoc;

  constructor(
    private readonly lb: AdminTarget,
    private readonly logger: Logger,
    private readonly stateFile?: string,
  ) {
    this.doc = stateFile ? loadState(stateFile) : emptyState();
  }

  /** The canonical address of `address` as the load balancer names it (`127.0.0.1` -> `127.0.0.1:4243`), when it has it. */
  find(address: string): string | undefined {
    const list = addressesOf(this.lb);
    if (list.includes(address)) return address;
    try {
      const canonical = parseBackend(address).address;
      return list.includes(canonical) ? canonical : undefined;
    } catch {
      return undefined;
    }
  }

  /** Applies the state file: removals, additions, then admin states and weights. Problems are logged, not fatal. */
  async applyStartup(): Promise<void> {
    if (!this.stateFile) return;
    const n = { added: 0, removed: 0, admin: 0, weight: 0 };
    for (const a of this.doc.removed) {
      if (this.find(a) && (await this.tryDo(() => this.lb.removeBackend(a), `state file: cannot remove ${a}`))) n.removed++;
    }
    for (const a of this.doc.added) {
      if (!this.find(a) && (await this.tryDo(() => this.lb.addBackend(a), `state file: cannot add ${a}`))) n.added++;
    }
    for (const [a, s] of Object.entries(this.doc.backends)) {
      if (!this.find(a)) continue;
      if (s.admin && s.admin !== 'READY' && (await this.tryDo(() => this.lb.setAdmin(a, s.admin!), `state file: cannot set ${a} to ${s.admin}`))) n.admin++;
      if (s.weight !== undefined && (await this.tryDo(() => this.lb.setWeight(a, s.weight!), `state file: cannot set the weight of ${a}`))) n.weight++;
    }
    this.logger.info('state file applied', { file: this.stateFile, ...n });
  }

  private async tryDo(fn: () => unknown, what: string): Promise<boolean> {
    try {
      await fn();
      return true;
    } catch (e) {
      this.logger.warn(what, { error: errorText(e) });
      return false;
    }
  }

  private save(): void {
    if (!this.stateFile) return;
    try {
      saveState(this.stateFile, this.doc);
    } catch (e) {
      // The change is live; only its persistence failed.
      this.logger.error('state file not written', { file: this.stateFile, error: errorText(e) });
      throw new HttpError(500, 'STATE_FILE', `the change is applied but the state file was not written: ${errorText(e)}`);
    }
  }

  private configured(address: string): boolean {
    return this.lb.config.servers.some((e) => (typeof e === 'string' ? e : e.address) === address);
  }

  add(address: string): string {
    const before = new Set(addressesOf(this.lb));
    let made: unknown;
    try {
      made = this.lb.addBackend(address);
    } catch (e) {
      throw new HttpError(/already|twice|exists/i.test(errorText(e)) ? 409 : 400, /already|twice|exists/i.test(errorText(e)) ? 'CONFLICT' : 'BAD_ADDRESS', e instanceof QhcpError ? e.message : errorText(e));
    }
    const canonical = (made as { address?: string } | undefined)?.address ?? addressesOf(this.lb).find((a) => !before.has(a)) ?? address;
    if (this.doc.removed.includes(canonical)) this.doc.removed = this.doc.removed.filter((a) => a !== canonical);
    else if (!this.configured(canonical) && !this.doc.added.includes(canonical)) this.doc.added.push(canonical);
    this.save();
    this.logger.info('admin: backend added', { server: canonical });
    return canonical;
  }

  async remove(address: string): Promise<string> {
    address = this.need(address);
    await this.lb.removeBackend(address);
    if (this.doc.added.includes(address)) this.doc.added = this.doc.added.filter((a) => a !== address);
    else if (!this.doc.removed.includes(address)) this.doc.removed.push(address);
    delete this.doc.backends[address];
    this.save();
    this.logger.info('admin: backend removed', { server: address });
    return address;
  }

  setAdmin(address: string, state: AdminState): string {
    address = this.need(address);
    this.lb.setAdmin(address, state);
    const entry = (this.doc.backends[address] ??= {});
    if (state === 'READY') delete entry.admin;
    else entry.admin = state;
    if (Object.keys(entry).length === 0) delete this.doc.backends[address];
    this.save();
    this.logger.info('admin: state set', { server: address, admin: state });
    return address;
  }

  setWeight(address: string, weight: number): string {
    address = this.need(address);
    try {
      this.lb.setWeight(address, weight);
    } catch (e) {
      throw new HttpError(400, 'BAD_WEIGHT', errorText(e));
    }
    (this.doc.backends[address] ??= {}).weight = weight;
    this.save();
    this.logger.info('admin: weight set', { server: address, weight });
    return address;
  }

  /** The canonical address. @throws HttpError 404 */
  private need(address: string): string {
    const a = this.find(address);
    if (!a) throw new HttpError(404, 'NO_SUCH_BACKEND', `no backend ${address}`);
    return a;
  }
}

export interface AdminRouteOptions {
  requireToken: (req: FastifyRequest, reply: FastifyReply) => Promise<void>;
  list: () => BackendJson[];
  /** After a change: `redraw` when the set of backends changed. */
  changed: (address: string, redraw: boolean) => void;
  logger: Logger;
  admin: Admin;
}

const ADDRESS = { type: 'string', minLength: 1, maxLength: 300 } as const;
const PARAMS = { type: 'object', required: ['address'], properties: { address: ADDRESS } } as const;
const errors = { 400: ERROR_SCHEMA, 401: ERROR_SCHEMA, 403: ERROR_SCHEMA, 404: ERROR_SCHEMA, 409: ERROR_SCHEMA } as const;

/** Registers /api/backends (reads open, writes with the token). */
export function registerAdmin(app: FastifyInstance, opts: AdminRouteOptions): void {
  const { admin } = opts;
  const one = (address: string) => {
    const canonical = admin.find(address) ?? address;
    const b = opts.list().find((x) => x.address === canonical);
    if (!b) throw new HttpError(404, 'NO_SUCH_BACKEND', `no backend ${address}`);
    return b;
  };
  app.get('/api/backends', async () => ({ backends: opts.list() }));
  app.get<{ Params: { address: string } }>('/api/backends/:address', { schema: { params: PARAMS } }, async (req) => ({ backend: one(req.params.address) }));
  // Authentication first (onRequest): a request without the token learns nothing about the body rules.
  const write = { onRequest: opts.requireToken };
  app.post<{ Body: { address: string } }>(
    '/api/backends',
    { ...write, schema: { body: { type: 'object', additionalProperties: false, required: ['address'], properties: { address: ADDRESS } }, response: errors } },
    async (req, reply) => {
      const address = admin.add(req.body.address);
      opts.changed(address, true);
      return reply.code(201).send({ backend: one(address) });
    },
  );
  app.delete<{ Params: { address: string } }>('/api/backends/:address', { ...write, schema: { params: PARAMS, response: errors } }, async (req) => {
    const removed = await admin.remove(req.params.address);
    opts.changed(removed, true);
    return { removed };
  });
  app.put<{ Params: { address: string }; Body: { state: AdminState } }>(
    '/api/backends/:address/admin',
    { ...write, schema: { params: PARAMS, body: { type: 'object', additionalProperties: false, required: ['state'], properties: { state: { enum: ['READY', 'DRAIN', 'MAINT'] } } }, response: errors } },
    async (req) => {
      const address = admin.setAdmin(req.params.address, req.body.state);
      opts.changed(address, false);
      return { backend: one(address) };
    },
  );
  app.put<{ Params: { address: string }; Body: { weight: number } }>(
    '/api/backends/:address/weight',
    { ...write, schema: { params: PARAMS, body: { type: 'object', additionalProperties: false, required: ['weight'], properties: { weight: { type: 'integer', minimum: 0, maximum: 1000 } } }, response: errors } },
    async (req) => {
      const address = admin.setWeight(req.params.address, req.body.weight);
      opts.changed(address, false);
      return { backend: one(address) };
    },
  );
}
