/**
 * http: GET (or HEAD) a URL with undici (the HTTP client inside Node's own fetch); the check
 * passes when the status is in `expectStatus` (default 200-399) and, when asked, the body
 * contains a string or matches a regular expression. Each run opens a fresh connection and
 * closes it after the response (`reset`), as HAProxy's httpchk does, so a stopped server is seen
 * as a refused connect, not as a stale pooled socket. Redirects are not followed unless
 * `followRedirects` (a 3xx is then a status like any other). At most `maxBodyBytes` of the body
 * are read; the rest is discarded with the connection.
 *
 * Reasons: `HTTP 200`, `HTTP 503`, `connect ECONNREFUSED 127.0.0.1:8080`, `body did not match
 * /ok/`, `body did not contain "ok"`, `timed out after 1000 ms`.
 */
import { Agent, interceptors, type Dispatcher } from 'undici';
import { ConfigError, errorText } from '../../core/errors.ts';
import type { FromSchema } from '../../core/config/schema-types.ts';
import type { Check, CheckContext, CheckKind, CheckOutcome } from '../../core/check/types.ts';
import { abortedOutcome, networkErrorText, readTlsFiles, TLS_FILES_SCHEMA, MAX_REASON } from './common.ts';
import { sanitize } from '../../core/util/sanitize.ts';

const TYPE = 'http';
const STATUS_RANGE = '^[1-5][0-9]{2}(-[1-5][0-9]{2})?$';

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['url'],
  properties: {
    url: { type: 'string', minLength: 1, maxLength: 2048, description: 'http:// or https:// URL to request' },
    method: { enum: ['GET', 'HEAD'], default: 'GET', description: 'HEAD reads no body (no body match then)' },
    expectStatus: {
      type: 'array',
      items: { type: 'string', pattern: STATUS_RANGE },
      minItems: 1,
      default: ['200-399'],
      description: 'status codes or ranges that pass ("200", "200-399")',
    },
    warningStatus: {
      type: 'array',
      items: { type: 'string', pattern: STATUS_RANGE },
      default: [],
      description: 'status codes or ranges that give a warning (DEGRADED), e.g. ["429"] as Consul does; checked before expectStatus',
    },
    bodyContains: { type: 'string', minLength: 1, maxLength: 1024, description: 'the body (its first maxBodyBytes) must contain this text' },
    bodyMatches: { type: 'string', minLength: 1, maxLength: 1024, description: 'the body (its first maxBodyBytes) must match this regular expression (JavaScript syntax)' },
    headers: { type: 'object', additionalProperties: { type: 'string' }, default: {}, description: 'request headers (e.g. Host, Authorization)' },
    followRedirects: { type: 'boolean', default: false, description: 'follow 3xx redirects (otherwise a 3xx is the status checked)' },
    maxRedirects: { type: 'integer', minimum: 1, maximum: 20, default: 5, description: 'redirects followed at most, with followRedirects' },
    maxBodyBytes: { type: 'integer', minimum: 0, maximum: 1_048_576, default: 65_536, description: 'bytes of the body read at most (for the body match)' },
    tls: {
      type: 'object',
      additionalProperties: false,
      properties: {
        ...TLS_FILES_SCHEMA,
        servername: { type: 'string', minLength: 1, description: 'TLS server name (SNI and certificate check) if not the URL host' },
        insecure: { type: 'boolean', default: false, description: 'skip certificate verification (logged as a warning once)' },
      },
    },
  },
} as const;

/** The options of one check, as validated (defaults filled in from the schema). */
export type HttpCheckOptions = FromSchema<typeof schema>;

type Range = [number, number];

function parseRanges(list: readonly string[], what: string): Range[] {
  return list.map((s) => {
    const m = new RegExp(STATUS_RANGE).exec(s);
    if (!m) throw new ConfigError([`${TYPE}: ${what} ${JSON.stringify(s)} is not a status or range like "200-399"`]);
    const [lo, hi = lo] = s.split('-').map(Number) as [number, number?];
    if (hi! < lo) throw new ConfigError([`${TYPE}: ${what} ${JSON.stringify(s)} is an empty range`]);
    return [lo, hi!];
  });
}

const inRanges = (status: number, ranges: Range[]) => ranges.some(([lo, hi]) => status >= lo && status <= hi);

