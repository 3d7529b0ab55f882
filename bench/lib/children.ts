/**
 * Child processes of the benchmark: Node helpers driven over IPC (agent farm, load balancer
 * host), plain processes (haproxy, `qhcp server`), all registered so that `stopChildren` ends
 * exactly what this run started, by PID, on success, failure or Ctrl-C.
 */
import { compiledHost } from './compiled.ts';
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { selfSigned } from '../../core/transport/tls.ts';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The `qhcp` command. */
export const BIN = fileURLToPath(new URL('../../bin/qhcp.js', import.meta.url));

export type FarmRequest =
  | { id: number; cmd: 'start'; count: number; ports?: number[]; sampleInterval?: number; drainGrace?: number; idleTimeout?: number }
  | { id: number; cmd: 'stats' }
  | { id: number; cmd: 'stop' };
export type FarmReply = { id: number; ok: boolean; error?: string; ports?: number[]; stats?: Record<string, number> };

export type LbRequest =
  | { id: number; cmd: 'start'; flags: Record<string, unknown>; instances?: number }
  | { id: number; cmd: 'stats' }
  | { id: number; cmd: 'reset' }
  | { id: number; cmd: 'stop' };
/** `startedAt` (start): Date.now() as the first LoadBalancer.start() was called, after config and plugins. */
export type LbReply = { id: number; ok: boolean; error?: string; stats?: Record<string, number>; port?: number; states?: Record<string, number>; startedAt?: number };
/** `at`: the transition's timestamp (Date.now(), ms); `hr`: the same moment with sub-ms precision (performance.timeOrigin + performance.now()). */
export type LbEvent = { event: 'transition'; lb: number; server: string; from: string; to: string; at: number; hr?: number; reason: string };

/** A request without its id (distributes over the union of requests). */
export type Body<R> = R extends unknown ? Omit<R, 'id'> : never;

const live = new Set<ChildProcess>();

/**
 * Certificate files for the load balancers' query port, made once per run: a load balancer
 * hosted by bench/lb-host.ts then starts as one configured with files does, without generating a
 * certificate in memory (which loads @peculiar/x509 into it and takes a second or two on a busy
 * machine). Passed to every helper through the environment (QHCP_BENCH_CERT_FILE/KEY_FILE); the
 * directory is removed when this process exits.
 */
export async function benchTls(): Promise<void> {
  if (process.env.QHCP_BENCH_CERT_FILE) return;
  const dir = mkdtempSync(join(tmpdir(), 'qhcp-bench-tls-'));
  const tls = await selfSigned(['127.0.0.1']);
  writeFileSync(join(dir, 'cert.pem'), tls.cert);
  writeFileSync(join(dir, 'key.pem'), tls.key, { mode: 0o600 });
  process.env.QHCP_BENCH_CERT_FILE = join(dir, 'cert.pem');
  process.env.QHCP_BENCH_KEY_FILE = join(dir, 'key.pem');
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
}

/** A forked TypeScript helper with request/reply over IPC. */
export class Helper<Req extends { id: number }, Rep extends { id: number }> {
  readonly child: ChildProcess;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (r: Rep) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  readonly exited: Promise<number | null>;
  stderr = '';
  /** Called for IPC messages that are not replies (events). */
  onEvent: ((e: unknown) => void) | undefined;

  /** How the helper runs: the compiled dist/ (as qhcp ships) or the sources through tsx (bench/lib/compiled.ts). */
  readonly runtime: 'dist' | 'tsx';

