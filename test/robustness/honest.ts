/**
 * Honest clients for robustness tests: they keep asking while an attack runs and record every
 * answer that is late, wrong or missing. An attack passes only if they saw none.
 *   HonestChecker: an in-process checker session to an agent, HEALTH_REQUEST after HEALTH_REQUEST.
 *   HonestQuery: a query session to a load balancer, STATUS after STATUS, expecting servers UP.
 */
import { expect } from 'chai';
import { connect } from '../../core/transport/quic.ts';
import { Session } from '../../core/protocol/session.ts';
import { QueryClient } from '../../core/client/query.ts';
import { errorText } from '../../core/errors.ts';
import { sleep, waitUntil, startServer, startLoadBalancer, waitForState, stopAll, type QhcpProcess } from '../helpers/procs.ts';

const ANSWER_TIMEOUT_MS = 8000;

abstract class Honest {
  ok = 0;
  readonly problems: string[] = [];
  private running = true;
  private loop: Promise<void> | undefined;

  protected abstract ask(): Promise<void>;
  protected abstract shut(): Promise<void>;

  protected run(everyMs: number): void {
    this.loop = (async () => {
      while (this.running) {
        try {
          await this.ask();
          this.ok++;
        } catch (e) {
          this.problems.push(errorText(e));
          if (this.problems.length > 50) this.running = false;
        }
        await sleep(everyMs);
      }
    })();
  }

  /** Asserts no problem so far and that at least `more` good answers come after now. */
  async expectServing(more = 2, timeoutMs = 20_000): Promise<void> {
    const mark = this.ok;
    await waitUntil(() => this.ok >= mark + more || this.problems.length > 0, timeoutMs, `${more} more honest answers`);
    expect(this.problems, 'honest client problems').to.deep.equal([]);
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    await this.shut().catch(() => {});
  }
}

/** A load-balancer-like checker session to an agent on `port`. */
export class HonestChecker extends Honest {
  private seq = 0;
  private constructor(private readonly session: Session) {
    super();
  }

  static async start(port: number, everyMs = 100): Promise<HonestChecker> {
    const s = new Session(await connect({ host: '127.0.0.1', port, timeoutMs: 5000, keepAliveMs: 1000 }), { role: 'client', onMessage: () => {} });
    const ack = await s.request('HELLO', { versions: [1], role: 'checker', node: 'honest' }, ANSWER_TIMEOUT_MS);
    expect(ack.type).to.equal('ACK');
    const h = new HonestChecker(s);
    h.run(everyMs);
    return h;
  }

  protected async ask(): Promise<void> {
    const seq = ++this.seq;
    const r = await this.session.request('HEALTH_REQUEST', { seq }, ANSWER_TIMEOUT_MS);
    if (r.type !== 'HEALTH_RESPONSE' || r.body.seq !== seq) throw new Error(`wrong answer to seq ${seq}: ${JSON.stringify(r)}`);
    if (Object.keys(r.body.metrics).length === 0) throw new Error('HEALTH_RESPONSE without metrics');
  }

  protected async shut(): Promise<void> {
    this.session.close('honest done');
  }
}

/** A `qhcp status`-like query session to a load balancer; every STATUS must list `servers` UP. */
export class HonestQuery extends Honest {
  private constructor(
    private readonly q: QueryClient,
    private readonly servers: string[],
  ) {
    super();
  }

  static async start(port: number, servers: string[], everyMs = 150): Promise<HonestQuery> {
    const q = await QueryClient.open({ host: '127.0.0.1', port, timeoutMs: ANSWER_TIMEOUT_MS });
    const h = new HonestQuery(q, servers);
    h.run(everyMs);
    return h;
  }

  protected async ask(): Promise<void> {
    const st = await this.q.status();
    for (const a of this.servers) {
      const s = st.servers.find((x) => x.address === a);
      if (!s) throw new Error(`STATUS does not list ${a}`);
      if (s.state !== 'UP') throw new Error(`${a} is ${s.state} (${s.lastError ?? 'no error'})`);
    }
  }

  protected async shut(): Promise<void> {
    await this.q.close();
  }
}

export interface SeenTransition {
  server: string;
  from: string;
  to: string;
  reason: string;
  at: number;
}

/** The transitions a load balancer process logged (the log alert plugin's JSON lines on stderr). */
export function transitionsIn(output: string): SeenTransition[] {
  const out: SeenTransition[] = [];
  for (const line of output.split('\n')) {
    if (!line.includes('"event":"transition"')) continue;
    try {
      const j = JSON.parse(line) as SeenTransition;
      out.push({ server: j.server, from: j.from, to: j.to, reason: j.reason, at: j.at });
    } catch {
      /* a partial line at the end of the buffer */
    }
  }
  return out;
}

/**
 * An agent and a load balancer checking it, both real processes on loopback, plus an honest
 * checker session to the agent and an honest STATUS session to the load balancer.
 */
export interface Rig {
  server: QhcpProcess;
  lb: QhcpProcess;
  serverPort: number;
  lbPort: number;
  serverAddr: string;
  checker: HonestChecker;
  query: HonestQuery;
  /** Asserts both processes are up and both honest clients keep getting correct answers. */
  expectHealthy(): Promise<void>;
  /** Transitions of the agent other than to UP, seen so far (should be none). */
  badTransitions(): SeenTransition[];
  stop(): Promise<void>;
}

export async function startRig(opts: { serverArgs?: string[]; lbArgs?: string[]; interval?: number } = {}): Promise<Rig> {
  const s = await startServer({ args: opts.serverArgs ?? [] });
  const lb = await startLoadBalancer([s.address], { interval: opts.interval ?? 0.5, args: ['--check-timeout', String((opts.interval ?? 0.5) * 0.9), ...(opts.lbArgs ?? [])] });
  await waitForState(lb.port, s.address, 'UP');
  const checker = await HonestChecker.start(s.port);
  const query = await HonestQuery.start(lb.port, [s.address]);
  const rig: Rig = {
    server: s.proc,
    lb: lb.proc,
    serverPort: s.port,
    lbPort: lb.port,
    serverAddr: s.address,
    checker,
    query,
    async expectHealthy() {
      expect(s.proc.running, 'agent process is up').to.equal(true);
      expect(lb.proc.running, 'load balancer process is up').to.equal(true);
      await checker.expectServing();
      await query.expectServing();
    },
    badTransitions: () => transitionsIn(lb.proc.output).filter((x) => x.server === s.address && x.to !== 'UP'),
    async stop() {
      await checker.stop();
      await query.stop();
      await stopAll();
    },
  };
  return rig;
}