/** Reads at most `limit` bytes of a body, then drops the rest (the connection closes anyway). */
async function readBounded(body: Dispatcher.ResponseData['body'], limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  if (limit > 0) {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      const take = Math.min(chunk.length, limit - size);
      chunks.push(take === chunk.length ? chunk : chunk.subarray(0, take));
      size += take;
      if (size >= limit) break; // leaving the loop destroys the stream
    }
  }
  body.destroy();
  return Buffer.concat(chunks).toString('utf8');
}

function create(options: HttpCheckOptions, ctx: CheckContext): Check {
  let url: URL;
  try {
    url = new URL(options.url);
  } catch {
    throw new ConfigError([`${TYPE}: url ${JSON.stringify(options.url)} is not a valid URL`]);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError([`${TYPE}: url ${JSON.stringify(options.url)} is not http:// or https://`]);
  }
  const method = options.method;
  if (method !== 'GET' && method !== 'HEAD') throw new ConfigError([`${TYPE}: method ${JSON.stringify(method)} is not GET or HEAD`]);
  const expect = parseRanges(options.expectStatus, 'expectStatus');
  const warn = parseRanges(options.warningStatus, 'warningStatus');
  let regex: RegExp | undefined;
  if (options.bodyMatches !== undefined) {
    try {
      regex = new RegExp(options.bodyMatches);
    } catch (e) {
      throw new ConfigError([`${TYPE}: bodyMatches is not a valid regular expression: ${errorText(e)}`]);
    }
  }
  const needBody = (regex !== undefined || options.bodyContains !== undefined) && method === 'GET';
  if ((regex !== undefined || options.bodyContains !== undefined) && method === 'HEAD') {
    throw new ConfigError([`${TYPE}: a body match needs method GET (HEAD has no body)`]);
  }
  const maxBody = options.maxBodyBytes;
  const tls: Partial<NonNullable<HttpCheckOptions['tls']>> = options.tls ?? {};
  const connect = {
    ...readTlsFiles(ctx, TYPE, tls),
    ...(tls.servername ? { servername: tls.servername } : {}),
    rejectUnauthorized: !tls.insecure,
  };
  if (tls.insecure && url.protocol === 'https:') {
    ctx.logger.warn(`${TYPE} check: TLS certificate verification is OFF for ${url.origin} (tls.insecure)`);
  }
  const headers: Record<string, string> = { 'user-agent': 'qhcp-check', ...options.headers };
  const agent = new Agent({ connect, connections: 1 });
  const dispatcher: Dispatcher = options.followRedirects ? agent.compose(interceptors.redirect({ maxRedirections: options.maxRedirects })) : agent;

  return {
    async run(signal: AbortSignal): Promise<CheckOutcome> {
      const started = performance.now();
      if (signal.aborted) return abortedOutcome(signal, started);
      let res: Dispatcher.ResponseData;
      try {
        res = await dispatcher.request({ origin: url.origin, path: url.pathname + url.search, method, headers, signal, reset: true });
      } catch (e) {
        if (signal.aborted) return abortedOutcome(signal, started);
        const text = networkErrorText(e);
        const errCode = String((e as { code?: unknown } | null)?.code ?? '');
        return { status: 'critical', output: /CERT|SIGNATURE|TLS|SSL|ISSUER/.test(errCode) ? `TLS: ${text}` : text };
      }
      const code = res.statusCode;
      // Dropping the rest of a body makes undici emit an abort error on it: expected, not a failure.
      res.body.on('error', () => {});
      let body = '';
      try {
        if (needBody) body = await readBounded(res.body, maxBody);
        else res.body.destroy();
      } catch (e) {
        if (signal.aborted) return abortedOutcome(signal, started);
        return { status: 'critical', output: `HTTP ${code}, body unreadable: ${networkErrorText(e)}` };
      }
      if (inRanges(code, warn)) return { status: 'warning', output: `HTTP ${code}` };
      if (!inRanges(code, expect)) return { status: 'critical', output: `HTTP ${code}` };
      if (options.bodyContains !== undefined && !body.includes(options.bodyContains)) {
        return { status: 'critical', output: sanitize(`body did not contain ${JSON.stringify(options.bodyContains)}`, MAX_REASON) };
      }
      if (regex && !regex.test(body)) return { status: 'critical', output: sanitize(`body did not match ${String(regex)}`, MAX_REASON) };
      return { status: 'passing', output: `HTTP ${code}` };
    },
    async close() {
      await agent.destroy().catch(() => {});
    },
  };
}

const http: CheckKind<HttpCheckOptions> = { type: TYPE, schema, create };
export default http;
