/**
 * The public API of the `qhcp` package (`import { ... } from 'qhcp'`): what a config file and a
 * plugin need. Everything else under core/ is internal and may change between versions.
 *
 * - defineConfig: types a qhcp.config.ts.
 * - the hook and payload types a plugin taps (CoreLike, Hooks, BackendView, Transition, ...).
 * - the errors a plugin may throw or meet (ConfigError, PluginError, ...).
 * - the check-kind contract (CheckKind, Check, CheckOutcome, ...).
 *
 * The query client is `qhcp/client`; helpers to test a plugin are `qhcp/testing`.
 */
export { defineConfig, CONFIG_SCHEMA, DEFAULT_LOADBALANCER_PORT, DEFAULT_SERVER_PORT } from './config/config.ts';
export type { QhcpConfig, QhcpUserConfig, ServerEntry, PluginEntry, ConfigKey } from './config/config.ts';
export type { FromSchema, ObjectSchema } from './config/schema-types.ts';
export type { QhcpPlugin, PluginConstructor, Family, RoleName } from './plugin/loader.ts';
export { definePlugin } from './plugin/define.ts';
export type { PluginSpec, PluginDefinition, PluginUse, PluginBody, PluginOf, OptionsOf } from './plugin/define.ts';
export { METRIC_NAME, METRIC_NAME_PATTERN, metricNameSchema as METRIC_NAME_SCHEMA } from './protocol/messages.ts';
export { MetricsReport } from './plugin/hooks.ts';
export type {
  CoreLike,
  Hooks,
  HookName,
  MetricDefinition,
  AuthRequest,
  AuthVerdict,
  CredentialsRequest,
  TlsSettings,
  BackendView,
  PickRequest,
  CheckResult,
  Transition,
  AlertEvent,
  SessionInfo,
} from './plugin/hooks.ts';
export { QhcpError, ProtocolError, PeerError, LocalError, ConfigError, PluginError, WIRE_ERRORS, LOCAL_ERRORS, errorText } from './errors.ts';
export type { WireErrorName, LocalErrorCode } from './errors.ts';
export type { Picker, PickResult } from './balance/picker.ts';
export type { CheckKind, Check, CheckOutcome, CheckStatus, CheckContext, CommonCheckOptions, Verdict, AgentAdmin } from './check/types.ts';
export type { Metrics, ServerStatus, Message } from './protocol/messages.ts';
export type { Logger } from './util/log.ts';
