/**
 * definePlugin: the way to write a plugin. The options schema is required; it types the
 * options (FromSchema), validates them at start-up (defaults filled in) and documents them.
 *
 *   export default definePlugin({
 *     name: 'queue-length', family: 'metrics', roles: ['server'],
 *     schema: { type: 'object', additionalProperties: false, properties: { file: { type: 'string' } } } as const,
 *     apply(core, options) { ... taps hooks ... },
 *   });
 *
 * A plugin that keeps state other code reaches for (a balancer's `picker()`, an alert's damper)
 * gives `setup(options)` instead of `apply`: it returns an object with `apply(core)` and whatever
 * else it offers; `create()` returns that object with the plugin's name, family and roles on it.
 *
 *   export default definePlugin({
 *     name: 'sticky', family: 'balancer', roles: ['loadbalancer'], schema,
 *     setup: (options) => new Sticky(options),     // class Sticky { apply(core) {...}; picker() {...} }
 *   });
 *
 * In qhcp.config.ts the definition is listed by path (`['./queue-length.ts', { file: 'q.txt' }]`,
 * options checked at start-up) or imported and called (`queueLength({ file: 'q.txt' })`, options
 * checked by the TypeScript compiler as well).
 */
import type { FromSchema, ObjectSchema } from '../config/schema-types.ts';
import type { CoreLike } from './hooks.ts';
import type { Family, QhcpPlugin, RoleName } from './loader.ts';

/** What `setup(options)` returns: a plugin body that taps hooks in `apply`, plus anything it offers. */
export interface PluginBody {
  apply(core: CoreLike): void | Promise<void>;
}

/** A built plugin: the body `setup` returned (or `apply` wrapped) with the plugin's identity on it. */
export type PluginOf<B extends PluginBody = PluginBody> = B & QhcpPlugin;

export interface PluginSpec<S extends ObjectSchema, B extends PluginBody = PluginBody> {
  /** The plugin's name in logs, errors and `dependencies`. */
  name: string;
  family?: Family;
  /** Roles it applies to (default: both). */
  roles?: RoleName[];
  /** Names of plugins that must be present too. */
  dependencies?: string[];
  /** JSON schema of the options (an object schema; write it `as const` so the options are typed). */
  schema: S;
  /**
   * Checks the schema cannot express (a function option, one of two options); throw an Error
   * saying what is wrong and start-up fails with it as a configuration error for this entry.
   */
  validate?(options: FromSchema<S>): void;
  /** Taps the hooks; `options` are validated with defaults filled in. Bounded by pluginTimeout. Give this or `setup`. */
  apply?(core: CoreLike, options: FromSchema<S>): void | Promise<void>;
  /**
   * Builds the plugin body for validated options (defaults filled in): an object whose
   * `apply(core)` taps the hooks, and which may offer more (a balancer's `picker()`). Give this or `apply`.
   */
  setup?(options: FromSchema<S>): B;
}

/** A plugin listed with its options (what calling a definition returns). */
export interface PluginUse {
  readonly definition: PluginDefinition<ObjectSchema>;
  readonly options: Record<string, unknown>;
}

type OptionsArg<S extends ObjectSchema> = {} extends FromSchema<S, 'in'> ? [options?: FromSchema<S, 'in'>] : [options: FromSchema<S, 'in'>];

/** What definePlugin returns: call it with options to list it in a config. */
export interface PluginDefinition<S extends ObjectSchema, B extends PluginBody = PluginBody> {
  (...options: OptionsArg<S>): PluginUse;
  readonly pluginName: string;
  readonly schema: S;
  readonly family: Family | undefined;
  readonly roles: RoleName[] | undefined;
  /** A plugin instance for validated options (the loader validates first). */
  create(options: FromSchema<S>): PluginOf<B>;
}

/**
 * Defines a plugin from its options schema and its `apply`.
 * @throws TypeError at definition time when the schema is missing or not an object schema
 */
export function definePlugin<const S extends ObjectSchema, B extends PluginBody = PluginBody>(spec: PluginSpec<S, B>): PluginDefinition<S, B> {
  if (!spec || typeof spec.name !== 'string' || spec.name === '') throw new TypeError('definePlugin: `name` is required');
  const schema = spec.schema as unknown;
  if (!schema || typeof schema !== 'object' || (schema as { type?: unknown }).type !== 'object') {
    throw new TypeError(`definePlugin(${spec.name}): \`schema\` is required and must be an object schema ({ type: 'object', properties: {...} }); use { type: 'object', properties: {} } for a plugin without options`);
  }
  if ((typeof spec.apply === 'function') === (typeof spec.setup === 'function')) {
    throw new TypeError(`definePlugin(${spec.name}): give exactly one of \`apply(core, options)\` and \`setup(options)\``);
  }
  const identity = {
    name: spec.name,
    ...(spec.family ? { family: spec.family } : {}),
    ...(spec.roles ? { roles: spec.roles } : {}),
    ...(spec.dependencies ? { dependencies: spec.dependencies } : {}),
  };
  const use = ((options: Record<string, unknown> = {}) => ({ definition, options })) as unknown as PluginDefinition<S, B>;
  const definition = Object.assign(use, {
    pluginName: spec.name,
    schema: spec.schema,
    family: spec.family,
    roles: spec.roles,
    create(options: FromSchema<S>): PluginOf<B> {
      spec.validate?.(options);
      if (spec.setup) {
        const body = spec.setup(options);
        if (!body || typeof body.apply !== 'function') throw new TypeError(`definePlugin(${spec.name}): setup() must return an object with apply(core)`);
        // Own, read-only properties: a class body keeps its prototype (picker(), format(), ...).
        for (const [key, value] of Object.entries(identity)) Object.defineProperty(body, key, { value, enumerable: true });
        return body as PluginOf<B>;
      }
      const apply = spec.apply!;
      return { ...identity, apply: (core: CoreLike) => apply(core, options) } as unknown as PluginOf<B>;
    },
  }) as unknown as PluginDefinition<S, B>;
  return definition;
}

/** The options a user writes for a definition (`OptionsOf<typeof jwt>`): required ones required, defaulted ones optional. */
export type OptionsOf<D> = D extends PluginDefinition<infer S, infer _B> ? FromSchema<S, 'in'> : never;

/** Whether `x` came from definePlugin. */
export function isPluginDefinition(x: unknown): x is PluginDefinition<ObjectSchema, PluginBody> {
  return typeof x === 'function' && typeof (x as { create?: unknown }).create === 'function' && typeof (x as { pluginName?: unknown }).pluginName === 'string';
}

/** Whether `x` is a definition called with options. */
export function isPluginUse(x: unknown): x is PluginUse {
  return !!x && typeof x === 'object' && isPluginDefinition((x as PluginUse).definition) && typeof (x as PluginUse).options === 'object';
}
