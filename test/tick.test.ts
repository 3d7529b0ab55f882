/**
 * Shared fixed-rate ticks (core/util/tick.ts): callbacks of one period run in one timer callback,
 * in the order they joined; stop() removes one. The fixed-rate rule (nextDue), which the
 * agent's samples and pushed HEALTH_REPORTs keep (push-mode.test.ts covers the reports end to end).
 */
import { expect } from 'chai';
import { every, nextDue } from '../core/util/tick.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) until `cond` holds. */
async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(5);
  }
}

describe('shared ticks (core/util/tick.ts)', () => {
  it('nextDue keeps the due times a period apart, however late a tick ran', () => {
    // Due at 1000, ran at 1300 (a loaded event loop): the next is still due at 2000, not 2300.
    expect(nextDue(1000, 1300, 1000)).to.equal(2000);
    // On time: one period on.
    expect(nextDue(1000, 1000, 1000)).to.equal(2000);
    // Over a few ticks of lateness the schedule does not drift.
    let due = 0;
    for (let i = 1; i <= 10; i++) due = nextDue(due, due + 250, 1000);
    expect(due).to.equal(10_000);
  });

  it('nextDue after a stall longer than a period: one period from now, no burst of catch-up ticks', () => {
    expect(nextDue(1000, 3500, 1000)).to.equal(4500);
    expect(nextDue(1000, 2000, 1000)).to.equal(3000);
  });

  it('runs the callbacks of one period in one timer callback, in the order they joined', async () => {
    const seen: string[] = [];
    // A macrotask between two callbacks of one wake is impossible: an immediate queued by the
    // first runs after the second.
    const a = every(97, () => {
      seen.push('a');
      setImmediate(() => seen.push('immediate'));
    });
    const b = every(97, () => seen.push('b'));
    try {
      await until(() => seen.length >= 6);
      expect(seen.slice(0, 6)).to.deep.equal(['a', 'b', 'immediate', 'a', 'b', 'immediate']);
    } finally {
      a.stop();
      b.stop();
    }
  });

  it('stop() removes one callback; the others keep ticking; stopping all ends the timer', async () => {
    let a = 0;
    let b = 0;
    const ta = every(53, () => a++);
    const tb = every(53, () => b++);
    await until(() => a >= 1);
    ta.stop();
    ta.stop(); // twice is harmless
    const frozen = a;
    await until(() => b >= frozen + 3);
    expect(a).to.equal(frozen);
    tb.stop();
    const last = b;
    await sleep(160);
    expect(b).to.equal(last);
    // A new registration after the last stop starts a fresh timer.
    let c = 0;
    const tc = every(53, () => c++);
    await until(() => c >= 1);
    tc.stop();
  });

  it('a callback that throws does not keep the others from running, and the error is still uncaught', async () => {
    const uncaught: unknown[] = [];
    const listeners = process.listeners('uncaughtException');
    process.removeAllListeners('uncaughtException');
    process.on('uncaughtException', (e) => uncaught.push(e));
    let ran = 0;
    const bad = every(41, () => {
      throw new Error('boom');
    });
    const good = every(41, () => ran++);
    try {
      await until(() => ran >= 1 && uncaught.length >= 1);
      expect((uncaught[0] as Error).message).to.equal('boom');
    } finally {
      bad.stop();
      good.stop();
      process.removeAllListeners('uncaughtException');
      for (const l of listeners) process.on('uncaughtException', l);
    }
  });

  it('rejects a period that is not a number', () => {
    expect(() => every(Number.NaN, () => {})).to.throw(RangeError);
  });
});
