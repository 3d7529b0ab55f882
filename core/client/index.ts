/**
 * `qhcp/client`: ask a running load balancer for its view (STATUS) or for a server (PICK).
 * See QueryClient for the calls; `qhcp status` and `qhcp pick` use exactly this client.
 */
export { QueryClient, type QueryOptions } from './query.ts';
export type { ServerStatus } from '../protocol/messages.ts';
