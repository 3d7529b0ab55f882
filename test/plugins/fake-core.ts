/** The repo's plugin tests use the public `qhcp/testing` helpers, as a plugin author would. */
export { fakeCore, build, backend, type FakeCore } from '../../core/testing/index.ts';