  constructor(file: string, args: string[] = [], execArgv: string[] = []) {
    const compiled = compiledHost(file);
    this.runtime = compiled ? 'dist' : 'tsx';
    this.child = fork(compiled ?? fileURLToPath(new URL(`../${file}`, import.meta.url)), args, {
      cwd: ROOT,
      execArgv: compiled ? execArgv : ['--import', 'tsx', ...execArgv],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    live.add(this.child);
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-20_000);
    });
    this.exited = new Promise((r) =>
      this.child.once('exit', (code) => {
        live.delete(this.child);
        for (const w of this.waiting.values()) {
          clearTimeout(w.timer);
          w.reject(new Error(`${file} exited (code ${code}): ${this.stderr.slice(-1500)}`));
        }
        this.waiting.clear();
        r(code);
      }),
    );
    this.child.on('message', (m: Rep | { event: string }) => {
      const id = (m as Rep).id;
      const w = id !== undefined ? this.waiting.get(id) : undefined;
      if (w) {
        this.waiting.delete(id);
        clearTimeout(w.timer);
        w.resolve(m as Rep);
      } else if ((m as { event?: string }).event === 'batch') for (const e of (m as unknown as { events: unknown[] }).events) this.onEvent?.(e);
      else this.onEvent?.(m);
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Sends one request and waits (bounded) for its reply. */
  request(body: Body<Req>, timeoutMs = 120_000): Promise<Rep> {
    const id = this.nextId++;
    return new Promise<Rep>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`no reply to ${JSON.stringify(body).slice(0, 80)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
      this.child.send({ ...body, id }, (e) => {
        if (e) {
          clearTimeout(timer);
          this.waiting.delete(id);
          reject(e);
        }
      });
    }).then((r) => {
      if (!(r as unknown as { ok: boolean }).ok) throw new Error((r as unknown as { error?: string }).error ?? 'request failed');
      return r;
    });
  }

  signal(sig: NodeJS.Signals): void {
    if (this.child.exitCode === null && this.child.signalCode === null) process.kill(this.pid, sig);
  }

  /** Asks it to stop, then SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const t = setTimeout(() => this.signal('SIGKILL'), graceMs);
    this.request({ cmd: 'stop' } as unknown as Body<Req>, graceMs).catch(() => this.signal('SIGKILL'));
    await this.exited;
    clearTimeout(t);
  }
}

export type Farm = Helper<FarmRequest, FarmReply>;
export type LbHost = Helper<LbRequest, LbReply>;

/** Starts an agent farm of `count` agents; resolves with it and their ports. */
export async function startFarm(count: number, opts: { ports?: number[]; sampleInterval?: number; drainGrace?: number } = {}): Promise<{ farm: Farm; ports: number[] }> {
  const farm: Farm = new Helper('agent-farm.ts');
  const r = await farm.request({ cmd: 'start', count, ...opts }, 60_000 + count * 200);
  return { farm, ports: r.ports! };
}

/** Several agent farms together: one agent set spread over processes (each farm is one event loop). */
export interface Farms {
  farms: Farm[];
  ports: number[];
  pids: number[];
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts `count` agents over `processes` farms, all at once (each farm starts its agents one
 * after another; several farms use the machine's cores together).
 */
export async function startFarms(count: number, processes: number, opts: { sampleInterval?: number; drainGrace?: number } = {}): Promise<Farms> {
  const farms: Farm[] = [];
  const ports: number[] = [];
  const stop = async (graceMs = 15_000) => {
    await Promise.all(farms.map((f) => f.stop(graceMs).catch(() => {})));
  };
  try {
    const per = Math.ceil(count / processes);
    const sizes: number[] = [];
    for (let left = count; left > 0; left -= per) sizes.push(Math.min(per, left));
    const started = await Promise.allSettled(sizes.map((k) => startFarm(k, opts)));
    for (const r of started) if (r.status === 'fulfilled') farms.push(r.value.farm);
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    for (const r of started) ports.push(...(r as PromiseFulfilledResult<{ ports: number[] }>).value.ports);
  } catch (e) {
    await stop(5000);
    throw e;
  }
  return { farms, ports, pids: farms.map((f) => f.pid), stop };
}

/** A plain child process (haproxy, qhcp), registered for cleanup. */
export function spawnTracked(cmd: string, args: string[], opts: { onLine?: (line: string, at: number) => void; cwd?: string; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, stdio: ['ignore', 'pipe', 'pipe'], ...(opts.env ? { env: opts.env } : {}) });
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (opts.onLine) {
    for (const s of [child.stdout!, child.stderr!]) {
      let buf = '';
      s.setEncoding('utf8').on('data', (d: string) => {
        const at = Date.now();
        buf += d;
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          opts.onLine!(buf.slice(0, i), at);
          buf = buf.slice(i + 1);
        }
      });
    }
  } else {
    child.stdout!.resume();
    child.stderr!.resume();
  }
  return child;
}

/** A real `qhcp server` child; `log()` is the tail of its output. */
export interface AgentChild {
  child: ChildProcess;
  log(): string;
}

/**
 * Starts `qhcp server <args>` and resolves once it logs "server listening" (within `timeoutMs`);
 * when it exits or stays silent it is ended and this throws with its last output.
 */
export async function startAgent(args: string[], opts: { onLine?: (line: string, at: number) => void; cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<AgentChild> {
  let log = '';
  let listening = false;
  const child = spawnTracked(process.execPath, [BIN, 'server', ...args], {
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
    ...(opts.env ? { env: opts.env } : {}),
    onLine: (line, at) => {
      log = (log + line + '\n').slice(-5000);
      if (line.includes('server listening')) listening = true;
      opts.onLine?.(line, at);
    },
  });
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  while (!listening && child.exitCode === null && child.signalCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  if (!listening) {
    await endChild(child, 1000);
    throw new Error(`qhcp server did not start: ${log.slice(-1500)}`);
  }
  return { child, log: () => log };
}

/** Events (a load balancer's transitions) waited for one at a time. */
export class Waiter<E> {
  private readonly waiting = new Set<(e: E) => void>();

  emit(e: E): void {
    for (const f of [...this.waiting]) f(e);
  }

  /** The first event from now on that `match` accepts, or undefined after `timeoutMs`. */
  next(match: (e: E) => boolean, timeoutMs: number): Promise<E | undefined> {
    return new Promise((resolve) => {
      const f = (e: E) => {
        if (!match(e)) return;
        clearTimeout(t);
        this.waiting.delete(f);
        resolve(e);
      };
      const t = setTimeout(() => {
        this.waiting.delete(f);
        resolve(undefined);
      }, timeoutMs);
      this.waiting.add(f);
    });
  }
}

/** Waits until a child has exited (SIGKILL after `graceMs` if a SIGTERM was not enough). */
export async function endChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await gone;
  clearTimeout(t);
}

/** Ends every child this run started that is still running (by PID, SIGKILL). */
export function stopChildren(): void {
  for (const c of live) {
    try {
      if (c.pid && c.exitCode === null && c.signalCode === null) process.kill(c.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  live.clear();
}

/**
 * Runs a bench script's `main` to its end: every child it started (spawnTracked) is ended by PID
 * on exit, on Ctrl-C / SIGTERM (exit 130) and on an error (its stack on stderr, exit 1).
 */
export async function runBench(name: string, main: () => Promise<void>): Promise<void> {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      stopChildren();
      process.exit(130);
    });
  }
  process.on('exit', () => stopChildren());
  await main().catch((e: unknown) => {
    stopChildren();
    process.stderr.write(`${name}: ${String((e as Error)?.stack ?? e)}\n`);
    process.exit(1);
  });
}
