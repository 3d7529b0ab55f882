/** The repo's plugin tests use the public `qhcp/testing` helpers, as a plugin author would. */
export { fakeCore, build, backend, type FakeCore } from '../../core/testing/index.ts';

/** A seeded PRNG (mulberry32), so distribution tests are repeatable. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
