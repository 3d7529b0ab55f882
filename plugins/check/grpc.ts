/**
 * grpc: the standard gRPC health protocol, `grpc.health.v1.Health/Check`, for one service name
 * (empty = the server as a whole). SERVING passes; NOT_SERVING, UNKNOWN and SERVICE_UNKNOWN are
 * critical with that status; a failed call is critical with its gRPC code and details
 * (`UNAVAILABLE: ...`, `UNIMPLEMENTED: ...` when the server has no health service).
 *
 * `@grpc/grpc-js` (and `@grpc/proto-loader` for the inline health proto) are imported on the
 * first run, never at module load, so an agent without grpc checks never loads them. One channel
 * is kept between runs (HTTP/2, as gRPC clients do); after a failed call it is closed and the next
 * run dials afresh, so a server that comes back is seen at once instead of after grpc-js's
 * reconnect backoff.
 */
import { ConfigError, errorText } from '../../core/errors.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import type { Check, CheckContext, CheckKind, CheckOutcome } from '../../core/check/types.ts';
import { abortedOutcome, readTlsFiles, TLS_FILES_SCHEMA, MAX_REASON } from './common.ts';
import { sanitize } from '../../core/util/sanitize.ts';

const TYPE = 'grpc';

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['address'],
  properties: {
    address: { type: 'string', minLength: 1, maxLength: 512, description: 'gRPC target: host:port, [v6]:port, or a grpc-js target such as dns:///host:port or unix:/path' },
    service: { type: 'string', maxLength: 256, default: '', description: 'service name asked for ("" = the whole server)' },
    tls: {
      type: 'object',
      additionalProperties: false,
      properties: {
        enabled: { type: 'boolean', default: false, description: 'use TLS (with the system CAs unless ca is given)' },
        ...TLS_FILES_SCHEMA,
        servername: { type: 'string', minLength: 1, description: 'TLS server name if not the address host' },
      },
    },
  },
} as const;

/** The options of one check, as validated (defaults filled in from the schema). */
export type GrpcCheckOptions = FromSchema<typeof schema>;

/** grpc.health.v1 as a protobuf.js JSON descriptor (the .proto inline, no file to ship or find). */
export const HEALTH_PROTO = {
  nested: {
    grpc: {
      nested: {
        health: {
          nested: {
            v1: {
              nested: {
                HealthCheckRequest: { fields: { service: { type: 'string', id: 1 } } },
                HealthCheckResponse: {
                  fields: { status: { type: 'ServingStatus', id: 1 } },
                  nested: { ServingStatus: { values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } } },
                },
                Health: {
                  methods: {
                    Check: { requestType: 'HealthCheckRequest', responseType: 'HealthCheckResponse' },
                    Watch: { requestType: 'HealthCheckRequest', responseType: 'HealthCheckResponse', responseStream: true },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

type GrpcModule = typeof import('@grpc/grpc-js');
type HealthClient = import('@grpc/grpc-js').Client & {
  Check(
    req: { service: string },
    opts: import('@grpc/grpc-js').CallOptions,
    cb: (err: import('@grpc/grpc-js').ServiceError | null, res?: { status: string }) => void,
  ): import('@grpc/grpc-js').ClientUnaryCall;
};

let loaded: Promise<{ grpc: GrpcModule; Health: new (address: string, creds: import('@grpc/grpc-js').ChannelCredentials, options?: object) => HealthClient }> | undefined;

/** grpc-js and the Health client constructor, imported once on first use. */
export function loadHealth(): NonNullable<typeof loaded> {
  loaded ??= (async () => {
    const [grpc, protoLoader] = await Promise.all([import('@grpc/grpc-js'), import('@grpc/proto-loader')]);
    const def = protoLoader.fromJSON(HEALTH_PROTO as Parameters<typeof protoLoader.fromJSON>[0], { enums: String, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as { grpc: { health: { v1: { Health: new (...a: never[]) => HealthClient } } } };
    return { grpc, Health: pkg.grpc.health.v1.Health as never };
  })();
  return loaded;
}

/** Checks a host:port address (the common form); grpc-js URI targets (dns:, unix:, ipv4:) pass as they are. */
function checkAddress(address: string): void {
  if (typeof address !== 'string' || address.length === 0) throw new ConfigError([`${TYPE}: address must be a non-empty string`]);
  if (/^[a-z][a-z0-9+.-]*:/i.test(address) && !/^[^:]+:\d+$/.test(address)) return; // a scheme (dns:, unix:, ipv4:, ipv6:)
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d+)$/.exec(address);
  if (!m) throw new ConfigError([`${TYPE}: address ${JSON.stringify(address)} is not host:port`]);
  const port = Number(m[3]);
  if (port < 1 || port > 65535) throw new ConfigError([`${TYPE}: port ${port} in ${JSON.stringify(address)} is out of range 1..65535`]);
}

function create(options: GrpcCheckOptions, ctx: CheckContext): Check {
  checkAddress(options.address);
  const service = options.service;
  const tls: Partial<NonNullable<GrpcCheckOptions['tls']>> = options.tls ?? {};
  const files = readTlsFiles(ctx, TYPE, tls);
  const useTls = tls.enabled === true || tls.ca !== undefined || tls.cert !== undefined;
  const pem = useTls ? { ca: files.ca ?? null, cert: files.cert ?? null, key: files.key ?? null } : undefined;
  let client: HealthClient | undefined;
  const drop = () => {
    client?.close();
    client = undefined;
  };

  return {
    async run(signal: AbortSignal): Promise<CheckOutcome> {
      const started = performance.now();
      if (signal.aborted) return abortedOutcome(signal, started);
      let mod: Awaited<ReturnType<typeof loadHealth>>;
      try {
        mod = await loadHealth();
      } catch (e) {
        return { status: 'critical', output: sanitize(`cannot load @grpc/grpc-js: ${errorText(e)}`, MAX_REASON) };
      }
      const { grpc, Health } = mod;
      if (signal.aborted) return abortedOutcome(signal, started);
      if (!client) {
        const creds = pem ? grpc.credentials.createSsl(pem.ca, pem.key, pem.cert) : grpc.credentials.createInsecure();
        const channelOptions: Record<string, unknown> = { 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 1000 };
        if (tls.servername) channelOptions['grpc.ssl_target_name_override'] = tls.servername;
        client = new Health(options.address, creds, channelOptions);
      }
      const c = client;
      return new Promise<CheckOutcome>((resolve) => {
        let settled = false;
        const finish = (o: CheckOutcome, failed: boolean) => {
          if (settled) return;
          settled = true;
          signal.removeEventListener('abort', onAbort);
          if (failed && client === c) drop();
          resolve(o);
        };
        const call = c.Check({ service }, {}, (err, res) => {
          if (signal.aborted) return finish(abortedOutcome(signal, started), true);
          if (err) {
            const name = grpc.status[err.code] ?? `code ${err.code}`;
            return finish({ status: 'critical', output: sanitize(`${name}: ${err.details || errorText(err)}`, MAX_REASON) }, true);
          }
          const status = String(res?.status ?? 'UNKNOWN');
          finish({ status: status === 'SERVING' ? 'passing' : 'critical', output: sanitize(status, MAX_REASON) }, false);
        });
        const onAbort = () => {
          call.cancel();
          finish(abortedOutcome(signal, started), true);
        };
        signal.addEventListener('abort', onAbort, { once: true });
      });
    },
    close() {
      drop();
    },
  };
}

const grpcKind: CheckKind<GrpcCheckOptions> = { type: TYPE, schema, create };
export default grpcKind;
