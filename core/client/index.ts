/**
 * `qhcp/client`: ask a running load balancer for its view (STATUS) or for a server (PICK), or
 * follow its view as it changes and pick in this process (watch). See QueryClient and WatchView;
 * `qhcp status`, `qhcp pick` and `qhcp watch` use exactly these.
 */
export { QueryClient, openQuerySession, type QueryOptions } from './query.ts';
export { watch, createWatch, WatchView, type WatchOptions, type WatchChange, type WatchEvents, type WatchedBackend } from './watch.ts';
export type { PickResult } from '../balance/local.ts';
export type { ServerStatus, WatchMember } from '../protocol/messages.ts';
