/**
 * tcp: the check passes when a TCP connection to host:port is established before the run is
 * aborted (the check's timeout). The socket is destroyed as soon as the run is decided, in every
 * path, so a check never holds a connection open.
 *
 * Reasons: `connected to 127.0.0.1:5432`, `connect ECONNREFUSED 127.0.0.1:5432`,
 * `timed out after 1000 ms`.
 */
import { Socket } from 'node:net';
import { ConfigError } from '../../core/errors.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import type { Check, CheckContext, CheckKind, CheckOutcome } from '../../core/check/types.ts';
import { abortedOutcome, networkErrorText } from './common.ts';

const TYPE = 'tcp';

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['port'],
  properties: {
    host: { type: 'string', minLength: 1, maxLength: 253, default: '127.0.0.1', description: 'host name or IP address to connect to' },
    port: { type: 'integer', minimum: 1, maximum: 65535, description: 'TCP port' },
  },
} as const;

/** The options of one check, as validated (defaults filled in from the schema). */
export type TcpCheckOptions = FromSchema<typeof schema>;

function create(options: TcpCheckOptions, _ctx: CheckContext): Check {
  const host = options.host;
  const port = options.port;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ConfigError([`${TYPE}: port ${JSON.stringify(port)} is not an integer in 1..65535`]);
  if (typeof host !== 'string' || host.length === 0) throw new ConfigError([`${TYPE}: host must be a non-empty string`]);
  const where = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;

  return {
    run(signal: AbortSignal): Promise<CheckOutcome> {
      const started = performance.now();
      if (signal.aborted) return Promise.resolve(abortedOutcome(signal, started));
      return new Promise<CheckOutcome>((resolve) => {
        const socket = new Socket();
        const done = (outcome: CheckOutcome) => {
          signal.removeEventListener('abort', onAbort);
          socket.removeAllListeners();
          socket.on('error', () => {}); // a late error after destroy must not be unhandled
          socket.destroy();
          resolve(outcome);
        };
        const onAbort = () => done(abortedOutcome(signal, started));
        signal.addEventListener('abort', onAbort, { once: true });
        socket.once('connect', () => done({ status: 'passing', output: `connected to ${where}` }));
        socket.once('error', (e) => done({ status: 'critical', output: networkErrorText(e) }));
        socket.connect({ host, port });
      });
    },
  };
}

const tcp: CheckKind<TcpCheckOptions> = { type: TYPE, schema, create };
export default tcp;
