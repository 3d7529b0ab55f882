/**
 * The balancing options every balancer shares (config `balancing`): slow start and the panic
 * threshold. Constants and schemas only, so the config schema can import them cheaply.
 */

/** Default panic threshold (percent of known backends healthy), as Envoy's. */
export const PANIC_THRESHOLD_DEFAULT = 50;

export interface SlowStartOptions {
  /** Seconds a returning backend ramps over; 0 = off. */
  window: number;
  /** The ramp's exponent: 1 linear, above 1 faster at first (Envoy's `aggression`). */
  aggression: number;
  /** The least share of its weight a ramping backend gets (percent). */
  minWeightPercent: number;
  /** Also ramp backends seen for the first time (added, or at start-up), not only returning ones. */
  newBackends: boolean;
}

export const SLOW_START_DEFAULTS: SlowStartOptions = { window: 0, aggression: 1, minWeightPercent: 10, newBackends: false };

/** The JSON schema of the slow-start options (config `balancing.slowStart`). */
export const SLOW_START_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  default: {},
  properties: {
    window: { type: 'number', minimum: 0, maximum: 3600, default: 0, description: 'seconds a backend ramps its weight over after it comes UP from DOWN, DRAINING or MAINT; 0 = off' },
    aggression: { type: 'number', minimum: 0.1, maximum: 10, default: 1, description: 'ramp exponent: weight x (elapsed / window) ^ (1 / aggression); 1 = linear, higher = faster at first' },
    minWeightPercent: { type: 'number', minimum: 0, maximum: 100, default: 10, description: 'the least share of its weight (percent) a ramping backend gets' },
    newBackends: { type: 'boolean', default: false, description: 'also ramp backends seen for the first time (added at runtime, or at start-up)' },
  },
} as const;
