/**
 * The one timeout helper: `work` (a promise, or a function run on the next tick so a synchronous
 * throw becomes a rejection) raced against a timer that is always cleared afterwards.
 * On timeout it rejects with `onTimeout()` or, given `{ value }`, resolves with that value.
 * The work itself is not cancelled: callers that own a resource close it themselves.
 */
export function withTimeout<T>(work: Promise<T> | (() => T | Promise<T>), ms: number, onTimeout: () => Error): Promise<T>;
export function withTimeout<T, F>(work: Promise<T> | (() => T | Promise<T>), ms: number, onTimeout: { value: F }): Promise<T | F>;
export function withTimeout<T, F>(work: Promise<T> | (() => T | Promise<T>), ms: number, onTimeout: (() => Error) | { value: F }): Promise<T | F> {
  const p = typeof work === 'function' ? Promise.resolve().then(work) : work;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<F>((resolve, reject) => {
    timer = setTimeout(() => (typeof onTimeout === 'function' ? reject(onTimeout()) : resolve(onTimeout.value)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}
