/**
 * Rendezvous (highest random weight) hashing: each backend goes to the R live members whose
 * hash of (member, backend) is highest. Every member computes the same answer from the same
 * member list, with no coordination; when a member leaves, only its backends move (each to the
 * member that ranked next), and when one joins it takes about 1/M of every other member's share.
 */
import { createHash } from 'node:crypto';

/** A member's score for a backend: the first 48 bits of SHA-256(member NUL backend). */
export function score(member: string, backend: string): number {
  return createHash('sha256').update(member).update('\0').update(backend).digest().readUIntBE(0, 6);
}

/** The `r` members (fewer when fewer are live) that check `backend`, highest score first. Ties (never in practice) go by name. */
export function owners(backend: string, members: readonly string[], r: number): string[] {
  if (r >= members.length) return [...members].sort((a, b) => score(b, backend) - score(a, backend) || (a < b ? -1 : 1));
  return members
    .map((m) => ({ m, s: score(m, backend) }))
    .sort((a, b) => b.s - a.s || (a.m < b.m ? -1 : 1))
    .slice(0, r)
    .map((x) => x.m);
}
