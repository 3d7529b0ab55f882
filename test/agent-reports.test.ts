/**
 * The agent pushes HEALTH_REPORTs at a fixed rate: a late timer does not push every later
 * report back (core/roles/agent.ts nextReportDue; push-mode.test.ts covers the reports end to end).
 */
import { expect } from 'chai';
import { nextReportDue } from '../core/roles/agent.ts';

describe('agent reports: nextReportDue', () => {
  it('keeps the due times an interval apart, however late a report went out', () => {
    // Due at 1000, sent at 1300 (a loaded event loop): the next is still due at 2000, not 2300.
    expect(nextReportDue(1000, 1300, 1000)).to.equal(2000);
    // On time: one interval on.
    expect(nextReportDue(1000, 1000, 1000)).to.equal(2000);
    // Over a few ticks of lateness the schedule does not drift.
    let due = 0;
    for (let i = 1; i <= 10; i++) due = nextReportDue(due, due + 250, 1000);
    expect(due).to.equal(10_000);
  });

  it('after a stall longer than an interval: one interval from now, no burst of catch-up reports', () => {
    expect(nextReportDue(1000, 3500, 1000)).to.equal(4500);
    expect(nextReportDue(1000, 2000, 1000)).to.equal(3000);
  });
});
